"""The bootstrap cascade and /prozchain/bootstrap/1.0 with real py-libp2p hosts on loopback."""

from __future__ import annotations

import math
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.peer.envelope import Envelope, make_unsigned, unmarshal_envelope
from libp2p.peer.peer_record import PeerRecord
from multiaddr import Multiaddr

from prozchain_discovery.addrs import scope_of
from prozchain_discovery.config import BackoffConfig
from prozchain_discovery.dialer.congestion import DialWindow
from prozchain_discovery.dialer.race import HEDGE_MIN_DELAY, HedgePolicy
from prozchain_discovery.net.frames import read_frame
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.records import sign_record, verify_record
from prozchain_discovery.wire.framing import encode_frame, encode_uvarint
from prozchain_discovery.wire.messages import (
    BOOTSTRAP_PROTOCOL,
    BootstrapRequest,
    BootstrapResponse,
)
from tests.conftest import identity
from tests.netutil import Net, addr_of, black_hole, cfg, closed_port, wait_until

pytestmark = pytest.mark.network


async def _network(net: Net, n: int, answer: int = 50):
    """A bootstrap node with ``n`` peers connected to it (so it has records to hand out)."""
    boot = await net.node(cfg(min_peers=1, answer=answer))
    boot_addr = addr_of(boot)
    peers = [await net.node(cfg(bootstrap=(boot_addr,), min_peers=1)) for _ in range(n)]
    await wait_until(lambda: boot.connected_count() >= n)
    # identify has to have delivered each peer's signed record to the bootstrap node
    await wait_until(lambda: all(boot.host.get_peerstore().get_peer_record(p.local_id) for p in peers))
    return boot, peers


async def test_bootstrap_gives_peers_and_stops_at_minimum():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot, peers = await _network(net, 8)
        node = await net.node(cfg(bootstrap=(addr_of(boot),), min_peers=4))
        await wait_until(lambda: node.joined_at is not None)  # how fast: bench/bench_join.py
        await wait_until(lambda: node.cascade.phase == "done")
        # The cascade stopped at the minimum (no outbound policy in this test): the deficit, plus
        # a backup for each dial that was late (none on an idle machine).
        assert 4 <= node.connected_count() <= 4 + node.metrics.get("dial_hedges"), node.status()
        sources = {cp.source for cp in node.connected.values()}
        assert sources == {PeerSource.BOOTSTRAP}
        assert node.metrics.get("records_accepted") >= 3
        # The node learns the address the bootstrap node sees it at (identify, in the background).
        await wait_until(lambda: any(k.startswith("/ip4/127.0.0.1/tcp/") for k in node.addresses.observed.counts()))


async def test_black_holed_bootstrap_does_not_delay_start():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot, _ = await _network(net, 4)
        hole, hole_addr = black_hole()
        stack.callback(hole.close)
        ghost = identity(900)[1]
        node = await net.node(
            cfg(bootstrap=(f"{hole_addr}/p2p/{ghost}", addr_of(boot)), min_peers=3, dial_timeout=120.0)
        )
        # Well under the 120 s dial timeout the black hole would cost if start-up waited for it.
        await wait_until(lambda: node.joined_at is not None, timeout=60.0)


async def test_dials_run_exactly_the_deficit_when_none_is_late():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = await net.ring(4)
        node = await net.node(cfg(min_peers=8))
        # "None is late" by construction: a loopback dial on a busy machine can take longer than
        # the default hedge delay (3x a typical dial), and then a backup is right to start.
        node.dialer.hedge = HedgePolicy(typical=60.0)
        targets = [(p.local_id, [Multiaddr(addr_of(p))], PeerSource.BOOTSTRAP) for p in peers]
        await node.dialer.dial_many(targets, until=2)
        assert node.connected_count() == 2
        assert node.metrics.get("dials") == 2  # no backup dial spent a handshake for nothing
        assert node.metrics.get("dial_hedges") == 0


