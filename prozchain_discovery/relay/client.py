"""The autorelay component: reservations on relays while we are not publicly reachable.

It watches connected peers' identify answers for ``/libp2p/circuit/relay/0.2.0/hop`` (py-libp2p's
``RelayDiscovery`` checks once at start and caches a "no" taken before identify finished, so we
do not use it), feeds them and the NAT verdict (:class:`~..events.NatStatusChanged`) to the
policy core (:mod:`.policy`), carries out its RESERVE actions (:func:`.transport.reserve`), and
publishes our ``/p2p-circuit`` addresses as :class:`~..events.RelayAddressesChanged`; the
local-addresses component advertises them and re-signs our record. Becoming public (a port
mapping appears) publishes an empty set: the circuit addresses leave our record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from ..addrs import is_relayed, network_group
from ..config import RelaySettings
from ..events import (
    EventBus,
    NatStatusChanged,
    PeerConnected,
    PeerDisconnected,
    RelayAddressesChanged,
    Wakeup,
)
from ..metrics import Metrics
from ..nat.status import Reachability
from ..net.identify import listed_protocols
from ..ports import Connections
from .policy import AutoRelayPolicy, Release, Reserve
from .transport import HOP_PROTOCOL, ReservationError, circuit_addr, reserve

__all__ = ["AutoRelay"]

log = logging.getLogger("prozchain_discovery.relay")

IDENTIFY_WINDOW = 10.0  # how long after a connection we look for its protocol list
IDENTIFY_POLL = 0.1
RESCAN_INTERVAL = 15.0  # connected peers are looked at again (a peer may start serving hop later)
RESERVE_TIMEOUT = 15.0


class AutoRelay:
    def __init__(
        self, host: IHost, settings: RelaySettings, *, connections: Connections, bus: EventBus, metrics: Metrics
    ) -> None:
        self.host = host
        self.settings = settings
        self.connections = connections
        self.bus = bus
        self.metrics = metrics
        # A node that always serves hop is a relay; it does not need one.
        self.policy: AutoRelayPolicy[ID] = AutoRelayPolicy(
            target=settings.reservations, enabled=settings.autorelay and settings.serve != "on"
        )
        self.published: tuple[multiaddr.Multiaddr, ...] = ()
        self._identify_wait: dict[ID, float] = {}
        self._unidentified: set[ID] = set()  # no protocol list within IDENTIFY_WINDOW: no more polling
        self._next_rescan = 0.0
        self._wake = Wakeup()
        bus.subscribe(PeerConnected, self._on_connected)
        bus.subscribe(PeerDisconnected, self._on_disconnected)
        bus.subscribe(NatStatusChanged, self._on_nat)

    # ---- events -----------------------------------------------------------------------------
    def _on_connected(self, ev: PeerConnected) -> None:
        if ev.addr is not None and is_relayed(ev.addr):
            return  # a relay reached through a relay is no relay for us
        if not self.policy.wanted():
            return  # a public node looks at nobody (the rescan catches up if that changes)
        self._identify_wait[ev.peer_id] = trio.current_time()
        self._wake.set()

    def _on_disconnected(self, ev: PeerDisconnected) -> None:
        self._identify_wait.pop(ev.peer_id, None)
        self._unidentified.discard(ev.peer_id)
        self._log_releases(self.policy.remove_candidate(ev.peer_id, trio.current_time()))
        self._publish()
        self._wake.set()

    def _on_nat(self, ev: NatStatusChanged) -> None:
        public = ev.status.reachability is Reachability.PUBLIC
        if public != self.policy.public:
            log.info("reachability %s: %s", ev.status.reachability.value,
                     "releasing relay reservations" if public else "keeping relay reservations")
        self._log_releases(self.policy.set_public(public))
        if self.policy.wanted():
            self._next_rescan = 0.0  # look at every connected peer now
        else:
            self._identify_wait.clear()
        self._publish()
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------
    def _look_at_identified(self, now: float) -> None:
        """Connected peers whose identify lists hop become candidates. A new connection is polled
        for its protocol list (every IDENTIFY_POLL, for IDENTIFY_WINDOW); after that, and for
        every other connected peer, one look per rescan: a peer whose identify never came would
        otherwise be polled ten times a second, two thirds of the time, for as long as it stays."""
        if now >= self._next_rescan:
            self._next_rescan = now + RESCAN_INTERVAL
            for relay in list(self.policy.candidates):
                # A relay that stopped serving (it turned private) pushes identify without hop:
                # drop it now, not at the renewal up to an hour later, with a dead circuit
                # address advertised all that time.
                protocols = listed_protocols(self.host, relay)
                if protocols and HOP_PROTOCOL not in protocols:
                    log.info("relay %s no longer serves hop", relay)
                    self._log_releases(self.policy.remove_candidate(relay, now, "no_hop"))
            for cp in self.connections.peers():
                if cp.peer_id in self.policy.candidates or "p2p-circuit" in cp.addr:
                    continue
                if cp.peer_id in self._unidentified:
                    self._consider(cp.peer_id, listed_protocols(self.host, cp.peer_id))
                else:
                    self._identify_wait.setdefault(cp.peer_id, now)
        for pid, since in list(self._identify_wait.items()):
            protocols = listed_protocols(self.host, pid)
            if not protocols:
                if now - since > IDENTIFY_WINDOW:
                    del self._identify_wait[pid]
                    self._unidentified.add(pid)
                continue
            del self._identify_wait[pid]
            self._consider(pid, protocols)

    def _consider(self, pid: ID, protocols: list[str]) -> None:
        if not protocols:
            return
        self._unidentified.discard(pid)
        addr = self.connections.addr_of(pid)
        if HOP_PROTOCOL in protocols and addr is not None and not is_relayed(addr):
            if pid not in self.policy.candidates:
                log.debug("relay candidate %s (%s)", pid, addr)
            self.policy.add_candidate(pid, network_group(addr))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                if self.policy.wanted():
                    self._look_at_identified(now)
                for action in self.policy.actions(now):
                    if isinstance(action, Reserve):
                        nursery.start_soon(self._reserve, action.relay, action.renewal)
                    else:
                        self._log_releases([action])
                self._publish()
                deadline = self.policy.next_deadline()
                if self.policy.wanted():
                    soon = now + (IDENTIFY_POLL if self._identify_wait else RESCAN_INTERVAL)
                    deadline = soon if deadline is None else min(deadline, soon)
                await self._wake.wait_until(deadline)

    async def _reserve(self, relay: ID, renewal: bool) -> None:
        try:
            reply = await reserve(self.host, relay, RESERVE_TIMEOUT)
        except ReservationError as exc:
            self.metrics.inc("autorelay_reservation_failures", status=str(exc.status))
            log.info("%s", exc)
            self._log_releases(self.policy.failed(relay, trio.current_time()))
        else:
            now = trio.current_time()
            expires_at = now + max(0.0, reply.expire - time.time())
            addrs = [circuit_addr(a, relay) for a in reply.addrs]
            if not addrs and (conn_addr := self.connections.addr_of(relay)) is not None:
                addrs = [circuit_addr(conn_addr, relay)]
            self.policy.reserved(relay, expires_at, tuple(str(a) for a in addrs), now)
            self.metrics.inc("autorelay_reservations", kind="renewal" if renewal else "new")
            log.info("reservation on relay %s for %.0f s%s", relay, expires_at - now, " (renewed)" if renewal else "")
        self._publish()
        self._wake.set()

    def _log_releases(self, releases: list[Release[ID]]) -> None:
        for r in releases:
            self.metrics.inc("autorelay_releases", reason=r.reason)
            log.info("no longer using relay %s (%s)", r.relay, r.reason)

    def _publish(self) -> None:
        addrs = tuple(multiaddr.Multiaddr(a) for a in self.policy.circuit_addrs())
        self.metrics.set_gauge("autorelay_reservations_held", len(self.policy.held))
        if addrs != self.published:
            self.published = addrs
            self.bus.publish(RelayAddressesChanged(addrs))

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        p = self.policy
        return {"autorelay": {
            "enabled": p.enabled,
            "wanted": p.wanted(),
            "public": p.public,
            "candidates": len(p.candidates),
            "pending": [str(k) for k in p.pending],
            "relays": [{"peer_id": str(k), "expires_in": round(h.expires_at - now, 1), "addrs": list(h.addrs)}
                       for k, h in p.held.items()],
            "circuit_addrs": [str(a) for a in self.published],
        }}
