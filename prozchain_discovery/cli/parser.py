"""The ``prozchain-discovery`` argument parser and its argument types (each error names the flag)."""

from __future__ import annotations

import argparse
import math

from .. import __version__

__all__ = ["build_parser", "LOG_LEVELS"]

EPILOG = """\
examples:
  prozchain-discovery node --listen /ip4/0.0.0.0/tcp/4001 --bootstrap-node
  prozchain-discovery node --bootstrap /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW... --mdns
  prozchain-discovery node --dns-seed /dnsaddr/seed.example.org --dns-server 127.0.0.1:5353
  prozchain-discovery node --dns-seed pzseed://<52-char key>@nodes.example.org
  prozchain-discovery node --metrics-listen 127.0.0.1:9464
  prozchain-discovery status --data-dir ~/.local/share/prozchain-discovery
  prozchain-discovery demo --nodes 30
  prozchain-discovery seed crawl --bootstrap /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW... --out records.jsonl
  prozchain-discovery seed build --key seed.key --domain seed.example.org --seq 2 records.jsonl > zone.conf
  prozchain-discovery seed verify pzseed://<key>@seed.example.org --dns-server 127.0.0.1:5353
"""

SEED_DESCRIPTION = """\
Operator tools for signed DNS seeds (pzseed v1, protocols/dns-seed.md): a node configured with
--dns-seed pzseed://<key>@<domain> takes from that seed only signed peer records in a tree
signed by that key: a DNS path can withhold them, not forge, swap or roll them back.

  0. seed key     make the seed's signing key once (keep it offline), print the URL
  1. seed crawl   collect signed peer records from a running network (records.jsonl)
  2. seed build   sign them into a TXT tree: a dnsmasq conf file or a BIND zone fragment
  3. seed verify  walk the published tree over DNS as a node would, and check every entry
"""

BUILD_DESCRIPTION = """\
Sign the records of RECORDS (seed crawl's output: one JSON object a line, its "envelope" a
signed peer record) into a pzseed v1 TXT tree for DOMAIN. The zone goes to stdout, the seed's
pzseed://<key>@<domain> URL (what nodes are given with --dns-seed) and a summary to stderr.

The key: any libp2p Ed25519 private key file: one made by `seed key --out FILE` (kept offline),
or a node's identity key <data-dir>/identity.key; the URL is derived from it.
Keep it for the next build: a new key is a new URL.

Every record is verified first: one that does not verify stops the build (or is skipped with
--skip-invalid); one too big for a leaf is skipped with a warning naming the peer.
"""

