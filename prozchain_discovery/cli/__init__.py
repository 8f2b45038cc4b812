"""``prozchain-discovery`` — run a node, show its status, classify this machine's NAT, run a
local demo network, or publish and check a signed DNS seed (``seed``). One module per command; this one only dispatches.

Each command's module is imported when that command runs: ``--help``, ``status`` and ``nat``
never pay for importing libp2p (about a second of CPU, ../shared/notes/py-libp2p-0.8.1.md item
19); ``tests/test_cli_imports.py`` holds them to it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .parser import build_parser

if TYPE_CHECKING:
    from .node import node_config
    from .status import status_lines

__all__ = ["main", "build_parser", "node_config", "status_lines"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "node":
        from .node import cmd_node

        return cmd_node(args)
    if args.command == "status":
        from .status import cmd_status

        try:
            return cmd_status(args)
        except BrokenPipeError:  # e.g. piped into head: not an error
            sys.stderr.close()
            return 0
    if args.command == "nat":
        from .tools import cmd_nat

        return cmd_nat(args)
    if args.command == "demo":
        from .tools import cmd_demo

        return cmd_demo(args)
    if args.command == "seed":
        return _seed(args)
    parser.print_help()
    return 0


def _seed(args: Any) -> int:
    if args.seed_command == "crawl":
        from .seed_crawl import cmd_seed_crawl

        return cmd_seed_crawl(args)
    from .seed import cmd_seed_build, cmd_seed_key, cmd_seed_verify

    if args.seed_command == "key":
        return cmd_seed_key(args)
    return cmd_seed_build(args) if args.seed_command == "build" else cmd_seed_verify(args)


def __getattr__(name: str) -> Any:
    """``node_config`` and ``status_lines``, imported on first use (PEP 562)."""
    if name == "node_config":
        from .node import node_config

        return node_config
    if name == "status_lines":
        from .status import status_lines

        return status_lines
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
