"""``python -m interop.natlab up|down|status|run|install`` (as root)."""

from __future__ import annotations

import argparse
import os
import sys

from .lab import Lab, LabError, debian_packages, ensure_packages, missing_packages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m interop.natlab",
        description="The NAT lab: a small internet in network namespaces (pzl-*), with a STUN "
                    "server (coturn), public hosts in three /16s and home routers doing Linux "
                    "NAT (cone, symmetric, and one with miniupnpd). Needs root.",
        epilog="examples:  up --delay-ms 25  |  run cone1 ping -c1 192.0.2.10  |  "
               "run pzl-sym1 turnutils_natdiscovery -m -f 198.51.100.1  |  down")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="build the lab (cleans any leftovers first)")
    up.add_argument("--delay-ms", type=float, default=0.0,
                    help="one-way delay added in the core (RTT grows by twice this); default 0")
    sub.add_parser("down", help="end every process in the lab's namespaces, delete them")
    sub.add_parser("status", help="the topology, the namespaces that exist, their processes")
    sub.add_parser("delay", help="change the core's one-way delay of a running lab").add_argument(
        "delay_ms", type=float)
    run = sub.add_parser("run", help="run a command in a namespace: run NS CMD [ARG...]",
                         description="NS is a host or router name (cone1, pub1, stun, cone, inet) "
                                     "or a namespace name (pzl-cone1).")
    run.add_argument("ns")
    run.add_argument("command", nargs=argparse.REMAINDER)
    inst = sub.add_parser("install", help="install the Debian packages the lab needs (apt-get, root)")
    inst.add_argument("--check", action="store_true", help="only say what is missing (exit 1 if any)")
    args = p.parse_args(argv)

    lab = Lab()
    try:
        if args.cmd == "install":
            if args.check:
                missing = missing_packages()
            else:
                if os.geteuid() != 0 and missing_packages():
                    print("install needs root", file=sys.stderr)
                    return 1
                missing = ensure_packages(quiet=False)
            if missing:
                print("missing Debian packages: " + " ".join(missing), file=sys.stderr)
                return 1
            print("NAT lab packages present: " + " ".join(debian_packages()))
            return 0
        if args.cmd == "up":
            took = lab.up(delay_ms=args.delay_ms)
            print(lab.describe())
            print(f"built in {took:.2f} s; `python -m interop.natlab down` removes it")
            return 0
        if args.cmd == "down":
            lab.down()
            return 0
        if args.cmd == "delay":
            if lab.core_ns not in lab.existing_namespaces():
                print("the lab is not up", file=sys.stderr)
                return 1
            lab.set_delay(args.delay_ms)
            return 0
        if args.cmd == "status":
            existing = lab.existing_namespaces()
            state = lab.read_state()
            lab.delay_ms = float(state.get("delay_ms", 0) or 0)
            print(lab.describe())
            print()
            if not existing:
                print("the lab is down (no pzl- namespaces)")
                return 1
            missing = sorted(set(lab.namespaces) - set(existing))
            print("namespaces: " + " ".join(existing))
            if missing:
                print("MISSING: " + " ".join(missing))
            for pid, ns in sorted(lab.lab_pids().items(), key=lambda kv: (kv[1], kv[0])):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                print(f"{ns:12} {pid:>7}  {cmd[:100]}")
            return 0 if not missing else 1
        if args.cmd == "run":
            if not args.command:
                p.error("run needs a command: run NS CMD [ARG...]")
            argv = lab.argv(args.ns, args.command)
            os.execvp(argv[0], argv)
    except (LabError, KeyError) as e:
        print(f"natlab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
