"""``prozchain-discovery`` — run a node, show its status, or run a local demo network."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import ConfigError, DiscoveryConfig, load_config

log = logging.getLogger("prozchain_discovery")

EPILOG = """\
examples:
  prozchain-discovery node --listen /ip4/0.0.0.0/tcp/4001 --bootstrap-node
  prozchain-discovery node --bootstrap /ip4/192.0.2.7/tcp/4001/p2p/12D3KooW... --mdns
  prozchain-discovery node --dns-seed /dnsaddr/seed.example.org --dns-server 127.0.0.1:5353
  prozchain-discovery status --data-dir ~/.local/share/prozchain-discovery
  prozchain-discovery demo --nodes 30
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prozchain-discovery",
        description="Peer discovery for ProzChain on py-libp2p: bootstrap cascade (static "
        "peers, bootstrap nodes, DNS seeds, mDNS), peer exchange and a persistent peer database.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    node = sub.add_parser(
        "node",
        help="run a discovery node until Ctrl-C or SIGTERM",
        description="Run a node. Command-line options override the config file. At start-up "
        "each listen address is printed with /p2p/<peer id>, one per line.",
    )
    node.add_argument("--config", metavar="FILE", help="TOML config (see README for the fields)")
    node.add_argument("--listen", metavar="MA", action="append",
                      help="listen multiaddr (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    node.add_argument("--bootstrap", metavar="MA", action="append", default=[],
                      help="bootstrap node, a full multiaddr with /p2p/<id> (repeatable)")
    node.add_argument("--static", metavar="MA", action="append", default=[],
                      help="static peer: always kept connected, re-dialed when lost (repeatable)")
    node.add_argument("--dns-seed", metavar="SEED", action="append", default=[],
                      help="DNS seed: /dnsaddr/<domain>, or a host name[:port] (repeatable)")
    node.add_argument("--dns-server", metavar="HOST[:PORT]",
                      help="resolver for DNS seeds (default: the system resolver)")
    node.add_argument("--network-id", metavar="ID", help="network to join (default prozchain-mainnet)")
    node.add_argument("--mdns", action="store_true", help="enable local discovery with mDNS")
    node.add_argument("--min-peers", type=int, metavar="N",
                      help="stop the cascade at N connected peers (default 8)")
    node.add_argument("--bootstrap-node", action="store_true",
                      help="serve larger bootstrap answers (for nodes listed as bootstrap nodes)")
    node.add_argument("--key-file", metavar="FILE",
                      help="identity key file (default <data-dir>/identity.key; created 0600)")
    node.add_argument("--data-dir", metavar="DIR",
                      help="where the key, peer database and status live "
                      "(default $XDG_DATA_HOME/prozchain-discovery)")
    node.add_argument("--status-interval", type=float, metavar="S",
                      help="log a status line every S seconds (default 30; 0 = off)")
    node.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")

    status = sub.add_parser("status", help="show a running node's peers, their sources and backoff")
    status.add_argument("--data-dir", metavar="DIR", help="the node's data dir")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")

    demo = sub.add_parser(
        "demo",
        help="start a local network on loopback and show how nodes join",
        description="Starts one bootstrap node and N nodes on 127.0.0.1 in this process, shows "
        "progress while they join, then prints a summary table and writes a picture of the "
        "overlay graph (SVG).",
    )
    demo.add_argument("--nodes", type=int, default=30, help="number of joining nodes (default 30)")
    demo.add_argument("--min-peers", type=int, default=8, help="peers each node wants (default 8)")
    demo.add_argument("--bootstrap-answer", type=int, default=4,
                      help="records per bootstrap answer (small so PEX does the spreading; default 4)")
    demo.add_argument("--out", default="demo-out", help="directory for the graph and summary")
    demo.add_argument("--timeout", type=float, default=60.0, help="give up after S seconds")
    demo.add_argument("--log-level", default="WARNING")
    return parser


