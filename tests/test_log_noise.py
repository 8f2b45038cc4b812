"""``--log-level DEBUG`` shows our records and libp2p's, not multiaddr's codec tracing (#15 item 7c)."""

from __future__ import annotations

import logging

import pytest
from multiaddr import Multiaddr

from prozchain_discovery.cli.common import setup_logging
from prozchain_discovery.libp2p_logs import NOISY_LOGGERS, hold_noisy_loggers

PID = "12D3KooWNrEDrVTS69UooPtdbnC6ewWMFhvwa3Eo8tVyYt3yN2Xj"


@pytest.fixture
def noisy_levels_restored():
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _parse_some_addresses() -> None:
    ma = Multiaddr(f"/ip4/198.51.100.7/tcp/4001/p2p/{PID}")
    Multiaddr(ma.to_bytes())
    str(ma)


def test_debug_shows_ours_not_multiaddr_codec_tracing(noisy_levels_restored, caplog):
    caplog.set_level(logging.DEBUG)
    _parse_some_addresses()
    assert any(r.name.startswith("multiaddr") for r in caplog.records)  # what there is to hold
    caplog.clear()

    hold_noisy_loggers()
    _parse_some_addresses()
    logging.getLogger("prozchain_discovery.test").debug("ours")
    assert [r.name for r in caplog.records] == ["prozchain_discovery.test"]
    logging.getLogger("multiaddr.codecs").warning("a real problem")  # INFO and above still pass
    assert caplog.records[-1].name == "multiaddr.codecs"


def test_the_cli_holds_them_at_debug(noisy_levels_restored, monkeypatch):
    from prozchain_discovery import libp2p_logs

    monkeypatch.setattr(libp2p_logs, "route_libp2p_logs", lambda *a, **kw: None)
    setup_logging("DEBUG")
    assert logging.getLogger("multiaddr.transforms").getEffectiveLevel() == logging.INFO


def test_a_level_the_application_chose_is_kept(noisy_levels_restored):
    logging.getLogger("multiaddr").setLevel(logging.ERROR)
    hold_noisy_loggers()
    assert logging.getLogger("multiaddr").level == logging.ERROR


# ---- issue #16: relay, circuit, Yamux and punch teardown is DEBUG, counted -------------------
@pytest.fixture
def routed_libp2p():
    """libp2p's records routed as the CLI does (conftest restores libp2p's logger afterwards)."""
    from prozchain_discovery import libp2p_logs

    libp2p_logs.route_libp2p_logs(logging.WARNING, rate_per_minute=1000)
    yield logging.getLogger("libp2p")


