"""Signed DNS seeds served by a real dnsmasq: the whole pzseed v1 format, end to end.

A tree is built (by the real ``seed build`` command in the first test) from signed records of
generated identities, written as a dnsmasq conf file and served; the client walks it over DNS
(DnsTxt + drive, SignedSeed) and ``seed verify`` checks it. Then each attack is served by
dnsmasq the way a hostile DNS path (or a careless operator) would serve it: refused with its
named reason, nothing unverified handed out, the valid parts kept where that is safe.

The independent check reads the records file with json and base64 only: the leaves fetched over
DNS are compared with the envelope bytes in the file, not with what the builder returned.
What dnsmasq cannot serve (an entry over 1000 characters needs a config line over its 1024-
character limit; non-ASCII bytes) is covered by tests/test_dnsseed_core.py.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import dns.message
import dns.query
import pytest
import trio
from multiaddr import Multiaddr

from prozchain_discovery.bootstrap.dns import ResolverConfig
from prozchain_discovery.bootstrap.signed_seeds import DnsTxt, SignedSeed, drive
from prozchain_discovery.cli import main
from prozchain_discovery.cli.seed import DNSMASQ_MAX_LINE, dnsmasq_max_entry_text, dnsmasq_zone
from prozchain_discovery.dnsseed.sync import SeedSync, SyncLimits, SyncPhase
from prozchain_discovery.dnsseed.tree import (
    ROOT_PREFIX,
    Root,
    SeedRejection,
    SeedTree,
    build_tree,
    encode_branch,
    encode_leaf,
    encode_root,
    entry_hash,
    hash_name,
    parse_entry,
    sign_root,
    split_txt,
)
from prozchain_discovery.dnsseed.url import SeedUrl
from prozchain_discovery.records import sign_record
from tests.conftest import identity
from tests.dnsmasq import dnsmasq, txt_line

pytestmark = pytest.mark.network

DOMAIN = "seed.test"  # dnsmasq's fixture answers NXDOMAIN for unknown names under .test
OPERATOR, _ = identity(200_000)
FORGER, _ = identity(200_001)
Zone = dict[str, list[str]]


# ---- records, key and zone files --------------------------------------------------------------

def addr(i: int) -> str:
    return f"/ip4/198.51.{i // 250 % 256}.{i % 250 + 1}/tcp/{4000 + i % 1000}"


@cache
def envelope(i: int, seq: int = 1) -> bytes:
    key, pid = identity(i)
    return sign_record(pid, [Multiaddr(addr(i))], key.private_key, seq=seq)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def write_records(path: Path, items: Sequence[tuple[int, int]]) -> Path:
    """A records file as ``seed crawl`` writes it: (identity number, record seq) per line."""
    lines = []
    for i, seq in items:
        lines.append(json.dumps({"peer_id": identity(i)[1].to_base58(), "seq": seq, "addrs": [addr(i)],
                                 "envelope": b64(envelope(i, seq))}))
    path.write_text("\n".join(lines) + "\n")
    return path


def file_envelopes(path: Path) -> dict[str, bytes]:
    """peer id -> envelope bytes of each peer's newest line, read with json and base64 alone."""
    out: dict[str, tuple[int, bytes]] = {}
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        data = base64.urlsafe_b64decode(obj["envelope"] + "=" * (-len(obj["envelope"]) % 4))
        if obj["peer_id"] not in out or obj["seq"] > out[obj["peer_id"]][0]:
            out[obj["peer_id"]] = (obj["seq"], data)
    return {k: v for k, (_, v) in out.items()}


def write_key(path: Path, pair=OPERATOR) -> Path:
    path.write_bytes(pair.private_key.serialize())
    path.chmod(0o600)
    return path


def url(domain: str = DOMAIN) -> SeedUrl:
    return SeedUrl.for_key(OPERATOR.public_key, domain)


