"""Circuit relay v2 on loopback with real py-libp2p hosts: the relay's limits and its fixed bugs
(relay/hop.py, each shown against upstream first), and a private node reached through a relay
by our Dialer, with a PEX exchange over the relayed connection."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import replace

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.transport.tcp.tcp import TCP

from prozchain_discovery.addrs import is_relayed
from prozchain_discovery.config import RelaySettings
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.relay.hop import GuardedRelayProtocol, relay_limits
from prozchain_discovery.relay.transport import (
    HOP_PROTOCOL,
    CircuitDialer,
    ReservationError,
    reserve,
)
from tests.netutil import LOOP, Net, addr_of, cfg, wait_until

pytestmark = [pytest.mark.network, pytest.mark.slow]

ECHO = "/test/echo/1.0"
DEFAULTS = RelaySettings()


def guarded(host, **changes) -> GuardedRelayProtocol:
    s = replace(DEFAULTS, **changes)
    events: list[str] = []
    proto = GuardedRelayProtocol(
        host,
        relay_limits(reservation_ttl=s.reservation_ttl, max_reservations=s.max_reservations,
                     max_circuits_per_peer=s.max_circuits_per_peer, duration=s.circuit_duration,
                     data=s.circuit_data),
        max_reservations_per_ip=s.max_reservations_per_ip, on_event=events.append,
    )
    proto.events = events  # type: ignore[attr-defined]
    return mount(host, proto)


def upstream(host, **limits) -> CircuitV2Protocol:
    lim = {"duration": 3600, "data": 1 << 30, "max_circuit_conns": 8, "max_reservations": 4,
           "reservation_ttl": 3600, **limits}
    return mount(host, CircuitV2Protocol(host, limits=RelayLimits(**lim), allow_hop=True))


def mount(host, proto):
    """Hop and stop handlers, as relay/server.py registers them (no anyio service)."""
    host.set_stream_handler(HOP_PROTOCOL, proto._handle_hop_stream)
    host.set_stream_handler(STOP_PROTOCOL_ID, proto._handle_stop_stream)
    return proto


def accept_circuits(host) -> None:
    """A client that may be reached through a relay (the stop handler) and echoes."""
    host.set_stream_handler(STOP_PROTOCOL_ID, CircuitV2Protocol(host)._handle_stop_stream)

    async def echo(stream) -> None:
        try:
            while data := await stream.read(65536):
                await stream.write(data)
        except Exception:
            pass

    host.set_stream_handler(ECHO, echo)


def bind_dials(host, ip: str) -> None:
    """Make the host's TCP dials leave from ``ip`` (a relay counts reservations per IP)."""
    for t in host.get_network().transport_manager.get_transports():
        if isinstance(t, TCP):
            original = t._dial_resolved

            async def bound(maddr, source=None, _original=original):
                return await _original(maddr, source=source or (ip, 0))

            t._dial_resolved = bound  # type: ignore[method-assign]


async def client(stack: AsyncExitStack, relay, ip: str | None = None):
    h = make_host(listen_addrs=LOOP)
    if ip is not None:
        bind_dials(h, ip)
    await stack.enter_async_context(run_host(h, LOOP))
    await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(relay))))
    return h


async def raw_hop(host, relay_id: ID, msg: HopMessage) -> HopMessage:
    stream = await host.new_stream(relay_id, [HOP_PROTOCOL])
    try:
        await write_delimited_msg(stream, msg)
        with trio.fail_after(10):
            return await read_delimited_msg(stream, HopMessage)
    finally:
        await stream.close()


def spoof(victim: ID) -> HopMessage:
    return HopMessage(type=HopMessage.RESERVE, peer=CircuitPeerId(id=victim.to_bytes()))


def circuit(relay, target: ID) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(f"{addr_of(relay)}/p2p-circuit/p2p/{target}")


async def dial_circuit(dialer_host, relay, target: ID) -> None:
    relay_part = multiaddr.Multiaddr(f"{addr_of(relay)}/p2p-circuit")
    with trio.fail_after(20):
        await CircuitDialer(dialer_host).connect(target, [relay_part])


