"""DNS seeds, sans-IO: build a signed tree, walk it over an in-memory zone, refuse forgeries.

The "zone" is a dict name -> TXT strings, as `build_tree` writes it; a test edits it the way a
hostile DNS path (or a careless operator) would and checks the named reason and that nothing
unverified comes out.
"""

from __future__ import annotations

import random
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.peer.envelope import Envelope, unmarshal_envelope
from libp2p.peer.peer_record import PeerRecord
from multiaddr import Multiaddr

from prozchain_discovery.dnsseed.sync import SeedSync, SyncLimits, SyncPhase, walk_zone
from prozchain_discovery.dnsseed.tree import (
    MAX_CHILDREN,
    Branch,
    Leaf,
    Root,
    SeedError,
    SeedRejection,
    answer_bytes,
    build_tree,
    children_per_branch,
    encode_branch,
    encode_leaf,
    encode_root,
    entry_budget,
    entry_hash,
    hash_name,
    join_txt,
    parse_entry,
    parse_root,
    sign_root,
    split_txt,
)
from prozchain_discovery.dnsseed.url import SeedUrl, SeedUrlError, UrlProblem, b32encode, parse_url
from prozchain_discovery.records import sign_record
from tests.conftest import identity

DOMAIN = "seed.example.org"
OPERATOR, _ = identity(100_000)
LONGEST = "a" * 60 + "." + "b" * 60 + "." + "c" * 6  # 128 characters, the longest domain
Zone = dict[str, list[str]]


@cache
def envelope(i: int, seq: int = 1) -> bytes:
    key, pid = identity(i)
    return sign_record(pid, [Multiaddr(f"/ip4/198.51.{i // 250}.{i % 250 + 1}/tcp/4001")], key.private_key, seq=seq)


def envelopes(n: int, start: int = 1) -> list[bytes]:
    return [envelope(i) for i in range(start, start + n)]




def new_sync(url: SeedUrl, **kw) -> SeedSync:
    return SeedSync(url, rng=random.Random(7), **kw)


def signed_zone(entries: list[str], top_text: str, seq: int = 1, domain: str = DOMAIN) -> Zone:
    """A zone of hand-made entries under a correctly signed root (an operator's own mistakes)."""
    zone = {hash_name(entry_hash(t), domain): split_txt(t) for t in entries}
    root = sign_root(OPERATOR.private_key, domain, entry_hash(top_text), seq)
    zone[domain] = [encode_root(root)]
    return zone


def url() -> SeedUrl:
    return SeedUrl.for_key(OPERATOR.public_key, DOMAIN)


def leaf_names(zone: Zone) -> list[str]:
    return sorted(n for n, v in zone.items() if "".join(v).startswith("pzseed-leaf:"))


def branch_names(zone: Zone) -> list[str]:
    return sorted(n for n, v in zone.items() if "".join(v).startswith("pzseed-branch:"))


# ---- URL -----------------------------------------------------------------------------------------

def test_url_round_trip_and_case():
    u = url()
    text = str(u)
    assert text == f"pzseed://{b32encode(OPERATOR.public_key.to_bytes())}@{DOMAIN}"
    assert len(text.split("@")[0]) == len("pzseed://") + 52
    assert parse_url(text) == u
    assert parse_url(text.replace(DOMAIN, "SEED.Example.org.")) == u
    key_part = text[len("pzseed://"):].split("@")[0]
    assert parse_url(f"PZSEED://{key_part.upper()}@{DOMAIN}") == u


@pytest.mark.parametrize(("text", "problem"), [
    ("enrtree://AAAA@x.org", UrlProblem.SCHEME),
    ("pzseed://nokeyhere", UrlProblem.SCHEME),
    ("pzseed://abc@x.org", UrlProblem.KEY),
    ("pzseed://" + "a" * 51 + "9@x.org", UrlProblem.KEY),
    ("pzseed://" + "a" * 51 + "b@x.org", UrlProblem.KEY),  # non-zero pad bits: non-canonical
    ("pzseed://" + b32encode(bytes(32)) + "@x.org", UrlProblem.KEY),  # not a usable point
    (f"pzseed://{b32encode(OPERATOR.public_key.to_bytes())}@", UrlProblem.DOMAIN),
    (f"pzseed://{b32encode(OPERATOR.public_key.to_bytes())}@a..b", UrlProblem.DOMAIN),
    (f"pzseed://{b32encode(OPERATOR.public_key.to_bytes())}@-a.org", UrlProblem.DOMAIN),
    (f"pzseed://{b32encode(OPERATOR.public_key.to_bytes())}@" + "a." * 70 + "org", UrlProblem.DOMAIN),
])
def test_url_errors(text, problem):
    with pytest.raises(SeedUrlError) as info:
        parse_url(text)
    assert info.value.problem is problem


