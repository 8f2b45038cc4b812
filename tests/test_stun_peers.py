"""STUN served by peers (/prozchain/stun/1.0): found through identify, used for classification."""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack

import multiaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.peerinfo import info_from_p2p_addr

from prozchain_discovery.config import NatSettings
from prozchain_discovery.nat.stun_peers import stun_servers_from_peers
from prozchain_discovery.wire.messages import DecodeError
from prozchain_discovery.wire.pb import stun_service_pb2
from prozchain_discovery.wire.stun_service import STUN_SERVICE_PROTOCOL, StunServiceResponse
from tests.netutil import Net, addr_of, cfg, wait_until


def test_codec_limits():
    ok = StunServiceResponse((("198.51.100.1", 3478),), rfc5780=True)
    assert StunServiceResponse.decode(ok.encode()) == ok
    too_many = stun_service_pb2.StunServiceResponse(addrs=[ok.encode()[2:]] * 5).SerializeToString()
    with pytest.raises(DecodeError):
        StunServiceResponse.decode(too_many)
    tcp = stun_service_pb2.StunServiceResponse(addrs=[multiaddr.Multiaddr("/ip4/1.2.3.4/tcp/5").to_bytes()])
    with pytest.raises(DecodeError, match="udp"):
        StunServiceResponse.decode(tcp.SerializeToString())


@given(st.binary(max_size=400))
def test_garbage_is_a_decode_error(data):
    try:
        StunServiceResponse.decode(data)
    except DecodeError:
        pass


async def test_a_node_finds_stun_at_a_peer_and_classifies_with_it(tmp_path):
    """A node serving STUN says where through /prozchain/stun/1.0; a node with no STUN server
    configured finds it among its peers and classifies (loopback: no NAT → open)."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server_cfg = dataclasses.replace(cfg(min_peers=1), nat=NatSettings(serve_stun_port=34780))
        server = await net.node(server_cfg)
        await wait_until(lambda: server.nat.stun_responder is not None)
        client = await net.node(cfg(bootstrap=(addr_of(server),), min_peers=1))
        await wait_until(lambda: client.nat.status_value.nat_type != "unknown", timeout=20)
        st = client.status()["nat"]
        assert st["nat_type"] == "open" and st["stun_servers_from_peers"] == ["127.0.0.1:34780"]
        assert any("peers serving STUN" in e for e in st["evidence"])
        assert STUN_SERVICE_PROTOCOL in client.host.get_peerstore().get_protocols(server.host.get_id())


async def test_a_peer_pointing_at_a_third_party_is_ignored():
    from prozchain_discovery.nat.stun_peers import serve_stun_service

    async with AsyncExitStack() as stack:
        net = Net(stack)
        liar, asker = await net.host(), await net.host()
        serve_stun_service(liar, lambda: StunServiceResponse((("198.51.100.77", 3478),)))
        await asker.connect(info_from_p2p_addr(multiaddr.Multiaddr(f"{addr_of(liar)}/p2p/{liar.get_id()}")))
        await wait_until(lambda: STUN_SERVICE_PROTOCOL in (asker.get_peerstore().get_protocols(liar.get_id()) or []))
        servers, notes = await stun_servers_from_peers(asker)
        assert servers == [] and "not at 127.0.0.1" in notes[0]