# ---- fix 1: spoofed reservations ---------------------------------------------------------------
async def test_upstream_lets_a_peer_reserve_in_someone_elses_name():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        upstream(r)
        victim, mallory, dialer = await net.host(), await client(stack, r), await net.host()
        accept_circuits(victim)
        await victim.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(r))))  # it never reserves
        resp = await raw_hop(mallory, r.get_id(), spoof(victim.get_id()))
        assert resp.status == StatusCode.OK  # the bug: granted in the victim's name
        await dial_circuit(dialer, r, victim.get_id())  # ... so strangers reach a peer that never reserved
        assert victim.get_id() in dialer.get_connected_peers()


async def test_our_relay_refuses_a_spoofed_reservation():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r)
        victim, mallory, dialer = await net.host(), await client(stack, r), await net.host()
        accept_circuits(victim)
        await victim.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(r))))
        resp = await raw_hop(mallory, r.get_id(), spoof(victim.get_id()))
        assert resp.status == StatusCode.PERMISSION_DENIED
        assert proto.reservations == {} and "refused:spoofed" in proto.events  # type: ignore[attr-defined]
        with pytest.raises(Exception):
            await dial_circuit(dialer, r, victim.get_id())
        # Naming oneself, or nobody, is fine.
        own = await raw_hop(mallory, r.get_id(), spoof(mallory.get_id()))
        assert own.status == StatusCode.OK and mallory.get_id() in proto.reservations


# ---- fixes 2 and 5: slots never freed; is_open --------------------------------------------------
async def test_upstream_never_frees_slots(caplog):
    caplog.set_level(logging.ERROR, logger="libp2p.relay.circuit_v2.protocol")
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = upstream(r, max_reservations=2)
        mallory = await client(stack, r)
        made_up = ID(b"\x00\x24\x08\x01\x12\x20" + bytes(range(32)))
        await raw_hop(mallory, r.get_id(), spoof(made_up))  # refused, but the slot is taken ...
        assert made_up in proto.resource_manager._reservations
        assert any("is_open" in rec.getMessage() for rec in caplog.records)  # ... on an AttributeError
        async with AsyncExitStack() as leaving:
            gone = await client(leaving, r)
            assert (await reserve(gone, r.get_id(), 10)).expire > 0
            await gone.disconnect(r.get_id())
        await wait_until(lambda: gone.get_id() not in r.get_connected_peers(), 10)
        honest = await client(stack, r)
        with pytest.raises(ReservationError):  # two slots held by nobody: the relay is full
            await reserve(honest, r.get_id(), 10)


async def test_our_relay_frees_slots_of_departed_clients_and_refused_reservations():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r, max_reservations=2)
        mallory = await client(stack, r)
        made_up = ID(b"\x00\x24\x08\x01\x12\x20" + bytes(range(32)))
        resp = await raw_hop(mallory, r.get_id(), spoof(made_up))
        assert resp.status == StatusCode.PERMISSION_DENIED and proto.reservations == {}
        for _ in range(2):
            async with AsyncExitStack() as leaving:
                gone = await client(leaving, r)
                await reserve(gone, r.get_id(), 10)
                await gone.disconnect(r.get_id())
            await wait_until(lambda g=gone: g.get_id() not in r.get_connected_peers(), 10)
        honest = await client(stack, r)
        assert (await reserve(honest, r.get_id(), 10)).expire > 0
        assert list(proto.reservations) == [honest.get_id()]


# ---- limits: 128 reservations, 8 per IP ---------------------------------------------------------
async def test_the_ninth_reservation_from_one_ip_is_refused():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r)
        clients = [await client(stack, r) for _ in range(9)]
        for c in clients[:8]:
            await reserve(c, r.get_id(), 10)
        with pytest.raises(ReservationError) as refused:
            await reserve(clients[8], r.get_id(), 10)
        assert refused.value.status == StatusCode.RESERVATION_REFUSED
        assert "refused:per_ip" in proto.events  # type: ignore[attr-defined]
        # Another address is another budget.
        other = await client(stack, r, ip="127.0.0.2")
        assert (await reserve(other, r.get_id(), 10)).expire > 0
        assert proto.ip_of[other.get_id()] == "127.0.0.2"
        # Renewing an existing reservation is not a new one.
        await reserve(clients[0], r.get_id(), 10)


