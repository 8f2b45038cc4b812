"""Unsigned-varint length-prefixed frames, as a sans-IO decoder.

``FrameDecoder`` takes bytes as they arrive and hands out whole frames; it never allocates for
a frame whose announced length exceeds ``max_frame`` — the length is checked as soon as the
prefix is complete, before a single body byte is buffered (h11's ``receive_data`` /
``next_event`` style). The trio side (:func:`read_frame`) only moves bytes.
"""

from __future__ import annotations

__all__ = [
    "MAX_FRAME",
    "MAX_ENVELOPE_BYTES",
    "FrameError",
    "FrameTooLarge",
    "FrameTruncated",
    "FrameDecoder",
    "encode_frame",
    "encode_uvarint",
]

MAX_FRAME = 64 * 1024
# One signed peer record (records.py checks it before parsing; messages.py when fitting answers).
# An ed25519/secp256k1 record with 64 addresses is ~4 KiB; RSA keys are ~300 bytes larger.
MAX_ENVELOPE_BYTES = 8 * 1024
_MAX_VARINT_BYTES = 10


class FrameError(Exception):
    """The peer broke the framing rules; the stream should be reset."""


class FrameTooLarge(FrameError):
    def __init__(self, announced: int, limit: int) -> None:
        super().__init__(f"frame of {announced} bytes exceeds the {limit}-byte limit")
        self.announced = announced
        self.limit = limit


class FrameTruncated(FrameError):
    """The stream ended inside a frame."""


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise FrameTooLarge(len(payload), max_frame)
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` then ``next_frame()`` until it returns None."""

    __slots__ = ("_buf", "_max", "_need")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._need: int | None = None  # body length once the prefix is parsed

    @property
    def missing(self) -> int | None:
        """Bytes still needed to finish the frame being read (None while reading its length)."""
        return None if self._need is None else self._need - len(self._buf)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        # Check the announced size as soon as the prefix is complete, so an oversized frame is
        # refused before its body is buffered.
        if self._need is None:
            self._parse_prefix()
        elif len(self._buf) > self._need + _MAX_VARINT_BYTES + self._max:
            raise FrameError("peer sent far more data than one frame")

    def _parse_prefix(self) -> None:
        value = 0
        for i, byte in enumerate(self._buf[:_MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise FrameError("non-minimal varint length prefix")
                if value > self._max:
                    raise FrameTooLarge(value, self._max)
                del self._buf[: i + 1]
                self._need = value
                return
        if len(self._buf) >= _MAX_VARINT_BYTES:
            raise FrameError("varint length prefix longer than 10 bytes")

    def next_frame(self) -> bytes | None:
        if self._need is None:
            self._parse_prefix()
            if self._need is None:
                return None
        if len(self._buf) < self._need:
            return None
        frame = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return frame

    def end_of_stream(self) -> None:
        """Raise if the stream ended in the middle of a frame."""
        if self._need is not None or self._buf:
            raise FrameTruncated(
                f"stream ended with {len(self._buf)} bytes of an unfinished frame"
            )
