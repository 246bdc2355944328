"""The invocation stream's framing: frames written in one turn of the loop leave together."""

from __future__ import annotations

import asyncio

from lamina.framing import Coalescer, encode, split_frames
from lamina.rpc import invoker_pb2 as pb


class Recorder:
    """The part of a transport the coalescer uses, keeping each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def _frame(tag: int) -> bytes:
    return encode(pb.InvokeStreamFrame(tag=tag, request=pb.InvokeRequest(payload=b"%d" % tag)))


def test_frames_of_one_turn_leave_in_one_write_in_order() -> None:
    async def main() -> Recorder:
        transport = Recorder()
        out = Coalescer(transport)  # type: ignore[arg-type]
        for tag in (1, 2, 3):
            out.write(_frame(tag), tag)
        assert transport.writes == [] and out.unsent() == [1, 2, 3]
        await asyncio.sleep(0)
        out.write(_frame(4), 4)
        await asyncio.sleep(0)
        assert out.unsent() == []
        return transport

    writes = asyncio.run(main()).writes
    assert len(writes) == 2
    frames, consumed, error = split_frames(bytearray(b"".join(writes)))
    assert (error, consumed) == ("", sum(map(len, writes)))
    assert [f.tag for f in frames] == [1, 2, 3, 4]
    assert writes[1] == _frame(4)


def test_nothing_is_written_to_a_closing_transport_and_its_frames_stay_unsent() -> None:
    async def main() -> tuple[Recorder, list[int]]:
        transport = Recorder()
        out = Coalescer(transport)  # type: ignore[arg-type]
        out.write(_frame(5), 5)
        out.write(b"untagged")
        transport.closing = True
        await asyncio.sleep(0)
        return transport, out.unsent()

    transport, unsent = asyncio.run(main())
    assert transport.writes == []
    assert unsent == [5]


def test_flush_writes_at_once() -> None:
    async def main() -> Recorder:
        transport = Recorder()
        out = Coalescer(transport)  # type: ignore[arg-type]
        out.write(_frame(1), 1)
        out.flush()
        assert transport.writes == [_frame(1)]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return transport

    assert asyncio.run(main()).writes == [_frame(1)]
