"""The bootstrap cascade after the happy path: the DNS server down at start, a DNS answer that
changes, every bootstrap node down until one returns, a node that falls short hours later,
mDNS that cannot start, the bootstrap server while the peer book cannot flush.

Most run on trio's MockClock with the host stand-in (tests/fakehost.py) and a scripted DNS
resolver in place of :class:`DnsSeedResolver` (dnsmasq's answers would race an autojumping
clock); one runs against a real dnsmasq that starts late, and one with real hosts on loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

import pytest
import trio
from multiaddr import Multiaddr

from prozchain_discovery.bootstrap.dns import DnsSeedError, DnsSeedResult
from prozchain_discovery.bootstrap.mdns import MdnsDiscovery
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.service import DiscoveryService
from tests.conftest import identity
from tests.fakehost import FakeHost
from tests.netutil import cfg

SEED = "/dnsaddr/seed.test"


def _addr(pid, group: int = 0) -> str:
    """``group``: peers in distinct /16s, so outbound diversity does not hide one behind another."""
    ip = f"{20 + group}.1.0.1" if group else "127.0.0.1"
    return f"/ip4/{ip}/tcp/4001/p2p/{pid}"


class ScriptedDns:
    """Stands in for ``DnsSeedResolver.resolve_all``: ``answer(now)`` gives the addresses, or
    None while the server is down (every seed then times out)."""

    def __init__(self, answer: Callable[[float], Sequence[str] | None]) -> None:
        self.answer = answer
        self.lookups: list[float] = []

    async def resolve_all(self, seeds: Sequence[str]) -> list[DnsSeedResult]:
        now = trio.current_time()
        self.lookups.append(now)
        await trio.sleep(0.01)
        addrs = self.answer(now)
        out = []
        for seed in seeds:
            res = DnsSeedResult(seed)
            if addrs is None:
                res.errors.append(DnsSeedError("timeout", seed, "server down"))
            else:
                res.addrs = [Multiaddr(a) for a in addrs]
            out.append(res)
        return out


def _service(host: FakeHost, config, dns: ScriptedDns | None = None, **kw) -> DiscoveryService:
    svc = DiscoveryService(host, config, **kw)
    if dns is not None:
        svc.cascade.dns = dns  # type: ignore[assignment]
    return svc


async def test_dns_down_at_start_is_retried_with_backoff_and_only_a_good_lookup_counts(autojump_clock, tmp_path):
    """Before: the failed first lookup started dns_lookup_interval (6 h here) and went to
    state.json, so the node stayed without DNS seeds for 6 h, across restarts too."""
    _, seed_peer = identity(50)
    t0 = trio.current_time()
    up_at = t0 + 120.0
    dns = ScriptedDns(lambda now: [_addr(seed_peer)] if now >= up_at else None)
    c = cfg(dns_seeds=(SEED,), min_peers=1, dns_lookup_interval=6 * 3600.0)
    state = tmp_path / "state.json"

    def recorded() -> float | None:
        return json.loads(state.read_text()).get("last_dns_lookup_wall") if state.exists() else None

    async with _service(FakeHost(), c, dns, data_dir=tmp_path).run() as svc:
        await trio.sleep_until(up_at - 1.0)
        failed = len(dns.lookups)
        assert 3 <= failed <= 10, dns.lookups  # backing off: neither every pass nor once per 6 h
        assert svc.metrics.get("dns_lookup_failures") == failed
        assert recorded() is None  # a failed lookup is not remembered across restarts
        assert 0 < svc.cascade.dns_gate.next_allowed(trio.current_time()) < 3600
        with trio.fail_after(3600):
            while seed_peer not in svc.connected:
                await trio.sleep(1.0)
        assert len(dns.lookups) == failed + 1
        assert recorded() is not None
        # The good lookup starts the interval: falling short again does not ask DNS again.
        await svc.host.disconnect(seed_peer)
        await trio.sleep(3600.0)
        assert len(dns.lookups) == failed + 1
        assert svc.cascade.dns_gate.next_allowed(trio.current_time()) > 4 * 3600


async def test_a_changed_dns_answer_is_used_and_vanished_seeds_are_given_up(autojump_clock):
    old = [identity(60 + i)[1] for i in range(2)]
    new = [identity(62 + i)[1] for i in range(2)]
    change = trio.current_time() + 1000.0
    host = FakeHost(reachable=lambda pid, now: pid in new or now < change)  # the old ones vanish
    groups = {p: i + 1 for i, p in enumerate(old + new)}
    dns = ScriptedDns(lambda now: [_addr(p, groups[p]) for p in (old if now < change else new)])
    # min 3 with only 2 seeds at a time: the node stays short, so the cascade keeps going.
    c = cfg(dns_seeds=(SEED,), min_peers=3, dns_lookup_interval=600.0, check_interval=60.0)
    # The stand-in host dials nothing real: the loopback-only guard may let these through.
    async with _service(host, c, dns, addr_filter=lambda addrs: None).run() as svc:
        await trio.sleep(10.0)
        assert set(old) <= set(svc.connected)
        await trio.sleep_until(change)
        for p in old:
            await host.disconnect(p)
        await trio.sleep(700.0)  # the next lookup (one interval after the first) has the new answer
        assert set(new) <= set(svc.connected)
        assert all(svc.db.get(p) is not None and svc.db.get(p).source is PeerSource.DNS for p in new)
        await trio.sleep(3600.0)
        dialed = [t for t, p in host.dials if p in old]
        await trio.sleep(3600.0)
        assert [t for t, p in host.dials if p in old] == dialed  # given up, not redialed for ever
        assert all(svc.dialer.in_backoff(p) for p in old)


async def test_all_bootstrap_nodes_down_then_one_returns_and_the_cascade_stops_at_min(autojump_clock):
    boots = [identity(70 + i)[1] for i in range(3)]
    back = trio.current_time() + 900.0
    host = FakeHost(reachable=lambda pid, now: pid == boots[0] and now >= back)
    c = cfg(bootstrap=tuple(_addr(b) for b in boots), min_peers=1, check_interval=5.0)
    async with _service(host, c).run() as svc:
        await trio.sleep_until(back - 1.0)
        assert svc.connected_count() == 0 and svc.cascade.phase == "waiting"
        await trio.sleep(60.0)
        assert boots[0] in svc.connected and svc.cascade.phase == "done"
        dials = len(host.dials)
        await trio.sleep(3600.0)
        assert len(host.dials) == dials  # at the minimum: the dead ones are not dialed


async def test_falling_short_hours_later_restarts_the_cascade_from_the_book(autojump_clock):
    book_peers = [identity(80 + i)[1] for i in range(3)]
    _, boot = identity(83)
    host = FakeHost()
    dns = ScriptedDns(lambda now: [])
    c = cfg(bootstrap=(_addr(boot),), dns_seeds=(SEED,), min_peers=2, check_interval=60.0)
    svc_ = _service(host, c, dns, addr_filter=lambda addrs: None)  # the stand-in dials nothing real
    for i, p in enumerate(book_peers):
        svc_.db.add_addrs(p, [Multiaddr(_addr(p, i + 1)).decapsulate_code(421)], PeerSource.PEX, trio.current_time())
    async with svc_.run() as svc:
        await trio.sleep(10.0)
        assert svc.connected_count() == 2 and set(svc.connected) <= set(book_peers)
        await trio.sleep(2 * 3600.0)
        gone = next(iter(svc.connected))
        mark = len(host.dials)
        await host.disconnect(gone)
        await trio.sleep(1.0)  # kicked at once (PeersNeeded), not at the next check
        after = [p for _t, p in host.dials[mark:]]
        assert after and set(after) <= set(book_peers), after  # §3.1: the book first
        assert svc.connected_count() == 2
        assert boot not in [p for _t, p in host.dials] and dns.lookups == []


async def test_mdns_that_cannot_start_is_a_log_line_and_the_node_runs_on(autojump_clock, monkeypatch, caplog):
    """Before: zeroconf's OSError left LocalDiscovery.run and took the whole node down."""
    import prozchain_discovery.bootstrap.local as local_mod

    class NoSuchInterface(MdnsDiscovery):
        def __init__(self, *args, **kw) -> None:
            # TEST-NET-3 is on no interface here: the real Zeroconf() raises OSError.
            super().__init__(*args, interfaces=["203.0.113.77"], **kw)

    monkeypatch.setattr(local_mod, "MdnsDiscovery", NoSuchInterface)
    caplog.set_level(logging.INFO, logger="prozchain_discovery")
    _, static_id = identity(90)
    c = cfg(static=(_addr(static_id),), min_peers=1, enable_local_discovery=True)
    async with _service(FakeHost(), c).run() as svc:
        await trio.sleep(3600.0)
        assert static_id in svc.connected
        errors = [r for r in caplog.records if r.name == "prozchain_discovery.mdns" and r.levelno >= logging.ERROR]
        assert 2 <= len(errors) <= 8, [r.getMessage() for r in errors]  # retried with backoff
        assert all(r.exc_info is None for r in errors)  # one line each, no traceback
        assert "OSError" in errors[0].getMessage() and "runs without it" in errors[0].getMessage()
        assert svc.local.status()["mdns"]["failures"] == len(errors)


