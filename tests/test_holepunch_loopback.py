"""HolepunchService with real py-libp2p hosts on loopback: a relay, two peers, DCUtR over the
relayed connection (no NAT here: the punch dial meets the peer's listener, or a simultaneous
open on one host). The NAT-lab version with real Linux NAT is tests/test_holepunch_lab.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, RelayLimits
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.tools.anyio_service import background_trio_service

from prozchain_discovery.config import HolepunchSettings
from prozchain_discovery.connections import ConnectionTracker
from prozchain_discovery.events import DuplicateConnection, EventBus, NatStatusChanged
from prozchain_discovery.holepunch.schedule import HolepunchNotSupported, HolepunchParams
from prozchain_discovery.holepunch.service import PROTOCOL_ID, HolepunchResult, HolepunchService
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.status import NatStatus
from prozchain_discovery.net.sockets import initiated_locally
from prozchain_discovery.simultaneous import SimultaneousConnect
from prozchain_discovery.wire.framing import encode_uvarint
from tests.netutil import LOOP, Net, cfg, wait_until

pytestmark = pytest.mark.trio


@dataclass
class Peer:
    host: IHost
    hp: HolepunchService
    bus: EventBus
    proto: CircuitV2Protocol
    relay_addr: multiaddr.Multiaddr | None = None  # set on B: the relay it dials A through
    simultaneous: SimultaneousConnect | None = None

    @property
    def id(self) -> ID:
        return self.host.get_id()


async def _peer(net: Net, stack: AsyncExitStack, nat: str = "port_restricted", enabled: bool = True) -> Peer:
    host = await net.host()
    bus, metrics = EventBus(), Metrics()
    tracker = ConnectionTracker(host, bus, metrics, min_peers=1, static_ids=set())
    hp = HolepunchService(host, bus=bus, metrics=metrics, relay_close_grace=0.2, enabled=enabled,
                          params=HolepunchParams(backoff_base=30.0))
    host.get_network().register_notifee(tracker.notifee)
    host.set_stream_handler(PROTOCOL_ID, hp.handle)  # type: ignore[arg-type]
    bus.publish(NatStatusChanged(NatStatus(nat_type=nat)))
    proto = CircuitV2Protocol(host)
    await stack.enter_async_context(background_trio_service(proto))
    peer = Peer(host, hp, bus, proto)
    peer.simultaneous = SimultaneousConnect(host, bus=bus, metrics=metrics)
    return peer


@asynccontextmanager
async def relayed_pair(a_nat: str = "port_restricted", b_nat: str = "port_restricted", *,
                       both_dial: bool = False, hp_enabled: bool = True,
                       resolve: bool | None = None) -> AsyncIterator[tuple[Peer, Peer]]:
    """R relays; A reserves on R; B dials A through R (so A accepted the relayed connection).

    ``both_dial``: B reserves too, and A and B dial each other through R at the same moment (the
    crowd's case: each learned the other's circuit address at once)."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.host()
        limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=8, max_reservations=64,
                             reservation_ttl=3600)
        await stack.enter_async_context(background_trio_service(CircuitV2Protocol(relay, limits=limits,
                                                                                  allow_hop=True)))
        r_addr = multiaddr.Multiaddr(f"{relay.get_addrs()[0]}/p2p/{relay.get_id()}")
        a = await _peer(net, stack, a_nat, hp_enabled)
        b = await _peer(net, stack, b_nat, hp_enabled)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.hp.run)
            nursery.start_soon(b.hp.run)
            await a.host.connect(info_from_p2p_addr(r_addr))
            s = await a.host.new_stream(relay.get_id(), [HOP])
            assert await CircuitV2Transport(a.host, a.proto, RelayConfig()).reserve(s, relay.get_id(), nursery)
            with contextlib.suppress(Exception):
                await s.close()
            await b.host.connect(info_from_p2p_addr(r_addr))
            b.relay_addr = r_addr
            if both_dial:
                a.relay_addr = r_addr
                s = await b.host.new_stream(relay.get_id(), [HOP])
                assert await CircuitV2Transport(b.host, b.proto, RelayConfig()).reserve(s, relay.get_id(), nursery)
                with contextlib.suppress(Exception):
                    await s.close()
                for p in (a, b):
                    assert p.simultaneous is not None
                    if hp_enabled if resolve is None else resolve:
                        nursery.start_soon(p.simultaneous.run)
                async with trio.open_nursery() as dials:
                    dials.start_soon(dial_through_relay, b, a)
                    dials.start_soon(dial_through_relay, a, b)
            else:
                await dial_through_relay(b, a)
            try:
                yield a, b
            finally:
                nursery.cancel_scope.cancel()