async def test_the_129th_reservation_is_refused():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r)
        per_ip = DEFAULTS.max_reservations_per_ip
        clients = []
        for i in range(DEFAULTS.max_reservations + 1):
            clients.append(await client(stack, r, ip=f"127.0.1.{1 + i // per_ip}"))

        async def one(c) -> None:
            await reserve(c, r.get_id(), 30)

        async with trio.open_nursery() as nursery:
            for c in clients[:-1]:
                nursery.start_soon(one, c)
        assert len(proto.reservations) == 128
        with pytest.raises(ReservationError) as refused:
            await reserve(clients[-1], r.get_id(), 30)  # its IP has room: the relay is full
        assert refused.value.status == StatusCode.RESERVATION_REFUSED
        assert "refused:relay_full" in proto.events  # type: ignore[attr-defined]


# ---- limits on a relayed connection: 128 KiB, 2 minutes ----------------------------------------
async def _echo(stream, nbytes: int) -> int:
    """Write 4 KiB chunks to an echo stream and read each back, up to ``nbytes``; the bytes
    echoed before the circuit was cut (or all of them)."""
    echoed = 0
    chunk = b"x" * 4096
    with trio.fail_after(30):
        try:
            while echoed < nbytes:
                await stream.write(chunk)
                got = 0
                while got < len(chunk):
                    data = await stream.read(len(chunk) - got)
                    if not data:
                        raise EOFError
                    got += len(data)
                echoed += got
        except Exception:
            pass
    return echoed


async def _relayed_pair(stack: AsyncExitStack, net: Net, r):
    target = await client(stack, r)
    accept_circuits(target)
    await reserve(target, r.get_id(), 10)
    dialer = await net.host()
    await dial_circuit(dialer, r, target.get_id())
    return target, dialer


async def test_a_circuit_past_128_kib_is_cut():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r)
        target, dialer = await _relayed_pair(stack, net, r)
        stream = await dialer.new_stream(target.get_id(), [ECHO])
        echoed = await _echo(stream, 64 * 4096)  # 256 KiB each way if nothing stopped it
        assert 0 < echoed < DEFAULTS.circuit_data  # each direction has 128 KiB, overheads included
        await wait_until(lambda: target.get_id() not in dialer.get_connected_peers(), 20)
        await wait_until(lambda: "cut:data" in proto.events, 10)  # type: ignore[attr-defined]


async def test_upstream_keeps_an_idle_circuit_past_its_duration():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        upstream(r, duration=1)
        target, dialer = await _relayed_pair(stack, net, r)
        await trio.sleep(3)
        assert target.get_id() in dialer.get_connected_peers()  # the bug: nothing passed, nothing checked


async def test_our_relay_cuts_an_idle_circuit_at_its_duration():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        proto = guarded(r, circuit_duration=1)
        target, dialer = await _relayed_pair(stack, net, r)
        await wait_until(lambda: target.get_id() not in dialer.get_connected_peers(), 20)
        assert proto.events.count("cut:duration") == 1  # type: ignore[attr-defined]
        assert r.get_id() in target.get_connected_peers()  # the relay connection itself stays
        await wait_until(lambda: proto.circuits_open == 0)
        assert proto._ends == {} and proto._counted_on == {}  # no bookkeeping left behind


# ---- fix 6: one circuit's end closed the next circuit to the same peer ------------------------
async def _second_circuit_after_the_first_ends(stack: AsyncExitStack, net: Net, r):
    target, first = await _relayed_pair(stack, net, r)
    second = await net.host()
    await dial_circuit(second, r, target.get_id())
    await first.disconnect(target.get_id())
    await wait_until(lambda: first.get_id() not in target.get_connected_peers(), 10)
    return target, second