# What py-libp2p logged at WARNING/ERROR in the NAT lab crowd and on loopback for circuits,
# relayed connections and punches that ended normally, and peers that went away (#16).
TEARDOWN = [
    ("circuit_dial_peerstore", "libp2p.relay.circuit_v2.transport", logging.WARNING,
     f"Failed to fetch stored addresses for peer {PID}: 'peer ID not found'"),
    ("circuit_dial_relay_gone", "libp2p.relay.circuit_v2.transport", logging.ERROR,
     f"Failed to open stream to relay {PID}: stream reset"),
    ("circuit_target_gone", "libp2p.relay.circuit_v2.protocol", logging.ERROR,
     "Error establishing relay connection: Could not connect to destination"),
    ("circuit_target_gone", "libp2p.relay.circuit_v2.protocol", logging.WARNING,
     "Destination rejected connection: status code 400 (code 400)"),
    ("circuit_handshake_failed", "libp2p.relay.circuit_v2.protocol", logging.ERROR,
     f"Error handling stop stream: Failed to handle incoming connection: failed to upgrade security for "
     f"peer at /p2p/{PID}/p2p-circuit/p2p/{PID}"),
    ("hop_stream_ended", "libp2p.relay.circuit_v2.protocol", logging.ERROR,
     f"Error reading from hop stream from {PID}: Error parsing message with type 'circuit.pb.v2.HopMessage'"),
    ("hop_stream_ended", "libp2p.relay.circuit_v2.protocol", logging.ERROR, "Error relaying data: "),
    ("yamux_window_update_closed", "libp2p.stream_muxer.yamux.yamux", logging.WARNING,
     "Stream 3: Unexpected error during window update: "),
    ("upgrade_failed", "libp2p.network.swarm", logging.ERROR,
     f"failed to upgrade security for peer {PID}: failed to negotiate the secure protocol"),
    ("identify_push_failed", "libp2p.identity.identify_push.identify_push", logging.ERROR,
     f"Error pushing identify to peer {PID}: No valid connections available for peer {PID}"),
    ("identify_peer_gone", "libp2p.identity.identify_push.identify_push", logging.ERROR,
     f"Error processing identify/push from {PID}: "),
    ("identify_peer_gone", "libp2p.identity.identify.identify", logging.ERROR,
     f"Error sending identify response to {PID}: Write operation failed: TCP connection reset by remote peer: "
     "socket connection broken: [Errno 104] Connection reset by peer (type: <class 'StreamError'>)\nTraceback"),
    ("tcp_dial_failed", "libp2p.transport.tcp.tcp", logging.ERROR,
     "Failed to open TCP stream: [Errno 111] Connect call failed ('198.51.100.7', 4001)"),
    ("tcp_dial_failed", "libp2p.transport.tcp.tcp", logging.ERROR,
     "Unexpected error opening TCP stream: Failed to connect 203.0.113.2:4001 from 10.0.1.2:4001: "
     "[Errno 99] Cannot assign requested address"),
]


def test_teardown_records_are_debug_and_counted(routed_libp2p, caplog):
    from prozchain_discovery import libp2p_logs
    from prozchain_discovery.metrics import Metrics

    caplog.set_level(logging.DEBUG, logger="prozchain_discovery")
    metrics = Metrics(demoted=libp2p_logs.demoted_counts)
    before = libp2p_logs.demoted_counts()
    for _kind, name, level, message in TEARDOWN:
        logging.getLogger(name).log(level, message)
    # A real problem stays what it is.
    logging.getLogger("libp2p.transport.tcp.tcp").error("Unexpected error opening TCP stream: boom")
    logging.getLogger("libp2p.identity.identify_push.identify_push").error(
        f"Error processing identify/push from {PID}: Error parsing message")
    routed = [r for r in caplog.records if r.name.startswith(libp2p_logs.LIBP2P_LOGGER)]
    assert [r.levelname for r in routed] == ["DEBUG"] * len(TEARDOWN) + ["ERROR", "ERROR"]
    after = libp2p_logs.demoted_counts()
    for kind in {k for k, *_ in TEARDOWN}:
        want = sum(1 for k, *_ in TEARDOWN if k == kind)
        assert after.get(kind, 0) - before.get(kind, 0) == want, kind
        assert metrics.get("libp2p_records_demoted", kind=kind) == want
    assert "prozchain_discovery_libp2p_records_demoted_total" in metrics.prometheus()