def tree_of(n: int, *, seq: int = 1, start: int = 1, fanout: int | None = None, domain: str = DOMAIN,
            key=OPERATOR) -> SeedTree:
    """A tree of ``n`` records as ``seed build --format dnsmasq`` builds it."""
    return build_tree([envelope(i) for i in range(start, start + n)], key.private_key, domain, seq,
                      fanout=fanout, max_entry_text=dnsmasq_max_entry_text(domain))


def conf(tmp: Path, zone: Zone, domain: str = DOMAIN, name: str = "zone.conf") -> Path:
    path = tmp / name
    path.write_text(dnsmasq_zone(zone, domain))
    return path


def signed_zone(entries: Sequence[str], top_text: str, seq: int = 1, domain: str = DOMAIN) -> Zone:
    """Hand-made entries under a root the operator's key signs (a careless or hostile operator)."""
    zone = {hash_name(entry_hash(t), domain): split_txt(t) for t in entries}
    zone[domain] = [encode_root(sign_root(OPERATOR.private_key, domain, entry_hash(top_text), seq))]
    return zone


def names_of(zone: Zone, prefix: str) -> list[str]:
    return sorted(n for n, v in zone.items() if "".join(v).startswith(prefix))


def leaves_under(zone: Zone, name: str, domain: str = DOMAIN) -> set[bytes]:
    """Envelopes of the leaves below the entry at ``name`` (from the zone, as built)."""
    entry = parse_entry("".join(zone[name]))
    if hasattr(entry, "envelope"):
        return {entry.envelope}
    out: set[bytes] = set()
    for child in entry.children:
        out |= leaves_under(zone, hash_name(child, domain), domain)
    return out


# ---- walking it ---------------------------------------------------------------------------------

def txt(port: int) -> DnsTxt:
    return DnsTxt(ResolverConfig(nameservers=("127.0.0.1",), port=port, timeout=2.0))


def walk(port: int, seed_url: SeedUrl | None = None, sync: SeedSync | None = None,
         **kw) -> tuple[SeedSync, list[bytes]]:
    """A full sync over DNS; returns the sync and the envelopes it handed out."""
    sync = sync or SeedSync(seed_url or url(), rng=random.Random(7), **kw)
    out: list[bytes] = []

    async def run() -> None:
        sync.start(0)
        sync.want_all()
        await drive(sync, txt(port), on_leaves=lambda recs: out.extend(r.envelope_bytes for r in recs))

    trio.run(run)
    return sync, out


def reasons(sync: SeedSync) -> set[SeedRejection]:
    return {r for _, r, _ in sync.rejections}