async def echo_once(host, target: ID) -> bytes:
    with trio.fail_after(10):
        stream = await host.new_stream(target, [ECHO])
        await stream.write(b"ping")
        data = await stream.read(4)
        await stream.close()
    return data


async def test_upstream_closes_a_circuit_when_an_older_one_to_the_same_peer_ends():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        upstream(r)
        target, second = await _second_circuit_after_the_first_ends(stack, net, r)
        await wait_until(lambda: target.get_id() not in second.get_connected_peers(), 10)


async def test_our_relay_keeps_each_circuit_to_the_end_of_its_own_streams():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        guarded(r)
        target, second = await _second_circuit_after_the_first_ends(stack, net, r)
        await trio.sleep(0.5)
        assert await echo_once(second, target.get_id()) == b"ping"


# ---- the whole thing: autorelay, advertised circuit address, our Dialer, PEX over the circuit ----
def relay_cfg(c, **changes):
    return replace(c, relay=replace(c.relay, **changes))


async def test_a_private_node_is_reached_through_a_relay_and_answers_pex_over_it():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1, pex=True), serve="on"))
        await wait_until(lambda: relay.relay_server.serving, 5)
        private = await net.node(cfg(bootstrap=(addr_of(relay),), min_peers=1, pex=True))
        # Reachability unknown (no STUN here): autorelay reserves and advertises the circuit.
        await wait_until(lambda: private.autorelay.published, 20)
        (caddr,) = private.autorelay.published
        assert str(caddr) == f"{addr_of(relay)}/p2p-circuit"
        assert caddr in private.addresses.advertised()
        st = private.status()["autorelay"]
        assert st["relays"][0]["peer_id"] == str(relay.local_id) and st["circuit_addrs"] == [str(caddr)]
        assert relay.status()["relay_server"]["reservations"] == 1
        assert relay.metrics.get("relay_reservations_served", kind="reservations") == 1

        other = await net.node(cfg(min_peers=1, pex=True))
        assert await other.dial(private.local_id, [caddr], PeerSource.PEX)
        cp = other.connected[private.local_id]
        assert is_relayed(multiaddr.Multiaddr(cp.addr)) or "p2p-circuit" in cp.addr
        assert cp.outbound
        sent = other.metrics.get("pex_requests_sent")
        await other.request_peers(private.local_id)
        assert other.metrics.get("pex_requests_sent") >= sent + 1  # its PEX loop may ask too
        assert other.metrics.get("pex_requests_failed") == 0
        await wait_until(lambda: sum(private.metrics.get("pex_requests_served", verdict=v)
                                     for v in ("answered", "rate_limited")) >= 1, 10)


async def test_a_relay_that_goes_away_is_replaced_and_its_circuit_address_withdrawn():
    def circuits(private) -> set[str]:
        return {str(a) for a in private.autorelay.published}

    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay_conf = relay_cfg(cfg(min_peers=1), serve="on")
        r2, r3 = await net.node(relay_conf), await net.node(relay_conf)
        private = await net.node(cfg(bootstrap=(addr_of(r2),), min_peers=1))
        await wait_until(lambda: circuits(private) == {f"{addr_of(r2)}/p2p-circuit"}, 20)
        async with AsyncExitStack() as doomed:  # r1 stops when this block ends
            r1 = await net.node(relay_conf, stack=doomed)
            assert await private.dial(r1.local_id, [multiaddr.Multiaddr(addr_of(r1))], PeerSource.PEX)
            await wait_until(lambda: len(circuits(private)) == 2, 20)
            assert f"{addr_of(r1)}/p2p-circuit" in circuits(private)
            assert await private.dial(r3.local_id, [multiaddr.Multiaddr(addr_of(r3))], PeerSource.PEX)
            await trio.sleep(0.5)  # r3 is a candidate now, but two reservations are enough
            assert len(circuits(private)) == 2 and r3.status()["relay_server"]["reservations"] == 0
        # r1 is gone (host and service stopped): its reservation goes, r3 takes its place.
        want = {f"{addr_of(r2)}/p2p-circuit", f"{addr_of(r3)}/p2p-circuit"}
        await wait_until(lambda: circuits(private) == want, 20)
        assert not any(str(r1.local_id) in str(a) for a in private.addresses.advertised())
        relays = {r["peer_id"] for r in private.status()["autorelay"]["relays"]}
        assert relays == {str(r2.local_id), str(r3.local_id)}
        assert r3.status()["relay_server"]["reservations"] == 1


