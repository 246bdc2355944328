"""The invocation stream's framing, shared by the invoker's listener and the gateway's client.

A frame is a 4-byte big-endian length and one serialised ``InvokeStreamFrame``
(proto/lamina/v1/invoker.proto stays the single source of the wire: only the length prefix
is defined here). Both ends parse with :func:`split_frames` from a plain buffer in their
``asyncio.Protocol.data_received``.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from google.protobuf.message import DecodeError

from lamina.rpc import invoker_pb2 as pb
from lamina.wire import MAX_MESSAGE_BYTES

#: Frame header: the length of the serialised ``InvokeStreamFrame`` that follows.
HEADER = struct.Struct(">I")
#: Largest frame either end accepts: the gRPC message limit, so both paths carry the same.
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES


def encode(frame: pb.InvokeStreamFrame) -> bytes:
    """``frame`` with its length header, ready to write."""
    data = frame.SerializeToString()
    return HEADER.pack(len(data)) + data


def split_frames(buffer: bytearray) -> tuple[list[pb.InvokeStreamFrame], int, str]:
    """The whole frames at the start of ``buffer``, how many bytes they took, and why the
    rest cannot be framed ("" while it is merely incomplete). Parsing copies what it keeps,
    so the caller may trim ``buffer`` afterwards."""
    frames: list[pb.InvokeStreamFrame] = []
    offset, end = 0, len(buffer)
    with memoryview(buffer) as view:
        while end - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(view, offset)
            if size > MAX_FRAME_BYTES:
                return frames, offset, f"frame of {size} bytes is over the limit of {MAX_FRAME_BYTES}"
            start = offset + HEADER.size
            if end - start < size:
                break
            try:
                frames.append(pb.InvokeStreamFrame.FromString(view[start:start + size]))
            except DecodeError as exc:
                return frames, offset, f"undecodable frame ({exc})"
            offset = start + size
    return frames, offset, ""


def tune(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY (a frame is one small write, never worth Nagle's wait) and keep-alive (a
    peer that vanished without a FIN is noticed even on an idle connection)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
