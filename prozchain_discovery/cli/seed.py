"""``prozchain-discovery seed build`` and ``seed verify``: publish a signed DNS seed, check one.

``build`` turns a records file (``seed crawl``'s output: one JSON object a line whose
``envelope`` is a signed peer record) into the pzseed v1 TXT tree (protocols/dns-seed.md),
signed with an Ed25519 libp2p key file, as dnsmasq ``txt-record=`` lines or a BIND zone
fragment on stdout; the seed's ``pzseed://`` URL goes to stderr. ``verify`` walks a published
tree over DNS as a node would and reports every entry it refuses. Every operator mistake is one
``error:`` line and a non-zero exit (2: bad input; 1: the tree does not verify).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CliError, parse_dns_server

if TYPE_CHECKING:
    from libp2p.crypto.keys import PrivateKey

    from ..dnsseed.sync import SeedSync
    from ..records import VerifiedRecord

__all__ = [
    "cmd_seed_key",
    "cmd_seed_build",
    "cmd_seed_verify",
    "read_records",
    "read_signing_key",
    "dnsmasq_max_entry_text",
    "dnsmasq_zone",
    "bind_zone",
    "DNSMASQ_MAX_LINE",
    "BIND_TTL",
]

# dnsmasq 2.90 reads a config line of at most 1024 characters (a longer txt-record line is
# refused: "missing \""); 1020 leaves a margin (RULES17, tests/test_dnsseed_dnsmasq.py).
DNSMASQ_MAX_LINE = 1020
BIND_TTL = 300
_TXT_PREFIX = "txt-record="
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class RecordLine:
    """One verified record of a records file, with where it came from."""

    where: str  # "FILE:LINE"
    record: VerifiedRecord


# ---- input ------------------------------------------------------------------------------------

def _decode_envelope(text: object) -> bytes:
    """base64url (unpadded, as ``seed crawl`` writes it; padding tolerated) → bytes."""
    if not isinstance(text, str) or not text:
        raise ValueError('"envelope" must be a non-empty base64url string')
    body = text.rstrip("=")
    if not _BASE64URL.fullmatch(body) or len(body) % 4 == 1 or len(text) - len(body) > 2:
        raise ValueError('"envelope" is not base64url')
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError('"envelope" is not base64url') from None


def read_records(path: str | Path, *, skip_invalid: bool = False) -> list[RecordLine]:
    """The records of a records file, each verified as PEX verifies records.

    A line that is not a JSON object with an ``envelope`` is a :class:`CliError` naming
    FILE:LINE (code 2). A record that does not verify is one too, unless ``skip_invalid``:
    then a warning names it and it is left out. Blank lines are skipped.
    """
    from ..records import RecordError, verify_record

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file", code=2) from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a records file", code=2) from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text (a records file is JSON lines)", code=2) from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}", code=2) from None
    out: list[RecordLine] = []
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CliError(f"{where}: not a JSON object ({exc})", code=2) from None
        if not isinstance(obj, dict):
            raise CliError(f"{where}: not a JSON object", code=2)
        if "envelope" not in obj:
            raise CliError(f'{where}: no "envelope" field', code=2)
        try:
            data = _decode_envelope(obj["envelope"])
        except ValueError as exc:
            raise CliError(f"{where}: {exc}", code=2) from None
        try:
            rec = verify_record(data)
        except RecordError as exc:
            if not skip_invalid:
                raise CliError(
                    f"{where}: the signed peer record does not verify ({exc}); remove the line "
                    "or pass --skip-invalid", code=2,
                ) from None
            print(f"warning: {where}: the signed peer record does not verify ({exc}); skipped",
                  file=sys.stderr)
            continue
        out.append(RecordLine(where, rec))
    return out


def read_signing_key(path: str | Path) -> PrivateKey:
    """The Ed25519 private key in a libp2p key file (a node's ``<data-dir>/identity.key``).

    Never creates one. Missing, unreadable, readable by others, not a libp2p private key, not
    Ed25519: a :class:`CliError` (code 2) that says so (the checks are the node's own:
    :func:`prozchain_discovery.keyfile.read_key_file`).
    """
    from libp2p.crypto.ed25519 import Ed25519PrivateKey

    from ..keyfile import KeyFileError, read_key_file

    label = f"--key {path}"
    try:
        key = read_key_file(path).private_key
    except KeyFileError as exc:
        if exc.problem == "no such file":
            raise CliError(
                f"{label}: no such file (a node's identity key is <data-dir>/identity.key: "
                "prozchain-discovery node --data-dir DIR creates it)", code=2,
            ) from None
        raise CliError(f"{label}: {exc.problem}", code=2) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"{label}: a {key.get_type().name} key; a seed is signed with an Ed25519 key "
                       "(as a node's identity key is)", code=2)
    return key


# ---- zone formats -----------------------------------------------------------------------------

def dnsmasq_max_entry_text(domain: str) -> int:
    """The longest entry text whose dnsmasq line (at a 52-character hash label under
    ``domain``, at most 4 quoted strings) stays within :data:`DNSMASQ_MAX_LINE`."""
    name = 52 + 1 + len(domain)
    return DNSMASQ_MAX_LINE - len(_TXT_PREFIX) - name - 1 - 3 * 4


def _check_strings(name: str, strings: Sequence[str]) -> None:
    for s in strings:
        if '"' in s or "\\" in s or not s.isascii() or not s.isprintable():
            raise ValueError(f"{name}: a TXT string that needs quoting")  # never from build_tree


def _ordered(zone: Mapping[str, Sequence[str]], domain: str) -> list[str]:
    return [domain] + sorted(n for n in zone if n != domain)


def dnsmasq_zone(zone: Mapping[str, Sequence[str]], domain: str, header: Iterable[str] = ()) -> str:
    """``txt-record=NAME,"s1","s2"`` lines, the root first: a dnsmasq ``--conf-file``."""
    lines = [f"# {h}" for h in header]
    for name in _ordered(zone, domain):
        _check_strings(name, zone[name])
        line = f"{_TXT_PREFIX}{name}," + ",".join(f'"{s}"' for s in zone[name])
        if len(line) > DNSMASQ_MAX_LINE:
            raise ValueError(f"{name}: a {len(line)}-character line; dnsmasq reads at most {DNSMASQ_MAX_LINE}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def bind_zone(zone: Mapping[str, Sequence[str]], domain: str, header: Iterable[str] = (),
              ttl: int = BIND_TTL) -> str:
    """``NAME. TTL IN TXT "s1" "s2"`` lines (fully qualified), the root first: a BIND zone
    fragment to include in the zone that holds ``domain``."""
    lines = [f"; {h}" for h in header]
    for name in _ordered(zone, domain):
        _check_strings(name, zone[name])
        lines.append(f"{name}. {ttl} IN TXT " + " ".join(f'"{s}"' for s in zone[name]))
    return "\n".join(lines) + "\n"


# ---- seed key ---------------------------------------------------------------------------------

def cmd_seed_key(args: argparse.Namespace) -> int:
    """A new signing key for a seed (offline, kept apart from any node's identity key)."""
    from ..dnsseed.url import SeedUrl, b32encode, normalize_domain
    from ..keyfile import KeyFileError, create_key_file

    try:
        domain = normalize_domain(args.domain) if args.domain else None
    except ValueError as exc:
        print(f"error: --domain: {exc}", file=sys.stderr)
        return 2
    try:
        pair = create_key_file(args.out)
    except KeyFileError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    if domain is not None:
        print(SeedUrl.for_key(pair.public_key, domain))
    else:
        print(f"pzseed://{b32encode(pair.public_key.to_bytes())}@<domain>")
    print(f"wrote {args.out} (mode 0600): keep it offline and backed up; nodes trust this key", file=sys.stderr)
    return 0


# ---- seed build -------------------------------------------------------------------------------

def _command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A seed command's exit: a CliError is its one ``error:`` line and code; Ctrl-C is 130; a
    pipe closed by the reader (``| head``) is not an error."""
    try:
        return run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def cmd_seed_build(args: argparse.Namespace) -> int:
    return _command(_build, args)


def _build(args: argparse.Namespace) -> int:
    from ..dnsseed.tree import SeedError, build_tree, encode_leaf, entry_budget
    from ..dnsseed.url import normalize_domain

    try:
        domain = normalize_domain(args.domain)
    except ValueError as exc:
        raise CliError(f"--domain: {exc}", code=2) from None
    key = read_signing_key(args.key)
    records = read_records(args.records, skip_invalid=args.skip_invalid)
    max_text = dnsmasq_max_entry_text(domain) if args.format == "dnsmasq" else None
    budget = entry_budget(domain, args.udp_size)
    if max_text is not None:
        budget = min(budget, max_text)
    newest: dict[object, RecordLine] = {}  # one record per peer, its highest seq (as build_tree)
    for line in records:
        prev = newest.get(line.record.peer_id)
        if prev is None or line.record.seq > prev.record.seq:
            newest[line.record.peer_id] = line
    envelopes: list[bytes] = []
    for line in newest.values():  # a peer's newest record too big: not its older one instead
        size = len(encode_leaf(line.record.envelope_bytes))
        if size > budget:
            print(f"warning: {line.where}: peer {line.record.peer_id}: its record makes a "
                  f"{size}-character leaf, more than the {budget} a {args.format} answer at "
                  f"{domain} can carry (--udp-size {args.udp_size}); skipped", file=sys.stderr)
            continue
        envelopes.append(line.record.envelope_bytes)
    if not envelopes:
        print(f"warning: {args.records}: no record to publish: the tree is empty", file=sys.stderr)
    try:
        tree = build_tree(envelopes, key, domain, args.seq, udp_size=args.udp_size, max_entry_text=max_text)
    except SeedError as exc:  # records were checked above: only a changed core gets here
        raise CliError(f"cannot build the tree: {exc}", code=2) from None
    except ValueError as exc:  # a --udp-size too small for two children a branch
        raise CliError(f"--udp-size {args.udp_size}: {exc}", code=2) from None
    header = [f"pzseed v1 tree for {domain}, seq {args.seq}: {tree.url}",
              f"{len(tree.leaves)} leaves, depth {tree.depth}, fanout {tree.fanout}, {len(tree.zone)} names"]
    render = dnsmasq_zone if args.format == "dnsmasq" else bind_zone
    try:
        text = render(tree.zone, domain, header)
    except ValueError as exc:
        raise CliError(f"cannot write the {args.format} zone: {exc}", code=2) from None
    sys.stdout.write(text)
    sys.stdout.flush()
    print(f"{len(tree.leaves)} leaves, depth {tree.depth}, fanout {tree.fanout}, {len(tree.zone)} "
          f"names, seq {args.seq}", file=sys.stderr)
    print(tree.url, file=sys.stderr)
    return 0


# ---- seed verify ------------------------------------------------------------------------------

def cmd_seed_verify(args: argparse.Namespace) -> int:
    return _command(_verify, args)


def _walk(sync: SeedSync, server: tuple[str, int] | None, timeout: float) -> int:
    """Walk the whole tree over DNS; the number of queries."""
    import trio

    from ..bootstrap.dns import ResolverConfig
    from ..bootstrap.signed_seeds import DnsTxt, drive

    cfg = ResolverConfig(nameservers=(server[0],), port=server[1], timeout=timeout) if server else \
        ResolverConfig(timeout=timeout)
    txt = DnsTxt(cfg)

    async def run() -> None:
        sync.start(0)
        sync.want_all()
        await drive(sync, txt)

    trio.run(run)
    return txt.queries


def _verify(args: argparse.Namespace) -> int:
    from ..dnsseed.sync import SeedSync, SyncPhase
    from ..dnsseed.url import SeedUrlError, parse_url

    try:
        url = parse_url(args.url)
    except SeedUrlError as exc:
        raise CliError(f"{args.url!r} is not a pzseed://<key>@<domain> URL ({exc})", code=2) from None
    server = None
    if args.dns_server is not None:
        try:
            server = parse_dns_server(args.dns_server)
        except ValueError as exc:
            raise CliError(f"--dns-server {exc}", code=2) from None
    # A record that does not verify cannot be a leaf (seed build stops or skips it): a warning.
    expected = read_records(args.records, skip_invalid=True) if args.records else None
    sync = SeedSync(url, last_seq=args.last_seq)
    started = time.monotonic()
    queries = _walk(sync, server, args.timeout)
    seconds = time.monotonic() - started
    leaves = _newest(sync.tree_leaves()) if sync.phase is not SyncPhase.FAILED else {}
    report: dict[str, Any] = {
        "url": str(url),
        "seq": sync.seq if sync.phase is not SyncPhase.FAILED else None,
        "depth": sync.depth if sync.phase is not SyncPhase.FAILED else 0,
        "leaves_verified": len(leaves),
        "queries": queries,
        "seconds": round(seconds, 3),
        "complete": sync.complete,
        "rejections": [{"name": n, "reason": r.value, "detail": d} for n, r, d in sync.rejections],
    }
    differences = _compare(leaves, expected) if expected is not None else None
    if differences is not None:
        report["records"] = {"file": str(args.records), **differences}
    ok = sync.complete and not sync.rejections and not (differences and any(differences.values()))
    report["ok"] = ok
    failed = sync.phase is SyncPhase.FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    elif not failed:  # no root: the one error line says why
        _print_report(report)
    if not ok and not args.json:
        print(f"error: {_verdict(report, failed)}", file=sys.stderr)
    return 0 if ok else 1


def _newest(records: Iterable[VerifiedRecord]) -> dict[str, VerifiedRecord]:
    out: dict[str, VerifiedRecord] = {}
    for rec in records:
        key = rec.peer_id.to_base58()
        if key not in out or rec.seq > out[key].seq:
            out[key] = rec
    return out


def _compare(leaves: Mapping[str, VerifiedRecord], expected: Sequence[RecordLine]) -> dict[str, list[str]]:
    """The verified leaves against a records file, by peer id and envelope bytes (each peer's
    newest record in the file, as ``seed build`` keeps it)."""
    wanted: dict[str, RecordLine] = {}
    for line in expected:
        key = line.record.peer_id.to_base58()
        if key not in wanted or line.record.seq > wanted[key].record.seq:
            wanted[key] = line
    missing = [f"{k} ({wanted[k].where})" for k in sorted(wanted.keys() - leaves.keys())]
    extra = sorted(leaves.keys() - wanted.keys())
    differs = [f"{k} (tree seq {leaves[k].seq}, {wanted[k].where} seq {wanted[k].record.seq})"
               for k in sorted(wanted.keys() & leaves.keys())
               if leaves[k].envelope_bytes != wanted[k].record.envelope_bytes]
    return {"missing": missing, "extra": extra, "differs": differs}


def _print_report(report: Mapping[str, Any]) -> None:
    print(f"seed {report['url']}")
    print(f"seq {report['seq']}, depth {report['depth']}, {report['leaves_verified']} leaves "
          f"verified, {report['queries']} queries, {report['seconds']:.2f} s")
    for r in report["rejections"]:
        detail = f" ({r['detail']})" if r["detail"] else ""
        print(f"rejected {r['name']}: {r['reason']}{detail}")
    rec = report.get("records")
    if rec is not None:
        for what in ("missing", "extra", "differs"):
            for item in rec[what]:
                print(f"{what} {item}")
        if not any(rec[w] for w in ("missing", "extra", "differs")):
            print(f"records: the verified leaves are exactly the records of {rec['file']}")
    if report["ok"]:
        print("ok: every entry of the tree verifies")


def _verdict(report: Mapping[str, Any], failed: bool) -> str:
    rejections = report["rejections"]
    if failed:
        last = rejections[-1] if rejections else {"reason": "no_root", "detail": ""}
        detail = f": {last['detail']}" if last["detail"] else ""
        return f"no verified root at {report['url'].rsplit('@', 1)[1]}: {last['reason']}{detail}"
    parts = []
    if rejections:
        reasons: dict[str, int] = {}
        for r in rejections:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        parts.append(f"{len(rejections)} entries rejected (" +
                     ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")")
    elif not report["complete"]:
        parts.append("the walk did not reach the whole tree")
    rec = report.get("records")
    if rec is not None and any(rec[w] for w in ("missing", "extra", "differs")):
        parts.append(f"the leaves differ from {rec['file']}: " +
                     ", ".join(f"{len(rec[w])} {w}" for w in ("missing", "extra", "differs") if rec[w]))
    return "; ".join(parts)
