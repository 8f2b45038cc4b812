"""Codec for ``/prozchain/stun/1.0`` (protocols/stun-service.proto): where a peer serves STUN.

Limits are checked here so that nothing bigger than an answer can hold reaches the caller: at
most :data:`MAX_ADDRS` addresses of at most :data:`MAX_ADDR_BYTES` bytes, each a plain
``/ip4|ip6/<ip>/udp/<port>``. Every failure is a :class:`~.messages.DecodeError`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from multiaddr import Multiaddr

from .messages import DecodeError, _parse
from .pb import stun_service_pb2

__all__ = ["STUN_SERVICE_PROTOCOL", "MAX_ADDRS", "StunServiceRequest", "StunServiceResponse"]

STUN_SERVICE_PROTOCOL = "/prozchain/stun/1.0"
MAX_ADDRS = 4
MAX_ADDR_BYTES = 64


@dataclass(frozen=True, slots=True)
class StunServiceRequest:
    def encode(self) -> bytes:
        return stun_service_pb2.StunServiceRequest().SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> StunServiceRequest:
        _parse(stun_service_pb2.StunServiceRequest, data)
        return cls()


@dataclass(frozen=True, slots=True)
class StunServiceResponse:
    addrs: tuple[tuple[str, int], ...]  # (ip, udp port)
    rfc5780: bool = False

    def encode(self) -> bytes:
        raw = []
        for ip, port in self.addrs[:MAX_ADDRS]:
            proto = "ip6" if ipaddress.ip_address(ip).version == 6 else "ip4"
            raw.append(Multiaddr(f"/{proto}/{ip}/udp/{port}").to_bytes())
        return stun_service_pb2.StunServiceResponse(addrs=raw, rfc5780=self.rfc5780).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> StunServiceResponse:
        kind = "StunServiceResponse"
        msg = _parse(stun_service_pb2.StunServiceResponse, data)
        if len(msg.addrs) > MAX_ADDRS:
            raise DecodeError(kind, f"{len(msg.addrs)} addresses > {MAX_ADDRS}")
        addrs = []
        for raw in msg.addrs:
            if len(raw) > MAX_ADDR_BYTES:
                raise DecodeError(kind, f"address of {len(raw)} bytes > {MAX_ADDR_BYTES}")
            try:
                parts = [(p.name, v) for p, v in Multiaddr(bytes(raw)).items()]
            except Exception as exc:
                raise DecodeError(kind, f"not a multiaddr ({exc})"[:120]) from exc
            if len(parts) != 2 or parts[0][0] not in ("ip4", "ip6") or parts[1][0] != "udp":
                raise DecodeError(kind, "an address is not /ip4|ip6/<ip>/udp/<port>")
            port = int(parts[1][1])
            if not 0 < port < 65536:
                raise DecodeError(kind, f"udp port {port}")
            addrs.append((str(parts[0][1]), port))
        return cls(tuple(addrs), bool(msg.rfc5780))