def _node_config(args: argparse.Namespace) -> DiscoveryConfig:
    cfg = load_config(args.config) if args.config else DiscoveryConfig()
    boot = cfg.bootstrap
    changes: dict[str, Any] = {}
    if args.bootstrap:
        changes["bootstrap_nodes"] = tuple(boot.bootstrap_nodes) + tuple(args.bootstrap)
    if args.static:
        changes["static_peers"] = tuple(boot.static_peers) + tuple(args.static)
    if args.dns_seed:
        changes["dns_seeds"] = tuple(boot.dns_seeds) + tuple(args.dns_seed)
    if args.mdns:
        changes["enable_local_discovery"] = True
    if args.min_peers is not None:
        changes["min_peers_for_startup"] = args.min_peers
    if args.dns_server:
        host, _, port = args.dns_server.rpartition(":") if ":" in args.dns_server else (args.dns_server, "", "")
        if not host:
            host, port = args.dns_server, ""
        try:
            dns = dataclasses.replace(boot.dns, nameservers=(host,), port=int(port) if port else 53)
        except ValueError:
            raise ConfigError("--dns-server", f"{args.dns_server!r}: expected HOST or HOST:PORT") from None
        changes["dns"] = dns
    top: dict[str, Any] = {}
    if changes:
        top["bootstrap"] = dataclasses.replace(boot, **changes)
    if args.listen:
        top["listen"] = tuple(args.listen)
    if args.network_id:
        top["network_id"] = args.network_id
    if args.bootstrap_node:
        top["server"] = dataclasses.replace(cfg.server, bootstrap_node=True)
    if args.status_interval is not None:
        top["status_interval"] = args.status_interval
    elif cfg.status_interval == 0:
        top["status_interval"] = 30.0
    if args.data_dir:
        top["data_dir"] = args.data_dir
    return cfg.replace(**top) if top else cfg.validate()


def _setup_logging(level: str) -> None:
    from .libp2p_fixes import route_libp2p_logs

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # libp2p logs every torn-down stream at ERROR during shutdown; only DEBUG shows them.
    route_libp2p_logs(logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG)


async def _run_node(cfg: DiscoveryConfig, key_file: Path, data_dir: Path) -> None:
    import trio

    from .host import load_or_create_key, make_host
    from .libp2p_fixes import run_host
    from .service import DiscoveryService

    key, created = load_or_create_key(key_file)
    log.info("%s identity key %s", "created" if created else "loaded", key_file)
    host = make_host(key, listen_addrs=cfg.listen, dial_timeout=cfg.bootstrap.dial_timeout)
    import multiaddr

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, [multiaddr.Multiaddr(a) for a in cfg.listen]):
            for addr in host.get_addrs():
                print(addr, flush=True)
            async with DiscoveryService(host, cfg, data_dir=data_dir).run() as svc:
                log.info("node %s on network %r", svc.local_id, cfg.network_id)
                _freeze_startup_heap()
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    break
    log.info("stopped cleanly")


def _freeze_startup_heap() -> None:
    """Keep what start-up built (libp2p, the loaded peer book) out of full collections.

    Those objects live as long as the node; a full collection re-scans them all and stalls the
    trio loop (~80 ms with a 64,000-entry book, bench/RESULTS.md). Objects made later are
    collected as usual. A process-wide choice, so the CLI makes it, not the library.
    """
    import gc

    gc.collect()
    gc.freeze()
    log.debug("%d start-up objects moved out of the collector's scans", gc.get_freeze_count())


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    from .host import KeyFileError, default_data_dir

    _setup_logging(args.log_level)
    try:
        cfg = _node_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    key_file = Path(args.key_file) if args.key_file else data_dir / "identity.key"
    try:
        trio.run(_run_node, cfg, key_file, data_dir)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .host import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "status.json"
    try:
        st = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no status at {path}: is a node running with --data-dir {data_dir}?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"peer id    {st['peer_id']}")
    print(f"network    {st['network_id']}    phase {st['phase']}    uptime {st['uptime']:.0f} s")
    print(f"peers      {st['connected']} connected ({st['outbound']} outbound), want {st['min_peers']}")
    print(f"sources    {', '.join(f'{k}={v}' for k, v in sorted(st['by_source'].items())) or '-'}")
    print(f"peer book  {st['peerdb']}")
    print()
    print(f"{'peer':<54} {'source':<10} {'dir':<4} {'for(s)':>7}  addr")
    for p in st["peers"]:
        print(f"{p['peer_id']:<54} {p['source']:<10} {p['direction']:<4} {p['for']:>7}  {p['addr']}")
    if st.get("backoff"):
        print()
        print(f"{'backing off':<54} {'fails':>5} {'retry in':>9}  last error")
        for key, b in st["backoff"].items():
            retry = "gave up" if b["given_up"] else f"{b['retry_in']}s"
            print(f"{key:<54} {b['failures']:>5} {retry:>9}  {b['last_error'][:60]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _setup_logging(args.log_level)
    return run_demo(
        nodes=args.nodes,
        min_peers=args.min_peers,
        bootstrap_answer=args.bootstrap_answer,
        out_dir=Path(args.out),
        timeout=args.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "node":
        return cmd_node(args)
    if args.command == "status":
        try:
            return cmd_status(args)
        except BrokenPipeError:  # e.g. piped into head: not an error
            sys.stderr.close()
            return 0
    if args.command == "demo":
        return cmd_demo(args)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
