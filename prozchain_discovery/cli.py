"""``prozchain-discovery`` — run a node, show its status, or run a local demo network."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import stat
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
  prozchain-discovery node --metrics-listen 127.0.0.1:9464
  prozchain-discovery status --data-dir ~/.local/share/prozchain-discovery
  prozchain-discovery demo --nodes 30
"""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _seconds(text: str) -> float:
    """A finite number of seconds, 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 seconds")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level (choose from {', '.join(LOG_LEVELS)})")
    return text.upper()


def _metrics_listen(text: str) -> tuple[str, int]:
    from .metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        "each listen address is printed with /p2p/<peer id>, one per line, once the node is up.",
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
    node.add_argument("--min-peers", type=_at_least_one, metavar="N",
                      help="stop the cascade at N connected peers (default 8)")
    node.add_argument("--bootstrap-node", action="store_true",
                      help="serve larger bootstrap answers (for nodes listed as bootstrap nodes)")
    node.add_argument("--key-file", metavar="FILE",
                      help="identity key file (default <data-dir>/identity.key; created 0600)")
    node.add_argument("--data-dir", metavar="DIR",
                      help="where the key, peer database and status live "
                      "(default $XDG_DATA_HOME/prozchain-discovery)")
    node.add_argument("--status-interval", type=_seconds, metavar="S",
                      help="log a status line every S seconds (default 30; 0 = off)")
    node.add_argument("--metrics-listen", type=_metrics_listen, metavar="HOST:PORT",
                      help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; "
                      "e.g. 127.0.0.1:9464 — kubo serves its own at 127.0.0.1:5001/debug/metrics/prometheus)")
    node.add_argument("--log-level", type=_log_level, default="INFO", metavar="LEVEL",
                      help="DEBUG, INFO, WARNING or ERROR (default INFO)")

    nat = sub.add_parser(
        "nat",
        help="classify this machine's NAT (STUN, RFC 5780) and try a port mapping",
        description="Runs the RFC 5780 tests against a STUN server (mapping and filtering "
        "behaviour: open, full_cone, restricted_cone, port_restricted, symmetric) and, with "
        "--port-mapping, asks the gateway (NAT-PMP, then UPnP) to map a TCP port, then deletes "
        "the mapping.",
    )
    nat.add_argument("--stun", metavar="HOST:PORT", action="append", default=[],
                     help="STUN server (repeatable; RFC 5780 servers give the filtering too)")
    nat.add_argument("--port-mapping", action="store_true", help="try NAT-PMP / UPnP on the gateway")
    nat.add_argument("--port", type=int, default=4001, help="TCP port to map (default 4001)")
    nat.add_argument("--json", action="store_true", help="print JSON")

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
    demo.add_argument("--nodes", type=_at_least_one, default=30, help="number of joining nodes (default 30)")
    demo.add_argument("--min-peers", type=_at_least_one, default=8, help="peers each node wants (default 8)")
    demo.add_argument("--bootstrap-answer", type=_at_least_one, default=4,
                      help="records per bootstrap answer (small so PEX does the spreading; default 4)")
    demo.add_argument("--out", default="demo-out", help="directory for the graph and summary")
    demo.add_argument("--timeout", type=_positive_seconds, default=60.0, help="give up after S seconds")
    demo.add_argument("--log-level", type=_log_level, default="WARNING", metavar="LEVEL",
                      help="DEBUG, INFO, WARNING or ERROR (default WARNING)")
    return parser


class CliError(Exception):
    """An operator's problem, already worded as the one line to print after ``error:``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _split_host_port(text: str) -> tuple[str, str]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address → (host, port text)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""  # a name, or an IPv6 address without a port


def _flag_for(field_name: str, args: argparse.Namespace, before: DiscoveryConfig) -> str | None:
    """The command-line option that set config field ``field_name``, if one did."""
    simple = {
        "network_id": "--network-id", "status_interval": "--status-interval", "data_dir": "--data-dir",
        "bootstrap.min_peers_for_startup": "--min-peers",
    }
    if field_name in simple and getattr(args, simple[field_name].lstrip("-").replace("-", "_")) is not None:
        return simple[field_name]
    if field_name.startswith("listen[") and args.listen:
        return "--listen"
    if field_name.startswith("bootstrap.dns.") and args.dns_server:
        return "--dns-server"
    for name, flag in (("bootstrap_nodes", "--bootstrap"), ("static_peers", "--static"), ("dns_seeds", "--dns-seed")):
        prefix = f"bootstrap.{name}["
        if field_name.startswith(prefix):
            index = int(field_name[len(prefix):].rstrip("]"))
            if index >= len(getattr(before.bootstrap, name)):
                return flag
    return None


def _node_config(args: argparse.Namespace) -> DiscoveryConfig:
    cfg = load_config(args.config) if args.config else DiscoveryConfig()
    try:
        return _apply_flags(cfg, args)
    except ConfigError as exc:
        flag = _flag_for(exc.field, args, cfg)
        if flag is None:
            raise
        raise CliError(f"{flag}: {exc.problem}", code=2) from None


