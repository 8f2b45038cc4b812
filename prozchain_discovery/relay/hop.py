"""py-libp2p 0.8.1's circuit relay v2 hop, with its bugs fixed in one place.

:class:`GuardedRelayProtocol` is ``CircuitV2Protocol`` with these workarounds (each has a test
in tests/test_relay.py that shows the upstream behaviour, then ours):

1. **Reservation spoofing.** Upstream reserves in the name of ``msg.peer.id``, which the sender
   chooses; anyone could reserve for someone else and let strangers dial them. We reserve only
   for the authenticated remote peer of the connection and answer ``PERMISSION_DENIED`` when the
   message names another peer (go-libp2p ignores the field; refusing says what went wrong).
2. **Slots never freed.** Upstream takes the slot before it finds the peer unusable (a made-up
   peer id: status 400 and the slot stays for the TTL), and keeps the slots of clients that
   disconnected. A reservation is valid only while its peer is connected (the relay v2 spec),
   so we prune disconnected and expired ones before counting, and on every disconnection
   (:meth:`prune`); a reservation whose answer could not be written is removed again.
3. **No per-IP limit.** go-libp2p refuses a 9th reservation from one IP address
   (``MaxReservationsPerIP``); upstream has the constant and never uses it. We count live
   reservations by the connection's remote IP.
4. **The duration limit is only checked when data passes.** An idle circuit outlived it. Each
   relay direction now runs under a trio deadline; at the deadline both streams are reset.
5. **``stream.is_open()`` does not exist on ``NetStream``:** upstream's reserve error path
   raised ``AttributeError``. Our reserve handler replaces it and never calls it.
6. **One circuit's end kills the next one to the same peer** (found here). Upstream keeps the
   streams of "the" circuit per destination peer in ``_active_relays`` and, when a circuit ends,
   closes whatever that entry holds by then — a newer circuit to the same peer. Under 25 ms of
   delay 11 to 16 of 20 back-to-back circuits to one node failed. Each relay direction now
   closes its own two streams, and the shared table stays empty.

7. **A circuit's end freed a slot of a newer reservation** (found here): its count is given back
   to the reservation it was taken from, not to the one the peer holds by then.

The upstream handlers for CONNECT and STOP, the per-circuit data budget (counted in both
directions, resets both ends) and ``max_circuit_conns`` are kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits, Reservation
from libp2p.relay.circuit_v2.utils import write_delimited_msg

from ..addrs import AddrScope, is_relayed, is_unspecified, scope_of, strip_p2p

__all__ = ["GuardedRelayProtocol", "relay_limits"]

log = logging.getLogger("prozchain_discovery.relay")

WRITE_TIMEOUT = 10.0

# kind -> called for each relay event ("reservations", "refused:<why>", "circuits", "cut:<why>")
EventSink = Callable[[str], None]


def relay_limits(
    *, reservation_ttl: int, max_reservations: int, max_circuits_per_peer: int, duration: int, data: int
) -> RelayLimits:
    return RelayLimits(
        duration=duration, data=data, max_circuit_conns=max_circuits_per_peer,
        max_reservations=max_reservations, reservation_ttl=reservation_ttl,
    )


def remote_ip(stream: INetStream) -> str | None:
    """The IP address the stream's connection comes from (None if not a plain IP transport)."""
    try:
        remote = stream.get_remote_address()
    except Exception:
        return None
    return str(remote[0]) if remote else None


