"""Signed DNS seeds (pzseed) in the cascade: real py-libp2p nodes on loopback, a real dnsmasq
serving a tree built from their signed records."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from prozchain_discovery.config import DnsConfig
from prozchain_discovery.dnsseed.tree import SeedTree, build_tree
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.records import sign_record
from tests.conftest import identity
from tests.dnsmasq import dnsmasq, txt_line
from tests.netutil import Net, cfg, closed_port, wait_until

pytestmark = pytest.mark.network

DOMAIN = "seed.test"
# dnsmasq reads config lines of at most ~1022 characters (tests/dnsmasq.py)
DNSMASQ_ENTRY = 1020 - len("txt-record=") - (53 + len(DOMAIN)) - 1 - 12


def zone_file(tmp: Path, tree: SeedTree, name: str = "zone.conf") -> Path:
    path = tmp / name
    path.write_text("".join(txt_line(n, s) + "\n" for n, s in tree.zone.items()))
    return path


def dead_records(n: int) -> list[bytes]:
    """Valid signed records of peers that are not running (a closed loopback port each)."""
    out = []
    for i in range(n):
        key, pid = identity(900 + i)
        out.append(sign_record(pid, [Multiaddr(closed_port())], key.private_key, seq=1))
    return out


async def test_a_node_that_knows_only_the_seed_joins_its_peers_and_remembers_the_seq(tmp_path):
    seed_key = create_new_key_pair().private_key
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(3)]
        envelopes = [p.addresses.our_record for p in peers]
        tree = build_tree(envelopes, seed_key, DOMAIN, 7, fanout=2, max_entry_text=DNSMASQ_ENTRY)
        assert tree.depth == 3  # root -> branch -> branch -> leaf
        port = stack.enter_context(dnsmasq(tmp_path, conf_files=[zone_file(tmp_path, tree)]))
        c = cfg(dns_seeds=(str(tree.url),), min_peers=3, dns=DnsConfig(("127.0.0.1",), port, 2.0),
                dns_lookup_interval=3600.0)
        data = tmp_path / "node"
        async with AsyncExitStack() as inner:
            node = await Net(inner).node(c, data_dir=data)
            await wait_until(lambda: node.joined_at is not None, timeout=15)
            assert set(node.connected) == {p.local_id for p in peers}
            assert {cp.source for cp in node.connected.values()} == {PeerSource.DNS}
            seed = node.cascade.signed_seeds[0]
            assert seed.seq == 7 and seed.sync.leaves_verified == 3
            assert node.metrics.get("dns_seed_rejected") == 0
            # depth + 1 = 4 rounds for the root and one path per leaf: 1 + 2 + 3 = 6 names at most
            assert node.metrics.get("dns_seed_queries") <= 1 + 2 + 4 + 3
            st = node.status()["signed_seeds"][0]
            assert st["seq"] == 7 and st["url"] == str(tree.url) and st["rejected"] == {}
            from prozchain_discovery.cli.status import status_lines

            text = "\n".join(status_lines(json.loads(json.dumps(node.status(), default=str))))
            assert f"dns seed   {tree.url}  seq 7, 3 peers verified" in text
            assert all(node.db.get(p.local_id) is not None and node.db.get(p.local_id).envelope is not None
                       for p in peers)
        state = json.loads((data / "state.json").read_text())
        assert state["signed_seeds"][str(tree.url)] == {"seq": 7, "root": tree.root.top.hex()}


async def test_a_forged_root_and_a_rollback_are_refused_and_nothing_is_stored(tmp_path):
    seed_key, other_key = create_new_key_pair().private_key, create_new_key_pair().private_key
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(2)]
        envelopes = [p.addresses.our_record for p in peers]
        good = build_tree(envelopes, seed_key, DOMAIN, 5, max_entry_text=DNSMASQ_ENTRY)
        forged = build_tree(envelopes, other_key, DOMAIN, 9, max_entry_text=DNSMASQ_ENTRY)  # the path's key
        older = build_tree(envelopes[:1], seed_key, DOMAIN, 4, max_entry_text=DNSMASQ_ENTRY)
        data = tmp_path / "node"
        data.mkdir()
        (data / "state.json").write_text(json.dumps(
            {"signed_seeds": {str(good.url): {"seq": 5, "root": good.root.top.hex()}}}))
        for served, reason in ((forged, "bad_signature"), (older, "rollback")):
            work = tmp_path / reason
            work.mkdir()
            port = stack.enter_context(dnsmasq(work, conf_files=[zone_file(work, served)]))
            c = cfg(dns_seeds=(str(good.url),), min_peers=2, dns=DnsConfig(("127.0.0.1",), port, 2.0))
            async with AsyncExitStack() as inner:
                node = await Net(inner).node(c, data_dir=data)
                await wait_until(lambda n=node: n.metrics.get("dns_lookup_failures") >= 1, timeout=15)
                assert node.metrics.get("dns_seed_rejected", reason=reason) == 1
                assert len(node.connected) == 0
                assert all(node.db.get(p.local_id) is None for p in peers)  # nothing unverified kept
                assert node.cascade.signed_seeds[0].seq == 5  # the remembered seq stands
            state = json.loads((data / "state.json").read_text())
            assert state["signed_seeds"][str(good.url)]["seq"] == 5


async def test_the_rest_of_the_tree_is_walked_in_the_background_into_the_book(tmp_path):
    seed_key = create_new_key_pair().private_key
    async with AsyncExitStack() as stack:
        net = Net(stack)
        peers = [await net.node(cfg(min_peers=1)) for _ in range(2)]
        envelopes = [p.addresses.our_record for p in peers] + dead_records(40)
        tree = build_tree(envelopes, seed_key, DOMAIN, 1, max_entry_text=DNSMASQ_ENTRY)
        port = stack.enter_context(dnsmasq(tmp_path, conf_files=[zone_file(tmp_path, tree)]))
        c = cfg(dns_seeds=(str(tree.url),), min_peers=2, dns=DnsConfig(("127.0.0.1",), port, 2.0),
                dns_lookup_interval=3600.0)
        node = await net.node(c)
        seed = node.cascade.signed_seeds[0]
        await wait_until(lambda: seed.walked, timeout=20)
        assert seed.sync.complete and seed.sync.leaves_verified == 42
        fetched = sorted(r.envelope_bytes for r in seed.sync.tree_leaves())
        assert fetched == sorted(envelopes)  # the tree fetched is the list it was built from
        in_book = [ID.from_pubkey(identity(900 + i)[0].public_key) in node.db for i in range(40)]
        assert sum(in_book) >= 36  # the new table's slots may collide (bounded per source group)
        assert node.metrics.get("dns_seed_rejected") == 0


async def test_a_re_sync_from_dnsmasq_asks_only_what_changed(tmp_path):
    """The verified tree is kept: a new root with one peer's new record costs depth + 1 queries."""
    from prozchain_discovery.bootstrap.dns import ResolverConfig
    from prozchain_discovery.bootstrap.signed_seeds import DnsTxt, SignedSeed

    seed_key = create_new_key_pair().private_key
    records = dead_records(60)
    key, pid = identity(900)
    changed = sign_record(pid, [Multiaddr("/ip4/127.0.0.1/tcp/9")], key.private_key, seq=2)
    v1 = build_tree(records, seed_key, DOMAIN, 1, max_entry_text=DNSMASQ_ENTRY)
    v2 = build_tree([changed, *records[1:]], seed_key, DOMAIN, 2, max_entry_text=DNSMASQ_ENTRY)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with dnsmasq(tmp_path / "a", conf_files=[zone_file(tmp_path, v1, "v1.conf")]) as port1, \
            dnsmasq(tmp_path / "b", conf_files=[zone_file(tmp_path, v2, "v2.conf")]) as port2:
        seed = SignedSeed(v1.url, DnsTxt(ResolverConfig(("127.0.0.1",), port1, 2.0)))
        first = await seed.lookup(8)
        rest: list = []
        await seed.walk_rest(rest.extend)
        assert len(first) + len(rest) == 60 and seed.sync.complete and seed.sync.queries == len(v1.zone)
        seed.query = DnsTxt(ResolverConfig(("127.0.0.1",), port2, 2.0))  # the operator published v2
        again = await seed.lookup(8)
        more: list = []
        await seed.walk_rest(more.extend)
        assert seed.seq == 2 and seed.sync.complete
        assert seed.sync.queries == v2.depth + 1  # the root and the changed path only
        assert len(again) == 8  # a lookup returns what its walk reached, known or not
        handed = [r.envelope_bytes for r in more]
        assert set(handed) <= {changed} and changed in handed + [r.envelope_bytes for r in again]


