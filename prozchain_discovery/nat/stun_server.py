"""A STUN Binding server (RFC 5389/8489, RFC 5780 behaviour discovery), so an open node serves STUN.

:class:`StunResponder` is the sans-IO part: a datagram, where it came from, the local address it
arrived on and the time in; what to send, from which local address, to whom, out. With two IPs
and two ports (four sockets, as coturn) it is an RFC 5780 server: OTHER-ADDRESS in every answer,
CHANGE-REQUEST honoured; with fewer, a CHANGE-REQUEST it cannot honour is answered 420. Every
answer carries XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN (unless bound to a wildcard address) and
FINGERPRINT.

It is safe to expose: only Binding requests are answered (never indications, answers or other
methods), an answer is at most :data:`MAX_RESPONSE` bytes (a 20-byte request gets at most 100:
no reflection amplification beyond that), each source IP has a token bucket in a bounded LRU
table and a global bucket caps the total, and anything malformed is counted and dropped.

:func:`serve_stun` is the trio adapter.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
from aioice import stun as codec

from .stun import CHANGE_IP, CHANGE_PORT, Addr, SockAddr, check_framing, format_addr, norm_addr

__all__ = ["MAX_REQUEST", "MAX_RESPONSE", "StunResponder", "serve_stun"]

MAX_REQUEST = 548  # RFC 5389 §7.1: what fits in an unfragmented IPv4 datagram; a Binding is ~28
MAX_RESPONSE = 128
ATTR_UNKNOWN_ATTRIBUTES = 0x000A


@dataclass
class _Bucket:
    tokens: float
    at: float


class StunResponder:
    """Answers Binding requests arriving on ``ips`` × ``ports`` (1 or 2 of each; the first of
    each is the primary). ``rate``/``burst`` answers per second per source IP (at most
    ``max_sources`` remembered, least recently seen forgotten first), ``global_rate`` in all."""

    def __init__(
        self,
        ips: Sequence[str],
        ports: Sequence[int],
        *,
        rate: float = 20.0,
        burst: float = 40.0,
        global_rate: float = 2000.0,
        max_sources: int = 4096,
    ) -> None:
        if not 1 <= len(ips) <= 2 or not 1 <= len(ports) <= 2:
            raise ValueError("one or two addresses and one or two ports")
        self.ips = [norm_addr((ip, 1))[0] for ip in ips]
        self.ports = list(ports)
        if len(set(self.ips)) != len(self.ips) or len(set(self.ports)) != len(self.ports):
            raise ValueError("the addresses and the ports must differ")
        if any(not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be 1..65535")
        families = {ipaddress.ip_address(ip).version for ip in self.ips}
        if len(families) != 1:
            raise ValueError("both addresses must be of one family")
        self.rfc5780 = len(self.ips) == 2 and len(self.ports) == 2
        if self.rfc5780 and any(ipaddress.ip_address(ip).is_unspecified for ip in self.ips):
            raise ValueError("an RFC 5780 server needs concrete addresses, not a wildcard")
        for value in (rate, burst, global_rate):
            if not (math.isfinite(value) and value > 0):
                raise ValueError("rates must be positive and finite")
        self.rate, self.burst, self.global_rate = rate, burst, global_rate
        self.max_sources = max(1, max_sources)
        self.locals = [(ip, port) for ip in self.ips for port in self.ports]
        self.stats: dict[str, int] = {
            "received": 0,
            "responses": 0,
            "error_responses": 0,
            "oversize": 0,
            "truncated": 0,
            "not_stun": 0,
            "bad_cookie": 0,
            "malformed": 0,
            "not_request": 0,  # indications and answers: never answered
            "not_binding": 0,  # other methods: never answered
            "rate_limited": 0,
            "bad_source": 0,
            "unknown_local": 0,
            "too_large": 0,
            "send_errors": 0,  # counted by the adapter
        }
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._global: _Bucket | None = None

    @property
    def primary(self) -> Addr:
        return self.locals[0]

    def handle(
        self, data: bytes, src: SockAddr, local: SockAddr, now: float
    ) -> list[tuple[bytes, Addr, Addr]]:
        """What to answer ``data`` from ``src`` that arrived on ``local``:
        a list of (payload, local address to send it from, destination)."""
        self.stats["received"] += 1
        try:
            src, local = norm_addr(src), norm_addr(local)
        except (TypeError, ValueError):
            self.stats["bad_source"] += 1
            return []
        if local not in self.locals:
            self.stats["unknown_local"] += 1
            return []
        problem = check_framing(data, MAX_REQUEST)
        if problem is not None:
            self.stats[problem] += 1
            return []
        # the class and method bits, read before aioice (which raises on unknown methods)
        mtype = int.from_bytes(data[0:2], "big")
        if mtype & 0x0110 != codec.Class.REQUEST:
            self.stats["not_request"] += 1
            return []
        if mtype & 0x3EEF != codec.Method.BINDING:
            self.stats["not_binding"] += 1
            return []
        try:
            req = codec.parse_message(bytes(data))
        except Exception:  # ValueError, struct.error, UnicodeDecodeError ... from aioice
            self.stats["malformed"] += 1
            return []
        if not self._source_ok(src):
            self.stats["bad_source"] += 1
            return []
        if not self._allow(src[0], now):
            self.stats["rate_limited"] += 1
            return []
        unknown = self._unknown_attributes(data)
        flags = req.attributes.get("CHANGE-REQUEST", 0)
        if not isinstance(flags, int):
            flags = 0
        reply_from = self._changed(local, flags)
        if reply_from is None:
            unknown = [codec.ATTRIBUTES_BY_NAME["CHANGE-REQUEST"][0], *unknown]
        if unknown:
            payload, sent_from = _error_420(req.transaction_id, unknown), local
            key = "error_responses"
        else:
            assert reply_from is not None
            payload, sent_from = (
                self._success(req.transaction_id, src, local, reply_from),
                reply_from,
            )
            key = "responses"
        if len(payload) > MAX_RESPONSE:  # cannot happen with these attributes; never amplify
            self.stats["too_large"] += 1
            return []
        self.stats[key] += 1
        return [(payload, sent_from, src)]

    # ---- pieces -----------------------------------------------------------------------------
    def _changed(self, local: Addr, flags: int) -> Addr | None:
        """The local address CHANGE-REQUEST ``flags`` ask to answer from; None if we lack it."""
        ip, port = local
        if flags & CHANGE_IP:
            if len(self.ips) < 2:
                return None
            ip = self.ips[1 - self.ips.index(ip)]
        if flags & CHANGE_PORT:
            if len(self.ports) < 2:
                return None
            port = self.ports[1 - self.ports.index(port)]
        return ip, port

    def _success(self, tid: bytes, src: Addr, local: Addr, reply_from: Addr) -> bytes:
        attrs: dict[str, object] = {"XOR-MAPPED-ADDRESS": src}
        if not ipaddress.ip_address(reply_from[0]).is_unspecified:
            attrs["RESPONSE-ORIGIN"] = reply_from
        if self.rfc5780:
            other = self._changed(local, CHANGE_IP | CHANGE_PORT)
            attrs["OTHER-ADDRESS"] = other
        msg = codec.Message(
            codec.Method.BINDING, codec.Class.RESPONSE, transaction_id=tid, attributes=attrs
        )
        msg.add_fingerprint()
        return bytes(msg)

    @staticmethod
    def _unknown_attributes(data: bytes) -> list[int]:
        """Comprehension-required attributes (< 0x8000) aioice does not know (RFC 5780's
        RESPONSE-PORT and PADDING among them), at most four."""
        out: list[int] = []
        pos = codec.HEADER_LENGTH
        while pos + 4 <= len(data):
            atype = int.from_bytes(data[pos : pos + 2], "big")
            alen = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if atype < 0x8000 and atype not in codec.ATTRIBUTES_BY_TYPE and atype not in out:
                out.append(atype)
            pos += 4 + alen + (-alen % 4)
        return out[:4]

    @staticmethod
    def _source_ok(src: Addr) -> bool:
        if src[1] == 0:
            return False
        try:
            ip = ipaddress.ip_address(src[0])
        except ValueError:
            return False
        return not (ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255")

    def _allow(self, ip: str, now: float) -> bool:
        g = self._global
        if g is None:
            g = self._global = _Bucket(self.global_rate, now)
        b = self._sources.pop(ip, None)
        if b is None:
            b = _Bucket(self.burst, now)
            while len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
        self._sources[ip] = b  # most recently seen last
        for bucket, rate, cap in (
            (b, self.rate, self.burst),
            (g, self.global_rate, self.global_rate),
        ):
            bucket.tokens = min(cap, bucket.tokens + max(0.0, now - bucket.at) * rate)
            bucket.at = max(bucket.at, now)
        if b.tokens < 1 or g.tokens < 1:
            return False
        b.tokens -= 1
        g.tokens -= 1
        return True

    def __repr__(self) -> str:
        return f"StunResponder({', '.join(format_addr(a) for a in self.locals)})"


def _error_420(tid: bytes, unknown: list[int]) -> bytes:
    """420 Unknown Attribute, UNKNOWN-ATTRIBUTES (which aioice cannot encode), FINGERPRINT."""
    msg = codec.Message(
        codec.Method.BINDING,
        codec.Class.ERROR,
        transaction_id=tid,
        attributes={"ERROR-CODE": (420, "Unknown Attribute")},
    )
    value = b"".join(t.to_bytes(2, "big") for t in unknown)
    attr = ATTR_UNKNOWN_ATTRIBUTES.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
    attr += bytes(-len(value) % 4)
    body = bytes(msg)[codec.HEADER_LENGTH :] + attr
    data = (
        bytes(msg)[:2] + len(body).to_bytes(2, "big") + bytes(msg)[4 : codec.HEADER_LENGTH] + body
    )
    fingerprint = codec.message_fingerprint(data)
    fp_attr = (0x8028).to_bytes(2, "big") + (4).to_bytes(2, "big") + fingerprint.to_bytes(4, "big")
    return codec.set_body_length(data, len(body) + 8) + fp_attr


async def serve_stun(
    addrs: Sequence[str],
    ports: Sequence[int],
    *,
    rate: float = 20.0,
    burst: float = 40.0,
    global_rate: float = 2000.0,
    max_sources: int = 4096,
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[StunResponder]
) -> None:
    """Serve STUN on every address × port (one socket each) until cancelled.

    A port 0 is chosen by the kernel on the first address and used on the second too. Reports
    the :class:`StunResponder` (its ``locals`` are the bound addresses, ``stats`` its counters)
    through ``task_status`` once every socket is bound.
    """
    socks, bound_ports = await _bind_all(list(addrs), list(ports))
    try:
        responder = StunResponder(
            addrs,
            bound_ports,
            rate=rate,
            burst=burst,
            global_rate=global_rate,
            max_sources=max_sources,
        )
        async with trio.open_nursery() as nursery:
            for local, sock in socks.items():
                nursery.start_soon(_serve_one, responder, socks, local, sock)
            task_status.started(responder)
    finally:
        for sock in socks.values():
            sock.close()


async def _bind_all(
    addrs: list[str], ports: list[int]
) -> tuple[dict[Addr, trio.socket.SocketType], list[int]]:
    """One socket per address × port; a port 0 is the kernel's choice on the first address,
    then the same number on the second (chosen again if that one is taken there)."""
    if not 1 <= len(addrs) <= 2 or not 1 <= len(ports) <= 2:
        raise ValueError("one or two addresses and one or two ports")
    family = trio.socket.AF_INET6 if ":" in addrs[0] else trio.socket.AF_INET
    ips = [norm_addr((a, 1))[0] for a in addrs]
    for _attempt in range(20):
        socks: dict[Addr, trio.socket.SocketType] = {}
        chosen: list[int] = []
        try:
            for want in ports:
                port = want
                for ip in ips:
                    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
                    try:
                        await sock.bind((ip, port))
                    except OSError:
                        sock.close()
                        raise
                    port = sock.getsockname()[1]
                    socks[(ip, port)] = sock
                chosen.append(port)
        except OSError:
            for sock in socks.values():
                sock.close()
            if 0 not in ports:
                raise
            continue
        return socks, chosen
    raise OSError("no port free on every address")


async def _serve_one(
    responder: StunResponder,
    socks: dict[Addr, trio.socket.SocketType],
    local: Addr,
    sock: trio.socket.SocketType,
) -> None:
    while True:
        try:
            data, src = await sock.recvfrom(MAX_REQUEST + 1)
        except OSError:  # e.g. an ICMP error reported on the socket
            await trio.lowlevel.checkpoint()
            continue
        for payload, sent_from, to in responder.handle(data, src, local, trio.current_time()):
            try:
                await socks[sent_from].sendto(payload, to)
            except OSError:
                responder.stats["send_errors"] += 1