async def test_a_late_dial_gets_a_backup_instead_of_waiting_for_its_timeout():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = await net.ring(2)
        hole, hole_addr = black_hole()
        stack.callback(hole.close)
        # A dial timeout far beyond the guard below: only a backup dial can finish in time.
        node = await net.node(cfg(min_peers=8, dial_timeout=120.0))
        # A loaded machine's loop lag would (rightly) turn hedging off: this test is about the
        # hedge, so the window ignores the lag (tests/test_congestion.py covers the lag).
        node.dialer.window = DialWindow(16, congested_lag=math.inf, calm_lag=math.inf)
        ghost = identity(901)[1]
        targets = [(ghost, [Multiaddr(hole_addr)], PeerSource.BOOTSTRAP)]
        targets += [(p.local_id, [Multiaddr(addr_of(p))], PeerSource.BOOTSTRAP) for p in peers]
        t0 = trio.current_time()
        with trio.fail_after(60):
            await node.dialer.dial_many(targets, until=2)
        took = trio.current_time() - t0
        assert node.connected_count() == 2
        assert took >= HEDGE_MIN_DELAY, f"took {took:.3f} s: the backup did not wait for the dial to be late"
        assert node.metrics.get("dials") == 3
        assert node.metrics.get("dial_hedges") == 1


async def test_bootstrap_answers_carry_a_peers_newest_record():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot, (peer,) = await _network(net, 1)
        caller = identity(902)[1]
        scope = scope_of(Multiaddr("/ip4/127.0.0.1/tcp/1"))
        first = dict(boot.bootstrap_server.candidates(caller, scope))[peer.local_id]
        assert dict(boot.bootstrap_server.candidates(caller, scope))[peer.local_id] is first  # memoised
        newer = sign_record(peer.local_id, [Multiaddr(addr_of(peer))], peer.host.get_private_key(),
                            seq=verify_record(first).seq + 1)
        assert boot.host.get_peerstore().consume_peer_record(unmarshal_envelope(newer), 60)
        assert dict(boot.bootstrap_server.candidates(caller, scope))[peer.local_id] == newer


async def test_cascade_order_dns_not_used_when_bootstrap_suffices():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot, _ = await _network(net, 4)
        node = await net.node(
            cfg(bootstrap=(addr_of(boot),), dns_seeds=("/dnsaddr/never.test",), min_peers=3)
        )
        await wait_until(lambda: node.joined_at is not None)
        assert node.cascade.dns_gate.last_lookup is None  # DNS seeds are the next step, never reached


async def test_backoff_of_a_dead_bootstrap_node_is_visible_and_never_gives_up():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        ghost = identity(901)[1]
        dead = f"{closed_port()}/p2p/{ghost}"
        node = await net.node(
            cfg(bootstrap=(dead,), min_peers=2, check_interval=0.1,
                backoff=BackoffConfig(base=0.05, step=0.01, cap=0.1, jitter=0.0, give_up_after=3))
        )
        await wait_until(lambda: (st := node.dialer.backoff.state(ghost.to_bytes())) is not None and st.failures >= 5, timeout=10)
        snap = node.status()["backoff"][str(ghost)]
        assert not snap["given_up"] and snap["failures"] >= 5 and snap["last_error"]
        assert snap["retry_in"] is not None and snap["retry_in"] <= 0.1


async def test_static_peer_redialed_after_disconnect():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        static = await net.node(cfg(min_peers=1))
        node = await net.node(cfg(static=(addr_of(static),), min_peers=1))
        await wait_until(lambda: static.local_id in node.connected)
        assert node.connected[static.local_id].source is PeerSource.STATIC
        first = node.connected[static.local_id].since
        await static.host.disconnect(node.local_id)
        # The re-dial takes a few ms: watch for a new connection, not for the gap.
        await wait_until(
            lambda: static.local_id in node.connected and node.connected[static.local_id].since > first,
            timeout=5,
        )  # at once, not after a backoff: the Wakeup on PeerDisconnected
        assert node.metrics.get("dials", source="static") >= 2


