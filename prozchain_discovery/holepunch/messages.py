"""The ``/libp2p/dcutr`` message codec (sans-IO): ``HolePunch`` CONNECT/SYNC, at most 4 KiB.

Frames are unsigned-varint length-prefixed protobuf (the spec's framing, as go-libp2p's
``pbio.NewDelimitedReader(s, maxMsgSize)``); the size is checked on the prefix, before the body
is buffered (wire/framing.py). A message that does not parse, has the wrong type, or carries
more than ``max_addrs`` addresses is a :class:`DcutrProtocolError`; addresses that do not parse
as multiaddrs are skipped one by one, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from ..wire.framing import encode_frame
from ..wire.pb import dcutr_pb2

__all__ = ["PROTOCOL_ID", "MAX_MESSAGE", "DcutrProtocolError", "Connect", "encode_connect",
           "encode_sync", "decode_connect", "decode_sync", "CONNECT", "SYNC"]

PROTOCOL_ID = "/libp2p/dcutr"
MAX_MESSAGE = 4 * 1024
CONNECT = dcutr_pb2.HolePunch.CONNECT
SYNC = dcutr_pb2.HolePunch.SYNC


class DcutrProtocolError(Exception):
    """The peer broke the DCUtR rules (size, type, encoding); the attempt ends."""


@dataclass(frozen=True)
class Connect:
    addrs: tuple[Multiaddr, ...]
    nat_type: str | None  # the prozchain extension field; None from go/js peers
    skipped: int = 0  # addresses that did not parse or were over the limit


def encode_connect(addrs: list[Multiaddr], nat_type: str | None, max_addrs: int = 20) -> bytes:
    msg = dcutr_pb2.HolePunch(type=CONNECT)
    msg.ObsAddrs.extend(a.to_bytes() for a in addrs[:max_addrs])
    if nat_type:
        msg.nat_type = nat_type
    return encode_frame(msg.SerializeToString(), MAX_MESSAGE)


def encode_sync() -> bytes:
    return encode_frame(dcutr_pb2.HolePunch(type=SYNC).SerializeToString(), MAX_MESSAGE)


def _parse(frame: bytes) -> dcutr_pb2.HolePunch:
    if len(frame) > MAX_MESSAGE:
        raise DcutrProtocolError(f"message of {len(frame)} bytes exceeds {MAX_MESSAGE}")
    msg = dcutr_pb2.HolePunch()
    try:
        msg.ParseFromString(frame)
    except DecodeError as exc:  # also a missing required `type`
        raise DcutrProtocolError(f"undecodable HolePunch: {exc}") from None
    return msg


def decode_connect(frame: bytes, max_addrs: int = 20) -> Connect:
    msg = _parse(frame)
    if msg.type != CONNECT:
        raise DcutrProtocolError(f"expected CONNECT, got type {msg.type}")
    addrs: list[Multiaddr] = []
    skipped = max(0, len(msg.ObsAddrs) - max_addrs)
    for raw in msg.ObsAddrs[:max_addrs]:
        try:
            ma = Multiaddr(bytes(raw))
            str(ma)  # Multiaddr parses bytes lazily; make it parse now
            addrs.append(ma)
        except Exception:  # multiaddr raises several types for bad bytes
            skipped += 1
    nat = msg.nat_type if msg.HasField("nat_type") else None
    if nat is not None and (len(nat) > 32 or not nat.isascii()):
        nat = "unknown"
    return Connect(tuple(addrs), nat, skipped)


def decode_sync(frame: bytes) -> None:
    msg = _parse(frame)
    if msg.type != SYNC:
        raise DcutrProtocolError(f"expected SYNC, got type {msg.type}")
