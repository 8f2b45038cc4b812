"""Mixed py + js mesh (issue #11): join time, dial latency and PEX round trip across stacks.

Runs ``interop.mesh`` (default 20 py + 10 js node processes from one py bootstrap node, every
node wanting ``min_peers`` = 6) and measures, once every node has joined:

* time until every node has min_peers (wall, from the first node spawned; and each node's own
  start -> min_peers, median and max per implementation);
* dial latency (TCP + Noise + Yamux, until the connection is usable) from a fresh py probe host
  (in this process, py-libp2p 0.8.1 with the project's host factory) to each js and each py node,
  and from a fresh js probe process (``node interop/js/node.mjs``) to each py and each js node;
* one PEX round trip (request -> response, on the open connection, records not verified) from
  each probe to each node it dialed.

Every target gets ``ROUNDS`` (3) dials from each probe, hanging up in between, and one PEX
request (a second one within the responder's exchange interval would be answered RATE_LIMITED,
a smaller answer). Figures are
medians, with p90 and the sample count. A loaded 2-core box inflates every figure alike; the
point is the py / js comparison from the same run.

Run: .venv/bin/python bench/bench_mesh.py [--py 20] [--js 10] [--min-peers 6] [--append]
(``--append`` adds a section to bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from interop.mesh import NETWORK_ID, Mesh, MeshOptions, run_mesh  # noqa: E402
from interop.procs import JsNode, js_node  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _stats(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0, "median": None, "p90": None}
    s = sorted(xs)
    return {"n": len(s), "median": round(statistics.median(s), 2), "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 2)}


async def _py_probe(targets: list[tuple[str, str, str]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Dial each (impl, peer id, addr) from a fresh py host ``rounds`` times (hanging up in
    between); time each dial, and one PEX exchange per target (a second one would be rate limited)."""
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host
    from prozchain_discovery.net import exchange
    from prozchain_discovery.wire.messages import PEX_PROTOCOL, PexRequest, PexResponse

    out: dict[str, dict[str, list[float]]] = {"dial": {"py": [], "js": []}, "pex": {"py": [], "js": []},
                                              "failed": {"py": [], "js": []}}
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = make_host(listen_addrs=listen)
    async with run_host(host, listen):
        for rnd, (impl, _pid, addr) in [(r, t) for r in range(rounds) for t in targets]:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            if info.peer_id in host.get_connected_peers():  # measure a real dial
                await host.disconnect(info.peer_id)
                await trio.sleep(0.05)
            t0 = time.perf_counter()
            try:
                with trio.fail_after(10):
                    await host.connect(info)
            except Exception:
                out["failed"][impl].append(1)
                continue
            out["dial"][impl].append((time.perf_counter() - t0) * 1000)
            if rnd > 0:
                continue
            await trio.sleep(0.2)  # let identify finish: it shares the connection with the request
            t1 = time.perf_counter()
            try:
                data, _ = await exchange.request(host, info.peer_id, PEX_PROTOCOL, PexRequest(NETWORK_ID, 50).encode(), 10)
                PexResponse.decode(data)
            except Exception:
                out["failed"][impl].append(1)
                continue
            out["pex"][impl].append((time.perf_counter() - t1) * 1000)
    return out


