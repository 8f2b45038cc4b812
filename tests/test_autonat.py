"""AutoNAT v2 between real py-libp2p hosts on loopback (nat/autonat.py).

The server dials back from a throw-away host on a new connection; the client believes only its
nonce. A request aimed at a third party's address must be paid for first, and one that is not
paid never reaches the third party. Loopback is a private network, so these nodes run with
``autonat_allow_private`` (the switch a lab or test network needs).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from prozchain_discovery.addrs import strip_p2p
from prozchain_discovery.config import NatSettings
from prozchain_discovery.events import ObservedAddress, PeerConnected
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.nat.autonat_core import ProbeOutcome
from prozchain_discovery.nat.status import Reachability
from prozchain_discovery.net.frames import read_frame
from prozchain_discovery.service import DiscoveryService
from prozchain_discovery.wire.autonat import (
    DIAL_BACK_PROTOCOL,
    DIAL_REQUEST_PROTOCOL,
    MAX_MESSAGE,
    DialBack,
    DialDataRequest,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decode_message,
    encode_dial_back,
    frame_message,
)
from prozchain_discovery.wire.framing import encode_uvarint
from tests.conftest import identity
from tests.netutil import Net, addr_of, cfg, closed_port, wait_until

pytestmark = [pytest.mark.network]


def _cfg(*, bootstrap: tuple[str, ...] = (), confirmations: int = 3, min_peers: int = 1, client: bool = True):
    c = cfg(bootstrap=bootstrap, min_peers=min_peers)
    return replace(c, nat=NatSettings(autonat_allow_private=True, autonat_confirmations=confirmations,
                                      autonat_client=client, autonat_dial_back_timeout=5.0))


async def _raw_host(stack: AsyncExitStack, ip: str = "127.0.0.1"):
    listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
    h = make_host(listen_addrs=listen)
    await stack.enter_async_context(run_host(h, listen))
    return h


async def _node_at(stack: AsyncExitStack, ip: str, config) -> DiscoveryService:
    listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
    h = make_host(listen_addrs=listen)
    await stack.enter_async_context(run_host(h, listen))
    return await stack.enter_async_context(DiscoveryService(h, config).run())


async def _request(host, server, payload: bytes) -> tuple[object, object]:
    """Open a dial-request stream, write raw bytes, read one message (or the error)."""
    stream = await host.new_stream(server.local_id, [DIAL_REQUEST_PROTOCOL])
    await stream.write(payload)
    try:
        with trio.fail_after(20):
            return decode_message(await read_frame(stream, MAX_MESSAGE)), stream
    except trio.TooSlowError:
        raise
    except Exception as exc:
        return exc, stream


async def test_the_server_dials_back_on_a_new_connection_with_the_nonce():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg(client=False))
        client = await net.node(_cfg(bootstrap=(addr_of(server),), client=False))
        await wait_until(lambda: server.local_id in client.connected, timeout=20)
        inbound: list[PeerConnected] = []
        client.bus.subscribe(PeerConnected, lambda ev: inbound.append(ev) if not ev.outbound else None)
        outcome = await client.autonat.probe(server.local_id, addr_of(client))
        assert outcome is ProbeOutcome.REACHABLE
        # The nonce came over a connection the server's dial-back host opened: another peer id,
        # not the connection the client had opened to the server.
        assert inbound and all(ev.peer_id != server.local_id for ev in inbound)
        assert client.metrics.get("autonat_dial_backs_received", result="ok") == 1
        assert server.metrics.get("autonat_dial_backs", result="ok") == 1


async def test_an_address_where_nothing_listens_is_unreachable():
    """py-libp2p's stock AutoNAT answered over the open connection and said PUBLIC here."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg(client=False))
        client = await net.node(_cfg(bootstrap=(addr_of(server),), client=False))
        await wait_until(lambda: server.local_id in client.connected, timeout=20)
        outcome = await client.autonat.probe(server.local_id, closed_port())
        assert outcome is ProbeOutcome.UNREACHABLE
        assert server.metrics.get("autonat_dial_backs", result="dial_error") == 1


async def test_three_servers_confirm_the_node_public_and_nat_status_says_so():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        servers = [await net.node(_cfg(client=False)) for _ in range(3)]
        client = await net.node(_cfg(bootstrap=tuple(addr_of(s) for s in servers), min_peers=3))
        await wait_until(lambda: client.nat.status_value.reachability is Reachability.PUBLIC, timeout=60)
        st = client.status()
        assert st["nat"]["reachability"] == "public"
        (line,) = [e for e in st["nat"]["evidence"] if e.startswith("autonat")]
        assert str(strip_p2p(client.host.get_addrs()[0])) in line and "confirmed by 3 servers" in line
        assert st["autonat"]["addrs"][0]["confirmed_by"] and client.metrics.get("autonat_probes", result="reachable") >= 3


