"""``HolepunchService``: DCUtR (``/libp2p/dcutr``) over relayed connections, TCP simultaneous open.

Why our own DCUtR and not py-libp2p 0.8.1's ``DCUtRProtocol`` wrapped: its fixes would have to
reach inside it everywhere — it punches from both sides (overlapping sessions collide), first
waits up to ``dial_timeout`` (10 s) on a plain dial, runs its dials through the swarm's retrying
``dial_addr``, re-runs rounds on its own clock, keeps the relay leg 60 s, and has no notion of a
symmetric NAT. What we keep from py-libp2p is the part that works: the TCP transport's
``dial_with_source`` (an outbound socket bound to the listen port with SO_REUSEPORT, so the NAT
maps the punch to the port we advertised) and the swarm's ``upgrade_*_raw_conn``.

The flow (schedule.py has the rules and the reasons):

* A relayed connection opens (``PeerConnected`` whose address has ``/p2p-circuit``). If we
  accepted it we drive: per attempt, a fresh stream, CONNECT (our predicted addresses: each WAN
  IP we were observed at, with our TCP listen port, and our NAT class), the peer's CONNECT back
  (RTT), then SYNC, ``RTT/2`` later a dial from our listen port to each of its addresses. The
  peer dials us the moment SYNC arrives. The SYNs cross; the kernel makes one connection of the
  two dials. Roles on it follow the spec: the driver upgrades it as the security *responder*,
  the other side as the initiator.
* The first direct connection wins; the other dials are cancelled, and the relayed connection is
  closed after ``relay_close_grace`` (streams already on it may finish; new ones go direct).
* A symmetric NAT on either side: no punch, the pair stays relayed and :meth:`result` says
  :class:`HolepunchNotSupported` (both sides know it after one CONNECT exchange); against a
  directly dialable peer, the symmetric side dials it instead (connection reversal).
* Round trips are expensive here (RTT/2 is the spec's; the rest is not): multistream-select is
  pipelined with CONNECT on the relayed stream, and with Noise's first message on the punched
  connection (:class:`~..multistream.LazySelect`), as go-libp2p's lazy select does; py-libp2p waits for every
  echo. Each saves a round trip (bench/RESULTS.md).
* QUIC is punched beside TCP (quic.py): CONNECT carries ``/udp/<listen port>/quic-v1`` at each
  WAN IP too; the answering side dials QUIC as the client from its listen socket
  (quic_reuse.py), the driver sends random UDP packets from its own to open its NAT's mapping.
  TCP and QUIC dials run together; the first direct connection wins.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ..addrs import AddrScope, ip_of, is_relayed, port_of, scope_of, strip_p2p
from ..events import (
    DuplicateConnection,
    EventBus,
    NatStatusChanged,
    ObservedAddress,
    PeerConnected,
    Wakeup,
)
from ..metrics import Metrics
from ..multistream import LazySelect, MultistreamError, read_selected, select_message
from ..net.frames import read_frame
from ..net.sockets import abortive_close, initiated_locally, is_relayed_conn
from ..wire.framing import FrameError
from . import quic as quic_punch
from .messages import (
    PROTOCOL_ID,
    Connect,
    DcutrProtocolError,
    decode_connect,
    decode_sync,
    encode_connect,
    encode_sync,
)
from .schedule import (
    CONE_NAT_TYPES,
    AttemptSchedule,
    HolepunchNotSupported,
    HolepunchParams,
    PairPlan,
    PunchBook,
    StepKind,
    Verdict,
    drives,
    plan_pair,
    refuses_peer_session,
    yields_to_peer,
)

__all__ = ["HolepunchService", "HolepunchResult", "PROTOCOL_ID"]

log = logging.getLogger("prozchain_discovery.holepunch")

MAX_OBSERVED_IPS = 8
MAX_RESPONDER_SESSIONS = 16


@dataclass(frozen=True)
class HolepunchResult:
    """How the last DCUtR session with a peer ended (``outcome``: direct, failed, reversal)."""

    outcome: str
    attempts: int
    rtts: tuple[float, ...]
    time_to_direct: float | None
    remote_addr: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.outcome, "attempts": self.attempts,
                "rtts_ms": [round(r * 1000, 1) for r in self.rtts],
                "time_to_direct_s": None if self.time_to_direct is None else round(self.time_to_direct, 3),
                "remote_addr": self.remote_addr}


class _Stream:
    """A DCUtR stream: one message per frame (``read_frame`` never reads past a frame, so bytes
    of the next message stay on the stream)."""

    def __init__(self, stream: INetStream, max_message: int) -> None:
        self.stream = stream
        self.max_message = max_message

    async def read(self) -> bytes:
        try:
            return await read_frame(self.stream, self.max_message)
        except trio.Cancelled:
            raise
        except FrameError as exc:
            raise DcutrProtocolError(str(exc)) from None
        except Exception as exc:  # StreamEOF / StreamReset / closed
            raise DcutrProtocolError(f"stream ended: {type(exc).__name__}") from None

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:  # already reset by the peer
            pass


class HolepunchService:
    """The hole-punch component (docs/architecture.md): one task, per-peer sessions in its nursery."""

    def __init__(
        self,
        host: IHost,
        *,
        bus: EventBus,
        metrics: Metrics,
        params: HolepunchParams | None = None,
        enabled: bool = True,
        relay_close_grace: float = 2.0,
    ) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.params = (params or HolepunchParams()).validate()
        self.enabled = enabled
        self.relay_close_grace = relay_close_grace
        self.book: PunchBook[ID] = PunchBook(self.params)
        self.nat_type = "unknown"
        self._external: tuple[str, ...] = ()
        self._observed_ips: dict[str, float] = {}  # WAN IP -> last seen (bounded)
        self._pending: dict[ID, None] = {}  # peers whose relayed connection we should upgrade
        self._results: dict[ID, HolepunchResult] = {}
        self._responding: set[ID] = set()
        self._unsupported: set[ID] = set()  # answered "na" to /libp2p/dcutr: no more attempts
        self._starting: set[ID] = set()  # sessions settling before they claim the peer
        self._yielding: set[ID] = set()  # our session gives way: we answered the peer's (driver's)
        self._classified = trio.Event()  # set while our NAT class is known
        self._wake = Wakeup()
        self._nursery: trio.Nursery | None = None
        bus.subscribe(PeerConnected, self._on_connected)
        bus.subscribe(DuplicateConnection, self._on_duplicate)
        bus.subscribe(NatStatusChanged, self._on_nat)
        bus.subscribe(ObservedAddress, self._on_observed)

    # ---- events -------------------------------------------------------------------------------
    def _on_nat(self, ev: NatStatusChanged) -> None:
        if ev.status.nat_type != self.nat_type:
            self.book.forget_not_supported()
        self.nat_type = ev.status.nat_type
        self._external = ev.status.external_addrs
        if self.nat_type != "unknown":
            self._classified.set()
        elif self._classified.is_set():
            self._classified = trio.Event()

    def _on_observed(self, ev: ObservedAddress) -> None:
        ip = ip_of(ev.addr)
        if ip is not None and not is_relayed(ev.addr) and scope_of(ev.addr) is AddrScope.PUBLIC:
            self._note_ip(str(ip))

    def _note_ip(self, ip: str) -> None:
        self._observed_ips.pop(ip, None)
        self._observed_ips[ip] = trio.current_time()
        while len(self._observed_ips) > MAX_OBSERVED_IPS:
            del self._observed_ips[next(iter(self._observed_ips))]

    def _on_connected(self, ev: PeerConnected) -> None:
        if not self.enabled or ev.addr is None or not is_relayed(ev.addr):
            return
        if not drives(relayed_inbound=not ev.outbound):
            return
        if len(self._pending) < self.params.max_peers:
            self._pending[ev.peer_id] = None
            self._wake.set()

    def _on_duplicate(self, ev: DuplicateConnection) -> None:
        """A second connection to a connected peer: PeerConnected is only published for the
        first, and when two circuits cross, the one we accepted (which makes us the driver)
        may be the second. :meth:`_auto_session` and :meth:`_yields` decide whether we drive."""
        if self.enabled and len(self._pending) < self.params.max_peers:
            self._pending[ev.peer_id] = None
            self._wake.set()

    # ---- public API ---------------------------------------------------------------------------
    def result(self, peer_id: ID) -> HolepunchResult | HolepunchNotSupported | None:
        """The last session's result with ``peer_id``; :class:`HolepunchNotSupported` when the
        pair cannot be punched (it stays relayed); None if no session ran."""
        why = self.book.not_supported(peer_id, trio.current_time())
        if why is not None:
            return why
        return self._results.get(peer_id)

    def has_direct_connection(self, peer_id: ID) -> bool:
        return self._direct_conn(peer_id) is not None

    async def punch(self, peer_id: ID) -> HolepunchResult | HolepunchNotSupported | None:
        """Run one driving session now (the automatic path calls this for relayed inbound
        connections); returns :meth:`result`. Refused (returns the current result) while a
        session runs or the peer is backing off."""
        await self._session(peer_id)
        return self.result(peer_id)

    # ---- the component's task -------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    deadline = self.book.next_deadline()
                    await self._wake.wait_until(deadline)
                    self.book.on_timer(trio.current_time())
                    pending, self._pending = list(self._pending), {}
                    for peer in pending:
                        nursery.start_soon(self._auto_session, peer)
            finally:
                self._nursery = None

    # ---- driving side -----------------------------------------------------------------------------
    def _yields(self, peer: ID) -> bool:
        """The peer drives this pair, not us (schedule.yields_to_peer, and a CONNECT of its we
        answered while our session ran)."""
        if peer in self._yielding:
            return True
        outbound = any(initiated_locally(c) for c in self._relayed_conns(peer))
        return yields_to_peer(self.host.get_id().to_bytes(), peer.to_bytes(), outbound_relayed=outbound)

    async def _settle(self, peer: ID) -> None:
        """Before a session claims the peer: let a session the peer drives (we are answering it)
        finish, and let our NAT classifier give its verdict (a driver that does not know its
        own class would spend attempts a symmetric NAT makes useless), each bounded."""
        with trio.move_on_after(self.params.stream_timeout + self.params.dial_timeout):
            while peer in self._responding:
                await trio.sleep(0.05)
        if self.nat_type == "unknown":
            with trio.move_on_after(self.params.classify_wait):
                await self._classified.wait()

    def _we_drive(self, peer: ID) -> bool:
        """We are this pair's driver and will run (or run) its session: we accepted a circuit
        from the peer, we do not give way to it, and the punch book lets a session run."""
        verdict = self.book.verdict(peer, trio.current_time())
        if verdict not in (Verdict.START, Verdict.RUNNING) and peer not in self._starting:
            return False
        if not any(not initiated_locally(c) for c in self._relayed_conns(peer)):
            return False
        if not refuses_peer_session(self.host.get_id().to_bytes(), peer.to_bytes()):
            return False  # the smaller id: answers, and gives way if it also accepted a circuit
        return not self._yields(peer)

    async def _auto_session(self, peer: ID) -> None:
        """A session the connection events asked for: only if we are the driver."""
        if self._direct_conn(peer) is None and any(not initiated_locally(c) for c in self._relayed_conns(peer)):
            await self._session(peer)

    async def _session(self, peer: ID) -> None:
        if peer in self._starting:
            return
        self._starting.add(peer)
        try:
            await self._settle(peer)
        finally:
            self._starting.discard(peer)
        now = trio.current_time()
        if self._direct_conn(peer) is not None or self._relayed_conns(peer) == []:
            return
        if self._yields(peer):
            self.metrics.inc("holepunch_yielded")
            return
        if not self.book.begin(peer, now):
            if self.book.verdict(peer, now) is Verdict.NOT_SUPPORTED:
                self.metrics.inc("holepunch_not_supported")
            return
        self._yielding.discard(peer)
        sched = AttemptSchedule(self.nat_type, self.params, one_attempt_if_unknown=(
            self.book.undecided_sessions(peer) < self.params.max_undecided))
        remote: str | None = None
        peer_addrs: list[Multiaddr] = []
        try:
            step = sched.start(now)
            stream: _Stream | None = None
            while step.kind not in (StepKind.DONE, StepKind.GIVE_UP):
                if step.kind is StepKind.SEND_CONNECT:
                    if (c := self._direct_conn(peer)) is not None:  # the peer's session won
                        remote = _conn_addr(c)
                        step = sched.direct_connected(trio.current_time())
                        continue
                    if self._yields(peer):  # the peer drives: its session, not ours
                        step = sched.yielded(trio.current_time())
                        continue
                    if stream is not None:
                        await stream.close()
                    stream, answer = await self._exchange_connect(peer, sched)
                    if answer is None:
                        stream = None
                        if self._yields(peer):  # refused: the peer's session drives the pair
                            step = sched.yielded(trio.current_time())
                            continue
                        self.metrics.inc("holepunch_attempts")
                        step = sched.attempt_failed(trio.current_time())
                        if peer in self._unsupported:
                            self._unsupported.discard(peer)
                            while step.kind is not StepKind.GIVE_UP:  # no point in more rounds
                                step = sched.attempt_failed(trio.current_time())
                        continue
                    self.metrics.inc("holepunch_attempts")
                    peer_addrs = _dialable(answer.addrs, self._wan_ips())
                    step = sched.connect_answered(trio.current_time(), answer.nat_type)
                    continue
                assert stream is not None
                if step.kind is StepKind.SEND_SYNC_AND_DIAL:
                    try:
                        with trio.fail_after(self.params.stream_timeout):
                            await stream.write(encode_sync())
                    except Exception:  # noqa: BLE001 - any stream failure ends the attempt
                        step = sched.attempt_failed(trio.current_time())
                        continue
                    await trio.sleep(step.delay)
                    remote = await self._dial_all(peer, peer_addrs, as_server=True)
                elif step.kind is StepKind.DIAL_DIRECT:
                    remote = await self._dial_all(peer, peer_addrs, as_server=False, from_listen_port=False)
                elif step.kind is StepKind.WAIT_FOR_PEER:
                    remote = await self._wait_direct(peer, self.params.dial_timeout)
                now = trio.current_time()
                step = sched.direct_connected(now) if remote else sched.attempt_failed(now)
            if stream is not None:
                await stream.close()
        finally:
            now = trio.current_time()
            outcome = sched.outcome if sched.outcome != "pending" else "failed"
            if outcome == "reversal" and remote:
                outcome = "direct"
            self._yielding.discard(peer)
            self.book.end(peer, now, outcome, sched.not_supported)
            self._finish(peer, sched, outcome, remote)

    def _finish(self, peer: ID, sched: AttemptSchedule, outcome: str, remote: str | None) -> None:
        if outcome == "yielded":
            self.metrics.inc("holepunch_yielded")
            log.debug("hole punch with %s: the peer drives it", peer)
            return
        if outcome == "undecided":
            self.metrics.inc("holepunch_undecided")
            log.debug("hole punch with %s: one attempt while a NAT class was unknown; again in %.0f s",
                      peer, self.params.undecided_retry)
            if self._nursery is not None:
                self._nursery.start_soon(self._retry_undecided, peer)
            return
        if outcome == "not_supported":
            self.metrics.inc("holepunch_not_supported")
            log.info("hole punch with %s not supported: %s", peer,
                     sched.not_supported.reason if sched.not_supported else "")
            return
        ttd = (sched.finished_at - sched.started_at) if outcome == "direct" and sched.finished_at \
            is not None and sched.started_at is not None else None
        self._results[peer] = HolepunchResult(outcome, sched.attempts, tuple(sched.rtts), ttd, remote)
        while len(self._results) > self.params.max_peers:
            del self._results[next(iter(self._results))]
        if outcome == "direct":
            self.metrics.inc("holepunch_successes")
            if ttd is not None:
                self.metrics.observe("holepunch_time_to_direct_seconds", ttd)
            log.info("hole punch with %s: direct via %s after %d attempt(s)", peer, remote, sched.attempts)
            if self._nursery is not None:
                self._nursery.start_soon(self._close_relayed_later, peer)
        else:
            self.metrics.inc("holepunch_failures")
            if sched.our_nat in CONE_NAT_TYPES and sched.peer_nat in CONE_NAT_TYPES:
                log.warning("hole punch with %s failed after %d attempt(s) although both NATs are cone "
                            "(ours %s, theirs %s): the pair stays relayed", peer, sched.attempts,
                            sched.our_nat, sched.peer_nat)
            else:
                log.info("hole punch with %s failed after %d attempt(s)", peer, sched.attempts)

    async def _retry_undecided(self, peer: ID) -> None:
        """Re-run an undecided session once the classes are likely known: after our verdict
        and ``undecided_retry`` (the peer's classifier runs on its own clock)."""
        with trio.move_on_after(self.params.classify_wait):
            await self._classified.wait()
        await trio.sleep(self.params.undecided_retry)
        await self._auto_session(peer)

    async def _exchange_connect(self, peer: ID, sched: AttemptSchedule) -> tuple[_Stream | None, Connect | None]:
        stream: _Stream | None = None
        try:
            with trio.fail_after(self.params.stream_timeout):
                connect = encode_connect(self._our_addrs(), self.nat_type, self.params.max_addrs)
                raw = await self.host.get_network().new_stream(peer)
                stream = _Stream(raw, self.params.max_message)
                # multistream-select pipelined with CONNECT (go-libp2p's lazy select does the
                # same): one relay round trip instead of three; py-libp2p's host.new_stream
                # waits for each answer in turn.
                await stream.write(select_message(PROTOCOL_ID) + connect)
                sched.connect_sent(trio.current_time())
                try:
                    if not await read_selected(raw, PROTOCOL_ID):
                        self._unsupported.add(peer)
                        raise DcutrProtocolError("the peer does not speak /libp2p/dcutr")
                except MultistreamError as exc:
                    raise DcutrProtocolError(str(exc)) from None
                answer = decode_connect(await stream.read(), self.params.max_addrs)
            return stream, answer
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - stream errors, timeouts, protocol errors alike
            log.debug("DCUtR CONNECT with %s failed: %s", peer, exc)
            self.metrics.inc("holepunch_stream_errors")
            if stream is not None:
                await stream.close()
            return None, None

    # ---- answering side ---------------------------------------------------------------------------
    async def handle(self, net_stream: INetStream) -> None:
        """``/libp2p/dcutr`` handler: answer CONNECT, dial on SYNC. One session per peer at a time."""
        peer = net_stream.muxed_conn.peer_id
        stream = _Stream(net_stream, self.params.max_message)
        # Both sides may drive (each accepted a circuit from the other, or the session of one
        # began late): the larger id drives and refuses the peer's CONNECT, whether or not its
        # own session has begun yet; the smaller answers, and its own session (begun or to
        # come) gives way (schedule.refuses_peer_session). Seen in the crowd lab: two sessions
        # whose CONNECTs crossed before either began both ran.
        both_drive = self._we_drive(peer)
        if not both_drive and any(not initiated_locally(c) for c in self._relayed_conns(peer)):
            self._yielding.add(peer)
        if (not self.enabled or both_drive or peer in self._responding
                or len(self._responding) >= MAX_RESPONDER_SESSIONS or self._direct_conn(peer) is not None):
            await stream.close()
            return
        self._responding.add(peer)
        try:
            with trio.fail_after(self.params.stream_timeout):
                offer = decode_connect(await stream.read(), self.params.max_addrs)
                await stream.write(encode_connect(self._our_addrs(), self.nat_type, self.params.max_addrs))
            addrs = _dialable(offer.addrs, self._wan_ips())
            plan, why = plan_pair(self.nat_type, offer.nat_type or "unknown")
            now = trio.current_time()
            if plan is PairPlan.NOT_SUPPORTED and why is not None:
                self.book.note_not_supported(peer, now, why)
                self.metrics.inc("holepunch_not_supported")
                return
            if plan is PairPlan.WE_DIAL:
                await self._dial_all(peer, addrs, as_server=False, from_listen_port=False)
                return
            if plan is PairPlan.PEER_DIALS:
                return
            with trio.fail_after(self.params.stream_timeout):
                decode_sync(await stream.read())
            if await self._dial_all(peer, addrs, as_server=False):
                self.metrics.inc("holepunch_answered_direct")
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad peer must never crash the handler
            log.debug("DCUtR answer to %s failed: %s", peer, exc)
            self.metrics.inc("holepunch_stream_errors")
        finally:
            self._responding.discard(peer)
            await stream.close()

    # ---- addresses --------------------------------------------------------------------------------
    def _listen_tcp(self) -> tuple[str, int] | None:
        """Our TCP listen (ip, port) to bind punch dials to: a non-loopback IPv4 one if any."""
        best: tuple[str, int] | None = None
        for a in self.host.get_addrs():
            if is_relayed(a):
                continue
            ip, port = ip_of(a), port_of(a)
            if ip is None or port is None or ip.version != 4 or "/tcp/" not in str(a):
                continue
            if any(p in str(a) for p in ("/ws", "/quic")):
                continue
            if not ip.is_loopback:
                return (str(ip), port)
            best = best or (str(ip), port)
        return best

    def _wan_ips(self) -> set[str]:
        """The public IPs we were observed at (our events, and py-libp2p identify's)."""
        ips = set(self._observed_ips)
        manager = getattr(self.host, "_observed_addr_manager", None)
        if manager is not None:
            try:
                for a in manager.addrs(min_observers=1):
                    ip = ip_of(a)
                    if ip is not None and not is_relayed(a) and scope_of(a) is AddrScope.PUBLIC:
                        ips.add(str(ip))
            except Exception:  # noqa: BLE001 - an internal of py-libp2p; best effort
                pass
        return ips

    def _our_addrs(self) -> list[Multiaddr]:
        """What we put in CONNECT: every WAN IP we were seen at, with our listen port (a
        port-preserving NAT maps a punch from the listen port to it), then mapped and listen
        addresses. Relay addresses never."""
        out: list[Multiaddr] = []
        listen = self._listen_tcp()
        ips = list(self._observed_ips) + sorted(self._wan_ips() - set(self._observed_ips))
        if listen is not None:
            for wan in dict.fromkeys(ips):
                out.append(Multiaddr(f"/ip4/{wan}/tcp/{listen[1]}") if ":" not in wan
                           else Multiaddr(f"/ip6/{wan}/tcp/{listen[1]}"))
        out += quic_punch.predicted(self.host, dict.fromkeys(ips))
        for text in self._external:
            try:
                out.append(strip_p2p(Multiaddr(text)))
            except Exception:  # noqa: BLE001 - from our own NAT component; still, never trust a string
                continue
        for a in self.host.get_addrs():
            if not is_relayed(a):
                out.append(strip_p2p(a))
        seen: dict[str, Multiaddr] = {}
        for a in out:
            seen.setdefault(str(a), a)
        return list(seen.values())[: self.params.max_addrs]

    # ---- connections -------------------------------------------------------------------------------
    def _conns(self, peer: ID) -> list[INetConn]:
        try:
            return list(self.host.get_network().get_connections(peer))
        except Exception:  # noqa: BLE001
            return []

    def _relayed_conns(self, peer: ID) -> list[INetConn]:
        return [c for c in self._conns(peer) if is_relayed_conn(c)]

    def _direct_conn(self, peer: ID) -> INetConn | None:
        for c in self._conns(peer):
            if not is_relayed_conn(c) and not getattr(c, "is_closed", False):
                return c
        return None

    async def _wait_direct(self, peer: ID, timeout: float) -> str | None:
        with trio.move_on_after(timeout):
            while True:
                c = self._direct_conn(peer)
                if c is not None:
                    return _conn_addr(c)
                await trio.sleep(0.05)
        return None

    async def _dial_all(self, peer: ID, addrs: list[Multiaddr], *, as_server: bool,
                        from_listen_port: bool = True) -> str | None:
        """Dial every address at once (the spec's step 5); the first direct connection wins.

        Single attempts, no swarm retries: a late retry would land outside the punch window and
        only confuse the NATs. Returns the direct connection's remote address, or None."""
        if not addrs:
            return None
        source = self._listen_tcp() if from_listen_port else None
        quic = [a for a in addrs if quic_punch.is_quic(a)]
        won: list[str] = []
        with trio.move_on_after(self.params.dial_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for a in addrs:
                    if a not in quic:
                        nursery.start_soon(self._dial_one, peer, a, source, as_server, won, scope)
                if quic and as_server and from_listen_port:  # QUIC's "server": packets, no dial
                    nursery.start_soon(quic_punch.send_punch_packets, self.host, quic)
                elif quic:
                    for a in quic:
                        nursery.start_soon(self._dial_quic, peer, a, won, scope)
                nursery.start_soon(self._watch_direct, peer, scope)
        await quic_punch.keep_one_direct(self.host, peer)  # QUIC and TCP may both have made it
        if won and self._direct_conn(peer) is not None:
            return won[0]
        c = self._direct_conn(peer)  # the peer's dial may have won on our listener instead
        return _conn_addr(c) if c is not None else None

    async def _watch_direct(self, peer: ID, scope: trio.CancelScope) -> None:
        """End the dials when a direct connection appears by another way (the peer's dial
        reached our listener: no NAT between us, or a NAT that lets it in)."""
        while self._direct_conn(peer) is None:
            await trio.sleep(0.02)
        scope.cancel()

    async def _dial_one(self, peer: ID, addr: Multiaddr, source: tuple[str, int] | None,
                        as_server: bool, won: list[str], scope: trio.CancelScope) -> None:
        swarm: Any = self.host.get_network()
        raw: Any = None
        won_it = False
        try:
            transport = swarm.transport_manager.transport_for_dialing(addr)
            if transport is None:
                return
            dial_from = getattr(transport, "dial_with_source", None)
            if source is not None and dial_from is not None:
                raw = await dial_from(addr, source)
            else:
                raw = await transport.dial(addr)
            # Until it wins, closing this connection resets it: a lost race must not leave the
            # 4-tuple (our listen port, the peer's) in TIME_WAIT, where every later punch
            # between the two would fail with EADDRNOTAVAIL (seen in the crowd lab).
            abortive_close(raw)
            if as_server:
                muxed = await swarm.upgrade_inbound_raw_conn(raw, addr)
                if getattr(muxed, "peer_id", None) != peer:
                    await muxed.close()
                    return
            else:
                if hasattr(raw, "stream"):  # a RawConnection (TCP): select lazily
                    raw.stream = LazySelect(raw.stream)
                await swarm.upgrade_outbound_raw_conn(raw, peer)
            won_it = True
            abortive_close(raw, on=False)
            won.append(str(addr))
            scope.cancel()
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, reset, timed out, wrong peer: a lost race
            self.metrics.inc("holepunch_dial_failures", reason=_dial_failure_reason(exc))
            log.debug("punch dial %s -> %s failed: %s", source, addr, exc)
        finally:
            if raw is not None and not won_it:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    try:
                        await raw.close()
                    except Exception:  # noqa: BLE001 - already closed by the failed upgrade
                        pass

    async def _dial_quic(self, peer: ID, addr: Multiaddr, won: list[str], scope: trio.CancelScope) -> None:
        try:
            await quic_punch.dial(self.host, peer, addr)
            won.append(str(addr))
            scope.cancel()
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - timed out, refused, wrong peer: a lost race
            log.debug("punch QUIC dial -> %s failed: %s", addr, exc)

    async def _close_relayed_later(self, peer: ID) -> None:
        """Migrate: once a direct connection exists, close the relay leg after a grace period
        (streams already on it may finish; new streams go to the direct connection)."""
        await trio.sleep(self.relay_close_grace)
        if self._direct_conn(peer) is None:
            return
        for c in self._relayed_conns(peer):
            try:
                await c.close()
                self.metrics.inc("holepunch_relay_closed")
            except Exception:  # noqa: BLE001 - already gone
                pass

    # ---- status -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        peers = self.book.snapshot(now)
        for pid, res in list(self._results.items())[-50:]:
            peers.setdefault(str(pid), {}).update(res.as_dict())
        return {"holepunch": {"enabled": self.enabled, "nat_type": self.nat_type,
                              "responding": len(self._responding), "peers": dict(list(peers.items())[-50:])}}


def _dial_failure_reason(exc: BaseException) -> str:
    """A short, bounded label for a failed punch dial: the errno's name where there is one
    (EADDRNOTAVAIL: the 4-tuple is taken, both sides dialed the same address pair), else the
    exception's class."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        if isinstance(code, int) and code in errno.errorcode:
            return errno.errorcode[code]
        e = e.__cause__ or e.__context__
    text = str(exc)
    for code, name in ((errno.EADDRNOTAVAIL, "EADDRNOTAVAIL"), (errno.ECONNREFUSED, "ECONNREFUSED")):
        if f"[Errno {code}]" in text:
            return name
    return type(exc).__name__[:40]


def _conn_addr(conn: INetConn) -> str | None:
    try:
        addrs = conn.get_transport_addresses()
        return str(addrs[0]) if addrs else None
    except Exception:  # noqa: BLE001
        return None


def _dialable(addrs: tuple[Multiaddr, ...], our_wan_ips: Collection[str] = ()) -> list[Multiaddr]:
    """Plain TCP and QUIC addresses from a CONNECT; public ones only if there are any (a private address
    of a peer behind another NAT leads nowhere, or to a stranger on our own LAN) — unless the
    peer is behind our own NAT (it was seen at one of our WAN IPs): then its LAN addresses come
    first, since few home routers hairpin."""
    tcp = [strip_p2p(a) for a in addrs
           if not is_relayed(a) and ip_of(a) is not None and (quic_punch.is_quic(a) or (
               "/tcp/" in str(a) and not any(p in str(a) for p in ("/ws", "/wss", "/quic", "/tls"))))]
    public = [a for a in tcp if scope_of(a) is AddrScope.PUBLIC]
    usable = [a for a in tcp if scope_of(a) is not AddrScope.UNSPECIFIED]
    if any(str(ip_of(a)) in our_wan_ips for a in public):
        return [a for a in usable if a not in public] + public
    return public or usable