async def test_turning_public_drops_the_circuit_address_and_the_record_follows():
    from prozchain_discovery.events import NatStatusChanged
    from prozchain_discovery.nat.status import NatStatus, Reachability

    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1), serve="on"))
        private = await net.node(cfg(bootstrap=(addr_of(relay),), min_peers=1))
        await wait_until(lambda: private.autorelay.published, 20)

        def relay_sees_circuit() -> bool:
            entry = relay.db.get(private.local_id)
            return entry is not None and any("p2p-circuit" in str(a) for a in entry.addrs)

        # Identify-push carries the re-signed record; the relay's book takes the newer one.
        await wait_until(relay_sees_circuit, 10)
        assert relay.metrics.get("records_updated", via="identify_push") >= 1
        signed = private.metrics.get("own_record_signed")
        # What the NAT component publishes when a port mapping appears.
        private.bus.publish(NatStatusChanged(NatStatus(reachability=Reachability.PUBLIC)))
        assert private.autorelay.published == ()
        assert not any(is_relayed(a) for a in private.addresses.advertised())
        assert private.metrics.get("own_record_signed") == signed + 1
        assert private.metrics.get("autorelay_releases", reason="public") == 1
        assert private.status()["autorelay"]["relays"] == []
        # The relay holds the old record until identify-push brings the new one.
        await wait_until(lambda: not relay_sees_circuit(), 10)


async def test_identify_sends_the_record_we_signed_not_one_from_listen_addresses():
    """libp2p_fixes.pin_local_record: py-libp2p re-signs a record whose addresses differ."""
    from libp2p.peer.envelope import unmarshal_envelope
    from libp2p.peer.peerstore import env_to_send_in_RPC

    from prozchain_discovery.libp2p_fixes import pin_local_record
    from prozchain_discovery.records import sign_record

    async with AsyncExitStack() as stack:
        h = await Net(stack).host()
        extra = multiaddr.Multiaddr(f"/ip4/192.0.2.10/tcp/4001/p2p/{h.get_id()}/p2p-circuit")
        ours = sign_record(h.get_id(), [*h.get_addrs(), extra], h.get_private_key())
        h.get_peerstore().set_local_record(unmarshal_envelope(ours))
        sent, _ = env_to_send_in_RPC(h)
        assert sent != ours and extra not in unmarshal_envelope(sent).record().addrs  # stock: replaced
        pin_local_record(h, unmarshal_envelope(ours))
        sent, created = env_to_send_in_RPC(h)
        assert sent == ours and not created


