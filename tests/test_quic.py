"""QUIC next to TCP: listened on, dialed, in our signed record, and dialed from the listen socket."""

from __future__ import annotations

import socket
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import PeerInfo

from prozchain_discovery.addresses.local import LocalAddresses
from prozchain_discovery.addrs import strip_p2p
from prozchain_discovery.events import EventBus
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.listen import listen_problem
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.net.exchange import observed_multiaddr
from prozchain_discovery.records import verify_record

pytestmark = pytest.mark.network

TCP = "/ip4/127.0.0.1/tcp/0"
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


def _mas(*texts: str) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(t) for t in texts]


def _quic_addrs(host: Any) -> list[multiaddr.Multiaddr]:
    return [strip_p2p(a) for a in host.get_addrs() if "/quic-v1" in str(a)]


def _udp_port(addr: multiaddr.Multiaddr) -> int:
    return int(addr.value_for_protocol("udp"))


async def _wait_conn(host: Any, peer: Any) -> Any:
    with trio.fail_after(10):
        while not host.get_network().get_connections(peer):
            await trio.sleep(0.01)
    return host.get_network().get_connections(peer)[0]


async def _echo_identify(dialer: Any, target: Any) -> None:
    """A stream both ways works: identify answers on it."""
    stream = await dialer.new_stream(target.get_id(), ["/ipfs/id/1.0.0"])
    with trio.fail_after(10):
        assert await stream.read(4096)
    await stream.close()


async def test_tcp_and_quic_node_meets_a_quic_only_node():
    both, quic_only = make_host(listen_addrs=[TCP, QUIC]), make_host(listen_addrs=[QUIC])
    async with run_host(both, _mas(TCP, QUIC)), run_host(quic_only, _mas(QUIC)):
        assert {"/tcp/", "/quic-v1"} <= {p for a in both.get_addrs() for p in ("/tcp/", "/quic-v1") if p in str(a)}
        # The QUIC-only node is handed both addresses: it dials the one it can.
        await quic_only.connect(PeerInfo(both.get_id(), [strip_p2p(a) for a in both.get_addrs()]))
        conn = await _wait_conn(both, quic_only.get_id())
        assert "/udp/" in str(conn.muxed_conn.get_transport_addresses()[0])
        await _echo_identify(quic_only, both)
        await _echo_identify(both, quic_only)
        await quic_only.disconnect(both.get_id())
        with trio.fail_after(10):  # the close reached the other side (else it dials the old one)
            while both.get_network().get_connections(quic_only.get_id()):
                await trio.sleep(0.01)
        # And the other way round: the TCP+QUIC node dials the QUIC-only one.
        await both.connect(PeerInfo(quic_only.get_id(), _quic_addrs(quic_only)))
        await _echo_identify(both, quic_only)


async def test_our_record_carries_the_quic_address():
    host = make_host(listen_addrs=[TCP, QUIC])
    async with run_host(host, _mas(TCP, QUIC)):
        local = LocalAddresses(host, bus=EventBus(), metrics=Metrics())
        assert local.refresh() and local.our_record is not None
        record = verify_record(local.our_record)
    texts = [str(a) for a in record.addrs]
    assert any("/udp/" in t and t.endswith("/quic-v1") for t in texts), texts
    assert any("/tcp/" in t for t in texts), texts


@pytest.mark.parametrize(
    "addr, words",
    [
        ("/ip4/203.0.113.9/udp/4001/quic-v1", "not an address of this machine"),
        ("/ip4/127.0.0.1/udp/4001/quic", "draft-29"),
        ("/ip4/127.0.0.1/udp/4001", "not a transport"),
    ],
)
def test_bad_quic_listen_address_one_line(addr, words):
    problem = listen_problem(addr)
    assert problem is not None and words in problem and "\n" not in problem


def test_quic_listen_address_usable():
    assert listen_problem("/ip4/127.0.0.1/udp/0/quic-v1") is None


async def test_observed_address_of_a_quic_stream_is_quic_v1():
    # py-libp2p reports a QUIC connection's remote end as /udp/P/quic; ours says quic-v1 (and
    # never /tcp/ with a UDP port, which a TCP-only reading of the socket address would give).
    a, b = make_host(listen_addrs=[QUIC]), make_host(listen_addrs=[QUIC])
    seen: list[multiaddr.Multiaddr | None] = []

    async def handler(stream: Any) -> None:
        seen.append(observed_multiaddr(stream))
        await stream.close()

    a.set_stream_handler("/pzq/observe/1", handler)
    async with run_host(a, _mas(QUIC)), run_host(b, _mas(QUIC)):
        await b.connect(PeerInfo(a.get_id(), _quic_addrs(a)))
        stream = await b.new_stream(a.get_id(), ["/pzq/observe/1"])
        with trio.fail_after(10):
            while not seen:
                await trio.sleep(0.01)
        await stream.close()
        port = _udp_port(_quic_addrs(b)[0])
    assert str(seen[0]) == f"/ip4/127.0.0.1/udp/{port}/quic-v1"


