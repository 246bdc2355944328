"""Cron triggers: the model, the schedule syntax and its validation, shared by the
controller (authoritative), the gateway (which fires them) and the CLI (early errors).

A schedule is one of:

- six cron fields, **seconds first** (``*/10 * * * * *``), as APScheduler and robfig/cron;
- five standard cron fields (``*/5 * * * *``: minute hour day month weekday), second 0;
- ``rate(N unit)`` as AWS EventBridge: ``rate(1 minute)``, ``rate(5 minutes)``,
  ``rate(2 hours)``, ``rate(1 day)`` (singular for 1, plural otherwise). A rate's ticks are
  anchored at the trigger's creation (whole second), so every gateway computes the same ticks.

Cron fields follow APScheduler's ``CronTrigger.from_crontab`` (day-of-week ``0``/``7`` is
Sunday, names like ``mon-fri`` work). They are evaluated on the wall clock of the trigger's
IANA time zone (default UTC). Daylight-saving transitions follow APScheduler, and are tested
(``tests/core/test_triggers.py``): a wall time that does not exist (spring forward, e.g.
02:30 in Europe/Paris on 2026-03-29) fires once, at the instant the old offset gives it
(03:30 CEST: never skipped); a wall time that occurs twice (fall back, 02:30 on 2026-10-25)
fires at both occurrences, an hour apart, which are distinct instants and so distinct ticks.
Schedules that must run once a day whatever happens should use UTC or avoid 02:00-03:00.

A tick is identified by its instant (unix seconds); a fire is recorded once per
(trigger, tick), which is what makes a failover unable to fire a tick twice.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from lamina.core.errors import InvalidSpec, LimitExceeded
from lamina.core.functions import validate_name

#: Longest schedule expression and time zone name (characters).
SCHEDULE_MAX, TIMEZONE_MAX = 128, 64
#: Largest constant payload a trigger may carry: the async event limit (Lambda's 256 KB).
PAYLOAD_MAX_BYTES = 256 * 1024
#: Most triggers one function may have.
TRIGGERS_PER_FUNCTION = 100
#: Fires sampled when measuring a cron schedule's shortest interval.
_INTERVAL_SAMPLES = 200

_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_RATE_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class Overlap(enum.Enum):
    """What a tick does while the previous fire's invocation is still queued or running."""

    #: Fire anyway (several runs may overlap).
    ALLOW = "allow"
    #: Record the tick as skipped instead of firing.
    SKIP = "skip"


class Missed(enum.Enum):
    """What happens to ticks that passed while no scheduler was running (all gateways down,
    or the lease changing hands)."""

    #: Forget them: the schedule resumes with its next tick.
    SKIP = "skip"
    #: One catch-up fire, when a scheduler starts, for the most recent missed tick.
    RUN_ONCE = "run-once"


class FireOutcome(enum.Enum):
    """What became of a claimed tick."""

    #: Claimed; its invocation is being enqueued (a crash here leaves it pending).
    PENDING = "pending"
    #: An async invocation was enqueued (its state tells how the run went).
    FIRED = "fired"
    #: Not fired: overlap policy ``skip`` and the previous invocation was still going.
    SKIPPED = "skipped"
    #: Could not be enqueued (the function no longer exists, the event was refused).
    FAILED = "failed"


@dataclass(frozen=True)
class TriggerSpec:
    """What a user declares: a function, a schedule in a time zone, and the event to send."""

    function: str
    schedule: str
    timezone: str = "UTC"
    #: The JSON event sent as is; empty means an EventBridge-style "Scheduled Event"
    #: (``{"source": "lamina.cron", "detail-type": "Scheduled Event", "time": <tick>, …}``).
    payload: bytes = b""
    overlap: Overlap = Overlap.ALLOW
    missed: Missed = Missed.SKIP


@dataclass(frozen=True)
class Trigger:
    """A stored trigger."""

    id: str
    spec: TriggerSpec
    created_at: float = 0.0
    #: The newest tick recorded for it (unix seconds, 0: never): where missed ticks start.
    last_tick: float = 0.0

    def schedule(self) -> BaseTrigger:
        """The APScheduler trigger that computes this trigger's ticks."""
        return parse_schedule(self.spec.schedule, self.spec.timezone, anchor=self.created_at)


@dataclass(frozen=True)
class Fire:
    """One tick of a trigger, recorded once before its invocation is enqueued."""

    id: int
    trigger_id: str
    function: str
    #: The tick: when it was scheduled (unix seconds).
    scheduled_at: float
    #: When the scheduler handled it.
    fired_at: float
    outcome: FireOutcome
    #: The async invocation it enqueued ("" unless fired).
    invocation_id: str = ""
    #: Why it was skipped or failed; "catch-up" for a missed tick run once.
    detail: str = ""


