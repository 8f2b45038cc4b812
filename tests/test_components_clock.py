"""Components on trio's MockClock: hours of retries, outages and PEX rounds in milliseconds.

The dialer, cascade, static peers and PEX run as in a node, on a host stand-in
(tests/fakehost.py) whose reachability the test decides; time jumps whenever every task sleeps.
"""

from __future__ import annotations

import collections

import pytest
import trio
from multiaddr import Multiaddr

from prozchain_discovery.config import (
    BackoffConfig,
    BootstrapConfig,
    DiscoveryConfig,
    PeerDbSettings,
)
from prozchain_discovery.events import Wakeup
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.service import DiscoveryService
from prozchain_discovery.wire.messages import BOOTSTRAP_PROTOCOL, PEX_PROTOCOL
from tests.conftest import identity
from tests.fakehost import FakeHost
from tests.netutil import cfg

QUICK_GIVE_UP = BackoffConfig(base=0.2, step=0.1, cap=2.0, jitter=0.0, give_up_after=3)


def _addr(pid) -> str:
    return f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}"


async def test_static_peer_is_redialed_after_a_ten_minute_outage(autojump_clock):
    _, static_id = identity(20)
    t0 = trio.current_time()
    outage = (t0 + 100.0, t0 + 700.0)
    host = FakeHost(reachable=lambda pid, now: not outage[0] <= now < outage[1])
    c = cfg(static=(_addr(static_id),), min_peers=1, backoff=QUICK_GIVE_UP)
    async with DiscoveryService(host, c).run() as svc:
        await trio.sleep(1.0)
        assert static_id in svc.connected
        await trio.sleep_until(outage[0])
        await host.disconnect(static_id)
        await trio.sleep_until(outage[1] - 1.0)
        assert static_id not in svc.connected
        st = svc.dialer.backoff.state(static_id.to_bytes())
        assert st.failures > QUICK_GIVE_UP.give_up_after and not st.given_up  # never given up
        await trio.sleep_until(outage[1] + QUICK_GIVE_UP.cap + 0.5)
        assert static_id in svc.connected, svc.status()["backoff"]


async def test_a_static_peer_the_address_filter_refuses_waits_for_its_backoff(autojump_clock):
    """Before: the refusal recorded nothing, retry_in stayed 0 and the static-peer loop asked
    again every 0.2 s for ever, an error line each time."""
    _, static_id = identity(22)
    host = FakeHost()
    c = cfg(static=(_addr(static_id),), min_peers=1, backoff=QUICK_GIVE_UP)
    async with DiscoveryService(host, c, addr_filter=lambda addrs: "not on loopback here").run() as svc:
        await trio.sleep(60.0)
        refused = svc.metrics.get("dials_refused_loopback_only")
        assert 1 <= refused <= 60 / QUICK_GIVE_UP.cap + 5  # at the backoff's pace (cap 2 s), not every 0.2 s
        st = svc.dialer.backoff.state(static_id.to_bytes())
        assert st.failures == refused and not st.given_up and "address filter" in st.last_error
        assert host.dials == []


async def test_bootstrap_node_is_never_given_up(autojump_clock):
    _, boot_id = identity(21)
    t0 = trio.current_time()
    host = FakeHost(reachable=lambda pid, now: now >= t0 + 600.0)
    c = cfg(bootstrap=(_addr(boot_id),), min_peers=1, backoff=QUICK_GIVE_UP)
    async with DiscoveryService(host, c).run() as svc:
        await trio.sleep(599.0)
        assert svc.connected_count() == 0
        assert svc.metrics.get("dials", source="bootstrap") > 100  # at most ~2 s apart
        await trio.sleep(5.0)
        assert boot_id in svc.connected
        # The handshake was tried on the new connection (the stand-in has no streams).
        assert any(p == BOOTSTRAP_PROTOCOL for _t, _pid, p in host.streams)