async def test_wrong_network_disconnects_and_never_retries():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        other = await net.node(cfg(min_peers=1, network_id="someone-else"))
        node = await net.node(cfg(bootstrap=(addr_of(other),), min_peers=1))
        await wait_until(lambda: other.local_id in node.book.wrong_network)
        await wait_until(lambda: other.local_id not in node.host.get_connected_peers(), timeout=10)
        assert node.metrics.get("wrong_network") == 1
        assert not await node.dial(other.local_id, [Multiaddr(addr_of(other))], PeerSource.BOOTSTRAP)
        assert other.metrics.get("bootstrap_requests_served", status="1") >= 1


async def _raw_stream(net: Net, target):
    h = await net.host()
    from libp2p.peer.peerinfo import info_from_p2p_addr

    await h.connect(info_from_p2p_addr(Multiaddr(addr_of(target))))
    return await h.new_stream(target.local_id, [BOOTSTRAP_PROTOCOL])


async def test_malformed_and_oversized_frames_are_reset():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        node = await net.node(cfg(min_peers=1))
        s = await _raw_stream(net, node)
        await s.write(encode_frame(b"\xff\xff\xff not protobuf"))
        with pytest.raises(Exception), trio.fail_after(10):
            await read_frame(s)
        s = await _raw_stream(net, node)
        await s.write(encode_uvarint(10 * 1024 * 1024))  # announces 10 MiB, sends nothing more
        with pytest.raises(Exception), trio.fail_after(10):
            await read_frame(s)
        await wait_until(lambda: node.metrics.get("bad_requests") >= 2, timeout=10)
        assert node.metrics.get("bad_requests", kind="decode") == 1
        assert node.metrics.get("bad_requests", kind="framing") == 1


async def test_silent_caller_is_dropped():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        node = await net.node(cfg(min_peers=1))  # request_timeout 2 s in tests
        s = await _raw_stream(net, node)
        with trio.fail_after(4):
            with pytest.raises(Exception):
                await read_frame(s)
        assert node.metrics.get("bad_requests", kind="timeout") == 1


def _forged_records(victim_key, victim, other_key):
    good_k, good = identity(950)
    addr = Multiaddr("/ip4/127.0.0.1/tcp/1")
    payload = PeerRecord(victim, [addr], 5).marshal_record()
    # wrong signer: a record about `victim` signed by someone else
    sig = other_key.private_key.sign(make_unsigned("libp2p-peer-record", b"\x03\x01", payload))
    wrong_signer = Envelope(other_key.public_key, b"\x03\x01", payload, sig).marshal_envelope()
    # tampered: victim's real envelope with the payload swapped
    real = unmarshal_envelope(sign_record(victim, [addr], victim_key.private_key, seq=6))
    tampered = Envelope(real.public_key, real.payload_type,
                        PeerRecord(victim, [Multiaddr("/ip4/127.0.0.2/tcp/2")], 7).marshal_record(),
                        real.signature).marshal_envelope()
    # wrong domain
    sig = victim_key.private_key.sign(make_unsigned("not-the-domain", b"\x03\x01", payload))
    wrong_domain = Envelope(victim_key.public_key, b"\x03\x01", payload, sig).marshal_envelope()
    good_rec = sign_record(good, [addr], good_k.private_key)
    return [wrong_signer, tampered, wrong_domain, good_rec], good


async def test_forged_records_dropped_and_counted_rest_kept():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        victim_key, victim = identity(951)
        other_key, _ = identity(952)
        blobs, good = _forged_records(victim_key, victim, other_key)
        liar = await net.host()

        async def handler(stream):
            await read_frame(stream)
            resp = BootstrapResponse(0, "prozchain-test", b"", blobs)
            await stream.write(encode_frame(resp.encode()))
            await stream.close()

        liar.set_stream_handler(BOOTSTRAP_PROTOCOL, handler)
        node = await net.node(cfg(bootstrap=(addr_of(liar),), min_peers=5))
        await wait_until(lambda: node.metrics.get("records_rejected") >= 3)
        assert node.metrics.get("records_rejected", reason="signer_mismatch", via="bootstrap") == 1
        assert node.metrics.get("records_rejected", reason="bad_signature", via="bootstrap") == 2
        assert good in node.db
        assert victim not in node.db
        assert node.host.get_peerstore().get_peer_record(good) is not None