BUILD_EPILOG = """\
serving it:
  dnsmasq: prozchain-discovery seed build ... --format dnsmasq records.jsonl > zone.conf
           dnsmasq --conf-file=zone.conf   (or conf-file=zone.conf in dnsmasq.conf; every line
           is at most 1020 characters, within dnsmasq's limit)
  BIND:    --format bind writes NAME. 300 IN TXT "..." lines; include them in the zone that
           holds DOMAIN and reload it.
Publish each new tree with a higher --seq (e.g. $(date +%s)): nodes refuse a lower one.
"""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def seconds(text: str) -> float:
    """A finite number of seconds, 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 seconds")
    return value


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def seq_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number (0 to 2**64-1)")
    return value


def udp_size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 512 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS payload size (512 to 65535 bytes)")
    return value


def log_level_arg(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level (choose from {', '.join(LOG_LEVELS)})")
    return text.upper()


def metrics_listen_arg(text: str) -> tuple[str, int]:
    from ..metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prozchain-discovery",
        description="Peer discovery for ProzChain on py-libp2p: bootstrap cascade (static "
        "peers, bootstrap nodes, DNS seeds, mDNS), peer exchange, a persistent peer database, "
        "and NAT traversal (STUN classification, port mapping, AutoNAT v2, circuit relay v2, "
        "hole punching with DCUtR).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    node = sub.add_parser(
        "node",
        help="run a discovery node until Ctrl-C or SIGTERM",
        description="Run a node. Command-line options override the config file. At start-up "
        "each listen address is printed with /p2p/<peer id>, one per line, once the node is up.",
    )
    node.add_argument("--config", metavar="FILE", help="TOML config (see README for the fields)")
    node.add_argument("--listen", metavar="MA", action="append",
                      help="listen multiaddr, /ip4/A/tcp/P or /ip4/A/udp/P/quic-v1 (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    node.add_argument("--bootstrap", metavar="MA", action="append", default=[],
                      help="bootstrap node, a full multiaddr with /p2p/<id> (repeatable)")
    node.add_argument("--static", metavar="MA", action="append", default=[],
                      help="static peer: always kept connected, re-dialed when lost (repeatable)")
    node.add_argument("--dns-seed", metavar="SEED", action="append", default=[],
                      help="DNS seed: pzseed://<key>@<domain> (signed: only peers the key's owner "
                      "listed; see seed --help), /dnsaddr/<domain>, or a host name[:port] (repeatable)")
    node.add_argument("--dns-server", metavar="IP[:PORT]",
                      help="resolver for DNS seeds, by address (default: the system resolver)")
    node.add_argument("--network-id", metavar="ID", help="network to join (default prozchain-mainnet)")
    node.add_argument("--mdns", action="store_true", help="enable local discovery with mDNS")
    node.add_argument("--min-peers", type=at_least_one, metavar="N",
                      help="stop the cascade at N connected peers (default 8)")
    node.add_argument("--bootstrap-node", action="store_true",
                      help="serve larger bootstrap answers (for nodes listed as bootstrap nodes)")
    node.add_argument("--key-file", metavar="FILE",
                      help="identity key file (default <data-dir>/identity.key; created 0600)")
    node.add_argument("--data-dir", metavar="DIR",
                      help="where the key, peer database and status live "
                      "(default $XDG_DATA_HOME/prozchain-discovery)")
    node.add_argument("--status-interval", type=seconds, metavar="S",
                      help="log a status line every S seconds (default 30; 0 = off)")
    node.add_argument("--metrics-listen", type=metrics_listen_arg, metavar="HOST:PORT",
                      help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; "
                      "e.g. 127.0.0.1:9464 — kubo serves its own at 127.0.0.1:5001/debug/metrics/prometheus)")
    node.add_argument("--log-level", type=log_level_arg, default="INFO", metavar="LEVEL",
                      help="DEBUG, INFO, WARNING or ERROR (default INFO)")

    nat = sub.add_parser(
        "nat",
        help="classify this machine's NAT (STUN, RFC 5780) and try a port mapping",
        description="Runs the RFC 5780 tests against a STUN server (mapping and filtering "
        "behaviour: open, full_cone, restricted_cone, port_restricted, symmetric) and, with "
        "--port-mapping, asks the gateway (PCP, then NAT-PMP, then UPnP) to map a TCP port, then "
        "deletes the mapping.",
    )
    nat.add_argument("--stun", metavar="HOST:PORT", action="append", default=[],
                     help="STUN server (repeatable; RFC 5780 servers give the filtering too)")
    nat.add_argument("--port-mapping", action="store_true", help="try PCP / NAT-PMP / UPnP on the gateway")
    nat.add_argument("--port", type=int, default=4001, help="TCP port to map (default 4001)")
    nat.add_argument("--json", action="store_true", help="print JSON")

    status = sub.add_parser("status", help="show a running node's peers, NAT, relays, hole punching and backoff")
    status.add_argument("--data-dir", metavar="DIR", help="the node's data dir")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")

    demo = sub.add_parser(
        "demo",
        help="start a local network on loopback and show how nodes join",
        description="Starts one bootstrap node and N nodes on 127.0.0.1 in this process, shows "
        "progress while they join, then prints a summary table and writes a picture of the "
        "overlay graph (SVG).",
    )
    demo.add_argument("--nodes", type=at_least_one, default=30, help="number of joining nodes (default 30)")
    demo.add_argument("--min-peers", type=at_least_one, default=8, help="peers each node wants (default 8)")
    demo.add_argument("--bootstrap-answer", type=at_least_one, default=4,
                      help="records per bootstrap answer (small so PEX does the spreading; default 4)")
    demo.add_argument("--out", default="demo-out", help="directory for the graph and summary")
    demo.add_argument("--timeout", type=positive_seconds, default=60.0, help="give up after S seconds")
    demo.add_argument("--log-level", type=log_level_arg, default="WARNING", metavar="LEVEL",
                      help="DEBUG, INFO, WARNING or ERROR (default WARNING)")
    _add_seed(sub)
    return parser


def _add_seed(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    seed = sub.add_parser(
        "seed",
        help="operator tools for signed DNS seeds: crawl, build, verify",
        description=SEED_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seed_sub = seed.add_subparsers(dest="seed_command", metavar="SEED_COMMAND", required=True)

    crawl = seed_sub.add_parser(
        "crawl",
        help="collect signed peer records from a running network into a records file",
        description="Ask the bootstrap nodes (and the peers they name, with PEX) for signed peer "
        "records, keep the ones whose peer answered a dial, and write them to --out, one JSON "
        "object a line (the input of seed build).",
    )
    crawl.add_argument("--bootstrap", metavar="MA", action="append", required=True,
                       help="a node to start from, a full multiaddr with /p2p/<id> (repeatable)")
    crawl.add_argument("--out", metavar="PATH", required=True, help="the records file to write")
    crawl.add_argument("--network-id", metavar="ID", default="prozchain-mainnet",
                       help="network to crawl (default prozchain-mainnet)")
    crawl.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                       help="stop crawling after this long (default 30)")
    crawl.add_argument("--max-peers", type=at_least_one, default=1000, metavar="N",
                       help="stop after N peers answered (default 1000)")
    crawl.add_argument("--dial-timeout", type=positive_seconds, default=5.0, metavar="SECONDS",
                       help="give up on a peer's dial after this long (default 5)")

    key = seed_sub.add_parser(
        "key",
        help="make a new Ed25519 signing key for a seed and print its pzseed:// URL",
        description="Write a new libp2p Ed25519 private key to --out (mode 0600; an existing file "
        "is never replaced) and print the seed URL nodes will use. Any node's identity key "
        "(<data-dir>/identity.key) also works with seed build, but a seed key kept offline is safer.",
    )
    key.add_argument("--out", metavar="KEYFILE", required=True, help="where to write the key")
    key.add_argument("--domain", metavar="DOMAIN", help="the seed's domain, to print the whole URL")

    build = seed_sub.add_parser(
        "build",
        help="sign a records file into a DNS seed zone (dnsmasq or BIND) on stdout",
        description=BUILD_DESCRIPTION,
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("records", metavar="RECORDS", help="records file (JSON lines, from seed crawl)")
    build.add_argument("--key", metavar="KEYFILE", required=True,
                       help="libp2p Ed25519 private key file, e.g. <data-dir>/identity.key of a node")
    build.add_argument("--domain", metavar="DOMAIN", required=True,
                       help="where the tree's root TXT record is served, e.g. seed.example.org")
    build.add_argument("--seq", type=seq_arg, metavar="N", required=True,
                       help="the tree's sequence number, higher than the last one published")
    build.add_argument("--format", choices=("dnsmasq", "bind"), default="dnsmasq",
                       help="dnsmasq txt-record= lines (default) or a BIND zone fragment")
    build.add_argument("--udp-size", type=udp_size_arg, default=1232, metavar="BYTES",
                       help="every answer fits a UDP response of this size (default 1232; 512: no EDNS)")
    build.add_argument("--skip-invalid", action="store_true",
                       help="skip records that do not verify (with a warning) instead of stopping")

    verify = seed_sub.add_parser(
        "verify",
        help="walk a published DNS seed and check every entry (exit 0 only if all verifies)",
        description="Walk the whole tree of a seed over DNS, as a node would: the root's signature "
        "against the URL's key, every hash on the way down, every leaf's signed peer record. "
        "Prints a summary and every rejected entry with its name and reason; exits 0 only when "
        "the whole tree verifies (and, with --records, its leaves are exactly that file's "
        "records), 1 otherwise, 2 on bad input.",
    )
    verify.add_argument("url", metavar="URL", help="the seed, pzseed://<key>@<domain> (seed build prints it)")
    verify.add_argument("--dns-server", metavar="IP[:PORT]",
                        help="resolver to ask, by address (default: the system resolver)")
    verify.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="S",
                        help="give up on one lookup after S seconds (default 5)")
    verify.add_argument("--records", metavar="FILE",
                        help="also check that the verified leaves are exactly this records file's "
                        "(each peer's newest record): missing, extra and differing peers are listed")
    verify.add_argument("--last-seq", type=seq_arg, metavar="N",
                        help="refuse a root with a lower sequence number (rollback), as a node that saw N does")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