async def test_quic_dial_leaves_from_the_listen_socket():
    """Upstream: a QUIC dial leaves from a fresh ephemeral port. Ours: from the listen port, so
    a NAT maps a punch's packets to the port we advertised (quic_reuse.py)."""

    async def remote_port_seen(dialer: Any, target: Any) -> int:
        await dialer.connect(PeerInfo(target.get_id(), _quic_addrs(target)))
        conn = await _wait_conn(target, dialer.get_id())
        return int(conn.muxed_conn.get_remote_address()[1])

    target = make_host(listen_addrs=[QUIC])
    stock = new_host(listen_addrs=_mas(QUIC))
    ours = make_host(listen_addrs=[QUIC])
    async with run_host(target, _mas(QUIC)), run_host(stock, _mas(QUIC)), run_host(ours, _mas(QUIC)):
        stock_port = await remote_port_seen(stock, target)
        ours_port = await remote_port_seen(ours, target)
        assert stock_port != _udp_port(_quic_addrs(stock)[0]), "upstream dials from its listen port now?"
        assert ours_port == _udp_port(_quic_addrs(ours)[0])
        # The shared socket carries streams both ways, and the listener still accepts dials.
        await _echo_identify(ours, target)
        await _echo_identify(target, ours)
        third = make_host(listen_addrs=[QUIC])
        async with run_host(third, _mas(QUIC)):
            await third.connect(PeerInfo(ours.get_id(), _quic_addrs(ours)))
            await _echo_identify(third, ours)
            # A closed client connection leaves the listen socket working: dial again.
            await ours.disconnect(target.get_id())
            assert await remote_port_seen(ours, target) == _udp_port(_quic_addrs(ours)[0])


def test_cli_listens_on_tcp_and_quic(tmp_path):
    from tests.test_cli import _start, _stop

    proc, lines = _start(tmp_path, "--listen", QUIC)
    try:
        assert proc.stdout is not None
        lines.append(proc.stdout.readline().strip())  # one line per listen address, at start
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert any(line.startswith("/ip4/127.0.0.1/tcp/") for line in lines), lines
    assert any(line.startswith("/ip4/127.0.0.1/udp/") and "/quic-v1/p2p/" in line for line in lines), lines


def test_cli_bad_quic_listen_address_is_one_line(tmp_path):
    from tests.test_cli import _node, _one_error

    out = _node(tmp_path, "--listen", "/ip4/203.0.113.9/udp/4001/quic-v1")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "/ip4/203.0.113.9/udp/4001/quic-v1" in line and "Cannot assign requested address" in line


async def test_identify_observation_over_quic_is_recorded_as_quic(monkeypatch):
    """Upstream: identify over a QUIC connection reports our address as ``/ip4/A/tcp/P`` (P a UDP
    port); a QUIC-only node never learns its WAN IP. Ours records ``/udp/P/quic-v1``."""
    from libp2p.host.observed_addr_manager import ObservedAddrManager

    seen: dict[str, list[str]] = {}

    def spy(self: Any, conn: Any, observed_addr: Any, local_addrs: Any) -> None:
        seen.setdefault(self._pzq_label, []).append(str(observed_addr))

    monkeypatch.setattr(ObservedAddrManager, "record_observation", spy)
    target = make_host(listen_addrs=[QUIC])
    stock = new_host(listen_addrs=_mas(QUIC))
    ours = make_host(listen_addrs=[QUIC])
    stock._observed_addr_manager._pzq_label = "stock"
    ours._observed_addr_manager._pzq_label = "ours"
    async with run_host(target, _mas(QUIC)), run_host(stock, _mas(QUIC)), run_host(ours, _mas(QUIC)):
        for dialer in (stock, ours):
            await dialer.connect(PeerInfo(target.get_id(), _quic_addrs(target)))
        with trio.fail_after(10):
            while len(seen) < 2:
                await trio.sleep(0.01)
        ours_port = _udp_port(_quic_addrs(ours)[0])
    assert all("/tcp/" in a for a in seen["stock"]), seen
    assert seen["ours"] == [f"/ip4/127.0.0.1/udp/{ours_port}/quic-v1"], seen