@pytest.mark.network
@pytest.mark.slow
async def test_circuits_punches_and_a_peer_going_away_log_no_warning(routed_libp2p, caplog):
    """Four private nodes on one relay dial each other through it at once (each pair twice,
    both ways: hole punching on loopback turns circuits direct), then one of them stops and
    the others redial it: nothing reaches WARNING, ours or py-libp2p's (#16: 86 ERROR lines
    in three minutes of a healthy crowd's relay)."""
    from contextlib import AsyncExitStack

    import trio

    from prozchain_discovery.peerdb import PeerSource
    from tests.netutil import Net, addr_of, cfg, wait_until
    from tests.test_relay import relay_cfg

    async def _within(seconds: float, condition) -> bool:
        with trio.move_on_after(seconds):
            await wait_until(condition, seconds + 1)
            return True
        return False

    met: dict[str, bool] = {}
    caplog.set_level(logging.DEBUG, logger="prozchain_discovery")
    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(cfg(min_peers=1, pex=True), serve="on"))
        await wait_until(lambda: relay.relay_server.serving, 5)
        boot = (addr_of(relay),)
        nodes = [await net.node(cfg(bootstrap=boot, min_peers=1, pex=True)) for _ in range(3)]
        async with AsyncExitStack() as leaving:
            nodes.append(await net.node(cfg(bootstrap=boot, min_peers=1, pex=True), stack=leaving))
            for n in nodes:
                await wait_until(lambda n=n: n.autorelay.published, 20)
            async with trio.open_nursery() as nursery:
                for a in nodes:
                    for b in nodes:
                        if a is not b:
                            nursery.start_soon(a.dial, b.local_id, list(b.autorelay.published), PeerSource.PEX)
            gone = nodes[-1].local_id
            met["all connected to the leaver"] = await _within(20, lambda: all(gone in n.connected for n in nodes[:-1]))
            await trio.sleep(2)  # punches, identify, PEX over the circuits
        # It went as a process goes: its connections close (a host stopped in-process leaves
        # the TCP connections it still has open, and the others would never notice).
        for conn in list(nodes[-1].host.get_network().get_connections()):
            await conn.close()
        met["the leaver gone everywhere"] = await _within(20, lambda: all(gone not in n.connected for n in nodes[:-1]))
        for n in nodes[:-1]:  # a redial of the stopped node
            await n.dial(gone, [], PeerSource.PEX)
        await trio.sleep(1)
    # (caplog also sees libp2p's raw records: pytest hangs its handler on that non-propagating
    # logger; the application sees them as routed, under prozchain_discovery.libp2p)
    assert all(met.values()), met
    loud = [(r.name, r.levelname, r.getMessage()[:300]) for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("prozchain_discovery")]
    assert loud == []


def test_the_cli_routes_libp2p_records_although_libp2p_is_imported_later():
    """py-libp2p's import runs its setup_logging(), which clears the ``libp2p`` logger's
    handlers; the CLI sets logging up before it imports the host, so the router was wiped and
    every py-libp2p record went bare to logging.lastResort (crowd lab, #16). A fresh
    interpreter, as the CLI runs."""
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from prozchain_discovery.cli.common import setup_logging\n"
        "assert 'libp2p' not in sys.modules or sys.argv[1] == 'x'\n"
        "setup_logging('INFO')\n"
        "import libp2p\n"
        "logging.getLogger('libp2p.transport.tcp.tcp').error('Unexpected error opening TCP stream: boom')\n"
        "print([type(h).__name__ for h in logging.getLogger('libp2p').handlers])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "-"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['Libp2pLogRouter']"
    # routed: a timestamped record under our name, not a bare line from lastResort
    assert "ERROR   prozchain_discovery.libp2p.transport.tcp.tcp: Unexpected error opening TCP stream: boom" in out.stderr


def test_our_warnings_are_rate_limited_at_the_handler():
    """Our own WARNING/ERROR records (a peer spoofing reservations, say) pass the application's
    handler at most N per minute per template, then one summary; DEBUG/INFO are untouched."""
    from prozchain_discovery.libp2p_logs import WarningLimiter, limit_warnings

    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    limit_warnings([handler], rate_per_minute=3)
    limit_warnings([handler], rate_per_minute=3)  # once
    (limiter,) = [f for f in handler.filters if isinstance(f, WarningLimiter)]
    now = [0.0]
    limiter.limiter.clock = lambda: now[0]
    logger = logging.getLogger("prozchain_discovery.test_limit")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        for i in range(10):
            logger.warning("refusing a reservation from %s in the name of another peer", f"peer{i}")
            logger.info("routine %d", i)
        assert sum(r.levelno == logging.WARNING for r in seen) == 3
        assert sum(r.levelno == logging.INFO for r in seen) == 10
        now[0] = 61.0
        logger.warning("refusing a reservation from %s in the name of another peer", "peer10")
        texts = [r.getMessage() for r in seen if r.levelno == logging.WARNING]
        assert texts[-2].startswith("suppressed 7 similar records in the last 60 s")
        assert texts[-1].endswith("peer10 in the name of another peer")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