def _apply_flags(cfg: DiscoveryConfig, args: argparse.Namespace) -> DiscoveryConfig:
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
    if args.dns_server is not None:
        host, port = _split_host_port(args.dns_server)
        if not host or (port and not port.isdigit()):
            raise ConfigError("bootstrap.dns", f"{args.dns_server!r}: expected HOST or HOST:PORT")
        changes["dns"] = dataclasses.replace(boot.dns, nameservers=(host,), port=int(port) if port else 53)
    top: dict[str, Any] = {}
    if changes:
        top["bootstrap"] = dataclasses.replace(boot, **changes)
    if args.listen:
        top["listen"] = tuple(args.listen)
    if args.network_id is not None:
        top["network_id"] = args.network_id
    if args.bootstrap_node:
        top["server"] = dataclasses.replace(cfg.server, bootstrap_node=True)
    if args.status_interval is not None:
        top["status_interval"] = args.status_interval
    elif cfg.status_interval == 0:
        top["status_interval"] = 30.0
    if args.data_dir is not None:
        top["data_dir"] = args.data_dir
    return cfg.replace(**top) if top else cfg.validate()


def _setup_logging(level: str) -> None:
    from .libp2p_logs import route_libp2p_logs

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # libp2p's own warnings and errors go to our log (rate-limited there); its debug chatter
    # only with --log-level DEBUG.
    route_libp2p_logs(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)


