"""The peer book component: the peer database, its sqlite store, the verified-record cache.

Everything that enters the book comes through here: records from bootstrap answers and PEX
(:meth:`accept_records`, also fed to the host's peerstore as certified addresses), the signed
record a connected peer delivers by identify (learned after :class:`~.events.PeerConnected`),
and the verdicts other components publish (:class:`~.events.WrongNetwork`,
:class:`~.events.Misbehaved`). Its loop expires old entries, learns records and flushes changes
to disk; a failed flush keeps the changes queued and is retried with backoff (peerdb/store.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from .config import PeerDbSettings
from .events import (
    EventBus,
    Misbehaved,
    PeerConnected,
    PeerDisconnected,
    RecordsLearned,
    WrongNetwork,
)
from .expiring import ExpiringMap
from .metrics import Metrics
from .net.identify import listed_protocols
from .peerdb import AsyncPeerStore, PeerDatabase, PeerSource, PeerStoreUnavailable, open_or_reset
from .peerdb.store import FlushSchedule, StoreWriteError
from .ports import Connections, DialTarget
from .records import RecordBatch, RecordError, VerifiedRecord, VerifiedRecordCache, peerstore_record

__all__ = ["PeerBook", "RECORD_TTL"]

log = logging.getLogger("prozchain_discovery.peerbook")

# How long certified addresses from signed records live in the host's peerstore (go: 1 h).
RECORD_TTL = 3600
LEARN_WINDOW = 5.0  # how long after a connection we wait for identify to bring the record
WRONG_NETWORK_TTL = 24 * 3600.0
UNSUPPORTED_TTL = 3600.0  # a peer that said "na" is not asked again for an hour (or until it
# lists the protocol in identify)


class PeerBook:
    def __init__(
        self,
        host: IHost,
        settings: PeerDbSettings,
        db: PeerDatabase,
        *,
        connections: Connections,
        bus: EventBus,
        metrics: Metrics,
        data_dir: Path | None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.db = db
        self.connections = connections
        self.bus = bus
        self.metrics = metrics
        self.data_dir = data_dir
        self.local_id = host.get_id()
        self.record_cache = VerifiedRecordCache()
        self.store: AsyncPeerStore | None = None
        self.flush = FlushSchedule(settings.flush_interval, trio.current_time())
        self.wrong_network: ExpiringMap[ID, str] = ExpiringMap(WRONG_NETWORK_TTL, 4096)
        # Peers that answered multistream's "na" for one of our protocols (plain libp2p nodes).
        self.unsupported: ExpiringMap[tuple[ID, str], bool] = ExpiringMap(UNSUPPORTED_TTL, 4096)
        self._to_learn: dict[ID, float] = {}  # connected peers whose record we wait for -> since
        self._learn_wake = trio.Event()
        bus.subscribe(PeerConnected, self._on_connected)
        bus.subscribe(PeerDisconnected, lambda ev: self._to_learn.pop(ev.peer_id, None))
        bus.subscribe(WrongNetwork, self._on_wrong_network)
        bus.subscribe(Misbehaved, self._on_misbehaved)

    def now(self) -> float:
        return trio.current_time()

    # ---- events -----------------------------------------------------------------------------
    def _on_connected(self, ev: PeerConnected) -> None:
        if ev.peer_id in self.db:
            self.db.mark_seen(ev.peer_id, self.now())
        if ev.peer_id not in self.wrong_network:
            self._to_learn[ev.peer_id] = self.now()
            self._learn_wake.set()

    def _on_wrong_network(self, ev: WrongNetwork) -> None:
        self.wrong_network.put(ev.peer_id, ev.network_id, self.now())
        self.db.remove(ev.peer_id)

    def _on_misbehaved(self, ev: Misbehaved) -> None:
        if ev.peer_id in self.db:
            self.db.penalize(ev.peer_id, self.now(), ev.severity)

    # ---- the PeerBookView interface -----------------------------------------------------------
    def is_wrong_network(self, peer_id: ID) -> bool:
        return peer_id in self.wrong_network

    def supports(self, peer_id: ID, protocol: str) -> bool | None:
        """Whether ``peer_id`` speaks ``protocol``: from identify's protocol list, or a remembered
        ``na``; None while we do not know (identify has not run yet)."""
        listed = listed_protocols(self.host, peer_id)
        if listed:
            return protocol in listed
        if (peer_id, protocol) in self.unsupported:
            return False
        return None

    def note_unsupported(self, peer_id: ID, protocol: str) -> None:
        self.unsupported.put((peer_id, protocol), True, self.now())
        self.metrics.inc("peers_without_protocol", protocol=protocol)

    def accept_records(self, records: list[VerifiedRecord], source: PeerSource, from_peer: ID) -> int:
        now = self.now()
        peerstore = self.host.get_peerstore()
        source_addr = self.connections.addr_of(from_peer)
        accepted = 0
        for rec in records:
            known = self.db.get(rec.peer_id)
            if known is not None and known.envelope is not None and known.seq >= rec.seq:
                self.db.mark_seen(rec.peer_id, now)  # nothing new: the peerstore has it already
                continue
            try:
                peerstore.consume_peer_record(rec.envelope, RECORD_TTL)
            except Exception as exc:  # libp2p refuses older seqs; that is fine
                log.debug("peerstore refused record of %s: %s", rec.peer_id, exc)
            if self.db.add_record(rec, source, now, source_peer=from_peer, source_addr=source_addr):
                accepted += 1
        self.metrics.inc("records_accepted", accepted, via=source.value)
        if accepted:
            self.bus.publish(RecordsLearned(accepted, source.value))
        return accepted

    def batch_targets(self, batch: RecordBatch, source: PeerSource, from_peer: ID) -> Iterator[DialTarget]:
        """Dial targets from ``batch``, each record verified and stored just before its dial."""
        while (rec := batch.next_good()) is not None:
            self.accept_records([rec], source, from_peer)
            if rec.peer_id not in self.connections and rec.peer_id != self.local_id:
                yield rec.peer_id, list(rec.addrs), source

    def settle_batch(self, batch: RecordBatch, source: PeerSource, from_peer: ID, via: str) -> list[VerifiedRecord]:
        """Verify and store what is left of ``batch``; count its bad records against the sender."""
        records = batch.finish()
        self.accept_records(records, source, from_peer)
        for reason, n in batch.rejected.items():
            self.metrics.inc("records_rejected", n, reason=reason.value, via=via)
        if batch.rejected and from_peer in self.db:
            self.db.penalize(from_peer, self.now(), 1)
        return records

    def pick_for_dial(
        self, n: int, exclude: set[ID], groups: set[str] | None, skip: Callable[[ID], bool]
    ) -> list[DialTarget]:
        """Up to ``n`` dial targets from the book, not in ``exclude``, not ``skip`` (the dialer's
        backoff); with ``groups`` (the groups already used by outbound peers), one per group."""
        now = self.now()

        def in_backoff(peer_id: ID) -> bool:
            return peer_id in self.wrong_network or skip(peer_id)

        picks: list[DialTarget] = []
        for _ in range(max(0, n)):
            entry = self.db.select_for_dial(
                now, exclude=exclude, outbound_groups=groups or (), backoff=in_backoff
            )
            if entry is None:
                break
            exclude.add(entry.peer_id)
            if groups is not None:
                groups.add(entry.group)
            picks.append((entry.peer_id, list(entry.addrs), entry.source))
        return picks

    def outbound_groups(self) -> set[str]:
        groups = set()
        for cp in self.connections.peers():
            if cp.outbound:
                entry = self.db.get(cp.peer_id)
                if entry is not None:
                    groups.add(entry.group)
        return groups

    # ---- identify's records ------------------------------------------------------------------
    def _learn_ready(self) -> None:
        """Store connected peers' own signed records once identify has delivered them.

        This is how a node's record starts to travel: its peers keep it and, once it is older
        than ``min_peer_age``, hand it out by PEX. The peer is its own source, so an inbound
        flood from one network group lands in that group's few buckets.
        """
        peerstore = self.host.get_peerstore()
        now = self.now()
        for peer_id, since in list(self._to_learn.items()):
            cp = self.connections.get(peer_id)
            if cp is None or now - since > LEARN_WINDOW:
                del self._to_learn[peer_id]
                continue
            env = peerstore_record(peerstore, peer_id)
            if env is None:
                continue
            del self._to_learn[peer_id]
            try:
                rec = self.record_cache.verify(env.marshal_envelope(), local_peer_id=self.local_id)
            except RecordError as exc:
                self.metrics.inc("records_rejected", reason=exc.reason.value, via="identify")
                continue
            if rec.peer_id != peer_id:
                continue
            self.db.add_record(rec, cp.source, now, source_peer=peer_id, source_addr=self.connections.addr_of(peer_id))
            if cp.outbound and peer_id in self.db:
                self.db.mark_success(peer_id, now)

    def _learn_newer(self) -> None:
        """Replace stored records of connected peers with newer ones identify-push brought.

        A peer whose addresses change (a relay reservation, a port mapping) pushes its re-signed
        record; without this we would keep sharing the old one until it reconnected.
        """
        peerstore = self.host.get_peerstore()
        now = self.now()
        for cp in self.connections.peers():
            entry = self.db.get(cp.peer_id)
            if entry is None or not entry.signed or cp.peer_id in self._to_learn:
                continue
            env = peerstore_record(peerstore, cp.peer_id)
            if env is None:
                continue
            try:
                seq = env.record().seq
            except Exception:  # a payload py-libp2p cannot decode: verify() below would refuse it too
                continue
            if seq <= entry.seq:
                continue
            try:
                rec = self.record_cache.verify(env.marshal_envelope(), local_peer_id=self.local_id)
            except RecordError as exc:
                self.metrics.inc("records_rejected", reason=exc.reason.value, via="identify")
                continue
            if rec.peer_id == cp.peer_id and self.db.add_record(
                rec, cp.source, now, source_peer=cp.peer_id, source_addr=self.connections.addr_of(cp.peer_id)
            ):
                self.metrics.inc("records_updated", via="identify_push")

    # ---- persistence ---------------------------------------------------------------------------
    def db_path(self) -> str | None:
        path = self.settings.path
        if path == ":memory:":
            return None
        if path:
            return path
        return str(self.data_dir / "peers.sqlite") if self.data_dir else None

    async def open(self) -> None:
        path = self.db_path()
        if path is None:
            return
        try:
            store, warning = await trio.to_thread.run_sync(open_or_reset, path)
        except PeerStoreUnavailable as exc:  # locked, no permission, disk full: the file is kept
            self.metrics.inc("peerdb_unavailable")
            log.error("%s; running without a persistent peer book this time", exc)
            return
        if warning:
            log.warning("%s", warning)
        self.store = AsyncPeerStore(store)
        loaded = await self.store.load(self.db)
        log.info("peer database %s: %d entries loaded", path, loaded)
        if self.store.skipped:
            self.metrics.inc("peerdb_rows_skipped", self.store.skipped)
        if self.store.load_warning:
            log.warning("%s", self.store.load_warning)

    async def close(self) -> None:
        if self.store is None:
            return
        try:
            with trio.move_on_after(5):
                await self.store.save_changes(self.db)
                await self.store.close()
        except StoreWriteError as exc:
            log.error("peer database: last flush failed, recent changes are lost: %s", exc)
        finally:
            self.store = None

    async def _flush(self) -> None:
        now = self.now()
        self._learn_newer()
        dropped = self.db.expire(now)
        if dropped:
            self.metrics.inc("peerdb_expired", dropped)
        self.wrong_network.on_timer(now)
        self.unsupported.on_timer(now)
        for key, value in self.db.stats().items():
            if isinstance(value, int):
                self.metrics.set_gauge("peerbook_entries", value, kind=key)
        if self.store is None:
            self.flush.on_success(now)
            return
        try:
            await self.store.save_changes(self.db)
        except StoreWriteError as exc:
            delay = self.flush.on_failure(self.now(), exc)
            self.metrics.inc("peerdb_flush_failures")
            log.error("peer database flush failed (changes kept, retry in %.0f s): %s", delay, exc)
            return
        self.flush.on_success(self.now())

    async def run(self) -> None:
        while True:
            deadline = self.flush.next_deadline()
            if self._to_learn:
                deadline = min(deadline, self.now() + 0.05)
            with trio.move_on_at(deadline):
                await self._learn_wake.wait()
            self._learn_wake = trio.Event()
            if self._to_learn:
                self._learn_ready()
            if self.now() >= self.flush.next_deadline():
                await self._flush()

    def status(self) -> dict[str, Any]:
        return {
            "peerdb": self.db.stats(),
            "peerdb_flush": self.flush.status(),
            "wrong_network": len(self.wrong_network),
        }

