"""The async invocation queue on NATS JetStream (``LAMINA_QUEUE_URL=nats://host:4222``).

Same contract as the database backend (``lamina.core.queue.InvocationQueue``); the record
of each invocation is the truth, the stream only says *when* to look at it.

Names below use the prefix ``P`` (``?prefix=`` in the URL, default ``lamina``); all are
created on first use, on file storage, so they survive a NATS restart.

- **Records** — KV bucket ``P_invocations``, key = invocation id: the whole ``Invocation``
  plus the backend's bookkeeping (redrive generation, the due message's stream sequence and
  its current ack subject). Every state change is a compare-and-set on the key's revision,
  so of two dispatchers racing for one invocation exactly one wins, and a holder whose lease
  was taken over can no longer write (``Conflict``): one final record per invocation.
- **Due messages** — work-queue stream ``P_due``, subject ``P.due.<function>``, one message
  ``{"id", "gen"}`` per queued delivery, published with ``Nats-Msg-Id: <id>.<gen>`` (the
  server drops a republish of the same one). ``enqueue`` returns once the server acked the
  publish, so a 202 is never given for an invocation that is not on disk.
- **Leases** — one durable pull consumer per function (filter ``P.due.<function>``) whose
  ack wait is the lease: a crashed dispatcher's message is redelivered when it runs out.
  ``extend`` sends ``+WPI`` (progress), ``retry`` ``-NAK`` with the delay (not redelivered
  before), ``complete``/``dead_letter`` ``+ACK``. JetStream applies these by stream sequence,
  so they go to the ack subject stored in the record, from any connection. A redelivered
  message whose record still holds a live lease (the holder extended it) is left alone.
  JetStream has one ack wait per consumer: ``lease_s`` updates it when a call asks for
  another value, so the replicas of one prefix should share ``LAMINA_ASYNC_LEASE_S``.
- **No head-of-line blocking** — a consumer per function, not one for all: ``lease`` asks
  the stream which functions have messages (``subjects_filter``), then pulls from each in
  turn (rotating, for fairness) with ``no_wait``, never more than a function's free slots.
  A busy function's consumer is simply not pulled; with one shared consumer its messages
  would have to be fetched and nak'ed, O(backlog) work per poll before the others' turn.
  The price: oldest first holds within a function, functions take turns across.
- **Concurrency** — bucket ``P_leases``, key ``<function>.<id>`` = lease end, written for
  functions leased with a limit and removed on release; live entries are that function's
  running invocations. As with the database on PostgreSQL (READ COMMITTED), two replicas
  leasing the same function at the same instant may both see the last slot free; the
  function's reserved concurrency in the invoker path (429, retried) is the hard bound.
- **Idempotency** — bucket ``P_idempotency`` (TTL raised to the longest window asked for),
  key ``<function>.<sha256 of the key>`` = the first id and its time, claimed by create or
  compare-and-set, so concurrent requests with one key agree on one id.
- **Dead letters** — bucket ``P_dead``, key ``<function>.<id>``: the function's list.
- **Retention** — stream ``P_done`` (subject ``P.done``): a marker ``{"id", "at"}`` per invocation
  that finished as succeeded, failed or cancelled, in finishing order. ``prune`` reads it from
  the start, deletes the records of markers older than the window and purges the markers it
  read: work in proportion to what expires, never a scan of the records. A marker is a plain
  publish before the ack; a lost one is published again when the due message comes back.
- **Stats** — from the stream's own bookkeeping: the due stream's message count per function
  subject (every invocation not finished yet: JetStream keeps a message until it is acked, and
  telling a queued one from a running one would mean reading every record), the record of
  each function's first message (the oldest enqueued), and the dead bucket's keys per function.
  A few requests per function, whatever the backlog.

A message and a record cannot be written atomically; every gap is healed where it is found:
a record queued but not yet published (the publish failed: the client got 503) is published
again by an idempotent retry; a stale message (older generation, finished or cancelled
record, duplicate) is acked when pulled; a dead letter whose index entry was not written is
indexed when its message comes back. A removed key is purged from its stream (no tombstone)
so that listing a subject filter is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from urllib.parse import parse_qs, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from lamina.core.errors import Conflict, InvalidSpec, LimitExceeded, NotFound, Unavailable
from lamina.core.queue import (
    CALLBACK_URL_MAX,
    IDEMPOTENCY_KEY_MAX,
    Invocation,
    InvocationState,
    NewInvocation,
    QueueStats,
    Report,
    log_tail,
)

QUEUED, RUNNING, DEAD = InvocationState.QUEUED, InvocationState.RUNNING, InvocationState.DEAD_LETTERED
ERROR_TYPE_CHARS = 128
MAX_LEASE, MAX_DEAD_LETTERS, MAX_BATCH = 1000, 1000, 1000
#: Retention markers read at once while pruning (concurrent requests).
_PRUNE_CHUNK = 100
#: Lease entries outlive a crashed holder by at most this (seconds); live ones are rewritten on extend.
LEASE_ENTRY_TTL_S = 24 * 3600.0
#: Bytes of a record besides the event and the result (fields, logs tail, error message), at most.
_RECORD_OVERHEAD = 16 * 1024
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class _Raced(Exception):
    """A compare-and-set lost: the record changed since it was read."""


@dataclass(frozen=True)
class _Stored:
    """A record: the invocation and this backend's bookkeeping."""

    inv: Invocation
    #: Bumped by each redrive; a due message of another generation is stale.
    gen: int = 0
    #: Stream sequence of the due message the current lease came from.
    seq: int = 0
    #: That delivery's ack subject (ack, progress and nak work from any connection).
    reply: str = ""
    #: Whether a lease entry exists (the function was leased with a concurrency limit).
    counted: bool = False

    def encode(self) -> bytes:
        head = {k: v for k, v in asdict(self.inv).items() if k not in ("payload", "result")}
        head.update(state=self.inv.state.value, payload_len=len(self.inv.payload), gen=self.gen, seq=self.seq,
                    reply=self.reply, counted=self.counted)
        # JSON never holds a raw newline, so the first one ends it; the bytes follow unencoded.
        return json.dumps(head).encode() + b"\n" + self.inv.payload + self.inv.result

    @staticmethod
    def decode(data: bytes) -> _Stored:
        line, _, blobs = data.partition(b"\n")
        head = json.loads(line)
        n = head.pop("payload_len")
        extra = {k: head.pop(k) for k in ("gen", "seq", "reply", "counted")}
        inv = Invocation(**{**head, "state": InvocationState(head["state"]), "payload": blobs[:n], "result": blobs[n:]})
        return _Stored(inv, **extra)


