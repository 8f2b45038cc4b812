"""AutoNAT v2 policy, client and server, without I/O (time comes in as ``now``).

Client (:class:`AutonatClientPolicy`) — which of our addresses to ask about, whom to ask, and
what the answers add up to. Design, after go-libp2p's autonatv2 and its address tracker:

1. Each address we advertise is probed on its own (one address per ``DialRequest``), by
   servers chosen among connected peers that speak ``/libp2p/autonat/2/dial-request``.
2. An address flips to reachable or unreachable only when ``confirmations`` (3) *distinct*
   servers in a row agree; a disagreeing answer starts a new streak. A single lying or
   misconfigured server cannot move our state; an answer that confirms the current state
   refreshes it.
3. A confirmed address is asked about again after ``reprobe_interval`` (1 h, as go's address
   tracker); an unconfirmed one at once, by another server. A server that gave a conclusive
   answer about an address is not asked about it again before the re-probe; one that failed
   (refused, errors, a dial-back without our nonce) waits ``retry_interval``. A verdict that no
   answer re-confirmed for ``verdict_ttl`` (2 re-probe intervals: its servers left, or all
   refuse) lapses to unknown; servers leaving alone do not change it.
4. With no server to ask, the next look is after an exponential backoff (5 s doubling to
   5 min), reset when the server set changes.
5. Our reachability: public if any address is confirmed reachable; private if some address is
   confirmed unreachable and none reachable; unknown otherwise. :meth:`evidence` says which
   servers said what about which address, and when.

6. A new network (:meth:`forget_verdicts`) forgets every verdict and ignores answers to the
   probes then in flight.

Bounded: at most ``MAX_TRACKED_ADDRS`` addresses; per address, ``confirmations`` streak
entries and one ``asked`` entry per server asked within the last re-probe interval.

Server (:class:`AutonatServerPolicy`) — whether to serve a request and what to dial:

1. Rate limits before reading the request: ``global_rpm`` (30) per minute, ``per_peer_rpm``
   (3) per peer per minute (AutoNAT v1's anchors), one request at a time per peer, and
   ``dial_data_rpm`` requests that need dial data.
2. The first address in the request that is a plain TCP or QUIC (``/udp/P/quic-v1``) address
   in a scope we dial (QUIC only if the server can dial QUIC): public only, unless ``allow_private`` (a server on a private or loopback network: labs,
   tests). Nothing else in the list is ever dialed.
3. Amplification guard: if that address's IP differs from the requester's observed IP, the
   requester first pays ``MIN_DIAL_DATA``..``MAX_DIAL_DATA`` bytes; one that does not pay is
   refused and the third party is never contacted.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from ..addrs import AddrScope, ip_of, parse_multiaddr, scope_of
from ..wire.autonat import MAX_DIAL_DATA, MIN_DIAL_DATA
from .status import Reachability

__all__ = [
    "ProbeOutcome",
    "Probe",
    "AddrVerdict",
    "AutonatClientPolicy",
    "ServerVerdict",
    "ServerDecision",
    "AutonatServerPolicy",
    "dialable_tcp",
    "dialable_addr",
    "MAX_TRACKED_ADDRS",
]

MAX_TRACKED_ADDRS = 16
MINUTE = 60.0


class ProbeOutcome(enum.Enum):
    REACHABLE = "reachable"  # the server dialed back and our nonce arrived
    UNREACHABLE = "unreachable"  # the server tried and could not connect (E_DIAL_ERROR)
    INCONCLUSIVE = "inconclusive"  # refused, rejected, stream error, nonce missing or wrong


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask ``server`` to dial ``addr`` back."""

    addr: str
    server: Hashable


@dataclass(slots=True)
class AddrVerdict:
    """What we know about one of our addresses."""

    addr: str
    reachability: Reachability = Reachability.UNKNOWN
    confirmed_by: tuple[str, ...] = ()
    confirmed_at: float | None = None
    streak: bool | None = None  # the direction of the answers being counted
    streak_servers: dict[Hashable, float] = field(default_factory=dict)
    next_probe: float = 0.0
    asked: dict[Hashable, float] = field(default_factory=dict)  # server -> may ask again at
    in_flight: set[Hashable] = field(default_factory=set)
    results: dict[str, int] = field(default_factory=dict)  # outcome value -> count

    def as_dict(self) -> dict[str, object]:
        return {
            "addr": self.addr,
            "reachability": self.reachability.value,
            "confirmed_by": list(self.confirmed_by),
            "confirmed_at": None if self.confirmed_at is None else round(self.confirmed_at, 3),
            "streak": None if self.streak is None else ("reachable" if self.streak else "unreachable"),
            "streak_servers": len(self.streak_servers),
            "results": dict(self.results),
        }


