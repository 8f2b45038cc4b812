"""Each py-libp2p 0.8.1 workaround: the bug with the stock setup, and its absence with ours."""

from __future__ import annotations

import inspect
import logging
import re
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.peer.peerinfo import PeerInfo

from prozchain_discovery import libp2p_fixes, libp2p_logs
from prozchain_discovery.addrs import AddrScope, scope_of, strip_p2p
from prozchain_discovery.host import make_host
from tests.netutil import Net, wait_until

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
pytestmark = pytest.mark.network


async def _connect_ms(a, b) -> float:
    t = time.perf_counter()
    await a.connect(PeerInfo(b.get_id(), [strip_p2p(x) for x in b.get_addrs()]))
    return (time.perf_counter() - t) * 1000


async def test_bug1_dial_delay_gone():
    # Stock connection config: every dial waits the happy-eyeballs delay (~250 ms).
    stock_a, stock_b = new_host(listen_addrs=LOOP), new_host(listen_addrs=LOOP)
    ours_a, ours_b = make_host(), make_host()
    async with stock_a.run(LOOP), stock_b.run(LOOP), ours_a.run(LOOP), ours_b.run(LOOP):
        stock = await _connect_ms(stock_a, stock_b)
        ours = await _connect_ms(ours_a, ours_b)
    assert stock > 200, f"stock py-libp2p dial took {stock:.0f} ms: bug 1 fixed upstream?"
    # Stock is a handshake plus the 250 ms wait, ours a handshake: compared in the same run, so
    # a loaded machine slows both handshakes rather than failing an absolute bound.
    assert ours < stock - 100, f"our dial took {ours:.0f} ms, stock {stock:.0f} ms"


async def test_bug2_only_noise_offered():
    host: Any = make_host()
    offered = list(host.get_network().upgrader.security_multistream.transports.keys())
    assert [str(p) for p in offered] == ["/noise"]


async def test_bug9_autoconnector_disabled():
    """Stock hosts dial every peerstore entry on their own; ours only dial when asked."""
    target = make_host()
    async with target.run(LOOP):
        info = PeerInfo(target.get_id(), [strip_p2p(a) for a in target.get_addrs()])
        stock = new_host(listen_addrs=LOOP)
        stock.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        ours = make_host()
        ours.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        async with stock.run(LOOP), ours.run(LOOP):
            with trio.move_on_after(3):
                while target.get_id() not in stock.get_connected_peers():
                    await trio.sleep(0.05)
            assert target.get_id() in stock.get_connected_peers(), "bug 9 fixed upstream?"
            await trio.sleep(0.5)
            assert target.get_id() not in ours.get_connected_peers()