class JetStreamQueue:
    """:class:`~lamina.core.queue.InvocationQueue` on NATS JetStream; connects on first use."""

    def __init__(self, url: str, *, prefix: str = "lamina", timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise InvalidSpec(f"LAMINA_QUEUE_URL prefix {prefix!r}: expected 1-32 of A-Z a-z 0-9 _ -")
        self._url, self._prefix, self._timeout, self._clock = url, prefix, timeout_s, clock
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._consumers: dict[str, float] = {}  # function -> ack wait it was created with
        self._idem_ttl = 0.0
        self._connecting = asyncio.Lock()
        self._turn = 0

    @classmethod
    def from_url(cls, url: str) -> JetStreamQueue:
        """``nats://host:port[?prefix=NAME&timeout=SECONDS]``."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"prefix", "timeout"}
        if unknown:
            raise InvalidSpec(f"LAMINA_QUEUE_URL {url!r}: unknown parameter(s) {sorted(unknown)} "
                              "(expected prefix, timeout)")
        try:
            timeout = float(query.get("timeout", 5.0))
        except ValueError as exc:
            raise InvalidSpec(f"LAMINA_QUEUE_URL {url!r}: timeout must be seconds") from exc
        server = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return cls(server, prefix=query.get("prefix", "lamina"), timeout_s=timeout)

    # -- the contract ---------------------------------------------------------------------

    async def enqueue(self, function: str, payload: bytes, *, idempotency_key: str = "",
                      idempotency_window_s: float = 0.0, callback_url: str = "") -> tuple[Invocation, bool]:
        new = NewInvocation(function, payload, idempotency_key, idempotency_window_s, callback_url)
        _check_limits(new)
        async with self._errors("enqueue"):
            await self._ready()
            self._check_size(new)
            return await self._enqueue(new)

    async def enqueue_many(self, invocations: Sequence[NewInvocation]) -> list[tuple[Invocation, bool]]:
        """Each enqueued concurrently on the one connection: the publishes are pipelined, and
        each is acknowledged by the server before this returns."""
        if len(invocations) > MAX_BATCH:
            raise InvalidSpec(f"{len(invocations)} invocations in one batch; at most {MAX_BATCH}")
        if not invocations:
            return []
        for new in invocations:
            _check_limits(new)
        async with self._errors("enqueue"):
            await self._ready()
            for new in invocations:
                self._check_size(new)
            return list(await asyncio.gather(*(self._enqueue(new) for new in invocations)))

    def _check_size(self, new: NewInvocation) -> None:
        if len(new.payload) > self._nc_().max_payload - _RECORD_OVERHEAD:
            raise LimitExceeded(f"the event of {len(new.payload)} bytes does not fit in a NATS message (max_payload "
                                f"{self._nc_().max_payload} bytes): lower LAMINA_MAX_ASYNC_PAYLOAD_BYTES")

    async def _enqueue(self, new: NewInvocation) -> tuple[Invocation, bool]:
        function, payload, idempotency_key = new.function, new.payload, new.idempotency_key
        idempotency_window_s, callback_url = new.idempotency_window_s, new.callback_url
        now = self._clock()
        new_id, created = str(uuid.uuid4()), True
        if idempotency_key:
            claimed = await self._claim(function, idempotency_key, idempotency_window_s, new_id, now)
            if claimed != new_id:
                existing = await self._find(claimed)
                if existing is not None:
                    stored = existing[0]
                    if stored.inv.state is QUEUED and stored.inv.attempts == 0:
                        await self._publish(stored)  # its first publish may have failed (deduplicated if not)
                    return stored.inv, False
                # Claimed by a request that has not stored it yet, or failed to: finish it under that id.
                new_id, created = claimed, False
        stored = _Stored(Invocation(
            id=new_id, function=function, payload=payload, state=QUEUED, created_at=now, enqueued_at=now,
            due_at=now, updated_at=now, idempotency_key=idempotency_key, callback_url=callback_url))
        try:
            await self._kv["records"].create(new_id, stored.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            stored = (await self._load(new_id))[0]  # the other request stored it first
            return stored.inv, False
        try:
            await self._publish(stored)
        except _NATS_ERRORS:
            if not idempotency_key:  # nobody can find it again: do not leave it behind
                with contextlib.suppress(*_NATS_ERRORS):
                    await self._purge_key("records", new_id)
            raise
        return stored.inv, created

    async def lease(self, limit: int, lease_s: float, concurrency: Mapping[str, int] | None = None) -> list[Invocation]:
        if limit <= 0:
            return []
        limit = min(limit, MAX_LEASE)
        concurrency = concurrency or {}
        async with self._errors("lease"):
            await self._ready()
            functions = [s.rsplit(".", 1)[1] for s in await self._subjects(
                self._due_stream, f"{self._prefix}.due.*")]
            if not functions:
                return []
            self._turn = (self._turn + 1) % len(functions)
            functions = functions[self._turn:] + functions[:self._turn]
            leased: list[Invocation] = []
            for function in functions:
                cap = concurrency.get(function)
                for _ in range(3):  # pull again when stale messages left the batch short
                    want = limit - len(leased)
                    if cap is not None:
                        want = min(want, cap - await self._running(function))
                    if want <= 0:
                        break
                    msgs = await self._pull(function, want, lease_s)
                    for msg in msgs:
                        inv = await self._take(msg, lease_s, counted=cap is not None)
                        if inv is not None:
                            leased.append(inv)
                    if len(msgs) < want:
                        break
                if len(leased) >= limit:
                    break
            return leased

    async def extend(self, invocation_id: str, lease_token: str, lease_s: float) -> None:
        async with self._errors("extend a lease"):
            await self._ready()
            now = self._clock()
            stored = await self._held(invocation_id, lease_token,
                                      lambda inv: replace(inv, due_at=now + lease_s, updated_at=now))
            if stored.counted:
                await self._kv["leases"].put(_key(stored.inv.function, invocation_id), str(now + lease_s).encode())
            await self._nc_().publish(stored.reply, b"+WPI")

    async def complete(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        state = InvocationState.FAILED if report.error_type else InvocationState.SUCCEEDED
        return await self._release(invocation_id, lease_token, report, state=state, final=True)

    async def retry(self, invocation_id: str, lease_token: str, delay_s: float, report: Report, *,
                    count_attempt: bool = True) -> Invocation:
        return await self._release(invocation_id, lease_token, report, state=QUEUED, final=False,
                                   delay_s=max(0.0, delay_s), count_attempt=count_attempt)

    async def dead_letter(self, invocation_id: str, lease_token: str, report: Report) -> Invocation:
        return await self._release(invocation_id, lease_token, report, state=DEAD, final=True)

    async def get(self, invocation_id: str) -> Invocation:
        async with self._errors("read an invocation"):
            await self._ready()
            return (await self._load(invocation_id))[0].inv

    async def cancel(self, invocation_id: str) -> Invocation:
        async with self._errors("cancel an invocation"):
            await self._ready()
            while True:
                stored, revision = await self._load(invocation_id)
                inv = stored.inv
                if inv.state is not QUEUED or inv.attempts:
                    raise Conflict(f"invocation {invocation_id!r} cannot be cancelled: it is {inv.state.value} after "
                                   f"{inv.attempts} attempt(s); only one that has not started can be")
                now = self._clock()
                done = replace(stored, inv=replace(inv, state=InvocationState.CANCELLED, finished_at=now,
                                                   updated_at=now))
                with contextlib.suppress(_Raced):
                    await self._cas(done, revision)
                    await self._mark_done(done.inv)
                    # Its due message stays until pulled, then is acked as stale.
                    return done.inv

    async def dead_letters(self, function: str, limit: int = 100) -> list[Invocation]:
        limit = min(limit or 100, MAX_DEAD_LETTERS)
        async with self._errors("list dead letters"):
            await self._ready()
            found = await self._dead_records(function)
            dead = [s.inv for s, _ in found if s.inv.state is DEAD]
            return sorted(dead, key=lambda inv: (-inv.finished_at, inv.id))[:limit]

    async def redrive(self, function: str, ids: Sequence[str] = ()) -> int:
        async with self._errors("redrive dead letters"):
            await self._ready()
            wanted, count = set(ids), 0
            for stored, revision in await self._dead_records(function):
                inv = stored.inv
                if wanted and inv.id not in wanted:
                    continue
                if inv.state is DEAD:
                    now = self._clock()
                    stored = replace(stored, gen=stored.gen + 1, seq=0, reply="", counted=False, inv=replace(
                        inv, state=QUEUED, attempts=0, enqueued_at=now, due_at=now, finished_at=0.0, updated_at=now,
                        lease_token=""))
                    try:
                        await self._cas(stored, revision)
                    except _Raced:
                        continue  # another redrive or purge got there first
                    count += 1
                if stored.inv.state is QUEUED and stored.inv.attempts == 0:
                    await self._publish(stored)  # also finishes a redrive interrupted before its publish
                await self._purge_key("dead", _key(function, inv.id))
            return count

    async def purge(self, function: str) -> int:
        async with self._errors("purge dead letters"):
            await self._ready()
            count = 0
            for stored, revision in await self._dead_records(function):
                if stored.inv.state is DEAD:
                    try:
                        await self._kv["records"].delete(stored.inv.id, last=revision)
                    except nats.js.errors.KeyWrongLastSequenceError:
                        continue  # redriven meanwhile
                    count += 1
                await self._purge_key("dead", _key(function, stored.inv.id))
            return count

    async def stats(self) -> dict[str, QueueStats]:
        async with self._errors("read the queue's stats"):
            await self._ready()
            js, prefix = self._js_(), self._prefix
            counts = (await js.stream_info(self._due_stream, subjects_filter=f"{prefix}.due.*")).state.subjects or {}
            waiting = {subject.rsplit(".", 1)[1]: n for subject, n in counts.items() if n}

            async def oldest(function: str) -> float:
                # The function's first message is its oldest unfinished invocation (queued or running).
                try:
                    head = await js.get_msg(self._due_stream, seq=1, subject=f"{prefix}.due.{function}", next=True)
                except nats.js.errors.NotFoundError:
                    return 0.0  # acked since the count was read
                found = await self._find(json.loads(head.data or b"{}").get("id", ""))
                if found is None or found[0].inv.state.final:
                    return 0.0  # a stale message, acked when next pulled
                return found[0].inv.enqueued_at

            oldest_at = dict(zip(waiting, await asyncio.gather(*(oldest(f) for f in waiting)), strict=True))
            dead: dict[str, int] = {}
            keys = (await js.stream_info(self._stream("dead"), subjects_filter=f"$KV.{self._bucket('dead')}.>")
                    ).state.subjects or {}
            for key, n in keys.items():
                if n:
                    function = key.split(".")[2]
                    dead[function] = dead.get(function, 0) + 1
            return {f: QueueStats(waiting.get(f, 0), oldest_at.get(f, 0.0), dead.get(f, 0))
                    for f in sorted(set(waiting) | set(dead))}

    async def prune(self, retention_s: float, limit: int = 1000) -> int:
        if retention_s < 0:
            raise InvalidSpec(f"retention_s {retention_s} is negative")
        limit = limit or 1000
        async with self._errors("prune finished invocations"):
            await self._ready()
            js, stream = self._js_(), self._done_stream
            cutoff = self._clock() - retention_s
            state = (await js.stream_info(stream)).state
            seq, last, expired = state.first_seq, state.last_seq, []
            while seq <= last and len(expired) < limit and state.messages:
                chunk = list(range(seq, min(last, seq + _PRUNE_CHUNK - 1) + 1))
                found = await asyncio.gather(*(js.get_msg(stream, seq=n) for n in chunk), return_exceptions=True)
                for msg in found:
                    if isinstance(msg, nats.js.errors.NotFoundError):
                        seq += 1  # purged meanwhile (another replica prunes too)
                        continue
                    if isinstance(msg, BaseException):
                        raise msg
                    marker = json.loads(msg.data or b"{}")
                    if marker.get("at", 0.0) >= cutoff or len(expired) == limit:
                        last = -1  # markers are in finishing order: the rest are younger
                        break
                    expired.append(str(marker.get("id", "")))
                    seq += 1
            # Final records other than dead letters never change again: delete them as they are.
            await asyncio.gather(*(self._purge_key("records", i) for i in expired if _is_key(i)))
            if seq > state.first_seq:
                await js.purge_stream(stream, seq=seq)  # the markers before seq
            return len(expired)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            # Bounded: closing flushes, which must not hold up a gateway's shutdown when NATS is away.
            with contextlib.suppress(*_NATS_ERRORS):
                await asyncio.wait_for(nc.close(), self._timeout)

    # -- leasing --------------------------------------------------------------------------

    async def _pull(self, function: str, n: int, lease_s: float) -> list[Msg]:
        """Up to ``n`` deliverable messages of the function's consumer, without waiting for more."""
        if self._consumers.get(function) != lease_s:
            # Creating a durable that exists updates it (its ack wait may differ).
            await self._js_().add_consumer(self._due_stream, ConsumerConfig(
                durable_name=function, filter_subject=f"{self._prefix}.due.{function}", ack_policy=AckPolicy.EXPLICIT,
                ack_wait=lease_s, max_deliver=-1, max_ack_pending=-1))
            self._consumers[function] = lease_s
        nc = self._nc_()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        msgs: list[Msg] = []
        try:
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self._due_stream}.{function}",
                             json.dumps({"batch": n, "no_wait": True}).encode(), reply=inbox)
            while len(msgs) < n:
                msg = await sub.next_msg(timeout=self._timeout)
                if msg.headers and msg.headers.get("Status"):
                    break  # 404 no messages, 408 end of batch, 409 consumer gone
                msgs.append(msg)
        finally:
            await sub.unsubscribe()
        return msgs

    async def _take(self, msg: Msg, lease_s: float, *, counted: bool) -> Invocation | None:
        """Lease the invocation ``msg`` announces, or settle a stale message; None if not leased."""
        nc = self._nc_()
        body = json.loads(msg.data)
        seq = msg.metadata.sequence.stream
        for _ in range(3):
            found = await self._find(body["id"])
            if found is None or found[0].gen != body["gen"]:
                await nc.publish(msg.reply, b"+ACK")  # purged, or superseded by a redrive
                return None
            stored, revision = found
            inv, now = stored.inv, self._clock()
            if inv.state is QUEUED and inv.due_at > now:
                await nc.publish(msg.reply, _nak(inv.due_at - now))  # a retry whose nak was lost
                return None
            if inv.state is RUNNING and stored.seq not in (0, seq):
                await nc.publish(msg.reply, b"+ACK")  # a duplicate publish of a leased invocation
                return None
            if inv.state is RUNNING and inv.due_at > now:
                return None  # a live lease (extended): leave it pending, its holder acks it
            if inv.state.final:
                # Heal what a lost publish may have left out: the dead index, the retention marker.
                if inv.state is DEAD:
                    await self._kv["dead"].put(_key(inv.function, inv.id), b"")
                else:
                    await self._mark_done(inv)
                await nc.publish(msg.reply, b"+ACK")
                return None
            if stored.counted and not counted:
                await self._purge_key("leases", _key(inv.function, inv.id))
            leased = _Stored(replace(inv, state=RUNNING, attempts=inv.attempts + 1, lease_token=str(uuid.uuid4()),
                                     due_at=now + lease_s, started_at=inv.started_at or now, updated_at=now),
                             gen=stored.gen, seq=seq, reply=msg.reply, counted=counted)
            try:
                await self._cas(leased, revision)
            except _Raced:
                continue  # cancelled or taken meanwhile: look again
            if counted:
                await self._kv["leases"].put(_key(inv.function, inv.id), str(now + lease_s).encode())
            return leased.inv
        return None

    async def _running(self, function: str) -> int:
        """The function's invocations under a live lease, from its lease entries."""
        keys = await self._subjects(self._stream("leases"), f"$KV.{self._bucket('leases')}.{function}.*")
        if not keys:
            return 0
        now = self._clock()
        ends = await asyncio.gather(*(self._find_value("leases", k.split(".", 2)[2]) for k in keys))
        return sum(1 for end in ends if end is not None and float(end) > now)

    async def _release(self, invocation_id: str, lease_token: str, report: Report, *, state: InvocationState,
                       final: bool, delay_s: float = 0.0, count_attempt: bool = True) -> Invocation:
        async with self._errors("release a lease"):
            await self._ready()
            now = self._clock()

            room = self._nc_().max_payload - _RECORD_OVERHEAD

            def change(inv: Invocation) -> Invocation:
                result, error_type, error_message = report.result, report.error_type, report.error_message
                final_state = state
                if len(inv.payload) + len(result) > room:
                    # A record is one message: a result that cannot fit is the invocation's
                    # failure (recorded once), not an outage that would redeliver it forever.
                    result, error_type, final_state = b"", "Lamina.ResultTooLarge", InvocationState.FAILED
                    error_message = (f"the result of {len(report.result)} bytes does not fit in a NATS message "
                                     f"(max_payload {self._nc_().max_payload} bytes with the event)")
                inv = replace(inv, state=final_state if state is InvocationState.SUCCEEDED else state,
                              lease_token="", updated_at=now, result=result,
                              error_type=error_type[:ERROR_TYPE_CHARS], error_message=error_message,
                              logs=log_tail(report.logs))
                if final:
                    inv = replace(inv, finished_at=now)
                if state is QUEUED:
                    inv = replace(inv, due_at=now + delay_s, attempts=inv.attempts - (0 if count_attempt else 1))
                return inv

            stored = await self._held(invocation_id, lease_token, change)
            if stored.counted:
                await self._purge_key("leases", _key(stored.inv.function, invocation_id))
            if state is DEAD:
                await self._kv["dead"].put(_key(stored.inv.function, invocation_id), b"")
            elif final:
                await self._mark_done(stored.inv)
            # After the record: a lost ack or nak only means the message comes back and is settled then.
            await self._nc_().publish(stored.reply, _nak(delay_s) if state is QUEUED else b"+ACK")
            return stored.inv

    async def _held(self, invocation_id: str, lease_token: str,
                    change: Callable[[Invocation], Invocation]) -> _Stored:
        """Apply ``change`` while ``lease_token`` holds the lease; ``Conflict`` once it does not."""
        if not lease_token:
            raise InvalidSpec("a lease token is required")
        while True:
            stored, revision = await self._load(invocation_id)
            if stored.inv.state is not RUNNING or stored.inv.lease_token != lease_token:
                raise Conflict(f"the lease on invocation {invocation_id!r} is lost (it is {stored.inv.state.value}, "
                               "under another lease or none): another dispatcher owns it now")
            new = replace(stored, inv=change(stored.inv))
            with contextlib.suppress(_Raced):
                await self._cas(new, revision)
                return new

    # -- records, keys and streams --------------------------------------------------------

    async def _claim(self, function: str, key: str, window_s: float, new_id: str, now: float) -> str:
        """The id that holds the idempotency key: an earlier one within the window, else ``new_id``."""
        if window_s > self._idem_ttl:
            await self._raise_idempotency_ttl(window_s)
        kv, k = self._kv["idempotency"], _key(function, hashlib.sha256(key.encode()).hexdigest()[:40])
        value = json.dumps({"id": new_id, "at": now}).encode()
        while True:
            try:
                entry = await kv.get(k)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            try:
                if entry is None:
                    await kv.create(k, value)
                    return new_id
                first = json.loads(entry.value or b"{}")
                if first.get("at", 0.0) >= now - window_s:
                    return str(first["id"])
                await kv.update(k, value, last=entry.revision)
                return new_id
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # claimed concurrently: read the winner

    async def _raise_idempotency_ttl(self, window_s: float) -> None:
        info = await self._js_().stream_info(self._stream("idempotency"))
        config = info.config
        if config.max_age and config.max_age < window_s:
            config.max_age = window_s
            await self._js_().update_stream(config)
        self._idem_ttl = max(window_s, config.max_age or 0.0)

    async def _publish(self, stored: _Stored) -> None:
        inv = stored.inv
        await self._js_().publish(f"{self._prefix}.due.{inv.function}",
                                  json.dumps({"id": inv.id, "gen": stored.gen}).encode(),
                                  timeout=self._timeout, stream=self._due_stream,
                                  headers={"Nats-Msg-Id": f"{inv.id}.{stored.gen}"})

    async def _mark_done(self, inv: Invocation) -> None:
        """The retention marker of a finished invocation: a plain publish (no server ack awaited,
        so the hot path pays no round trip); the stream drops a duplicate by its message id."""
        await self._nc_().publish(f"{self._prefix}.done", json.dumps({"id": inv.id, "at": inv.finished_at}).encode(),
                                  headers={"Nats-Msg-Id": f"{inv.id}.done"})

    async def _dead_records(self, function: str) -> list[tuple[_Stored, int]]:
        keys = await self._subjects(self._stream("dead"), f"$KV.{self._bucket('dead')}.{function}.*")
        found = await asyncio.gather(*(self._find(k.rsplit(".", 1)[1]) for k in keys))
        return [f for f in found if f is not None]

    async def _load(self, invocation_id: str) -> tuple[_Stored, int]:
        found = await self._find(invocation_id)
        if found is None:
            raise NotFound(f"invocation {invocation_id!r} not found")
        return found

    async def _find(self, invocation_id: str) -> tuple[_Stored, int] | None:
        if not _is_key(invocation_id):
            return None
        try:
            entry = await self._kv["records"].get(invocation_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return _Stored.decode(entry.value or b""), entry.revision or 0

    async def _find_value(self, bucket: str, key: str) -> bytes | None:
        try:
            return (await self._kv[bucket].get(key)).value
        except nats.js.errors.KeyNotFoundError:
            return None

    async def _cas(self, stored: _Stored, revision: int) -> None:
        try:
            await self._kv["records"].update(stored.inv.id, stored.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise _Raced from exc

    async def _purge_key(self, bucket: str, key: str) -> None:
        """Remove ``key`` with its history and no tombstone, so subject listings stay exact."""
        await self._js_().purge_stream(self._stream(bucket), subject=f"$KV.{self._bucket(bucket)}.{key}")

    async def _subjects(self, stream: str, subject_filter: str) -> list[str]:
        info = await self._js_().stream_info(stream, subjects_filter=subject_filter)
        return sorted(s for s, n in (info.state.subjects or {}).items() if n)

    # -- connection -----------------------------------------------------------------------

    @property
    def _due_stream(self) -> str:
        return f"{self._prefix}_due"

    @property
    def _done_stream(self) -> str:
        return f"{self._prefix}_done"

    def _bucket(self, name: str) -> str:
        return f"{self._prefix}_{name}"

    def _stream(self, bucket: str) -> str:
        return f"KV_{self._bucket(bucket)}"

    def _nc_(self) -> Client:
        assert self._nc is not None
        return self._nc

    def _js_(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    async def _ready(self) -> None:
        """Connect and create the stream and buckets once; ``Unavailable`` at once while disconnected
        (so a request gets its 503 now, and nothing is buffered to land after it was refused)."""
        if self._nc is not None and not self._nc.is_closed:
            if not self._nc.is_connected:
                raise Unavailable(f"NATS at {self._url} is unreachable (reconnecting)")
            return
        async with self._connecting:
            if self._nc is not None and not self._nc.is_closed:
                return
            # One attempt at first (the caller is waiting for its 503), then reconnect forever:
            # a NATS restart must not leave this gateway without a queue.
            nc = await nats.connect(self._url, connect_timeout=self._timeout, max_reconnect_attempts=1,
                                    reconnect_time_wait=0.5, name="lamina-gateway", error_cb=_quiet,
                                    disconnected_cb=_quiet_cb, reconnected_cb=_quiet_cb)
            nc.options["max_reconnect_attempts"] = -1
            try:
                js = nc.jetstream(timeout=self._timeout)
                await _ensure_stream(js, StreamConfig(
                    name=self._due_stream, subjects=[f"{self._prefix}.due.*"], retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE, duplicate_window=120.0))
                await _ensure_stream(js, StreamConfig(
                    name=self._done_stream, subjects=[f"{self._prefix}.done"], retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE, duplicate_window=120.0))
                for bucket, ttl in (("records", None), ("idempotency", 3600.0), ("dead", None),
                                    ("leases", LEASE_ENTRY_TTL_S)):
                    self._kv[bucket] = await _ensure_bucket(js, self._bucket(bucket), ttl)
                self._idem_ttl = (await js.stream_info(self._stream("idempotency"))).config.max_age or 0.0
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js, self._consumers = nc, js, {}

    @contextlib.asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        try:
            yield
        except _NATS_ERRORS as exc:
            raise Unavailable(f"cannot {doing}: NATS at {self._url} failed ({type(exc).__name__}: {exc})") from exc


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)


async def _ensure_bucket(js: JetStreamContext, bucket: str, ttl: float | None) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.NotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE))


def _check_limits(new: NewInvocation) -> None:
    if len(new.idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidSpec(f"idempotency key is longer than {IDEMPOTENCY_KEY_MAX} characters")
    if len(new.callback_url) > CALLBACK_URL_MAX:
        raise InvalidSpec(f"callback URL is longer than {CALLBACK_URL_MAX} characters")


def _key(function: str, name: str) -> str:
    return f"{function}.{name}"


def _is_key(text: str) -> bool:
    return bool(text) and re.fullmatch(r"[-/_=.a-zA-Z0-9]+", text) is not None and not text.startswith(".")


def _nak(delay_s: float) -> bytes:
    return b"-NAK " + json.dumps({"delay": int(delay_s * 1e9)}).encode()


async def _quiet(exc: Exception) -> None:
    """Connection errors surface as ``Unavailable`` on the calls they fail; nothing to log here."""


async def _quiet_cb() -> None:
    """See ``_quiet``."""