def cli_verify(capsys, port: int, *extra: str, seed_url: SeedUrl | None = None) -> tuple[int, str, str]:
    code = main(["seed", "verify", str(seed_url or url()), "--dns-server", f"127.0.0.1:{port}",
                 "--timeout", "2", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_rejects(capsys, port: int, reason: SeedRejection, *extra: str, name: str | None = None) -> None:
    code, out, err = cli_verify(capsys, port, *extra)
    assert code == 1, (out, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and reason.value in err, err
    if name is not None:  # a rejected entry inside the tree is listed with its name and reason
        assert f"rejected {name}: {reason.value}" in out, out


# ---- a valid tree -------------------------------------------------------------------------------

def test_seed_build_cli_output_served_by_dnsmasq_verifies_completely(tmp_path, capsys):
    # 50 peers, one of them twice (the newest record is published): depth 3 at 20 children.
    items = [(i, 1) for i in range(1, 51)] + [(7, 2)]
    records = write_records(tmp_path / "records.jsonl", items)
    key = write_key(tmp_path / "identity.key")
    assert main(["seed", "build", "--key", str(key), "--domain", DOMAIN, "--seq", "4",
                 "--format", "dnsmasq", str(records)]) == 0
    zone_text, err = capsys.readouterr()
    seed_url = err.splitlines()[-1]
    assert seed_url == str(url())
    assert re.fullmatch(r"50 leaves, depth 3, fanout 20, \d+ names, seq 4", err.splitlines()[-2])
    lines = zone_text.splitlines()
    assert all(len(line) <= DNSMASQ_MAX_LINE for line in lines)
    assert lines[2].startswith(f'txt-record={DOMAIN},"{ROOT_PREFIX}')  # after two comments
    zone_file = tmp_path / "zone.conf"
    zone_file.write_text(zone_text)
    with dnsmasq(tmp_path, conf_files=[zone_file]) as port:
        sync, handed = walk(port)
        assert sync.complete and not sync.rejections and sync.seq == 4
        expected = file_envelopes(records)
        assert sorted(handed) == sorted(expected.values())  # the independent check
        assert envelope(7, 1) not in handed and envelope(7, 2) in handed
        assert sorted(r.envelope_bytes for r in sync.tree_leaves()) == sorted(expected.values())
        # ... and through the CLI, with the records file as the independent check.
        code, out, err = cli_verify(capsys, port, "--records", str(records))
    assert code == 0 and err == "", err
    assert re.search(r"^seq 4, depth 3, 50 leaves verified, \d+ queries, [\d.]+ s$", out, re.M), out
    assert "the verified leaves are exactly the records of" in out and "ok: every entry" in out


def test_signed_seed_lookup_then_background_walk(tmp_path):
    tree = tree_of(120)
    expected = {envelope(i) for i in range(1, 121)}
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, tree.zone)]) as port:
        seed = SignedSeed(url(), txt(port), rng=random.Random(3))
        got: list[bytes] = []

        async def run() -> list[bytes]:
            first = [r.envelope_bytes for r in await seed.lookup(8)]
            await seed.walk_rest(lambda recs: got.extend(r.envelope_bytes for r in recs))
            return first

        first = trio.run(run)
    assert len(first) >= 8 and set(first) <= expected
    assert seed.sync.queries <= len(tree.zone)  # every name asked at most once
    assert sorted(first + got) == sorted(expected) and seed.walked
    assert seed.status()["seq"] == 1 and seed.status()["rejected"] == {}


@pytest.mark.parametrize("domain", [DOMAIN, ("a" * 62 + "." + "b" * 60 + ".test")])
def test_the_longest_dnsmasq_lines_are_served_whole(tmp_path, domain):
    """dnsmasq reads config lines of at most 1024 characters: entries of the largest size the
    builder allows for dnsmasq, at the shortest and the longest (128-character) domain, come
    back whole (a longer line makes dnsmasq exit with 'missing "')."""
    assert len(domain) in (9, 128)
    longest = dnsmasq_max_entry_text(domain)
    zone: Zone = {}
    for n, fill in enumerate("ABC"):
        zone[f"{chr(ord('a') + n) * 52}.{domain}"] = split_txt(fill * longest)
    zone[domain] = split_txt(ROOT_PREFIX + "x" * 240)
    text = dnsmasq_zone(zone, domain)
    assert max(len(line) for line in text.splitlines()) <= DNSMASQ_MAX_LINE
    path = tmp_path / "zone.conf"
    path.write_text(text)
    with dnsmasq(tmp_path, conf_files=[path]) as port:
        for name, strings in zone.items():
            answer = dns.query.tcp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=port, timeout=2)
            got = [b"".join(rr.strings).decode() for rrset in answer.answer for rr in rrset]
            assert got == ["".join(strings)], name


def test_truncated_answer_falls_back_to_tcp(tmp_path):
    tree = tree_of(10)
    # Other TXT records at the apex (SPF, site verification...) make the root's answer bigger
    # than 1232 bytes: dnsmasq sets TC over UDP and dnspython asks again over TCP.
    junk = [(DOMAIN, [f"v=junk{k} " + "x" * 240]) for k in range(6)]
    with dnsmasq(tmp_path, txt=junk, conf_files=[conf(tmp_path, tree.zone)]) as port:
        q = dns.message.make_query(DOMAIN, "TXT", use_edns=0, payload=1232)
        udp = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
        assert udp.flags & dns.flags.TC
        sync, handed = walk(port)
    assert sync.complete and not sync.rejections
    assert sorted(handed) == sorted(envelope(i) for i in range(1, 11))