async def test_bug14_no_wildcard_advertised():
    host = make_host(listen_addrs=["/ip4/0.0.0.0/tcp/0"])
    async with host.run([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/0")]):
        addrs = host.get_addrs()
    assert addrs, "no addresses advertised"
    assert all(scope_of(strip_p2p(a)) is not AddrScope.UNSPECIFIED for a in addrs), addrs
    assert any("/ip4/127.0.0.1/" in str(a) for a in addrs)


def test_expand_wildcard_pure():
    import ipaddress

    f = libp2p_fixes.expand_wildcard_addrs(
        lambda: [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("::1")]
    )
    out = [str(a) for a in f([multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/7"), multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/7")])]
    assert out == ["/ip4/127.0.0.1/tcp/7", "/ip4/192.0.2.2/tcp/7", "/ip4/10.0.0.1/tcp/7"]


async def test_zombie_listener_closed_by_run_host():
    import socket

    from prozchain_discovery.libp2p_fixes import run_host

    def accepts(port: int) -> bool:
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    stock = make_host()
    async with stock.run(LOOP):
        stock_port = int(stock.get_addrs()[0].value_for_protocol("tcp"))
    ours = make_host()
    async with run_host(ours, LOOP):
        our_port = int(ours.get_addrs()[0].value_for_protocol("tcp"))
    assert accepts(stock_port), "py-libp2p now closes its listener: drop run_host's workaround"
    assert not accepts(our_port)


async def test_refused_dial_fails_fast_without_swarm_retries():
    from tests.netutil import closed_port

    dead = multiaddr.Multiaddr(closed_port())
    pid = make_host().get_id()
    stock, ours = new_host(listen_addrs=LOOP), make_host()
    times = {}
    async with stock.run(LOOP), ours.run(LOOP):
        for name, h in (("stock", stock), ("ours", ours)):
            t = time.perf_counter()
            with pytest.raises(Exception):
                await h.connect(PeerInfo(pid, [dead]))
            times[name] = time.perf_counter() - t
    assert times["stock"] > 0.3, f"stock refused dial took {times['stock']:.2f} s: retries gone upstream?"
    assert times["ours"] < 0.2, times


# ---- every patch fails loudly when py-libp2p lacks what it patches -------------------------

_LOUD = r"^{patch}: py-libp2p 0\.8\.1 has no (?P<thing>.+); this project pins libp2p==0\.8\.1$"


class _Bare:
    """A host-like object missing everything the patches look for."""

    def get_network(self):
        return object()


@pytest.mark.parametrize(
    ("patch", "missing"),
    [
        (libp2p_fixes.disable_auto_connector, "Swarm.auto_connector"),
        (libp2p_fixes.no_swarm_retries, "Swarm.retry_config"),
        (libp2p_fixes.defer_identify, "BasicHost._identify_task_entry"),
        (libp2p_fixes.tolerate_handler_removal, "BasicHost.multiselect"),
    ],
)
def test_a_patch_with_nothing_to_patch_fails_loudly(patch, missing):
    with pytest.raises(libp2p_fixes.Libp2pPatchError) as err:
        patch(_Bare())
    m = re.match(_LOUD.format(patch=patch.__name__), str(err.value))
    assert m, str(err.value)
    assert m["thing"] == missing


def test_a_patch_finding_the_wrong_shape_fails_loudly():
    class SyncIdentify:  # identify entry became synchronous
        def _identify_task_entry(self, peer_id, reason):
            return None

    class OtherParams:  # identify entry takes other arguments
        async def _identify_task_entry(self, peer_id):
            return None

    class Connector:  # AutoConnector.start became synchronous
        _is_connecting = False

        def start(self):
            return None

    class HostWith:
        def __init__(self, **network_attrs):
            self.net = type("Swarm", (), network_attrs)()

        def get_network(self):
            return self.net

    class ListHandlers:
        multiselect = type("Multiselect", (), {"handlers": [], "negotiate": _async_noop})()

    cases = [
        (libp2p_fixes.defer_identify, SyncIdentify(), "async method BasicHost._identify_task_entry"),
        (libp2p_fixes.defer_identify, OtherParams(),
         "async method BasicHost._identify_task_entry(peer_id, reason)"),
        (libp2p_fixes.disable_auto_connector, HostWith(auto_connector=Connector()),
         "async method AutoConnector.start"),
        (libp2p_fixes.no_swarm_retries, HostWith(retry_config=object()),
         "Swarm.retry_config.max_retries"),
        (libp2p_fixes.tolerate_handler_removal, ListHandlers(), "dict Multiselect.handlers (it is a list)"),
    ]
    for patch, host, thing in cases:
        with pytest.raises(libp2p_fixes.Libp2pPatchError) as err:
            patch(host)
        m = re.match(_LOUD.format(patch=patch.__name__), str(err.value))
        assert m and m["thing"] == thing, str(err.value)


async def _async_noop(*_a):
    return None


def test_make_host_refuses_a_py_libp2p_without_what_it_patches(monkeypatch):
    """An upgrade that moves a patched method stops make_host, instead of patching nothing."""
    from libp2p.network.auto_connector import AutoConnector

    owner = next(c for c in type(make_host()).__mro__ if "_identify_task_entry" in vars(c))
    with monkeypatch.context() as m:
        m.delattr(owner, "_identify_task_entry")
        with pytest.raises(libp2p_fixes.Libp2pPatchError, match=r"^defer_identify: .*_identify_task_entry"):
            make_host()
    # A new AutoConnector method: py-libp2p might call it on the inert stand-in.
    with monkeypatch.context() as m:
        m.setattr(AutoConnector, "trim_peers", lambda self: None, raising=False)
        with pytest.raises(libp2p_fixes.Libp2pPatchError, match=r"^disable_auto_connector: .*trim_peers"):
            make_host()
    make_host()  # and the real 0.8.1 passes every check


def test_patching_twice_is_harmless():
    host: Any = make_host()  # service.py patches hosts again (they may not come from make_host)
    inert, entry = host.get_network().auto_connector, host._identify_task_entry
    for patch in (libp2p_fixes.disable_auto_connector, libp2p_fixes.no_swarm_retries,
                  libp2p_fixes.defer_identify, libp2p_fixes.tolerate_handler_removal):
        patch(host)
    assert host.get_network().auto_connector is inert
    assert host._identify_task_entry is entry
    assert isinstance(host.multiselect.handlers, libp2p_fixes._HandlerTable)


# ---- the inert auto-connector ------------------------------------------------------------------


def _auto_connector_uses() -> set[str]:
    """Every attribute py-libp2p 0.8.1 reads on a swarm's auto-connector, from its source."""
    import libp2p

    root = Path(libp2p.__file__).parent
    pattern = re.compile(
        r"auto_connector\s*\.\s*(\w+)|(?:getattr|hasattr)\(\s*(?:self\.)?auto_connector\s*,\s*\"(\w+)\""
    )
    used: set[str] = set()
    for path in root.rglob("*.py"):
        if path.name == "auto_connector.py":
            continue
        for m in pattern.finditer(path.read_text(encoding="utf-8", errors="replace")):
            used.add(m[1] or m[2])
    return used


def test_inert_auto_connector_has_exactly_what_libp2p_uses():
    from libp2p.network.auto_connector import AutoConnector

    uses = _auto_connector_uses()
    assert uses == {"start", "stop", "run_background_task", "maybe_connect", "record_disconnect",
                    "set_discovery_callback", "_is_connecting"}, uses
    inert: Any = libp2p_fixes._InertAutoConnector()
    for name in uses - {"_is_connecting"}:
        ours, theirs = getattr(inert, name), getattr(AutoConnector, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
    assert inert._is_connecting is False
    with pytest.raises(AttributeError):
        inert.some_hook_added_in_a_later_release  # noqa: B018 - must not be a silent no-op
    with pytest.raises(AttributeError):
        inert.record_successful_connection  # noqa: B018 - exists upstream, never called from outside
    with pytest.raises(AttributeError):
        inert.anything = 1  # no attribute can be set on it either


async def test_inert_auto_connector_survives_a_host_lifetime():
    """start/run_background_task/stop, a disconnect (record_disconnect, auto-connect trigger)."""
    async with _two_hosts() as (a, b):
        assert isinstance(a.get_network().auto_connector, libp2p_fixes._InertAutoConnector)
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        await a.disconnect(b.get_id())
        await trio.sleep(0.05)
        assert b.get_id() not in a.get_connected_peers()
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))  # the host still works
        assert b.get_id() in a.get_connected_peers()


