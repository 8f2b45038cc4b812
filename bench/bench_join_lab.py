"""Join time under real latency, from a public host and from behind a NAT (issue #9 benchmark).

In the NAT lab with ``--delay-ms`` one-way delay in the core: a network of ``--nodes`` nodes
split over two public hosts in different /16s (pub2, pub3), and a joiner that knows only the
bootstrap node, on a public host (pub1) or behind the cone router (cone1). Each joiner is a fresh
node; time to 8 connected peers. The same for py-libp2p's stock discovery (bootstrap + Kademlia
random walk, as bench/dht_baseline.py). Under latency the number of round trips decides, so every
figure is also given in RTTs (TCP connect time from the joiner's namespace to the bootstrap node,
measured in the same run), beside the floor: one dial + one bootstrap request + one more dial
(the seven further dials run in parallel).

Needs root (network namespaces). Run: .venv/bin/python bench/bench_join_lab.py [--delay-ms 25]
[--nodes 30] [--joins 7] [--no-dht]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.lab import Lab, node_env  # noqa: E402

JOINERS = ("pub1", "cone1")


def _script(lab: Lab, ns: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "lab_join.py"), *args, "--ip", lab.hosts[ns].ip]


def _start_network(lab: Lab, kind: str, nodes: int) -> tuple[list[subprocess.Popen], str]:
    procs = []
    first = lab.spawn("pub2", _script(lab, "pub2", "network", "--kind", kind, "--nodes", str(nodes // 2)),
                      env=node_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(first)
    line = first.stdout.readline()
    if not line:
        raise SystemExit(f"the {kind} network on pub2 did not start")
    boot = json.loads(line)["addr"]
    second = lab.spawn("pub3", _script(lab, "pub3", "network", "--kind", kind, "--nodes", str(nodes - nodes // 2),
                                       "--boot", boot), env=node_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(second)
    if not second.stdout.readline():
        raise SystemExit(f"the {kind} network on pub3 did not start")
    return procs, boot


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.stdin:
            p.stdin.close()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--joins", type=int, default=7)
    ap.add_argument("--no-dht", action="store_true")
    ap.add_argument("--stock-multistream", action="store_true",
                    help="our nodes without libp2p_fixes.pipeline_multistream (2 RTT per negotiation)")
    args = ap.parse_args()
    if args.stock_multistream:
        os.environ["BENCH_STOCK_MULTISTREAM"] = "1"
    lab = Lab()
    results: dict[tuple[str, str], dict] = {}
    with lab.locked(timeout=900):
        try:
            lab.up(delay_ms=args.delay_ms)
            for kind in ("ours",) if args.no_dht else ("ours", "dht"):
                procs, boot = _start_network(lab, kind, args.nodes)
                try:
                    for ns in JOINERS:
                        out = lab.run(ns, _script(lab, ns, "join", "--kind", kind, "--boot", boot,
                                                  "--joins", str(args.joins)),
                                      env=node_env(), capture_output=True, text=True, timeout=600)
                        if out.returncode != 0:
                            raise SystemExit(f"join in {ns} failed: {out.stderr[-1500:]}")
                        results[(kind, ns)] = json.loads(out.stdout.strip().splitlines()[-1])
                        print(f"{kind} from {ns}: {results[(kind, ns)]}", file=sys.stderr, flush=True)
                finally:
                    _stop(procs)
        finally:
            lab.down()
    print(f"NAT lab, {args.delay_ms:g} ms one-way delay in the core, {args.nodes}-node network on pub2+pub3, "
          f"multistream {'stock (2 RTT)' if args.stock_multistream else 'pipelined (1 RTT)'}, "
          f"{args.joins} fresh joiners per row, time to 8 connected peers")
    print()
    print("| joiner | RTT | floor (dial + request + dial) | ours, median (p90) | ours / floor | stock Kademlia, median | Kademlia / ours |")
    print("|---|---|---|---|---|---|---|")
    for ns in JOINERS:
        ours = results[("ours", ns)]
        rtt = ours["rtt"]
        floor = 2 * ours["dial"] + ours["request"]
        js = sorted(ours["joins"])
        med = statistics.median(js) if js else float("nan")
        p90 = js[min(len(js) - 1, int(0.9 * len(js)))] if js else float("nan")
        row = (f"| {ns}{' (behind cone NAT)' if ns.startswith('cone') else ' (public)'} | {rtt * 1000:.1f} ms "
               f"| {floor * 1000:.0f} ms = {floor / rtt:.1f} RTT | {med * 1000:.0f} ms = **{med / rtt:.1f} RTT** "
               f"({p90 * 1000:.0f} ms){' failed ' + str(ours['failed']) if ours['failed'] else ''} | {med / floor:.2f} ")
        dht = results.get(("dht", ns))
        if dht is not None and dht["joins"]:
            dmed = statistics.median(dht["joins"])
            row += f"| {dmed * 1000:.0f} ms = {dmed / rtt:.1f} RTT{' failed ' + str(dht['failed']) if dht['failed'] else ''} | {dmed / med:.2f}x |"
        else:
            row += "| - | - |"
        print(row)


if __name__ == "__main__":
    main()
