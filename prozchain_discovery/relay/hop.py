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
8. **A hop stream read again after its circuit** (found here, issue #16): upstream's hop handler
   loops ``while True: read a HopMessage``; after a CONNECT the stream *is* the circuit, so when
   the circuit ends it parses the peer's relayed bytes (Noise frames) as a HopMessage ("Error
   parsing message with type 'circuit.pb.v2.HopMessage'"), or meets the EOF/reset of every
   circuit and reservation stream ("Error reading from hop stream", ERROR), and writes a STATUS
   MALFORMED_MESSAGE into the relayed byte stream. As go-libp2p does, a hop stream now carries
   one request: RESERVE is answered and the stream closed; after CONNECT it is never read again.
9. **The data limit is circuit-wide** (issue #16): upstream (its "C3") counts both directions
   against one ``data`` budget, so a fresh circuit had half of go-libp2p's: go-libp2p's
   ``relayLimited`` gives *each direction* ``Limit.Data`` bytes (``io.LimitReader`` per copy),
   and its clients size what they send over a limited connection by that. Each direction now
   has its own budget; the part of a read that fits is still forwarded before the cut.
10. **Circuit teardown logged as errors** (issue #16): a circuit's end (EOF, reset by either
    peer after a hole punch, a peer going away) was "Unexpected error reading from stream"
    three times with 0.2 + 0.4 s of sleeps, then "Error relaying data", all ERROR. Our relay
    loop reads once, ends the direction on EOF or reset, and reports how each circuit ended as
    an event (DEBUG log, ``relay_circuits_ended`` metric).
11. **A failed circuit handshake on the STOP side** (issue #16): the stop handler answered OK,
    then on a failed Noise/multistream upgrade logged ERROR and wrote a STOP STATUS into the
    relayed byte stream (whose peer speaks multistream by then). It now resets that stream only
    — the connection to the relay carrying it stays — and counts it (``relay_stop_failures``).

The upstream handler for CONNECT and ``max_circuit_conns`` are kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import MessageTooLarge
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, StopMessage
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits, Reservation
from libp2p.relay.circuit_v2.utils import (
    maybe_consume_signed_record,
    read_delimited_msg,
    write_delimited_msg,
)

from ..addrs import AddrScope, is_relayed, is_unspecified, scope_of, strip_p2p
from ..net.sockets import is_relayed_conn

__all__ = ["GuardedRelayProtocol", "relay_limits"]

log = logging.getLogger("prozchain_discovery.relay")

WRITE_TIMEOUT = 10.0
READ_TIMEOUT = 15.0  # for the one request of a hop or stop stream (upstream: 15 s)
RELAY_READ = 64 * 1024  # bytes per read when relaying

# kind -> called for each relay event ("reservations", "refused:<why>", "circuits", "cut:<why>",
# "ended:<how>" for a circuit's normal end, "hop_failed:<why>", "stop_failed:<why>")

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
        self._ends: dict[int, _Circuit] = {}  # id(hop stream) of an open circuit -> its directions
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

    # ---- one request per hop stream (fix 8) ------------------------------------------------
    async def _handle_hop_stream(self, stream: INetStream) -> None:
        remote: ID = stream.muxed_conn.peer_id
        if is_relayed_conn(stream.muxed_conn):  # the spec: no hop over a relayed connection
            await self._refuse(stream, StatusCode.PERMISSION_DENIED, "over_relay")
            await _reset(stream)
            return
        try:
            with trio.fail_after(READ_TIMEOUT):
                msg = await read_delimited_msg(stream, HopMessage)
        except (Exception, trio.TooSlowError) as exc:
            why = _read_failure(exc)
            self._failed("hop_failed", why, remote, exc)
            if why == "malformed":
                await self._send_status(stream, StatusCode.MALFORMED_MESSAGE, "malformed")
            await _reset(stream)
            return
        if msg.HasField("senderRecord") and not maybe_consume_signed_record(msg, self.host, remote):
            self._failed("hop_failed", "bad_record", remote, None)
            await self._send_status(stream, StatusCode.MALFORMED_MESSAGE, "bad sender record")
            await _reset(stream)
            return
        if msg.type == HopMessage.RESERVE:
            await self._handle_reserve(stream, msg)
            await self._close_stream(stream)
        elif msg.type == HopMessage.CONNECT:
            # From here the stream is the circuit: the relay loop owns it and never parses it.
            await self._handle_connect(stream, msg)
        else:
            self._failed("hop_failed", "unexpected", remote, None)
            await self._send_status(stream, StatusCode.UNEXPECTED_MESSAGE, "unexpected message")
            await _reset(stream)

    def _failed(self, kind: str, why: str, remote: ID, exc: BaseException | None) -> None:
        """A peer's request that went nowhere: a peer that went away, gave up or misspoke.
        Counted (relay_hop_failures / relay_stop_failures), logged at DEBUG (issue #16)."""
        self.on_event(f"{kind}:{why}")
        log.debug("%s from %s: %s (%s)", kind.replace("_", " "), remote, why, exc or "")

    # ---- the STOP side: a circuit to us (fix 11) ----------------------------------------------
    async def _handle_stop_stream(self, stream: INetStream) -> None:
        relay: ID = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(READ_TIMEOUT):
                msg = await read_delimited_msg(stream, StopMessage)
        except (Exception, trio.TooSlowError) as exc:
            self._failed("stop_failed", _read_failure(exc), relay, exc)
            await _reset(stream)
            return
        if msg.type != StopMessage.CONNECT:
            self._failed("stop_failed", "unexpected", relay, None)
            await self._write_stop_status(stream, StatusCode.UNEXPECTED_MESSAGE)
            await _reset(stream)
            return
        if not await self._write_stop_status(stream, StatusCode.OK):
            self._failed("stop_failed", "closed", relay, None)
            await _reset(stream)
            return
        try:
            await self.handle_incoming_connection(stream, msg.peer.id)
        except Exception as exc:
            # The dialer gave up (it lost a race, its punch won, it went away) or is not a peer we
            # can talk to: this circuit is over. Only its stream goes; the connection to the
            # relay carries other circuits and our reservation.
            self._failed("stop_failed", "handshake", relay, exc)
            await _reset(stream)

    async def _write_stop_status(self, stream: INetStream, code: StatusCode) -> bool:
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                await write_delimited_msg(stream, StopMessage(type=StopMessage.STATUS, status=to_proto_status(code)))
            return True
        except (Exception, trio.TooSlowError) as exc:
            log.debug("stop status %s not delivered: %s", code.name, exc)
            return False

    # ---- circuits (fixes 4, 9, 10) ------------------------------------------------------------
    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        self.circuits_open += 1
        circuit = _Circuit()
        self._ends[id(stream)] = circuit
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.circuits_open -= 1
            del self._ends[id(stream)]
            me = trio.lowlevel.current_task()
            for key in [k for k in self._counted_on if k[0] is me]:  # fix 7: lookups of refused ones
                del self._counted_on[key]
            if circuit.ends:  # how the circuit ended: its first direction to end says
                first = circuit.ends[0]
                self.on_event(first if first.startswith("cut:") else f"ended:{first}")

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
        # Fix 9: this direction's own budget, whatever upstream shares between the two.
        budget = self.limits.data if circuit_data_limit is not None else 0
        circuit = self._ends.get(id(src_stream)) or self._ends.get(id(dst_stream)) or _Circuit()
        scope = trio.CancelScope(deadline=at)
        circuit.scopes.append(scope)
        how = "cut:duration"
        with scope:
            try:
                how = await self._pump(src_stream, dst_stream, budget)
            finally:
                self._counted_on.pop((trio.lowlevel.current_task(), peer_id), None)  # fix 7
        if scope.cancelled_caught and trio.current_time() < at:
            return  # the other direction ended the circuit and has dealt with its streams
        circuit.ends.append(how)
        if how == "eof":
            # One direction ended, so the circuit did: close this circuit's streams (fix 6).
            await self._close_stream(src_stream)
            await self._close_stream(dst_stream)
        else:
            log.debug("circuit %s -> %s: %s", src_stream.muxed_conn.peer_id, peer_id, how)
            for s in (src_stream, dst_stream):
                await _reset(s)
        # A stream closed or reset here does not wake a read pending on it (py-libp2p's Yamux
        # only sets flags): end the other direction too.
        for other in circuit.scopes:
            if other is not scope:
                other.cancel()

    async def _pump(self, src: INetStream, dst: INetStream, budget: int) -> str:
        """Copy ``src`` to ``dst``; how it ended: "eof", "reset" (either side, or a failed
        write), or "cut:data" once ``budget`` bytes (0: no limit) have passed."""
        left = budget
        while True:
            try:
                data = await src.read(RELAY_READ)
            except Exception:
                return "reset"
            if not data:
                return "eof"
            cut = budget > 0 and len(data) > left
            if cut:
                data = data[:left]  # what fits goes through, as go-libp2p's LimitReader lets it
            left -= len(data)
            if data:
                try:
                    with trio.fail_after(WRITE_TIMEOUT):
                        await dst.write(data)
                except (Exception, trio.TooSlowError):
                    return "reset"
            if cut:
                return "cut:data"

    async def _send_status(self, stream: Any, code: StatusCode, message: str, limit: Limit | None = None) -> None:
        """A HOP STATUS, written once and never raising (upstream logged a failed write, e.g.
        to a peer that went away, at ERROR). Upstream also writes a STATUS into the *relayed
        byte stream* when a circuit hits a limit (the endpoints read it as Noise garbage just
        before the reset): our relay loop never calls it so, and such a call writes nothing."""
        if code == StatusCode.RESOURCE_LIMIT_EXCEEDED and message.startswith(("Data transfer", "Circuit duration")):
            return
        status = HopMessage(type=HopMessage.STATUS, status=to_proto_status(code))
        if limit is not None:
            status.limit.CopyFrom(limit)
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                await write_delimited_msg(stream, status)
        except (Exception, trio.TooSlowError) as exc:
            log.debug("hop status %s (%s) not delivered: %s", code.name, message, exc)


class _Circuit:
    """One circuit's two relay directions: their cancel scopes and how each ended."""

    __slots__ = ("ends", "scopes")

    def __init__(self) -> None:
        self.ends: list[str] = []
        self.scopes: list[trio.CancelScope] = []


def _read_failure(exc: BaseException) -> str:
    """Why reading a hop or stop request failed: "timeout", "malformed" or "closed"."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, (DecodeError, ParseError, MessageTooLarge)):
        return "malformed"
    return "closed"  # EOF or reset: the peer went away or gave up


async def _reset(stream: INetStream) -> None:
    with trio.move_on_after(2):
        try:
            await stream.reset()
        except Exception:
            pass


class _NoSharedCircuits(dict[ID, Any]):
    """Upstream's per-destination circuit table, kept empty (fix 6): nothing is stored, so
    upstream's clean-up never finds, and closes, another circuit's streams."""

    def __setitem__(self, key: ID, value: Any) -> None:
        return None
