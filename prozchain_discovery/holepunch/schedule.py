"""The DCUtR attempt schedule and the punch policy, as a sans-IO core (time comes in as ``now``).

DCUtR (libp2p specs ``relay/DCUtR.md``; go-libp2p ``p2p/protocol/holepunch``) upgrades a relayed
connection to a direct one. The peer that *accepted* the relayed connection (B in the spec)
drives: it opens ``/libp2p/dcutr``, sends CONNECT with its addresses and starts a timer; A answers
CONNECT with its own; B takes the round trip as the RTT, sends SYNC and dials A ``RTT/2`` later,
while A dials B as soon as SYNC arrives — so the two SYNs cross in the middle and each NAT sees
its own outbound SYN before the peer's arrives (TCP simultaneous open). An attempt that yields
no direct connection within ``dial_timeout`` (5 s) is re-run from CONNECT (a fresh RTT), at
most ``max_attempts`` (3) times per relayed connection.

Exactly one side drives. py-libp2p 0.8.1 punches from both sides at once; when the two
sessions overlap both dial the same 4-tuple (``EADDRNOTAVAIL``) and the Noise roles conflict
(../shared/notes/py-libp2p-0.8.1-relay.md). :func:`drives` is the spec's rule; the other side
only answers.

When not to punch (:func:`plan_pair`): a port-randomising ("symmetric") NAT on either side makes
the predicted address wrong, so punching cannot work and the pair stays relayed —
:attr:`PairPlan.NOT_SUPPORTED`, the typed ``HolepunchNotSupported`` the API and status report.
The exception is *connection reversal*: when the other side is directly dialable (no NAT, or a
full-cone NAT that lets anyone in), the symmetric side just dials it. Both peers learn each
other's class from the CONNECT exchange (an optional field the DCUtR message carries; go and js
peers leave it out, which reads as ``unknown`` = try, as go-libp2p always tries).

Exactly one session per pair, whoever dialed (#16): two peers that dial each other through a
relay at once each accept a circuit. Both sides keep the circuit the smaller peer id initiated
(simultaneous.py), so the larger id accepted the kept one and drives; :func:`yields_to_peer` is
that rule for the smaller side, and a CONNECT that arrives while both sessions have begun is
refused by the larger id and answered by the smaller (whose own session then ends as
``yielded``, neither success nor failure).

Classify first: an ``unknown`` class on either side (our NAT not classified yet, or a prozchain
peer that says ``unknown``) allows one attempt, then the session ends ``undecided`` (no backoff)
and is re-run once the classes are known — a symmetric peer that had not classified itself yet
costs one attempt, not three. A go or js peer never sends a class (``None``): it gets the
spec's three attempts, as go-libp2p gives everyone.

No endless punching: per peer, a failed session (all attempts used) backs off exponentially
(``backoff_base`` doubling to ``backoff_max``) before a new relayed connection may start
another; ``NOT_SUPPORTED`` is remembered for ``backoff_max``; the table of peers is bounded
(``max_peers``, oldest forgotten first).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..delays import doubling

__all__ = [
    "PairPlan",
    "HolepunchNotSupported",
    "HolepunchParams",
    "AttemptSchedule",
    "Step",
    "StepKind",
    "PunchBook",
    "Verdict",
    "drives",
    "plan_pair",
    "yields_to_peer",
    "refuses_peer_session",
    "PUNCHABLE_NAT_TYPES",
    "DIRECTLY_DIALABLE_NAT_TYPES",
]

# NatStatus.nat_type values (nat/status.py).
DIRECTLY_DIALABLE_NAT_TYPES = frozenset({"open", "full_cone"})
PUNCHABLE_NAT_TYPES = frozenset({"open", "full_cone", "restricted_cone", "port_restricted", "unknown"})
# Both sides in one of these and the punch failed: something is wrong (the lab's cone pairs go
# direct every time), worth a WARNING; any other failure is the network being what it is.
CONE_NAT_TYPES = frozenset({"full_cone", "restricted_cone", "port_restricted"})
SYMMETRIC = "symmetric"
# What a field from the wire may say; anything else reads as "unknown".
KNOWN_NAT_TYPES = PUNCHABLE_NAT_TYPES | {SYMMETRIC}


class PairPlan(enum.Enum):
    """What two peers with these NAT classes should do about their relayed connection."""

    PUNCH = "punch"  # DCUtR: CONNECT/SYNC, simultaneous dials
    WE_DIAL = "we_dial"  # connection reversal: we dial the peer directly, no SYNC
    PEER_DIALS = "peer_dials"  # connection reversal: the peer dials us directly
    NOT_SUPPORTED = "not_supported"  # stay relayed (HolepunchNotSupported)


@dataclass(frozen=True)
class HolepunchNotSupported:
    """The typed answer "this pair cannot be hole punched; it stays relayed" (seed §3.3)."""

    our_nat: str
    peer_nat: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"result": "HolepunchNotSupported", "our_nat": self.our_nat,
                "peer_nat": self.peer_nat, "reason": self.reason}


def normalize_nat_type(value: str | None) -> str:
    """A NAT class from the wire or NatStatus; unknown words become ``"unknown"``."""
    return value if value in KNOWN_NAT_TYPES else "unknown"


def drives(relayed_inbound: bool) -> bool:
    """The spec's roles: the peer that accepted the relayed connection (B) starts DCUtR."""
    return relayed_inbound