@pytest.mark.network
async def test_dns_server_down_at_start_then_up_is_looked_up_again_soon(tmp_path, monkeypatch):
    """The same as the first test, against a real dnsmasq that starts after the node."""
    import prozchain_discovery.bootstrap.dns as dns_mod
    import tests.dnsmasq as dnsmasq_mod
    from prozchain_discovery.config import DnsConfig
    from tests.netutil import Net, addr_of, wait_until

    monkeypatch.setattr(dns_mod, "FIRST_RETRY", 0.2)
    port = dnsmasq_mod._free_port()  # nobody answers there yet
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peer = await net.node(cfg(min_peers=1))
        c = cfg(dns_seeds=("/dnsaddr/net.test",), min_peers=1, dns_lookup_interval=3600.0,
                dns=DnsConfig(("127.0.0.1",), port, 0.3))
        node = await net.node(c, data_dir=tmp_path)
        await wait_until(lambda: node.metrics.get("dns_lookup_failures") >= 2, timeout=10)
        assert node.connected_count() == 0
        monkeypatch.setattr(dnsmasq_mod, "_free_port", lambda: port)
        stack.enter_context(dnsmasq_mod.dnsmasq(tmp_path, [("_dnsaddr.net.test", f"dnsaddr={addr_of(peer)}")]))
        await wait_until(lambda: peer.local_id in node.connected, timeout=15)
        assert node.cascade.dns_gate.next_allowed(trio.current_time()) > 3000
        assert "last_dns_lookup_wall" in json.loads((tmp_path / "state.json").read_text())