async def test_answers_over_a_relayed_connection_are_small():
    """A relayed connection is limited (128 KiB, 2 min): PEX and bootstrap answers over it carry
    at most ``server.max_answer_over_relay`` records; the same request on a direct connection
    gets the full answer. Observed addresses are not reported over a relay (the socket is the
    relay's)."""
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from prozchain_discovery.config import HolepunchSettings
    from prozchain_discovery.net import exchange
    from prozchain_discovery.records import sign_record, verify_record
    from prozchain_discovery.wire.messages import PEX_PROTOCOL, PexRequest, PexResponse

    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1, pex=True), serve="on"))
        await wait_until(lambda: relay.relay_server.serving, 5)
        # No hole punching here: on loopback it would turn the relayed connection direct at once.
        private = await net.node(replace(cfg(bootstrap=(addr_of(relay),), min_peers=1, pex=True),
                                         holepunch=HolepunchSettings(enabled=False)))
        await wait_until(lambda: private.autorelay.published, 20)
        now = trio.current_time()
        for i in range(30):  # 30 peers with public addresses in distinct /16s
            kp = create_new_key_pair()
            pid = ID.from_pubkey(kp.public_key)
            rec = verify_record(sign_record(pid, [multiaddr.Multiaddr(f"/ip4/{20 + i}.1.2.3/tcp/4001")], kp.private_key))
            private.db.add_record(rec, PeerSource.PEX, now - 3600, source_peer=relay.local_id)
        (caddr,) = private.autorelay.published
        other = await net.node(cfg(min_peers=1))  # no PEX loop of its own: one request, ours
        assert await other.dial(private.local_id, [caddr], PeerSource.PEX)
        data, _stream = await exchange.request(other.host, private.local_id, PEX_PROTOCOL,
                                               PexRequest(other.config.network_id, 50).encode(), 5.0)
        answer = PexResponse.decode(data)
        assert 1 <= len(answer.signed_records) <= private.config.server.max_answer_over_relay
        assert private.metrics.get("answers_over_relay", protocol="pex") == 1
        # The bootstrap answer over the relay: small, and no observed address (the relay's).
        observed_before = dict(other.addresses.observed.counts())
        batch = await other.cascade.bootstrap_request(private.local_id)
        assert batch is not None and len(batch._blobs) <= private.config.server.max_answer_over_relay
        assert private.metrics.get("answers_over_relay", protocol="bootstrap") == 1
        assert other.addresses.observed.counts() == observed_before


async def test_a_peer_listing_an_unreachable_direct_address_is_reached_through_its_relay():
    """A firewalled peer may list a public address nobody can reach beside its circuit address:
    the dialer tries the direct one (half the dial budget at most), then the relay."""
    from prozchain_discovery.config import HolepunchSettings
    from tests.netutil import black_hole, closed_port

    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1), serve="on"))
        await wait_until(lambda: relay.relay_server.serving, 5)
        private = await net.node(replace(cfg(bootstrap=(addr_of(relay),), min_peers=1),
                                         holepunch=HolepunchSettings(enabled=False)))
        await wait_until(lambda: private.autorelay.published, 20)
        (caddr,) = private.autorelay.published
        hole, hole_addr = black_hole()
        with hole:
            for direct in (closed_port(), hole_addr):  # refused at once; never answers
                other = await net.node(cfg(min_peers=1))
                # (one dial budget for both: a black hole taking all of it would fail the dial)
                assert await other.dial(private.local_id, [multiaddr.Multiaddr(direct), caddr], PeerSource.PEX)
                assert "p2p-circuit" in other.connected[private.local_id].addr
                assert other.metrics.get("dial_fallbacks") == 1


# ---- fix 8: a hop stream is read again after its circuit ended (issue #16) ---------------------
async def _bytes_after_the_circuit(relay_proto) -> bytes:
    """B opens a circuit to A through R; A accepts and at once ends it; B's relayed bytes after
    that (not a HopMessage) come back as ... whatever R answers on the hop stream."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        relay_proto(r)
        a = await client(stack, r)

        async def accept_then_end(stream) -> None:
            await read_delimited_msg(stream, StopMessage)
            await write_delimited_msg(stream, StopMessage(type=StopMessage.STATUS, status=StatusCode.OK))
            await stream.close()

        a.set_stream_handler(STOP_PROTOCOL_ID, accept_then_end)
        await reserve(a, r.get_id(), 10)
        b = await client(stack, r)
        s = await b.new_stream(r.get_id(), [HOP_PROTOCOL])
        await write_delimited_msg(s, HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=a.get_id().to_bytes())))
        with trio.fail_after(10):
            assert (await read_delimited_msg(s, HopMessage)).status == StatusCode.OK
        for relayed in (b"relayed", b"\x04\xff\xff\xff\xff"):  # into the circuit A has ended
            await trio.sleep(0.3)
            try:
                await s.write(relayed)
            except Exception:
                break  # R has closed the circuit's stream
        got = b""
        with trio.move_on_after(2):
            try:
                while chunk := await s.read(100):
                    got += chunk
            except Exception:
                pass
        return got


async def test_upstream_reads_a_hop_stream_again_after_its_circuit(caplog):
    """Upstream's hop handler loops over HopMessages: after the circuit it reads the stream
    again, and meets either the peer's relayed bytes ("Error parsing message with type
    'circuit.pb.v2.HopMessage'" in the NAT lab) or the circuit's end, at ERROR either way."""
    caplog.set_level(logging.ERROR, logger="libp2p.relay.circuit_v2.protocol")
    await _bytes_after_the_circuit(upstream)
    assert any(r.getMessage().startswith("Error reading from hop stream") for r in caplog.records)