def yields_to_peer(our_id: bytes, peer_id: bytes, *, outbound_relayed: bool) -> bool:
    """Whether our driving session must give way: the peer accepted a circuit from us, and the
    rule (the circuit the smaller id initiated stays) makes that one the kept circuit — so the
    peer is the driver, and our own inbound circuit is the one being closed."""
    return outbound_relayed and our_id < peer_id


def refuses_peer_session(our_id: bytes, peer_id: bytes) -> bool:
    """Both sessions began: the larger id drives and refuses the peer's CONNECT; the smaller id
    answers it and gives up its own session."""
    return our_id > peer_id


def plan_pair(our_nat: str, peer_nat: str) -> tuple[PairPlan, HolepunchNotSupported | None]:
    """Decide from both NAT classes; symmetric on either side forbids punching.

    Symmetric against a directly dialable peer is connection reversal: the symmetric side dials
    out (its NAT maps any outbound connection); both symmetric, or symmetric against a filtering
    cone, cannot work (the cone's NAT only lets in the address it sent to, which the symmetric
    NAT will not reuse)."""
    ours, theirs = normalize_nat_type(our_nat), normalize_nat_type(peer_nat)
    if ours != SYMMETRIC and theirs != SYMMETRIC:
        return PairPlan.PUNCH, None
    if ours == SYMMETRIC and theirs in DIRECTLY_DIALABLE_NAT_TYPES:
        return PairPlan.WE_DIAL, None
    if theirs == SYMMETRIC and ours in DIRECTLY_DIALABLE_NAT_TYPES:
        return PairPlan.PEER_DIALS, None
    side = "both" if ours == theirs == SYMMETRIC else ("ours" if ours == SYMMETRIC else "theirs")
    reason = f"symmetric NAT ({side}): the port a punch needs cannot be predicted"
    return PairPlan.NOT_SUPPORTED, HolepunchNotSupported(ours, theirs, reason)


