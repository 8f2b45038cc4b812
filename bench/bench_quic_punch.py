"""QUIC and TCP hole punching (DCUtR) in the NAT lab: QUIC only, TCP only, both together.

Builds the NAT lab under ``--prefix`` (root), puts a relay on pub3 and runs ``--trials`` trials per mode and one-way delay between cone1 (behind rcone) and cone3
(behind rcone2): fresh hosts on fresh ports, cone3 dials cone1 through the relay (reached over
TCP, or QUIC in the QUIC-only mode), cone1 drives DCUtR. Modes: ``quic`` (both clients listen on QUIC only), ``tcp`` (TCP only), ``both`` (TCP
and QUIC; the first direct connection wins). With ``--syn-drop`` the cone routers drop inbound
bare TCP SYNs (interop/natlab/lab.py ``tcp_syn_drop``): no TCP simultaneous open.

Per mode and delay: direct (between the two routers' WAN addresses), the transport of the
direct connection, first-attempt share, time from the relayed connection to the direct one.
Each trial starts once both clients know their WAN IP (``--cold``: at once).

Run (root): .venv/bin/python bench/bench_quic_punch.py --prefix pzq- [--trials 10]
            [--delays 0,25] [--modes quic,tcp,both] [--syn-drop] [--cold]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.lab import Lab  # noqa: E402
from interop.natlab.punch_trials import punch_pair, trial  # noqa: E402

MODES = {"quic": ("quic",), "tcp": ("tcp",), "both": ("tcp", "quic")}
A_NS, B_NS = "cone1", "cone3"


def kind(addr: str | None) -> str:
    if not addr:
        return "-"
    return "quic" if "/udp/" in addr else "tcp"


def summarize(lab: Lab, rows: list[dict[str, Any]], delay_ms: float = 0.0) -> dict[str, Any]:
    wan_a, wan_b = lab.hosts[A_NS].public_ip, lab.hosts[B_NS].public_ip
    ok = [r for r in rows if r["a"]["direct"] and f"/ip4/{wan_b}/" in r["a"]["direct"]
          and r["b"]["direct"] and f"/ip4/{wan_a}/" in r["b"]["direct"]]
    t = sorted(r["a"]["relayed_to_direct_s"] for r in ok if r["a"]["relayed_to_direct_s"] is not None)
    first = [r for r in ok if (r["a"]["result"] or {}).get("attempts") == 1]
    kinds: dict[str, int] = {}
    for r in ok:
        kinds[kind(r["a"]["direct"])] = kinds.get(kind(r["a"]["direct"]), 0) + 1
    return {
        "trials": len(rows), "direct": len(ok), "via": kinds,
        "first_attempt": len(first),
        "relayed_to_direct_s_median": round(statistics.median(t), 3) if t else None,
        "relayed_to_direct_s_p90": round(t[int(0.9 * (len(t) - 1))], 3) if t else None,
        "results": sorted({(r["a"]["result"] or {}).get("result", "none") for r in rows}),
        # in round trips of the direct path (2 x the one-way delay; the lab's own ~0.1 ms aside)
        "median_in_direct_rtts": round(statistics.median(t) / (2 * delay_ms / 1000), 1) if t and delay_ms else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default="pzq-", help="lab namespace prefix (never the suite's pzl-)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--delays", default="0,25", help="one-way core delays in ms, comma-separated")
    p.add_argument("--modes", default="quic,tcp,both")
    p.add_argument("--syn-drop", action="store_true", help="cone routers drop inbound bare TCP SYNs")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--json", action="store_true", help="also print every trial as JSON")
    p.add_argument("--cold", action="store_true",
                   help="start each trial at once, before identify told the clients their WAN IP "
                        "(the first attempt then has no public address to punch to)")
    args = p.parse_args()
    if args.prefix == "pzl-":
        p.error("pzl- is the test suite's lab; use your own prefix")
    lab = Lab(prefix=args.prefix, tcp_syn_drop=args.syn_drop)
    port = 4300
    out: dict[str, Any] = {}
    try:
        lab.up()
        for delay in [float(d) for d in args.delays.split(",")]:
            lab.set_delay(delay)
            for mode in args.modes.split(","):
                rows: list[dict[str, Any]] = []
                with punch_pair(lab, A_NS, B_NS, relay_transports=MODES[mode]) as pair:
                    for _ in range(args.trials):
                        port += 1
                        rows.append(trial(pair, port, timeout=args.timeout, migration=False,
                                          transports=MODES[mode], wait_wan=not args.cold))
                key = f"{mode} @ {delay:g} ms"
                out[key] = summarize(lab, rows, delay)
                print(f"{key:16} {json.dumps(out[key])}", flush=True)
                if args.json:
                    for r in rows:
                        print("  " + json.dumps(r), flush=True)
    finally:
        lab.down()
    print(json.dumps({"syn_drop": args.syn_drop, "cold": args.cold, "trials": args.trials, "results": out}))


if __name__ == "__main__":
    main()