# ---- identify deferral ------------------------------------------------------------------------


async def _identified_after(host_a, host_b, *, during=None) -> float:
    """Seconds from the start of a dial until ``host_a`` knows ``host_b``'s protocols."""
    t = trio.current_time()
    await host_a.connect(PeerInfo(host_b.get_id(), host_b.get_addrs()))
    if during is not None:
        await during()
    with trio.fail_after(5):
        while not host_a.get_peerstore().get_protocols(host_b.get_id()):
            await trio.sleep(0.005)
    return trio.current_time() - t


async def test_identify_is_deferred_where_py_libp2p_runs_it_at_once():
    async with _two_hosts() as (a, b):
        del a._identify_task_entry  # py-libp2p's own: identify at once, on the join path
        stock = await _identified_after(a, b)
    async with _two_hosts() as (a, b):
        ours = await _identified_after(a, b)
    assert stock < 0.2, f"py-libp2p identified after {stock:.3f} s"
    assert ours >= 0.25, f"identified after {ours:.3f} s: not deferred"


async def test_identify_now_skips_the_deferral():
    async with _two_hosts() as (a, b):
        libp2p_fixes.identify_now(a, b.get_id())  # before the connection (e.g. a hole punch)
        before = await _identified_after(a, b)
    async with _two_hosts() as (a, b):

        async def ask():  # while the identify is waiting out its delay
            await trio.sleep(0.03)
            libp2p_fixes.identify_now(a, b.get_id())

        during = await _identified_after(a, b, during=ask)
    assert before < 0.2, before
    assert during < 0.2, during


class _FakeConn:
    def __init__(self, addr: str, conn_type=None):
        self.addr, self.conn_type = addr, conn_type

    def get_transport_addresses(self):
        return [multiaddr.Multiaddr(self.addr)]

    def get_connection_type(self):
        from libp2p.connection_types import ConnectionType

        return self.conn_type or ConnectionType.UNKNOWN


class _FakeIdentifyHost:
    """Just what defer_identify hooks into: the identify entry and the peer's connections."""

    def __init__(self, *conns):
        self.conns = list(conns)
        self.identified: list[float] = []

    def get_network(self):
        return self

    def get_connections(self, _peer_id=None):
        return self.conns

    def _schedule_identify(self, peer_id, *, reason):
        raise AssertionError("not connected in these tests")

    async def _identify_task_entry(self, peer_id, reason):
        self.identified.append(trio.current_time())


RELAY = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
DIRECT = "/ip4/192.0.2.7/tcp/4001"


async def _deferred_identify_takes(host) -> float:
    libp2p_fixes.defer_identify(host, delay=0.25)
    t = trio.current_time()
    await host._identify_task_entry("peer", "notifee-connected")
    assert host.identified
    return host.identified[-1] - t