# ---- building and the round trip -----------------------------------------------------------------

def test_round_trip_equals_input():
    records = envelopes(300)
    tree = build_tree(records, OPERATOR.private_key, DOMAIN, seq=5)
    assert tree.url == url()
    sync = new_sync(tree.url)
    walk_zone(sync, tree.zone)
    assert sync.complete and not sync.rejected
    assert sorted(r.envelope_bytes for r in sync.tree_leaves()) == sorted(records)
    assert sorted(r.envelope_bytes for r in sync.take_leaves()) == sorted(records)
    assert sync.seq == 5 and sync.root_hash == tree.root.top
    # Every name queried once: the root, the branches, the leaves.
    assert sync.queries == len(tree.zone)


def test_every_answer_fits_1232_bytes_and_512_option():
    tree = build_tree(envelopes(200), OPERATOR.private_key, DOMAIN, seq=1)
    assert tree.fanout == MAX_CHILDREN == 22
    for strings in tree.zone.values():
        assert all(len(s) <= 255 for s in strings)
        assert answer_bytes(DOMAIN, sum(map(len, strings))) <= 1232
    small = build_tree(envelopes(200), OPERATOR.private_key, DOMAIN, seq=1, udp_size=512)
    assert small.fanout == children_per_branch(entry_budget(DOMAIN, 512)) == 9
    assert all(answer_bytes(DOMAIN, sum(map(len, v)), edns=False) <= 512 for v in small.zone.values())
    # The longest domain allowed still leaves 21 children per branch in 1232 bytes.
    assert children_per_branch(entry_budget(LONGEST)) == 21


def test_builder_keeps_the_newest_record_per_peer_and_refuses_bad_ones():
    tree = build_tree([envelope(1, 1), envelope(1, 3), envelope(2)], OPERATOR.private_key, DOMAIN, 1)
    assert sorted((str(r.peer_id), r.seq) for r in tree.leaves) == sorted(
        [(str(identity(1)[1]), 3), (str(identity(2)[1]), 1)])
    with pytest.raises(SeedError) as info:
        build_tree([b"junk"], OPERATOR.private_key, DOMAIN, 1)
    assert info.value.reason is SeedRejection.BAD_RECORD
    key, pid = identity(3)
    fat = sign_record(pid, [Multiaddr(f"/ip4/198.51.100.{i}/tcp/4001") for i in range(1, 64)], key.private_key)
    with pytest.raises(SeedError) as info:
        build_tree([fat], OPERATOR.private_key, DOMAIN, 1)
    assert info.value.reason is SeedRejection.OVERSIZED


