"""``prozchain-discovery`` — run a node, show its status, classify this machine's NAT, or run a
local demo network. One module per command; this one only dispatches."""

from __future__ import annotations

import sys

from .node import cmd_node, node_config
from .parser import build_parser
from .status import cmd_status, status_lines
from .tools import cmd_demo, cmd_nat

__all__ = ["main", "build_parser", "node_config", "status_lines"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
