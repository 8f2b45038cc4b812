"""The bootstrap cascade component (seed §3.1): book, bootstrap nodes, DNS seeds, mDNS.

Each pass tries the sources in that order and stops as soon as ``min_peers_for_startup`` peers
are connected; :class:`~.schedule.CascadeSchedule` says when the next pass runs. Bootstrap nodes
are asked ``/prozchain/bootstrap/1.0`` (network id check, our observed address, an initial peer
set); DNS seeds are looked up at most once per ``dns_lookup_interval``, a limit that survives
restarts (``state.json`` in the data dir); only a lookup that gave addresses counts, a failed
one is retried with backoff (:class:`~.dns.DnsLookupGate`).

A ``pzseed://<key>@<domain>`` seed (protocols/dns-seed.md) is a signed tree of signed peer
records (:mod:`.signed_seeds`): the DNS stage asks it for ``min_peers_for_startup`` verified
records (a random walk, depth + 1 round trips), dials them, and walks on in the background
into the peer book, up to ``BACKGROUND_LEAVES`` leaves (the whole tree, if smaller). Its root's sequence number and hash are kept in
``state.json`` (a lower one later is a rollback and refused).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from ..addrs import parse_multiaddr, peer_id_of, strip_p2p
from ..config import ConfigError, DiscoveryConfig, is_signed_seed
from ..dnsseed.sync import SyncPhase
from ..dnsseed.url import SeedUrlError, parse_url
from ..events import (
    EventBus,
    ObservedAddress,
    PeersNeeded,
    RecordsLearned,
    Wakeup,
    WrongNetwork,
)
from ..fsutil import atomic_write
from ..metrics import Metrics
from ..net import exchange
from ..peerdb import PeerSource
from ..ports import Connections, Dialing, DialTarget, PeerBookView
from ..records import RecordBatch, VerifiedRecord
from ..wire.messages import BOOTSTRAP_PROTOCOL, BootstrapRequest, BootstrapResponse, DecodeError
from .dns import DnsLookupGate, DnsSeedResolver, ResolverConfig
from .protocol import read_bootstrap_answer
from .schedule import CascadeSchedule
from .signed_seeds import BACKGROUND_LEAVES, DnsTxt, SignedSeed

__all__ = ["Cascade", "peer_of_addr"]

log = logging.getLogger("prozchain_discovery.cascade")


def peer_of_addr(text: str) -> tuple[ID, multiaddr.Multiaddr]:
    ma = parse_multiaddr(text)
    pid = peer_id_of(ma)
    if pid is None:
        raise ValueError(f"{text} has no /p2p/<peer id>")
    return pid, strip_p2p(ma)


class Cascade:
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
        rng: random.Random,
        data_dir: Path | None,
    ) -> None:
        self.host = host
        self.config = config
        self.boot = config.bootstrap
        self.connections = connections
        self.dialer = dialer
        self.book = book
        self.bus = bus
        self.metrics = metrics
        self.rng = rng
        self.data_dir = data_dir
        self.local_id = host.get_id()
        self.phase = "idle"
        # A node short of peers runs a pass every few seconds: each step's line is logged (at
        # INFO) when it says something new, at DEBUG when it repeats the last pass's.
        self._said: dict[str, tuple[int, int, int]] = {}
        self._said_dns_wait = False
        self.dns_gate = DnsLookupGate(self.boot.dns_lookup_interval)
        resolver = ResolverConfig(self.boot.dns.nameservers, self.boot.dns.port, self.boot.dns.timeout)
        self.dns = DnsSeedResolver(resolver, default_port=self.boot.dns_default_port)
        self.plain_seeds = [s for s in self.boot.dns_seeds if not is_signed_seed(s)]
        self.signed_seeds: list[SignedSeed] = []
        txt = DnsTxt(resolver)
        for i, text in enumerate(self.boot.dns_seeds):
            if not is_signed_seed(text):
                continue
            try:
                url = parse_url(text)
            except SeedUrlError as exc:
                raise ConfigError(f"bootstrap.dns_seeds[{i}]", f"{text!r}: {exc}") from None
            self.signed_seeds.append(SignedSeed(url, txt, local_peer_id=self.local_id, rng=rng))
        self._nursery: trio.Nursery | None = None  # run()'s: the background walks of signed seeds
        self.bootstrap_nodes = [peer_of_addr(t) for t in self.boot.bootstrap_nodes]
        for pid, _addr in self.bootstrap_nodes:
            dialer.keep_trying(pid)  # a bootstrap node is never given up
        self.schedule = CascadeSchedule(self.boot.check_interval, trio.current_time())
        self._wake = Wakeup()
        bus.subscribe(PeersNeeded, lambda _ev: self._wake.set())
        bus.subscribe(RecordsLearned, self._on_records)
        self._load_state()

    @property
    def min_peers(self) -> int:
        return self.boot.min_peers_for_startup

    def _on_records(self, ev: RecordsLearned) -> None:
        # New addresses from elsewhere (PEX) while short: look again now. The cascade's own
        # answers do not wake it (it has just used them).
        if ev.via != PeerSource.BOOTSTRAP.value and len(self.connections) < self.min_peers:
            self._wake.set()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._loop()
            finally:
                self._nursery = None

    async def _loop(self) -> None:
        while True:
            if await self._wake.wait_until(self.schedule.next_deadline()):
                self.schedule.kick(trio.current_time())
            if not self.schedule.due(trio.current_time()):
                continue
            if len(self.connections) < self.min_peers:
                await self.run_once()
            self.schedule.on_pass_done(trio.current_time(), len(self.connections) < self.min_peers)

    async def run_once(self) -> None:
        """One pass of the cascade, stopping as soon as ``min_peers_for_startup`` is reached."""
        need = self.min_peers
        steps = [
            ("book", self._phase_book),
            ("bootstrap", self._phase_bootstrap_nodes),
            ("dns", self._phase_dns),
            ("mdns", self._phase_mdns),
        ]
        for name, step in steps:
            if len(self.connections) >= need:
                break
            self.phase = name
            before = len(self.connections)
            await step(need)
            line = (before, len(self.connections), need)
            repeat, self._said[name] = self._said.get(name) == line, line
            log.log(logging.DEBUG if repeat else logging.INFO,
                    "cascade %s: %d -> %d peers (want %d)", name, *line)
        self.phase = "done" if len(self.connections) >= need else "waiting"

    async def _phase_book(self, need: int) -> None:
        """Use the peer database first when it knows enough (Bitcoin skips DNS seeds then)."""
        picks: list[DialTarget] = []
        seen: set[ID] = {cp.peer_id for cp in self.connections.peers()}
        for anchor in self.book.db.anchors():
            if anchor.peer_id not in seen:
                seen.add(anchor.peer_id)
                picks.append((anchor.peer_id, list(anchor.addrs), anchor.source))
        picks += self.book.pick_for_dial(
            2 * need - len(picks), seen, self.book.outbound_groups(), self.dialer.in_backoff
        )
        if picks:
            await self.dialer.dial_many(picks, until=need)

    async def _phase_bootstrap_nodes(self, need: int) -> None:
        nodes = [(p, a) for p, a in self.bootstrap_nodes if not self.book.is_wrong_network(p)]

        async def one(pid: ID, addr: multiaddr.Multiaddr) -> None:
            if not await self.dialer.dial(pid, [addr], PeerSource.BOOTSTRAP):
                return
            batch = await self.bootstrap_request(pid)
            if batch is None:
                return
            # Records are verified as they are dialed: the ~7 a joiner needs cost ~1 ms, not
            # the ~5 ms of checking all 50 first; the rest are checked once the dials are done.
            batch.shuffle(self.rng)
            if len(self.connections) < need:
                await self.dialer.dial_many(self.book.batch_targets(batch, PeerSource.BOOTSTRAP, pid), until=need)
            self.book.settle_batch(batch, PeerSource.BOOTSTRAP, pid, via="bootstrap")

        async with trio.open_nursery() as nursery:
            for pid, addr in nodes:
                nursery.start_soon(one, pid, addr)

    async def bootstrap_handshake(self, peer_id: ID) -> list[VerifiedRecord]:
        """Run ``/prozchain/bootstrap/1.0`` with a connected peer; returns the good records."""
        batch = await self.bootstrap_request(peer_id)
        if batch is None:
            return []
        return self.book.settle_batch(batch, PeerSource.BOOTSTRAP, peer_id, via="bootstrap")

    async def bootstrap_request(self, peer_id: ID) -> RecordBatch | None:
        """The exchange itself: returns the answer's records unverified, or None on failure."""
        if self.book.supports(peer_id, BOOTSTRAP_PROTOCOL) is False:
            self.metrics.inc("requests_skipped_unsupported", protocol="bootstrap")
            return None  # a plain libp2p node: a connection, never a bootstrap source
        want = self.boot.request_max_peers
        req = BootstrapRequest(self.config.network_id, want)
        started = trio.current_time()
        try:
            data, _stream = await exchange.request(
                self.host, peer_id, BOOTSTRAP_PROTOCOL, req.encode(), self.config.server.request_timeout
            )
            resp = BootstrapResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            self.metrics.inc("bootstrap_requests_failed")
            if isinstance(exc, exchange.ExchangeError) and exc.kind == "unsupported":
                self.book.note_unsupported(peer_id, BOOTSTRAP_PROTOCOL)
                log.info("%s does not speak %s: kept as a connection, not asked again", peer_id, BOOTSTRAP_PROTOCOL)
                return None
            log.info("bootstrap handshake with %s failed: %s", peer_id, exc)
            return None
        self.metrics.observe("bootstrap_round_trip_seconds", trio.current_time() - started)
        answer = read_bootstrap_answer(
            resp, local_peer_id=self.local_id, responder=peer_id, cache=self.book.record_cache,
            lazy=True, max_records=want,
        )
        self.metrics.inc("bootstrap_requests_sent")
        if answer.wrong_network:
            self.metrics.inc("wrong_network")
            log.warning(
                "%s is on network %r, we are on %r: disconnecting, will not retry it",
                peer_id, answer.network_id, self.config.network_id,
            )
            self.bus.publish(WrongNetwork(peer_id, answer.network_id))
            await self.dialer.disconnect(peer_id)
            return None
        if answer.observed_addr is not None:
            self.bus.publish(ObservedAddress(answer.observed_addr, peer_id))
        assert answer.batch is not None
        return answer.batch

    async def _phase_dns(self, need: int) -> None:
        if not self.boot.dns_seeds:
            return
        now = trio.current_time()
        if not self.dns_gate.may_lookup(now):
            log.log(logging.DEBUG if self._said_dns_wait else logging.INFO,
                    "dns seeds: next lookup allowed in %.0f s", self.dns_gate.next_allowed(now))
            self._said_dns_wait = True  # once per wait between lookups
            return
        self._said_dns_wait = False
        self.metrics.inc("dns_lookups")
        by_peer: dict[ID, list[multiaddr.Multiaddr]] = {}
        bare: list[multiaddr.Multiaddr] = []  # A/AAAA answers: no peer id yet
        signed: list[DialTarget] = []
        async with trio.open_nursery() as nursery:
            if self.plain_seeds:
                nursery.start_soon(self._plain_lookup, by_peer, bare)
            for seed in self.signed_seeds:
                nursery.start_soon(self._signed_lookup, seed, need, signed)
        if not by_peer and not bare and not signed:
            # Only a lookup that gave addresses starts dns_lookup_interval (and goes to
            # state.json); a failed one is retried with backoff, not hours later.
            delay = self.dns_gate.record_failure(trio.current_time())
            self.metrics.inc("dns_lookup_failures")
            log.warning("dns seeds: no addresses from %d seed(s); next try in %.0f s",
                        len(self.boot.dns_seeds), delay)
            self._save_state()  # a signed seed's new seq, even when its leaves were all refused
            return
        self.dns_gate.record_lookup(now)
        self._save_state()
        if bare:
            for pid, addrs in (await self.dialer.identify_bare(bare)).items():
                known = by_peer.setdefault(pid, [])
                known += [a for a in addrs if a not in known]
        now = trio.current_time()
        targets: list[DialTarget] = []
        for pid, addrs in by_peer.items():
            self.book.db.add_addrs(pid, addrs, PeerSource.DNS, now)
            targets.append((pid, addrs, PeerSource.DNS))
        self.metrics.inc("dns_addrs", sum(len(a) for a in by_peer.values()))
        targets += signed
        self.rng.shuffle(targets)
        await self.dialer.dial_many(targets, until=need)
        if self._nursery is not None:
            for seed in self.signed_seeds:
                if seed.sync.phase is SyncPhase.TREE:
                    self._nursery.start_soon(self._walk_rest, seed)

    async def _plain_lookup(self, by_peer: dict[ID, list[multiaddr.Multiaddr]], bare: list[multiaddr.Multiaddr]) -> None:
        """``/dnsaddr`` and A/AAAA seeds: whatever the resolver says is believed."""
        for res in await self.dns.resolve_all(self.plain_seeds):
            for err in res.errors:
                log.warning("dns seed %s: %s", res.seed, err)
                self.metrics.inc("dns_errors", kind=err.kind)
            if res.errors_dropped:
                log.warning("dns seed %s: %d more errors not shown", res.seed, res.errors_dropped)
                self.metrics.inc("dns_errors", res.errors_dropped, kind="more")
            for ma in res.addrs:
                pid = peer_id_of(ma)
                if pid is None:
                    bare.append(ma)
                    continue
                by_peer.setdefault(pid, []).append(strip_p2p(ma))

    async def _signed_lookup(self, seed: SignedSeed, need: int, out: list[DialTarget]) -> None:
        """A ``pzseed://`` seed: ``need`` verified records (every leaf checked twice: the
        operator's signature through the root and hashes, the peer's own)."""
        started = trio.current_time()
        leaves = await seed.lookup(need)
        self.metrics.observe("dns_seed_lookup_seconds", trio.current_time() - started)
        seed.count(self.metrics, seed.sync.queries)  # a lookup starts a sync: its count from 0
        if not leaves:
            return
        self.book.accept_records(leaves, PeerSource.DNS, seed.source_id)
        out += [(r.peer_id, list(r.addrs), PeerSource.DNS) for r in leaves
                if r.peer_id not in self.connections and r.peer_id != self.local_id]
        log.info("dns seed %s: seq %s, %d verified peers in %d queries (%.2f s)", seed.url.domain,
                 seed.seq, len(leaves), seed.sync.queries, trio.current_time() - started)

    async def _walk_rest(self, seed: SignedSeed) -> None:
        """The rest of a signed seed's tree, a few queries at a time, into the peer book."""
        queries_before = seed.sync.queries

        def learned(leaves: list[VerifiedRecord]) -> None:
            self.book.accept_records(leaves, PeerSource.DNS, seed.source_id)

        try:
            await seed.walk_rest(learned, leaves=BACKGROUND_LEAVES)
        finally:  # also when the next lookup stops it
            seed.count(self.metrics, seed.sync.queries - queries_before)
        if seed.walked:
            log.info("dns seed %s: background walk done, %d verified peers (seq %s)", seed.url.domain,
                     seed.sync.leaves_verified, seed.seq)

    async def _phase_mdns(self, need: int) -> None:
        if not self.boot.enable_local_discovery:
            return
        targets = [
            (e.peer_id, list(e.addrs), PeerSource.MDNS)
            for e in self.book.db.entries()
            if e.source is PeerSource.MDNS and e.peer_id not in self.connections
        ]
        if targets:
            await self.dialer.dial_many(targets, until=need)

    # ---- the DNS gate survives restarts ----------------------------------------------------
    def _state_path(self) -> Path | None:
        return self.data_dir / "state.json" if self.data_dir else None

    def _load_state(self) -> None:
        path = self._state_path()
        if path is None or not path.exists():
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s): DNS seeds may be looked up at once", path, exc)
            return
        if not isinstance(state, dict):
            log.warning("ignoring %s: not a JSON object", path)
            return
        last_wall = state.get("last_dns_lookup_wall")
        if isinstance(last_wall, int | float):
            elapsed = max(0.0, time.time() - last_wall)
            self.dns_gate.last_lookup = trio.current_time() - elapsed
        kept = state.get("signed_seeds")
        for seed in self.signed_seeds:
            entry = kept.get(str(seed.url)) if isinstance(kept, dict) else None
            if isinstance(entry, dict) and not seed.remember(entry):
                log.warning("ignoring the remembered root of %s in %s: damaged", seed.url.domain, path)

    def _save_state(self) -> None:
        path = self._state_path()
        if path is None:
            return
        state: dict[str, Any] = {}
        if self.dns_gate.last_lookup is not None:
            state["last_dns_lookup_wall"] = time.time() - (trio.current_time() - self.dns_gate.last_lookup)
        roots = {str(s.url): kept for s in self.signed_seeds if (kept := s.remembered()) is not None}
        if roots:
            state["signed_seeds"] = roots  # rollback protection survives restarts
        try:
            atomic_write(path, json.dumps(state))
        except OSError as exc:
            self.metrics.inc("state_write_failures")
            log.warning("cannot write %s: %s", path, exc)

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        out: dict[str, Any] = {"phase": self.phase, "dns_next_lookup_in": round(self.dns_gate.next_allowed(now), 1)}
        if self.signed_seeds:
            out["signed_seeds"] = [seed.status() for seed in self.signed_seeds]
        return out