def test_empty_and_single_leaf_trees():
    empty = build_tree([], OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(empty.url)
    walk_zone(sync, empty.zone)
    assert sync.complete and sync.tree_leaves() == []
    one = build_tree(envelopes(1), OPERATOR.private_key, DOMAIN, 1)
    assert one.depth == 1
    sync = new_sync(one.url)
    walk_zone(sync, one.zone, target=1, full=False)
    assert [r.envelope_bytes for r in sync.take_leaves()] == envelopes(1)


# ---- the random walk: N leaves in depth + 1 rounds -----------------------------------------------

@pytest.mark.parametrize(("n", "fanout"), [(500, None), (300, 4), (60, 3), (23, None)])
def test_first_leaves_in_depth_plus_one_rounds(n, fanout):
    tree = build_tree(envelopes(n), OPERATOR.private_key, DOMAIN, 1, fanout=fanout)
    for seed in range(5):
        sync = SeedSync(tree.url, rng=random.Random(seed))
        rounds = walk_zone(sync, tree.zone, target=8, full=False)
        got = sync.take_leaves()
        assert len(got) >= 8 and len({r.peer_id for r in got}) == len(got)
        assert rounds <= tree.depth + 1, (rounds, tree.depth)
        assert sync.depth == tree.depth  # the walk reached leaves, at the tree's depth
        # Only what the walk needs: the root, and at most 8 paths.
        assert sync.queries <= 1 + 8 * tree.depth
        assert not sync.rejected


def test_walk_leaves_are_what_this_walk_reached_handed_out_before_or_not():
    tree = build_tree(envelopes(60), OPERATOR.private_key, DOMAIN, 1, fanout=4)
    sync = new_sync(tree.url)
    walk_zone(sync, tree.zone, target=8, full=False)
    first = sync.take_leaves()
    assert sorted(r.envelope_bytes for r in sync.walk_leaves()) == sorted(r.envelope_bytes for r in first)
    walk_zone(sync, tree.zone, target=8, full=False)  # the same tree again: from memory
    assert len(sync.walk_leaves()) >= 8 and sync.queries <= 1 + 8 * tree.depth
    forged = build_tree(envelopes(60), identity(666)[0].private_key, DOMAIN, 2)
    walk_zone(sync, forged.zone, target=8, full=False)
    assert sync.walk_leaves() == []  # a refused root: nothing reached


@pytest.mark.parametrize("fanout", [None, 4])
def test_a_large_want_after_the_lookup_fills_whole_subtrees(fanout):
    """The node's background sample: demand added later goes to unvisited subtrees by what
    they hold, not one leaf to each branch of the tree (which asked every branch)."""
    tree = build_tree(envelopes(500), OPERATOR.private_key, DOMAIN, 1, fanout=fanout)
    branches = len(tree.zone) - 1 - 500
    sync = new_sync(tree.url)
    walk_zone(sync, tree.zone, target=8, full=False)
    sync.want(200)
    while names := sync.wanted():
        for name in names:
            sync.on_answer(name, [tree.zone[name]])
    assert sync.leaves_verified == 200 and not sync.rejected
    width = tree.fanout
    # 200 leaves, their parents (about 200 / width of them), the lookup's paths and the root
    assert sync.queries <= 200 + 200 // width + 2 + 8 * tree.depth, (sync.queries, branches)
    assert sync.queries - 200 < branches  # not every branch


def test_more_leaves_later_and_the_rest():
    tree = build_tree(envelopes(120), OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(tree.url)
    walk_zone(sync, tree.zone, target=8, full=False)
    first = sync.take_leaves()
    assert 8 <= len(first) < 120
    sync.want(30)
    while names := sync.wanted():
        for name in names:
            sync.on_answer(name, [tree.zone[name]])
    second = sync.take_leaves()
    assert len(first) + len(second) >= 30
    sync.want_all()
    while names := sync.wanted():
        for name in names:
            sync.on_answer(name, [tree.zone[name]])
    rest = sync.take_leaves()
    assert sorted(r.envelope_bytes for r in first + second + rest) == sorted(envelopes(120))
    assert sync.complete


def test_withheld_subtree_demand_goes_elsewhere():
    tree = build_tree(envelopes(200), OPERATOR.private_key, DOMAIN, 1)
    zone = dict(tree.zone)
    top = hash_name(tree.root.top, DOMAIN)
    for name in [n for n in branch_names(zone) if n != top][:3]:
        del zone[name]  # the path withholds some branches (it cannot forge them)
    sync = new_sync(tree.url)
    walk_zone(sync, zone, target=8, full=False)
    assert len(sync.take_leaves()) >= 8
    sync = new_sync(tree.url)
    walk_zone(sync, zone)
    assert sync.rejected[SeedRejection.UNAVAILABLE] == 3 and not sync.complete
    got = {r.envelope_bytes for r in sync.tree_leaves()}
    assert got < set(envelopes(200))  # the withheld part is missing, the rest verified


def test_resync_asks_only_what_changed():
    records = envelopes(400)
    old = build_tree(records, OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(old.url)
    walk_zone(sync, old.zone)
    assert len(sync.take_leaves()) == 400
    changed = records[:-1] + [envelope(400, seq=2)]  # one peer published a newer record
    new = build_tree(changed, OPERATOR.private_key, DOMAIN, 2)
    walk_zone(sync, new.zone)
    assert sync.complete and sync.seq == 2
    assert sync.queries <= 1 + new.depth  # the root and one path
    assert sorted(r.envelope_bytes for r in sync.tree_leaves()) == sorted(changed)
    # Only the new record comes out again; the unchanged ones were handed out last time.
    assert [r.envelope_bytes for r in sync.take_leaves()] == [envelope(400, seq=2)]


# ---- refusals ------------------------------------------------------------------------------------

def _refused(sync: SeedSync, reason: SeedRejection) -> None:
    assert sync.rejected[reason] >= 1, dict(sync.rejected)
    assert any(r is reason for _, r, _ in sync.rejections)


def test_forged_root_signature():
    tree = build_tree(envelopes(30), OPERATOR.private_key, DOMAIN, 1)
    forger, _ = identity(666)
    forged = build_tree(envelopes(30, start=500), forger.private_key, DOMAIN, 9)
    sync = new_sync(tree.url)
    walk_zone(sync, forged.zone)
    _refused(sync, SeedRejection.BAD_SIGNATURE)
    assert sync.phase is SyncPhase.FAILED and sync.take_leaves() == [] and sync.seq is None
    # A root the operator signed for another domain does not verify here either.
    elsewhere = build_tree(envelopes(30), OPERATOR.private_key, "other.example.org", 9)
    zone = dict(tree.zone)
    zone[DOMAIN] = elsewhere.zone["other.example.org"]
    sync = new_sync(tree.url)
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.BAD_SIGNATURE)
    assert sync.take_leaves() == []


def test_tampered_root_fields():
    tree = build_tree(envelopes(30), OPERATOR.private_key, DOMAIN, 4)
    text = tree.zone[DOMAIN][0]
    for bad in (text.replace("seq=4", "seq=5"),
                text.replace(" h=" + text.split(" h=")[1][:2], " h=" + ("AB" if text.split(" h=")[1][:2] != "AB" else "CD"))):
        zone = dict(tree.zone)
        zone[DOMAIN] = [bad]
        sync = new_sync(tree.url)
        walk_zone(sync, zone)
        _refused(sync, SeedRejection.BAD_SIGNATURE)
        assert sync.take_leaves() == []


def test_leaf_swapped_for_another_valid_record():
    tree = build_tree(envelopes(50), OPERATOR.private_key, DOMAIN, 1)
    zone = dict(tree.zone)
    victim = leaf_names(zone)[0]
    zone[victim] = split_txt(encode_leaf(envelope(999)))  # valid, signed by its peer, not listed
    sync = new_sync(tree.url)
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.HASH_MISMATCH)
    got = {r.envelope_bytes for r in sync.tree_leaves()}
    assert envelope(999) not in got and len(got) == 49 and got < set(envelopes(50))
    assert not sync.complete


def test_tampered_branch():
    tree = build_tree(envelopes(100), OPERATOR.private_key, DOMAIN, 1)
    zone = dict(tree.zone)
    name = branch_names(zone)[-1]
    entry = parse_entry("".join(zone[name]))
    assert isinstance(entry, Branch)
    evil = build_tree(envelopes(5, start=700), OPERATOR.private_key, "evil.example.org", 1)
    for n, v in evil.zone.items():
        if n != "evil.example.org":
            zone[n.replace("evil.example.org", DOMAIN)] = v
    evil_leaf = entry_hash("".join(evil.zone[leaf_names(evil.zone)[0]]))
    zone[name] = split_txt(encode_branch([*entry.children[:-1], evil_leaf]))
    sync = new_sync(tree.url)
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.HASH_MISMATCH)
    got = {r.envelope_bytes for r in sync.tree_leaves()}
    assert got.isdisjoint(envelopes(5, start=700)) and got < set(envelopes(100))


