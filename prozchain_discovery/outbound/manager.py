"""The outbound manager: keeps ``target_outbound`` outbound peers in distinct network groups,
runs feelers, and records the current outbound peers as anchors for the next start."""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from ..config import PeerDbSettings
from ..events import EventBus, PeerDisconnected, PeersNeeded, Wakeup
from ..metrics import Metrics
from ..ports import Connections, Dialing, PeerBookView
from .policy import OutboundPolicy

__all__ = ["OutboundManager"]

log = logging.getLogger("prozchain_discovery.outbound")


class OutboundManager:
    def __init__(
        self,
        settings: PeerDbSettings,
        *,
        connections: Connections,
        dialer: Dialing,
        book: PeerBookView,
        bus: EventBus,
        metrics: Metrics,
        rng: random.Random,
        static_ids: set[Any],
    ) -> None:
        self.connections = connections
        self.dialer = dialer
        self.book = book
        self.metrics = metrics
        self.static_ids = static_ids
        self.policy = OutboundPolicy(settings.target_outbound, settings.feeler_interval, rng, trio.current_time())
        self._wake = Wakeup()
        bus.subscribe(PeersNeeded, lambda _ev: self._wake.set())
        bus.subscribe(PeerDisconnected, lambda _ev: self._wake.set())  # a slot may be free
        self._anchors: list[Any] = []

    async def run(self) -> None:
        while True:
            await self._wake.wait_until(self.policy.next_deadline())
            now = trio.current_time()
            want = self.policy.slots_to_fill(self.connections.outbound_count(), now)
            if want:
                exclude = {cp.peer_id for cp in self.connections.peers()}
                picks = self.book.pick_for_dial(want, exclude, self.book.outbound_groups(), self.dialer.in_backoff)
                if picks:
                    await self.dialer.dial_many(picks)
            if self.policy.feeler_due(trio.current_time()):
                await self._feeler()
            anchors = [cp.peer_id for cp in self.connections.peers() if cp.outbound and cp.peer_id in self.book.db]
            if anchors != self._anchors:
                self._anchors = anchors
                self.book.db.set_anchors(anchors)

    async def _feeler(self) -> None:
        """Bitcoin's feeler: test a NEW entry so the tried table fills with proven peers."""
        db = self.book.db
        entry = db.select_feeler(trio.current_time())
        if entry is None or entry.peer_id in self.connections:
            return
        self.metrics.inc("feelers")
        ok = await self.dialer.dial(entry.peer_id, list(entry.addrs), entry.source)
        db.resolve_collisions(trio.current_time())
        if ok and not self.policy.keep_feeler(self.connections.outbound_count(), entry.peer_id in self.static_ids):
            await self.dialer.disconnect(entry.peer_id)

    def status(self) -> dict[str, Any]:
        return {"outbound_target": self.policy.target}