async def test_relayed_connections_are_identified_at_once(autojump_clock):
    from libp2p.connection_types import ConnectionType

    assert await _deferred_identify_takes(_FakeIdentifyHost(_FakeConn(DIRECT))) == pytest.approx(0.25)
    assert await _deferred_identify_takes(_FakeIdentifyHost(_FakeConn(RELAY))) == 0
    tagged = _FakeConn(DIRECT, ConnectionType.RELAYED)  # relay v2's inbound side tags the type
    assert await _deferred_identify_takes(_FakeIdentifyHost(tagged)) == 0
    both = _FakeIdentifyHost(_FakeConn(DIRECT), _FakeConn(RELAY))
    assert await _deferred_identify_takes(both) == 0


async def test_a_connection_tagged_relayed_while_waiting_is_identified_then(autojump_clock):
    conn = _FakeConn(DIRECT)
    host = _FakeIdentifyHost(conn)

    async def tag_later():
        await trio.sleep(0.06)  # py-libp2p tags an inbound circuit just after announcing it
        conn.addr = RELAY

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tag_later)
        took = await _deferred_identify_takes(host)
    assert 0.06 <= took <= 0.11


async def test_identify_now_wakes_a_waiting_identify(autojump_clock):
    host = _FakeIdentifyHost(_FakeConn(DIRECT))

    async def ask_later():
        await trio.sleep(0.1)
        libp2p_fixes.identify_now(host, "peer")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask_later)
        took = await _deferred_identify_takes(host)
    assert took == pytest.approx(0.1)
    assert not libp2p_fixes._is_relayed_peer(host, "peer")


def test_identify_now_marks_are_bounded():
    host = _FakeIdentifyHost()
    libp2p_fixes.identify_now(host, "x")  # not deferred: nothing to do, nothing kept
    libp2p_fixes.defer_identify(host)
    for i in range(libp2p_fixes._AT_ONCE_MAX + 10):
        libp2p_fixes.identify_now(host, i)
    state = getattr(host, libp2p_fixes._DEFERRAL_ATTR)
    assert len(state.at_once) == libp2p_fixes._AT_ONCE_MAX
    assert state.take(libp2p_fixes._AT_ONCE_MAX + 9) and not state.take(0)


# ---- handler removal race ---------------------------------------------------------------------


def _leaves(exc):
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


@pytest.fixture
def remove_handler_while_echoing(monkeypatch):
    """Remove the server's handler while Multiselect.negotiate awaits the write of its echo
    (after ``protocol in handlers``, before ``handlers[protocol]``): the race, made certain."""
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    armed: dict = {}
    write = MultiselectCommunicator.write

    async def racing_write(self, msg):
        server, client_id = armed.get("server"), armed.get("client_id")
        conn = getattr(self.read_writer, "muxed_conn", None)
        if server is not None and msg == "/x/1" and getattr(conn, "peer_id", None) == client_id:
            server.remove_stream_handler("/x/1")
        return await write(self, msg)

    monkeypatch.setattr(MultiselectCommunicator, "write", racing_write)

    def arm(server, client):
        armed.update(server=server, client_id=client.get_id())

    return arm


async def _echo(stream):
    await stream.write(await stream.read(2))
    await stream.close()


async def test_stock_handler_table_lets_the_race_take_the_host_down(remove_handler_while_echoing):
    with pytest.raises(BaseExceptionGroup) as err:
        async with _two_hosts() as (a, b):
            b.multiselect.handlers = dict(b.multiselect.handlers)  # py-libp2p's plain dict
            b.set_stream_handler("/x/1", _echo)
            remove_handler_while_echoing(b, a)
            await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
            with trio.fail_after(5):
                await a.new_stream(b.get_id(), ["/x/1"])
                await trio.sleep(5)  # the KeyError ends the host's nursery before this ends
    assert any(isinstance(e, KeyError) and e.args == ("/x/1",) for e in _leaves(err.value)), err.value


async def test_a_handler_removed_during_negotiation_resets_the_stream(remove_handler_while_echoing):
    from libp2p.host.exceptions import StreamFailure
    from libp2p.network.stream.exceptions import StreamEOF, StreamReset

    async with _two_hosts() as (a, b):
        b.set_stream_handler("/x/1", _echo)
        remove_handler_while_echoing(b, a)
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        # The stream fails while opening, or its first read sees it reset (or, when the reset
        # lands after yamux's close, end): never the echo, and the host stays up.
        with trio.fail_after(5), pytest.raises((StreamFailure, StreamReset, StreamEOF)):
            stream = await a.new_stream(b.get_id(), ["/x/1"])
            await stream.read(1)  # if the echo won the race with the reset
        b.set_stream_handler("/y/1", _echo)  # b is still up and serving
        with trio.fail_after(5):
            stream = await a.new_stream(b.get_id(), ["/y/1"])
            await stream.write(b"ok")
            assert await stream.read(2) == b"ok"


