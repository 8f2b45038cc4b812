"""Hole punching (DCUtR over circuit relay v2) in the NAT lab, per pair of NAT types.

Builds the NAT lab (root; it waits for the lab's lock) with a one-way delay in the core, puts a
relay on pub3 and runs ``--trials`` trials per pair: fresh hosts on fresh listen ports on both
clients, the second dials the first through the relay, the first (which accepted the relayed
connection) drives DCUtR. Per pair: success rate (a direct connection between the two routers'
WAN addresses), attempts used, the share of successes on the first attempt, and the time from
the relayed connection opening to the direct one — in ms, in relayed RTTs (DCUtR's own
CONNECT→CONNECT measurement) and in direct RTTs (2 × the core delay + the measured base).

Run (root): .venv/bin/python bench/bench_holepunch.py [--trials 20] [--delay-ms 25]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.lab import Lab  # noqa: E402
from interop.natlab.punch_trials import punch_pair, trial  # noqa: E402

PAIRS = {
    "cone-cone": ("cone1", "cone3"),
    "cone-sym": ("cone1", "sym1"),
    "sym-cone": ("sym1", "cone3"),
    "sym-sym": ("sym1", "sym2"),
}


def ping_rtt_ms(lab: Lab, src: str, dst_ip: str) -> float:
    out = lab.run(src, ["ping", "-c", "5", "-i", "0.2", "-q", dst_ip], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return float("nan")


def summarize(name: str, lab: Lab, a_ns: str, b_ns: str, rows: list[dict[str, Any]], nats: tuple[str, str],
              direct_rtt_ms: float) -> dict[str, Any]:
    wan_a = lab.hosts[a_ns].public_ip
    wan_b = lab.hosts[b_ns].public_ip
    ok = [r for r in rows if r["a"]["direct"] and f"/ip4/{wan_b}/" in r["a"]["direct"]
          and r["b"]["direct"] and f"/ip4/{wan_a}/" in r["b"]["direct"]]
    attempts = [r["a"]["result"]["attempts"] for r in rows
                if r["a"]["result"] and "attempts" in r["a"]["result"]]
    first = [r for r in ok if r["a"]["result"]["attempts"] == 1]
    t = [r["a"]["relayed_to_direct_s"] for r in ok if r["a"]["relayed_to_direct_s"] is not None]
    rtt_relay = [r["a"]["result"]["rtts_ms"][0] / 1000 for r in ok if r["a"]["result"]["rtts_ms"]]
    in_relay_rtts = [x / y for x, y in zip(t, rtt_relay, strict=False) if y > 0]
    verdicts = sorted({(r["a"]["result"] or {}).get("result", "none") for r in rows})
    driven = [r["a"].get("attempts_driven", 0) for r in rows]
    if not attempts:  # HolepunchNotSupported: the CONNECT rounds the driver ran
        attempts = driven
    verdict_t = [r["a"]["verdict_after_s"] for r in rows if r["a"].get("verdict_after_s") is not None]
    return {
        "pair": name, "nats": f"{nats[0]} ↔ {nats[1]}", "trials": len(rows),
        "success": len(ok), "first_attempt": len(first),
        "attempts_median": statistics.median(attempts) if attempts else None,
        "attempts_max": max(attempts) if attempts else None,
        "t_median_ms": round(statistics.median(t) * 1000, 1) if t else None,
        "t_p90_ms": round(sorted(t)[int(0.9 * (len(t) - 1))] * 1000, 1) if t else None,
        "relay_rtt_ms": round(statistics.median(rtt_relay) * 1000, 1) if rtt_relay else None,
        "in_relay_rtts": round(statistics.median(in_relay_rtts), 2) if in_relay_rtts else None,
        "in_direct_rtts": round(statistics.median(t) * 1000 / direct_rtt_ms, 2) if t else None,
        "direct_rtt_ms": round(direct_rtt_ms, 1), "verdicts": verdicts,
        "relay_closed": sum(1 for r in ok if r["a"].get("relayed_conns") == 0),
        "verdict_median_ms": round(statistics.median(verdict_t) * 1000, 1) if verdict_t else None,
        "still_relayed": sum(1 for r in rows if r["a"]["direct"] is None and r["a"]["relayed_conns"] >= 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--delay-ms", type=float, default=25.0)
    p.add_argument("--pairs", default=",".join(PAIRS))
    p.add_argument("--json", help="write every trial here")
    args = p.parse_args()
    lab = Lab()
    summary, raw = [], {}
    started = time.monotonic()
    with lab.locked(timeout=1800):
        lab.up(delay_ms=args.delay_ms)
        try:
            for name in args.pairs.split(","):
                a_ns, b_ns = PAIRS[name]
                # the punched path crosses the core once, as a client's path to a public host does
                direct_rtt = ping_rtt_ms(lab, a_ns, lab.hosts["pub3"].ip)
                with punch_pair(lab, a_ns, b_ns) as pair:
                    for i in range(args.trials):
                        trial(pair, 4300 + i, timeout=20.0)
                    raw[name] = pair.results
                    summary.append(summarize(name, lab, a_ns, b_ns, pair.results, (pair.a_nat, pair.b_nat),
                                             direct_rtt))
                print(json.dumps(summary[-1]), flush=True)
        finally:
            lab.set_delay(0)
            lab.down()
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    print(f"\n{time.monotonic() - started:.0f} s\n")
    print("| pair (driver ↔ dialer) | NAT types | trials | direct | on 1st attempt | attempts (median / max) "
          "| relayed → direct, median (p90) | in relayed RTTs | in direct RTTs | relay leg closed | API verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        t = "—" if s["t_median_ms"] is None else f"{s['t_median_ms']:.0f} ms ({s['t_p90_ms']:.0f})"
        if s["verdict_median_ms"] is not None:
            t = f"verdict after {s['verdict_median_ms']:.0f} ms; {s['still_relayed']}/{s['trials']} still relayed"
        rate = f"{s['success']}/{s['trials']} ({100 * s['success'] / max(1, s['trials']):.0f}%)"
        first = "—" if not s["success"] else f"{s['first_attempt']}/{s['success']}"
        att = "—" if s["attempts_median"] is None else f"{s['attempts_median']:g} / {s['attempts_max']}"
        rr = "—" if s["in_relay_rtts"] is None else f"{s['in_relay_rtts']:.1f} (RTT {s['relay_rtt_ms']:.0f} ms)"
        dr = "—" if s["in_direct_rtts"] is None else f"{s['in_direct_rtts']:.1f} (RTT {s['direct_rtt_ms']:.0f} ms)"
        closed = "—" if not s["success"] else f"{s['relay_closed']}/{s['success']}"
        print(f"| {s['pair']} | {s['nats']} | {s['trials']} | {rate} | {first} | {att} | {t} | {rr} | {dr} "
              f"| {closed} | {', '.join(s['verdicts'])} |")


if __name__ == "__main__":
    main()
