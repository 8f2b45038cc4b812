"""STUN (RFC 5389/8489) client transactions, sans-IO: Binding requests, retransmission, answers.

aioice's ``stun`` module is the codec; this module is the transaction layer above it. A
request gets a random 96-bit transaction id (from an injected ``urandom``) and is sent at 0,
RTO, 3 RTO, 7 RTO ... until ``max_sends`` (Rc = 7) sends, then given up ``final_wait`` × RTO
(Rm = 16) after the last one: 0.5 s, 1.5 s ... 31.5 s, give up at 39.5 s with the default RTO
of 500 ms (RFC 5389 §7.2.1). Tests and the classifier may shorten the schedule, per client or
per transaction (``rto=``, ``timeout=``).

Drive a :class:`StunClient` with :meth:`~StunClient.datagrams_to_send`,
:meth:`~StunClient.receive_datagram`, :meth:`~StunClient.next_deadline` and
:meth:`~StunClient.on_timer`; finished transactions come out of :meth:`~StunClient.events` as
:class:`BindingResponse`, :class:`BindingError` or :class:`BindingTimeout`. Time is a float
the caller passes in; nothing here reads a clock or touches a socket.

What the network sends never raises: a datagram that is too large, truncated, not STUN, has
the wrong magic cookie, bad attribute framing, an unknown (spoofed or late) transaction id or
comes from an address the request could not have been answered from is ignored and counted in
:attr:`StunClient.stats`.
"""

from __future__ import annotations

import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioice import stun as codec

__all__ = [
    "Addr",
    "SockAddr",
    "STUN_PORT",
    "CHANGE_IP",
    "CHANGE_PORT",
    "StunError",
    "StunBusy",
    "StunAddressError",
    "BindingResponse",
    "BindingError",
    "BindingTimeout",
    "StunEvent",
    "StunClient",
    "check_framing",
    "norm_addr",
    "format_addr",
    "parse_stun_server",
    "encode_binding_request",
]

Addr = tuple[str, int]
SockAddr = tuple[Any, ...]  # (host, port[, flowinfo, scope_id]) as a socket gives it

STUN_PORT = 3478
MAGIC_COOKIE = codec.COOKIE
HEADER_LENGTH = codec.HEADER_LENGTH
CHANGE_IP = 0x04  # CHANGE-REQUEST flags (RFC 5780 §7.2); aioice packs the attribute as a u32
CHANGE_PORT = 0x02
MAX_DATAGRAM = 1500  # a Binding answer is < 200 bytes; anything this big is not one
MAX_ATTRIBUTES = 32
RECENT_IDS = 64  # finished transaction ids remembered, so a late duplicate is told from a spoof


class StunError(Exception):
    """Base of this module's errors (raised on the caller's mistakes, never on network input)."""


class StunBusy(StunError):
    """Too many outstanding transactions (``max_transactions``)."""


class StunAddressError(StunError, ValueError):
    """A STUN server address that does not parse."""


@dataclass(frozen=True)
class BindingResponse:
    """A success answer. ``mapped`` is XOR-MAPPED-ADDRESS (MAPPED-ADDRESS from an RFC 3489 server),
    ``other_address`` is OTHER-ADDRESS (or RFC 3489's CHANGED-ADDRESS), ``source`` where the
    answer came from, ``rtt`` the time since the first send."""

    transaction_id: bytes
    tag: str
    server: Addr
    source: Addr
    mapped: Addr | None
    response_origin: Addr | None
    other_address: Addr | None
    rtt: float
    sends: int


@dataclass(frozen=True)
class BindingError:
    """An error answer (e.g. 420 from a server that does not know CHANGE-REQUEST)."""

    transaction_id: bytes
    tag: str
    server: Addr
    source: Addr
    code: int
    reason: str
    rtt: float


@dataclass(frozen=True)
class BindingTimeout:
    """No acceptable answer. ``rejected`` counts answers refused for their source address (a
    server that ignores CHANGE-REQUEST answers from its primary address)."""

    transaction_id: bytes
    tag: str
    server: Addr
    sends: int
    elapsed: float
    rejected: int


StunEvent = BindingResponse | BindingError | BindingTimeout


@dataclass
class _Transaction:
    tid: bytes
    server: Addr
    payload: bytes
    flags: int
    tag: str
    rto: float
    timeout: float | None  # give up this long after the first send, whatever the schedule
    first_sent: float
    last_sent: float
    sends: int = 0
    rejected: int = 0

    def next_at(self, max_sends: int, final_wait: float) -> float:
        if self.sends < max_sends:
            at = self.last_sent + self.rto * 2 ** (self.sends - 1)
        else:
            at = self.last_sent + self.rto * final_wait
        if self.timeout is not None:
            at = min(at, self.first_sent + self.timeout)
        return at

    def gives_up_at(self, max_sends: int, final_wait: float) -> bool:
        """Whether the event at :meth:`next_at` is the end (not a retransmission)."""
        if self.sends >= max_sends:
            return True
        retransmit = self.last_sent + self.rto * 2 ** (self.sends - 1)
        return self.timeout is not None and self.first_sent + self.timeout <= retransmit


