from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.wire.framing import (
    MAX_FRAME,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    encode_frame,
    encode_uvarint,
)


def test_round_trip_in_one_piece():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"hello") + encode_frame(b""))
    assert dec.next_frame() == b"hello"
    assert dec.next_frame() == b""
    assert dec.next_frame() is None


def test_byte_by_byte():
    data = encode_frame(b"x" * 300)
    dec = FrameDecoder()
    for b in data:
        assert dec.next_frame() is None
        dec.feed(bytes([b]))
    assert dec.next_frame() == b"x" * 300


def test_oversized_refused_before_body_is_buffered():
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(encode_uvarint(1025))
    assert info.value.announced == 1025
    assert dec.buffered <= 10  # nothing of a body was kept


def test_default_limit_is_64_kib():
    assert MAX_FRAME == 64 * 1024
    FrameDecoder().feed(encode_uvarint(MAX_FRAME))  # exactly the limit is fine
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(encode_uvarint(MAX_FRAME + 1))


def test_huge_varint_rejected():
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\xff" * 11)


def test_non_minimal_varint_rejected():
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x85\x00")


def test_truncated():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"abcdef")[:4])
    assert dec.next_frame() is None
    with pytest.raises(FrameTruncated):
        dec.end_of_stream()


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(1, 64 * 1024))
def test_arbitrary_bytes_never_crash(data, limit):
    dec = FrameDecoder(max_frame=limit)
    try:
        dec.feed(data)
        while dec.next_frame() is not None:
            pass
    except FrameError:
        pass
    assert dec.buffered <= len(data)


@given(st.lists(st.binary(max_size=3000), max_size=5), st.integers(1, 50))
def test_chunked_round_trip(payloads, chunk):
    wire = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(wire), chunk):
        dec.feed(wire[i : i + chunk])
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == payloads


async def test_read_frame_leaves_the_next_frame_on_the_stream():
    """Two frames sent back to back come out as two frames (nothing read past the first)."""
    import trio
    import trio.testing

    from prozchain_discovery.net.frames import read_frame
    from prozchain_discovery.wire.framing import encode_frame

    send, recv = trio.testing.memory_stream_one_way_pair()

    class _Stream:
        async def read(self, n: int | None = None) -> bytes:
            return await recv.receive_some(n)

    await send.send_all(encode_frame(b"first") + encode_frame(b"second" * 100))
    await send.aclose()
    s = _Stream()
    assert await read_frame(s) == b"first"
    assert await read_frame(s) == b"second" * 100