async def test_given_up_peers_are_retried_when_connectivity_returns(autojump_clock):
    _, lost = identity(22)
    _, friend = identity(23)
    host = FakeHost(reachable=lambda pid, now: pid != lost)
    c = cfg(min_peers=2, backoff=QUICK_GIVE_UP)
    svc_ = DiscoveryService(host, c)
    svc_.db.add_addrs(lost, [Multiaddr("/ip4/127.0.0.1/tcp/4002")], PeerSource.PEX, trio.current_time())
    async with svc_.run() as svc:
        await trio.sleep(30.0)
        assert svc.dialer.backoff.state(lost.to_bytes()).given_up
        await host.open(friend)  # 0 -> 1 connected: the network is back
        assert not svc.dialer.backoff.state(lost.to_bytes()).given_up
        assert svc.metrics.get("backoff_resets") == 1


async def test_pex_asks_each_outbound_peer_once_per_interval(autojump_clock):
    peers = [identity(30 + i)[1] for i in range(3)]
    host = FakeHost()
    c = cfg(min_peers=1, pex=True)  # exchange_interval 1 s, first request 50 ms after connecting
    async with DiscoveryService(host, c).run() as svc:
        for pid in peers:
            assert await svc.dial(pid, [Multiaddr("/ip4/127.0.0.1/tcp/4003")], PeerSource.BOOTSTRAP)
        start = trio.current_time()
        await trio.sleep(10.0)
        for pid in peers:
            asked = [t for t, p, proto in host.streams if p == pid and proto == PEX_PROTOCOL and t >= start]
            assert 9 <= len(asked) <= 11, (pid, asked)
            gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
            assert min(gaps) >= 0.99  # never more often than exchange_interval


async def test_a_wakeup_during_work_is_not_lost(autojump_clock):
    wake = Wakeup()
    assert not await wake.wait(5.0)  # nothing set: sleeps the whole timeout
    wake.set()  # e.g. set by an event while the task was busy
    t = trio.current_time()
    assert await wake.wait(60.0)
    assert trio.current_time() == t  # returned at once


async def test_failed_dials_to_many_distinct_peers_leave_the_tables_bounded(autojump_clock):
    import json

    host = FakeHost(reachable=lambda pid, now: False, dial_time=0.0)
    async with DiscoveryService(host, cfg(min_peers=1)).run() as svc:
        addr = [Multiaddr("/ip4/127.0.0.1/tcp/4004")]
        for i in range(20_000):
            pid = identity(100_000 + i)[1] if i < 50 else _fake_id(i)
            await svc.dial(pid, addr, PeerSource.PEX)
        assert svc.metrics.get("dial_failures") == 20_000
        assert len(svc.dialer.backoff) <= svc.dialer.backoff.max_entries < 20_000
        status = svc.status()
        assert status["dial_intents"] <= 4096
        assert len(json.dumps(status, default=str)) < 64 * 1024


def _fake_id(i: int):
    from libp2p.peer.id import ID

    return ID(b"\x00\x24\x08\x01\x12\x20" + i.to_bytes(32, "big"))


async def test_a_failing_disk_shows_in_status_and_the_node_keeps_running(autojump_clock, tmp_path):
    host = FakeHost()
    c = cfg(min_peers=1, peerdb_path="")
    async with DiscoveryService(host, c, data_dir=tmp_path).run() as svc:
        raw = svc.book.store.store._db  # noqa: SLF001 - the failure is the test
        raw.execute("PRAGMA query_only = ON")
        svc.db.add_addrs(identity(40)[1], [Multiaddr("/ip4/127.0.0.1/tcp/4005")], PeerSource.DNS, trio.current_time())
        # sqlite runs in a worker thread, during which the mock clock jumps: wait on outcomes.
        with trio.fail_after(3600):
            while not svc.status()["peerdb_flush"]["failing"]:
                await trio.sleep(0.5)
        flush = svc.status()["peerdb_flush"]
        assert "readonly" in flush["last_error"].lower().replace(" ", "")
        assert svc.metrics.get("peerdb_flush_failures") >= 1
        raw.execute("PRAGMA query_only = OFF")
        with trio.fail_after(3600):  # the retry backs off (at most 5 min), but comes
            while svc.status()["peerdb_flush"]["failing"]:
                await trio.sleep(0.5)
    from prozchain_discovery.peerdb import PeerDatabase, PeerStore

    again = PeerDatabase()
    assert PeerStore(tmp_path / "peers.sqlite").load(again) == 1


