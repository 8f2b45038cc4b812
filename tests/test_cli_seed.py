"""``prozchain-discovery seed build`` / ``seed verify`` as an operator meets them: exit codes,
what goes to stdout and stderr, and one ``error:`` line (never a traceback) for every bad input.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import dns.zone
import pytest
from libp2p.crypto.secp256k1 import create_new_key_pair as new_secp256k1
from multiaddr import Multiaddr

from prozchain_discovery.cli import build_parser, main
from prozchain_discovery.cli.seed import DNSMASQ_MAX_LINE
from prozchain_discovery.cli.seed_crawl import record_line
from prozchain_discovery.config import DEFAULT_NETWORK_ID
from prozchain_discovery.dnsseed.sync import SeedSync, walk_zone
from prozchain_discovery.records import sign_record, verify_record
from tests.conftest import identity
from tests.dnsmasq import dnsmasq
from tests.test_cli_imports import HOST_ONLY, _top_modules
from tests.test_dnsseed_dnsmasq import DOMAIN, b64, envelope, url, write_key, write_records


@pytest.fixture
def files(tmp_path):
    key = write_key(tmp_path / "identity.key")
    records = write_records(tmp_path / "records.jsonl", [(i, 1) for i in range(1, 31)])
    return key, records


def build(capsys, key: Path, records: Path, *extra: str, fmt: str = "dnsmasq") -> tuple[int, str, str]:
    code = main(["seed", "build", "--key", str(key), "--domain", DOMAIN, "--seq", "7", "--format", fmt,
                 *extra, str(records)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- seed build --------------------------------------------------------------------------------

def test_build_bind_fragment(files, capsys):
    code, out, err = build(capsys, *files, fmt="bind")
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith(";")]
    assert lines[0].startswith(f'{DOMAIN}. 300 IN TXT "pzseed-root:v1 h=')
    for line in lines:
        assert re.fullmatch(r'[a-z2-7]{52}\.seed\.test\. 300 IN TXT( "[!#-~ ]{1,255}")+|'
                            r'seed\.test\. 300 IN TXT "[^"]+"', line), line
    assert len(lines) == 1 + 30 + 2 + 1  # root, 30 leaves, 2 branches, the top
    *rest, summary, seed_url = err.splitlines()
    assert rest == [] and seed_url == str(url())
    assert summary == "30 leaves, depth 3, fanout 22, 34 names, seq 7"  # no line limit: 22 a branch


def test_bind_fragment_is_a_zone_that_walks_completely(files, capsys):
    """dnspython reads the fragment as zone text; its TXT records walk to every record."""
    code, out, _ = build(capsys, *files, fmt="bind")
    assert code == 0
    zone = dns.zone.from_text(out, origin="test.", relativize=False, check_origin=False)
    records: dict[str, list[str]] = {}
    for name, rdataset in zone.iterate_rdatasets("TXT"):
        assert rdataset.ttl == 300 and len(rdataset) == 1
        records[name.to_text(omit_final_dot=True)] = [s.decode() for s in rdataset[0].strings]
    sync = SeedSync(url())
    walk_zone(sync, records)
    assert sync.complete and not sync.rejections
    assert sorted(r.envelope_bytes for r in sync.tree_leaves()) == sorted(envelope(i) for i in range(1, 31))


def test_build_reads_what_seed_crawl_writes(tmp_path, capsys):
    recs = [verify_record(envelope(i)) for i in range(1, 6)]
    path = tmp_path / "crawled.jsonl"
    path.write_text("".join(record_line(r) + "\n" for r in recs))
    code, out, err = build(capsys, write_key(tmp_path / "k.key"), path)
    assert code == 0 and err.splitlines()[-2].startswith("5 leaves, depth 2")


def test_build_through_the_installed_command(files, tmp_path):
    """The real entry point, in its own process: zone on stdout, URL last on stderr."""
    key, records = files
    proc = subprocess.run(
        [sys.executable, "-m", "prozchain_discovery", "seed", "build", "--key", str(key), "--domain",
         DOMAIN, "--seq", "1", str(records)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == str(url())
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("txt-record=") for line in lines) == 34  # root, top, 2 branches, 30
    assert max(map(len, lines)) <= DNSMASQ_MAX_LINE


def test_build_input_errors_are_one_line(files, tmp_path, capsys):
    key, records = files
    cases: list[tuple[list[str] | None, Path, Path, str]] = []  # (extra, key, records, expected)
    cases.append((None, tmp_path / "nokey", records, "no such file (a node's identity key is <data-dir>/identity.key"))
    damaged = tmp_path / "damaged.key"
    damaged.write_bytes(b"\x08\x01\x12\x40" + b"\x00" * 10)
    damaged.chmod(0o600)
    cases.append((None, damaged, records, "not a libp2p private key file"))
    secp = tmp_path / "secp.key"
    secp.write_bytes(new_secp256k1().private_key.serialize())
    secp.chmod(0o600)
    cases.append((None, secp, records, "a Secp256k1 key; a seed is signed with an Ed25519 key"))
    open_key = write_key(tmp_path / "open.key")
    open_key.chmod(0o644)
    cases.append((None, open_key, records, "readable by other users (mode 644); run: chmod 600"))
    cases.append((None, tmp_path, records, "is a directory, not a key file"))
    cases.append((None, key, tmp_path / "none.jsonl", "none.jsonl: no such file"))
    good = records.read_text().splitlines()
    tampered = json.loads(good[2])
    env = bytearray(envelope(3))
    env[-1] ^= 1  # the peer's signature no longer verifies
    tampered["envelope"] = b64(bytes(env))
    for n, (line, expected) in enumerate([
        ("{not json", ":3: not a JSON object"),
        ("[1, 2]", ":3: not a JSON object"),
        ('{"peer_id": "x"}', ':3: no "envelope" field'),
        ('{"envelope": "***"}', ':3: "envelope" is not base64url'),
        ('{"envelope": 5}', ':3: "envelope" must be a non-empty base64url string'),
        (json.dumps(tampered), ":3: the signed peer record does not verify (bad_signature"),
    ]):
        bad = tmp_path / f"bad{n}.jsonl"
        bad.write_text("\n".join(good[:2] + [line] + good[3:]) + "\n")
        cases.append((None, key, bad, f"{bad}{expected}"))
    cases.append((["--domain", "not a domain"], key, records, "--domain: not a DNS name"))
    for extra, k, r, expected in cases:
        argv = ["seed", "build", "--key", str(k), "--domain", DOMAIN, "--seq", "1", str(r), *(extra or [])]
        assert main(argv) == 2, expected
        out, err = capsys.readouterr()
        assert out == "", expected
        assert expected in one_error(err), (expected, err)


def test_build_skips_what_cannot_be_published(files, tmp_path, capsys):
    key, records = files
    # One record that does not verify (skipped with --skip-invalid) and one too big for a leaf.
    big_key, big_id = identity(4242)
    big = sign_record(big_id, [Multiaddr(f"/ip6/2001:db8::{k + 1:x}/tcp/4001") for k in range(60)],
                      big_key.private_key, seq=1)
    env = bytearray(envelope(3))
    env[-1] ^= 1
    older = sign_record(big_id, [Multiaddr("/ip4/192.0.2.1/tcp/4001")], big_key.private_key, seq=0)
    lines = records.read_text().splitlines()
    lines.append(json.dumps({"envelope": b64(big)}))
    lines.append(json.dumps({"envelope": b64(bytes(env))}))
    lines.append(json.dumps({"envelope": b64(older)}))  # the peer's older record is not published instead
    records.write_text("\n".join(lines) + "\n")
    code, out, err = build(capsys, key, records, "--skip-invalid")
    assert code == 0 and out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any(f"{records}:31: peer {big_id}: its record makes a " in w and w.endswith("skipped")
               for w in warnings), warnings
    assert any(f"{records}:32: the signed peer record does not verify" in w for w in warnings)
    assert "\n30 leaves, " in err
    # Without --skip-invalid the bad record stops the build, naming its line.
    code, out, err = build(capsys, key, records)
    assert code == 2 and out == ""
    assert f"{records}:32: the signed peer record does not verify" in err.splitlines()[-1]


def test_build_bad_flags_are_argparse_errors(files, capsys):
    key, records = files
    for extra in (["--seq", "-1"], ["--seq", str(2**64)], ["--udp-size", "100"], ["--format", "nsd"]):
        argv = ["seed", "build", "--key", str(key), "--domain", DOMAIN, "--seq", "1", str(records), *extra]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.splitlines()[-1].startswith("prozchain-discovery seed build: error:")


# ---- seed verify -------------------------------------------------------------------------------

def test_verify_json_and_records_mismatch(files, tmp_path, capsys):
    key, records = files
    code, zone, _ = build(capsys, key, records)
    assert code == 0
    (tmp_path / "zone.conf").write_text(zone)
    # Peer 1 gone, peer 31 new, peer 2 with a newer record.
    other = write_records(tmp_path / "other.jsonl", [(i, 1) for i in range(3, 32)] + [(2, 2)])
    with dnsmasq(tmp_path, conf_files=[tmp_path / "zone.conf"]) as port:
        base = ["seed", "verify", str(url()), "--dns-server", f"127.0.0.1:{port}"]
        assert main([*base, "--json", "--records", str(records)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["complete"] and report["seq"] == 7 and report["depth"] == 3
        assert report["leaves_verified"] == 30 and report["rejections"] == []
        assert report["records"]["missing"] == report["records"]["extra"] == report["records"]["differs"] == []
        assert report["queries"] == 34  # the root and 33 names, each once
        assert main([*base, "--records", str(other)]) == 1
        out, err = capsys.readouterr()
    pid = {i: identity(i)[1].to_base58() for i in (1, 2, 31)}
    assert f"missing {pid[31]} ({other}:29)\n" in out
    assert f"extra {pid[1]}\n" in out
    assert f"differs {pid[2]} (tree seq 1, {other}:30 seq 2)\n" in out
    assert one_error(err) == f"error: the leaves differ from {other}: 1 missing, 1 extra, 1 differs"


def test_verify_input_errors_are_one_line(tmp_path, capsys):
    good = str(url())
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing answers there
    for argv, code, expected in [
        (["http://example.org"], 2, "is not a pzseed://<key>@<domain> URL (scheme"),
        (["pzseed://abc@seed.test"], 2, "URL (key: not 32 bytes"),
        ([good.replace(DOMAIN, "bad..name")], 2, "URL (domain"),
        ([good, "--dns-server", "localhost:53"], 2, "--dns-server 'localhost:53': 'localhost' is not an IP address"),
        ([good, "--dns-server", "127.0.0.1:99999"], 2, "'99999' is not a port"),
        ([good, "--records", str(tmp_path / "none.jsonl"), "--dns-server", "127.0.0.1"], 2, "no such file"),
        ([good, "--dns-server", f"127.0.0.1:{port}", "--timeout", "0.5"], 1,
         f"error: no verified root at {DOMAIN}: unavailable: "),
    ]:
        assert main(["seed", "verify", *argv]) == code, argv
        out, err = capsys.readouterr()
        assert out == "", argv
        assert expected in one_error(err), (expected, err)


# ---- the parser --------------------------------------------------------------------------------

def test_crawl_arguments_and_defaults():
    parser = build_parser()
    args = parser.parse_args(["seed", "crawl", "--bootstrap", "/ip4/192.0.2.1/tcp/4001/p2p/x",
                              "--bootstrap", "/ip4/192.0.2.2/tcp/4001/p2p/y", "--out", "r.jsonl"])
    assert args.command == "seed" and args.seed_command == "crawl"
    assert args.bootstrap == ["/ip4/192.0.2.1/tcp/4001/p2p/x", "/ip4/192.0.2.2/tcp/4001/p2p/y"]
    assert (args.out, args.network_id, args.timeout, args.max_peers, args.dial_timeout) == (
        "r.jsonl", DEFAULT_NETWORK_ID, 30.0, 1000, 5.0)
    for missing in (["--out", "r.jsonl"], ["--bootstrap", "/ip4/192.0.2.1/tcp/1/p2p/x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["seed", "crawl", *missing])
    with pytest.raises(SystemExit):
        parser.parse_args(["seed"])


def test_seed_help_explains_and_imports_no_host(capsys):
    for sub, needles in (("build", ["<data-dir>/identity.key", "dnsmasq --conf-file=zone.conf", "--format bind"]),
                         ("verify", ["exits 0 only when", "--dns-server"]),
                         ("crawl", ["--bootstrap", "--max-peers"])):
        with pytest.raises(SystemExit):
            main(["seed", sub, "--help"])
        text = capsys.readouterr().out
        for needle in needles:
            assert needle in text, (sub, needle)
    for argv in (["seed", "--help"], ["seed", "build", "--help"], ["seed", "verify", "--help"],
                 ["seed", "crawl", "--help"], ["seed", "key", "--help"]):
        code, modules = _top_modules(*argv)
        assert code == 0 and not modules & set(HOST_ONLY) and "trio" not in modules, argv


# ---- seed key ----------------------------------------------------------------------------------

def test_seed_key_makes_an_offline_key_that_builds_and_verifies(tmp_path, capsys):
    key = tmp_path / "offline" / "seed.key"
    assert main(["seed", "key", "--out", str(key), "--domain", "Seed.Test"]) == 0
    out, err = capsys.readouterr()
    seed_url = out.strip()
    assert seed_url.startswith("pzseed://") and seed_url.endswith("@seed.test") and "Traceback" not in err
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert main(["seed", "key", "--out", str(key)]) == 2  # never replaced
    assert "exists" in one_error(capsys.readouterr().err) and key.read_bytes() == before
    assert main(["seed", "key", "--out", str(tmp_path / "k2"), "--domain", "bad..domain"]) == 2
    assert one_error(capsys.readouterr().err).startswith("error: --domain: ")
    records = write_records(tmp_path / "records.jsonl", [(i, 1) for i in range(1, 6)])
    code, zone, err = build(capsys, key, records)
    assert code == 0 and err.splitlines()[-1] == seed_url  # build derives the same URL from the key
    (tmp_path / "zone.conf").write_text(zone)
    with dnsmasq(tmp_path, conf_files=[tmp_path / "zone.conf"]) as port:
        assert main(["seed", "verify", seed_url, "--dns-server", f"127.0.0.1:{port}",
                     "--records", str(records)]) == 0
