"""A local network on loopback: one bootstrap node and N nodes joining it, in one process.

Bootstrap answers are kept small (``bootstrap_answer`` records) so peer exchange is what
spreads addresses. Shows progress while nodes join, then a summary table (time to reach
``min_peers``, peers per node, where peers came from) and writes ``overlay.svg`` and
``summary.json`` into the output directory.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import multiaddr
import trio

from .config import BootstrapConfig, DiscoveryConfig, PeerDbSettings, PexConfig, ServerConfig
from .host import make_host
from .libp2p_fixes import run_host
from .service import DiscoveryService

__all__ = ["run_demo", "start_network", "demo_config", "LocalNetwork"]

NETWORK_ID = "prozchain-demo"


def demo_config(
    bootstrap_addr: str | None,
    min_peers: int,
    bootstrap_answer: int,
    *,
    is_bootstrap: bool = False,
) -> DiscoveryConfig:
    return DiscoveryConfig(
        network_id=NETWORK_ID,
        listen=("/ip4/127.0.0.1/tcp/0",),
        bootstrap=BootstrapConfig(
            bootstrap_nodes=(bootstrap_addr,) if bootstrap_addr else (),
            min_peers_for_startup=min_peers,
            dial_timeout=5.0,
            check_interval=1.0,
        ),
        # Short intervals so the demo shows PEX at work within seconds; the defaults are 60 s.
        pex=PexConfig(min_peer_age=0.0, exchange_interval=10.0, first_request_delay=0.05),
        peerdb=PeerDbSettings(path=":memory:", target_outbound=min_peers, feeler_interval=30.0),
        server=ServerConfig(
            bootstrap_node=is_bootstrap,
            max_bootstrap_answer=bootstrap_answer,
            max_bootstrap_answer_as_bootstrap_node=bootstrap_answer,
        ),
    )


@dataclass
class LocalNetwork:
    services: list[DiscoveryService]  # [0] is the bootstrap node
    started: float

    @property
    def nodes(self) -> list[DiscoveryService]:
        return self.services[1:]


async def start_network(
    stack: AsyncExitStack,
    n: int,
    min_peers: int,
    bootstrap_answer: int,
    *,
    config_hook: Any = None,
) -> LocalNetwork:
    """Start a bootstrap node and ``n`` nodes inside ``stack``; returns once all are mounted."""
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    boot_host = make_host(listen_addrs=listen)
    await stack.enter_async_context(run_host(boot_host, listen))
    boot_cfg = demo_config(None, min_peers, bootstrap_answer, is_bootstrap=True)
    boot_cfg = replace(boot_cfg, peerdb=replace(boot_cfg.peerdb, target_outbound=0))
    boot = await stack.enter_async_context(DiscoveryService(boot_host, boot_cfg).run())
    boot_addr = str(boot_host.get_addrs()[0])
    services = [boot]
    started = trio.current_time()
    for _ in range(n):
        host = make_host(listen_addrs=listen)
        await stack.enter_async_context(run_host(host, listen))
        cfg = demo_config(boot_addr, min_peers, bootstrap_answer)
        if config_hook is not None:
            cfg = config_hook(cfg)
        svc = await stack.enter_async_context(DiscoveryService(host, cfg).run())
        services.append(svc)
    return LocalNetwork(services, started)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / max(1, total))
    return "#" * filled + "." * (width - filled)


async def _demo(nodes: int, min_peers: int, bootstrap_answer: int, out_dir: Path, timeout: float) -> int:
    print(f"starting a bootstrap node and {nodes} nodes on 127.0.0.1 "
          f"(min_peers={min_peers}, bootstrap answers capped at {bootstrap_answer} records)")
    t0 = time.perf_counter()
    async with AsyncExitStack() as stack:
        net = await start_network(stack, nodes, min_peers, bootstrap_answer)
        print(f"all {nodes + 1} hosts up in {time.perf_counter() - t0:.2f} s; waiting for nodes to join")
        deadline = trio.current_time() + timeout
        last_line = ""
        while True:
            joined = sum(1 for s in net.nodes if s.joined_at is not None)
            line = f"  {trio.current_time() - net.started:5.1f} s  [{_bar(joined, nodes)}] {joined}/{nodes} joined"
            if line != last_line:
                print(line, flush=True)
                last_line = line
            if joined == nodes or trio.current_time() > deadline:
                break
            await trio.sleep(0.25)
        # Let PEX settle a moment so the picture shows the overlay, not just the join.
        await trio.sleep(0.5)
        summary = _summarise(net)
    _print_summary(summary, min_peers)
    await trio.to_thread.run_sync(_write_outputs, out_dir, summary)
    print(f"\nwrote {out_dir / 'overlay.svg'} (overlay graph) and {out_dir / 'summary.json'}")
    failed = [n for n in summary["nodes"] if n["join_s"] is None and n["role"] == "node"]
    if failed:
        print(f"{len(failed)} node(s) did not reach {min_peers} peers within {timeout:.0f} s", file=sys.stderr)
        return 1
    return 0


def _summarise(net: LocalNetwork) -> dict[str, Any]:
    index = {s.local_id: i for i, s in enumerate(net.services)}
    rows = []
    edges = set()
    for i, svc in enumerate(net.services):
        sources: dict[str, int] = {}
        for cp in svc.connected.values():
            sources[cp.source.value] = sources.get(cp.source.value, 0) + 1
            j = index.get(cp.peer_id)
            if j is not None:
                edges.add((min(i, j), max(i, j)))
        rows.append({
            "index": i,
            "role": "bootstrap" if i == 0 else "node",
            "peer_id": str(svc.local_id),
            "join_s": None if svc.joined_at is None else round(svc.joined_at - svc.started_at, 3),
            "peers": len(svc.connected),
            "sources": sources,
            "book": svc.db.stats().get("total", len(svc.db)),
            "pex_accepted": svc.metrics.get("records_accepted", via="pex"),
        })
    joins = sorted(r["join_s"] for r in rows[1:] if r["join_s"] is not None)
    return {
        "nodes": rows,
        "edges": sorted(edges),
        "join_median_s": joins[len(joins) // 2] if joins else None,
        "join_max_s": joins[-1] if joins else None,
    }


def _write_outputs(out_dir: Path, summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "overlay.svg").write_text(_svg(summary))


def _print_summary(summary: dict[str, Any], min_peers: int) -> None:
    print(f"\n{'node':>4}  {'peer id':<16} {'joined(s)':>9} {'peers':>5} {'book':>5}  sources")
    for r in summary["nodes"]:
        join = "-" if r["join_s"] is None else f"{r['join_s']:.3f}"
        name = "boot" if r["role"] == "bootstrap" else str(r["index"])
        src = ", ".join(f"{k}={v}" for k, v in sorted(r["sources"].items()))
        print(f"{name:>4}  {r['peer_id'][-16:]:<16} {join:>9} {r['peers']:>5} {r['book']:>5}  {src}")
    total: dict[str, int] = {}
    for r in summary["nodes"][1:]:
        for k, v in r["sources"].items():
            total[k] = total.get(k, 0) + v
    print(f"\nnodes reaching {min_peers} peers: median {summary['join_median_s']} s, "
          f"slowest {summary['join_max_s']} s; connections by source: "
          + ", ".join(f"{k}={v}" for k, v in sorted(total.items())))


def _svg(summary: dict[str, Any], size: int = 640) -> str:
    nodes = summary["nodes"]
    n = len(nodes)
    cx = cy = size / 2
    radius = size / 2 - 40
    pos = {}
    for r in nodes:
        i = r["index"]
        if i == 0:
            pos[i] = (cx, cy)
        else:
            angle = 2 * math.pi * (i - 1) / max(1, n - 1)
            pos[i] = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 30}" '
             f'font-family="sans-serif" font-size="10">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="{size + 20}">prozchain-discovery demo: {n - 1} nodes + bootstrap '
             f'(centre); median join {summary["join_median_s"]} s</text>']
    for a, b in summary["edges"]:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        colour = "#d62728" if 0 in (a, b) else "#1f77b4"
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     f'stroke="{colour}" stroke-opacity="0.35"/>')
    for r in nodes:
        x, y = pos[r["index"]]
        fill = "#d62728" if r["role"] == "bootstrap" else ("#2ca02c" if r["join_s"] is not None else "#999")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{fill}"/>')
        label = "boot" if r["role"] == "bootstrap" else str(r["index"])
        parts.append(f'<text x="{x + 9:.1f}" y="{y + 3:.1f}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def run_demo(nodes: int, min_peers: int, bootstrap_answer: int, out_dir: Path, timeout: float) -> int:
    import os

    os.environ.setdefault("PROZCHAIN_DIAL_LOOPBACK_ONLY", "1")  # the demo never leaves this machine
    return trio.run(_demo, nodes, min_peers, bootstrap_answer, out_dir, timeout)