async def test_bootstrap_request_round_trip_by_hand():
    """The wire format as a foreign implementation would speak it."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot, peers = await _network(net, 3)
        s = await _raw_stream(net, boot)
        await s.write(encode_frame(BootstrapRequest("prozchain-test", 2).encode()))
        with trio.fail_after(10):
            resp = BootstrapResponse.decode(await read_frame(s))
        assert resp.status == 0 and resp.network_id == "prozchain-test"
        assert len(resp.signed_records) == 2
        assert Multiaddr(resp.observed_addr).value_for_protocol("ip4") == "127.0.0.1"


async def test_restart_rejoins_through_anchors_with_every_bootstrap_source_down(tmp_path):
    from libp2p.crypto.ed25519 import create_new_key_pair

    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(4)]
        key = create_new_key_pair()
        data = tmp_path / "node"
        async with AsyncExitStack() as boot_stack:
            boot = await Net(boot_stack).node(cfg(min_peers=1))
            for p in peers:
                await p.host.connect(
                    __import__("libp2p.peer.peerinfo", fromlist=["x"]).info_from_p2p_addr(Multiaddr(addr_of(boot)))
                )
            await wait_until(lambda: all(boot.host.get_peerstore().get_peer_record(p.local_id) for p in peers))
            c = cfg(bootstrap=(addr_of(boot),), min_peers=3, target_outbound=3, peerdb_path="")
            async with AsyncExitStack() as inner:
                node = await Net(inner).node(c, key=key, data_dir=data)
                await wait_until(lambda: node.joined_at is not None)
                await wait_until(lambda: len(node.db.anchors()) >= 2)
        # The bootstrap node is gone; no DNS seeds; a fresh process with the same data dir.
        async with AsyncExitStack() as inner:
            node = await Net(inner).node(c, key=key, data_dir=data)
            try:
                await wait_until(lambda: node.joined_at is not None, timeout=10)
            except trio.TooSlowError:
                import json
                print(json.dumps({k: v for k, v in node.status().items() if k != "addrs"}, indent=1, default=str))
                raise
            assert len(node.db) >= 3
            assert all(cp.peer_id in {p.local_id for p in peers} for cp in node.connected.values())


async def test_loopback_only_guard_refuses_off_host_dials():
    async with AsyncExitStack() as stack:
        node = await Net(stack).node(cfg(min_peers=1))
        ok = await node.dial(identity(990)[1], [Multiaddr("/ip4/192.0.2.10/tcp/4001")], PeerSource.PEX)
        assert not ok and node.metrics.get("dials_refused_loopback_only") == 1
        # A DNS seed's bare address is not even probed.
        assert await node.dialer.identify_bare([Multiaddr("/ip4/192.0.2.11/tcp/4001")]) == {}
        assert node.metrics.get("dials_refused_loopback_only") == 2
        assert node.metrics.get("dns_probes") == 0


async def test_a_plain_libp2p_node_is_a_connection_but_never_asked_twice():
    """A bootstrap address that turns out to be a libp2p node without our protocols."""
    async with AsyncExitStack() as stack:
        net = Net(stack)
        plain = await net.host()
        c = cfg(bootstrap=(addr_of(plain),), min_peers=2, pex=True, check_interval=0.1)
        node = await net.node(c)
        await wait_until(lambda: node.metrics.get("peers_without_protocol") >= 1)
        passes = node.cascade.schedule.passes
        await wait_until(lambda: node.cascade.schedule.passes >= passes + 3)
        assert plain.get_id() in node.connected  # still a connection
        assert node.metrics.get("bootstrap_requests_failed") == 1  # asked once, then remembered
        # PEX: at most the one request that may beat identify (its "na" is remembered too).
        await wait_until(lambda: node.book.supports(plain.get_id(), "/prozchain/pex/1.0") is False)
        sent = node.metrics.get("pex_requests_sent")
        assert sent <= 1
        await wait_until(lambda: node.cascade.schedule.passes >= passes + 6)
        assert node.metrics.get("pex_requests_sent") == sent
