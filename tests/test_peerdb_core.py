"""The peer database core, sans-IO, with an injected clock."""

from __future__ import annotations

import random

import pytest
from multiaddr import Multiaddr

from prozchain_discovery.addrs import AddrScope
from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerTableParams
from prozchain_discovery.records import sign_record, verify_record
from tests.conftest import identity

DAY = 86400.0


def _db(**cfg) -> PeerDatabase:
    return PeerDatabase(PeerTableParams(**cfg), key=b"k" * 32, rng=random.Random(1), debug=True)


def _rec(i: int, ip: str, seq: int = 1, extra: tuple[str, ...] = ()):
    key, pid = identity(i)
    addrs = [Multiaddr(f"/ip4/{ip}/tcp/4001")] + [Multiaddr(a) for a in extra]
    return verify_record(sign_record(pid, addrs, key.private_key, seq=seq))


SRC = Multiaddr("/ip4/8.8.8.8/tcp/1")


def test_add_and_source_attribution():
    db = _db()
    src = identity(500)[1]
    assert db.add_record(_rec(1, "1.2.3.4"), PeerSource.PEX, 10.0, source_peer=src, source_addr=SRC)
    e = db.get(identity(1)[1])
    assert e is not None and e.source is PeerSource.PEX and e.source_peer == src.to_bytes()
    assert e.source_group == "4:8.8" and e.group == "4:1.2" and e.first_seen == 10.0
    assert db.get_first_seen(identity(1)[1]) == 10.0
    assert e.envelope is not None and e.seq == 1 and not e.in_tried


def test_seq_ordering():
    db = _db()
    pid = identity(1)[1]
    assert db.add_record(_rec(1, "1.2.3.4", seq=5), PeerSource.PEX, 0.0)
    assert not db.add_record(_rec(1, "5.6.7.8", seq=5), PeerSource.PEX, 1.0)  # equal: ignored
    assert not db.add_record(_rec(1, "5.6.7.8", seq=4), PeerSource.PEX, 1.0)  # older: ignored
    assert db.get(pid).addrs == (Multiaddr("/ip4/1.2.3.4/tcp/4001"),)
    assert db.add_record(_rec(1, "5.6.7.8", seq=6), PeerSource.PEX, 2.0)  # newer replaces
    assert db.get(pid).addrs == (Multiaddr("/ip4/5.6.7.8/tcp/4001"),) and db.get(pid).seq == 6


def test_unsigned_addrs_never_override_signed():
    db = _db()
    pid = identity(1)[1]
    db.add_record(_rec(1, "1.2.3.4"), PeerSource.PEX, 0.0)
    db.add_addrs(pid, [Multiaddr("/ip4/6.6.6.6/tcp/1")], PeerSource.DNS, 1.0)
    assert db.get(pid).addrs == (Multiaddr("/ip4/1.2.3.4/tcp/4001"),)


def test_local_peer_never_stored():
    me = identity(1)[1]
    db = PeerDatabase(local_peer_id=me, rng=random.Random(1))
    assert not db.add_record(_rec(1, "1.2.3.4"), PeerSource.PEX, 0.0)
    assert me not in db


def test_addresses_capped():
    db = _db(max_addrs_per_peer=4)
    pid = identity(1)[1]
    db.add_addrs(pid, [Multiaddr(f"/ip4/1.2.3.{i}/tcp/1") for i in range(1, 20)], PeerSource.DNS, 0.0)
    assert len(db.get(pid).addrs) == 4