async def test_a_banned_peer_is_disconnected_as_soon_as_it_connects(autojump_clock):
    from prozchain_discovery.events import Misbehaved

    _, abuser = identity(41)
    host = FakeHost()
    async with DiscoveryService(host, cfg(min_peers=1)).run() as svc:
        await host.open(abuser)  # inbound
        svc.bus.publish(Misbehaved(abuser, "ignored_rate_limit", 3))
        await host.disconnect(abuser)
        await host.open(abuser)  # back at once, same key
        await trio.sleep(0.1)
        assert abuser not in host.conns and abuser not in svc.connected
        assert svc.metrics.get("banned_connections_closed") == 1
        await trio.sleep(61.0)  # the first ban is 60 s
        await host.open(abuser)
        await trio.sleep(0.1)
        assert abuser in svc.connected


class _TaskSteps(trio.abc.Instrument):
    """How often each task ran (trio task steps), by ``Class.method``."""

    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[".".join(task.name.split(".")[-2:])] += 1


async def test_a_settled_node_sleeps(autojump_clock):
    """With the shipped intervals, a node that has settled (alone, with an unreachable bootstrap
    node, or connected to a peer whose identify never answers) runs each task at most about
    once a second. A loop that polls or spins shows here: AutoRelay polled a peer without a
    protocol list ten times a second for as long as it stayed connected (4 steps/s)."""
    _, boot_id = identity(23)
    boot = (_addr(boot_id),)
    window = 600.0
    for name, nodes, reachable in (("alone", (), True), ("unreachable bootstrap", boot, False),
                                   ("connected", boot, True)):
        c = DiscoveryConfig(network_id="t", listen=("/ip4/127.0.0.1/tcp/0",),
                            bootstrap=BootstrapConfig(bootstrap_nodes=nodes, min_peers_for_startup=1),
                            peerdb=PeerDbSettings(path=":memory:"))
        host = FakeHost(reachable=lambda pid, now, ok=reachable: ok)
        async with DiscoveryService(host, c).run():
            await trio.sleep(120.0)  # start-up done
            counter = _TaskSteps()
            trio.lowlevel.add_instrument(counter)
            await trio.sleep(window)
            trio.lowlevel.remove_instrument(counter)
        _busiest, steps = counter.steps.most_common(1)[0]
        assert steps / window <= 1.5, (name, counter.steps.most_common(4))
        assert sum(counter.steps.values()) / window <= 4.0, (name, counter.steps.most_common(4))


async def test_a_cut_dial_window_bounds_every_dial_of_the_node_and_stretches_backoff(autojump_clock):
    """The window (dialer/congestion.py) is the one gate for all of a node's dials: cut to 2,
    twenty targets run at most 2 at a time; a failure under that load backs off 8x longer."""
    from prozchain_discovery.dialer.congestion import DialWindow

    in_flight = peak = 0
    unreachable = identity(399)[1]
    host = FakeHost(reachable=lambda pid, now: pid != unreachable, dial_time=1.0)
    plain_connect = host.connect

    async def counting_connect(info):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await plain_connect(info)
        finally:
            in_flight -= 1

    host.connect = counting_connect
    c = cfg(min_peers=30, backoff=BackoffConfig(base=1.0, step=0.0, cap=100.0, jitter=0.0))
    async with DiscoveryService(host, c).run() as svc:
        window = svc.dialer.window = DialWindow(16, calm_lag=-1.0)  # never grows back here
        for t in range(3):
            window.on_timeout(float(t), lag=0.2)  # a lagging loop: 16 -> 8 -> 4 -> 2
        assert window.size == 2 and window.load == 8.0
        targets = [(identity(400 + i)[1], [Multiaddr(_addr(identity(400 + i)[1]))], PeerSource.PEX)
                   for i in range(20)]
        t0 = trio.current_time()
        assert await svc.dialer.dial_many(targets) == 20
        assert peak == 2 and trio.current_time() - t0 >= 10.0  # 20 dials of 1 s, 2 at a time
        assert not await svc.dial(unreachable, [Multiaddr(_addr(unreachable))], PeerSource.PEX)
        assert svc.dialer.retry_in(unreachable) == pytest.approx(8.0, abs=0.01)  # (base 1 + 0) x load 8
