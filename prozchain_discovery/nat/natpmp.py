"""NAT-PMP (RFC 6886) client, sans-IO: ask the gateway for its external address and a port map.

The gateway listens on UDP 5351. A request is retransmitted after 250 ms, doubling, up to 9
sends (RFC 6886 §3.1: 250 ms … 64 s); tests and the port-mapping component may shorten the
schedule. A mapping is renewed at half its lifetime (§3.3) and deleted by asking for lifetime 0.
The codec never raises on what the network sends: a malformed or unexpected datagram is counted
in ``stats`` and ignored.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = [
    "NATPMP_PORT",
    "Protocol",
    "NatPmpResult",
    "GatewayRequests",
    "NatPmpClient",
    "encode_external_address_request",
    "encode_map_request",
    "renew_at",
]

NATPMP_PORT = 5351
VERSION = 0
OP_EXTERNAL = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
RESULT_TEXT = {
    0: "success",
    1: "unsupported version",
    2: "not authorized / refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}


class Protocol(enum.IntEnum):
    UDP = OP_MAP_UDP
    TCP = OP_MAP_TCP


def encode_external_address_request() -> bytes:
    return struct.pack("!BB", VERSION, OP_EXTERNAL)


def encode_map_request(protocol: Protocol, internal_port: int, external_port: int, lifetime: int) -> bytes:
    return struct.pack("!BBHHHI", VERSION, int(protocol), 0, internal_port, external_port, lifetime)


@dataclass
class NatPmpResult:
    """One finished request: ``ok`` with the fields of its answer, or the failure."""

    op: str  # "external" | "map-tcp" | "map-udp"
    ok: bool
    error: str = ""
    external_ip: str | None = None
    internal_port: int = 0
    external_port: int = 0
    lifetime: int = 0
    epoch: int = 0
    rtt: float = 0.0


@dataclass
class _Pending:
    op: int
    payload: bytes
    sent_at: float
    first_sent: float
    sends: int
    key: tuple[int, int] = (0, 0)  # (op, internal port) of a map request


@dataclass
class GatewayRequests:
    """Requests to one gateway over UDP, retransmitted with a doubling timeout (RFC 6886 §3.1,
    RFC 6887 §8.1.1), shared by the NAT-PMP and PCP clients. Drive it with
    :meth:`datagrams_to_send`, ``receive_datagram``, :meth:`next_deadline` and :meth:`on_timer`;
    finished requests come out of :meth:`results`."""

    gateway: str
    initial_rto: float = 0.25
    max_sends: int = 9
    stats: dict[str, int] = field(default_factory=lambda: {"sent": 0, "received": 0, "malformed": 0, "unexpected": 0, "timeouts": 0})
    _pending: dict[tuple[int, int], _Pending] = field(default_factory=dict)
    _outbox: list[bytes] = field(default_factory=list)
    _results: list[NatPmpResult] = field(default_factory=list)

    def _start(self, op: int, payload: bytes, now: float, key: tuple[int, int]) -> None:
        self._pending[key] = _Pending(op, payload, now, now, 1, key)
        self._outbox.append(payload)

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        self.stats["sent"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(p.sent_at + self.initial_rto * 2 ** (p.sends - 1) for p in self._pending.values())

    def on_timer(self, now: float) -> None:
        for key, p in list(self._pending.items()):
            if now < p.sent_at + self.initial_rto * 2 ** (p.sends - 1):
                continue
            if p.sends >= self.max_sends:
                del self._pending[key]
                self.stats["timeouts"] += 1
                self._results.append(NatPmpResult(self._op_name(p.op), False, "no answer from the gateway"))
                continue
            p.sends += 1
            p.sent_at = now
            self._outbox.append(p.payload)

    def _op_name(self, op: int) -> str:
        return _op_name(op)

    def receive_datagram(self, data: bytes, source_ip: str, now: float) -> None:
        raise NotImplementedError  # each protocol parses its own answers

    def results(self) -> list[NatPmpResult]:
        out, self._results = self._results, []
        return out

    @property
    def busy(self) -> bool:
        return bool(self._pending)


@dataclass
class NatPmpClient(GatewayRequests):
    """NAT-PMP requests to one gateway (see :class:`GatewayRequests` for how to drive it)."""

    def request_external_address(self, now: float) -> None:
        self._start(OP_EXTERNAL, encode_external_address_request(), now, (OP_EXTERNAL, 0))

    def request_mapping(self, protocol: Protocol, internal_port: int, external_port: int, lifetime: int, now: float) -> None:
        """Map (lifetime > 0) or delete (lifetime 0) ``internal_port``; a suggested external port."""
        payload = encode_map_request(protocol, internal_port, external_port, lifetime)
        self._start(int(protocol), payload, now, (int(protocol), internal_port))

    def receive_datagram(self, data: bytes, source_ip: str, now: float) -> None:
        if source_ip != self.gateway:
            self.stats["unexpected"] += 1  # RFC 6886 §3.1: only the gateway's answers count
            return
        if len(data) < 8 or data[0] != VERSION or data[1] < 128:
            self.stats["malformed"] += 1
            return
        op = data[1] - 128
        result_code, epoch = struct.unpack("!HI", data[2:8])
        if op == OP_EXTERNAL:
            key = (OP_EXTERNAL, 0)
            if key not in self._pending or len(data) < 12:
                self.stats["unexpected" if key not in self._pending else "malformed"] += 1
                return
        elif op in (OP_MAP_UDP, OP_MAP_TCP):
            if len(data) < 16:
                self.stats["malformed"] += 1
                return
            internal = struct.unpack("!H", data[8:10])[0]
            key = (op, internal)
            if key not in self._pending:
                self.stats["unexpected"] += 1
                return
        else:
            self.stats["malformed"] += 1
            return
        p = self._pending.pop(key)
        self.stats["received"] += 1
        rtt = now - p.sent_at
        if result_code != 0:
            self._results.append(NatPmpResult(_op_name(op), False, RESULT_TEXT.get(result_code, f"result {result_code}"), epoch=epoch, rtt=rtt))
            return
        if op == OP_EXTERNAL:
            ip = str(ipaddress.IPv4Address(data[8:12]))
            self._results.append(NatPmpResult("external", True, external_ip=ip, epoch=epoch, rtt=rtt))
        else:
            internal, external, lifetime = struct.unpack("!HHI", data[8:16])
            self._results.append(NatPmpResult(_op_name(op), True, internal_port=internal, external_port=external,
                                              lifetime=lifetime, epoch=epoch, rtt=rtt))


def _op_name(op: int) -> str:
    return {OP_EXTERNAL: "external", OP_MAP_UDP: "map-udp", OP_MAP_TCP: "map-tcp"}.get(op, f"op{op}")


def renew_at(granted_at: float, lifetime: int) -> float:
    """When to renew a mapping granted at ``granted_at`` for ``lifetime`` s (RFC 6886: half)."""
    return granted_at + lifetime / 2