async def test_the_background_walk_samples_a_large_tree_and_a_re_lookup_of_an_unchanged_tree_answers(tmp_path):
    """A tree larger than what the book can hold from one seed is sampled (a bound on queries),
    and a lookup of the same tree again returns its peers from memory after one query (before,
    it returned none: all had been handed out, and the cascade counted a failed lookup)."""
    from prozchain_discovery.bootstrap.dns import ResolverConfig
    from prozchain_discovery.bootstrap.signed_seeds import DnsTxt, SignedSeed

    seed_key = create_new_key_pair().private_key
    tree = build_tree(dead_records(60), seed_key, DOMAIN, 1, max_entry_text=DNSMASQ_ENTRY, fanout=4)
    with dnsmasq(tmp_path, conf_files=[zone_file(tmp_path, tree)]) as port:
        txt = DnsTxt(ResolverConfig(("127.0.0.1",), port, 2.0))
        seed = SignedSeed(tree.url, txt)
        first = await seed.lookup(4)
        sampled: list = []
        await seed.walk_rest(sampled.extend, leaves=20)
        assert len(first) == 4 and len(first) + len(sampled) == seed.sync.leaves_verified == 20
        assert seed.walked and not seed.sync.complete  # a sample, not the tree
        assert txt.queries < len(tree.zone) / 2
        await seed.walk_rest(sampled.extend)  # now all of it
        assert seed.sync.complete and len(first) + len(sampled) == 60
        before = txt.queries
        again = await seed.lookup(4)
        assert txt.queries == before + 1  # the root only: every entry on the way is known
        assert len(again) == 4  # the same tree's peers again, though handed out before


async def test_a_damaged_remembered_root_is_ignored_with_a_warning(tmp_path, caplog):
    seed_key = create_new_key_pair().private_key
    tree = build_tree(dead_records(3), seed_key, DOMAIN, 4, max_entry_text=DNSMASQ_ENTRY)
    data = tmp_path / "node"
    data.mkdir()
    (data / "state.json").write_text(json.dumps(
        {"last_dns_lookup_wall": 1.0, "signed_seeds": {str(tree.url): {"seq": "7", "root": "not hex"}}}))
    c = cfg(dns_seeds=(str(tree.url),), min_peers=1, dns=DnsConfig(("127.0.0.1",), 9, 0.2))
    async with AsyncExitStack() as stack:
        node = await Net(stack).node(c, data_dir=data)
        assert node.cascade.signed_seeds[0].seq is None  # not a made-up seq
        assert any("damaged" in r.getMessage() and DOMAIN in r.getMessage() for r in caplog.records)