class GuardedRelayProtocol(CircuitV2Protocol):
    """``CircuitV2Protocol`` with the fixes of the module docstring. Handlers only; no service."""

    def __init__(
        self, host: IHost, limits: RelayLimits, *, max_reservations_per_ip: int, on_event: EventSink | None = None
    ) -> None:
        super().__init__(host, limits=limits, allow_hop=True)
        self.max_per_ip = max_reservations_per_ip
        self.on_event: EventSink = on_event or (lambda _kind: None)
        self.ip_of: dict[ID, str | None] = {}  # reserving peer -> its connection's IP
        self.circuits_open = 0
        self._cut: set[int] = set()  # ids of the two streams of a circuit being cut at its deadline
        self._active_relays = _NoSharedCircuits()  # fix 6
        # Fix 7: upstream counts a circuit on the reservation it found at CONNECT and releases it
        # by peer id on whatever reservation is there at the end: one made after the relay turned
        # private and public again (or after an expiry) lost a slot it never gave. Release on the
        # object that was counted, found by the CONNECT handler's task.
        self._counted_on: dict[tuple[object, ID], Reservation | None] = {}
        rm = self.resource_manager
        get_reservation = rm.get_reservation

        def remember(peer_id: ID) -> Reservation | None:
            found = get_reservation(peer_id)
            self._counted_on[(trio.lowlevel.current_task(), peer_id)] = found
            return found

        def release(peer_id: ID) -> None:
            counted = self._counted_on.pop((trio.lowlevel.current_task(), peer_id), None)
            if counted is not None and counted.active_connections > 0:
                counted.active_connections -= 1

        rm.get_reservation = remember  # type: ignore[method-assign]
        rm.release_connection = release  # type: ignore[method-assign]

    # ---- reservations (fixes 1, 2, 3, 5) -----------------------------------------------------
    @property
    def reservations(self) -> dict[ID, Reservation]:
        return self.resource_manager._reservations

    def prune(self) -> int:
        """Drop reservations of peers that are gone or expired (fix 2); returns how many."""
        rm = self.resource_manager
        dead = [p for p, r in self.reservations.items() if r.is_expired() or not rm._is_peer_connected(p)]
        for p in dead:
            del self.reservations[p]
        for p in [p for p in self.ip_of if p not in self.reservations]:
            del self.ip_of[p]
        return len(dead)

    def _per_ip(self, ip: str) -> int:
        return sum(1 for p, i in self.ip_of.items() if i == ip and p in self.reservations)

    async def _refuse(self, stream: INetStream, code: StatusCode, why: str) -> None:
        self.on_event(f"refused:{why}")
        await self._send_status(stream, code, why)

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        remote: ID = stream.muxed_conn.peer_id
        if msg.HasField("peer") and msg.peer.id and bytes(msg.peer.id) != remote.to_bytes():
            log.warning("refusing a reservation from %s in the name of another peer", remote)
            await self._refuse(stream, StatusCode.PERMISSION_DENIED, "spoofed")
            return
        self.prune()
        existing: Reservation | None = self.reservations.get(remote)
        fresh = existing is None or existing.is_expired()
        ip = remote_ip(stream)
        if existing is None or fresh:
            if len(self.reservations) >= self.limits.max_reservations:
                await self._refuse(stream, StatusCode.RESERVATION_REFUSED, "relay_full")
                return
            if ip is not None and self._per_ip(ip) >= self.max_per_ip:
                await self._refuse(stream, StatusCode.RESERVATION_REFUSED, "per_ip")
                return
            reservation = self.resource_manager.create_reservation(remote)
            self.ip_of[remote] = ip
        else:
            # A client back on a new connection from another address before any prune saw it
            # gone renews here: count it at the address it reserves from now (fix 3).
            if ip != self.ip_of.get(remote):
                if ip is not None and self._per_ip(ip) >= self.max_per_ip:
                    await self._refuse(stream, StatusCode.RESERVATION_REFUSED, "per_ip")
                    return
                self.ip_of[remote] = ip
            self.resource_manager.refresh_reservation(remote)
            reservation = existing
        reservation.addrs = [a.to_bytes() for a in self._advertised_addrs()]
        response = HopMessage(
            type=HopMessage.STATUS,
            status=to_proto_status(StatusCode.OK),
            reservation=reservation.to_proto(),
            limit=Limit(duration=self.limits.duration, data=self.limits.data),
        )
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                await write_delimited_msg(stream, response)
        except (Exception, trio.TooSlowError) as exc:
            if fresh:  # the client never learned of it: do not keep the slot (fix 2)
                self.reservations.pop(remote, None)
                self.ip_of.pop(remote, None)
            log.debug("reservation answer to %s not delivered: %s", remote, exc)
            return
        self.on_event("reservations" if fresh else "renewals")

    def _advertised_addrs(self) -> list[multiaddr.Multiaddr]:
        """Our dialable addresses with ``/p2p/<us>`` (public ones if we have any)."""
        me = self.host.get_id()
        addrs = [strip_p2p(a) for a in self.host.get_addrs() if not is_relayed(a) and not is_unspecified(a)]
        public = [a for a in addrs if scope_of(a) in (AddrScope.PUBLIC, AddrScope.DNS)]
        return [multiaddr.Multiaddr(f"{a}/p2p/{me}") for a in (public or addrs)]

    # ---- circuits (fix 4) ---------------------------------------------------------------------
    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        self.circuits_open += 1
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.circuits_open -= 1
            me = trio.lowlevel.current_task()
            for key in [k for k in self._counted_on if k[0] is me]:  # fix 7: lookups of refused ones
                del self._counted_on[key]

    async def _relay_data(
        self,
        src_stream: INetStream,
        dst_stream: INetStream,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        # The upstream deadline is time.monotonic(); trio's clock runs at the same rate.
        at = math.inf if deadline is None else trio.current_time() + (deadline - time.monotonic())
        with trio.move_on_at(at) as scope:
            try:
                await super()._relay_data(src_stream, dst_stream, peer_id, deadline, circuit_data_limit)
            finally:
                self._counted_on.pop((trio.lowlevel.current_task(), peer_id), None)  # fix 7
        if not scope.cancelled_caught:
            # One direction ended, so the circuit did: close this circuit's streams (fix 6), which
            # also ends the other direction's read.
            await self._close_stream(src_stream)
            await self._close_stream(dst_stream)
            return
        # Both directions hit the same deadline: count the circuit once.
        if id(src_stream) in self._cut:
            self._cut.difference_update((id(src_stream), id(dst_stream)))
        else:
            self._cut.update((id(src_stream), id(dst_stream)))
            self.on_event("cut:duration")
        for s in (src_stream, dst_stream):
            with trio.move_on_after(2):
                try:
                    await s.reset()
                except Exception:
                    pass

    async def _send_status(self, stream: Any, code: StatusCode, message: str, limit: Limit | None = None) -> None:
        """Upstream writes a STATUS into the *relayed byte stream* when a circuit hits a limit
        (the endpoints read it as Noise garbage just before the reset): count it, write nothing."""
        if code == StatusCode.RESOURCE_LIMIT_EXCEEDED and message.startswith(("Data transfer", "Circuit duration")):
            self.on_event("cut:data" if message.startswith("Data") else "cut:duration")
            return
        await super()._send_status(stream, code, message, limit)


class _NoSharedCircuits(dict[ID, Any]):
    """Upstream's per-destination circuit table, kept empty (fix 6): nothing is stored, so
    upstream's clean-up never finds, and closes, another circuit's streams."""

    def __setitem__(self, key: ID, value: Any) -> None:
        return None
