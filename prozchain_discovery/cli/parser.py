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
  prozchain-discovery node --metrics-listen 127.0.0.1:9464
  prozchain-discovery status --data-dir ~/.local/share/prozchain-discovery
  prozchain-discovery demo --nodes 30
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
                      help="DNS seed: /dnsaddr/<domain>, or a host name[:port] (repeatable)")
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
    return parser