async def test_a_dial_back_aimed_at_a_third_party_is_refused_unless_paid_and_never_reaches_it():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg(client=False))
        victim = await _node_at(stack, "127.0.0.2", _cfg(client=False))
        attacker = await _raw_host(stack)
        await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(server))))
        target = str(strip_p2p(victim.host.get_addrs()[0]))
        assert "/ip4/127.0.0.2/" in target
        req = DialRequest((multiaddr.Multiaddr(target).to_bytes(),), 12345)
        msg, stream = await _request(attacker, server, frame_message(req))
        assert isinstance(msg, DialDataRequest) and msg.addr_idx == 0
        assert 30_000 <= msg.num_bytes <= 100_000
        await stream.reset()  # the attacker will not pay
        await wait_until(lambda: server.metrics.get("autonat_dial_backs", result="unpaid") == 1, timeout=20)
        await trio.sleep(1.0)
        assert victim.connected_count() == 0
        assert not victim.host.get_network().get_connections()
        assert server.metrics.get("autonat_dial_backs", result="ok") == 0


async def test_garbage_oversized_and_flooding_requests_are_refused_and_the_server_lives_on():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg(client=False))
        raw = await _raw_host(stack)
        await raw.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(server))))
        # Announced 1 MiB: refused on the length prefix, before a body byte is read.
        err, _ = await _request(raw, server, encode_uvarint(1 << 20) + b"x" * 100)
        assert isinstance(err, Exception)
        err, _ = await _request(raw, server, encode_uvarint(5) + b"\xff\xff\xff\xff\xff")
        assert isinstance(err, Exception)
        # A response where a request belongs.
        err, _ = await _request(raw, server, frame_message(DialResponse(ResponseStatus.OK)))
        assert isinstance(err, Exception)
        assert server.metrics.get("autonat_dial_backs", result="bad_request") == 3
        # The per-peer limit (3 a minute) was used up by those; the next is rejected unread.
        msg, _ = await _request(raw, server, frame_message(DialRequest((b"junk",), 1)))
        assert isinstance(msg, DialResponse) and msg.status is ResponseStatus.E_REQUEST_REJECTED
        # Another peer is still served: a DNS address is not something we dial -> refused.
        other = await _raw_host(stack)
        await other.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(server))))
        dns = multiaddr.Multiaddr("/dns4/example.com/tcp/1").to_bytes()
        msg, _ = await _request(other, server, frame_message(DialRequest((dns,), 2)))
        assert isinstance(msg, DialResponse) and msg.status is ResponseStatus.E_DIAL_REFUSED


async def test_a_server_that_claims_a_dial_back_without_our_nonce_is_not_believed():
    """A liar answers OK at once; a spoofer opens dial-back streams with nonces it made up."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        liar = await _raw_host(stack)

        async def lie(stream):
            await read_frame(stream, MAX_MESSAGE)
            await stream.write(frame_message(DialResponse(ResponseStatus.OK, 0, DialStatus.OK)))
            await stream.close()

        liar.set_stream_handler(DIAL_REQUEST_PROTOCOL, lie)
        client = await net.node(_cfg(client=False))
        await client.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(
            f"{liar.get_addrs()[0]}")))
        outcome = await client.autonat.probe(liar.get_id(), str(strip_p2p(client.host.get_addrs()[0])))
        assert outcome is ProbeOutcome.INCONCLUSIVE
        assert client.metrics.get("autonat_dial_back_missing") == 1
        # A dial-back stream with a nonce nobody is waiting for is reset.
        spoofer = await _raw_host(stack)
        await spoofer.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(client))))
        s = await spoofer.new_stream(client.local_id, [DIAL_BACK_PROTOCOL])
        await s.write(encode_dial_back(DialBack(42)))
        with pytest.raises(Exception):
            with trio.fail_after(10):
                await read_frame(s, 1024)
        await wait_until(lambda: client.metrics.get("autonat_dial_backs_received", result="unknown_nonce") == 1)


async def test_our_client_pays_dial_data_for_another_ip_and_our_server_counts_it():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg(client=False))
        client = await net.node(_cfg(bootstrap=(addr_of(server),), client=False))
        await wait_until(lambda: server.local_id in client.connected, timeout=20)
        elsewhere = closed_port().replace("127.0.0.1", "127.0.0.2")
        assert await client.autonat.probe(server.local_id, elsewhere) is ProbeOutcome.UNREACHABLE
        assert 30_000 <= client.metrics.get("autonat_dial_data_paid") <= 100_000
        assert server.metrics.get("autonat_dial_backs", result="dial_error") == 1


async def test_an_observed_ip_is_probed_only_once_two_peers_report_it():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        node = await net.node(_cfg(client=False))
        port = node.host.get_addrs()[0].value_for_protocol("tcp")
        seen = multiaddr.Multiaddr("/ip4/127.0.0.9/tcp/5555")
        node.bus.publish(ObservedAddress(seen, identity(1)[1]))
        node.bus.publish(ObservedAddress(seen, identity(1)[1]))
        assert f"/ip4/127.0.0.9/tcp/{port}" not in node.autonat.candidates()
        node.bus.publish(ObservedAddress(seen, identity(2)[1]))
        assert f"/ip4/127.0.0.9/tcp/{port}" in node.autonat.candidates()
