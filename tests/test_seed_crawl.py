"""``seed crawl`` against a real loopback network: a bootstrap node and DiscoveryService nodes
(PEX on, min_peer_age 0), one of them stopped after the network learned it."""

from __future__ import annotations

import base64
import functools
import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from prozchain_discovery.cli import main
from prozchain_discovery.records import verify_record
from tests.netutil import NET, Net, addr_of, cfg, wait_until

pytestmark = [pytest.mark.network]

NODES = 5


def _argv(bootstrap: list[str], out: Path, *extra: str) -> list[str]:
    argv = ["seed", "crawl", "--out", str(out), "--network-id", NET, "--timeout", "20"]
    for ma in bootstrap:
        argv += ["--bootstrap", ma]
    return argv + list(extra)


async def _crawl(bootstrap: list[str], out: Path, *extra: str) -> int:
    """``prozchain-discovery seed crawl`` in a worker thread (its own trio.run), the network here."""
    return await trio.to_thread.run_sync(functools.partial(main, _argv(bootstrap, out, *extra)))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _envelope(line: dict) -> bytes:
    text = line["envelope"]
    assert "=" not in text
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_crawl_writes_live_peers_and_not_a_stopped_one(tmp_path, capfd):
    async with AsyncExitStack() as stack:
        net = Net(stack)
        boot = await net.node(cfg(min_peers=1, pex=True))
        c = cfg(bootstrap=(addr_of(boot),), min_peers=2, pex=True)
        nodes = [await net.node(c) for _ in range(NODES)]
        async with AsyncExitStack() as gone_stack:
            gone = await net.node(c, stack=gone_stack)
            everyone = [boot, *nodes, gone]

            def learned() -> bool:
                # Every node joined, and the bootstrap node holds each one's signed record
                # (what it answers from, gone included once gone is disconnected).
                if not all(n.joined_at is not None for n in everyone[1:]):
                    return False
                return all((e := boot.db.get(n.local_id)) is not None and e.signed for n in everyone[1:])

            await wait_until(learned, timeout=15)
        # gone's host and service are stopped (its listener closed). A host stopped in-process
        # leaves its TCP connections open: the others close theirs, as if its process had ended.
        for n in everyone[:-1]:
            await n.host.disconnect(gone.local_id)
        await wait_until(lambda: gone.local_id not in boot.connected, timeout=10)

        out = tmp_path / "records.jsonl"
        t0 = trio.current_time()
        code = await _crawl([addr_of(boot)], out)
        took = trio.current_time() - t0
        err = capfd.readouterr().err
        print(f"\ncrawl of {NODES + 2} nodes ({NODES + 1} live) took {took:.2f} s\n{err}")
        assert code == 0, err

        lines = _read(out)
        live = {str(n.local_id) for n in [boot, *nodes]}
        assert {line["peer_id"] for line in lines} == live
        assert str(gone.local_id) not in out.read_text()
        for line in lines:
            rec = verify_record(_envelope(line))
            assert str(rec.peer_id) == line["peer_id"] and rec.seq == line["seq"]
            assert [str(a) for a in rec.addrs] == line["addrs"]
        # gone's record was seen (the bootstrap node still hands it out) but refused the dial.
        assert "refused a dial 1" in err, err
        assert f"written {len(live)}" in err

        # --max-peers: the crawl stops at that many records.
        few = tmp_path / "few.jsonl"
        code = await _crawl([addr_of(boot)], few, "--max-peers", "2")
        err = capfd.readouterr().err
        assert code == 0, err
        assert "crawl max-peers" in err and len(_read(few)) == 2
        assert {line["peer_id"] for line in _read(few)} <= live


async def test_crawl_skips_a_bootstrap_node_on_another_network(tmp_path, capfd):
    async with AsyncExitStack() as stack:
        net = Net(stack)
        other = await net.node(cfg(min_peers=1, pex=True, network_id="prozchain-other"))
        out = tmp_path / "records.jsonl"
        code = await _crawl([addr_of(other)], out)
        err = capfd.readouterr().err
    assert code == 1, err
    assert f"skipped {other.local_id}: it is on network 'prozchain-other'" in err
    assert not out.exists()


def test_bootstrap_without_peer_id_is_one_line_and_exit_2(tmp_path, capfd):
    out = tmp_path / "records.jsonl"
    code = main(_argv(["/ip4/127.0.0.1/tcp/4001"], out))
    err = capfd.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --bootstrap /ip4/127.0.0.1/tcp/4001: has no /p2p/<peer id>")
    assert not out.exists()
    code = main(_argv(["/ip4/nonsense"], out))
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "/ip4/nonsense" in err


async def test_crawl_stops_at_timeout_and_writes_nothing_without_an_answer(tmp_path, capfd):
    from tests.conftest import identity
    from tests.netutil import black_hole

    sock, addr = black_hole()  # accepts TCP, never speaks: the dial hangs until the deadline
    with sock:
        out = tmp_path / "records.jsonl"
        code = await _crawl([f"{addr}/p2p/{identity(970)[1]}"], out, "--timeout", "0.5")
    err = capfd.readouterr().err
    assert code == 1, err
    assert "crawl timeout after 0.5 s" in err and "written 0" in err
    assert err.rstrip().splitlines()[-1].startswith("error: no record to write")
    assert not out.exists()


async def test_a_node_that_is_not_the_named_peer_does_not_answer_the_dial(tmp_path, capfd):
    from tests.conftest import identity

    async with AsyncExitStack() as stack:
        net = Net(stack)
        node = await net.node(cfg(min_peers=1, pex=True))
        transport = addr_of(node).split("/p2p/")[0]
        out = tmp_path / "records.jsonl"
        impostor = identity(971)[1]  # Noise proves the listener is node, not this peer id
        code = await _crawl([f"{transport}/p2p/{impostor}"], out)
        err = capfd.readouterr().err
    assert code == 1, err
    assert f"bootstrap node {impostor} at {transport} did not answer a dial" in err
    assert "refused a dial 1" in err and not out.exists()


def test_the_newest_record_is_written_unless_it_drops_the_address_that_answered():
    from multiaddr import Multiaddr

    from prozchain_discovery.crawl import Crawler, _Peer
    from prozchain_discovery.records import sign_record
    from tests.conftest import identity

    class _Host:
        def get_id(self):
            return identity(980)[1]

    a, b = Multiaddr("/ip4/127.0.0.1/tcp/1001"), Multiaddr("/ip4/127.0.0.1/tcp/1002")
    (key1, p1), (key2, p2) = identity(981), identity(982)
    old1, old2 = (verify_record(sign_record(p, [a], k.private_key, seq=1)) for k, p in ((key1, p1), (key2, p2)))
    crawler = Crawler(_Host(), NET)  # type: ignore[arg-type]
    crawler._learn([old1, old2], {})
    for pid, old in ((p1, old1), (p2, old2)):  # both dialed at a, with their seq 1 record
        peer: _Peer = crawler.peers[pid]
        peer.dial_ok, peer.dialed, peer.answered_at, peer.confirmed = True, old, a, True
        crawler._kept.append(pid)
    crawler._learn([verify_record(sign_record(p1, [a, b], key1.private_key, seq=2)),  # still lists a
                    verify_record(sign_record(p2, [b], key2.private_key, seq=2))], {})  # a dropped
    seqs = {rec.peer_id: rec.seq for rec in crawler._finish().records}
    assert seqs == {p1: 2, p2: 1}