# ---- attacks, each served by dnsmasq ---------------------------------------------------------

def test_forged_root_signature_keeps_the_last_verified_tree(tmp_path, capsys):
    tree = tree_of(30)
    forged = dict(tree.zone)
    # A higher seq signed by another key, over the same or another top.
    other = sign_root(FORGER.private_key, DOMAIN, tree.root.top, 9)
    forged[DOMAIN] = [encode_root(Root(tree.root.top, 9, other.signature))]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with dnsmasq(tmp_path / "a", conf_files=[conf(tmp_path / "a", tree.zone)]) as good, \
            dnsmasq(tmp_path / "b", conf_files=[conf(tmp_path / "b", forged)]) as bad:
        sync, handed = walk(good)
        assert sync.complete and len(handed) == 30
        sync, handed = walk(bad, sync=sync)
        assert reasons(sync) == {SeedRejection.BAD_SIGNATURE} and sync.phase is SyncPhase.FAILED
        assert handed == [] and sync.seq == 1  # nothing new, seq not advanced
        assert len(sync.tree_leaves()) == 30  # the last verified tree stays current
        assert walk(bad)[1] == []  # a fresh client gets nothing
        assert_cli_rejects(capsys, bad, SeedRejection.BAD_SIGNATURE)


def test_leaf_swapped_for_another_valid_record(tmp_path, capsys):
    tree = tree_of(30)
    zone = dict(tree.zone)
    victim = names_of(zone, "pzseed-leaf:")[5]
    swapped_out = parse_entry("".join(zone[victim])).envelope  # type: ignore[union-attr]
    zone[victim] = split_txt(encode_leaf(envelope(999)))  # a valid peer record, another peer
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, zone)]) as port:
        sync, handed = walk(port)
        assert reasons(sync) == {SeedRejection.HASH_MISMATCH} and not sync.complete
        assert sync.rejections[0][0] == victim
        assert envelope(999) not in handed and swapped_out not in handed
        assert sorted(handed) == sorted({envelope(i) for i in range(1, 31)} - {swapped_out})
        assert_cli_rejects(capsys, port, SeedRejection.HASH_MISMATCH, name=victim)


def test_tampered_branch(tmp_path, capsys):
    tree = tree_of(60)  # top -> 3 branches of 20 leaves
    zone = dict(tree.zone)
    top = hash_name(tree.root.top, DOMAIN)
    branch = [n for n in names_of(zone, "pzseed-branch:") if n != top][0]
    lost = leaves_under(zone, branch)
    children = list(parse_entry("".join(zone[branch])).children)  # type: ignore[union-attr]
    intruder = encode_leaf(envelope(999))
    zone[hash_name(entry_hash(intruder), DOMAIN)] = split_txt(intruder)
    zone[branch] = split_txt(encode_branch(children[1:] + [entry_hash(intruder)]))
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, zone)]) as port:
        sync, handed = walk(port)
        assert reasons(sync) == {SeedRejection.HASH_MISMATCH} and sync.rejections[0][0] == branch
        assert envelope(999) not in handed
        assert sorted(handed) == sorted({envelope(i) for i in range(1, 61)} - lost)  # the other branches
        assert_cli_rejects(capsys, port, SeedRejection.HASH_MISMATCH, name=branch)


def test_replayed_older_sequence_number(tmp_path, capsys):
    old = tree_of(20, seq=3, start=500)  # validly signed, but older than what the client saw
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, old.zone)]) as port:
        sync, handed = walk(port, last_seq=5)
        assert reasons(sync) == {SeedRejection.ROLLBACK} and handed == [] and sync.seq == 5
        assert sync.phase is SyncPhase.FAILED and sync.tree_leaves() == []
        assert walk(port, last_seq=3)[0].complete  # the same tree, to a client that saw 3
        assert_cli_rejects(capsys, port, SeedRejection.ROLLBACK, "--last-seq", "5")
        assert cli_verify(capsys, port)[0] == 0


