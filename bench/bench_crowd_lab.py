"""The crowd in the NAT lab (issue #16): hole punching among several NATed nodes started at once.

Runs ``interop/natlab/crowd.py`` at each delay (default 0 and 25 ms one way, 50 trials each):
two public nodes (relay ``auto``, STUN served by the nodes), cone1, cone3, sym1, sym2 behind four
routers, fresh identities per trial, default config apart from ``min_peer_age = 0``. Prints the
per-kind table of each delay, then the figures next to the goals, each with the command that
made it.

Needs root (network namespaces). Run:
    .venv/bin/python bench/bench_crowd_lab.py [--trials 50] [--delays 0,25] [--prefix pzb-]
        [--json-dir DIR] [--keep-logs DIR] [--timeout 60] [--cone2]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.crowd import TrialConfig, format_summary, run_trials, summarize  # noqa: E402
from interop.natlab.lab import Lab  # noqa: E402

GOALS = {
    "direct": 99.0,  # cone<->cone direct, % of pairs
    "first": 95.0,  # cone<->cone punched on the first attempt, % of pairs
}


def _pct(n: int, d: int) -> float | None:
    return 100.0 * n / d if d else None


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} %"


def _ok(good: bool) -> str:
    return "meets" if good else "**misses**"


def goals_table(rows: list[tuple[float, dict[str, Any], str]]) -> str:
    """One line per figure: goal, then per delay the figure, whether it meets the goal, the command."""
    out = ["| figure | goal | " + " | ".join(f"{d:g} ms" for d, _s, _c in rows) + " |",
           "|---|---|" + "---|" * len(rows)]

    def line(name: str, goal: str, cell) -> None:
        out.append(f"| {name} | {goal} | " + " | ".join(cell(s) for _d, s, _c in rows) + " |")

    def cc(s: dict[str, Any]) -> dict[str, Any]:
        k: dict[str, Any] = s["kinds"].get("cone-cone", {})
        return k

    def direct(s: dict[str, Any]) -> str:
        k = cc(s)
        p = _pct(k.get("direct", 0), k.get("pairs", 0))
        return f"{_fmt_pct(p)} ({k.get('direct', 0)}/{k.get('pairs', 0)}) {_ok(p is not None and p >= GOALS['direct'])}"

    def first(s: dict[str, Any]) -> str:
        k = cc(s)
        p = _pct(k.get("first_attempt", 0), k.get("pairs", 0))
        return (f"{_fmt_pct(p)} ({k.get('first_attempt', 0)}/{k.get('pairs', 0)}) "
                f"{_ok(p is not None and p >= GOALS['first'])}")

    def punched(s: dict[str, Any]) -> str:
        n = sum(s["kinds"].get(k, {}).get("punch_attempts_once_classified", 0) for k in ("cone-sym", "sym-sym"))
        pairs = sum(s["kinds"].get(k, {}).get("pairs_punched_once_classified", 0) for k in ("cone-sym", "sym-sym"))
        total = sum(s["kinds"].get(k, {}).get("pairs", 0) for k in ("cone-sym", "sym-sym"))
        return f"{n} attempts in {pairs} of {total} pairs {_ok(n == 0)}"

    def classified(s: dict[str, Any]) -> str:
        parts = [s["kinds"][k]["sym_sides_classified"] for k in ("cone-sym", "sym-sym") if k in s["kinds"]]
        num = sum(int(p.split("/")[0]) for p in parts)
        den = sum(int(p.split("/")[1]) for p in parts)
        return f"{num}/{den} {_ok(num == den)}"

    def lost(s: dict[str, Any]) -> str:
        return f"{s['relay_lost']} (in {s['trials_with_relay_lost']} trials) {_ok(s['relay_lost'] == 0)}"

    def errors(s: dict[str, Any]) -> str:
        return (f"median {s['errors_per_trial_median']:g}, max {s['errors_per_trial_max']}, "
                f"total {s['errors_total']} {_ok(s['errors_total'] == 0)}")

    def ttd(s: dict[str, Any]) -> str:
        k = cc(s)
        if k.get("ttd_median_s") is None:
            return "-"
        text = f"{k['ttd_median_s']:.2f} / {k['ttd_p90_s']:.2f} s"
        if s.get("rtt_ms", 0) >= 1:  # at 0 ms the RTT is ~0.1 ms: RTTs say nothing
            text += f" = {k['ttd_median_rtt']:.1f} / {k['ttd_p90_rtt']:.1f} RTT"
        return text

    def s2d(s: dict[str, Any]) -> str:
        k = cc(s)
        if k.get("start_to_direct_median_s") is None:
            return "-"
        return f"{k['start_to_direct_median_s']:.2f} / {k['start_to_direct_p90_s']:.2f} s"

    line("cone<->cone direct", ">= 99 %", direct)
    line("cone<->cone first attempt", ">= 95 %", first)
    line("symmetric pairs punched once classified", "0", punched)
    line("symmetric sides classified symmetric", "all", classified)
    line("relay connections lost", "0", lost)
    line("ERROR lines per trial (all nodes)", "0", errors)
    line("cone<->cone relayed -> direct, median / p90", "(go-libp2p: 97.6 % first try)", ttd)
    line("cone<->cone process start -> direct, median / p90", "-", s2d)
    out.append("")
    for d, s, cmd in rows:
        out.append(f"{d:g} ms: `{cmd}` ({s['trials']} trials, {s['trials_timed_out']} hit the timeout)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms, comma-separated")
    ap.add_argument("--prefix", default="pzb-", help="the lab's namespace prefix (not the suite's pzl-)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--json-dir", type=Path, help="write crowd-<delay>ms.jsonl (one line per trial) here")
    ap.add_argument("--keep-logs", type=Path, help="keep every node's log under DIR/<delay>ms/trial-NNN/")
    ap.add_argument("--cone2", action="store_true", help="add cone2 (same NAT as cone1)")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="stop starting trials at this Unix time (0: none); each delay gets its share")
    args = ap.parse_args()
    delays = [float(x) for x in args.delays.split(",") if x.strip()]
    lab = Lab(prefix=args.prefix)
    rows: list[tuple[float, dict[str, Any], str]] = []
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
    with lab.locked(timeout=1800):
        try:
            for i, delay in enumerate(delays):
                keep = args.keep_logs / f"{delay:g}ms" if args.keep_logs else None
                cfg = TrialConfig(delay_ms=delay, timeout=args.timeout, cone2=args.cone2, keep_logs=keep)
                json_out = args.json_dir / f"crowd-{delay:g}ms.jsonl" if args.json_dir else None
                if json_out is not None and json_out.exists():
                    json_out.unlink()
                stop_at = None
                if args.deadline:
                    share = (args.deadline - time.time()) / (len(delays) - i)
                    stop_at = time.time() + share
                results = run_trials(lab, args.trials, cfg, json_out=json_out,
                                     progress=lambda m: print(m, file=sys.stderr, flush=True), stop_at=stop_at)
                s = summarize(results)
                rtt = results[0]["rtt_ms"] if results else None
                s["rtt_ms"] = rtt or 0.0
                print(format_summary(s, delay, rtt), flush=True)
                print(flush=True)
                cmd = ["python", "-m", "interop.natlab.crowd", "--trials", str(len(results)), "--delay-ms",
                       f"{delay:g}", "--prefix", args.prefix, "--timeout", f"{args.timeout:g}"]
                if args.cone2:
                    cmd.append("--cone2")
                rows.append((delay, s, shlex.join(cmd)))
        finally:
            lab.down()
    bench_cmd = shlex.join(["python", "bench/bench_crowd_lab.py", *sys.argv[1:]])
    print(f"Goals (issue #16), from `{bench_cmd}`:")
    print()
    print(goals_table(rows))


if __name__ == "__main__":
    main()