@dataclass(frozen=True)
class Tick:
    """A tick to claim: one trigger's scheduled instant (unix seconds)."""

    trigger_id: str
    scheduled_at: float
    #: Recorded with the fire: "catch-up" for a missed tick run once.
    detail: str = ""


@dataclass(frozen=True)
class Claim:
    """What claiming one tick answered."""

    tick: Tick
    #: The tick's record: new and pending when ``claimed``, else the one recorded before;
    #: None when the trigger no longer exists.
    fire: Fire | None
    #: Whether this claim recorded it (and so must fire it).
    claimed: bool
    #: For a trigger with overlap ``skip``: its newest earlier fire that enqueued an invocation.
    previous: Fire | None = None


@dataclass(frozen=True)
class Lease:
    """A named lease as the store answered an acquire: who holds it, until when."""

    name: str
    holder: str
    expires_at: float
    #: Whether the caller holds it now.
    held: bool


def zone(name: str) -> tzinfo:
    """The IANA time zone ``name``; ``InvalidSpec`` if unknown."""
    if not name or len(name) > TIMEZONE_MAX:
        raise InvalidSpec(f"invalid time zone {name[:80]!r}: expected an IANA name like Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSpec(f"unknown time zone {name!r}: expected an IANA name like Europe/Paris or UTC") from exc


def parse_schedule(expression: str, timezone: str = "UTC", *, anchor: float = 0.0) -> BaseTrigger:
    """The APScheduler trigger of ``expression`` in ``timezone``; ``InvalidSpec`` naming the
    problem. ``anchor`` (unix seconds) is when a ``rate(…)``'s ticks start."""
    tz = zone(timezone)
    text = " ".join((expression or "").split())
    if not text or len(text) > SCHEDULE_MAX:
        raise InvalidSpec(f"invalid schedule {expression[:80]!r}: expected 5 or 6 cron fields or rate(N unit)")
    if text.startswith("rate("):
        match = _RATE_RE.match(text)
        if not match:
            raise InvalidSpec(f"invalid schedule {text!r}: expected rate(N minute[s]|hour[s]|day[s]), "
                              "e.g. rate(5 minutes)")
        value, unit = int(match.group(1)), match.group(2)
        if value <= 0:
            raise InvalidSpec(f"invalid schedule {text!r}: the rate must be a positive whole number")
        if (value == 1) != (not unit.endswith("s")):
            raise InvalidSpec(f"invalid schedule {text!r}: use the singular unit for 1 and the plural otherwise "
                              "(rate(1 minute), rate(5 minutes)), as AWS does")
        start = datetime.fromtimestamp(int(anchor), UTC) if anchor else datetime(2000, 1, 1, tzinfo=UTC)
        return IntervalTrigger(seconds=value * _RATE_SECONDS[unit.rstrip("s")], start_date=start, timezone=tz)
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise InvalidSpec(f"invalid schedule {text!r}: expected 6 fields (second minute hour day month weekday), "
                          f"5 standard cron fields, or rate(N unit); got {len(fields)} fields")
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=tz)
    except ValueError as exc:
        raise InvalidSpec(f"invalid schedule {text!r}: {exc}") from exc


def _weekdays(field: str) -> str:
    """The weekday field in cron's numbering (0 and 7 are Sunday, as crontab and robfig/cron),
    spelled as names for APScheduler 3, whose own numbers start at Monday (its issue 286)."""
    if field == "*" or field == "?":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"invalid weekday step in {part!r}")
        if base == "*":
            first, last = 0, 6
        else:
            low, _, high = base.partition("-")
            first = _weekday_number(low)
            last = _weekday_number(high) if high else (6 if step else first)
            if last < first:
                raise ValueError(f"invalid weekday range {part!r}")
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(_WEEKDAY_NAMES[d] for d in sorted(days))


_WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday_number(token: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token in _WEEKDAY_NAMES:
        return _WEEKDAY_NAMES.index(token)
    raise ValueError(f"invalid weekday {token!r}: expected 0-7 (0 and 7 are Sunday) or sun..sat")


def next_ticks(trigger: BaseTrigger, after: float, count: int) -> list[float]:
    """The first ``count`` ticks strictly after ``after`` (unix seconds), fewer if it ends."""
    now = datetime.fromtimestamp(after, UTC) + timedelta(microseconds=1)
    ticks: list[float] = []
    previous = None
    while len(ticks) < count:
        nxt = trigger.get_next_fire_time(previous, now)
        if nxt is None:
            break
        ticks.append(nxt.timestamp())
        previous, now = nxt, nxt
    return ticks


def last_tick(trigger: BaseTrigger, at_or_before: float) -> float | None:
    """The latest tick at or before ``at_or_before`` (unix seconds), looking back up to a
    year; None if there is none. Searches growing windows so a frequent schedule costs a
    few steps and a yearly one a few hundred."""
    for window in (2, 120, 7200, 2 * 86400, 32 * 86400, 367 * 86400):
        found = None
        for tick in _ticks_between(trigger, at_or_before - window, at_or_before):
            found = tick
        if found is not None:
            return found
    return None


def _ticks_between(trigger: BaseTrigger, start: float, end: float, limit: int = 100_000) -> list[float]:
    ticks: list[float] = []
    previous = None
    now = datetime.fromtimestamp(start, UTC)
    while len(ticks) < limit:
        nxt = trigger.get_next_fire_time(previous, now)
        if nxt is None or nxt.timestamp() > end:
            break
        ticks.append(nxt.timestamp())
        previous, now = nxt, nxt
    return ticks


def shortest_interval(trigger: BaseTrigger, after: float) -> float:
    """The shortest gap (seconds) between consecutive ticks among the next few hundred
    (infinite for a schedule with fewer than two)."""
    if isinstance(trigger, IntervalTrigger):
        return trigger.interval_length
    ticks = next_ticks(trigger, after, _INTERVAL_SAMPLES)
    return min((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=float("inf"))


def validate_trigger(spec: TriggerSpec, *, min_interval_s: float = 0.0, max_payload_bytes: int = PAYLOAD_MAX_BYTES,
                     now: float | None = None) -> TriggerSpec:
    """``spec`` normalised (schedule whitespace collapsed), or ``InvalidSpec`` naming the
    first bad field: the function name, the schedule, the time zone, a payload that is not
    JSON, a schedule firing more often than every ``min_interval_s`` seconds;
    ``LimitExceeded`` for a payload over ``max_payload_bytes``."""
    validate_name(spec.function)
    trigger = parse_schedule(spec.schedule, spec.timezone)
    if len(spec.payload) > max_payload_bytes:
        raise LimitExceeded(f"the payload of {len(spec.payload)} bytes is over the limit of {max_payload_bytes} bytes")
    if spec.payload:
        try:
            json.loads(spec.payload)
        except ValueError as exc:
            raise InvalidSpec(f"the payload is not valid JSON: {exc}") from exc
    if min_interval_s > 0:
        start = datetime.now(UTC).timestamp() if now is None else now
        gap = shortest_interval(trigger, start)
        if gap < min_interval_s:
            raise InvalidSpec(f"schedule {spec.schedule!r} fires every {gap:g} s at times, more often than the "
                              f"minimum interval of {min_interval_s:g} s (LAMINA_CRON_MIN_INTERVAL_S)")
    return replace(spec, schedule=" ".join(spec.schedule.split()))


def parse_overlap(value: str) -> Overlap:
    try:
        return Overlap(value or Overlap.ALLOW.value)
    except ValueError as exc:
        raise InvalidSpec(f"invalid overlap policy {value!r}: expected allow or skip") from exc


def parse_missed(value: str) -> Missed:
    try:
        return Missed(value or Missed.SKIP.value)
    except ValueError as exc:
        raise InvalidSpec(f"invalid missed-tick policy {value!r}: expected skip or run-once") from exc


def spec_from_json(function: str, body: Any) -> TriggerSpec:
    """A spec from the REST/``lamina.yaml`` shape ``{schedule, tz|timezone, payload, overlap,
    missed}`` (payload: any JSON value, sent as is; a string is taken as JSON text)."""
    if not isinstance(body, dict):
        raise InvalidSpec("a trigger must be a mapping with at least a schedule")
    known = {"schedule", "tz", "timezone", "payload", "overlap", "missed"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidSpec(f"unknown trigger keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    schedule = body.get("schedule")
    if not isinstance(schedule, str):
        raise InvalidSpec("a trigger needs a schedule: 6 cron fields (seconds first), 5 fields, or rate(N unit)")
    payload = body.get("payload")
    if payload is None:
        data = b""
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        data = json.dumps(payload, separators=(",", ":")).encode()
    return TriggerSpec(function=function, schedule=schedule, timezone=str(body.get("tz") or body.get("timezone") or "UTC"),
                       payload=data, overlap=parse_overlap(str(body.get("overlap") or "")),
                       missed=parse_missed(str(body.get("missed") or "")))


def scheduled_event(trigger: Trigger, tick: float, fire_id: int) -> bytes:
    """The event a fire sends: the trigger's payload as is, or, without one, an
    EventBridge-style Scheduled Event naming the tick (what Lambda handlers of schedules expect)."""
    if trigger.spec.payload:
        return trigger.spec.payload
    when = datetime.fromtimestamp(tick, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({
        "version": "0", "id": f"{trigger.id}-{fire_id}", "detail-type": "Scheduled Event", "source": "lamina.cron",
        "time": when, "resources": [f"lamina:cron:{trigger.spec.function}:{trigger.id}"],
        "detail": {"schedule": trigger.spec.schedule, "timezone": trigger.spec.timezone, "scheduled_at": tick},
    }, separators=(",", ":")).encode()
