"""The autorelay decision (sans-IO): which relays to hold reservations on, and when to renew.

go-libp2p's ``autorelay`` reacts to reachability: a node that others cannot dial keeps
reservations on a few relays and advertises ``/p2p-circuit`` addresses through them; a node that
becomes public drops them. This core makes the same decisions from plain inputs — the NAT
verdict, the connected peers that identify lists as relays (``/libp2p/circuit/relay/0.2.0/hop``)
with their network group, and the outcome of each reservation attempt — and says what to do
next as :class:`Reserve` / :class:`Release` actions. Time comes in as ``now``;
:meth:`AutoRelayPolicy.next_deadline` says when it next needs the clock.

Rules:

1. **Wanted**: reservations are kept while we are not publicly reachable (Private, or Unknown:
   "reserve and try") and autorelay is on. Public (an open NAT type, or a port mapping on the
   gateway) → every reservation is released at once, and none is made.
2. **Choice**: up to ``target`` relays among connected candidates, preferring network groups
   that no held relay is in (one relay operator, one /16, should not be able to cut us off); a
   candidate of an already used group is taken only when no other is left, since a relay in
   the same group still beats none (a LAN or loopback test network has one group).
3. **Renewal**: a held reservation is renewed ``slack`` seconds before it expires, where
   ``slack`` is a quarter of its lifetime, at most 2 minutes (go renews within 2 minutes of
   expiry); an expired one is dropped, and its relay backs off as in rule 4 (a relay that let
   it run out, e.g. one whose connection died without a close, is not asked again at once).
4. **Failure and loss**: a refused reservation or a relay that disconnects puts that relay in
   exponential backoff (``backoff_base`` doubling up to ``backoff_cap``) and another candidate
   takes its place at once.

Invariants (:meth:`check`): held and pending relays are disjoint, are candidates, and number at
most ``target``; a held relay has no backoff; nothing is held while reservations are not wanted.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..delays import doubling

__all__ = ["AutoRelayPolicy", "Reserve", "Release", "HeldReservation", "RelayPolicyError"]

K = TypeVar("K", bound=Hashable)

MAX_SLACK = 120.0


class RelayPolicyError(AssertionError):
    """An invariant of :class:`AutoRelayPolicy` does not hold (a bug, raised by ``check``)."""


@dataclass(frozen=True)
class Reserve(Generic[K]):
    """Make (``renewal`` False) or renew a reservation on ``relay``; report the outcome."""

    relay: K
    renewal: bool = False


@dataclass(frozen=True)
class Release(Generic[K]):
    """Stop using ``relay``: drop its circuit addresses (relay v2 has no cancel message)."""

    relay: K
    reason: str


@dataclass
class HeldReservation:
    expires_at: float
    renew_at: float
    addrs: tuple[str, ...]
    renewing: bool = False


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0


@dataclass
class AutoRelayPolicy(Generic[K]):
    target: int = 2
    enabled: bool = True
    backoff_base: float = 10.0
    backoff_cap: float = 600.0
    public: bool = False
    candidates: dict[K, str] = field(default_factory=dict)  # relay -> network group
    held: dict[K, HeldReservation] = field(default_factory=dict)
    pending: set[K] = field(default_factory=set)
    _backoff: dict[K, _Backoff] = field(default_factory=dict)

    # ---- inputs -----------------------------------------------------------------------------
    def set_public(self, public: bool) -> list[Release[K]]:
        """The NAT verdict changed. Becoming public releases every reservation (rule 1)."""
        self.public = public
        if not public:
            return []
        out = [Release(k, "public") for k in self.held]
        self.held.clear()
        return out

    def add_candidate(self, relay: K, group: str) -> None:
        """A connected peer lists hop in identify."""
        self.candidates[relay] = group

    def remove_candidate(self, relay: K, now: float, reason: str = "disconnected") -> list[Release[K]]:
        """The peer disconnected (or stopped serving hop): it is no candidate, and a relay we
        used goes into backoff."""
        self.candidates.pop(relay, None)
        self.pending.discard(relay)
        if relay in self.held:
            del self.held[relay]
            self._fail(relay, now)
            return [Release(relay, reason)]
        return []

    def reserved(self, relay: K, expires_at: float, addrs: tuple[str, ...], now: float) -> None:
        """The relay accepted (or renewed) our reservation until ``expires_at``."""
        asked = relay in self.pending or relay in self.held
        self.pending.discard(relay)
        if not asked or relay not in self.candidates or not self.wanted():
            # Dropped while in flight (expired, went away: its backoff stays; or we turned
            # public); another relay may have its place by now.
            return
        self._backoff.pop(relay, None)
        lifetime = max(0.0, expires_at - now)
        slack = min(MAX_SLACK, lifetime / 4)
        self.held[relay] = HeldReservation(expires_at, max(now, expires_at - slack), tuple(addrs))

    def failed(self, relay: K, now: float) -> list[Release[K]]:
        """The reservation (or its renewal) was refused or timed out."""
        self.pending.discard(relay)
        self._fail(relay, now)
        if self.held.pop(relay, None) is not None:
            return [Release(relay, "renewal failed")]
        return []

    # ---- decisions --------------------------------------------------------------------------
    def wanted(self) -> bool:
        return self.enabled and not self.public and self.target > 0

    def actions(self, now: float) -> list[Reserve[K] | Release[K]]:
        """What to do now: releases of expired reservations, renewals due, new reservations."""
        self.on_timer(now)
        out: list[Reserve[K] | Release[K]] = []
        if not self.wanted():
            out += [Release(k, "not wanted") for k in self.held]
            self.held.clear()
            return out
        for relay, held in list(self.held.items()):
            if held.expires_at <= now:
                del self.held[relay]
                self._fail(relay, now)
                out.append(Release(relay, "expired"))
            elif held.renew_at <= now and not held.renewing:
                held.renewing = True
                out.append(Reserve(relay, renewal=True))
        for relay in self._choose(now):
            self.pending.add(relay)
            out.append(Reserve(relay))
        return out

    def _choose(self, now: float) -> list[K]:
        free = self.target - len(self.held) - len(self.pending)
        if free <= 0:
            return []
        used = {self.candidates[k] for k in (*self.held, *self.pending) if k in self.candidates}
        ready = [k for k in self.candidates
                 if k not in self.held and k not in self.pending and self._ready(k, now)]
        # Fresh groups first (rule 2); within each, the order peers connected in.
        # Two passes: one skipping used groups could end with slots free and ready candidates
        # left over (target 3: a1, a2 in one group, b in another gave a1, b); next_deadline then
        # named their ended backoff, a deadline already past, and the client woke again at once.
        chosen: list[K] = []
        for k in ready:
            if len(chosen) < free and self.candidates[k] not in used:
                chosen.append(k)
                used.add(self.candidates[k])
        chosen += [k for k in ready if k not in chosen][: free - len(chosen)]
        return chosen

    def _ready(self, relay: K, now: float) -> bool:
        b = self._backoff.get(relay)
        return b is None or b.until <= now

    def _fail(self, relay: K, now: float) -> None:
        b = self._backoff.setdefault(relay, _Backoff())
        b.failures += 1
        b.until = now + doubling(self.backoff_base, self.backoff_cap, b.failures)

    def on_timer(self, now: float) -> None:
        """Forget backoffs that ended long ago (bounded state: at most one per candidate)."""
        for relay in [k for k, b in self._backoff.items() if k not in self.candidates and b.until <= now]:
            del self._backoff[relay]

    def next_deadline(self) -> float | None:
        """When :meth:`actions` next has something to do without a new input."""
        times: list[float] = []
        if not self.wanted():
            return None
        for held in self.held.values():
            times.append(held.expires_at if held.renewing else held.renew_at)
        if len(self.held) + len(self.pending) < self.target:
            times += [b.until for k, b in self._backoff.items() if k in self.candidates
                      and k not in self.held and k not in self.pending]
        return min(times) if times else None

    # ---- views ------------------------------------------------------------------------------
    def circuit_addrs(self) -> tuple[str, ...]:
        """Our ``/p2p-circuit`` addresses through every held relay, in a stable order."""
        out: list[str] = []
        for held in self.held.values():
            out += [a for a in held.addrs if a not in out]
        return tuple(out)

    def in_backoff(self, relay: K, now: float) -> bool:
        return not self._ready(relay, now)

    def check(self) -> None:
        def fail(msg: str) -> None:
            raise RelayPolicyError(msg)

        if set(self.held) & self.pending:
            fail("a relay is both held and pending")
        if len(self.held) + len(self.pending) > max(self.target, 0):
            fail("more relays than the target")
        for k in (*self.held, *self.pending):
            if k not in self.candidates:
                fail(f"relay {k!r} is not a candidate")
        if set(self.held) & set(self._backoff):
            fail("a held relay is in backoff")
        if not self.wanted() and self.held:
            fail("reservations held while not wanted")