# ---- libp2p's log records -----------------------------------------------------------------------


@pytest.fixture
def libp2p_logging():
    """libp2p's logger as importing libp2p leaves it (no handler, no propagation), whatever ran
    before; conftest's autouse fixture restores it afterwards."""
    lg = logging.getLogger("libp2p")
    for h in [h for h in lg.handlers if isinstance(h, libp2p_logs.Libp2pLogRouter)]:
        lg.removeHandler(h)
    lg.propagate = False
    yield lg


def _record(msg, *args, name="libp2p.network.swarm", level=logging.WARNING):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_rate_limit_filter_counts_per_template_on_an_injected_clock():
    now = [100.0]
    f = libp2p_logs.RateLimitFilter(3, clock=lambda: now[0])
    pid = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nX{}"
    # py-libp2p formats its messages itself: the peer id and numbers differ, the template not
    passed = [f.filter(_record(f"dial to {pid.format(c)} failed after {i} s")) for i, c in enumerate("abcdefghij")]
    assert passed == [True] * 3 + [False] * 7
    assert f.filter(_record("dial to %s failed", "x"))  # another template, its own quota
    assert f.filter(_record(f"dial to {pid.format('a')} failed after 1 s", name="libp2p.other"))
    now[0] = 159.0
    assert not f.filter(_record(f"dial to {pid.format('b')} failed after 2 s"))
    assert f.pop_summaries() == []  # the minute is not over
    now[0] = 160.5
    (summary,) = f.pop_summaries()
    assert summary.name == "libp2p.network.swarm" and summary.levelno == logging.WARNING
    assert summary.getMessage() == "suppressed 8 similar records in the last 60 s: dial to <peer> failed after N s"
    assert f.filter(_record(f"dial to {pid.format('c')} failed after 3 s"))  # a new minute
    assert f.pop_summaries() == []


def test_rate_limit_filter_is_bounded():
    f = libp2p_logs.RateLimitFilter(1, clock=lambda: 0.0, max_templates=8)
    for i in range(100):
        f.filter(_record(f"message {'x' * i}"))
    assert len(f._windows) <= 8


def test_libp2p_records_go_to_our_logger_rate_limited(caplog, libp2p_logging):
    now = [0.0]
    caplog.set_level(logging.INFO)

    def routed():
        return [(r.name, r.levelname, r.getMessage()) for r in caplog.records
                if r.name.startswith(libp2p_logs.LIBP2P_LOGGER)]

    libp2p_logs.route_libp2p_logs(logging.WARNING, rate_per_minute=3)
    libp2p_logs.route_libp2p_logs(logging.WARNING, rate_per_minute=3)  # idempotent
    (router,) = [h for h in libp2p_logging.handlers if isinstance(h, libp2p_logs.Libp2pLogRouter)]
    assert libp2p_logging.propagate is False  # nothing printed twice through the root logger
    router.limiter.clock = lambda: now[0]

    swarm = logging.getLogger("libp2p.network.swarm")
    for i in range(10):
        swarm.warning("dial to %s failed", f"peer{i}")
    logging.getLogger("libp2p.network.auto_connector").info("Auto-connect cycle")  # pinned to INFO
    logging.getLogger("libp2p.protocol_muxer.multiselect_client").error(
        "MultiselectClient handshake: read failed: %s", "fail to read from multiselect communicator")
    name = "prozchain_discovery.libp2p.network.swarm"
    assert routed() == [(name, "WARNING", f"dial to peer{i} failed") for i in range(3)]

    now[0] = 61.0
    swarm.warning("dial to %s failed", "peer10")
    assert routed()[3:] == [
        (name, "WARNING", "suppressed 7 similar records in the last 60 s: dial to %s failed"),
        (name, "WARNING", "dial to peer10 failed"),
    ]
    logging.getLogger("prozchain_discovery.pex").warning("ours are never limited")
    assert caplog.records[-1].name == "prozchain_discovery.pex"