async def test_our_relay_reads_one_request_per_hop_stream(caplog):
    caplog.set_level(logging.DEBUG)
    assert await _bytes_after_the_circuit(guarded) == b""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "relay" in r.name]


# ---- fix 9: each direction of a circuit has go-libp2p's budget (issue #16) ---------------------
async def _echo_through_a_circuit(relay_proto, nbytes: int) -> int:
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        relay_proto(r)
        target, dialer = await _relayed_pair(stack, net, r)
        stream = await dialer.new_stream(target.get_id(), [ECHO])
        return await _echo(stream, nbytes)


async def test_upstream_counts_both_directions_against_one_budget():
    # 40 KiB each way under a 64 KiB limit: upstream cuts it (80 KiB in all)
    assert await _echo_through_a_circuit(lambda h: upstream(h, data=64 * 1024), 40 * 1024) < 40 * 1024


async def test_our_relay_gives_each_direction_the_budget():
    assert await _echo_through_a_circuit(lambda h: guarded(h, circuit_data=64 * 1024), 40 * 1024) == 40 * 1024


# ---- fix 11: a failed circuit handshake on the STOP side (issue #16) ---------------------------
async def _failed_circuit_handshakes(stop_proto, caplog) -> tuple[bool, list[logging.LogRecord]]:
    """B asks R for circuits to A and sends what no security protocol is; does A keep R?"""
    caplog.set_level(logging.DEBUG)
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        guarded(r)
        a = await client(stack, r)
        proto = stop_proto(a)
        a.set_stream_handler(STOP_PROTOCOL_ID, proto._handle_stop_stream)
        await reserve(a, r.get_id(), 10)
        b = await client(stack, r)
        for _ in range(3):
            s = await b.new_stream(r.get_id(), [HOP_PROTOCOL])
            await write_delimited_msg(s, HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=a.get_id().to_bytes())))
            with trio.fail_after(10):
                assert (await read_delimited_msg(s, HopMessage)).status == StatusCode.OK
            await s.write(b"\x13/multistream/1.0.0\n\x07/bogus\n")
            with trio.move_on_after(5):
                try:
                    while await s.read(100):
                        pass
                except Exception:
                    pass
            await s.reset()
        await trio.sleep(0.5)
        kept = r.get_id() in a.get_connected_peers() and (await reserve(a, r.get_id(), 10)).expire > 0
        if hasattr(proto, "events"):
            assert proto.events.count("stop_failed:handshake") == 3
        return kept, caplog.records


async def test_upstream_logs_a_failed_circuit_handshake_as_an_error(caplog):
    kept, records = await _failed_circuit_handshakes(CircuitV2Protocol, caplog)
    assert kept
    assert any(r.levelno == logging.ERROR and "Error handling stop stream" in r.getMessage() for r in records)


async def test_a_failed_circuit_handshake_resets_its_stream_only(caplog):
    kept, records = await _failed_circuit_handshakes(guarded, caplog)
    assert kept
    assert not [r for r in records if r.levelno >= logging.WARNING and "relay" in r.name]


