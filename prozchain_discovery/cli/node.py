"""``prozchain-discovery node``: the config from file and flags, the data dir, running the node.

Every operator mistake (a bad flag, an address that cannot be bound, a damaged data dir) ends
as one ``error:`` line and a non-zero exit, never a traceback and never a new identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, DiscoveryConfig, is_signed_seed, load_config
from .common import CliError, parse_dns_server, setup_logging, sole

__all__ = ["cmd_node", "node_config"]

log = logging.getLogger("prozchain_discovery")


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
    if (field_name == "bootstrap.dns" or field_name.startswith("bootstrap.dns.")) and args.dns_server is not None:
        return "--dns-server"
    for name, flag in (("bootstrap_nodes", "--bootstrap"), ("static_peers", "--static"), ("dns_seeds", "--dns-seed")):
        prefix = f"bootstrap.{name}["
        if field_name.startswith(prefix):
            index = int(field_name[len(prefix):].rstrip("]"))
            if index >= len(getattr(before.bootstrap, name)):
                return flag
    return None


def node_config(args: argparse.Namespace) -> DiscoveryConfig:
    """The config file (``--config``) with the flags applied; an error names the flag or file."""
    try:
        cfg = load_config(args.config) if args.config else DiscoveryConfig()
    except ConfigError as exc:
        if exc.field == "<file>":  # cannot read it, not TOML: the problem names the file
            raise CliError(f"--config: {exc.problem}", code=2) from None
        raise CliError(f"--config {args.config}: {exc}", code=2) from None
    try:
        return _check_signed_seeds(_apply_flags(cfg, args))
    except ConfigError as exc:
        flag = _flag_for(exc.field, args, cfg)
        if flag is not None:
            raise CliError(f"{flag}: {exc.problem}", code=2) from None
        if args.config:  # a value from the file, refused only with the flags applied
            raise CliError(f"--config {args.config}: {exc}", code=2) from None
        raise


def _check_signed_seeds(cfg: DiscoveryConfig) -> DiscoveryConfig:
    """A ``pzseed://`` seed's key and domain are checked now (the cascade would refuse it at
    start), so the error names the flag or the file."""
    for i, seed in enumerate(cfg.bootstrap.dns_seeds):
        if is_signed_seed(seed):
            from ..dnsseed.url import SeedUrlError, parse_url  # imports libp2p's key code

            try:
                parse_url(seed)
            except SeedUrlError as exc:
                raise ConfigError(f"bootstrap.dns_seeds[{i}]", f"{seed!r}: {exc}") from None
    return cfg


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
        try:
            host, port = parse_dns_server(args.dns_server)
        except ValueError as exc:
            raise ConfigError("bootstrap.dns", str(exc)) from None
        changes["dns"] = dataclasses.replace(boot.dns, nameservers=(host,), port=port)
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
    from ..listen import check_listen_addrs

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
    collect: bool = True,
) -> None:
    import multiaddr
    import trio

    from ..host import make_host
    from ..libp2p_fixes import run_host
    from ..listen import not_listening
    from ..metrics import serve_metrics
    from ..service import DiscoveryService

    host = make_host(key, listen_addrs=listen, dial_timeout=cfg.bootstrap.dial_timeout)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, [multiaddr.Multiaddr(a) for a in listen]):
            missing = not_listening(host, listen)
            if len(missing) == len(listen):
                raise CliError("cannot listen on " + ", ".join(missing) + " (see --log-level DEBUG)")
            for addr in missing:
                log.warning("cannot listen on %s; going on without it (see --log-level DEBUG)", addr)
            # Before the service starts: its first tenth of a second is the join, which a full
            # collection of the start-up heap would stall (a fresh process joined in 0.14-0.23 s
            # with the collection there, 0.05-0.09 s without it).
            _freeze_startup_heap(collect)
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
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
    log.info("stopped cleanly")


def _freeze_startup_heap(collect: bool = True) -> None:
    """Keep what start-up built (libp2p, the loaded peer book) out of full collections.

    Those objects live as long as the node; a full collection re-scans them all and stalls the
    trio loop (~80 ms with a 64,000-entry book, bench/RESULTS.md). Objects made later are
    collected as usual (from here on, if ``collect``: :func:`cmd_node` turned the collector off
    for start-up). A process-wide choice, so the CLI makes it, not the library.
    """
    import gc

    # No gc.collect() first: start-up ran with the collector off and made next to no garbage,
    # and a full pass over libp2p's heap costs tens of milliseconds of a loop that is about to
    # dial. gc.freeze() itself only moves the generations' lists.
    gc.freeze()
    if collect:
        gc.enable()
    log.debug("%d start-up objects moved out of the collector's scans", gc.get_freeze_count())


def cmd_node(args: argparse.Namespace) -> int:
    import gc

    # No collections while start-up imports libp2p and builds the node: nearly everything it
    # allocates lives as long as the node, so they would only re-scan it (about a tenth of the
    # time to the listen addresses). _freeze_startup_heap turns the collector back on once the
    # node is up; this finally, if it never gets there.
    collect = gc.isenabled()
    gc.disable()
    try:
        return _start_node(args, collect)
    finally:
        if collect:
            gc.enable()


def _start_node(args: argparse.Namespace, collect: bool) -> int:
    import trio

    from ..fsutil import default_data_dir

    setup_logging(args.log_level)
    try:
        cfg = node_config(args)
        listen = _listen_addrs(cfg)
        if args.data_dir is not None:
            data_dir, label = Path(args.data_dir), "--data-dir"
        elif cfg.data_dir:
            data_dir, label = Path(cfg.data_dir), "data_dir"
        else:
            data_dir, label = default_data_dir(), "data dir"
        _prepare_data_dir(data_dir, label)
        key_file = Path(args.key_file) if args.key_file else data_dir / "identity.key"
        from ..host import KeyFileError, load_or_create_key  # libp2p: after the flags are checked

        try:
            key, created = load_or_create_key(key_file)
        except KeyFileError as bad_key:
            raise CliError(str(bad_key), code=2) from None
        log.info("%s identity key %s", "created" if created else "loaded", key_file)
        trio.run(_run_node, cfg, key, listen, data_dir, args.metrics_listen, collect)
    except BaseException as raised:
        exc = sole(raised)
        if isinstance(exc, CliError):
            code = exc.code
        elif isinstance(exc, ConfigError):
            code = 2
        elif isinstance(exc, OSError):
            code = 1
        else:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
    return 0