def test_shutdown_noise_is_demoted_to_debug(caplog, libp2p_logging):
    caplog.set_level(logging.DEBUG, logger="prozchain_discovery")
    libp2p_logs.route_libp2p_logs(logging.WARNING)
    noise = [
        ("libp2p.host.basic_host", "Failed to open stream to peer 12D3KooWQ:\n  Error: protocol read failed: "
         "fail to read from multiselect communicator, protocol=/x/1\n  Protocols: ['/x/1']"),
        ("libp2p.host.basic_host", "Failed to open stream to peer 12D3KooWQ:\n  Error: handshake write failed: x"),
        ("libp2p.protocol_muxer.multiselect_client", "MultiselectClient handshake: write failed: x"),
        ("libp2p.stream_muxer.yamux.yamux", "Error in handle_incoming for peer 12D3KooWQ: ClosedResourceError: "),
        ("libp2p.network.swarm", "[ADDCONN_FAIL] add_conn failed for peer 12D3KooWQ: Cancelled(source='explicit')"),
    ]
    real = [
        ("libp2p.host.basic_host", "Failed to open stream to peer 12D3KooWQ:\n  Error: protocols not supported"),
        ("libp2p.transport.tcp.tcp", "Unexpected error opening TCP stream: boom"),
        ("libp2p.network.swarm", "[ADDCONN_FAIL] add_conn failed for peer 12D3KooWQ: KeyError('x')"),
    ]
    for name, msg in noise + real:
        logging.getLogger(name).error(msg)
    levels = [r.levelname for r in caplog.records if r.name.startswith("prozchain_discovery.libp2p")]
    assert levels == ["DEBUG"] * len(noise) + ["ERROR"] * len(real)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def root_records():
    """What reaches a handler on the root logger (an application's console or file handler).

    Not caplog: pytest also hangs its capture handler on every non-propagating logger, which
    would show libp2p's records even where an application never sees them."""
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    yield collect.records
    root.removeHandler(collect)


async def test_real_libp2p_errors_reach_the_application_and_torn_down_streams_do_not(
    libp2p_logging, root_records, caplog
):
    from libp2p.host.exceptions import StreamFailure

    from tests.netutil import closed_port

    caplog.set_level(logging.INFO)  # the application logs at INFO

    def routed(level=logging.DEBUG):
        return [r for r in root_records if r.levelno >= level]

    async def reset_at_once(stream):
        await stream.reset()

    def dead() -> PeerInfo:  # a new peer id each time: the swarm backs off a failed peer
        return PeerInfo(make_host().get_id(), [multiaddr.Multiaddr(closed_port())])

    async with _two_hosts() as (a, b):
        b.set_stream_handler("/x/1", reset_at_once)
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
        with pytest.raises(Exception):
            await a.connect(dead())
        assert [r.name for r in caplog.records] == ["libp2p.transport.tcp.tcp"]  # logged...
        assert not routed()  # ...but bug 16: it reached no handler of the application's

        libp2p_logs.route_libp2p_logs(logging.WARNING)
        with pytest.raises(StreamFailure):  # a real problem: a protocol the peer does not have
            await a.new_stream(b.get_id(), ["/not/here/1"])
        (err,) = routed()
        assert err.name == "prozchain_discovery.libp2p.host.basic_host"
        assert err.levelno == logging.ERROR and "protocols not supported" in err.getMessage()
        # A dial to a peer that is gone (make demo's teardown redials stopped nodes): the dialer
        # gets the exception and counts it; the record is DEBUG, counted (#16).
        before = libp2p_logs.demoted_counts().get("tcp_dial_failed", 0)
        with pytest.raises(Exception):
            await a.connect(dead())
        assert len(routed()) == 1 and libp2p_logs.demoted_counts()["tcp_dial_failed"] == before + 1

        # A stream reset under negotiation: py-libp2p's own window update after reading the
        # answer is what meets the reset, so this connection gets its stock Yamux behaviour.
        for conn in a.get_network().get_connections(b.get_id()):
            conn.muxed_conn.prozchain_window_hysteresis = False
        with pytest.raises(StreamFailure):  # py-libp2p logs this torn-down stream at ERROR
            await a.new_stream(b.get_id(), ["/x/1"])
        assert len(routed()) == 1  # demoted to DEBUG: not seen at INFO (still the one above)

        caplog.set_level(logging.DEBUG, logger="prozchain_discovery.libp2p")
        with pytest.raises(StreamFailure):
            await a.new_stream(b.get_id(), ["/x/1"])
        debug = [r for r in routed() if r.levelno == logging.DEBUG]
        assert debug and all(r.getMessage().startswith("Failed to open stream") for r in debug)
        assert debug[0].name == "prozchain_discovery.libp2p.host.basic_host"


@asynccontextmanager
async def _two_hosts():
    a, b = make_host(listen_addrs=LOOP), make_host(listen_addrs=LOOP)
    async with libp2p_fixes.run_host(a, LOOP), libp2p_fixes.run_host(b, LOOP):
        yield a, b


# ---- pipeline_multistream: one round trip per negotiation, not two -------------------------


class _Pipe:
    """One direction-pair of an in-memory byte stream with the read/write py-libp2p expects."""

    def __init__(self, send, recv) -> None:
        self.send, self.recv, self.writes = send, recv, []
        self.buf = b""

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await self.send.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        if not self.buf:
            self.buf = await self.recv.receive_some()
        take = len(self.buf) if n is None else n
        out, self.buf = self.buf[:take], self.buf[take:]
        return out

    async def close(self) -> None:
        await self.send.aclose()


