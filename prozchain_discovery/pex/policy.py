"""Peer exchange policy (seed §3.2) — sans-IO: every decision takes ``now``.

Responder side: answer at most ``min(max_peers, max_peers_per_exchange)`` records from the peer
database's sharing rules; a requester asking again sooner than ``exchange_interval`` gets
``RATE_LIMITED`` with ``retry_after_ms``; one that ignores that ``ignored_limit`` times is
reported as abusive (the service disconnects it and lowers its standing).

Requester side: :meth:`PeerExchange.should_request_peers_from` (the seed's rule plus the
responder's ``retry_after_ms``), and :meth:`PeerExchange.read_response`, which verifies each
record on its own and attributes it to the sender.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from libp2p.peer.id import ID

from ..config import PexConfig
from ..records import RecordRejection, VerifiedRecord, VerifiedRecordCache, verify_many
from ..wire.messages import PexRequest, PexResponse, PexStatus

__all__ = ["PeerExchange", "Verdict", "PexOutcome"]

OK = PexStatus.Value("OK")
WRONG_NETWORK = PexStatus.Value("WRONG_NETWORK")
RATE_LIMITED = PexStatus.Value("RATE_LIMITED")


class Verdict(enum.Enum):
    ANSWERED = "answered"
    WRONG_NETWORK = "wrong_network"
    RATE_LIMITED = "rate_limited"
    ABUSIVE = "abusive"  # kept asking despite RATE_LIMITED


@dataclass
class PexOutcome:
    status: int
    records: list[VerifiedRecord]
    rejected: dict[RecordRejection, int] = field(default_factory=dict)
    retry_at: float | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(slots=True)
class _Served:
    at: float
    ignored: int = 0


class PeerExchange:
    def __init__(
        self,
        config: PexConfig,
        network_id: str,
        local_peer_id: ID | None = None,
        cache: VerifiedRecordCache | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.network_id = network_id
        self.local_peer_id = local_peer_id
        self._served: dict[ID, _Served] = {}  # responder: when we last answered each requester
        self._last_exchange: dict[ID, float] = {}  # requester: when we last asked each peer
        self._retry_at: dict[ID, float] = {}  # requester: responder said "not before"
        self._fetch_saturated = False  # address fetch stopped paying
        self._heard = 0  # regular answers with records since the last fetch round
        self._learned = 0  # records they brought that were new
        self._next_fetch: float | None = None  # the next address-fetch round
        self._timer_at = float("-inf")  # the last on_timer(now)

    # ---- responder -------------------------------------------------------------------------
    def handle_request(
        self,
        requester: ID,
        request: PexRequest,
        now: float,
        share: Callable[[int], list[bytes]],
    ) -> tuple[PexResponse, Verdict]:
        if request.network_id != self.network_id:
            return PexResponse(WRONG_NETWORK), Verdict.WRONG_NETWORK
        served = self._served.get(requester)
        # A requester times its interval from when it *sent*; we from when we *answered*:
        # allow one round trip's worth of slack (5%, at most 2 s) so honest peers are not refused.
        interval = self.config.exchange_interval
        slack = min(2.0, 0.05 * interval)
        if served is not None and now - served.at < interval - slack:
            served.ignored += 1
            retry_ms = int((served.at + interval - now) * 1000) + 1
            verdict = (
                Verdict.ABUSIVE if served.ignored >= self.config.ignored_limit else Verdict.RATE_LIMITED
            )
            return PexResponse(RATE_LIMITED, retry_after_ms=retry_ms), verdict
        self._served[requester] = _Served(now)
        limit = self.config.max_peers_per_exchange
        if request.max_peers:
            limit = min(limit, request.max_peers)
        return PexResponse(OK, share(limit)), Verdict.ANSWERED

    # ---- requester -------------------------------------------------------------------------
    def should_request_peers_from(self, peer_id: ID, now: float) -> bool:
        retry_at = self._retry_at.get(peer_id)
        if retry_at is not None and now < retry_at:
            return False
        last = self._last_exchange.get(peer_id)
        # Sums, as next_request_at computes them: ``now - last >= interval`` can round the other
        # way, and a peer would then be not due at its own deadline.
        return last is None or last + self.config.exchange_interval <= now

    def next_request_at(self, peer_id: ID, now: float) -> float:
        last = self._last_exchange.get(peer_id)
        at = now if last is None else last + self.config.exchange_interval
        return max(at, self._retry_at.get(peer_id, now))

    def make_request(self, peer_id: ID, now: float) -> PexRequest:
        self._last_exchange[peer_id] = now
        return PexRequest(self.network_id, self.config.max_peers_per_exchange)

    def read_response(self, from_peer: ID, response: PexResponse, now: float) -> PexOutcome:
        # The interval runs from the answer, not from the request: the responder times it from
        # when it answered, and a request can leave late under load.
        self._last_exchange[from_peer] = now
        if response.status == RATE_LIMITED:
            retry_at = now + max(response.retry_after_ms, 1) / 1000.0
            self._retry_at[from_peer] = retry_at
            return PexOutcome(response.status, [], retry_at=retry_at)
        if response.status != OK:
            return PexOutcome(response.status, [])
        blobs = response.signed_records
        rejected: dict[RecordRejection, int] = {}
        if len(blobs) > self.config.max_peers_per_exchange:
            # More than we asked for: keep what we asked for, count the rest as abuse.
            rejected[RecordRejection.TOO_LARGE] = len(blobs) - self.config.max_peers_per_exchange
            blobs = blobs[: self.config.max_peers_per_exchange]
        records, bad = verify_many(blobs, local_peer_id=self.local_peer_id, cache=self.cache)
        for reason, n in bad.items():
            rejected[reason] = rejected.get(reason, 0) + n
        kept = []
        for rec in records:
            if rec.peer_id == from_peer:
                continue  # the sender's own record arrives with identify, not as hearsay
            kept.append(rec)
        return PexOutcome(response.status, kept, rejected)

    # ---- scheduling (the PEX component sleeps until next_deadline) ---------------------------
    def due(self, peers: Iterable[tuple[ID, float]], now: float) -> list[ID]:
        """Which of ``peers`` (outbound peers as ``(peer id, connected since)``) to ask now.

        A new connection waits ``first_request_delay`` (identify first); then each peer is asked
        once per ``exchange_interval``, or when its ``RATE_LIMITED`` answer said.
        """
        first = self.config.first_request_delay
        return [
            pid for pid, since in peers
            if since + first <= now and self.should_request_peers_from(pid, now)
        ]

    def next_deadline(self, peers: Iterable[tuple[ID, float]], now: float) -> float | None:
        """When the next of ``peers`` falls due, or the next address-fetch round, if ever."""
        first = self.config.first_request_delay
        times = [max(since + first, self.next_request_at(pid, now)) for pid, since in peers]
        # A fetch round still due at the last on_timer waits for a connection (the service asks
        # fetch_due only while connected; PeerConnected wakes it): as a deadline it kept an
        # isolated node's loop waking every 50 ms for nothing.
        if self._next_fetch is not None and self._next_fetch > self._timer_at:
            times.append(self._next_fetch)
        return min(times) if times else None

    def start_fetching(self, now: float) -> None:
        """Address fetch rounds start ``first_request_delay`` after the service does."""
        self._next_fetch = now + self.config.first_request_delay

    def fetch_due(self, now: float) -> bool:
        """Whether an address-fetch round is due; if so the next one is scheduled."""
        if self._next_fetch is None or now < self._next_fetch:
            return False
        self._next_fetch = now + self.config.exchange_interval
        # The regular answers since the last round already tell whether the network has more
        # to say: fewer than 2 new records per answer and a fetch round would only repeat them
        # (measured: 370 one-shot handshakes at once in a 50-node network a minute after it
        # started, every node fetching what it knew).
        if self._heard and self._learned < 2 * self._heard:
            self._fetch_saturated = True
        self._heard = self._learned = 0
        return True

    def note_answer(self, records: int, new: int) -> None:
        """A regular PEX answer carried ``records`` valid records, ``new`` of them news to us."""
        if records:
            self._heard += 1
            self._learned += new

    def on_timer(self, now: float) -> None:
        self._timer_at = max(self._timer_at, now)
        self.forget_old(now)

    def addr_fetch_budget(self, book_size: int, uptime: float) -> int:
        """How many extra peers to ask this round (0 once the book is full enough or the node
        is no longer young: a grown node has no reason to open one-shot connections)."""
        c = self.config
        if self._fetch_saturated or book_size >= c.addr_fetch_below or uptime > c.addr_fetch_window:
            return 0
        return c.addr_fetch_per_round

    def note_fetch_round(self, asked: int, gained: int) -> None:
        """A round that brought fewer than 2 new addresses per peer asked means the network
        is smaller than the book target (or we have seen most of it): stop fetching."""
        if asked and gained < 2 * asked:
            self._fetch_saturated = True

    def note_fetch(self, gained: int) -> None:
        """One fetch answered: fewer than 2 new addresses and the next ones will not pay either
        (a round's fetches run a few at a time and stop at the first such answer)."""
        if gained < 2:
            self._fetch_saturated = True

    @property
    def fetch_saturated(self) -> bool:
        return self._fetch_saturated

    def forget_old(self, now: float) -> None:
        """Drop rate-limit state older than the interval (keeps memory bounded)."""
        horizon = self.config.exchange_interval
        self._served = {p: s for p, s in self._served.items() if now - s.at < horizon}
        self._retry_at = {p: t for p, t in self._retry_at.items() if t > now}
        self._last_exchange = {p: t for p, t in self._last_exchange.items() if t + horizon > now}