@pytest.mark.network
async def test_bootstrap_server_answers_while_the_peer_book_cannot_flush(tmp_path):
    from tests.netutil import Net, addr_of, wait_until

    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot = await net.node(cfg(min_peers=1, peerdb_path=""), data_dir=tmp_path)
        peers = [await net.node(cfg(bootstrap=(addr_of(boot),), min_peers=1)) for _ in range(3)]
        await wait_until(lambda: boot.connected_count() >= 3)
        await wait_until(lambda: all(boot.host.get_peerstore().get_peer_record(p.local_id) for p in peers))
        boot.book.store.store._db.execute("PRAGMA query_only = ON")  # noqa: SLF001 - the failure is the test
        # A change to write: without one no flush is tried (the peers' changes may all be on
        # disk already), and "failing" would never come.
        assert boot.book.db.add_addrs(identity(903)[1], [Multiaddr("/ip4/127.0.0.1/tcp/9")],
                                      PeerSource.BOOTSTRAP, trio.current_time())
        await wait_until(lambda: boot.status()["peerdb_flush"]["failing"], timeout=10)
        joiner = await net.node(cfg(bootstrap=(addr_of(boot),), min_peers=3))
        await wait_until(lambda: joiner.joined_at is not None)
        assert joiner.metrics.get("records_accepted") >= 2
        assert boot.metrics.get("bootstrap_requests_served", status="0") >= 1
        assert boot.status()["peerdb_flush"]["failing"]