async def dial_through_relay(b: Peer, a: Peer) -> None:
    """B dials A through the relay B knows (``b.relay_addr``)."""
    dialer = CircuitV2Transport(b.host, b.proto, RelayConfig(roles=RelayRole.STOP))
    await dialer.dial(multiaddr.Multiaddr(f"{b.relay_addr}/p2p-circuit/p2p/{a.id}"))


async def test_relayed_connection_is_upgraded_to_direct_and_the_relay_leg_closes():
    async with relayed_pair() as (a, b):
        await wait_until(lambda: a.hp.has_direct_connection(b.id) and b.hp.has_direct_connection(a.id), 20)
        await wait_until(lambda: isinstance(a.hp.result(b.id), HolepunchResult), 10)
        res = a.hp.result(b.id)
        # Usually the first attempt; on a loaded machine the loopback simultaneous open can lose
        # its first race (seen in the classify-first test), and a second attempt is the design.
        assert isinstance(res, HolepunchResult) and res.outcome == "direct" and 1 <= res.attempts <= 3
        assert 1 <= len(res.rtts) <= res.attempts and res.time_to_direct is not None
        assert a.hp.metrics.get("holepunch_successes") == 1
        # only A (which accepted the relayed connection) drove: B never opened a DCUtR session
        assert b.hp.metrics.get("holepunch_attempts") == 0 and b.hp.result(a.id) is None
        # migrated: the relayed connection closes after the grace, the direct one stays
        await wait_until(lambda: not a.hp._relayed_conns(b.id) and not b.hp._relayed_conns(a.id), 10)
        assert a.hp.has_direct_connection(b.id)
        st = a.hp.status()["holepunch"]
        assert st["peers"][str(b.id)]["result"] == "direct"


@pytest.mark.parametrize("a_nat,b_nat", [("symmetric", "port_restricted"), ("port_restricted", "symmetric"),
                                         ("symmetric", "symmetric")])
async def test_symmetric_pairs_answer_not_supported_after_one_exchange(a_nat, b_nat):
    async with relayed_pair(a_nat, b_nat) as (a, b):
        await wait_until(lambda: isinstance(a.hp.result(b.id), HolepunchNotSupported)
                         and isinstance(b.hp.result(a.id), HolepunchNotSupported), 20)
        why = a.hp.result(b.id)
        assert isinstance(why, HolepunchNotSupported) and (why.our_nat, why.peer_nat) == (a_nat, b_nat)
        assert a.hp.metrics.get("holepunch_attempts") == 1
        # bounded: asking again does not punch again
        assert isinstance(await a.hp.punch(b.id), HolepunchNotSupported)
        await trio.sleep(0.3)
        assert a.hp.metrics.get("holepunch_attempts") == 1
        assert not a.hp.has_direct_connection(b.id) and a.hp._relayed_conns(b.id)  # stays relayed


async def test_bad_dcutr_streams_never_crash_the_handler():
    async with relayed_pair("symmetric", "symmetric") as (a, b):
        await wait_until(lambda: isinstance(b.hp.result(a.id), HolepunchNotSupported), 20)
        for junk in (encode_uvarint(1 << 20), b"\x05\x08\x64\x12\xff", b"\x02\x08\xac"):
            s = await a.host.new_stream(b.id, [PROTOCOL_ID])  # type: ignore[list-item]
            await s.write(junk)
            with contextlib.suppress(Exception), trio.fail_after(5):
                await s.read(100)  # the handler closes or resets it
            with contextlib.suppress(Exception):
                await s.close()
        await wait_until(lambda: b.hp.metrics.get("holepunch_stream_errors") >= 3, 10)
        assert not b.hp._responding


async def test_the_composition_root_mounts_holepunch():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        svc = await net.node(cfg(min_peers=1))
        assert svc.holepunch_result(svc.host.get_id()) is None
        st = svc.status()
        assert st["holepunch"]["enabled"] and st["holepunch"]["peers"] == {}
        off = replace(cfg(min_peers=1), holepunch=HolepunchSettings(enabled=False))
        svc2 = await net.node(off)
        assert not svc2.holepunch.enabled
    with pytest.raises(Exception, match="attempts"):
        replace(cfg(), holepunch=HolepunchSettings(attempts=0)).validate()
    assert LOOP