def _js_probe(mesh: Mesh, targets: list[tuple[str, str, str]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """The same from a fresh js process, through its stdin commands (it times itself)."""
    probe: JsNode = js_node("probe-js", mesh.root / "probe-js", network_id=NETWORK_ID, min_peers=1000, answer=4,
                            extra=["--no-autonat", "--passive"])
    probe.start()
    mesh.extra.append(probe)
    probe.wait_ready(60)
    out: dict[str, dict[str, list[float]]] = {"dial": {"py": [], "js": []}, "pex": {"py": [], "js": []},
                                              "failed": {"py": [], "js": []}}
    for rnd, (impl, pid, addr) in [(r, t) for r in range(rounds) for t in targets]:
        res = probe.request({"cmd": "dial", "addr": addr, "fresh": True}, 15)
        ev = [e for e in probe.find("dial", why="command") if e.get("peer") == pid]
        if not res or not res.get("ok") or not ev:
            out["failed"][impl].append(1)
            continue
        out["dial"][impl].append(float(ev[-1]["ms"]))
        if rnd > 0:
            continue
        time.sleep(0.2)
        pex = probe.request({"cmd": "pex", "peer": pid}, 15)
        if not pex or not pex.get("ok") or pex.get("status") != "ok":
            out["failed"][impl].append(1)
            continue
        out["pex"][impl].append(float(pex["ms"]))
    return out


ROUNDS = 3


def measure(mesh: Mesh) -> dict[str, Any]:
    everyone = [n for n in mesh.nodes if n.addr and n.peer_id]
    targets = [(n.impl, str(n.peer_id), str(n.addr)) for n in everyone]
    all_joined_s = mesh.all_joined_s
    mesh.say(f"measuring from a py probe and a js probe to {len(targets)} nodes")
    py = trio.run(_py_probe, targets, ROUNDS)
    js = _js_probe(mesh, targets, ROUNDS)
    return {
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "all_joined_wall_s": None if all_joined_s is None else round(all_joined_s, 2),
        "py": {k: {impl: _stats(v) if k != "failed" else len(v) for impl, v in d.items()} for k, d in py.items()},
        "js": {k: {impl: _stats(v) if k != "failed" else len(v) for impl, v in d.items()} for k, d in js.items()},
    }


def _fmt(s: dict[str, Any]) -> str:
    return "-" if s["median"] is None else f"{s['median']:.1f} / {s['p90']:.1f} (n={s['n']})"


def report(summary: dict[str, Any], args: argparse.Namespace, wall_s: float) -> str:
    per = summary["per_impl"]
    m = summary["extra"]
    cmd = f".venv/bin/python bench/bench_mesh.py --py {args.py} --js {args.js} --min-peers {args.min_peers}"
    lines = [
        "## Mixed py + js mesh (#11) — `bench/bench_mesh.py`",
        "",
        f"`{cmd}` ({os.cpu_count()} cores, shared; node {_node_version()}, js-libp2p 2.10.0; py-libp2p 0.8.1). "
        f"{args.py} py + {args.js} js node processes on 127.0.0.1 from one py bootstrap node, min_peers "
        f"{args.min_peers}, bootstrap answers capped at 4 records (PEX does the spreading), PEX interval 10 s.",
        "",
        "| impl | nodes | reached min_peers | own start → min_peers: median / max | peers learned via PEX from the other impl (nodes) | records rejected |",
        "|---|---|---|---|---|---|",
    ]
    for impl, p in per.items():
        lines.append(f"| {impl} | {p['nodes']} | {p['joined']} | {p['join_median_s']} s / {p['join_max_s']} s | "
                     f"{p['pex_from_other_total']} ({p['nodes_learning_from_other']}/{p['nodes']}) | {p['rejected']} |")
    lines += [
        "",
        f"Every node at min_peers {m.get('all_joined_wall_s')} s after the first node was spawned "
        f"(process start-up included: 30 interpreters importing py-libp2p on 2 cores dominate it; "
        f"whole run {wall_s:.0f} s).",
        "",
        "Dial (TCP + Noise + Yamux) and one PEX round trip on the open connection, ms, median / p90 (samples):",
        "",
        "| from → to | dial | PEX round trip |",
        "|---|---|---|",
    ]
    for src in ("py", "js"):
        for dst in ("py", "js"):
            lines.append(f"| {src} → {dst} | {_fmt(m[src]['dial'][dst])} | {_fmt(m[src]['pex'][dst])} |")
    fails = {f"{s}→{d}": m[s]["failed"][d] for s in ("py", "js") for d in ("py", "js") if m[s]["failed"][d]}
    load = "/".join(str(x) for x in m.get("load_average", []))
    lines += ["", f"Failed probes: {fails or 'none'}. Load average (1/5/15 min) when the probes started: {load} "
              f"on {os.cpu_count()} cores — the box was shared with other sessions' tests, so the p90 "
              "column is mostly scheduling noise; compare the medians, which come from the same run.", ""]
    return "\n".join(lines)


def _node_version() -> str:
    import subprocess

    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py", type=int, default=20)
    parser.add_argument("--js", type=int, default=10)
    parser.add_argument("--min-peers", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--append", action="store_true", help="append the section to bench/RESULTS.md")
    args = parser.parse_args()
    t0 = time.monotonic()
    code, summary = run_mesh(
        MeshOptions(py=args.py, js=args.js, min_peers=args.min_peers, cross_checks=False, timeout=args.timeout),
        during=measure,
    )
    text = report(summary, args, time.monotonic() - t0)
    print("\n" + text)
    if args.append and code == 0:
        with RESULTS.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {RESULTS}")
    return code


if __name__ == "__main__":
    sys.exit(main())
