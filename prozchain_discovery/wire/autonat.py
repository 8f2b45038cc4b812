"""Typed codec for AutoNAT v2 (protocols/autonat-v2.proto, libp2p specs autonat/autonat-v2.md).

Pure: bytes in, typed messages out, and back. Every message on both streams is prefixed with
its length as an unsigned varint; :class:`~.framing.FrameDecoder` refuses an oversized length
before buffering a byte of the body (``MAX_MESSAGE`` on the dial-request stream, 8 KiB as in
go-libp2p; ``MAX_DIAL_BACK_MESSAGE`` on the dial-back stream). A decoder raises only
:class:`AutonatDecodeError`, whatever the bytes (property-tested with hypothesis): protobuf
errors, an empty ``oneof``, status codes we do not know (the spec: "implementations MUST discard
responses with status codes they do not understand") and too many addresses all land there.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError as _PbDecodeError

from .framing import encode_frame
from .messages import DecodeError
from .pb import autonat_v2_pb2 as pb

__all__ = [
    "DIAL_REQUEST_PROTOCOL",
    "DIAL_BACK_PROTOCOL",
    "MAX_MESSAGE",
    "MAX_DIAL_BACK_MESSAGE",
    "MAX_ADDRS",
    "DIAL_DATA_CHUNK",
    "MIN_DIAL_DATA",
    "MAX_DIAL_DATA",
    "MIN_DIAL_DATA_PIECE",
    "AutonatDecodeError",
    "ResponseStatus",
    "DialStatus",
    "DialRequest",
    "DialResponse",
    "DialDataRequest",
    "DialDataResponse",
    "DialBack",
    "DialBackResponse",
    "RequestMessage",
    "decode_message",
    "encode_message",
    "frame_message",
    "dial_data_frames",
    "decode_dial_back",
    "encode_dial_back",
    "decode_dial_back_response",
    "encode_dial_back_response",
    "DialDataCounter",
]

DIAL_REQUEST_PROTOCOL = "/libp2p/autonat/2/dial-request"
DIAL_BACK_PROTOCOL = "/libp2p/autonat/2/dial-back"
MAX_MESSAGE = 8192  # go-libp2p maxMsgSize
MAX_DIAL_BACK_MESSAGE = 1024  # go-libp2p dialBackMaxMsgSize
MAX_ADDRS = 50  # go-libp2p maxPeerAddresses: a server looks no further down the list
DIAL_DATA_CHUNK = 4096  # the spec's bound on one DialDataResponse.data
# The amplification guard: what a server asks before dialing an IP other than the requester's.
MIN_DIAL_DATA = 30_000
MAX_DIAL_DATA = 100_000
# A piece smaller than this before the total is reached only makes the server do more work per
# byte (go-libp2p refuses it too).
MIN_DIAL_DATA_PIECE = 100


class AutonatDecodeError(DecodeError):
    """An AutoNAT v2 message broke the wire rules (bad protobuf, unknown status, empty oneof)."""


class ResponseStatus(enum.IntEnum):
    E_INTERNAL_ERROR = 0
    E_REQUEST_REJECTED = 100
    E_DIAL_REFUSED = 101
    OK = 200


class DialStatus(enum.IntEnum):
    UNUSED = 0
    E_DIAL_ERROR = 100
    E_DIAL_BACK_ERROR = 101
    OK = 200


@dataclass(frozen=True, slots=True)
class DialRequest:
    """Client → server: dial the first of ``addrs`` (binary multiaddrs) you will, with ``nonce``."""

    addrs: tuple[bytes, ...]
    nonce: int


@dataclass(frozen=True, slots=True)
class DialDataRequest:
    """Server → client: pay ``num_bytes`` before I dial ``addrs[addr_idx]`` (another IP)."""

    addr_idx: int
    num_bytes: int


@dataclass(frozen=True, slots=True)
class DialResponse:
    status: ResponseStatus
    addr_idx: int = 0
    dial_status: DialStatus = DialStatus.UNUSED


@dataclass(frozen=True, slots=True)
class DialDataResponse:
    data: bytes


@dataclass(frozen=True, slots=True)
class DialBack:
    """Server → client, on the new connection: the nonce of the request it answers."""

    nonce: int


@dataclass(frozen=True, slots=True)
class DialBackResponse:
    """Client → server: the nonce arrived (the only status the spec has is OK = 0)."""


RequestMessage = DialRequest | DialResponse | DialDataRequest | DialDataResponse

_NONCE_MAX = (1 << 64) - 1


def _parse(kind: str, cls: type, data: bytes, limit: int) -> object:
    if len(data) > limit:
        raise AutonatDecodeError(kind, f"{len(data)} bytes > {limit}")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (_PbDecodeError, ValueError, RuntimeError) as exc:
        raise AutonatDecodeError(kind, f"not protobuf ({exc})"[:200]) from exc
    return msg


def decode_message(data: bytes) -> RequestMessage:
    """One ``Message`` from the dial-request stream (without its length prefix)."""
    msg: pb.Message = _parse("Message", pb.Message, data, MAX_MESSAGE)  # type: ignore[assignment]
    which = msg.WhichOneof("msg")
    if which == "dialRequest":
        req = msg.dialRequest
        # A server looks at no more than MAX_ADDRS; the rest are dropped, not an error (go does
        # the same, and a go client may send more).
        return DialRequest(tuple(bytes(a) for a in req.addrs[:MAX_ADDRS]), int(req.nonce))
    if which == "dialResponse":
        resp = msg.dialResponse
        try:
            status = ResponseStatus(resp.status)
            dial_status = DialStatus(resp.dialStatus)
        except ValueError as exc:
            raise AutonatDecodeError("DialResponse", f"unknown status ({exc})") from exc
        return DialResponse(status, int(resp.addrIdx), dial_status)
    if which == "dialDataRequest":
        ddr = msg.dialDataRequest
        return DialDataRequest(int(ddr.addrIdx), int(ddr.numBytes))
    if which == "dialDataResponse":
        return DialDataResponse(bytes(msg.dialDataResponse.data))
    raise AutonatDecodeError("Message", "no message in the oneof")


def encode_message(message: RequestMessage) -> bytes:
    """The protobuf bytes of one dial-request-stream message (no length prefix)."""
    out = pb.Message()
    if isinstance(message, DialRequest):
        if not 0 <= message.nonce <= _NONCE_MAX:
            raise ValueError("nonce must fit in 64 bits")
        out.dialRequest.addrs.extend(message.addrs)
        out.dialRequest.nonce = message.nonce
    elif isinstance(message, DialResponse):
        out.dialResponse.status = int(message.status)  # type: ignore[assignment]
        out.dialResponse.addrIdx = message.addr_idx
        out.dialResponse.dialStatus = int(message.dial_status)  # type: ignore[assignment]
    elif isinstance(message, DialDataRequest):
        out.dialDataRequest.addrIdx = message.addr_idx
        out.dialDataRequest.numBytes = message.num_bytes
    else:
        out.dialDataResponse.data = message.data
    return out.SerializeToString()


def frame_message(message: RequestMessage) -> bytes:
    """``encode_message`` with its varint length prefix (raises if over ``MAX_MESSAGE``)."""
    return encode_frame(encode_message(message), MAX_MESSAGE)


def dial_data_frames(num_bytes: int, chunk: int = DIAL_DATA_CHUNK) -> Iterator[bytes]:
    """Framed ``DialDataResponse`` messages carrying ``num_bytes`` of zeros in total.

    The full-size frame is built once and reused (the spec lets the last piece overshoot).
    """
    full = frame_message(DialDataResponse(bytes(chunk)))
    remain = num_bytes
    while remain > 0:
        if remain >= chunk:
            yield full
        else:
            yield frame_message(DialDataResponse(bytes(remain)))
        remain -= chunk


def decode_dial_back(data: bytes) -> DialBack:
    msg: pb.DialBack = _parse("DialBack", pb.DialBack, data, MAX_DIAL_BACK_MESSAGE)  # type: ignore[assignment]
    return DialBack(int(msg.nonce))


def encode_dial_back(message: DialBack) -> bytes:
    return encode_frame(pb.DialBack(nonce=message.nonce).SerializeToString(), MAX_DIAL_BACK_MESSAGE)


def decode_dial_back_response(data: bytes) -> DialBackResponse:
    msg: pb.DialBackResponse = _parse(  # type: ignore[assignment]
        "DialBackResponse", pb.DialBackResponse, data, MAX_DIAL_BACK_MESSAGE
    )
    if msg.status != 0:
        raise AutonatDecodeError("DialBackResponse", f"unknown status {msg.status}")
    return DialBackResponse()


def encode_dial_back_response() -> bytes:
    return encode_frame(pb.DialBackResponse().SerializeToString(), MAX_DIAL_BACK_MESSAGE)


class DialDataCounter:
    """Counts the dial data a client pays, message by message (sans-IO).

    ``add(message)`` raises :class:`AutonatDecodeError` for anything but a ``DialDataResponse``
    and for a piece under ``MIN_DIAL_DATA_PIECE`` bytes before the total is reached (many tiny
    pieces would make the server parse many messages per byte paid). ``done`` once at least
    ``num_bytes`` arrived.
    """

    __slots__ = ("num_bytes", "received")

    def __init__(self, num_bytes: int) -> None:
        self.num_bytes = num_bytes
        self.received = 0

    @property
    def done(self) -> bool:
        return self.received >= self.num_bytes

    def add(self, message: RequestMessage) -> None:
        if not isinstance(message, DialDataResponse):
            raise AutonatDecodeError(type(message).__name__, "expected DialDataResponse while paying dial data")
        self.received += len(message.data)
        if len(message.data) < MIN_DIAL_DATA_PIECE and not self.done:
            raise AutonatDecodeError("DialDataResponse", f"piece of {len(message.data)} bytes is too small")