def _prepare_data_dir(path: Path, label: str) -> None:
    """Make sure ``path`` is a directory this process can write, creating it (0700) if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise CliError(
                f"{label} {path}: is a symbolic link to {os.readlink(path)}, which does not exist "
                "(is its volume mounted?)", code=2,
            ) from None
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
            raise CliError(f"{label} {path}: cannot create it: {exc.strerror}{where}", code=2) from None
        return
    except NotADirectoryError:
        parent = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path.parent)
        raise CliError(f"{label} {path}: {parent} is a file, not a directory", code=2) from None
    except OSError as exc:  # no access to a parent (EACCES), EIO, ELOOP
        raise CliError(f"{label} {path}: {exc.strerror}", code=2) from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{label} {path}: is a file, not a directory", code=2)
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"{label} {path}: not writable by this user", code=2)


def _listen_addrs(cfg: DiscoveryConfig) -> list[str]:
    """The listen addresses this node can use; a warning for each other, an error if none."""
    from .listen import check_listen_addrs

    ok, failed = check_listen_addrs(cfg.listen)
    if not ok:
        raise CliError("cannot listen on " + "; ".join(f"{a}: {why}" for a, why in failed))
    for addr, why in failed:
        log.warning("cannot listen on %s: %s; going on without it", addr, why)
    return ok


async def _run_node(
    cfg: DiscoveryConfig,
    key: Any,
    listen: list[str],
    data_dir: Path,
    metrics_listen: tuple[str, int] | None = None,
) -> None:
    import multiaddr
    import trio

    from .host import make_host
    from .libp2p_fixes import run_host
    from .listen import not_listening
    from .metrics import serve_metrics
    from .service import DiscoveryService

    host = make_host(key, listen_addrs=listen, dial_timeout=cfg.bootstrap.dial_timeout)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, [multiaddr.Multiaddr(a) for a in listen]):
            missing = not_listening(host, listen)
            if len(missing) == len(listen):
                raise CliError("cannot listen on " + ", ".join(missing) + " (see --log-level DEBUG)")
            for addr in missing:
                log.warning("cannot listen on %s; going on without it (see --log-level DEBUG)", addr)
            async with DiscoveryService(host, cfg, data_dir=data_dir).run() as svc, trio.open_nursery() as nursery:
                log.info("node %s on network %r", svc.local_id, cfg.network_id)
                if metrics_listen is not None:
                    try:
                        await nursery.start(serve_metrics, svc.metrics, *metrics_listen)
                    except OSError as exc:
                        raise CliError(f"--metrics-listen: {exc.strerror or exc}") from None
                # Printed once everything is up: a script that reads the first line can dial it.
                for addr in host.get_addrs():
                    print(addr, flush=True)
                _freeze_startup_heap()
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
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


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside ``exc`` when trio wrapped it in groups (raised in a nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    from .host import KeyFileError, default_data_dir, load_or_create_key

    _setup_logging(args.log_level)
    try:
        cfg = _node_config(args)
        listen = _listen_addrs(cfg)
        if args.data_dir is not None:
            data_dir, label = Path(args.data_dir), "--data-dir"
        elif cfg.data_dir:
            data_dir, label = Path(cfg.data_dir), "data_dir"
        else:
            data_dir, label = default_data_dir(), "data dir"
        _prepare_data_dir(data_dir, label)
        key_file = Path(args.key_file) if args.key_file else data_dir / "identity.key"
        key, created = load_or_create_key(key_file)
        log.info("%s identity key %s", "created" if created else "loaded", key_file)
        trio.run(_run_node, cfg, key, listen, data_dir, args.metrics_listen)
    except BaseException as raised:
        exc = _sole(raised)
        if isinstance(exc, CliError):
            code = exc.code
        elif isinstance(exc, ConfigError | KeyFileError):
            code = 2
        elif isinstance(exc, OSError):
            code = 1
        else:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
    return 0


def _status_lines(st: dict[str, Any]) -> list[str]:
    """The text of ``prozchain-discovery status``; KeyError/TypeError/ValueError on a bad shape."""
    out = [
        f"peer id    {st['peer_id']}",
        f"network    {st['network_id']}    phase {st['phase']}    uptime {float(st['uptime']):.0f} s",
        f"peers      {st['connected']} connected ({st['outbound']} outbound), want {st['min_peers']}",
        f"sources    {', '.join(f'{k}={v}' for k, v in sorted(st['by_source'].items())) or '-'}",
        f"peer book  {st['peerdb']}",
        "",
        f"{'peer':<54} {'source':<10} {'dir':<4} {'for(s)':>7}  addr",
    ]
    for p in st["peers"]:
        out.append(f"{p['peer_id']:<54} {p['source']:<10} {p['direction']:<4} {p['for']:>7}  {p['addr']}")
    out += _nat_lines(st.get("nat") or {})
    relays, served = st.get("autorelay") or {}, st.get("relay_server") or {}
    if relays.get("relays") or served.get("serving"):
        out.append("")
    if served.get("serving"):
        out.append(f"relay      serving hop, {served['reservations']} reservations, {served['circuits_open']} circuits")
    for r in relays.get("relays") or []:
        out.append(f"via relay  {r['peer_id']}  expires in {r['expires_in']} s")
    for a in relays.get("circuit_addrs") or []:
        out.append(f"circuit    {a}")
    punched = (st.get("holepunch") or {}).get("peers") or {}
    if punched:
        out += ["", f"{'hole punching with':<54} result"]
        for pid, h in punched.items():
            result = h.get("result") or h.get("state", "?")
            if result == "HolepunchNotSupported":
                result += f" ({h.get('reason', '')})"
            elif h.get("time_to_direct_s") is not None:
                result += f" after {h.get('attempts')} attempt(s), {h['time_to_direct_s']} s, via {h.get('remote_addr')}"
            out.append(f"{pid:<54} {result}")
    if st.get("backoff"):
        out += ["", f"{'backing off':<54} {'fails':>5} {'retry in':>9}  last error"]
        for key, b in st["backoff"].items():
            retry = "gave up" if b["given_up"] else f"{b['retry_in']}s"
            out.append(f"{key:<54} {b['failures']:>5} {retry:>9}  {str(b['last_error'])[:60]}")
    return out


def _nat_lines(nat: dict[str, Any]) -> list[str]:
    """NatStatus in ``status``: type, raw behaviours, reachability, external addresses, evidence."""
    if not nat:
        return []
    out = ["", f"nat        {nat.get('nat_type', 'unknown')} (mapping {nat.get('mapping', 'unknown')}, "
           f"filtering {nat.get('filtering', 'unknown')})    reachability {nat.get('reachability', 'unknown')}"]
    out += [f"external   {a}" for a in nat.get("external_addrs") or []]
    out += [f"evidence   {e}" for e in nat.get("evidence") or []]
    if nat.get("port_mapping_error"):
        out.append(f"mapping    {nat['port_mapping_error']}")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from .host import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    path = data_dir / "status.json"
    unreadable = "the node may be writing it, or it is from another version; try again"
    try:
        st = json.loads(path.read_bytes())
    except FileNotFoundError:
        print(f"no status at {path}: is a node running with --data-dir {data_dir}?", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        print(f"error: {path} is not valid JSON ({exc}); {unreadable}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    if not isinstance(st, dict):
        print(f"error: {path} holds a JSON {type(st).__name__}, not a status object; {unreadable}", file=sys.stderr)
        return 1
    try:
        lines = _status_lines(st)
    except KeyError as exc:
        print(f"error: {path} has no {exc} field; {unreadable}", file=sys.stderr)
        return 1
    except (TypeError, ValueError, AttributeError) as exc:
        print(f"error: {path} has a field of the wrong type ({exc}); {unreadable}", file=sys.stderr)
        return 1
    print("\n".join(lines))
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


def cmd_nat(args: argparse.Namespace) -> int:
    import trio

    from .nat.diagnose import diagnose
    from .nat.stun import parse_stun_server

    try:
        servers = [parse_stun_server(t) for t in args.stun]
    except ValueError as exc:
        print(f"error: --stun: {exc}", file=sys.stderr)
        return 2
    if not servers and not args.port_mapping:
        print("error: give --stun HOST:PORT and/or --port-mapping", file=sys.stderr)
        return 2
    result = trio.run(functools.partial(diagnose, servers, port_mapping=args.port_mapping, port=args.port))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<20} {value}")
    return 1 if "stun_error" in result or "port_mapping_error" in result else 0


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
    if args.command == "nat":
        return cmd_nat(args)
    if args.command == "demo":
        return cmd_demo(args)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
