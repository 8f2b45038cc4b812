"""Typed codecs for the bootstrap and PEX messages (protocols/*.proto).

Decoding checks what protobuf alone does not: string and repeated-field sizes, enum values
known to us. Every failure is a :class:`DecodeError`; nothing else escapes a decoder, whatever
the bytes (property-tested with hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message

from .framing import MAX_ENVELOPE_BYTES, MAX_FRAME
from .pb import bootstrap_pb2, pex_pb2

__all__ = [
    "BOOTSTRAP_PROTOCOL",
    "PEX_PROTOCOL",
    "MAX_NETWORK_ID",
    "MAX_RECORDS_PER_MESSAGE",
    "DecodeError",
    "BootstrapRequest",
    "BootstrapResponse",
    "BootstrapStatus",
    "PexRequest",
    "PexResponse",
    "PexStatus",
]

BOOTSTRAP_PROTOCOL = "/prozchain/bootstrap/1.0"
PEX_PROTOCOL = "/prozchain/pex/1.0"
MAX_NETWORK_ID = 64
MAX_OBSERVED_ADDR = 256
# A 64 KiB frame holds at most ~400 minimal records; anything above this is abuse.
MAX_RECORDS_PER_MESSAGE = 512

BootstrapStatus = bootstrap_pb2.BootstrapResponse.Status
PexStatus = pex_pb2.PexResponse.Status


class DecodeError(ValueError):
    """A message could not be decoded or broke a size/enum rule; ``message`` names it."""

    def __init__(self, message_type: str, detail: str) -> None:
        super().__init__(f"bad {message_type}: {detail}")
        self.message_type = message_type
        self.detail = detail


_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], data: bytes) -> _M:
    if len(data) > MAX_FRAME:
        raise DecodeError(cls.__name__, f"{len(data)} bytes > {MAX_FRAME}")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (_PbDecodeError, ValueError, RuntimeError) as exc:
        raise DecodeError(cls.__name__, f"not protobuf ({exc})"[:200]) from exc
    return msg


def _check_network_id(kind: str, value: str) -> None:
    if len(value.encode()) > MAX_NETWORK_ID:
        raise DecodeError(kind, f"network_id longer than {MAX_NETWORK_ID} bytes")


def _check_records(kind: str, records: list[bytes]) -> None:
    if len(records) > MAX_RECORDS_PER_MESSAGE:
        raise DecodeError(kind, f"{len(records)} records > {MAX_RECORDS_PER_MESSAGE}")
    # Oversized single records are not fatal: they are dropped and counted by the verifier
    # (records.verify_record checks MAX_ENVELOPE_BYTES first).


def _known_status(kind: str, enum_type: type, value: int) -> None:
    if value not in enum_type.values():  # type: ignore[attr-defined]
        raise DecodeError(kind, f"unknown status {value}")


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    network_id: str
    max_peers: int = 0

    def encode(self) -> bytes:
        return bootstrap_pb2.BootstrapRequest(
            network_id=self.network_id, max_peers=self.max_peers
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> BootstrapRequest:
        msg = _parse(bootstrap_pb2.BootstrapRequest, data)
        _check_network_id("BootstrapRequest", msg.network_id)
        return cls(msg.network_id, msg.max_peers)


@dataclass(frozen=True, slots=True)
class BootstrapResponse:
    status: int
    network_id: str
    observed_addr: bytes = b""
    signed_records: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        return bootstrap_pb2.BootstrapResponse(
            status=self.status,  # type: ignore[arg-type]
            network_id=self.network_id,
            observed_addr=self.observed_addr,
            signed_records=self.signed_records,
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> BootstrapResponse:
        msg = _parse(bootstrap_pb2.BootstrapResponse, data)
        kind = "BootstrapResponse"
        _known_status(kind, BootstrapStatus, msg.status)
        _check_network_id(kind, msg.network_id)
        if len(msg.observed_addr) > MAX_OBSERVED_ADDR:
            raise DecodeError(kind, "observed_addr too long")
        records = list(msg.signed_records)
        _check_records(kind, records)
        return cls(msg.status, msg.network_id, bytes(msg.observed_addr), records)


@dataclass(frozen=True, slots=True)
class PexRequest:
    network_id: str
    max_peers: int = 0

    def encode(self) -> bytes:
        return pex_pb2.PexRequest(
            network_id=self.network_id, max_peers=self.max_peers
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> PexRequest:
        msg = _parse(pex_pb2.PexRequest, data)
        _check_network_id("PexRequest", msg.network_id)
        return cls(msg.network_id, msg.max_peers)


@dataclass(frozen=True, slots=True)
class PexResponse:
    status: int
    signed_records: list[bytes] = field(default_factory=list)
    retry_after_ms: int = 0

    def encode(self) -> bytes:
        return pex_pb2.PexResponse(
            status=self.status,  # type: ignore[arg-type]
            signed_records=self.signed_records,
            retry_after_ms=self.retry_after_ms,
        ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> PexResponse:
        msg = _parse(pex_pb2.PexResponse, data)
        kind = "PexResponse"
        _known_status(kind, PexStatus, msg.status)
        records = list(msg.signed_records)
        _check_records(kind, records)
        return cls(msg.status, records, msg.retry_after_ms)


def fit_records(records: list[bytes], budget: int = MAX_FRAME - 1024) -> list[bytes]:
    """The longest prefix of ``records`` whose encoding fits a frame (with room for the rest)."""
    out: list[bytes] = []
    used = 0
    for rec in records:
        if len(rec) > MAX_ENVELOPE_BYTES:
            continue
        cost = len(rec) + 3  # tag + length varint
        if used + cost > budget:
            break
        out.append(rec)
        used += cost
    return out
