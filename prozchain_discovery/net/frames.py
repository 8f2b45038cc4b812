"""Read one length-prefixed frame off a libp2p stream (the trio side of wire/framing.py)."""

from __future__ import annotations

from typing import Protocol

import trio

from ..wire.framing import MAX_FRAME, FrameDecoder, FrameTruncated

__all__ = ["read_frame"]


class _Readable(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


async def read_frame(stream: _Readable, max_frame: int = MAX_FRAME, chunk: int = 16384) -> bytes:
    """Read exactly one frame from a libp2p stream (no timeout here: callers wrap one).

    It never reads past the frame: the length prefix is read a byte at a time (at most 3 bytes
    for a 64 KiB frame) and then exactly the body, so a second frame already sent on the stream
    (AutoNAT v2's dial data, pipelined requests) stays there for the next call.
    """
    decoder = FrameDecoder(max_frame)
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        want = 1 if (missing := decoder.missing) is None else min(chunk, missing)
        try:
            data = await stream.read(max(1, want))
        except trio.Cancelled:
            raise
        except Exception as exc:  # libp2p raises StreamEOF / StreamReset / StreamClosed
            if type(exc).__name__ in ("StreamEOF", "IncompleteReadError"):
                decoder.end_of_stream()
                raise FrameTruncated("stream ended before a frame") from exc
            raise
        if not data:
            decoder.end_of_stream()
            raise FrameTruncated("stream ended before a frame")
        decoder.feed(data)
