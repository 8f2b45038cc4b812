"""The dialer component: every outbound contact goes through here.

It owns the per-peer :class:`~..backoff.DialBackoff`, the hedged parallel dials
(:mod:`.race`), the *address filter* the root injects (the test suite's loopback-only guard is
one; nothing here reads the environment), the transports ``host.connect`` lacks (a
:class:`~..ports.DialTransport` per address kind: the relay component will hand in
``/p2p-circuit``), and the Noise probe that learns who listens at a DNS seed's bare address.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from .. import libp2p_fixes
from ..addrs import AddrScope, scope_of, strip_p2p
from ..backoff import DialBackoff
from ..config import BootstrapConfig
from ..events import ConnectivityRestored, EventBus, LocalAddressesChanged
from ..metrics import Metrics
from ..net.probe import ProbeError, probe_peer_id
from ..peerdb import PeerSource
from ..ports import Connections, DialTarget, DialTransport, PeerBookView
from .congestion import CALM_LAG, DialWindow
from .race import DialRace, HedgePolicy

__all__ = ["Dialer", "AddrFilter", "loopback_only", "UNSIGNED_TTL"]

log = logging.getLogger("prozchain_discovery.dialer")

# Unsigned addresses (DNS, mDNS, configuration) live this long in the host's peerstore (go's
# temp TTL is 2 min; ours covers a cascade's dial).
UNSIGNED_TTL = 600

# Returns why ``addrs`` may not be contacted, or None when they may.
AddrFilter = Callable[[list[multiaddr.Multiaddr]], "str | None"]


def loopback_only(addrs: list[multiaddr.Multiaddr]) -> str | None:
    """An address filter for test suites and benchmarks that must not send traffic off-host."""
    if all(scope_of(a) is AddrScope.LOOPBACK for a in addrs):
        return None
    return "only loopback dials are allowed (PROZCHAIN_DIAL_LOOPBACK_ONLY=1)"


class Dialer:
    def __init__(
        self,
        host: IHost,
        config: BootstrapConfig,
        *,
        connections: Connections,
        book: PeerBookView,
        bus: EventBus,
        metrics: Metrics,
        rng: random.Random,
        addr_filter: AddrFilter | None = None,
        transports: Iterable[DialTransport] = (),
    ) -> None:
        self.host = host
        self.config = config
        self.connections = connections
        self.book = book
        self.metrics = metrics
        self.local_id = host.get_id()
        self.addr_filter = addr_filter
        self.transports = list(transports)
        self.hedge = HedgePolicy()
        # Every dial of this node, whoever asks (cascade, outbound slots, PEX address fetch,
        # static peers, mDNS), takes a slot of one congestion window (dialer/congestion.py).
        self.window = DialWindow(config.max_parallel_dials)
        self._slot_freed = trio.Event()
        # Keys: a peer id's bytes, or "probe <multiaddr>" for a DNS seed's bare address.
        self.backoff = DialBackoff(
            config.backoff, rng, label=lambda k: k if isinstance(k, str) else str(ID(k))  # type: ignore[arg-type]
        )
        bus.subscribe(ConnectivityRestored, self._on_connectivity_restored)
        bus.subscribe(LocalAddressesChanged, self._on_connectivity_restored)

    def now(self) -> float:
        return trio.current_time()

    def _on_connectivity_restored(self, _event: object) -> None:
        n = self.backoff.reset_given_up()
        if n:
            log.info("connectivity is back: %d given-up peers may be dialed again", n)
            self.metrics.inc("backoff_resets", n)

    # ---- the Dialing interface --------------------------------------------------------------
    def keep_trying(self, peer_id: ID) -> None:
        self.backoff.keep_trying(peer_id.to_bytes())

    def in_backoff(self, peer_id: ID) -> bool:
        """Whether the backoff forbids dialing ``peer_id`` now (the book skips wrong networks)."""
        return not self.backoff.allowed(peer_id.to_bytes(), self.now())

    def retry_in(self, peer_id: ID) -> float:
        return self.backoff.wait_time(peer_id.to_bytes(), self.now())

    def may_contact(self, addrs: list[multiaddr.Multiaddr], what: str) -> bool:
        """False (logged, counted) when the injected address filter refuses ``addrs``."""
        reason = self.addr_filter(addrs) if self.addr_filter is not None else None
        if reason is None:
            return True
        self.metrics.inc("dials_refused_loopback_only")
        log.error("refusing to %s at %s: %s", what, [str(a) for a in addrs], reason)
        return False

    def hedge_delay(self) -> float:
        return self.hedge.delay

    async def dial(
        self,
        peer_id: ID,
        addrs: Iterable[multiaddr.Multiaddr],
        source: PeerSource,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Dial with backoff bookkeeping. True if connected (already or now)."""
        if peer_id == self.local_id:
            return False
        key = peer_id.to_bytes()
        now = self.now()
        if self.book.is_wrong_network(peer_id):
            # A refusal counts as a failure: a caller that always wants this peer (static peers,
            # bootstrap nodes) waits for the backoff instead of asking again at once.
            if self.backoff.allowed(key, now):
                self.backoff.record_failure(key, now, "on another network")
            return False
        if peer_id in self.connections:
            return True
        addr_list = [strip_p2p(a) for a in addrs]
        if not self.backoff.allowed(key, now):
            return False
        if not self.may_contact(addr_list, f"dial {peer_id}"):
            self.backoff.record_failure(key, now, "refused by the address filter")
            return False
        self.connections.note_intent(peer_id, source)
        await self._take_slot()
        try:
            if peer_id in self.connections:  # it dialed us while we queued
                return True
            return await self._dial_now(peer_id, addr_list, source, timeout)
        finally:
            self.window.end()
            self._slot_freed.set()
            self._slot_freed = trio.Event()

    async def _loop_lag(self) -> float:
        """How long a task that yields waits to run again: the CPU-congestion signal."""
        t0 = trio.current_time()
        await trio.lowlevel.checkpoint()
        return trio.current_time() - t0

    async def _take_slot(self) -> None:
        while True:
            self.window.on_lag(await self._loop_lag(), self.now())
            if self.window.may_start():
                self.window.start()
                return
            self.metrics.inc("dials_queued")
            await self._slot_freed.wait()

    async def _dial_now(
        self, peer_id: ID, addr_list: list[multiaddr.Multiaddr], source: PeerSource, timeout: float | None
    ) -> bool:
        key = peer_id.to_bytes()
        db = self.book.db
        now = self.now()
        if not self.backoff.allowed(key, now):  # another dial of this peer failed while we queued
            return False
        self.backoff.record_attempt(key, now)
        if peer_id in db:
            db.mark_attempt(peer_id, now)
        self.metrics.inc("dials", source=source.value)
        error = "timeout"
        started = now
        budget = timeout or self.config.dial_timeout
        with trio.move_on_after(budget):
            try:
                await self._connect(peer_id, addr_list, budget)
                error = ""
            except trio.Cancelled:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        now = self.now()
        if error:
            loaded = self.window.congested
            if error == "timeout":
                self.window.on_timeout(now, await self._loop_lag())
                self.metrics.inc("dial_timeouts")
            delay = self.backoff.record_failure(key, now, error, scale=self.window.load)
            # A timeout while the CPU is the bottleneck says nothing about the peer.
            if peer_id in db and not (loaded and error == "timeout"):
                db.mark_failure(peer_id, now)
            self.metrics.inc("dial_failures", source=source.value)
            log.debug("dial %s (%s) failed: %s; retry in %.0f s", peer_id, source.value, error[:120], delay)
            return False
        self.backoff.record_success(key, now)
        self.hedge.on_dial_success(now - started)
        self.metrics.observe("dial_seconds", now - started)
        self.connections.note_dialed(peer_id, source, str(addr_list[0]) if addr_list else "")
        if peer_id not in db and addr_list and source is not PeerSource.STATIC:
            db.add_addrs(peer_id, addr_list, source, now)
        if peer_id in db:
            db.mark_success(peer_id, now)
        return True

    async def _connect(self, peer_id: ID, addrs: list[multiaddr.Multiaddr], budget: float) -> None:
        """Direct addresses first (``host.connect``), then each extra transport's (a relay's
        ``/p2p-circuit``) if the direct ones fail: a peer behind a firewall may list a public
        address nobody can reach beside its circuit address. With a fallback waiting, the direct
        attempt gets half of ``budget``, so a black-holed address does not use it all."""
        direct = list(addrs)
        fallbacks: list[tuple[DialTransport, list[multiaddr.Multiaddr]]] = []
        for transport in self.transports:
            mine = [a for a in direct if transport.handles(a)]
            if mine:
                fallbacks.append((transport, mine))
                direct = [a for a in direct if not transport.handles(a)]
        last: Exception | None = None
        if direct or not fallbacks:
            if direct:
                self.host.get_peerstore().add_addrs(peer_id, direct, UNSIGNED_TTL)
            libp2p_fixes.allow_redial(self.host, peer_id)
            if not fallbacks:
                await self.host.connect(PeerInfo(peer_id, direct))
                return
            try:
                with trio.fail_after(budget / 2):
                    await self.host.connect(PeerInfo(peer_id, direct))
                return
            except Exception as exc:  # refused, unreachable, or trio.TooSlowError
                last = exc
                self.metrics.inc("dial_fallbacks")
                log.debug("direct dial of %s failed (%s): trying its relayed addresses", peer_id, exc)
        for transport, mine in fallbacks:
            try:
                await transport.connect(peer_id, mine)
                return
            except Exception as exc:
                last = exc
        assert last is not None
        raise last

    async def dial_many(self, targets: Iterable[DialTarget], until: int | None = None) -> int:
        """Dial in parallel, stopping once ``until`` peers are connected (see :mod:`.race`).

        ``targets`` may be lazy (records verified just before their dial); it is consumed one
        target at a time. Returns how many dials connected.
        """
        pending = iter(targets)
        nxt = next(pending, None)
        race = DialRace(self.config.max_parallel_dials, until, self.hedge.delay)
        connected = 0
        wake = trio.Event()
        count = self.connections.__len__

        async with trio.open_nursery() as nursery:

            async def one(tok: int, pid: ID, addrs: list[multiaddr.Multiaddr], src: PeerSource) -> None:
                nonlocal connected
                try:
                    if await self.dial(pid, addrs, src):
                        connected += 1
                finally:
                    race.end(tok)
                    wake.set()

            while nxt is not None and not race.reached(count()):
                now = self.now()
                # Under load a late dial is the CPU's fault: a backup would only queue behind it.
                calm = not self.window.congested and self.window.last_lag <= CALM_LAG
                race.hedge_delay = self.hedge.delay if calm else float("inf")
                if race.may_start(now, count()):
                    nursery.start_soon(one, race.start(now, count()), *nxt)
                    nxt = next(pending, None)
                    continue
                wake = trio.Event()
                deadline = race.next_deadline(now)
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await wake.wait()
            while race.in_flight and not race.reached(count()):
                wake = trio.Event()
                await wake.wait()
            if race.reached(count()):
                nursery.cancel_scope.cancel()
        if race.hedges:
            self.metrics.inc("dial_hedges", race.hedges)
        return connected

    async def disconnect(self, peer_id: ID) -> None:
        """Best effort: the host may already be shutting down."""
        with trio.move_on_after(2):
            try:
                await self.host.disconnect(peer_id)
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("disconnect %s: %s", peer_id, exc)

    # ---- bare addresses (DNS seeds' A/AAAA answers) -----------------------------------------
    async def identify_bare(self, addrs: list[multiaddr.Multiaddr]) -> dict[ID, list[multiaddr.Multiaddr]]:
        """Learn who listens at each bare address (a Noise handshake, see net/probe.py)."""
        found: dict[ID, list[multiaddr.Multiaddr]] = {}
        limiter = trio.CapacityLimiter(self.config.max_parallel_dials)
        key_pair = KeyPair(self.host.get_private_key(), self.host.get_public_key())

        async def one(addr: multiaddr.Multiaddr) -> None:
            key = f"probe {addr}"
            if not self.may_contact([addr], "probe") or not self.backoff.allowed(key, self.now()):
                return
            async with limiter:
                self.backoff.record_attempt(key, self.now())
                self.metrics.inc("dns_probes")
                try:
                    pid = await probe_peer_id(key_pair, addr, self.config.dial_timeout)
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

    def status(self) -> dict[str, Any]:
        return {"backoff": self.backoff.snapshot(self.now()), "hedge_delay": round(self.hedge.delay, 4),
                "dial_window": self.window.status()}