def test_loop_between_branches(tmp_path, capsys):
    leaf, other = encode_leaf(envelope(1)), encode_leaf(envelope(2))
    b2 = encode_branch([entry_hash(leaf)])
    b1 = encode_branch([entry_hash(leaf), entry_hash(other), entry_hash(b2)])
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, signed_zone([leaf, other, b1, b2], b1))]) as port:
        sync, handed = walk(port)
        assert reasons(sync) == {SeedRejection.LOOP} and not sync.complete
        assert sorted(handed) == sorted([envelope(1), envelope(2)])  # each handed out once
        assert_cli_rejects(capsys, port, SeedRejection.LOOP, name=hash_name(entry_hash(leaf), DOMAIN))


def test_oversized_txt(tmp_path, capsys):
    tree = tree_of(30)
    leaves = names_of(tree.zone, "pzseed-leaf:")
    zone = dict(tree.zone)
    # A leaf whose exact text is cut into 9 strings (8 at most), another name with 17 records.
    text = "".join(zone[leaves[0]])
    step = -(-len(text) // 9)
    zone[leaves[0]] = [text[k:k + step] for k in range(0, len(text), step)]
    assert len(zone[leaves[0]]) == 9
    many = leaves[1]
    del zone[many]
    extra = [txt_line(many, tree.zone[many])] + [txt_line(many, f"filler {k}") for k in range(16)]
    bad_root = dict(tree.zone)
    bad_root[DOMAIN] = split_txt(encode_root(tree.root) + " " + "x" * 200)  # a root over 255
    (tmp_path / "root").mkdir()
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, zone)], extra=extra) as port, \
            dnsmasq(tmp_path / "root", conf_files=[conf(tmp_path / "root", bad_root)]) as root_port:
        sync, handed = walk(port)
        assert reasons(sync) == {SeedRejection.OVERSIZED} and sync.rejected[SeedRejection.OVERSIZED] == 2
        assert {n for n, _, _ in sync.rejections} == {leaves[0], many}
        lost = leaves_under(tree.zone, leaves[0]) | leaves_under(tree.zone, many)
        assert sorted(handed) == sorted({envelope(i) for i in range(1, 31)} - lost)
        assert_cli_rejects(capsys, port, SeedRejection.OVERSIZED, name=many)
        sync, handed = walk(root_port)
        assert reasons(sync) == {SeedRejection.OVERSIZED} and handed == []
        assert_cli_rejects(capsys, root_port, SeedRejection.OVERSIZED)


def test_deeper_or_wider_than_the_bounds(tmp_path, capsys):
    deep = tree_of(60, fanout=4)  # 60 -> 15 -> 4 -> 1: depth 4
    assert deep.depth == 4
    wide = tree_of(10, fanout=4, domain="wide.test")  # 4 + 3 + 3 leaves under a top of 3
    (tmp_path / "w").mkdir()
    with dnsmasq(tmp_path, conf_files=[conf(tmp_path, deep.zone)]) as port, \
            dnsmasq(tmp_path / "w", conf_files=[conf(tmp_path / "w", wide.zone, "wide.test")]) as wport:
        sync, handed = walk(port, limits=SyncLimits(max_depth=3))
        assert reasons(sync) == {SeedRejection.TOO_DEEP} and handed == [] and not sync.complete
        assert walk(port, limits=SyncLimits(max_depth=4))[0].complete
        sync, handed = walk(wport, url("wide.test"), limits=SyncLimits(max_children=3))
        assert reasons(sync) == {SeedRejection.TOO_WIDE} and sync.rejected[SeedRejection.TOO_WIDE] == 1
        top = parse_entry("".join(wide.zone[hash_name(wide.root.top, "wide.test")]))
        wide_one = next(hash_name(c, "wide.test") for c in top.children  # type: ignore[union-attr]
                        if len(parse_entry("".join(wide.zone[hash_name(c, "wide.test")])).children) == 4)  # type: ignore[union-attr]
        assert sync.rejections[0][0] == wide_one
        kept = {envelope(i) for i in range(1, 11)} - leaves_under(wide.zone, wide_one, "wide.test")
        assert len(kept) == 6 and sorted(handed) == sorted(kept)  # the two narrow branches
        # seed verify has the node's default bounds: this tree is fine there.
        assert cli_verify(capsys, port)[0] == 0


