"""The AutoNAT v2 component: reachability confirmed by dial-backs on new connections.

Server: answers ``/libp2p/autonat/2/dial-request`` (libp2p specs autonat/autonat-v2.md). The
dial-back goes out from a separate, throw-away host with its own key and no listener (as
go-libp2p's ``dialerHost``), so it is always a *new* connection from a port we do not listen
on: py-libp2p's stock AutoNAT answered over the connection the client had just opened and
called every client public. Rate limits, address choice and the amplification guard are
:class:`~.autonat_core.AutonatServerPolicy`'s.

Client: asks connected peers whose identify list has ``/libp2p/autonat/2/dial-request`` to
dial our candidate addresses (what we advertise, the external addresses of port mappings, and
each IP at least two peers observe us at, with our listen port), one address per request, and
believes a result only when our nonce arrives on ``/libp2p/autonat/2/dial-back``. Whom to ask
and what the answers add up to is :class:`~.autonat_core.AutonatClientPolicy`'s; the verdict
goes out as :class:`~..events.ReachabilityConfirmed`, which the NAT component merges into
``NatStatus``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from ..addrs import ip_of, port_of, strip_p2p
from ..events import (
    EventBus,
    LocalAddressesChanged,
    NatStatusChanged,
    ObservedAddress,
    PeerConnected,
    ReachabilityConfirmed,
    Wakeup,
)
from ..metrics import Metrics
from ..net.exchange import is_relayed_stream, observed_multiaddr
from ..net.frames import read_frame
from ..ports import Connections, PeerBookView
from ..wire.autonat import (
    DIAL_BACK_PROTOCOL,
    DIAL_REQUEST_PROTOCOL,
    MAX_DIAL_BACK_MESSAGE,
    MAX_DIAL_DATA,
    MAX_MESSAGE,
    DialBack,
    DialDataCounter,
    DialDataRequest,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decode_dial_back,
    decode_message,
    dial_data_frames,
    encode_dial_back,
    encode_dial_back_response,
    frame_message,
)
from .autonat_core import (
    AutonatClientPolicy,
    AutonatServerPolicy,
    Probe,
    ProbeOutcome,
    ServerVerdict,
    dialable_addr,
)
from .status import Reachability

__all__ = ["AutonatService", "DialerFactory"]

log = logging.getLogger("prozchain_discovery.nat.autonat")

STREAM_TIMEOUT = 15.0  # one whole dial-request exchange (go-libp2p streamTimeout)
DIAL_BACK_STREAM_TIMEOUT = 5.0  # the dial-back stream, and our wait for the nonce
# Identify fills in protocol lists without an event: while a connected peer's list is still
# unknown and we have addresses to ask about, look again this often ...
IDENTIFY_POLL = 0.25
# ... and otherwise this often, for a peer that starts serving dial-request later (identify
# push). Everything else that changes what we ask wakes the loop (a peer connected, our
# addresses, the NAT status, observed addresses) or is a policy deadline. Was 5 s: a settled
# node woke twelve times a minute to find nothing new (issue #15).
RESCAN = 60.0
MAX_OBSERVED_IPS = 8  # IPs peers say they see us at, newest kept
# An observed IP becomes a candidate once this many peers report it: one peer alone could make
# us probe (and pay dial data for) any address it likes.
OBSERVED_MIN_REPORTERS = 2
MAX_REPORTERS = 8

# Builds the throw-away dial-back host; entering the context runs it, leaving stops it.
DialerFactory = Callable[[], AbstractAsyncContextManager[IHost]]


@dataclass(slots=True)
class _Pending:
    """A dial-request of ours waiting for its nonce on a dial-back stream."""

    event: trio.Event
    from_peer: ID | None = None


class AutonatService:
    """The component (module docstring): stream handlers for both protocols, the probe loop,
    and the lazily built dial-back host. Decisions are the two policies' in autonat_core."""

    def __init__(
        self,
        host: IHost,
        *,
        bus: EventBus,
        metrics: Metrics,
        connections: Connections,
        book: PeerBookView,
        server: bool = True,
        client: bool = True,
        confirmations: int = 3,
        reprobe_interval: float = 3600.0,
        dial_back_timeout: float = 10.0,
        allow_private: bool = False,
        rng: random.Random | None = None,
        dialer_factory: DialerFactory | None = None,
        addr_filter: Callable[[list[multiaddr.Multiaddr]], str | None] | None = None,
    ) -> None:
        self.host = host
        self.bus = bus
        self.metrics = metrics
        self.connections = connections
        self.book = book
        self.serve = server
        self.ask = client
        self.allow_private = allow_private
        self.dial_back_timeout = dial_back_timeout
        self.rng = rng or random.Random()
        self.server_policy = AutonatServerPolicy(allow_private=allow_private, rng=self.rng)
        self.client_policy = AutonatClientPolicy(
            confirmations=confirmations, reprobe_interval=reprobe_interval, label=_short,
        )
        self.dialer_factory = dialer_factory or _default_dialer
        # The default dial-back host has a QUIC transport; an injected one may not: QUIC
        # addresses are then refused, not answered "unreachable".
        self.dial_quic = dialer_factory is None
        # The root's dial filter (PROZCHAIN_DIAL_LOOPBACK_ONLY): dial-backs obey it like any dial.
        self.addr_filter = addr_filter
        self.dialer: IHost | None = None
        self._dialer_wanted = trio.Event()
        self._dialer_ready = trio.Event()
        self._pending: dict[int, _Pending] = {}
        self._external: tuple[str, ...] = ()
        self._observed: dict[str, set[bytes]] = {}  # observed IP -> reporters (newest last)
        # What the NAT component was last told (nothing yet: unknown, no evidence).
        self._published = ReachabilityConfirmed(Reachability.UNKNOWN, ())
        self._network = 0  # NatStatus.network: a new default route forgets every verdict
        self._wall_offset: float | None = None  # time.time() - trio.current_time(), fixed once
        self._identify_pending = False
        self._nursery: trio.Nursery | None = None
        self._hanging_up: dict[ID, trio.Event] = {}  # dial-back connections being closed
        self._wake = Wakeup()
        bus.subscribe(LocalAddressesChanged, lambda _ev: self._wake.set())
        bus.subscribe(PeerConnected, lambda _ev: self._wake.set())
        bus.subscribe(NatStatusChanged, self._on_nat)
        bus.subscribe(ObservedAddress, self._on_observed)

    # ---- inputs from the bus ----------------------------------------------------------------
    def _on_nat(self, ev: NatStatusChanged) -> None:
        if ev.status.network != self._network:  # another network: old answers say nothing
            self._network = ev.status.network
            self._observed.clear()
            self.client_policy.forget_verdicts(trio.current_time())
            self._wake.set()
        if ev.status.external_addrs != self._external:
            self._external = ev.status.external_addrs
            self._wake.set()

    def _on_observed(self, ev: ObservedAddress) -> None:
        ip = ip_of(ev.addr)
        if ip is None:
            return
        text = str(ip)
        reporters = self._observed.pop(text, set())
        self._observed[text] = reporters  # now the newest
        if len(reporters) < MAX_REPORTERS:
            reporters.add(ev.reporter.to_bytes())
        while len(self._observed) > MAX_OBSERVED_IPS:
            del self._observed[next(iter(self._observed))]
        self._wake.set()

    # ---- lifecycle --------------------------------------------------------------------------
    def handlers(self) -> dict[str, Callable[[INetStream], Any]]:
        """The stream handlers the root registers on the host."""
        out: dict[str, Callable[[INetStream], Any]] = {}
        if self.serve:
            out[DIAL_REQUEST_PROTOCOL] = self.handle_dial_request
        if self.serve or self.ask:
            # Harmless alone (only nonces we wait for are accepted) and lets a node that does
            # not probe on its own still be asked about (``probe()``, tests, the CLI).
            out[DIAL_BACK_PROTOCOL] = self.handle_dial_back
        return out

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.serve:
                nursery.start_soon(self._run_dialer)
            if not self.ask:
                await trio.sleep_forever()
            while True:
                now = trio.current_time()
                self.client_policy.set_addresses(self.candidates(), now)
                self.client_policy.set_servers(self._servers(), now)
                for probe in self.client_policy.on_timer(now):
                    nursery.start_soon(self._probe_task, probe)
                # An address gone, a verdict lapsed or forgotten changes what we know, too.
                self._publish()
                nxt = self.client_policy.next_deadline()
                poll = IDENTIFY_POLL if self._identify_pending and self.client_policy.addrs else RESCAN
                until = now + poll if nxt is None else min(nxt, now + poll)
                await self._wake.wait_until(until)

    async def _run_dialer(self) -> None:
        # Built on the first request, not at start: most nodes are never asked, and a host
        # costs memory and tasks (a 50-node test network would run 100 hosts).
        await self._dialer_wanted.wait()
        try:
            async with self.dialer_factory() as dialer:
                self.dialer = dialer
                self._dialer_ready.set()
                await trio.sleep_forever()
        except Exception as exc:  # without it we answer E_DIAL_ERROR; say why
            log.warning("AutoNAT: the dial-back host failed: %s", exc)
        finally:
            self.dialer = None
            self._dialer_ready.set()

    # ---- client -----------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        """Our addresses worth asking about: advertised, mapped, and observed IP + listen port."""
        listen = [strip_p2p(a) for a in self.host.get_addrs()]
        texts = [str(a) for a in listen] + list(self._external)
        ports = sorted({p for a in listen if (p := port_of(a)) and "/tcp/" in str(a)})
        quic_ports = sorted({p for a in listen if (p := port_of(a)) and str(a).endswith("/quic-v1")})
        for ip, reporters in reversed(self._observed.items()):
            if len(reporters) < OBSERVED_MIN_REPORTERS:
                continue
            proto = "ip6" if ":" in ip else "ip4"
            texts += [f"/{proto}/{ip}/tcp/{p}" for p in ports]
            texts += [f"/{proto}/{ip}/udp/{p}/quic-v1" for p in quic_ports]
        out: list[str] = []
        for t in texts:
            try:
                raw = multiaddr.Multiaddr(t).to_bytes()
            except Exception:
                continue
            ok = dialable_addr(raw, self.allow_private)
            if ok is not None and ok not in out:
                out.append(ok)
        return out

    def _servers(self) -> list[ID]:
        servers, self._identify_pending = [], False
        for cp in self.connections.peers():
            if "/p2p-circuit" in cp.addr:
                # Reached through a relay only: a limited connection (128 KiB, go-libp2p opens no
                # AutoNAT stream on one), and the server sees the relay's IP, so it asks for
                # 30-100 kB of dial data, which ate fresh circuits' budget (issue #16).
                continue
            speaks = self.book.supports(cp.peer_id, DIAL_REQUEST_PROTOCOL)
            if speaks:
                servers.append(cp.peer_id)
            elif speaks is None:
                self._identify_pending = True  # identify has not told yet: look again soon
        return servers

    async def _probe_task(self, probe: Probe) -> None:
        outcome = ProbeOutcome.INCONCLUSIVE
        try:
            outcome = await self.probe(probe.server, probe.addr)  # type: ignore[arg-type]
        finally:
            self.metrics.inc("autonat_probes", result=outcome.value)
            changed = self.client_policy.on_result(probe, outcome, trio.current_time())
            if changed:
                log.info("AutoNAT: %s (%s)", self.client_policy.reachability.value,
                         "; ".join(self.client_policy.evidence(self._wall_clock)))
            self._publish()
            self._wake.set()

    def _wall_clock(self, t: float) -> str:
        """A trio time as UTC wall-clock text, for people reading status.json. The offset is
        taken once, so the same verdict always reads the same (and is not re-published)."""
        if self._wall_offset is None:
            self._wall_offset = time.time() - trio.current_time()
        wall = self._wall_offset + t
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))

    def _publish(self) -> None:
        pol = self.client_policy
        ev = ReachabilityConfirmed(
            pol.reachability, pol.evidence(self._wall_clock),
            tuple(v.addr for v in pol.addrs.values() if v.reachability.value == "public"),
        )
        if ev != self._published:
            self._published = ev
            self.bus.publish(ev)

    async def probe(self, server: ID, addr: str) -> ProbeOutcome:
        """Ask ``server`` to dial ``addr`` back; the outcome counts only with our nonce."""
        nonce = self.rng.getrandbits(64)
        while nonce in self._pending:
            nonce = self.rng.getrandbits(64)
        pending = self._pending[nonce] = _Pending(trio.Event())
        stream: INetStream | None = None
        try:
            with trio.move_on_after(STREAM_TIMEOUT):
                try:
                    stream = await self.host.new_stream(server, [DIAL_REQUEST_PROTOCOL])  # type: ignore[list-item]
                    req = DialRequest((strip_p2p(multiaddr.Multiaddr(addr)).to_bytes(),), nonce)
                    await stream.write(frame_message(req))
                    msg = decode_message(await read_frame(stream, MAX_MESSAGE))
                    if isinstance(msg, DialDataRequest):
                        if msg.addr_idx != 0 or msg.num_bytes > MAX_DIAL_DATA:
                            log.debug("AutoNAT: %s asked for %d bytes for #%d: refused", server,
                                      msg.num_bytes, msg.addr_idx)
                            await _reset(stream)
                            return ProbeOutcome.INCONCLUSIVE
                        self.metrics.inc("autonat_dial_data_paid", msg.num_bytes)
                        for chunk in dial_data_frames(msg.num_bytes):
                            await stream.write(chunk)
                        msg = decode_message(await read_frame(stream, MAX_MESSAGE))
                    if not isinstance(msg, DialResponse):
                        await _reset(stream)
                        return ProbeOutcome.INCONCLUSIVE
                    await _close(stream)
                    if msg.status is not ResponseStatus.OK or msg.addr_idx != 0:
                        return ProbeOutcome.INCONCLUSIVE
                    if msg.dial_status is DialStatus.E_DIAL_ERROR:
                        return ProbeOutcome.UNREACHABLE
                    if msg.dial_status not in (DialStatus.OK, DialStatus.E_DIAL_BACK_ERROR):
                        return ProbeOutcome.INCONCLUSIVE
                    # The server says it dialed us: believe it only if our nonce came (spec).
                    with trio.move_on_after(DIAL_BACK_STREAM_TIMEOUT):
                        await pending.event.wait()
                    if pending.event.is_set():
                        return ProbeOutcome.REACHABLE
                    self.metrics.inc("autonat_dial_back_missing")
                    return ProbeOutcome.INCONCLUSIVE
                except trio.Cancelled:
                    raise
                except Exception as exc:  # stream, framing, decode: no verdict from this server
                    log.debug("AutoNAT probe of %s via %s failed: %s", addr, server, exc)
                    if stream is not None:
                        await _reset(stream)
                    return ProbeOutcome.INCONCLUSIVE
            if stream is not None:
                await _reset(stream)
            return ProbeOutcome.INCONCLUSIVE
        finally:
            del self._pending[nonce]

    async def handle_dial_back(self, stream: INetStream) -> None:
        """``/libp2p/autonat/2/dial-back``: a server's new connection brings one of our nonces."""
        with trio.move_on_after(DIAL_BACK_STREAM_TIMEOUT):
            try:
                msg = decode_dial_back(await read_frame(stream, MAX_DIAL_BACK_MESSAGE))
                pending = self._pending.get(msg.nonce)
                if pending is None or pending.event.is_set():
                    self.metrics.inc("autonat_dial_backs_received", result="unknown_nonce")
                    await _reset(stream)
                    return
                pending.from_peer = stream.muxed_conn.peer_id
                pending.event.set()
                self.metrics.inc("autonat_dial_backs_received", result="ok")
                await stream.write(encode_dial_back_response())
                await _close(stream)
                return
            except trio.Cancelled:
                raise
            except Exception as exc:
                self.metrics.inc("autonat_dial_backs_received", result="bad")
                log.debug("bad AutoNAT dial-back: %s", exc)
        await _reset(stream)

    # ---- server -----------------------------------------------------------------------------
    async def handle_dial_request(self, stream: INetStream) -> None:
        """``/libp2p/autonat/2/dial-request``: dial the client back, on a new connection."""
        peer = stream.muxed_conn.peer_id
        pol = self.server_policy
        if not pol.admit(peer, trio.current_time()):
            self.metrics.inc("autonat_dial_backs", result="rejected")
            with trio.move_on_after(DIAL_BACK_STREAM_TIMEOUT):
                try:
                    await stream.write(frame_message(DialResponse(ResponseStatus.E_REQUEST_REJECTED)))
                except Exception:
                    pass
            await _close(stream)
            return
        result = "error"
        try:
            with trio.move_on_after(STREAM_TIMEOUT):
                result = await self._serve(stream, peer)
        except trio.Cancelled:
            raise
        except Exception as exc:  # framing, decode, stream: the request is dropped
            result = "bad_request"
            log.debug("AutoNAT request from %s dropped: %s", peer, exc)
        finally:
            pol.complete(peer)
            self.metrics.inc("autonat_dial_backs", result=result)
        if result in ("bad_request", "error", "unpaid"):
            await _reset(stream)
        else:
            await _close(stream)

    async def _serve(self, stream: INetStream, peer: ID) -> str:
        msg = decode_message(await read_frame(stream, MAX_MESSAGE))
        if not isinstance(msg, DialRequest):
            return "bad_request"
        if is_relayed_stream(stream):  # no dial data over a limited connection (see _servers)
            await stream.write(frame_message(DialResponse(ResponseStatus.E_REQUEST_REJECTED)))
            return "over_relay"
        observed = observed_multiaddr(stream)
        obs_ip = ip_of(observed) if observed is not None else None
        decision = self.server_policy.decide(
            msg.addrs, None if obs_ip is None else str(obs_ip), trio.current_time(), self._can_dial,
            quic=self.dial_quic,
        )
        if decision.verdict is ServerVerdict.REFUSE:
            await stream.write(frame_message(DialResponse(ResponseStatus.E_DIAL_REFUSED)))
            return "refused"
        if decision.verdict is ServerVerdict.REJECT:
            await stream.write(frame_message(DialResponse(ResponseStatus.E_REQUEST_REJECTED)))
            return "rejected"
        if decision.verdict is ServerVerdict.PAY_FIRST:
            # The amplification guard: not a packet goes to the third party before it is paid.
            await stream.write(frame_message(DialDataRequest(decision.idx, decision.num_bytes)))
            counter = DialDataCounter(decision.num_bytes)
            try:
                while not counter.done:
                    counter.add(decode_message(await read_frame(stream, MAX_MESSAGE)))
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("AutoNAT: %s did not pay for dialing %s: %s", peer, decision.addr, exc)
                return "unpaid"
        status = await self._dial_back(peer, decision.addr, msg.nonce)
        if status is None:  # we could not dial at all: say so, not "your address is unreachable"
            await stream.write(frame_message(DialResponse(ResponseStatus.E_INTERNAL_ERROR)))
            return "internal_error"
        await stream.write(frame_message(DialResponse(ResponseStatus.OK, decision.idx, status)))
        return {DialStatus.OK: "ok", DialStatus.E_DIAL_ERROR: "dial_error"}.get(status, "dial_back_error")

    def _can_dial(self, addr: str) -> bool:
        """IPv4-only servers refuse IPv6 and the other way round (spec)."""
        ma = multiaddr.Multiaddr(addr)
        if self.addr_filter is not None and self.addr_filter([ma]) is not None:
            return False
        want = ip_of(ma)
        ours = {ip.version for a in self.host.get_addrs() if (ip := ip_of(a)) is not None}
        return want is not None and (not ours or want.version in ours)

    async def _dial_back(self, peer: ID, addr: str, nonce: int) -> DialStatus | None:
        """Dial ``addr`` from the throw-away host and deliver ``nonce``; None: no such host."""
        self._dialer_wanted.set()
        with trio.move_on_after(self.dial_back_timeout):
            await self._dialer_ready.wait()
        dialer = self.dialer
        if dialer is None:
            return None
        # Never over an old connection: the last dial-back's is closed in the background (it
        # takes py-libp2p ~200 ms); wait for that, and close anything still there. Otherwise
        # ``connect`` would return at once and the nonce would prove nothing about ``addr``.
        if (closing := self._hanging_up.get(peer)) is not None:
            with trio.move_on_after(5.0):
                await closing.wait()
        if _connections_to(dialer, peer):
            await self._hang_up(dialer, peer, trio.Event())
        try:
            connected = False
            with trio.move_on_after(self.dial_back_timeout):
                try:
                    await dialer.connect(PeerInfo(peer, [multiaddr.Multiaddr(addr)]))
                    connected = True
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.debug("AutoNAT dial-back to %s failed: %s", addr, exc)
            if not connected or not _connections_to(dialer, peer):
                return DialStatus.E_DIAL_ERROR
            with trio.move_on_after(DIAL_BACK_STREAM_TIMEOUT):
                try:
                    s = await dialer.new_stream(peer, [DIAL_BACK_PROTOCOL])  # type: ignore[list-item]
                    await s.write(encode_dial_back(DialBack(nonce)))
                    # Wait for the client's answer: closing the connection at once could drop
                    # the nonce still queued (go reads one byte for the same reason).
                    await read_frame(s, MAX_DIAL_BACK_MESSAGE)
                    await _close(s)
                    return DialStatus.OK
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    log.debug("AutoNAT dial-back stream to %s failed: %s", addr, exc)
            return DialStatus.E_DIAL_BACK_ERROR
        finally:
            done = self._hanging_up[peer] = trio.Event()
            if self._nursery is not None:  # answer the client now, hang up meanwhile
                self._nursery.start_soon(self._hang_up, dialer, peer, done)
            else:
                await self._hang_up(dialer, peer, done)

    async def _hang_up(self, dialer: IHost, peer: ID, done: trio.Event) -> None:
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                try:
                    await dialer.get_network().close_peer(peer)
                except Exception:
                    pass
            try:
                dialer.get_peerstore().clear_addrs(peer)
            except Exception:
                pass
        finally:
            done.set()
            if self._hanging_up.get(peer) is done:
                del self._hanging_up[peer]

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        pol = self.client_policy
        return {"autonat": {
            "server": self.serve,
            "client": self.ask,
            "reachability": pol.reachability.value,
            "servers": len(pol.servers),
            "addrs": pol.status(),
        }}


@asynccontextmanager
async def _default_dialer() -> AsyncIterator[IHost]:
    """A host with a fresh key that listens nowhere: dial-backs come from it, never from us."""
    from ..host import make_host
    from ..libp2p_fixes import run_host

    dialer = make_host(listen_addrs=(), enable_quic=True)  # dials back TCP and QUIC
    async with run_host(dialer, []):
        yield dialer


def _connections_to(host: IHost, peer: ID) -> list[Any]:
    try:
        return list(host.get_network().get_connections(peer))  # type: ignore[attr-defined]
    except Exception:  # no swarm, or the peer unknown
        return []


def _short(server: Hashable) -> str:
    text = str(server)
    return text[-8:] if len(text) > 8 else text


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            pass


async def _close(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.close()
        except Exception:
            pass