def test_rollback_and_reused_seq():
    new = build_tree(envelopes(20), OPERATOR.private_key, DOMAIN, 7)
    old = build_tree(envelopes(10), OPERATOR.private_key, DOMAIN, 6)
    sync = new_sync(new.url)
    walk_zone(sync, new.zone)
    assert sync.seq == 7
    walk_zone(sync, old.zone)  # the path replays an older, validly signed tree
    _refused(sync, SeedRejection.ROLLBACK)
    assert sync.seq == 7 and sync.phase is SyncPhase.FAILED
    assert len(sync.take_leaves()) == 20  # the first walk's, nothing from the replay
    # Across a restart: the adapter hands the remembered seq back.
    restarted = new_sync(new.url, last_seq=7, last_root_hash=new.root.top)
    walk_zone(restarted, old.zone)
    _refused(restarted, SeedRejection.ROLLBACK)
    assert restarted.take_leaves() == []
    other = build_tree(envelopes(10), OPERATOR.private_key, DOMAIN, 7)  # seq 7 again, other tree
    walk_zone(restarted, other.zone)
    _refused(restarted, SeedRejection.SEQ_REUSED)
    assert restarted.take_leaves() == []
    walk_zone(restarted, new.zone)  # the same tree at the same seq is fine
    assert restarted.complete and len(restarted.take_leaves()) == 20