def _pipes():
    import trio.testing

    a_send, b_recv = trio.testing.memory_stream_one_way_pair()
    b_send, a_recv = trio.testing.memory_stream_one_way_pair()
    return _Pipe(a_send, a_recv), _Pipe(b_send, b_recv)


async def test_stock_multistream_client_waits_a_round_trip_before_proposing(autojump_clock):
    """The bug: the header goes alone, and nothing else until the listener answers it."""
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    client, _listener = _pipes()
    with trio.move_on_after(5):
        await MultiselectClient().select_one_of(["/noise"], MultiselectCommunicator(client))
    assert client.writes == [b"\x13/multistream/1.0.0\n"]  # still waiting for the header's answer


async def test_pipelined_client_sends_header_and_proposal_at_once_and_a_stock_listener_agrees():
    from libp2p.protocol_muxer.multiselect import Multiselect
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    from prozchain_discovery.multistream import (
        PipelinedMultiselectClient as _PipelinedMultiselectClient,
    )

    listener_side = Multiselect()
    listener_side.add_handler("/yamux/1.0.0", None)
    listener_side.add_handler("/noise", None)
    client, listener = _pipes()
    async with trio.open_nursery() as nursery:
        got = {}

        async def listen() -> None:
            got["listener"], _ = await listener_side.negotiate(MultiselectCommunicator(listener))

        nursery.start_soon(listen)
        chosen = await _PipelinedMultiselectClient().select_one_of(["/noise"], MultiselectCommunicator(client))
    assert chosen == got["listener"] == "/noise"
    assert client.writes == [b"\x13/multistream/1.0.0\n\x07/noise\n"]  # one write, one round trip

    # The first proposal refused ("na"): the others are tried one at a time, as before.
    client, listener = _pipes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        chosen = await _PipelinedMultiselectClient().select_one_of(
            ["/tls/1.0.0", "/yamux/1.0.0"], MultiselectCommunicator(client))
    assert chosen == got["listener"] == "/yamux/1.0.0"


async def test_pipelined_client_reports_unsupported_as_the_stock_one_does():
    from libp2p.protocol_muxer.exceptions import MultiselectClientError
    from libp2p.protocol_muxer.multiselect import Multiselect
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

    from prozchain_discovery.multistream import (
        PipelinedMultiselectClient as _PipelinedMultiselectClient,
    )
    listener_side = Multiselect()
    listener_side.add_handler("/other/1.0", None)
    client, listener = _pipes()
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + 10
        nursery.start_soon(lambda: listener_side.negotiate(MultiselectCommunicator(listener)))
        with pytest.raises(MultiselectClientError) as err:
            await _PipelinedMultiselectClient().select_one_of(["/prozchain/pex/1.0"], MultiselectCommunicator(client))
        nursery.cancel_scope.cancel()
    assert "not supported" in str(err.value)  # what py-libp2p's stock client says to "na"


async def test_our_hosts_negotiate_pipelined_on_real_connections():
    from contextlib import AsyncExitStack

    from libp2p.peer.peerinfo import info_from_p2p_addr

    from prozchain_discovery.multistream import (
        PipelinedMultiselectClient as _PipelinedMultiselectClient,
    )
    from tests.netutil import Net

    async with AsyncExitStack() as stack:
        net = Net(stack)
        a, b = await net.host(), await net.host()
        upgrader = a.get_network().upgrader
        assert isinstance(a.multiselect_client, _PipelinedMultiselectClient)
        assert isinstance(upgrader.security_multistream._selector.multiselect_client, _PipelinedMultiselectClient)
        assert isinstance(upgrader.muxer_multistream._selector.multiselect_client, _PipelinedMultiselectClient)
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        assert b.get_id() in a.get_connected_peers()


# ---- Yamux window updates ----------------------------------------------------------------

async def _window_updates_for(factory, messages: int, size: int) -> tuple[int, int]:
    """A server echoes ``messages`` frames of ``size`` bytes on one stream; returns the
    WINDOW_UPDATE frames the client's streams sent and the bytes it got back."""
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    a, b = factory(), factory()
    sent = [0]
    original = YamuxStream.send_window_update

    async def counting(self, increment, skip_lock=False):
        if self.conn.peer_id == b.get_id():
            sent[0] += 1
        await original(self, increment, skip_lock=skip_lock)

    async def echo(stream):
        while data := await stream.read(65536):
            await stream.write(data)

    YamuxStream.send_window_update = counting
    got = 0
    try:
        async with a.run(LOOP), b.run(LOOP):
            b.set_stream_handler("/echo/1", echo)
            await a.connect(PeerInfo(b.get_id(), [strip_p2p(x) for x in b.get_addrs()]))
            stream = await a.new_stream(b.get_id(), ["/echo/1"])
            for _ in range(messages):
                await stream.write(b"x" * size)
                want = got + size
                while got < want:
                    got += len(await stream.read(size))
            await stream.close()
    finally:
        YamuxStream.send_window_update = original
    return sent[0], got


