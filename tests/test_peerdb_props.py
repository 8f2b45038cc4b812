"""Random operation sequences never break the peer database's invariants."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from prozchain_discovery.addrs import AddrScope
from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerTableParams
from tests.conftest import identity

# Small tables so collisions, evictions and test-before-evict happen often.
SMALL = PeerTableParams(new_buckets=8, tried_buckets=4, bucket_size=4, new_buckets_per_source_group=2,
                     tried_buckets_per_group=2, max_addrs_per_peer=3)

op = st.tuples(
    st.sampled_from(["add", "add", "add", "attempt", "success", "failure", "penalize", "expire",
                     "resolve", "select", "share", "anchors", "remove"]),
    st.integers(0, 40),  # peer
    st.integers(0, 12),  # ip group
    st.floats(0, 40 * 86400.0, allow_nan=False),  # time step
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, min_size=1, max_size=120), st.integers(0, 2**32))
def test_invariants_hold_under_random_operations(ops, seed):
    db = PeerDatabase(SMALL, key=b"x" * 32, rng=random.Random(seed), debug=True)
    now = 0.0
    for kind, peer, grp, dt in ops:
        now += dt / 1000.0
        pid = identity(peer)[1]
        if kind == "add":
            src = Multiaddr(f"/ip4/{grp + 20}.0.0.1/tcp/1")
            db.add_addrs(pid, [Multiaddr(f"/ip4/{grp + 1}.{peer}.0.1/tcp/1")], PeerSource.PEX, now, source_addr=src)
        elif kind == "attempt":
            db.mark_attempt(pid, now)
        elif kind == "success":
            db.mark_success(pid, now)
        elif kind == "failure":
            db.mark_failure(pid, now)
        elif kind == "penalize":
            db.penalize(pid, now, 1)
        elif kind == "expire":
            db.expire(now)
        elif kind == "resolve":
            db.resolve_collisions(now)
        elif kind == "select":
            e = db.select_for_dial(now)
            assert e is None or e.peer_id in db
        elif kind == "share":
            got = db.get_peers_for_sharing(5, now, requester=pid, requester_scope=AddrScope.PUBLIC,
                                           min_peer_age=0, signed_only=False)
            assert len(got) <= 5 and all(e.peer_id != pid for e in got)
        elif kind == "anchors":
            db.set_anchors([identity(peer)[1], identity(grp)[1]])
        elif kind == "remove":
            db.remove(pid)
        db.check()
    assert db.new_count <= 8 * 4 and db.tried_count <= 4 * 4
