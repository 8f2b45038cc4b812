"""PCP (RFC 6887) MAP client, sans-IO: NAT-PMP's successor on the same gateway port (5351).

PCP is what current home routers and CGNATs speak (and it carries IPv6). One MAP request asks
for a mapping of ``internal_port`` with a lifetime; lifetime 0 deletes it. The request names the
client's own IP (it must equal the packet's source address, or the server answers
ADDRESS_MISMATCH) and a 96-bit nonce that the answer must echo: an answer with another nonce is
somebody else's and is ignored (RFC 6887 §11.3). A gateway that only speaks NAT-PMP answers a
version-2 request with NAT-PMP's "unsupported version"; we then fall back to NAT-PMP.

Retransmission as NAT-PMP's client (:class:`~.natpmp.GatewayRequests`): RFC 6887 §8.1.1 starts at
3 s, which is slow for a start-up path; a mapping is renewed at half its lifetime anyway. What the
network sends never raises: malformed or unexpected answers are counted in ``stats``.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .natpmp import GatewayRequests, NatPmpResult, Protocol

__all__ = ["PCP_VERSION", "PcpClient", "encode_map", "UNSUPPORTED_VERSION"]

PCP_VERSION = 2
OP_MAP = 1
HEADER = 24
MAP_BODY = 36
IANA_PROTOCOL = {Protocol.TCP: 6, Protocol.UDP: 17}
UNSUPPORTED_VERSION = "unsupported version"  # a NAT-PMP-only gateway (or PCP v1)
RESULT_TEXT = {
    0: "success",
    1: UNSUPPORTED_VERSION,
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external",
    12: "address mismatch",
    13: "excessive remote peers",
}


def _v6(ip: str) -> bytes:
    """An address as PCP's 16 bytes (IPv4 as IPv4-mapped IPv6, RFC 6887 §5)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _from_v6(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def encode_map(client_ip: str, nonce: bytes, protocol: Protocol, internal_port: int,
               external_port: int, lifetime: int, external_ip: str = "0.0.0.0") -> bytes:
    header = struct.pack("!BBHI", PCP_VERSION, OP_MAP, 0, lifetime) + _v6(client_ip)
    body = nonce + struct.pack("!B3xHH", IANA_PROTOCOL[protocol], internal_port, external_port) + _v6(external_ip)
    return header + body


@dataclass
class PcpClient(GatewayRequests):
    """MAP requests to one gateway from ``client_ip`` (see :class:`~.natpmp.GatewayRequests`)."""

    client_ip: str = "0.0.0.0"
    urandom: Callable[[int], bytes] = os.urandom
    _nonces: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def request_mapping(self, protocol: Protocol, internal_port: int, external_port: int, lifetime: int,
                        now: float, nonce: bytes | None = None) -> bytes:
        """Map (lifetime > 0) or delete (lifetime 0, with the mapping's nonce); returns the nonce."""
        key = (int(protocol), internal_port)
        nonce = nonce if nonce is not None else self._nonces.get(key) or self.urandom(12)
        self._nonces[key] = nonce
        self._start(int(protocol), encode_map(self.client_ip, nonce, protocol, internal_port, external_port, lifetime),
                    now, key)
        return nonce

    def _op_name(self, op: int) -> str:
        return "pcp-map-tcp" if op == Protocol.TCP else "pcp-map-udp"

    def receive_datagram(self, data: bytes, source_ip: str, now: float) -> None:
        if source_ip != self.gateway:
            self.stats["unexpected"] += 1  # only the gateway's answers count
            return
        if len(data) >= 4 and data[0] == 0 and data[1] >= 128:
            # A NAT-PMP gateway's answer to our version 2: "unsupported version" for every request.
            self.stats["received"] += 1
            for key, p in list(self._pending.items()):
                del self._pending[key]
                self._results.append(NatPmpResult(self._op_name(p.op), False, UNSUPPORTED_VERSION))
            return
        if len(data) < HEADER or len(data) > 1100 or data[0] != PCP_VERSION or data[1] != 128 + OP_MAP:
            self.stats["malformed"] += 1
            return
        result_code = data[3]
        lifetime, epoch = struct.unpack("!II", data[4:12])
        if len(data) < HEADER + MAP_BODY:
            # An error answer may come without the opcode body; it cannot be matched to a request
            # by nonce, so it only counts when exactly one request is waiting.
            if result_code == 0 or len(self._pending) != 1:
                self.stats["malformed"] += 1
                return
            key = next(iter(self._pending))
        else:
            body = data[HEADER:HEADER + MAP_BODY]
            nonce = body[:12]
            proto_num, internal, external = struct.unpack("!B3xHH", body[12:20])
            protocol = {6: Protocol.TCP, 17: Protocol.UDP}.get(proto_num)
            key = (int(protocol), internal) if protocol is not None else (0, 0)
            if key not in self._pending or self._nonces.get(key) != nonce:
                self.stats["unexpected"] += 1  # not ours (another nonce) or already answered
                return
        p = self._pending.pop(key)
        self.stats["received"] += 1
        rtt = now - p.sent_at
        if result_code != 0:
            self._results.append(NatPmpResult(self._op_name(p.op), False,
                                              RESULT_TEXT.get(result_code, f"result {result_code}"), epoch=epoch, rtt=rtt))
            return
        self._results.append(NatPmpResult(self._op_name(p.op), True, external_ip=_from_v6(body[20:36]),
                                          internal_port=internal, external_port=external,
                                          lifetime=lifetime, epoch=epoch, rtt=rtt))