def _stats() -> dict[str, int]:
    return {
        "requests": 0,  # transactions started
        "sent": 0,  # datagrams handed out, retransmissions included
        "retransmitted": 0,
        "received": 0,  # datagrams fed in
        "responses": 0,  # success answers accepted
        "error_responses": 0,
        "timeouts": 0,
        "cancelled": 0,
        "oversize": 0,
        "truncated": 0,
        "not_stun": 0,  # first two bits set: another protocol on the socket
        "bad_cookie": 0,
        "malformed": 0,  # framing or attribute contents aioice refuses
        "not_response": 0,  # a request or indication, or not a Binding
        "unknown_transaction": 0,  # never ours: spoofed or stray
        "late": 0,  # a transaction we already finished (duplicate or after the give-up)
        "unexpected_source": 0,
        "no_mapped_address": 0,  # a success answer without a mapped address (delivered anyway)
    }


class StunClient:
    """Binding transactions to any number of servers over one socket (the caller's).

    ``rto`` is the initial retransmission timeout (RFC 5389: 500 ms), ``max_sends`` Rc (7) and
    ``final_wait`` Rm (16 × RTO after the last send). At most ``max_transactions`` run at once.
    """

    def __init__(
        self,
        *,
        rto: float = 0.5,
        max_sends: int = 7,
        final_wait: float = 16.0,
        max_transactions: int = 16,
        max_datagram: int = MAX_DATAGRAM,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not (0 < rto < 60):
            raise ValueError("rto must be in (0, 60) seconds")
        if not 1 <= max_sends <= 16:
            raise ValueError("max_sends must be 1..16")
        if not (0 < final_wait <= 64):
            raise ValueError("final_wait must be in (0, 64] RTOs")
        if not 1 <= max_transactions <= 1024:
            raise ValueError("max_transactions must be 1..1024")
        self.rto = rto
        self.max_sends = max_sends
        self.final_wait = final_wait
        self.max_transactions = max_transactions
        self.max_datagram = max_datagram
        self._urandom = urandom
        self.stats: dict[str, int] = _stats()
        self._pending: dict[bytes, _Transaction] = {}
        self._outbox: list[bytes] = []
        self._events: list[StunEvent] = []
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    # ---- requests -------------------------------------------------------------------------
    def send_binding(
        self,
        server: Addr,
        now: float,
        *,
        change_ip: bool = False,
        change_port: bool = False,
        tag: str = "",
        rto: float | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Start a Binding transaction to ``server`` (an IP literal and port); its id.

        ``change_ip`` / ``change_port`` add CHANGE-REQUEST (RFC 5780): the answer must then come
        from a different address / port than ``server``. ``rto`` overrides the client's initial
        RTO for this transaction; ``timeout`` ends it that long after its first send at the
        latest. Raises :class:`StunBusy` when ``max_transactions`` are outstanding.
        """
        if len(self._pending) >= self.max_transactions:
            raise StunBusy(f"{len(self._pending)} STUN transactions outstanding")
        if rto is not None and not (0 < rto < 60):
            raise ValueError("rto must be in (0, 60) seconds")
        if timeout is not None and not (0 < timeout < 3600):
            raise ValueError("timeout must be in (0, 3600) seconds")
        tid = self._new_id()
        flags = (CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0)
        t = _Transaction(
            tid=tid,
            server=norm_addr(server),
            payload=encode_binding_request(tid, flags),
            flags=flags,
            tag=tag,
            rto=self.rto if rto is None else rto,
            timeout=timeout,
            first_sent=now,
            last_sent=now,
        )
        self._pending[tid] = t
        self._outbox.append(tid)
        self.stats["requests"] += 1
        return tid

    def _new_id(self) -> bytes:
        for _ in range(8):
            tid = bytes(self._urandom(12))
            if len(tid) != 12:
                raise ValueError("urandom must return the number of bytes asked for")
            if tid not in self._pending and tid not in self._recent:
                return tid
        raise StunError("the random source keeps repeating transaction ids")

    def reschedule(
        self, tid: bytes, *, rto: float | None = None, timeout: float | None = None
    ) -> None:
        """Change an outstanding transaction's schedule: ``rto`` its initial RTO from now on
        (the next retransmission is ``rto`` × 2^(sends-1) after the last send), ``timeout`` ends
        it that long after its first send at the latest (never later than already set).
        Unknown ids are ignored."""
        if rto is not None and not (0 < rto < 60):
            raise ValueError("rto must be in (0, 60) seconds")
        t = self._pending.get(tid)
        if t is None:
            return
        if rto is not None:
            t.rto = rto
        if timeout is not None:
            t.timeout = timeout if t.timeout is None else min(t.timeout, timeout)

    def cancel(self, tid: bytes) -> None:
        """Forget transaction ``tid`` without an event (unknown ids are ignored)."""
        if self._pending.pop(tid, None) is not None:
            self.stats["cancelled"] += 1
            self._remember(tid)

    def is_pending(self, tid: bytes) -> bool:
        return tid in self._pending

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    # ---- time and datagrams ---------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """What to send now, as (payload, destination); the retransmission clock starts here."""
        out: list[tuple[bytes, Addr]] = []
        for tid in self._outbox:
            t = self._pending.get(tid)
            if t is None:
                continue
            if t.sends == 0:
                t.first_sent = now
            else:
                self.stats["retransmitted"] += 1
            t.last_sent = now
            t.sends += 1
            out.append((t.payload, t.server))
        self._outbox = []
        self.stats["sent"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called (None: no transaction outstanding)."""
        if not self._pending:
            return None
        queued = [self._pending[tid].last_sent for tid in self._outbox if tid in self._pending]
        sent = [
            t.next_at(self.max_sends, self.final_wait) for t in self._pending.values() if t.sends
        ]
        return min(queued + sent)

    def on_timer(self, now: float) -> None:
        """Retransmit what is due and give up what has run out of sends or time."""
        queued = set(self._outbox)
        for tid, t in list(self._pending.items()):
            if tid in queued or t.sends == 0:
                continue
            if now < t.next_at(self.max_sends, self.final_wait):
                continue
            # Past its timeout (a late call) it ends now: a retransmission would leave the
            # timeout, already passed, as the next deadline.
            timed_out = t.timeout is not None and now >= t.first_sent + t.timeout
            if timed_out or t.gives_up_at(self.max_sends, self.final_wait):
                del self._pending[tid]
                self._remember(tid)
                self.stats["timeouts"] += 1
                self._events.append(
                    BindingTimeout(tid, t.tag, t.server, t.sends, now - t.first_sent, t.rejected)
                )
            else:
                self._outbox.append(tid)

    def receive_datagram(self, data: bytes, addr: SockAddr, now: float) -> None:
        """Feed one datagram that arrived from ``addr``; never raises on its contents."""
        self.stats["received"] += 1
        problem = check_framing(data, self.max_datagram)
        if problem is not None:
            self.stats[problem] += 1
            return
        try:
            msg = codec.parse_message(bytes(data))
        except Exception:  # aioice raises ValueError, struct.error, UnicodeDecodeError ...
            self.stats["malformed"] += 1
            return
        if msg.message_method != codec.Method.BINDING or msg.message_class not in (
            codec.Class.RESPONSE,
            codec.Class.ERROR,
        ):
            self.stats["not_response"] += 1
            return
        tid = msg.transaction_id
        t = self._pending.get(tid)
        if t is None:
            self.stats["late" if tid in self._recent else "unknown_transaction"] += 1
            return
        try:
            source = norm_addr(addr)
        except (TypeError, ValueError):
            self.stats["unexpected_source"] += 1
            return
        is_error = msg.message_class == codec.Class.ERROR
        if not _source_ok(t, source, error=is_error):
            t.rejected += 1
            self.stats["unexpected_source"] += 1
            return
        rtt = now - t.first_sent
        if is_error:
            code, reason = _error_code(msg.attributes.get("ERROR-CODE"))
            event: StunEvent = BindingError(tid, t.tag, t.server, source, code, reason, rtt)
            self.stats["error_responses"] += 1
        else:
            attrs = msg.attributes
            mapped = _addr_attr(attrs, "XOR-MAPPED-ADDRESS") or _addr_attr(attrs, "MAPPED-ADDRESS")
            if mapped is None:
                self.stats["no_mapped_address"] += 1
            event = BindingResponse(
                tid,
                t.tag,
                t.server,
                source,
                mapped,
                _addr_attr(attrs, "RESPONSE-ORIGIN"),
                _addr_attr(attrs, "OTHER-ADDRESS") or _addr_attr(attrs, "CHANGED-ADDRESS"),
                rtt,
                t.sends,
            )
            self.stats["responses"] += 1
        del self._pending[tid]
        self._remember(tid)
        self._events.append(event)

    def events(self) -> list[StunEvent]:
        """Transactions finished since the last call."""
        out, self._events = self._events, []
        return out

    def _remember(self, tid: bytes) -> None:
        self._recent[tid] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)


def _source_ok(t: _Transaction, src: Addr, *, error: bool) -> bool:
    """Could the server have answered ``t`` from ``src``? A change request is answered from
    another address and/or port (RFC 5780 §6.1); an error from the address asked."""
    s = t.server
    if src == s:
        return t.flags == 0 or error
    if t.flags == CHANGE_IP | CHANGE_PORT:
        return src[0] != s[0] and src[1] != s[1]
    if t.flags == CHANGE_PORT:
        return src[0] == s[0] and src[1] != s[1]
    if t.flags == CHANGE_IP:
        return src[0] != s[0] and src[1] == s[1]
    return False


def _addr_attr(attrs: dict[str, object], name: str) -> Addr | None:
    value = attrs.get(name)
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and isinstance(port, int):
            return norm_addr((host, port))
    return None


def _error_code(value: object) -> tuple[int, str]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        return value[0], str(value[1])[:128]
    return 0, "no ERROR-CODE"


def encode_binding_request(tid: bytes, flags: int = 0) -> bytes:
    """A Binding request with id ``tid``, CHANGE-REQUEST ``flags`` if any, and FINGERPRINT."""
    attrs: dict[str, object] = {"CHANGE-REQUEST": flags} if flags else {}
    msg = codec.Message(
        codec.Method.BINDING, codec.Class.REQUEST, transaction_id=tid, attributes=attrs
    )
    msg.add_fingerprint()
    return bytes(msg)


def check_framing(data: bytes, max_size: int = MAX_DATAGRAM) -> str | None:
    """Cheap checks before aioice sees a datagram: None if it is framed as a STUN message, else
    the stats key of what is wrong (oversize, truncated, not_stun, bad_cookie, malformed).

    aioice checks neither the magic cookie nor the leading zero bits, and slices past the end of
    the message when an attribute's length overruns it; this walks the attributes first.
    """
    n = len(data)
    if n > max_size:
        return "oversize"
    if n < HEADER_LENGTH:
        return "truncated"
    if data[0] & 0xC0:
        return "not_stun"
    if int.from_bytes(data[4:8], "big") != MAGIC_COOKIE:
        return "bad_cookie"
    length = int.from_bytes(data[2:4], "big")
    if length % 4:
        return "malformed"
    if length + HEADER_LENGTH > n:
        return "truncated"
    if length + HEADER_LENGTH < n:
        return "malformed"
    pos, count = HEADER_LENGTH, 0
    while pos < n:
        if pos + 4 > n:
            return "malformed"
        alen = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 4 + alen + (-alen % 4)
        count += 1
        if pos > n or count > MAX_ATTRIBUTES:
            return "malformed"
    return None


def norm_addr(addr: tuple[object, ...]) -> Addr:
    """(host, port[, flowinfo, scope]) → (canonical host, port): an IP literal in its compressed
    form (so ``::0001`` and ``::1`` compare equal), any other host lower-cased."""
    host, port = addr[0], addr[1]
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"not a (host, port) address: {addr!r}")
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower(), port