async def test_relay_reservation_and_circuit_over_quic_connections():
    """A relay reached over QUIC only: a reservation, a circuit through it, a stream end to end."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from prozchain_discovery.relay.transport import CircuitDialer, reserve
    from tests.test_relay import ECHO, accept_circuits, guarded

    relay, target, dialer = (make_host(listen_addrs=[QUIC]) for _ in range(3))
    guarded(relay)
    accept_circuits(target)
    async with run_host(relay, _mas(QUIC)), run_host(target, _mas(QUIC)), run_host(dialer, _mas(QUIC)):
        relay_addr = f"{_quic_addrs(relay)[0]}/p2p/{relay.get_id()}"
        for h in (target, dialer):
            await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(relay_addr)))
        reply = await reserve(target, relay.get_id(), timeout=10)
        assert reply is not None
        with trio.fail_after(20):
            await CircuitDialer(dialer).connect(target.get_id(), [multiaddr.Multiaddr(f"{relay_addr}/p2p-circuit")])
        stream = await dialer.new_stream(target.get_id(), [ECHO])
        await stream.write(b"over quic and a circuit")
        with trio.fail_after(10):
            assert await stream.read(100) == b"over quic and a circuit"
        await stream.close()
        relay_conn = dialer.get_network().get_connections(relay.get_id())[0]
        assert "/udp/" in str(relay_conn.muxed_conn.get_transport_addresses()[0])


def test_toml_listen_with_quic(tmp_path):
    from prozchain_discovery.config import load_config

    p = tmp_path / "node.toml"
    p.write_text('listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]\n')
    assert load_config(p).listen == ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1")


def test_addresses_list_tcp_first():
    # py-libp2p starts listeners concurrently: QUIC's address came first in some runs, and a
    # reader of the first address (the CLI's first line, a TCP-only js peer) could not dial it.
    from prozchain_discovery.libp2p_fixes import expand_wildcard_addrs

    factory = expand_wildcard_addrs(interface_ips=lambda: [])
    out = factory(_mas("/ip4/192.0.2.1/udp/4001/quic-v1", "/ip4/192.0.2.1/tcp/4001"))
    assert [str(a) for a in out] == ["/ip4/192.0.2.1/tcp/4001", "/ip4/192.0.2.1/udp/4001/quic-v1"]


async def test_autonat_v2_probes_a_quic_address():
    """Our AutoNAT client asks about its QUIC address too; our server dials it back over QUIC."""
    from contextlib import AsyncExitStack

    from prozchain_discovery.nat.autonat_core import ProbeOutcome
    from prozchain_discovery.service import DiscoveryService
    from tests.netutil import addr_of, wait_until
    from tests.test_autonat import _cfg

    async with AsyncExitStack() as stack:
        nodes = []
        for config in (_cfg(client=False), None):
            h = make_host(listen_addrs=[TCP, QUIC])
            await stack.enter_async_context(run_host(h, _mas(TCP, QUIC)))
            if config is None:
                config = _cfg(bootstrap=(addr_of(nodes[0]),), client=False)
            nodes.append(await stack.enter_async_context(DiscoveryService(h, config).run()))
        server, client = nodes
        await wait_until(lambda: server.local_id in client.connected, timeout=20)
        quic_addr = str(_quic_addrs(client.host)[0])
        assert quic_addr in client.autonat.candidates()
        assert await client.autonat.probe(server.local_id, quic_addr) is ProbeOutcome.REACHABLE
        assert server.metrics.get("autonat_dial_backs", result="ok") == 1
        # a UDP port where nothing listens: unreachable, not "reachable over the open connection"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            closed = f"/ip4/127.0.0.1/udp/{s.getsockname()[1]}/quic-v1"
        assert await client.autonat.probe(server.local_id, closed) is ProbeOutcome.UNREACHABLE


def test_autonat_server_takes_quic_only_when_it_can_dial_it():
    from prozchain_discovery.nat.autonat_core import (
        AutonatServerPolicy,
        ServerVerdict,
        dialable_addr,
    )

    quic = multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1").to_bytes()
    tcp = multiaddr.Multiaddr("/ip4/192.0.2.1/tcp/4001").to_bytes()
    assert dialable_addr(quic, False) == "/ip4/192.0.2.1/udp/4001/quic-v1"
    assert dialable_addr(quic, False, quic=False) is None
    assert dialable_addr(multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic").to_bytes(), False) is None
    policy = AutonatServerPolicy(allow_private=False)
    assert policy.decide([quic, tcp], "192.0.2.1", 0.0, quic=True).idx == 0
    picked = policy.decide([quic, tcp], "192.0.2.1", 0.0, quic=False)
    assert picked.verdict is ServerVerdict.DIAL and picked.idx == 1


def test_observed_quic_reports_count_as_quic_v1():
    from prozchain_discovery.addresses.observed import ObservedAddrs

    obs = ObservedAddrs(threshold=2)
    obs.add(multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic"), b"a", 0.0)  # py-libp2p's name
    obs.add(multiaddr.Multiaddr("/ip4/192.0.2.1/udp/4001/quic-v1"), b"b", 0.0)
    obs.add(multiaddr.Multiaddr("/ip4/192.0.2.1/tcp/4001"), b"a", 0.0)
    assert obs.counts() == {"/ip4/192.0.2.1/udp/4001/quic-v1": 2, "/ip4/192.0.2.1/tcp/4001": 1}
    assert [str(a) for a in obs.confirmed()] == ["/ip4/192.0.2.1/udp/4001/quic-v1"]