# ---- issue #16: what ate a fresh circuit's budget: AutoNAT v2 dial data -----------------------
async def test_no_autonat_dial_data_over_a_relayed_connection():
    """Two NATed peers meeting through a relay asked each other for AutoNAT v2 dial-backs: the
    server sees the relay's IP, so it asks for 30-100 kB of dial data first, paid over the
    circuit (measured on loopback: 100 kB one way and 38 kB the other within 0.3 s; 128 KiB
    is the whole budget). Neither side asks, and a server refuses, over a relayed connection."""
    from prozchain_discovery.config import HolepunchSettings
    from prozchain_discovery.net.frames import read_frame
    from prozchain_discovery.wire.autonat import (
        DIAL_REQUEST_PROTOCOL,
        MAX_MESSAGE,
        DialRequest,
        decode_message,
        frame_message,
    )

    def natted(c):
        c = replace(c, holepunch=HolepunchSettings(enabled=False))  # stay relayed on loopback
        return replace(c, nat=replace(c.nat, autonat_allow_private=True))  # loopback addresses count

    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1), serve="on"))
        await wait_until(lambda: relay.relay_server.serving, 5)
        private = await net.node(natted(cfg(bootstrap=(addr_of(relay),), min_peers=1)))
        await wait_until(lambda: private.autorelay.published, 20)
        (caddr,) = private.autorelay.published
        other = await net.node(natted(cfg(min_peers=1)))
        assert await other.dial(private.local_id, [caddr], PeerSource.PEX)
        await trio.sleep(3)  # the client looked for servers at once (identify over a relay is not deferred)
        for node in (private, other):
            assert node.metrics.get("autonat_dial_data_paid") == 0
        assert relay.metrics.get("relay_circuits_cut", reason="data") == 0
        # A client that asks anyway is refused before any dial data.
        stream = await other.host.new_stream(private.local_id, [DIAL_REQUEST_PROTOCOL])
        await stream.write(frame_message(DialRequest((multiaddr.Multiaddr("/ip4/198.51.100.9/tcp/4001").to_bytes(),), 7)))
        with trio.fail_after(10):
            answer = decode_message(await read_frame(stream, MAX_MESSAGE))
        assert getattr(answer, "status", None) is not None and answer.status.name == "E_REQUEST_REJECTED"
        assert private.metrics.get("autonat_dial_backs", result="over_relay") == 1


# ---- issue #16: a circuit given up mid-handshake never costs the connection to the relay -------
async def test_circuits_given_up_at_any_moment_keep_the_relay_connections():
    """A and B hold reservations on R and dial each other through it at once, each giving up at
    a random moment of the circuit's handshake (a hole punch that won, a dial timeout), 50
    times. Stock py-libp2p lost A's or B's connection to R within 2-19 rounds in each of 5 runs
    (a cancelled write left Noise's nonce ahead of the wire; the deterministic case is
    test_libp2p_fixes' test_stock_yamux_loses_the_connection_when_a_writer_is_cancelled);
    none may go now, and the reservations still answer."""
    import random

    rng = random.Random(16)
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        guarded(r)
        a, b = await client(stack, r), await client(stack, r)
        for h in (a, b):
            guarded(h)  # its stop handler, as RelayServer registers it on every node
            await reserve(h, r.get_id(), 10)
        relay_part = multiaddr.Multiaddr(f"{addr_of(r)}/p2p-circuit")

        async def dial(x, y, give_up_after: float) -> None:
            with trio.move_on_after(give_up_after):
                try:
                    await CircuitDialer(x).connect(y.get_id(), [relay_part])
                except Exception:
                    pass

        for _ in range(50):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, a, b, rng.uniform(0, 0.03))
                nursery.start_soon(dial, b, a, rng.uniform(0, 0.03))
            await trio.sleep(0.05)
            for x, y in ((a, b), (b, a)):
                for conn in list(x.get_network().get_connections(y.get_id())):
                    await conn.close()
            assert r.get_id() in a.get_connected_peers() and r.get_id() in b.get_connected_peers()
        for h in (a, b):
            assert (await reserve(h, r.get_id(), 10)).expire > 0