def format_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_stun_server(text: str) -> Addr:
    """``host:port``, ``host`` (port 3478), ``[v6]:port``, ``[v6]``, a bare IPv6 literal, or a
    multiaddr ``/ip4|ip6|dns|dns4|dns6/<host>/udp/<port>`` → (host, port).

    Raises :class:`StunAddressError` (a ``ValueError``)."""
    text = text.strip()
    if text.startswith("/"):
        parts = text.strip("/").split("/")
        if (
            len(parts) != 4
            or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6")
            or parts[2] != "udp"
        ):
            raise StunAddressError(f"{text!r}: expected /ip4/<ip>/udp/<port>")
        host, port_text = parts[1], parts[3]
        if parts[0] == "ip4":
            _check_ip(text, host, 4)
        elif parts[0] == "ip6":
            _check_ip(text, host, 6)
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise StunAddressError(f"{text!r}: expected [IPv6]:PORT")
        _check_ip(text, host, 6)
        port_text = rest[1:] if rest else str(STUN_PORT)
    elif text.count(":") > 1:
        _check_ip(text, text, 6)
        host, port_text = text, str(STUN_PORT)
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = str(STUN_PORT)
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise StunAddressError(f"{text!r}: expected HOST:PORT (e.g. stun.example.org:3478)")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StunAddressError(f"{text!r}: the port must be 1..65535")
    return norm_addr((host, int(port_text)))


def _check_ip(text: str, host: str, version: int) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise StunAddressError(f"{text!r}: {host!r} is not an IPv{version} address") from None
    if ip.version != version:
        raise StunAddressError(f"{text!r}: {host!r} is not an IPv{version} address")
