"""The PEX component (seed §3.2): asks outbound peers for peers, answers others, fetches addresses.

Policy — who is due a request, rate limits, what a response may contain, when address fetch
stops — is :class:`~.policy.PeerExchange`; this component moves bytes (net/exchange.py) and
sleeps until the policy's ``next_deadline``. A requester that keeps ignoring ``RATE_LIMITED``
is published as :class:`~..events.Misbehaved` (the inbound guard bans it) and disconnected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from ..addrs import AddrScope, scope_of
from ..config import DiscoveryConfig
from ..events import EventBus, Misbehaved, PeerConnected, PeersNeeded, Wakeup, WrongNetwork
from ..metrics import Metrics
from ..net import exchange
from ..peerdb import PeerSource
from ..ports import Connections, Dialing, PeerBookView
from ..wire.messages import PEX_PROTOCOL, DecodeError, PexRequest, PexResponse
from .policy import PeerExchange, Verdict

__all__ = ["PexService"]

log = logging.getLogger("prozchain_discovery.pex")

ADDR_FETCH_PARALLEL = 2  # address-fetch dials in flight at once


class PexService:
    def __init__(
        self,
        host: IHost,
        config: DiscoveryConfig,
        *,
        connections: Connections,
        dialer: Dialing,
        book: PeerBookView,
        bus: EventBus,
        metrics: Metrics,
        refuses: Callable[[INetStream], bool],
    ) -> None:
        self.host = host
        self.config = config
        self.cfg = config.pex
        self.server = config.server
        self.connections = connections
        self.dialer = dialer
        self.book = book
        self.bus = bus
        self.metrics = metrics
        self.refuses = refuses
        self.local_id = host.get_id()
        self.policy = PeerExchange(self.cfg, config.network_id, self.local_id, book.record_cache)
        self.started_at = trio.current_time()
        self._wake = Wakeup()
        bus.subscribe(PeerConnected, lambda _ev: self._wake.set())

    def _outbound(self) -> list[tuple[ID, float]]:
        return [
            (cp.peer_id, cp.since) for cp in self.connections.peers()
            if cp.outbound and not self.book.is_wrong_network(cp.peer_id)
            and self.book.supports(cp.peer_id, PEX_PROTOCOL) is not False
        ]

    async def run(self) -> None:
        self.policy.start_fetching(trio.current_time())
        async with trio.open_nursery() as nursery:
            while True:
                due = self.policy.due(self._outbound(), trio.current_time())
                if due:
                    async with trio.open_nursery() as batch:
                        for pid in due:
                            batch.start_soon(self.request_peers, pid)
                # After the regular round: its answers say whether fetching more would pay.
                if len(self.connections) and self.policy.fetch_due(trio.current_time()):
                    nursery.start_soon(self._addr_fetch)
                self.policy.on_timer(trio.current_time())
                deadline = self.policy.next_deadline(self._outbound(), trio.current_time())
                # Never busier than every 50 ms, whatever the config (exchange_interval may be 0).
                await self._wake.wait_until(None if deadline is None else max(deadline, trio.current_time() + 0.05))

    async def request_peers(self, peer_id: ID) -> int:
        """One PEX exchange with ``peer_id``; returns how many records were accepted."""
        if self.book.supports(peer_id, PEX_PROTOCOL) is False:
            self.metrics.inc("requests_skipped_unsupported", protocol="pex")
            return 0
        started = trio.current_time()
        req = self.policy.make_request(peer_id, started)
        self.metrics.inc("pex_requests_sent")
        try:
            data, _stream = await exchange.request(
                self.host, peer_id, PEX_PROTOCOL, req.encode(), self.cfg.request_timeout
            )
            resp = PexResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            self.metrics.inc("pex_requests_failed")
            if isinstance(exc, exchange.ExchangeError) and exc.kind == "unsupported":
                self.book.note_unsupported(peer_id, PEX_PROTOCOL)
            log.debug("pex with %s failed: %s", peer_id, exc)
            return 0
        self.metrics.observe("pex_round_trip_seconds", trio.current_time() - started)
        outcome = self.policy.read_response(peer_id, resp, trio.current_time())
        if outcome.retry_at is not None:
            self.metrics.inc("pex_rate_limited_received")
            return 0
        if resp.status != 0:
            self.metrics.inc("pex_wrong_network")
            self.bus.publish(WrongNetwork(peer_id, "?"))
            await self.dialer.disconnect(peer_id)
            return 0
        for reason, n in outcome.rejected.items():
            self.metrics.inc("records_rejected", n, reason=reason.value, via="pex")
        if outcome.rejected:
            self.bus.publish(Misbehaved(peer_id, "bad_records", 1))
        accepted = self.book.accept_records(outcome.records, PeerSource.PEX, peer_id)
        self.policy.note_answer(len(outcome.records), accepted)
        if len(self.connections) < self.config.bootstrap.min_peers_for_startup and outcome.records:
            self.bus.publish(PeersNeeded())
        return accepted

    async def _addr_fetch(self) -> None:
        """One round of address fetch: one-shot connections to a few known peers, ask, leave."""
        book = self.book
        budget = self.policy.addr_fetch_budget(len(book.db), trio.current_time() - self.started_at)
        if budget <= 0:
            return
        exclude = {cp.peer_id for cp in self.connections.peers()}
        picks = book.pick_for_dial(budget, exclude, None, self.dialer.in_backoff)
        if not picks:
            return
        self.metrics.inc("addr_fetch_rounds")
        keep = max(self.config.peerdb.target_outbound, self.config.bootstrap.min_peers_for_startup)

        # A few at a time, stopping at the first answer that brings next to nothing: in a
        # network smaller than the book target all twelve would only repeat it (measured: 370
        # one-shot handshakes at once in a 50-node network a minute after it started).
        limiter = trio.CapacityLimiter(ADDR_FETCH_PARALLEL)

        async def one(pid: ID, addrs: list[Any], source: PeerSource) -> None:
            async with limiter:
                if self.policy.fetch_saturated:
                    return
                if not await self.dialer.dial(pid, addrs, source):
                    return
                self.metrics.inc("addr_fetches")
                size = len(book.db)
                await self.request_peers(pid)
                self.policy.note_fetch(len(book.db) - size)
            if self.connections.outbound_count() > keep:
                await self.dialer.disconnect(pid)

        before = len(book.db)
        async with trio.open_nursery() as nursery:
            for pick in picks:
                nursery.start_soon(one, *pick)
        self.policy.note_fetch_round(len(picks), len(book.db) - before)

    async def handle(self, stream: INetStream) -> None:
        requester = stream.muxed_conn.peer_id
        if self.refuses(stream):
            await exchange.refuse(stream, close_connection=True)
            return
        verdict_box: list[Verdict] = []

        async def answer(data: bytes, s: INetStream) -> bytes:
            req = PexRequest.decode(data)
            observed = exchange.observed_multiaddr(s)
            scope = scope_of(observed) if observed is not None else AddrScope.PUBLIC
            cap = self.server.max_answer_over_relay if exchange.is_relayed_stream(s) else None
            if cap is not None:
                self.metrics.inc("answers_over_relay", protocol="pex")
            resp, verdict = self.policy.handle_request(
                requester, req, trio.current_time(),
                lambda n: self._records_to_share(n if cap is None else min(n, cap), requester, scope),
            )
            verdict_box.append(verdict)
            self.metrics.inc("pex_requests_served", verdict=verdict.value)
            return resp.encode()

        await exchange.serve(stream, self.cfg.request_timeout, answer, self._count_bad_request)
        if verdict_box and verdict_box[0] is Verdict.ABUSIVE:
            log.warning("%s keeps ignoring PEX rate limits: banning and disconnecting", requester)
            self.bus.publish(Misbehaved(requester, "ignored_rate_limit", 3))
            await self.dialer.disconnect(requester)

    def _count_bad_request(self, kind: str, exc: Any) -> None:
        self.metrics.inc("bad_requests", kind=kind)

    def _records_to_share(self, n: int, requester: ID, scope: AddrScope) -> list[bytes]:
        entries = self.book.db.get_peers_for_sharing(
            n, trio.current_time(), requester=requester, requester_scope=scope,
            min_peer_age=self.cfg.min_peer_age,
        )
        return [e.envelope for e in entries if e.envelope]
