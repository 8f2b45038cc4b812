"""``prozchain-discovery nat`` (this machine's NAT and a trial port mapping) and ``demo``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from .common import setup_logging

__all__ = ["cmd_nat", "cmd_demo"]


def cmd_nat(args: argparse.Namespace) -> int:
    import trio

    from ..nat.diagnose import diagnose
    from ..nat.stun import parse_stun_server

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


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    setup_logging(args.log_level)
    return run_demo(
        nodes=args.nodes,
        min_peers=args.min_peers,
        bootstrap_answer=args.bootstrap_answer,
        out_dir=Path(args.out),
        timeout=args.timeout,
    )