async def test_after_the_direct_connection_closes_a_new_relayed_one_is_punched_again():
    """Nothing marks a peer "direct" for good: the punched connection goes, the peer comes back
    through the relay, and the side that accepted it drives a new session."""
    async with relayed_pair() as (a, b):
        await wait_until(lambda: a.hp.metrics.get("holepunch_successes") == 1, 20)
        await wait_until(lambda: not a.hp._relayed_conns(b.id) and a.hp.has_direct_connection(b.id), 10)
        await a.host.get_network().close_peer(b.id)
        await wait_until(lambda: not a.hp._conns(b.id) and not b.hp._conns(a.id), 10)
        assert not a.hp.has_direct_connection(b.id)
        await dial_through_relay(b, a)
        await wait_until(lambda: a.hp.metrics.get("holepunch_successes") == 2, 20)
        await wait_until(lambda: a.hp.has_direct_connection(b.id) and b.hp.has_direct_connection(a.id), 10)
        res = a.hp.result(b.id)
        assert isinstance(res, HolepunchResult) and res.outcome == "direct"
        assert b.hp.metrics.get("holepunch_attempts") == 0


async def test_peers_that_dial_each_other_through_the_relay_at_once_keep_one_circuit_and_one_session():
    """The crowd's first failure mode (#16): A and B dial each other through the relay at the
    same moment. Before: two relayed connections between the pair, both sides accepted one and
    both drove DCUtR, and the overlapping sessions refused each other's CONNECTs until every
    attempt was used. Now both keep the circuit the smaller peer id initiated, and exactly one
    session runs: it goes direct on its first attempt."""
    async with relayed_pair(both_dial=True) as (a, b):
        await wait_until(lambda: a.hp.has_direct_connection(b.id) and b.hp.has_direct_connection(a.id), 20)
        await wait_until(lambda: isinstance(a.hp.result(b.id), HolepunchResult)
                         or isinstance(b.hp.result(a.id), HolepunchResult), 10)
        sessions = [p.hp.result(q.id) for p, q in ((a, b), (b, a))]
        ran = [r for r in sessions if isinstance(r, HolepunchResult)]
        assert len(ran) == 1, sessions
        assert ran[0].outcome == "direct" and ran[0].attempts == 1
        attempts = a.hp.metrics.get("holepunch_attempts") + b.hp.metrics.get("holepunch_attempts")
        assert attempts == 1
        assert a.hp.metrics.get("holepunch_failures") == b.hp.metrics.get("holepunch_failures") == 0
        await wait_until(lambda: not a.hp._relayed_conns(b.id) and not b.hp._relayed_conns(a.id), 10)
        assert a.hp.has_direct_connection(b.id)


async def test_a_driver_that_has_not_classified_its_nat_waits_for_the_verdict_first():
    """#16 item 5: the side that accepted the relayed connection does not punch while its own
    NAT class is unknown (it may be symmetric, and the attempts wasted); it waits for the
    verdict, then punches once it knows."""
    async with relayed_pair("unknown", "port_restricted") as (a, b):
        await trio.sleep(0.5)
        assert a.hp.metrics.get("holepunch_attempts") == 0 and not a.hp.has_direct_connection(b.id)
        a.bus.publish(NatStatusChanged(NatStatus(nat_type="port_restricted")))
        await wait_until(lambda: isinstance(a.hp.result(b.id), HolepunchResult), 20)
        res = a.hp.result(b.id)
        # How many attempts the loopback punch then takes is the punch's business (a loaded
        # machine can lose the first simultaneous open: 2 of 12 runs with 12 at once); what this
        # test holds is that none was made before the verdict, and the session made after it
        # went direct.
        assert isinstance(res, HolepunchResult) and res.outcome == "direct" and res.attempts >= 1


async def test_crossing_circuits_whose_first_connection_was_our_own_dial_still_get_one_driver():
    """Seen in the crowd (#16): both peers' first connection to each other was their own dial
    through the relay, so neither got a PeerConnected for the circuit it accepted (that event
    is per peer, for the first connection), and nobody drove. The second circuit publishes
    DuplicateConnection; the side that accepted the kept circuit (the larger id) drives then."""
    async with relayed_pair(both_dial=True, hp_enabled=False) as (a, b):
        assert len(a.hp._relayed_conns(b.id)) == 2 or len(b.hp._relayed_conns(a.id)) == 2
        for p, q in ((a, b), (b, a)):
            p.hp.enabled = True
            p.hp._on_duplicate(DuplicateConnection(q.id))
        await wait_until(lambda: a.hp.has_direct_connection(b.id) and b.hp.has_direct_connection(a.id), 20)
        await wait_until(lambda: isinstance(a.hp.result(b.id), HolepunchResult)
                         or isinstance(b.hp.result(a.id), HolepunchResult), 10)
        larger, smaller = (a, b) if a.id.to_bytes() > b.id.to_bytes() else (b, a)
        res = larger.hp.result(smaller.id)
        assert isinstance(res, HolepunchResult) and res.outcome == "direct" and res.attempts == 1
        assert smaller.hp.metrics.get("holepunch_attempts") == 0