async def test_stock_yamux_sends_a_window_update_per_read_ours_per_half_window():
    stock, _ = await _window_updates_for(lambda: new_host(listen_addrs=LOOP), 50, 100)
    ours, got = await _window_updates_for(lambda: make_host(listen_addrs=LOOP), 50, 100)
    assert stock >= 40, f"stock py-libp2p sent {stock} window updates for 50 reads: fixed upstream?"
    assert ours == 0 and got == 5000


async def test_yamux_flow_control_still_moves_a_megabyte_both_ways():
    """Past half the 256 KiB window the reader grants more: 4 MiB through an echo."""
    ours, got = await _window_updates_for(lambda: make_host(listen_addrs=LOOP), 64, 65536)
    assert got == 64 * 65536
    assert 4 <= ours <= 64  # one per half window consumed, not one per read


async def _read_after_the_circuit_stopped_writing(stock: bool) -> tuple[int, int]:
    """A relayed connection whose circuit stream can no longer write (the relay or the peer
    closed it, e.g. after a hole punch) while 200 KiB the peer sent are still to be read.
    Returns (bytes read, bytes sent)."""
    from tests.test_relay import _relayed_pair, guarded

    sent = 200 * 1024
    async with AsyncExitStack() as stack:
        net = Net(stack)
        r = await net.host()
        guarded(r, circuit_data=1 << 22)
        target, dialer = await _relayed_pair(stack, net, r)

        async def blob(stream):
            await stream.write(b"y" * sent)
            await trio.sleep(10)

        target.set_stream_handler("/blob/1", blob)
        (conn,) = dialer.get_network().get_connections(target.get_id())
        if stock:
            conn.muxed_conn.prozchain_window_hysteresis = False
        circuit_stream = conn.muxed_conn.secured_conn.conn.conn.stream  # Noise -> raw -> hop stream
        stream = await dialer.new_stream(target.get_id(), ["/blob/1"])
        await wait_until(lambda: len(conn.muxed_conn.stream_buffers.get(stream.muxed_stream.stream_id, b"")) >= sent, 10)
        await circuit_stream.close_write()
        got = 0
        with trio.fail_after(10):
            try:
                while got < sent and (data := await stream.read(65536)):
                    got += len(data)
            except Exception:
                pass
        return got, sent


async def test_stock_yamux_loses_read_data_when_a_window_update_cannot_be_written():
    got, sent = await _read_after_the_circuit_stopped_writing(stock=True)
    assert got < sent  # "Unexpected error during window update", and the read failed with it


async def test_our_window_update_failure_leaves_the_read_data_to_the_reader():
    got, sent = await _read_after_the_circuit_stopped_writing(stock=False)
    assert got == sent


# ---- Yamux frames a cancellation cannot cut (#16) -------------------------------------------

async def _connection_after_an_abandoned_write(stock: bool) -> bool:
    """A writes on a stream to R; the socket is slow for that one write (a full send buffer)
    and the writer gives up at its timeout, as a circuit dial or a hole punch does. Does the
    connection A-R still carry a request afterwards?"""
    from tests.test_relay import ECHO, accept_circuits, echo_once

    async with AsyncExitStack() as stack:
        net = Net(stack)
        r, a = await net.host(), await net.host()
        accept_circuits(r)  # an echo handler
        await a.connect(PeerInfo(r.get_id(), [strip_p2p(x) for x in r.get_addrs()]))
        (conn,) = a.get_network().get_connections(r.get_id())
        if stock:
            conn.muxed_conn.prozchain_whole_frames = False
        stream = await a.new_stream(r.get_id(), [ECHO])
        raw = conn.muxed_conn.secured_conn.conn.conn  # Noise session -> its reader/writer -> TCP
        original, slow = raw.write, [True]

        async def write(data: bytes) -> None:
            if slow[0]:
                slow[0] = False
                await trio.sleep(0.5)
            await original(data)

        raw.write = write
        with trio.move_on_after(0.1):
            await stream.write(b"given up")
        try:
            return await echo_once(a, r.get_id()) == b"ping" and r.get_id() in a.get_connected_peers()
        except Exception:
            return False


async def test_stock_yamux_loses_the_connection_when_a_writer_is_cancelled():
    # Noise's nonce moved on for a frame that never left: every later frame fails to decrypt
    assert not await _connection_after_an_abandoned_write(stock=True)


async def test_a_cancelled_writer_leaves_the_connection_whole():
    assert await _connection_after_an_abandoned_write(stock=False)