GARBAGE_ENTRIES = {
    "pzseed-leaf:!!!": SeedRejection.BAD_ENCODING,
    "pzseed-leaf:": SeedRejection.BAD_ENCODING,
    "pzseed-leaf:QR": SeedRejection.BAD_ENCODING,  # non-canonical base64url
    "pzseed-leaf:" + b64(b"not an envelope"): SeedRejection.BAD_RECORD,
    "pzseed-branch:abc": SeedRejection.BAD_ENCODING,
    "pzseed-branch:" + "A" * 43 + ",": SeedRejection.BAD_ENCODING,
    "pzseed-branch:" + "*" * 43: SeedRejection.BAD_ENCODING,
    "pzseed-twig:" + "A" * 43: SeedRejection.BAD_ENCODING,
    "PZSEED-LEAF:" + encode_leaf(b"x")[12:]: SeedRejection.BAD_ENCODING,
    "pzseed-root:v1 h=x seq=1 sig=y": SeedRejection.BAD_ENCODING,
}


def test_garbage_in_every_field(tmp_path, capsys):
    """Every entry field and every root field, each at its own seed domain of one dnsmasq."""
    ok_leaf = encode_leaf(envelope(1))
    lines: list[str] = []
    cases: list[tuple[str, SeedRejection, str | None]] = []  # domain, reason, rejected name
    for k, (text, reason) in enumerate(GARBAGE_ENTRIES.items()):
        domain = f"g{k}.seed.test"
        top = encode_branch([entry_hash(ok_leaf), entry_hash(text)])
        lines += dnsmasq_zone(signed_zone([ok_leaf, text, top], top, domain=domain), domain).splitlines()
        cases.append((domain, reason, hash_name(entry_hash(text), domain)))
    good = encode_root(sign_root(OPERATOR.private_key, "r.test", b"\0" * 32, 1))  # fields spoiled below
    roots = [good.replace("seq=1", "seq=01"), good.replace("seq=1", f"seq={2**64}"),
             good.replace("seq=1", "seq=-1"), good + " ", good.replace(" sig=", "  sig="),
             good[:-2], good.replace("h=", "e="), good.replace("h=AAAA", "h=AA!A")]
    for k, bad in enumerate(roots):
        domain = f"r{k}.seed.test"
        lines.append(txt_line(domain, split_txt(bad)))
        cases.append((domain, SeedRejection.BAD_ENCODING, None))
    path = tmp_path / "zone.conf"
    path.write_text("\n".join(lines) + "\n")
    with dnsmasq(tmp_path, conf_files=[path]) as port:
        for domain, reason, name in cases:
            sync, handed = walk(port, url(domain))
            assert reasons(sync) == {reason}, (domain, sync.rejections)
            if name is None:  # the root: nothing at all
                assert sync.phase is SyncPhase.FAILED and handed == [], domain
            else:  # the valid leaf beside the garbage is kept
                assert sync.rejections[0][0] == name and handed == [envelope(1)], domain
                assert not sync.complete
        domain, reason, name = cases[0]
        code, out, err = cli_verify(capsys, port, seed_url=url(domain))
        assert code == 1 and f"rejected {name}: {reason.value}" in out and "1 leaves verified" in out