@dataclass(frozen=True)
class HolepunchParams:
    max_attempts: int = 3  # per relayed connection (spec, go-libp2p maxRetries)
    dial_timeout: float = 5.0  # per attempt's dials
    stream_timeout: float = 10.0  # a CONNECT or SYNC that does not come in time ends the attempt
    max_sync_delay: float = 2.0  # a relay RTT spike must not push the dial out of the window
    backoff_base: float = 60.0  # after a failed session; doubles
    backoff_max: float = 3600.0
    max_peers: int = 1024  # entries kept in PunchBook
    max_message: int = 4096  # spec: messages are at most 4 KiB
    max_addrs: int = 20  # addresses read from, and sent in, one CONNECT
    classify_wait: float = 10.0  # a driver whose NAT is unclassified waits this long for a verdict
    undecided_retry: float = 5.0  # re-run an undecided session this long after (the peer classifies)
    max_undecided: int = 2  # undecided sessions per peer before unknown is taken as "just try"

    def validate(self) -> HolepunchParams:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("dial_timeout", "stream_timeout", "backoff_base", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.classify_wait < 0 or self.undecided_retry <= 0 or self.max_undecided < 0:
            raise ValueError("classify_wait, undecided_retry or max_undecided out of range")
        if self.max_sync_delay < 0 or self.max_peers < 1 or self.max_message < 64 or self.max_addrs < 1:
            raise ValueError("max_sync_delay, max_peers, max_message or max_addrs out of range")
        return self


class StepKind(enum.Enum):
    SEND_CONNECT = "send_connect"  # open a stream, send CONNECT, wait for the answer
    SEND_SYNC_AND_DIAL = "sync_and_dial"  # send SYNC, dial after `delay`
    DIAL_DIRECT = "dial_direct"  # connection reversal: dial now, no SYNC
    WAIT_FOR_PEER = "wait_for_peer"  # reversal the other way: the peer dials us
    DONE = "done"  # a direct connection exists
    GIVE_UP = "give_up"  # attempts used up, or not supported


@dataclass(frozen=True)
class Step:
    kind: StepKind
    delay: float = 0.0  # for SEND_SYNC_AND_DIAL: RTT/2
    deadline: float | None = None  # when the step counts as failed
    not_supported: HolepunchNotSupported | None = None


@dataclass
class AttemptSchedule:
    """One driving session over one relayed connection: up to ``max_attempts`` CONNECT/SYNC rounds.

    The adapter calls :meth:`start`, then feeds what happened (:meth:`connect_sent`,
    :meth:`connect_answered`, :meth:`dial_failed`, :meth:`direct_connected`) and does what the
    returned :class:`Step` says. ``attempts`` counts CONNECT rounds begun.
    """

    our_nat: str
    params: HolepunchParams = field(default_factory=HolepunchParams)
    attempts: int = 0
    rtts: list[float] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    outcome: str = "pending"  # pending | direct | failed | not_supported | reversal | undecided | yielded
    not_supported: HolepunchNotSupported | None = None
    # "unknown" on either side ends the session after one failed attempt (module docstring);
    # False once unknown has had its chances (PunchBook.undecided reached max_undecided)
    one_attempt_if_unknown: bool = True
    undecided: bool = False
    peer_nat: str | None = None  # what the peer's last CONNECT said (None: go/js, no class)
    _connect_sent_at: float | None = None
    _deadline: float | None = None

    def start(self, now: float) -> Step:
        self.started_at = now
        return self._next_attempt(now)

    def _next_attempt(self, now: float) -> Step:
        if self.attempts >= self.params.max_attempts:
            return self._finish(now, "failed")
        self.attempts += 1
        self._connect_sent_at = None
        self._deadline = now + self.params.stream_timeout
        return Step(StepKind.SEND_CONNECT, deadline=self._deadline)

    def connect_sent(self, now: float) -> None:
        """CONNECT left: the RTT timer starts here (spec)."""
        self._connect_sent_at = now

    def connect_answered(self, now: float, peer_nat: str | None) -> Step:
        """The peer's CONNECT came back: plan the pair, then SYNC + dial after RTT/2."""
        if self.outcome != "pending":
            return self._terminal()
        sent = self._connect_sent_at if self._connect_sent_at is not None else now
        rtt = max(0.0, now - sent)
        self.rtts.append(rtt)
        self.peer_nat = peer_nat
        plan, why = plan_pair(self.our_nat, peer_nat or "unknown")
        if self.one_attempt_if_unknown and "unknown" in (normalize_nat_type(self.our_nat), peer_nat):
            self.undecided = True
        if plan is PairPlan.NOT_SUPPORTED:
            self.not_supported = why
            self._finish(now, "not_supported")
            return Step(StepKind.GIVE_UP, not_supported=why)
        self._deadline = now + self.params.dial_timeout
        if plan is PairPlan.WE_DIAL:
            self.outcome = "reversal"
            return Step(StepKind.DIAL_DIRECT, deadline=self._deadline)
        if plan is PairPlan.PEER_DIALS:
            self.outcome = "reversal"
            return Step(StepKind.WAIT_FOR_PEER, deadline=self._deadline)
        delay = min(rtt / 2.0, self.params.max_sync_delay)
        self._deadline = now + delay + self.params.dial_timeout
        return Step(StepKind.SEND_SYNC_AND_DIAL, delay=delay, deadline=self._deadline)

    def attempt_failed(self, now: float) -> Step:
        """No direct connection from this round (timeout, bad stream, failed dials): next round."""
        if self.outcome not in ("pending",):
            return self._finish(now, "failed") if self.outcome == "reversal" else self._terminal()
        if self.undecided:
            return self._finish(now, "undecided")
        return self._next_attempt(now)

    def yielded(self, now: float) -> Step:
        """The peer drives this pair (module docstring): end without success or failure. A
        CONNECT the driver refused was no attempt at punching, and is not counted as one."""
        if self.outcome == "pending" and self._connect_sent_at is not None and len(self.rtts) < self.attempts:
            self.attempts -= 1
        return self._finish(now, "yielded") if self.outcome == "pending" else self._terminal()

    def direct_connected(self, now: float) -> Step:
        return self._finish(now, "direct")

    def next_deadline(self) -> float | None:
        return self._deadline if self.finished_at is None else None

    def _finish(self, now: float, outcome: str) -> Step:
        if self.finished_at is None:
            self.finished_at = now
            self.outcome = outcome
            self._deadline = None
        return self._terminal()

    def _terminal(self) -> Step:
        if self.outcome == "direct":
            return Step(StepKind.DONE)
        return Step(StepKind.GIVE_UP, not_supported=self.not_supported)

    @property
    def time_to_direct(self) -> float | None:
        if self.outcome != "direct" or self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class Verdict(enum.Enum):
    START = "start"
    RUNNING = "running"  # a session for this peer is under way
    BACKING_OFF = "backing_off"
    NOT_SUPPORTED = "not_supported"


K = TypeVar("K")


@dataclass
class _PeerEntry:
    failures: int = 0
    retry_at: float = 0.0
    running: bool = False
    not_supported: HolepunchNotSupported | None = None
    last: str = ""  # last outcome
    updated: float = 0.0
    undecided: int = 0  # sessions that ended undecided since the last decided one


class PunchBook(Generic[K]):
    """Per-peer memory across relayed connections: who is being punched, who backs off, who is
    known not to be punchable. Bounded; keys are peer ids (any hashable)."""

    def __init__(self, params: HolepunchParams | None = None) -> None:
        self.params = (params or HolepunchParams()).validate()
        self._peers: OrderedDict[K, _PeerEntry] = OrderedDict()
        self._timer_at = float("-inf")  # the last on_timer(now): backoffs over by then wait no more

    def __len__(self) -> int:
        return len(self._peers)

    def verdict(self, peer: K, now: float) -> Verdict:
        e = self._peers.get(peer)
        if e is None:
            return Verdict.START
        if e.running:
            return Verdict.RUNNING
        if now < e.retry_at:
            return Verdict.NOT_SUPPORTED if e.not_supported is not None else Verdict.BACKING_OFF
        return Verdict.START

    def retry_at(self, peer: K) -> float | None:
        e = self._peers.get(peer)
        return None if e is None else e.retry_at

    def not_supported(self, peer: K, now: float) -> HolepunchNotSupported | None:
        e = self._peers.get(peer)
        if e is None or e.not_supported is None or now >= e.retry_at:
            return None
        return e.not_supported

    def last_outcome(self, peer: K) -> str | None:
        e = self._peers.get(peer)
        return None if e is None else (e.last or None)

    def begin(self, peer: K, now: float) -> bool:
        """Claim the peer for one session; False if that is not allowed now."""
        if self.verdict(peer, now) is not Verdict.START:
            return False
        e = self._touch(peer, now)
        e.running = True
        return True

    def end(self, peer: K, now: float, outcome: str,
            not_supported: HolepunchNotSupported | None = None) -> None:
        """Record a session's result: direct resets the backoff, failures double it."""
        e = self._touch(peer, now)
        e.running = False
        e.last = outcome
        if outcome in ("direct", "reversal"):
            e.failures, e.retry_at, e.not_supported, e.undecided = 0, now, None, 0
        elif outcome in ("yielded", "undecided"):  # neither: no backoff (undecided is re-run)
            e.retry_at = now
            e.undecided += outcome == "undecided"
        elif not_supported is not None or outcome == "not_supported":
            e.not_supported, e.undecided = not_supported, 0
            e.retry_at = now + self.params.backoff_max
        else:
            e.failures, e.undecided = e.failures + 1, 0
            delay = doubling(self.params.backoff_base, self.params.backoff_max, e.failures)
            e.retry_at = now + delay

    def undecided_sessions(self, peer: K) -> int:
        e = self._peers.get(peer)
        return 0 if e is None else e.undecided

    def note_not_supported(self, peer: K, now: float, why: HolepunchNotSupported) -> None:
        """The answering side learned it from the CONNECT exchange (it runs no schedule)."""
        e = self._touch(peer, now)
        e.not_supported, e.last = why, "not_supported"
        e.retry_at = now + self.params.backoff_max

    def forget_not_supported(self) -> int:
        """Our NAT class changed (a port mapping appeared, we moved): old verdicts no longer hold."""
        gone = [k for k, e in self._peers.items() if e.not_supported is not None and not e.running]
        for k in gone:
            del self._peers[k]
        return len(gone)

    def _touch(self, peer: K, now: float) -> _PeerEntry:
        e = self._peers.pop(peer, None) or _PeerEntry()
        e.updated = now
        self._peers[peer] = e
        while len(self._peers) > self.params.max_peers:
            oldest = next(iter(self._peers))
            if self._peers[oldest].running:  # never forget a running session; move it back
                self._peers.move_to_end(oldest)
                if all(x.running for x in self._peers.values()):
                    break
                continue
            del self._peers[oldest]
        return e

    def next_deadline(self) -> float | None:
        """When the earliest backoff ends (for a status refresh); None if nobody waits.

        A backoff that ended by the last :meth:`on_timer` is no deadline any more: the service
        sleeps until this time, and a past one kept it spinning."""
        waits = [e.retry_at for e in self._peers.values()
                 if not e.running and e.retry_at > max(e.updated, self._timer_at)]
        return min(waits) if waits else None

    def on_timer(self, now: float) -> None:
        """Forget entries whose backoff ended long ago and that hold nothing worth keeping."""
        self._timer_at = max(self._timer_at, now)
        stale = [k for k, e in self._peers.items()
                 if not e.running and e.failures == 0 and e.not_supported is None
                 and now - e.updated > self.params.backoff_max]
        for k in stale:
            del self._peers[k]

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for k, e in self._peers.items():
            d: dict[str, object] = {"state": self.verdict(k, now).value, "last": e.last or None,
                                    "failures": e.failures}
            if e.not_supported is not None:
                d.update(e.not_supported.as_dict())
            out[str(k)] = d
        return out
