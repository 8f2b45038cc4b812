"""NAT classification wall time, ours against coturn's ``turnutils_natdiscovery``, in the NAT lab.

For each one-way delay (default 0 and 25 ms) and each client (pub1: no NAT; cone1: MASQUERADE;
sym1: MASQUERADE --random-fully), ``--trials`` times one after the other: our classifier
(``nat.stun_io.classify_nat`` against the lab's two-address coturn, in a fresh interpreter,
timed inside it from the call to the verdict) and then ``turnutils_natdiscovery -m -f`` against
the same server (timed from spawn to exit). Runs are sequential, so neither competes with the
other for the CPU. Prints a line per run and a markdown table of medians with the ratio; exits
non-zero if a verdict differs from turnutils'.

Needs root (network namespaces). Run: .venv/bin/python bench/bench_classify.py [--trials 3]
[--delays 0,25]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.lab import node_env  # noqa: E402

CLIENTS = ("pub1", "cone1", "sym1")

CLASSIFY = """
import json, sys, time, trio
from prozchain_discovery.nat.stun_io import classify_nat
async def main():
    t = time.perf_counter()
    r = await classify_nat([(sys.argv[1], 3478)])
    print(json.dumps({"nat_type": r.nat_type.value, "mapping": r.mapping.value,
                      "filtering": r.filtering.value, "rtt": r.rtt, "note": r.note,
                      "took": time.perf_counter() - t}))
trio.run(main)
"""


def turnutils_verdict(out: str) -> tuple[str, str]:
    """(mapping, filtering) as our enum values, from turnutils_natdiscovery's output."""
    mapping = re.findall(r"NAT with (.+?) Mapping!", out)
    filtering = re.findall(r"NAT with (.+?) Filtering!", out)
    if len(mapping) != 1 or len(filtering) != 1:
        raise SystemExit(f"cannot read turnutils_natdiscovery's verdict:\n{out}")
    return mapping[0].lower().replace(" ", "_"), filtering[0].lower().replace(" ", "_")


def ours(lab, host: str, stun: str) -> dict:
    out = lab.run(host, [sys.executable, "-c", CLASSIFY, stun], env=node_env(),
                  capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"classify_nat failed in {host}:\n{out.stderr}")
    return json.loads(out.stdout)


def theirs(lab, host: str, stun: str) -> tuple[tuple[str, str], float]:
    started = time.monotonic()
    out = lab.run(host, ["turnutils_natdiscovery", "-m", "-f", stun], capture_output=True,
                  text=True, timeout=60)
    return turnutils_verdict(out.stdout + out.stderr), time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms, comma-separated")
    args = ap.parse_args()
    from interop.natlab.lab import Lab

    lab = Lab()
    rows, disagreements = [], 0
    with lab.locked(timeout=1800):
        try:
            for delay in (float(d) for d in args.delays.split(",")):
                lab.up(delay_ms=delay)
                stun = lab.stun_ips[0]
                for host in CLIENTS:
                    mine: list[float] = []
                    other: list[float] = []
                    verdict = ""
                    for _ in range(args.trials):
                        r = ours(lab, host, stun)
                        (m, f), t = theirs(lab, host, stun)
                        same = r["filtering"] == f and (r["mapping"] == m or r["nat_type"] == "symmetric"
                                                        and r["mapping"] == "unknown")
                        disagreements += not same
                        mine.append(r["took"])
                        other.append(t)
                        verdict = f"{r['nat_type']} ({r['mapping']}, {r['filtering']})"
                        print(f"delay {delay:g} ms {host:5}: ours {verdict} in {r['took'] * 1000:.0f} ms "
                              f"(rtt {1000 * (r['rtt'] or 0):.1f} ms); turnutils ({m}, {f}) in {t:.2f} s"
                              f"{'' if same else '  <- DIFFERENT VERDICT'}", flush=True)
                    a, b = statistics.median(mine), statistics.median(other)
                    rows.append((delay, host, verdict, a, b))
        finally:
            lab.down()
    print("\n| one-way delay | host | verdict (both agree) | ours, median | turnutils_natdiscovery, median "
          "| ours / theirs |\n|---|---|---|---|---|---|")
    for delay, host, verdict, a, b in rows:
        print(f"| {delay:g} ms | {host} | {verdict} | {a * 1000:.0f} ms | {b:.2f} s | {a / b:.2f} |")
    if disagreements:
        raise SystemExit(f"{disagreements} run(s) gave a verdict different from turnutils_natdiscovery's")


if __name__ == "__main__":
    main()