def test_loop_between_branches():
    leaf = encode_leaf(envelope(1))
    other = encode_leaf(envelope(2))
    b2 = encode_branch([entry_hash(leaf)])
    b1 = encode_branch([entry_hash(leaf), entry_hash(other), entry_hash(b2)])
    zone = signed_zone([leaf, other, b1, b2], b1)
    sync = new_sync(url())
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.LOOP)
    assert sorted(r.envelope_bytes for r in sync.tree_leaves()) == sorted([envelope(1), envelope(2)])
    assert not sync.complete
    # A child listed twice in one branch.
    twice = encode_branch([entry_hash(leaf), entry_hash(leaf)])
    sync = new_sync(url())
    walk_zone(sync, signed_zone([leaf, twice], twice))
    _refused(sync, SeedRejection.LOOP)
    assert sync.take_leaves() == []


def test_oversized_txt():
    tree = build_tree(envelopes(30), OPERATOR.private_key, DOMAIN, 1)
    zone = dict(tree.zone)
    name = leaf_names(zone)[0]
    zone[name] = ["".join(zone[name])[:200] + "A" * 56]  # a 256-character string
    sync = new_sync(tree.url)
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.OVERSIZED)
    # An entry over 1000 characters, even one the operator signed, is refused unread.
    big = encode_leaf(b"\x00" * 760)
    zone = signed_zone([big], big)
    sync = new_sync(url())
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.OVERSIZED)
    assert sync.take_leaves() == []
    for strings in (["x"] * 9, ["x"] * 100_000, ["a" * 255] * 4 + ["a"]):
        with pytest.raises(SeedError) as info:
            join_txt(strings)
        assert info.value.reason is SeedRejection.OVERSIZED
    assert join_txt(["ab", "", "c"] * 2) == "abcabc"  # any split of up to 8 strings is one text
    # Too many TXT records in one answer, and a record of 100,000 strings: refused unread.
    sync = new_sync(tree.url)
    sync.start(8)
    [root] = sync.wanted()
    sync.on_answer(root, [["v=spf1"]] * 17)
    _refused(sync, SeedRejection.OVERSIZED)
    sync.start(8)
    [root] = sync.wanted()
    sync.on_answer(root, [[""] * 100_000, tree.zone[DOMAIN]])
    assert sync.phase is SyncPhase.TREE and sync.bytes == len(tree.zone[DOMAIN][0])