def _tcp_states(local_port: int, remote_port: int) -> set[str]:
    """Kernel TCP states (/proc/net/tcp, hex codes) of sockets with this local and remote port."""
    out = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == local_port and int(parts[2].split(":")[1], 16) == remote_port:
                out.add(parts[3])
    return out


@pytest.mark.parametrize("abort", [False, True])
async def test_a_punch_connection_that_loses_its_race_does_not_block_the_next_punch(abort):
    """Seen in the crowd lab (#16): a punched TCP connection closed after losing its race (upgrade
    failed, another dial won) left its 4-tuple in TIME_WAIT on the side that closed it, and every
    later punch from the same listen port to the same peer failed with EADDRNOTAVAIL for a
    minute (off loopback; Linux reuses TIME_WAIT on loopback only). The hole puncher now closes a
    losing punch connection with RST (abortive_close): no socket is left on the 4-tuple."""
    from libp2p.transport.tcp.tcp import TCP

    from prozchain_discovery.net.sockets import abortive_close

    accepted: list[trio.SocketStream] = []

    async def serve(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        target = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
        src_sock = trio.socket.socket()
        src_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        src_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await src_sock.bind(("127.0.0.1", 0))  # stands for our listen socket (SO_REUSEPORT)
        src_sock.listen()
        source = src_sock.getsockname()
        raw = await TCP().dial_with_source(target, source)
        await wait_until(lambda: len(accepted) == 1, 5)
        assert _tcp_states(source[1], port) == {"01"}  # ESTABLISHED
        if abort:
            assert abortive_close(raw)
        await raw.close()  # we close first: the 4-tuple stays ours (FIN_WAIT/TIME_WAIT)...
        await wait_until(lambda: "01" not in _tcp_states(source[1], port), 5)
        if abort:
            assert _tcp_states(source[1], port) == set()  # ... unless the close was a reset
        else:
            assert _tcp_states(source[1], port) & {"04", "05", "06"}  # FIN_WAIT1/2, TIME_WAIT
        src_sock.close()
        nursery.cancel_scope.cancel()


async def test_two_circuits_become_one_the_same_on_both_sides_after_their_streams_end(monkeypatch):
    """Simultaneous relayed dials (#16 item 2): both sides keep the circuit the smaller peer id
    initiated. The losing circuit is retired, not cut: a stream the peer opened on it right
    after dialing (js-libp2p dials a second circuit, then runs PEX on it) finishes first."""
    import prozchain_discovery.simultaneous as simultaneous

    monkeypatch.setattr(simultaneous, "RETIRE_GRACE", 0.2)
    async with relayed_pair(both_dial=True, hp_enabled=False, resolve=True) as (a, b):
        smaller, larger = (a, b) if a.id.to_bytes() < b.id.to_bytes() else (b, a)
        loser = [c for c in larger.hp._relayed_conns(smaller.id) if initiated_locally(c)]
        assert len(loser) == 1
        stream = await loser[0].new_stream()  # a stream the larger id opened on its own circuit
        await trio.sleep(0.6)
        assert len(larger.hp._relayed_conns(smaller.id)) == 2  # still open: it carries a stream
        await stream.reset()
        await wait_until(lambda: len(larger.hp._relayed_conns(smaller.id)) == 1
                         and len(smaller.hp._relayed_conns(larger.id)) == 1, 10)
        kept_l, kept_s = larger.hp._relayed_conns(smaller.id)[0], smaller.hp._relayed_conns(larger.id)[0]
        assert initiated_locally(kept_s) and not initiated_locally(kept_l)  # the smaller id's dial
        assert larger.simultaneous is not None and smaller.simultaneous is not None
        assert (larger.simultaneous.metrics.get("simultaneous_connects_resolved")
                + smaller.simultaneous.metrics.get("simultaneous_connects_resolved")) >= 1
