"""PEX on a real 20-node loopback network: every node knows only one bootstrap node, whose
answers are capped small, so PEX is what spreads the addresses."""

from __future__ import annotations

import contextlib
from contextlib import AsyncExitStack
from dataclasses import replace

import pytest
import trio

from prozchain_discovery.net.frames import read_frame
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.wire.framing import encode_frame
from prozchain_discovery.wire.messages import (
    PEX_PROTOCOL,
    PexRequest,
    PexResponse,
)
from tests.conftest import identity
from tests.netutil import Net, addr_of, cfg, wait_until

pytestmark = [pytest.mark.network, pytest.mark.slow]

N = 20
MIN_PEERS = 5


async def test_twenty_nodes_reach_min_peers_through_pex():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot = await net.node(cfg(min_peers=1, answer=2, pex=True))
        boot_addr = addr_of(boot)
        c = cfg(bootstrap=(boot_addr,), min_peers=MIN_PEERS, answer=2, pex=True,
                target_outbound=MIN_PEERS)
        nodes = [await net.node(c) for _ in range(N)]
        took = await wait_until(lambda: all(n.connected_count() >= MIN_PEERS for n in nodes), timeout=45)
        pex_learned = sum(n.metrics.get("records_accepted", via="pex") for n in nodes)
        boot_learned = sum(n.metrics.get("records_accepted", via="bootstrap") for n in nodes)
        print(f"\n{N} nodes reached {MIN_PEERS} peers in {took:.2f} s; records via pex={pex_learned}, "
              f"via bootstrap={boot_learned}")
        assert pex_learned > boot_learned
        # At most 2 records per bootstrap answer: without PEX nodes could not reach 5 peers
        # unless they were dialed; check PEX-sourced connections exist.
        assert any(cp.source is PeerSource.PEX for n in nodes for cp in n.connected.values())
        assert max(n.metrics.get("records_rejected") for n in nodes) == 0


async def test_rate_limited_requester_is_told_when_to_come_back():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        c = cfg(min_peers=1, pex=True)
        c = replace(c, pex=replace(c.pex, exchange_interval=30.0))
        a = await net.node(c)
        raw = await net.host(identity(960)[0])
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        await raw.connect(info_from_p2p_addr(Multiaddr(addr_of(a))))

        async def ask() -> PexResponse:
            s = await raw.new_stream(a.local_id, [PEX_PROTOCOL])
            await s.write(encode_frame(PexRequest("prozchain-test", 10).encode()))
            with trio.fail_after(10):
                return PexResponse.decode(await read_frame(s))

        first = await ask()
        assert first.status == 0
        second = await ask()
        assert second.status == 2 and 25_000 < second.retry_after_ms <= 30_001
        await ask()
        await ask()  # the third RATE_LIMITED within one interval marks it abusive
        # -> disconnected
        await wait_until(lambda: raw.get_id() not in a.host.get_connected_peers(), timeout=10)
        assert a.metrics.get("pex_requests_served", verdict="abusive") == 1
        # It comes back at once with the same identity: refused before any work, on both protocols.
        assert a.metrics.get("bans", reason="ignored_rate_limit") == 1
        again = await net.host(identity(960)[0])  # a new process, the same key
        await again.connect(info_from_p2p_addr(Multiaddr(addr_of(a))))
        # Closed as soon as it is up (a connection gater's job), or, if a stream races that,
        # the stream is reset before a byte of it is read and its connection closed.
        served = a.metrics.get("pex_requests_served")
        with trio.move_on_after(3), contextlib.suppress(Exception):
            s = await again.new_stream(a.local_id, [PEX_PROTOCOL])
            await s.write(encode_frame(PexRequest("prozchain-test", 10).encode()))
            await read_frame(s)
        await wait_until(lambda: a.metrics.get("refused_banned") + a.metrics.get("banned_connections_closed") >= 1,
                         timeout=10)
        assert a.metrics.get("pex_requests_served") == served
        assert a.status()["bans"]["banned_peers"] == 1


async def test_wrong_network_pex():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        a = await net.node(cfg(min_peers=1, pex=True))
        raw = await net.host()
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        await raw.connect(info_from_p2p_addr(Multiaddr(addr_of(a))))
        s = await raw.new_stream(a.local_id, [PEX_PROTOCOL])
        await s.write(encode_frame(PexRequest("other-net", 10).encode()))
        with trio.fail_after(10):
            resp = PexResponse.decode(await read_frame(s))
        assert resp.status == 1 and not resp.signed_records
