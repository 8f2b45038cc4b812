"""``prozchain-discovery seed crawl``: a running network's signed peer records -> records.jsonl.

The crawl itself is prozchain_discovery/crawl.py; this module checks the arguments, runs it,
prints the summary on stderr and writes the file (atomically, after the loop has ended). Each
line of the file is ``{"peer_id", "seq", "addrs", "envelope"}`` (the envelope base64url,
unpadded); ``seed build`` reads only ``envelope``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import multiaddr
    from libp2p.peer.id import ID

    from ..records import VerifiedRecord

__all__ = ["cmd_seed_crawl", "record_line", "parse_bootstrap"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def parse_bootstrap(text: str) -> tuple[ID, multiaddr.Multiaddr]:
    """``(peer id, transport address)`` of a ``--bootstrap`` multiaddr; ValueError names it."""
    from ..addrs import AddressError, parse_multiaddr, peer_id_of, strip_p2p

    try:
        ma = parse_multiaddr(text)
    except AddressError as exc:
        raise ValueError(f"--bootstrap {text}: {exc}") from None
    pid = peer_id_of(ma)
    if pid is None:
        raise ValueError(f"--bootstrap {text}: has no /p2p/<peer id> (a bootstrap node is named by its peer id)")
    return pid, strip_p2p(ma)


def record_line(rec: VerifiedRecord) -> str:
    """One records.jsonl line (no newline)."""
    envelope = base64.urlsafe_b64encode(rec.envelope_bytes).rstrip(b"=").decode()
    return json.dumps({
        "peer_id": rec.peer_id.to_base58(),
        "seq": rec.seq,
        "addrs": [str(a) for a in rec.addrs],
        "envelope": envelope,
    })


def cmd_seed_crawl(args: argparse.Namespace) -> int:
    """Exit 0 when at least one record was written, 1 when none, 2 for bad arguments."""
    from ..config import DEFAULT_NETWORK_ID, ConfigError, check_network_id

    network_id = getattr(args, "network_id", None) or DEFAULT_NETWORK_ID
    try:
        check_network_id(network_id)
    except ConfigError as exc:
        return _error(f"--network-id: {exc}", 2)
    out = Path(args.out)
    if out.is_dir():
        return _error(f"--out {out}: is a directory", 2)
    bootstrap_args = list(getattr(args, "bootstrap", None) or [])
    if not bootstrap_args:
        return _error("give at least one --bootstrap /ip4/.../tcp/.../p2p/<peer id>", 2)
    for name in ("timeout", "dial_timeout"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            return _error(f"--{name.replace('_', '-')}: must be more than 0 seconds", 2)
    max_peers = getattr(args, "max_peers", None) or 1000
    if max_peers < 1:
        return _error("--max-peers: must be at least 1", 2)
    try:
        bootstrap = [parse_bootstrap(text) for text in bootstrap_args]
    except ValueError as exc:
        return _error(str(exc), 2)

    import trio

    from ..crawl import crawl
    from .common import setup_logging

    # libp2p's warnings through our handler, rate-limited (not Python's last-resort printer).
    setup_logging(getattr(args, "log_level", None) or "WARNING")

    timeout = getattr(args, "timeout", None) or 30.0
    dial_timeout = getattr(args, "dial_timeout", None) or 5.0
    _say(f"crawling network {network_id!r} from {len(bootstrap)} bootstrap node(s): "
         f"up to {max_peers} peers within {timeout:g} s")
    try:
        report = trio.run(functools.partial(
            crawl, bootstrap, network_id, timeout=timeout, max_peers=max_peers, dial_timeout=dial_timeout, say=_say,
        ))
    except KeyboardInterrupt:
        return _error("interrupted; nothing written", 1)
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(report.rejected.items())) or "none"
    _say(f"crawl {report.stopped} after {report.seconds:.1f} s: peers asked {report.asked} "
         f"(answered on our network {report.confirmed}), "
         f"records seen {report.seen}, peers with a verified record {report.verified} "
         f"(records rejected: {rejected}), answered a dial {report.answered}, "
         f"refused a dial {len(report.refused)}, other network {len(report.wrong_network)}, "
         f"answered neither protocol {len(report.unconfirmed)}, written {len(report.records)}")
    if not report.records:
        return _error(f"no record to write; {out} not written", 1)
    text = "".join(record_line(rec) + "\n" for rec in report.records)
    from ..fsutil import atomic_write

    try:
        atomic_write(out, text)
    except OSError as exc:
        return _error(f"cannot write {out}: {exc.strerror or exc}", 1)
    _say(f"wrote {len(report.records)} records to {out}")
    return 0