def test_too_deep_and_too_wide():
    deep = build_tree(envelopes(40), OPERATOR.private_key, DOMAIN, 1, fanout=2)
    assert deep.depth == 7
    sync = new_sync(deep.url)  # max_depth 6
    walk_zone(sync, deep.zone)
    _refused(sync, SeedRejection.TOO_DEEP)
    assert not sync.complete and len(sync.tree_leaves()) < 40
    wide = build_tree(envelopes(30), OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(wide.url, limits=SyncLimits(max_children=8))
    walk_zone(sync, wide.zone)
    _refused(sync, SeedRejection.TOO_WIDE)
    assert sync.tree_leaves() == []


def test_limits_on_leaves_queries_and_bytes():
    tree = build_tree(envelopes(100), OPERATOR.private_key, DOMAIN, 1)
    for limits in (SyncLimits(max_leaves=10), SyncLimits(max_queries=20), SyncLimits(max_bytes=5000)):
        sync = new_sync(tree.url, limits=limits)
        walk_zone(sync, tree.zone)
        _refused(sync, SeedRejection.LIMIT)
        assert not sync.complete
        assert len(sync.tree_leaves()) <= 10 or limits.max_leaves != 10
        assert sync.queries <= 20 or limits.max_queries != 20
        assert sync.bytes <= 5000 or limits.max_bytes != 5000


def test_garbage_in_every_field():
    ok_leaf = encode_leaf(envelope(1))
    key, pid = identity(2)
    env = unmarshal_envelope(envelope(2))
    tampered = Envelope(env.public_key, env.payload_type,
                        PeerRecord(pid, [Multiaddr("/ip4/6.6.6.6/tcp/1")], 9).marshal_record(),
                        env.signature).marshal_envelope()
    cases = {
        "pzseed-leaf:" + "!!!": SeedRejection.BAD_ENCODING,
        "pzseed-leaf:": SeedRejection.BAD_ENCODING,
        "pzseed-leaf:QQ=": SeedRejection.BAD_ENCODING,
        "pzseed-leaf:QR": SeedRejection.BAD_ENCODING,  # non-canonical base64url
        "pzseed-leaf:" + encode_leaf(b"not an envelope")[12:]: SeedRejection.BAD_RECORD,
        encode_leaf(tampered): SeedRejection.BAD_RECORD,
        "pzseed-branch:abc": SeedRejection.BAD_ENCODING,
        "pzseed-branch:" + "A" * 43 + ",": SeedRejection.BAD_ENCODING,
        "pzseed-branch:" + "*" * 43: SeedRejection.BAD_ENCODING,
        "pzseed-twig:" + "A" * 43: SeedRejection.BAD_ENCODING,
        "PZSEED-LEAF:" + ok_leaf[12:]: SeedRejection.BAD_ENCODING,
        "pzseed-root:v1 h=x seq=1 sig=y": SeedRejection.BAD_ENCODING,
    }
    for text, reason in cases.items():
        top = encode_branch([entry_hash(ok_leaf), entry_hash(text)])
        sync = new_sync(url())
        walk_zone(sync, signed_zone([ok_leaf, text, top], top))
        _refused(sync, reason)
        assert [r.envelope_bytes for r in sync.tree_leaves()] == [envelope(1)], text
    # Non-ASCII bytes in a TXT string.
    top = encode_branch([entry_hash(ok_leaf)])
    zone = signed_zone([ok_leaf, top], top)
    zone[leaf_names(zone)[0]] = [b"pzseed-leaf:\xff\xfe"]  # type: ignore[list-item]
    sync = new_sync(url())
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.BAD_ENCODING)
    # The root record's fields.
    root = parse_root("".join(zone[DOMAIN]))
    good = encode_root(root)
    for bad in (good.replace("seq=1", "seq=01"), good.replace("seq=1", f"seq={2**64}"),
                good.replace("seq=1", "seq=-1"), good + " ", good.replace(" sig=", "  sig="),
                good.replace("pzseed-root:v1", "pzseed-root:v2"), good[:-2], good.replace("h=", "e=")):
        zone2 = dict(zone)
        zone2[DOMAIN] = split_txt(bad)
        sync = new_sync(url())
        walk_zone(sync, zone2)
        assert sync.phase is SyncPhase.FAILED and sync.take_leaves() == []
        assert sync.rejected[SeedRejection.BAD_ENCODING] + sync.rejected[SeedRejection.NO_ROOT] == 1, bad
    for other in (["v=spf1 -all"], [good.replace("pzseed-root:v1", "pzseed-root:v2")]):
        zone2 = dict(zone)
        zone2[DOMAIN] = other  # not a v1 root: ignored, as a v1 client ignores a v2 root
        sync = new_sync(url())
        walk_zone(sync, zone2)
        _refused(sync, SeedRejection.NO_ROOT)


def test_root_among_other_apex_records_and_name_forms():
    tree = build_tree(envelopes(10), OPERATOR.private_key, DOMAIN, 3)
    sync = new_sync(tree.url)
    sync.start(0)
    sync.want_all()
    [root_name] = sync.wanted()
    sync.on_answer("nobody.asked.for.this", [["pzseed-root:v1 junk"]])  # unsolicited: ignored
    sync.on_answer(root_name.upper() + ".", [["v=spf1 -all"], tree.zone[DOMAIN], ["google-site-verification=x"]])
    assert sync.phase is SyncPhase.TREE and sync.seq == 3
    while names := sync.wanted():
        for name in names:
            sync.on_answer(name, [["junk"], tree.zone[name]])  # extra records at a hash name
    assert sync.complete and len(sync.tree_leaves()) == 10