class AutonatClientPolicy:
    def __init__(
        self,
        *,
        confirmations: int = 3,
        reprobe_interval: float = 3600.0,
        retry_interval: float = 30.0,
        max_in_flight: int = 3,
        no_server_backoff: tuple[float, float] = (5.0, 300.0),
        label: Callable[[Hashable], str] = str,
        verdict_ttl: float | None = None,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1")
        self.confirmations = confirmations
        self.reprobe_interval = reprobe_interval
        self.verdict_ttl = 2 * reprobe_interval if verdict_ttl is None else verdict_ttl
        self.retry_interval = retry_interval
        self.max_in_flight = max_in_flight
        self._backoff_base, self._backoff_cap = no_server_backoff
        self._backoff = 0.0
        self._look_again: float | None = None  # no servers: when to look again
        self.label = label
        self.addrs: dict[str, AddrVerdict] = {}
        self.servers: list[Hashable] = []

    # ---- inputs -----------------------------------------------------------------------------
    def set_addresses(self, addrs: Iterable[str], now: float) -> None:
        """Our candidate addresses; new ones are due at once, vanished ones are forgotten."""
        wanted: list[str] = []
        for a in addrs:
            if a not in wanted:
                wanted.append(a)
        wanted = wanted[:MAX_TRACKED_ADDRS]
        for a in list(self.addrs):
            if a not in wanted:
                del self.addrs[a]
        for a in wanted:
            if a not in self.addrs:
                self.addrs[a] = AddrVerdict(a, next_probe=now)

    def set_servers(self, servers: Iterable[Hashable], now: float) -> None:
        new = list(dict.fromkeys(servers))
        if set(new) != set(self.servers):
            self._backoff = 0.0
            self._look_again = None
        self.servers = new

    def forget_verdicts(self, now: float) -> None:
        """A new network: what servers said about our addresses was about the old one."""
        for a in list(self.addrs):
            self.addrs[a] = AddrVerdict(a, next_probe=now)  # in-flight answers are ignored
        self._backoff, self._look_again = 0.0, None

    def _lapse(self, now: float) -> None:
        """Verdicts nobody re-confirmed for ``verdict_ttl`` go back to unknown."""
        for v in self.addrs.values():
            if v.confirmed_at is not None and now >= v.confirmed_at + self.verdict_ttl:
                v.reachability, v.confirmed_by, v.confirmed_at = Reachability.UNKNOWN, (), None
                v.streak, v.streak_servers = None, {}
                v.next_probe = min(v.next_probe, now)

    # ---- timing -----------------------------------------------------------------------------
    def _want(self, v: AddrVerdict) -> int:
        """How many more servers to ask about ``v`` at once: as many as a verdict needs, one
        when re-probing a confirmed state."""
        if v.confirmed_at is not None and v.streak == (v.reachability is Reachability.PUBLIC):
            want = 1
        else:
            want = self.confirmations - len(v.streak_servers)
        return max(1, want) - len(v.in_flight)

    def _eligible(self, v: AddrVerdict, now: float) -> list[Hashable]:
        return [s for s in self.servers if s not in v.in_flight and v.asked.get(s, 0.0) <= now]

    def in_flight(self) -> int:
        return sum(len(v.in_flight) for v in self.addrs.values())

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` may have a probe to start (None: only new input can help)."""
        if not self.addrs:
            return None
        lapses = [v.confirmed_at + self.verdict_ttl for v in self.addrs.values() if v.confirmed_at is not None]
        best: float | None = min(lapses) if lapses else None
        if not self.servers:
            return self._look_again if best is None or self._look_again is None else min(best, self._look_again)
        for v in self.addrs.values():
            if self._want(v) <= 0:  # enough in flight: only an answer can need another probe
                continue
            free = [s for s in self.servers if s not in v.in_flight]
            if not free:
                continue
            t = max(v.next_probe, min(v.asked.get(s, 0.0) for s in free))
            best = t if best is None else min(best, t)
        return best

    def on_timer(self, now: float) -> list[Probe]:
        """The probes to start now (each is in flight until :meth:`on_result`)."""
        if not self.addrs:
            return []
        self._lapse(now)
        if not self.servers:
            if self._look_again is None or self._look_again <= now:
                self._backoff = min(self._backoff_cap, self._backoff * 2 or self._backoff_base)
                self._look_again = now + self._backoff
            return []
        probes: list[Probe] = []
        budget = self.max_in_flight - self.in_flight()
        # Unconfirmed addresses first: they are what our reachability waits for.
        order = sorted(self.addrs.values(), key=lambda v: (v.confirmed_at is not None, v.next_probe))
        for v in order:
            if budget <= 0:
                break
            if v.next_probe > now:
                continue
            want = self._want(v)
            for s in self._eligible(v, now)[: max(0, min(want, budget))]:
                v.in_flight.add(s)
                probes.append(Probe(v.addr, s))
                budget -= 1
        return probes

    # ---- results ----------------------------------------------------------------------------
    def on_result(self, probe: Probe, outcome: ProbeOutcome, now: float) -> bool:
        """Count one answer; True if our overall reachability changed."""
        v = self.addrs.get(probe.addr)
        if v is None or probe.server not in v.in_flight:  # the address or the network went away
            return False
        before = self.reachability
        v.in_flight.discard(probe.server)
        for s in [s for s, t in v.asked.items() if t <= now]:  # lapsed: as if never asked
            del v.asked[s]
        v.results[outcome.value] = v.results.get(outcome.value, 0) + 1
        if outcome is ProbeOutcome.INCONCLUSIVE:
            v.asked[probe.server] = now + self.retry_interval
            return False
        ok = outcome is ProbeOutcome.REACHABLE
        v.asked[probe.server] = now + self.reprobe_interval
        if v.streak is not ok:
            v.streak, v.streak_servers = ok, {}
        v.streak_servers.pop(probe.server, None)
        v.streak_servers[probe.server] = now  # newest last; only the last few count
        while len(v.streak_servers) > self.confirmations:
            del v.streak_servers[next(iter(v.streak_servers))]
        state = Reachability.PUBLIC if ok else Reachability.PRIVATE
        if v.reachability is state or len(v.streak_servers) >= self.confirmations:
            if v.reachability is not state:
                v.confirmed_by = tuple(self.label(s) for s in v.streak_servers)
            else:
                v.confirmed_by = tuple(dict.fromkeys(v.confirmed_by + (self.label(probe.server),)))[
                    -self.confirmations:]
            v.reachability = state
            v.confirmed_at = now
            v.next_probe = now + self.reprobe_interval
        else:
            v.next_probe = now  # unconfirmed or a contrary streak: another server, at once
        return self.reachability is not before

    # ---- outputs ----------------------------------------------------------------------------
    @property
    def reachability(self) -> Reachability:
        states = {v.reachability for v in self.addrs.values()}
        if Reachability.PUBLIC in states:
            return Reachability.PUBLIC
        if Reachability.PRIVATE in states:
            return Reachability.PRIVATE
        return Reachability.UNKNOWN

    def evidence(self, when: Callable[[float], str] = lambda t: f"{t:.1f}") -> tuple[str, ...]:
        """One line per confirmed address: what, by whom, when (``when`` formats a ``now``)."""
        out = []
        for v in self.addrs.values():
            if v.confirmed_at is None:
                continue
            what = "reachable" if v.reachability is Reachability.PUBLIC else "unreachable"
            out.append(f"autonat {v.addr} {what}: confirmed by {len(v.confirmed_by)} servers "
                       f"({', '.join(v.confirmed_by)}) at {when(v.confirmed_at)}")
        return tuple(out)

    def status(self) -> list[dict[str, object]]:
        return [v.as_dict() for v in self.addrs.values()]


# ---- server ---------------------------------------------------------------------------------
class ServerVerdict(enum.Enum):
    REJECT = "rejected"  # rate limited: E_REQUEST_REJECTED
    REFUSE = "refused"  # nothing we will dial: E_DIAL_REFUSED
    DIAL = "dial"  # dial addrs[idx] now
    PAY_FIRST = "pay_first"  # ask for num_bytes of dial data, then dial addrs[idx]


@dataclass(frozen=True, slots=True)
class ServerDecision:
    verdict: ServerVerdict
    idx: int = 0
    addr: str = ""
    num_bytes: int = 0
    reason: str = ""


def dialable_tcp(addr: bytes, allow_private: bool) -> str | None:
    """``addr`` as text if it is ``/ip4|ip6/A/tcp/P`` in a scope we dial back, else None."""
    return dialable_addr(addr, allow_private, quic=False)


def dialable_addr(addr: bytes, allow_private: bool, quic: bool = True) -> str | None:
    """``addr`` as text if it is ``/ip4|ip6/A/tcp/P`` (or, with ``quic``,
    ``/ip4|ip6/A/udp/P/quic-v1``) in a scope we dial back, else None."""
    try:
        ma = parse_multiaddr(addr)
        text = str(ma)
        protos = [p.name for p in ma.protocols()]
    except Exception:  # bytes from the network: anything may be wrong with them
        return None
    if not protos or protos[0] not in ("ip4", "ip6"):
        return None
    if protos[1:] != ["tcp"] and not (quic and protos[1:] == ["udp", "quic-v1"]):
        return None
    scope = scope_of(ma)
    if scope is AddrScope.PUBLIC:
        return text
    if allow_private and scope in (AddrScope.PRIVATE, AddrScope.LOOPBACK):
        return text
    return None


class AutonatServerPolicy:
    """Rate limits, address selection and the amplification guard (module docstring)."""

    def __init__(
        self,
        *,
        global_rpm: int = 30,
        per_peer_rpm: int = 3,
        dial_data_rpm: int = 12,
        max_concurrent_per_peer: int = 1,
        allow_private: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.global_rpm = global_rpm
        self.per_peer_rpm = per_peer_rpm
        self.dial_data_rpm = dial_data_rpm
        self.max_concurrent_per_peer = max_concurrent_per_peer
        self.allow_private = allow_private
        self.rng = rng or random.Random()
        self._requests: deque[tuple[float, Hashable]] = deque()  # admitted, last minute
        self._per_peer: dict[Hashable, int] = {}
        self._dial_data: deque[float] = deque()
        self._active: dict[Hashable, int] = {}

    def _forget_old(self, now: float) -> None:
        while self._requests and now - self._requests[0][0] >= MINUTE:
            _, peer = self._requests.popleft()
            left = self._per_peer.get(peer, 0) - 1
            if left > 0:
                self._per_peer[peer] = left
            else:
                self._per_peer.pop(peer, None)
        while self._dial_data and now - self._dial_data[0] >= MINUTE:
            self._dial_data.popleft()

    def admit(self, peer: Hashable, now: float) -> bool:
        """Before reading a request. True: serve it, and call :meth:`complete` when done."""
        self._forget_old(now)
        if self._active.get(peer, 0) >= self.max_concurrent_per_peer:
            return False
        if len(self._requests) >= self.global_rpm or self._per_peer.get(peer, 0) >= self.per_peer_rpm:
            return False
        self._requests.append((now, peer))
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._active[peer] = self._active.get(peer, 0) + 1
        return True

    def complete(self, peer: Hashable) -> None:
        left = self._active.get(peer, 0) - 1
        if left > 0:
            self._active[peer] = left
        else:
            self._active.pop(peer, None)

    def decide(
        self,
        addrs: Iterable[bytes],
        observed_ip: str | None,
        now: float,
        can_dial: Callable[[str], bool] = lambda _a: True,
        quic: bool = False,
    ) -> ServerDecision:
        """What to do with an admitted request (module docstring, points 2 and 3); ``quic``:
        the server can dial QUIC addresses."""
        for idx, raw in enumerate(addrs):
            text = dialable_addr(raw, self.allow_private, quic=quic)
            if text is None or not can_dial(text):
                continue
            ip = ip_of(parse_multiaddr(text))
            if observed_ip is not None and ip is not None and str(ip) == observed_ip:
                return ServerDecision(ServerVerdict.DIAL, idx, text)
            self._forget_old(now)
            if len(self._dial_data) >= self.dial_data_rpm:
                return ServerDecision(ServerVerdict.REJECT, idx, text, reason="dial data rate limit")
            self._dial_data.append(now)
            amount = self.rng.randint(MIN_DIAL_DATA, MAX_DIAL_DATA)
            return ServerDecision(ServerVerdict.PAY_FIRST, idx, text, amount, reason="other IP than the requester's")
        return ServerDecision(ServerVerdict.REFUSE, reason="no address we dial")

    def check(self) -> None:
        """Invariants (tests): counts match the window, nothing negative, bounded."""
        counts: dict[Hashable, int] = {}
        for _, peer in self._requests:
            counts[peer] = counts.get(peer, 0) + 1
        assert counts == self._per_peer, (counts, self._per_peer)
        assert len(self._requests) <= self.global_rpm
        assert len(self._dial_data) <= self.dial_data_rpm
        assert all(n > 0 for n in self._active.values())