def test_one_source_group_reaches_bounded_buckets():
    c = PeerTableParams()
    db = PeerDatabase(c, rng=random.Random(2))
    buckets = set()
    for i in range(3000):
        slot = db._new_slot(i.to_bytes(4, "big"), f"4:{i % 250}.{i // 250}", "4:66.66")
        buckets.add(slot // c.bucket_size)
    assert len(buckets) <= c.new_buckets_per_source_group


def test_tried_buckets_per_group_bounded():
    c = PeerTableParams()
    db = PeerDatabase(c, rng=random.Random(2))
    buckets = {db._tried_slot(i.to_bytes(4, "big"), "4:66.66") // c.bucket_size for i in range(3000)}
    assert len(buckets) <= c.tried_buckets_per_group


def test_established_entries_not_flushed():
    """A full slot keeps its healthy occupant: volume cannot push honest entries out."""
    db = _db(new_buckets=1, bucket_size=4, new_buckets_per_source_group=1)
    for i in range(4):
        db.add_addrs(identity(i)[1], [Multiaddr(f"/ip4/{i + 1}.0.0.1/tcp/1")], PeerSource.PEX, 0.0)
    before = {e.pid for e in db.entries()}
    for i in range(100, 200):
        db.add_addrs(identity(i)[1], [Multiaddr("/ip4/66.66.0.1/tcp/1")], PeerSource.PEX, 1.0)
    assert before <= {e.pid for e in db.entries()}
    assert len(db) <= 4


def test_staleness_rules():
    db = _db()
    a, b, c = identity(1)[1], identity(2)[1], identity(3)[1]
    for i, pid in enumerate((a, b, c)):
        db.add_addrs(pid, [Multiaddr(f"/ip4/{i + 1}.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    # a: 3 failures, never a success -> dropped
    for _ in range(3):
        db.mark_attempt(a, 10.0)
        db.mark_failure(a, 10.0)
    # b: succeeded once long ago, then 10 failures over > 7 days -> dropped
    db.mark_success(b, 100.0)
    for _ in range(10):
        db.mark_attempt(b, 100.0 + 8 * DAY)
        db.mark_failure(b, 100.0 + 8 * DAY)
    # c: fine until 30 days unseen
    assert db.expire(100.0 + 8 * DAY + 120) == 2
    assert c in db and a not in db and b not in db
    assert db.expire(31 * DAY) == 1 and c not in db


def test_not_dropped_while_being_dialed():
    db = _db()
    a = identity(1)[1]
    db.add_addrs(a, [Multiaddr("/ip4/1.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    for _ in range(3):
        db.mark_attempt(a, 10.0)
        db.mark_failure(a, 10.0)
    assert db.expire(30.0) == 0  # within a minute of the attempt
    assert db.expire(100.0) == 1


def test_sharing_rules():
    db = _db()
    requester = identity(9)[1]
    db.add_record(_rec(1, "1.1.1.1"), PeerSource.PEX, 0.0)  # old enough, public
    db.add_record(_rec(2, "2.2.2.2"), PeerSource.PEX, 100.0)  # too young
    db.add_record(_rec(3, "3.3.3.3", extra=("/ip4/192.168.1.5/tcp/4001",)), PeerSource.PEX, 0.0)  # private addr
    db.add_record(_rec(9, "9.9.9.9"), PeerSource.PEX, 0.0)  # the requester itself
    db.add_addrs(identity(4)[1], [Multiaddr("/ip4/4.4.4.4/tcp/1")], PeerSource.DNS, 0.0)  # unsigned
    got = db.get_peers_for_sharing(10, 120.0, requester=requester, requester_scope=AddrScope.PUBLIC,
                                   min_peer_age=60.0)
    assert [e.peer_id for e in got] == [identity(1)[1]]
    # A LAN requester may get LAN addresses.
    got = db.get_peers_for_sharing(10, 120.0, requester=requester, requester_scope=AddrScope.PRIVATE,
                                   min_peer_age=60.0)
    assert {e.peer_id for e in got} == {identity(1)[1], identity(3)[1]}
    assert len(db.get_peers_for_sharing(1, 120.0, requester_scope=AddrScope.PRIVATE, min_peer_age=0)) == 1


def test_sharing_prefers_tried():
    db = _db()
    for i in range(1, 41):
        db.add_record(_rec(i, f"{i}.1.1.1"), PeerSource.PEX, 0.0)
    tried = [identity(i)[1] for i in range(1, 6)]
    for pid in tried:
        db.mark_success(pid, 10.0)
    got = db.get_peers_for_sharing(5, 100.0, min_peer_age=0)
    assert {e.peer_id for e in got} == set(tried)


def test_select_for_dial_diversity_and_backoff():
    db = _db()
    # 10 peers in group 5.5, 10 in distinct groups
    for i in range(10):
        db.add_addrs(identity(i)[1], [Multiaddr(f"/ip4/5.5.{i}.1/tcp/1")], PeerSource.PEX, 0.0)
    for i in range(10, 20):
        db.add_addrs(identity(i)[1], [Multiaddr(f"/ip4/{i}.9.9.1/tcp/1")], PeerSource.PEX, 0.0)
    picks, groups = [], set()
    for _ in range(8):
        e = db.select_for_dial(1000.0, exclude=[p.peer_id for p in picks], outbound_groups=groups)
        assert e is not None
        picks.append(e)
        groups.add(e.group)
    assert len(groups) == 8  # one per group
    blocked = {identity(i)[1] for i in range(20)} - {identity(3)[1]}
    e = db.select_for_dial(1000.0, backoff=lambda p: p in blocked)
    assert e is not None and e.peer_id == identity(3)[1]


def test_test_before_evict():
    db = _db(tried_buckets=1, bucket_size=1, tried_buckets_per_group=1)
    old, new = identity(1)[1], identity(2)[1]
    db.add_addrs(old, [Multiaddr("/ip4/1.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    db.add_addrs(new, [Multiaddr("/ip4/2.2.2.2/tcp/1")], PeerSource.PEX, 0.0)
    db.mark_success(old, 10.0)
    db.mark_success(new, 20.0)  # tried has one slot: collision, old is not evicted yet
    assert db.get(old).in_tried and not db.get(new).in_tried
    assert db.pending_collisions() == [(new, old)]
    assert db.select_feeler(21.0).peer_id == old  # the old one is what gets tested
    # The old one answers its test: it stays, the new one stays in new.
    db.mark_attempt(old, 30.0)
    db.mark_success(old, 30.0)
    assert db.resolve_collisions(31.0) == 1
    assert db.get(old).in_tried and not db.get(new).in_tried
    # Later the old one fails its test: evicted to new, the new one takes the slot.
    db.mark_success(new, 40.0)
    db.mark_attempt(old, 50.0)
    db.mark_failure(old, 50.0)
    assert db.resolve_collisions(51.0) == 1
    assert db.get(new).in_tried
    assert old not in db or not db.get(old).in_tried


def test_collision_evicted_after_test_window():
    db = _db(tried_buckets=1, bucket_size=1, tried_buckets_per_group=1)
    old, new = identity(1)[1], identity(2)[1]
    for pid, ip in ((old, "1.1.1.1"), (new, "2.2.2.2")):
        db.add_addrs(pid, [Multiaddr(f"/ip4/{ip}/tcp/1")], PeerSource.PEX, 0.0)
    db.mark_success(old, 10.0)
    db.mark_success(new, 20.0)
    assert db.resolve_collisions(20.0 + 60) == 0
    assert db.resolve_collisions(20.0 + 41 * 60) == 1
    assert db.get(new).in_tried


def test_anchors():
    db = _db(anchors=2)
    ids = [identity(i)[1] for i in range(3)]
    for i, pid in enumerate(ids):
        db.add_addrs(pid, [Multiaddr(f"/ip4/{i + 1}.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    db.set_anchors(ids)
    assert [e.peer_id for e in db.anchors()] == ids[:2]


def test_penalize_drops_misbehaving_peer():
    db = _db()
    a = identity(1)[1]
    db.add_addrs(a, [Multiaddr("/ip4/1.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    db.penalize(a, 5.0, 3)
    assert a not in db


def test_check_detects_corruption():
    from prozchain_discovery.peerdb import PeerDbInvariantError

    db = _db()
    db.add_addrs(identity(1)[1], [Multiaddr("/ip4/1.1.1.1/tcp/1")], PeerSource.PEX, 0.0)
    db.check()
    e = next(db.entries())
    e.slot = (e.slot + 1) % len(db._new)
    with pytest.raises(PeerDbInvariantError):
        db.check()