def test_own_record_is_skipped_not_counted():
    tree = build_tree(envelopes(10), OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(tree.url, local_peer_id=identity(3)[1])
    walk_zone(sync, tree.zone)
    assert not sync.rejected and len(sync.tree_leaves()) == 9 and sync.complete


# ---- fuzz: only the module's own errors escape ---------------------------------------------------

txt_string = st.one_of(st.binary(max_size=300), st.text(max_size=300))
txt_record = st.lists(txt_string, max_size=8)


@settings(max_examples=400, deadline=None)
@given(txt_record)
def test_fuzz_parsers(record):
    try:
        text = join_txt(record)
    except SeedError:
        return
    for parse in (parse_root, parse_entry):
        try:
            parse(text)
        except SeedError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["pzseed-root:v1 ", "pzseed-branch:", "pzseed-leaf:", ""]),
       st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=,: ", max_size=400))
def test_fuzz_structured_entries(prefix, body):
    for parse in (parse_root, parse_entry):
        try:
            parse(prefix + body)
        except SeedError:
            pass


@settings(max_examples=150, deadline=None)
@given(st.lists(txt_record, max_size=20), st.lists(txt_record, max_size=3))
def test_fuzz_sync_answers(root_answer, entry_answer):
    tree = build_tree(envelopes(5), OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(tree.url)
    sync.start(8)
    [name] = sync.wanted()
    sync.on_answer(name, root_answer)  # garbage root: refused, no exception
    assert sync.take_leaves() == []
    sync.start(8)
    [name] = sync.wanted()
    sync.on_answer(name, [tree.zone[DOMAIN]])
    for name in sync.wanted():
        sync.on_answer(name, entry_answer)
    assert sync.take_leaves() == []


def test_unused_names_are_typed():
    assert isinstance(Root(b"", 0, b""), Root) and isinstance(Leaf(b""), Leaf)


# ---- sizes on the wire, checked with dnspython -------------------------------------------------

def test_answers_fit_on_the_wire():
    """An independent check of §4: real DNS answers (dnspython), plus the COOKIE margin."""
    import dns.message
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    for domain in (DOMAIN, LONGEST):
        for udp, edns in ((1232, True), (512, False)):
            tree = build_tree(envelopes(60), OPERATOR.private_key, domain, 1, udp_size=udp)
            for name, strings in tree.zone.items():
                query = dns.message.make_query(name + ".", "TXT", use_edns=0 if edns else False,
                                               payload=1232)
                answer = dns.message.make_response(query)
                quoted = " ".join('"' + s + '"' for s in strings)
                answer.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "TXT", quoted))
                size = len(answer.to_wire()) + (44 if edns else 0)
                assert size <= udp, (domain, udp, name, size)
                assert size == answer_bytes(domain, sum(map(len, strings)), edns=edns) or name == domain


def test_refused_root_keeps_the_last_tree_and_exact_leaf_bound():
    tree = build_tree(envelopes(40), OPERATOR.private_key, DOMAIN, 2)
    sync = new_sync(tree.url, limits=SyncLimits(max_leaves=40))
    walk_zone(sync, tree.zone)
    assert sync.complete and len(sync.tree_leaves()) == 40  # exactly the bound: not a limit
    zone = dict(tree.zone)
    zone[DOMAIN] = build_tree(envelopes(3), OPERATOR.private_key, DOMAIN, 1).zone[DOMAIN]
    walk_zone(sync, zone)
    _refused(sync, SeedRejection.ROLLBACK)
    assert len(sync.tree_leaves()) == 40
    walk_zone(sync, tree.zone)  # the same root again: nothing but the root is asked
    assert sync.complete and sync.queries == 1 and len(sync.tree_leaves()) == 40


def test_resync_of_a_large_unchanged_subtree_is_cheap():
    records = envelopes(2000)
    old = build_tree(records, OPERATOR.private_key, DOMAIN, 1)
    sync = new_sync(old.url)
    walk_zone(sync, old.zone)
    new = build_tree(records[1:], OPERATOR.private_key, DOMAIN, 2)  # one peer removed
    walk_zone(sync, new.zone)
    assert sync.complete and len(sync.tree_leaves()) == 1999
    # Removing a peer regroups the levels: branches are asked again, never a leaf.
    assert sync.queries < 1 + 2000 // 21 + 10
    # A listed peer's new record changes its own path only: depth + 1 names.
    newer = build_tree([*records[1:-1], envelope(2000, seq=2)], OPERATOR.private_key, DOMAIN, 3)
    walk_zone(sync, newer.zone)
    assert sync.complete and sync.queries == newer.depth + 1
