"""``DiscoveryService`` — mounts discovery on a py-libp2p host.

Usage::

    host = make_host(key, listen_addrs=[...])
    async with host.run(listen_addrs):
        async with DiscoveryService(host, config).run() as svc:
            await svc.wait_for_peers(8)

``run()`` registers the stream handlers (bootstrap, PEX) and a swarm notifee, then runs every
task in one nursery it owns: the static-peer keeper, the bootstrap cascade, the outbound
policy, mDNS, PEX and the peer-database flusher. Leaving the ``async with`` cancels them all,
removes the handlers and the notifee, and flushes the peer database.

The decisions live in sans-IO pieces (:mod:`.bootstrap.protocol`, :mod:`.pex.policy`,
:mod:`.peerdb`, :mod:`.backoff`); this module only moves bytes and time between them and the
host.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from . import exchange, libp2p_fixes
from .addrs import AddrScope, is_shareable_to, parse_multiaddr, peer_id_of, scope_of, strip_p2p
from .backoff import DialBackoff
from .bootstrap.dns import DnsLookupGate, DnsSeedResolver, ResolverConfig
from .bootstrap.protocol import BootstrapResponder, read_bootstrap_answer
from .config import DiscoveryConfig
from .metrics import Metrics
from .peerdb import AsyncPeerStore, PeerDatabase, PeerDbConfig, PeerSource, open_or_reset
from .pex.policy import PeerExchange, Verdict
from .probe import ProbeError, probe_peer_id
from .records import RecordBatch, RecordError, VerifiedRecord, VerifiedRecordCache, sign_record
from .wire.messages import (
    BOOTSTRAP_PROTOCOL,
    PEX_PROTOCOL,
    BootstrapRequest,
    BootstrapResponse,
    DecodeError,
    PexRequest,
    PexResponse,
)

__all__ = ["DiscoveryService", "ConnectedPeer"]

log = logging.getLogger("prozchain_discovery")

# How long certified addresses from signed records live in the host's peerstore (go: 1 h).
RECORD_TTL = 3600
# Unsigned addresses (DNS, mDNS, configuration) live shorter (go's temp TTL is 2 min; ours
# cover a cascade's dial).
UNSIGNED_TTL = 600
# Hedged dials (see _dial_many): a dial still in flight after HEDGE_FACTOR x the recent typical
# dial time (at least HEDGE_MIN_DELAY) earns one backup dial, so a black-holed address costs a
# few typical dials instead of a dial timeout, and the common case dials exactly the deficit.
HEDGE_FACTOR = 3.0
HEDGE_MIN_DELAY = 0.05
# Test suites and benchmarks on a machine that must not send traffic off-host set this:
# every dial to a non-loopback address is then refused (and logged as an error).
LOOPBACK_ONLY_ENV = "PROZCHAIN_DIAL_LOOPBACK_ONLY"


@dataclass
class ConnectedPeer:
    peer_id: ID
    source: PeerSource
    outbound: bool
    since: float
    addr: str


def _peer_of_addr(text: str) -> tuple[ID, multiaddr.Multiaddr]:
    ma = parse_multiaddr(text)
    pid = peer_id_of(ma)
    if pid is None:
        raise ValueError(f"{text} has no /p2p/<peer id>")
    return pid, strip_p2p(ma)


class _Notifee(INotifee):
    def __init__(self, svc: DiscoveryService) -> None:
        self.svc = svc

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.svc._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.svc._on_disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        self.svc._addrs_changed.set()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        self.svc._addrs_changed.set()


class DiscoveryService:
    def __init__(
        self,
        host: IHost,
        config: DiscoveryConfig | None = None,
        *,
        data_dir: str | Path | None = None,
        rng: random.Random | None = None,
        peerdb: PeerDatabase | None = None,
    ) -> None:
        self.host = host
        self.config = (config or DiscoveryConfig()).validate()
        self.data_dir = Path(data_dir) if data_dir else None
        self.rng = rng or random.Random()
        self.local_id = host.get_id()
        self.metrics = Metrics()
        boot = self.config.bootstrap
        # Keys: a peer id's bytes, or "probe <multiaddr>" for a DNS seed's bare address.
        self.backoff = DialBackoff(
            boot.backoff, self.rng, label=lambda k: k if isinstance(k, str) else str(ID(k))  # type: ignore[arg-type]
        )
        self.dns_gate = DnsLookupGate(boot.dns_lookup_interval)
        self.dns = DnsSeedResolver(
            ResolverConfig(boot.dns.nameservers, boot.dns.port, boot.dns.timeout),
            default_port=boot.dns_default_port,
        )
        self.db = peerdb or PeerDatabase(
            PeerDbConfig(min_peer_age=self.config.pex.min_peer_age),
            rng=self.rng,
            local_peer_id=self.local_id,
            debug=self.config.peerdb.debug_checks,
        )
        self.store: AsyncPeerStore | None = None
        max_answer = (
            self.config.server.max_bootstrap_answer_as_bootstrap_node
            if self.config.server.bootstrap_node
            else self.config.server.max_bootstrap_answer
        )
        self.responder = BootstrapResponder(self.config.network_id, max_answer)
        self.record_cache = VerifiedRecordCache()
        self.pex = PeerExchange(self.config.pex, self.config.network_id, self.local_id, self.record_cache)
        self.connected: dict[ID, ConnectedPeer] = {}
        self.observed_addrs: dict[str, set[ID]] = {}  # what peers told us our address is
        self.wrong_network: set[ID] = set()
        self.static_ids: set[ID] = set()
        self.phase = "idle"
        self.joined_at: float | None = None  # when min_peers_for_startup was first reached
        self.started_at = 0.0
        self._learned: dict[ID, PeerSource] = {}  # how we dialed a peer (labels its connection)
        self._nursery: trio.Nursery | None = None
        self._notifee = _Notifee(self)
        self._peers_changed = trio.Event()
        # Wake-ups: each loop waits on its own event, replaced before every wait, so a signal
        # wakes it once (a shared, never-cleared event would make a waiting loop spin).
        self._wake_cascade = trio.Event()
        self._wake_outbound = trio.Event()
        self._addrs_changed = trio.Event()
        self._record_seq = 0
        self._our_record: bytes | None = None
        self._typical_dial = 0.05  # seconds, moving average of successful dials
        # Connected peers' records as bootstrap answers need them: the peerstore's envelope
        # object (to notice a newer one), its bytes, its addresses, and per requester scope
        # whether it may be shared. Parsing and re-encoding ~50 envelopes per answer cost 2.5 ms.
        self._share_memo: dict[ID, tuple[Any, bytes, tuple[multiaddr.Multiaddr, ...], dict[AddrScope, bool]]] = {}

    # ---- public API -----------------------------------------------------------------------
    def now(self) -> float:
        return trio.current_time()

    @property
    def min_peers(self) -> int:
        return self.config.bootstrap.min_peers_for_startup

    def connected_count(self) -> int:
        return len(self.connected)

    async def wait_for_peers(self, n: int) -> None:
        while len(self.connected) < n:
            ev = self._peers_changed
            await ev.wait()

    @asynccontextmanager
    async def run(self) -> AsyncIterator[DiscoveryService]:
        """Mount on the host; leaving the block unmounts (tasks cancelled, handlers removed)."""
        self.started_at = self.now()
        libp2p_fixes.tolerate_handler_removal(self.host)  # hosts not built by make_host too
        await self._open_store()
        self.host.set_stream_handler(BOOTSTRAP_PROTOCOL, self._handle_bootstrap)  # type: ignore[arg-type]
        if self.config.pex.enabled:
            self.host.set_stream_handler(PEX_PROTOCOL, self._handle_pex)  # type: ignore[arg-type]
        network = self.host.get_network()
        network.register_notifee(self._notifee)
        for conn_peer in list(self.host.get_connected_peers()):
            self._track(conn_peer, PeerSource.INBOUND, outbound=False, addr="")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._refresh_own_record()
                nursery.start_soon(self._static_keeper)
                nursery.start_soon(self._cascade_loop)
                nursery.start_soon(self._outbound_loop)
                nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._own_record_loop)
                if self.config.pex.enabled:
                    nursery.start_soon(self._pex_loop)
                if self.config.bootstrap.enable_local_discovery:
                    nursery.start_soon(self._mdns_loop)
                if self.config.status_interval > 0:
                    nursery.start_soon(self._status_loop)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.host.remove_stream_handler(BOOTSTRAP_PROTOCOL)  # type: ignore[arg-type]
            if self.config.pex.enabled:
                self.host.remove_stream_handler(PEX_PROTOCOL)  # type: ignore[arg-type]
            _unregister_notifee(network, self._notifee)
            with trio.CancelScope(shield=True):
                await self._close_store()

    # ---- connection tracking --------------------------------------------------------------
    def _track(self, peer_id: ID, source: PeerSource, outbound: bool, addr: str) -> None:
        if peer_id in self.connected:
            return
        self.connected[peer_id] = ConnectedPeer(peer_id, source, outbound, self.now(), addr)
        self._signal_peers_changed()

    def _on_connected(self, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        outbound = _is_outbound(conn)
        source = self._learned.get(peer_id, PeerSource.INBOUND if not outbound else PeerSource.PEX)
        if peer_id in self.static_ids:
            source = PeerSource.STATIC
        addr = ""
        try:
            addrs = conn.get_transport_addresses()
            addr = str(addrs[0]) if addrs else ""
        except Exception:
            pass
        self._track(peer_id, source, outbound, addr)
        now = self.now()
        if peer_id in self.db:
            self.db.mark_seen(peer_id, now)
        if self._nursery is not None and peer_id not in self.wrong_network:
            self._nursery.start_soon(self._learn_record, peer_id, source, addr)
        if self.joined_at is None and len(self.connected) >= self.min_peers:
            self.joined_at = now
            log.info(
                "joined: %d peers after %.3f s", len(self.connected), now - self.started_at
            )

    async def _learn_record(self, peer_id: ID, source: PeerSource, addr: str) -> None:
        """Store a connected peer's own signed record (identify delivers it) in the book.

        This is how a node's record starts to travel: its peers keep it and, once it is older
        than ``min_peer_age``, hand it out by PEX. The peer is its own source, so an inbound
        flood from one network group lands in that group's few buckets.
        """
        peerstore = self.host.get_peerstore()
        env = None
        with trio.move_on_after(5):
            while env is None:
                try:
                    env = peerstore.get_peer_record(peer_id)
                except Exception:
                    env = None
                if env is None:
                    await trio.sleep(0.05)
        if env is None or peer_id not in self.connected:
            return
        try:
            rec = self.record_cache.verify(env.marshal_envelope(), local_peer_id=self.local_id)
        except RecordError as exc:
            self.metrics.inc("records_rejected", reason=exc.reason.value, via="identify")
            return
        if rec.peer_id != peer_id:
            return
        src_addr = None
        if addr:
            try:
                src_addr = parse_multiaddr(addr)
            except Exception:
                src_addr = None
        now = self.now()
        self.db.add_record(rec, source, now, source_peer=peer_id, source_addr=src_addr)
        cp = self.connected.get(peer_id)
        if cp is not None and cp.outbound and peer_id in self.db:
            self.db.mark_success(peer_id, now)

    def _on_disconnected(self, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if peer_id in self.connected and not self.host.get_network().get_connections(peer_id):
            del self.connected[peer_id]
            self._learned.pop(peer_id, None)  # how we reached it; the book keeps the source
            self._share_memo.pop(peer_id, None)
            self._signal_peers_changed()
            if len(self.connected) < self.min_peers:
                self._kick()

    def _kick(self) -> None:
        """Below the minimum (a peer left, or new addresses arrived): wake the dialers."""
        self._wake_cascade.set()
        self._wake_outbound.set()

    def _signal_peers_changed(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    # ---- dialing --------------------------------------------------------------------------
    async def dial(
        self,
        peer_id: ID,
        addrs: Iterable[multiaddr.Multiaddr],
        source: PeerSource,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Dial with backoff bookkeeping. True if connected (already or now)."""
        if peer_id == self.local_id or peer_id in self.wrong_network:
            return False
        if peer_id in self.connected:
            return True
        addr_list = [strip_p2p(a) for a in addrs]
        key = peer_id.to_bytes()
        now = self.now()
        if not self.backoff.allowed(key, now):
            return False
        if self._refuse_off_host(addr_list, f"dial {peer_id}"):
            return False
        self._learned.setdefault(peer_id, source)
        if addr_list:
            self.host.get_peerstore().add_addrs(peer_id, addr_list, UNSIGNED_TTL)
        self.backoff.record_attempt(key, now)
        if peer_id in self.db:
            self.db.mark_attempt(peer_id, now)
        self.metrics.inc("dials", source=source.value)
        error = "timeout"
        started = self.now()
        with trio.move_on_after(timeout or self.config.bootstrap.dial_timeout):
            try:
                await self.host.connect(PeerInfo(peer_id, addr_list))
                error = ""
            except trio.Cancelled:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        now = self.now()
        if error:
            delay = self.backoff.record_failure(key, now, error)
            if peer_id in self.db:
                self.db.mark_failure(peer_id, now)
            self.metrics.inc("dial_failures", source=source.value)
            log.debug("dial %s (%s) failed: %s; retry in %.0f s", peer_id, source.value, error[:120], delay)
            return False
        self.backoff.record_success(key, now)
        self._typical_dial += 0.2 * (now - started - self._typical_dial)
        self._learned[peer_id] = source
        if peer_id in self.connected:
            cp = self.connected[peer_id]
            cp.outbound = True
            if cp.source in (PeerSource.INBOUND, PeerSource.PEX):
                cp.source = source
        else:
            self._track(peer_id, source, True, str(addr_list[0]) if addr_list else "")
        if peer_id not in self.db and addr_list and source is not PeerSource.STATIC:
            self.db.add_addrs(peer_id, addr_list, source, now)
        if peer_id in self.db:
            self.db.mark_success(peer_id, now)
        return True

    def _refuse_off_host(self, addrs: list[multiaddr.Multiaddr], what: str) -> bool:
        """True (and logged) when the loopback-only guard forbids contacting ``addrs``."""
        if os.environ.get(LOOPBACK_ONLY_ENV) != "1" or all(scope_of(a) is AddrScope.LOOPBACK for a in addrs):
            return False
        self.metrics.inc("dials_refused_loopback_only")
        log.error("refusing to %s at %s: %s is set", what, addrs, LOOPBACK_ONLY_ENV)
        return True

    async def _dial_many(
        self,
        targets: Iterable[tuple[ID, list[multiaddr.Multiaddr], PeerSource]],
        until: int | None = None,
    ) -> int:
        """Dial in parallel, stopping once ``until`` peers are connected.

        With ``until`` set, as many dials are in flight as peers are missing, plus one backup
        for each dial that has been in flight longer than :meth:`hedge_delay` (a hedged
        request): a black-holed address does not hold the others up, and the cascade stops at
        the minimum instead of connecting to every candidate at once. A backup dial that the
        hedge would start for nothing costs a whole handshake of CPU, so it waits until a dial
        is actually late. ``targets`` may be lazy (:meth:`_batch_targets`); it is consumed one
        target at a time.
        """
        pending = iter(targets)
        nxt = next(pending, None)
        started: dict[int, float] = {}  # dials in flight -> when each began
        token = 0
        connected = 0
        wake = trio.Event()
        limit = self.config.bootstrap.max_parallel_dials

        def reached() -> bool:
            return until is not None and len(self.connected) >= until

        async with trio.open_nursery() as nursery:

            async def one(tok: int, pid: ID, addrs: list[multiaddr.Multiaddr], src: PeerSource) -> None:
                nonlocal connected
                try:
                    if await self.dial(pid, addrs, src):
                        connected += 1
                finally:
                    del started[tok]
                    wake.set()

            while nxt is not None and not reached():
                now = self.now()
                delay = self.hedge_delay()
                if until is None:
                    cap = limit
                else:
                    late = sum(1 for t in started.values() if now - t >= delay)
                    cap = min(limit, until - len(self.connected) + late)
                if len(started) < cap:
                    if until is not None and len(started) >= until - len(self.connected):
                        self.metrics.inc("dial_hedges")  # a backup beside a late dial
                    token += 1
                    started[token] = now
                    nursery.start_soon(one, token, *nxt)
                    nxt = next(pending, None)
                    continue
                wake = trio.Event()
                # Wake when a dial ends, or when the next one in flight becomes late.
                due = [t + delay for t in started.values() if now - t < delay] if until is not None else []
                with trio.move_on_after(max(0.0, min(due) - now) if due else float("inf")):
                    await wake.wait()
            while started and not reached():
                wake = trio.Event()
                await wake.wait()
            if reached():
                nursery.cancel_scope.cancel()
        return connected

    def hedge_delay(self) -> float:
        """How long a dial may take before a backup dial starts beside it."""
        return max(HEDGE_MIN_DELAY, HEDGE_FACTOR * self._typical_dial)

    async def _disconnect(self, peer_id: ID) -> None:
        """Best effort: the host may already be shutting down."""
        with trio.move_on_after(2):
            try:
                await self.host.disconnect(peer_id)
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("disconnect %s: %s", peer_id, exc)

    # ---- static peers ---------------------------------------------------------------------
    async def _static_keeper(self) -> None:
        targets = []
        for text in self.config.bootstrap.static_peers:
            pid, addr = _peer_of_addr(text)
            self.static_ids.add(pid)
            targets.append((pid, [addr]))
        if not targets:
            return
        protect = getattr(self.host.get_network(), "tag_peer", None)
        while True:
            missing = [(p, a, PeerSource.STATIC) for p, a in targets if p not in self.connected]
            if missing:
                await self._dial_many(missing)
                for pid, _ in targets:
                    if pid in self.connected and protect is not None:
                        try:
                            protect(pid, "prozchain-static", 1000)
                        except Exception:
                            protect = None
            waits = [self.backoff.wait_time(p.to_bytes(), self.now()) for p, _a, _s in missing]
            finite = [w for w in waits if w != float("inf")]
            with trio.move_on_after(max(0.2, min(finite)) if finite else 5.0):
                await self._peers_changed.wait()

    # ---- the bootstrap cascade (seed §3.1) --------------------------------------------------
    async def _cascade_loop(self) -> None:
        check = self.config.bootstrap.check_interval
        retry = 0.5  # below the minimum after a pass: look again soon, then less often
        while True:
            if len(self.connected) < self.min_peers:
                await self.run_cascade()
            short = len(self.connected) < self.min_peers
            wait = min(check, retry) if short else check
            retry = min(check, retry * 2) if short else 0.5
            self._wake_cascade = trio.Event()
            with trio.move_on_after(wait):
                await self._wake_cascade.wait()

    async def run_cascade(self) -> None:
        """One pass of the cascade, stopping as soon as ``min_peers_for_startup`` is reached."""
        need = self.min_peers
        steps = [
            ("book", self._phase_book),
            ("bootstrap", self._phase_bootstrap_nodes),
            ("dns", self._phase_dns),
            ("mdns", self._phase_mdns),
        ]
        for name, step in steps:
            if len(self.connected) >= need:
                break
            self.phase = name
            before = len(self.connected)
            await step(need)
            log.info(
                "cascade %s: %d -> %d peers (want %d)", name, before, len(self.connected), need
            )
        self.phase = "done" if len(self.connected) >= need else "waiting"

    async def _phase_book(self, need: int) -> None:
        """Use the peer database first when it knows enough (Bitcoin skips DNS seeds then)."""
        picks: list[tuple[ID, list[multiaddr.Multiaddr], PeerSource]] = []
        seen: set[ID] = set(self.connected)
        for anchor in self.db.anchors():
            if anchor.peer_id not in seen:
                seen.add(anchor.peer_id)
                picks.append((anchor.peer_id, list(anchor.addrs), anchor.source))
        picks += self._pick_for_dial(2 * need - len(picks), seen, self._outbound_groups())
        if picks:
            await self._dial_many(picks, until=need)

    async def _phase_bootstrap_nodes(self, need: int) -> None:
        nodes = [_peer_of_addr(t) for t in self.config.bootstrap.bootstrap_nodes]
        nodes = [(p, a) for p, a in nodes if p not in self.wrong_network]
        if not nodes:
            return

        async def one(pid: ID, addr: multiaddr.Multiaddr) -> None:
            if not await self.dial(pid, [addr], PeerSource.BOOTSTRAP):
                return
            batch = await self._bootstrap_request(pid)
            if batch is None:
                return
            # Records are verified as they are dialed: the ~7 a joiner needs cost ~1 ms, not
            # the ~5 ms of checking all 50 first; the rest are checked once the dials are done.
            batch.shuffle(self.rng)
            if len(self.connected) < need:
                await self._dial_many(self._batch_targets(batch, PeerSource.BOOTSTRAP, pid), until=need)
            self._settle_batch(batch, PeerSource.BOOTSTRAP, pid, via="bootstrap")

        async with trio.open_nursery() as nursery:
            for pid, addr in nodes:
                nursery.start_soon(one, pid, addr)

    def _batch_targets(
        self, batch: RecordBatch, source: PeerSource, from_peer: ID
    ) -> Iterator[tuple[ID, list[multiaddr.Multiaddr], PeerSource]]:
        """Dial targets from ``batch``, each record verified and stored just before its dial."""
        while (rec := batch.next_good()) is not None:
            self._accept_records([rec], source, from_peer)
            if rec.peer_id not in self.connected and rec.peer_id != self.local_id:
                yield rec.peer_id, list(rec.addrs), source

    def _settle_batch(
        self, batch: RecordBatch, source: PeerSource, from_peer: ID, via: str
    ) -> list[VerifiedRecord]:
        """Verify and store what is left of ``batch``; count its bad records against the sender."""
        records = batch.finish()
        self._accept_records(records, source, from_peer)
        for reason, n in batch.rejected.items():
            self.metrics.inc("records_rejected", n, reason=reason.value, via=via)
        if batch.rejected and from_peer in self.db:
            self.db.penalize(from_peer, self.now(), 1)
        return records

    async def bootstrap_handshake(self, peer_id: ID) -> list[VerifiedRecord]:
        """Run ``/prozchain/bootstrap/1.0`` with a connected peer; returns the good records."""
        batch = await self._bootstrap_request(peer_id)
        if batch is None:
            return []
        return self._settle_batch(batch, PeerSource.BOOTSTRAP, peer_id, via="bootstrap")

    async def _bootstrap_request(self, peer_id: ID) -> RecordBatch | None:
        """The exchange itself: returns the answer's records unverified, or None on failure."""
        req = BootstrapRequest(self.config.network_id, self.config.bootstrap.request_max_peers)
        try:
            data, _stream = await exchange.request(
                self.host, peer_id, BOOTSTRAP_PROTOCOL, req.encode(),
                self.config.server.request_timeout,
            )
            resp = BootstrapResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            self.metrics.inc("bootstrap_requests_failed")
            log.info("bootstrap handshake with %s failed: %s", peer_id, exc)
            return None
        answer = read_bootstrap_answer(
            resp, local_peer_id=self.local_id, responder=peer_id, cache=self.record_cache, lazy=True
        )
        self.metrics.inc("bootstrap_requests_sent")
        if answer.wrong_network:
            self.metrics.inc("wrong_network")
            self.wrong_network.add(peer_id)
            log.warning(
                "%s is on network %r, we are on %r: disconnecting, will not retry it",
                peer_id, answer.network_id, self.config.network_id,
            )
            self.db.remove(peer_id)
            await self._disconnect(peer_id)
            return None
        if answer.observed_addr is not None:
            self._note_observed(answer.observed_addr, peer_id)
        assert answer.batch is not None
        return answer.batch

    def _accept_records(self, records: list[VerifiedRecord], source: PeerSource, from_peer: ID) -> int:
        now = self.now()
        peerstore = self.host.get_peerstore()
        source_addr = self._addr_of(from_peer)
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
        return accepted

    def _addr_of(self, peer_id: ID) -> multiaddr.Multiaddr | None:
        cp = self.connected.get(peer_id)
        if cp and cp.addr:
            try:
                return parse_multiaddr(cp.addr)
            except Exception:
                return None
        return None

    async def _phase_dns(self, need: int) -> None:
        seeds = self.config.bootstrap.dns_seeds
        if not seeds:
            return
        now = self.now()
        if not self.dns_gate.may_lookup(now):
            log.info("dns seeds: next lookup allowed in %.0f s", self.dns_gate.next_allowed(now))
            return
        self.dns_gate.record_lookup(now)
        self.metrics.inc("dns_lookups")
        self._save_state()
        results = await self.dns.resolve_all(list(seeds))
        targets: list[tuple[ID, list[multiaddr.Multiaddr], PeerSource]] = []
        by_peer: dict[ID, list[multiaddr.Multiaddr]] = {}
        bare: list[multiaddr.Multiaddr] = []  # A/AAAA answers: no peer id yet
        for res in results:
            for err in res.errors:
                log.warning("dns seed %s: %s", res.seed, err)
                self.metrics.inc("dns_errors", kind=err.kind)
            for ma in res.addrs:
                pid = peer_id_of(ma)
                if pid is None:
                    bare.append(ma)
                    continue
                by_peer.setdefault(pid, []).append(strip_p2p(ma))
        if bare:
            for pid, addrs in (await self._probe_bare(bare)).items():
                known = by_peer.setdefault(pid, [])
                known += [a for a in addrs if a not in known]
        for pid, addrs in by_peer.items():
            self.db.add_addrs(pid, addrs, PeerSource.DNS, now)
            targets.append((pid, addrs, PeerSource.DNS))
        self.metrics.inc("dns_addrs", sum(len(a) for a in by_peer.values()))
        self.rng.shuffle(targets)
        await self._dial_many(targets, until=need)

    async def _probe_bare(self, addrs: list[multiaddr.Multiaddr]) -> dict[ID, list[multiaddr.Multiaddr]]:
        """Learn who listens at each bare address (a Noise handshake, see :mod:`.probe`)."""
        found: dict[ID, list[multiaddr.Multiaddr]] = {}
        limiter = trio.CapacityLimiter(self.config.bootstrap.max_parallel_dials)
        key_pair = KeyPair(self.host.get_private_key(), self.host.get_public_key())

        async def one(addr: multiaddr.Multiaddr) -> None:
            key = f"probe {addr}"
            if self._refuse_off_host([addr], "probe"):
                return
            if not self.backoff.allowed(key, self.now()):
                return
            async with limiter:
                self.backoff.record_attempt(key, self.now())
                self.metrics.inc("dns_probes")
                try:
                    pid = await probe_peer_id(key_pair, addr, self.config.bootstrap.dial_timeout)
                except ProbeError as exc:
                    self.backoff.record_failure(key, self.now(), str(exc))
                    self.metrics.inc("dns_probe_failures", kind=exc.kind)
                    log.info("dns seed address %s: no libp2p peer answered (%s)", addr, exc)
                    return
            self.backoff.record_success(key, self.now())
            if pid != self.local_id:
                log.info("dns seed address %s is peer %s (learned by handshake)", addr, pid)
                found.setdefault(pid, []).append(addr)

        async with trio.open_nursery() as nursery:
            for addr in addrs:
                nursery.start_soon(one, addr)
        return found

    async def _phase_mdns(self, need: int) -> None:
        if not self.config.bootstrap.enable_local_discovery:
            return
        targets = [
            (e.peer_id, list(e.addrs), PeerSource.MDNS)
            for e in self.db.entries()
            if e.source is PeerSource.MDNS and e.peer_id not in self.connected
        ]
        if targets:
            await self._dial_many(targets, until=need)

    async def _mdns_loop(self) -> None:
        from .bootstrap.mdns import MdnsDiscovery, MdnsPeer

        send, recv = trio.open_memory_channel[MdnsPeer](64)
        mdns = MdnsDiscovery(self.local_id, self.host.get_addrs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mdns.run, send)
            async with recv:
                async for peer in recv:
                    addrs = [strip_p2p(a) for a in peer.addrs]
                    self.db.add_addrs(peer.peer_id, addrs, PeerSource.MDNS, self.now())
                    self.metrics.inc("mdns_found")
                    if len(self.connected) < self.min_peers and peer.peer_id not in self.connected:
                        nursery.start_soon(self.dial, peer.peer_id, addrs, PeerSource.MDNS)

    # ---- outbound policy (issue #3) -------------------------------------------------------
    def _in_backoff(self, peer_id: ID) -> bool:
        return not self.backoff.allowed(peer_id.to_bytes(), self.now()) or peer_id in self.wrong_network

    def _pick_for_dial(
        self, n: int, exclude: set[ID], groups: set[str] | None
    ) -> list[tuple[ID, list[multiaddr.Multiaddr], PeerSource]]:
        """Up to ``n`` dial targets from the book, not in ``exclude``, not in backoff; with
        ``groups`` (the network groups already used by outbound peers), one per group."""
        now = self.now()
        picks: list[tuple[ID, list[multiaddr.Multiaddr], PeerSource]] = []
        for _ in range(max(0, n)):
            entry = self.db.select_for_dial(
                now, exclude=exclude, outbound_groups=groups or (), backoff=self._in_backoff
            )
            if entry is None:
                break
            exclude.add(entry.peer_id)
            if groups is not None:
                groups.add(entry.group)
            picks.append((entry.peer_id, list(entry.addrs), entry.source))
        return picks

    def _outbound_groups(self) -> set[str]:
        groups = set()
        for cp in self.connected.values():
            if cp.outbound and cp.peer_id in self.db:
                entry = self.db.get(cp.peer_id)
                if entry is not None:
                    groups.add(entry.group)
        return groups

    def outbound_count(self) -> int:
        return sum(1 for cp in self.connected.values() if cp.outbound)

    async def _outbound_loop(self) -> None:
        target = self.config.peerdb.target_outbound
        feeler_every = self.config.peerdb.feeler_interval
        next_feeler = self.now() + feeler_every
        while True:
            self._wake_outbound = trio.Event()
            with trio.move_on_after(1.0):
                await self._wake_outbound.wait()
            now = self.now()
            if target and self.outbound_count() < target:
                picks = self._pick_for_dial(
                    target - self.outbound_count(), set(self.connected), self._outbound_groups()
                )
                if picks:
                    await self._dial_many(picks)
            if now >= next_feeler:
                next_feeler = now + feeler_every * (0.5 + self.rng.random())
                await self._feeler(now)
            self.db.set_anchors(
                [cp.peer_id for cp in self.connected.values() if cp.outbound and cp.peer_id in self.db]
            )

    async def _feeler(self, now: float) -> None:
        """Bitcoin's feeler: test a NEW entry so the tried table fills with proven peers."""
        entry = self.db.select_feeler(now)
        if entry is None or entry.peer_id in self.connected:
            return
        self.metrics.inc("feelers")
        ok = await self.dial(entry.peer_id, list(entry.addrs), entry.source)
        self.db.resolve_collisions(self.now())
        # A feeler is a test, not a slot: let it go unless we are short of outbound peers.
        target = self.config.peerdb.target_outbound
        if ok and entry.peer_id not in self.static_ids and self.outbound_count() > target:
            await self._disconnect(entry.peer_id)

    # ---- peer exchange (issue #4) ---------------------------------------------------------
    async def _addr_fetch(self) -> None:
        """One round of address fetch: one-shot connections to a few known peers, ask, leave."""
        now = self.now()
        budget = self.pex.addr_fetch_budget(len(self.db), now - self.started_at)
        if budget <= 0:
            return
        picks = self._pick_for_dial(budget, set(self.connected), None)
        if not picks:
            return
        self.metrics.inc("addr_fetch_rounds")

        async def one(pid: ID, addrs: list[multiaddr.Multiaddr], source: PeerSource) -> None:
            if not await self.dial(pid, addrs, source):
                return
            self.metrics.inc("addr_fetches")
            await self.request_peers(pid)
            if self.outbound_count() > max(self.config.peerdb.target_outbound, self.min_peers):
                await self._disconnect(pid)

        before = len(self.db)
        async with trio.open_nursery() as nursery:
            for pick in picks:
                nursery.start_soon(one, *pick)
        self.pex.note_fetch_round(len(picks), len(self.db) - before)

    async def _pex_loop(self) -> None:
        cfg = self.config.pex
        next_fetch = self.now() + cfg.first_request_delay
        while True:
            now = self.now()
            if now >= next_fetch and self.connected:
                next_fetch = now + cfg.exchange_interval
                assert self._nursery is not None
                self._nursery.start_soon(self._addr_fetch)
            due = []
            for cp in list(self.connected.values()):
                if not cp.outbound or cp.peer_id in self.wrong_network:
                    continue
                if now - cp.since < cfg.first_request_delay:
                    continue
                if self.pex.should_request_peers_from(cp.peer_id, now):
                    due.append(cp.peer_id)
            if due:
                async with trio.open_nursery() as nursery:
                    for pid in due:
                        nursery.start_soon(self.request_peers, pid)
            self.pex.forget_old(now)
            with trio.move_on_after(max(0.2, min(cfg.first_request_delay, 1.0))):
                await self._peers_changed.wait()

    async def request_peers(self, peer_id: ID) -> int:
        """One PEX exchange with ``peer_id``; returns how many records were accepted."""
        now = self.now()
        req = self.pex.make_request(peer_id, now)
        self.metrics.inc("pex_requests_sent")
        try:
            data, _stream = await exchange.request(
                self.host, peer_id, PEX_PROTOCOL, req.encode(), self.config.pex.request_timeout
            )
            resp = PexResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            self.metrics.inc("pex_requests_failed")
            log.debug("pex with %s failed: %s", peer_id, exc)
            return 0
        outcome = self.pex.read_response(peer_id, resp, self.now())
        if outcome.retry_at is not None:
            self.metrics.inc("pex_rate_limited_received")
            return 0
        if resp.status != 0:
            self.metrics.inc("pex_wrong_network")
            self.wrong_network.add(peer_id)
            await self._disconnect(peer_id)
            return 0
        for reason, n in outcome.rejected.items():
            self.metrics.inc("records_rejected", n, reason=reason.value, via="pex")
        if outcome.rejected and peer_id in self.db:
            self.db.penalize(peer_id, self.now(), 1)
        accepted = self._accept_records(outcome.records, PeerSource.PEX, peer_id)
        if len(self.connected) < self.min_peers and outcome.records:
            self._kick()
        return accepted

    async def _handle_pex(self, stream: INetStream) -> None:
        requester = stream.muxed_conn.peer_id
        verdict_box: list[Verdict] = []

        async def answer(data: bytes, s: INetStream) -> bytes:
            req = PexRequest.decode(data)
            scope = self._scope_of_peer(s)
            resp, verdict = self.pex.handle_request(
                requester, req, self.now(),
                lambda n: self._records_to_share(n, requester, scope),
            )
            verdict_box.append(verdict)
            self.metrics.inc("pex_requests_served", verdict=verdict.value)
            return resp.encode()

        await exchange.serve(stream, self.config.pex.request_timeout, answer, self._count_bad_request)
        if verdict_box and verdict_box[0] is Verdict.ABUSIVE:
            log.warning("%s keeps ignoring PEX rate limits: disconnecting", requester)
            if requester in self.db:
                self.db.penalize(requester, self.now(), 3)
            await self._disconnect(requester)

    def _records_to_share(self, n: int, requester: ID, scope: AddrScope) -> list[bytes]:
        entries = self.db.get_peers_for_sharing(
            n, self.now(), requester=requester, requester_scope=scope,
            min_peer_age=self.config.pex.min_peer_age,
        )
        return [e.envelope for e in entries if e.envelope]

    # ---- serving bootstrap ----------------------------------------------------------------
    def _scope_of_peer(self, stream: INetStream) -> AddrScope:
        observed = exchange.observed_multiaddr(stream)
        return scope_of(observed) if observed is not None else AddrScope.PUBLIC

    def _bootstrap_candidates(self, caller: ID, scope: AddrScope) -> Iterable[tuple[ID, bytes]]:
        """Verified peers: connected ones first (their own signed records), then tried entries."""
        peerstore = self.host.get_peerstore()
        ids = [p for p in self.connected if p != caller]
        self.rng.shuffle(ids)
        seen = set()
        for pid in ids:
            env = None
            try:
                env = peerstore.get_peer_record(pid)
            except Exception:
                env = None
            if env is None:
                continue
            memo = self._share_memo.get(pid)
            if memo is None or memo[0] is not env:
                try:
                    addrs = tuple(strip_p2p(a) for a in env.record().addrs)
                    memo = (env, env.marshal_envelope(), addrs, {})
                except Exception:
                    continue
                self._share_memo[pid] = memo
            shareable = memo[3].get(scope)
            if shareable is None:
                shareable = memo[3][scope] = any(is_shareable_to(a, scope) for a in memo[2])
            if not shareable:
                continue
            seen.add(pid)
            yield pid, memo[1]
        for entry in self.db.get_peers_for_sharing(
            200, self.now(), requester=caller, requester_scope=scope, min_peer_age=0.0
        ):
            if entry.peer_id not in seen and entry.envelope and entry.in_tried:
                yield entry.peer_id, entry.envelope

    async def _handle_bootstrap(self, stream: INetStream) -> None:
        caller = stream.muxed_conn.peer_id

        async def answer(data: bytes, s: INetStream) -> bytes:
            req = BootstrapRequest.decode(data)
            observed = exchange.observed_multiaddr(s)
            scope = scope_of(observed) if observed is not None else AddrScope.PUBLIC
            resp = self.responder.respond(
                req, caller, observed, self._bootstrap_candidates(caller, scope)
            )
            self.metrics.inc("bootstrap_requests_served", status=str(resp.status))
            if resp.status == 1:
                log.info("%s asked to bootstrap into network %r: refused", caller, req.network_id)
            return resp.encode()

        await exchange.serve(stream, self.config.server.request_timeout, answer, self._count_bad_request)

    def _count_bad_request(self, kind: str, exc: Any) -> None:
        self.metrics.inc("bad_requests", kind=kind)

    # ---- our own record and addresses -----------------------------------------------------
    def _note_observed(self, addr: multiaddr.Multiaddr, reporter: ID) -> None:
        key = str(addr)
        reporters = self.observed_addrs.setdefault(key, set())
        if reporter not in reporters:
            reporters.add(reporter)
            self.metrics.inc("observed_addr_reports")

    def _refresh_own_record(self) -> None:
        """Re-sign our record (seq increases) when our advertised addresses change."""
        addrs = [strip_p2p(a) for a in self.host.get_addrs()]
        public = [a for a in addrs if scope_of(a) in (AddrScope.PUBLIC, AddrScope.DNS)]
        # A record with a private address is never handed to public requesters (signed records
        # cannot be trimmed), so a node that has public addresses signs only those.
        addrs = public or addrs
        self._our_record = sign_record(self.local_id, addrs, self.host.get_private_key())
        from libp2p.peer.envelope import unmarshal_envelope

        try:
            self.host.get_peerstore().set_local_record(unmarshal_envelope(self._our_record))
        except Exception as exc:
            log.debug("could not set local record: %s", exc)
        self.metrics.inc("own_record_signed")

    async def _own_record_loop(self) -> None:
        last = sorted(str(a) for a in self.host.get_addrs())
        while True:
            self._addrs_changed = trio.Event()
            with trio.move_on_after(5.0):
                await self._addrs_changed.wait()
            current = sorted(str(a) for a in self.host.get_addrs())
            if current != last:
                last = current
                log.info("our addresses changed: %s", ", ".join(current))
                self._refresh_own_record()

    # ---- persistence ----------------------------------------------------------------------
    def _db_path(self) -> str | None:
        path = self.config.peerdb.path
        if path == ":memory:":
            return None
        if path:
            return path
        if self.data_dir is None:
            return None
        return str(self.data_dir / "peers.sqlite")

    async def _open_store(self) -> None:
        path = self._db_path()
        self._load_state()
        if path is None:
            return
        store, warning = await trio.to_thread.run_sync(open_or_reset, path)
        if warning:
            log.warning("%s", warning)
        self.store = AsyncPeerStore(store)
        loaded = await self.store.load(self.db)
        log.info("peer database %s: %d entries loaded", path, loaded)

    async def _close_store(self) -> None:
        if self.store is None:
            return
        try:
            with trio.move_on_after(5):
                await self.store.save_changes(self.db)
                await self.store.close()
        finally:
            self.store = None
        self._save_state()

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(self.config.peerdb.flush_interval)
            dropped = self.db.expire(self.now())
            if dropped:
                self.metrics.inc("peerdb_expired", dropped)
            if self.store is not None:
                await self.store.save_changes(self.db)
            self._write_status()

    def _state_path(self) -> Path | None:
        return self.data_dir / "state.json" if self.data_dir else None

    def _load_state(self) -> None:
        path = self._state_path()
        if path is None or not path.exists():
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        # The DNS gate survives restarts: wall-clock time of the last lookup.
        last_wall = state.get("last_dns_lookup_wall")
        if isinstance(last_wall, int | float):
            elapsed = max(0.0, time.time() - last_wall)
            self.dns_gate.last_lookup = self.now() - elapsed

    def _save_state(self) -> None:
        path = self._state_path()
        if path is None:
            return
        state: dict[str, Any] = {}
        if self.dns_gate.last_lookup is not None:
            state["last_dns_lookup_wall"] = time.time() - (self.now() - self.dns_gate.last_lookup)
        _atomic_write(path, json.dumps(state))

    # ---- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self.now()
        by_source: dict[str, int] = {}
        for cp in self.connected.values():
            by_source[cp.source.value] = by_source.get(cp.source.value, 0) + 1
        return {
            "peer_id": str(self.local_id),
            "network_id": self.config.network_id,
            "addrs": [str(a) for a in self.host.get_addrs()],
            "phase": "done" if self.phase == "waiting" and len(self.connected) >= self.min_peers else self.phase,
            "uptime": round(now - self.started_at, 3),
            "joined_after": None if self.joined_at is None else round(self.joined_at - self.started_at, 3),
            "connected": len(self.connected),
            "outbound": self.outbound_count(),
            "min_peers": self.min_peers,
            "by_source": by_source,
            "peers": [
                {
                    "peer_id": str(cp.peer_id),
                    "source": cp.source.value,
                    "direction": "out" if cp.outbound else "in",
                    "addr": cp.addr,
                    "for": round(now - cp.since, 1),
                }
                for cp in self.connected.values()
            ],
            "backoff": self.backoff.snapshot(now),
            "observed_addrs": {k: len(v) for k, v in self.observed_addrs.items()},
            "peerdb": self.db.stats(),
            "dns_next_lookup_in": round(self.dns_gate.next_allowed(now), 1),
            "metrics": self.metrics.as_dict(),
        }

    def _write_status(self) -> None:
        if self.data_dir is None:
            return
        try:
            _atomic_write(self.data_dir / "status.json", json.dumps(self.status(), indent=1))
        except OSError as exc:
            log.debug("cannot write status: %s", exc)

    async def _status_loop(self) -> None:
        while True:
            await trio.sleep(self.config.status_interval)
            st = self.status()
            log.info(
                "status: %d peers (%d out) %s phase=%s book=%s",
                st["connected"], st["outbound"], st["by_source"], st["phase"],
                st["peerdb"].get("total", "?"),
            )
            self._write_status()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unregister_notifee(network: Any, notifee: INotifee) -> None:
    """``Swarm.remove_notifee`` is not part of py-libp2p's INetwork interface; use it if there."""
    remove = getattr(network, "remove_notifee", None)
    if remove is not None:
        remove(notifee)


def _is_outbound(conn: INetConn) -> bool:
    direction = getattr(conn, "direction", None)
    if direction is not None and getattr(direction, "name", "") in ("OUTBOUND", "INBOUND"):
        return bool(direction.name == "OUTBOUND")
    return bool(getattr(conn.muxed_conn, "is_initiator", False))
