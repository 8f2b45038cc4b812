"""A crowd: N default-config nodes started at once in one process, and a pinger beside it.

``python -m interop.crowd run --nodes 100 [--seconds 120]`` starts a bootstrap node and N-1
nodes that know only it, every node with the shipped configuration (8 outbound slots, PEX,
NAT, AutoNAT, relay and hole punching on; on loopback: listen on 127.0.0.1, an in-memory peer
database, ``PROZCHAIN_DIAL_LOOPBACK_ONLY=1``). It prints one JSON line a second — the
process's CPU over that second (fraction of one core), the connection count, the fewest and
median peers per node — then ``{"settled": ...}`` once the network has settled: the connection
count within +-5 % for 10 s and the process CPU below ``--idle-cpu`` (fraction of a core) for
the last 2 s. After that it prints ``{"targets": [...]}`` (five nodes' addresses) and keeps
running, reporting whether it stays settled, until ``--seconds`` after the last node started
(or, with ``--until-stdin-eof``, until its standard input is closed).

``python -m interop.crowd ping ADDR... --seconds 20`` connects to each address from its own
host and pings each every 100 ms, then prints ``{"pings": n, "p50_ms", "p99_ms", "max_ms",
"failed"}``. Run the two pinned to different cores (``taskset -c 0`` / ``-c 1``) to see
whether an overloaded crowd still answers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections import deque
from contextlib import AsyncExitStack
from typing import Any

import trio

os.environ.setdefault("PROZCHAIN_DIAL_LOOPBACK_ONLY", "1")

__all__ = ["main"]

SETTLE_WINDOW = 10.0
SETTLE_TOLERANCE = 0.05


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def crowd_config(boot_addr: str | None) -> Any:
    from prozchain_discovery.config import (
        BootstrapConfig,
        DiscoveryConfig,
        PeerDbSettings,
        ServerConfig,
    )

    return DiscoveryConfig(
        network_id="prozchain-crowd",
        listen=("/ip4/127.0.0.1/tcp/0",),
        bootstrap=BootstrapConfig(bootstrap_nodes=(boot_addr,) if boot_addr else ()),
        peerdb=PeerDbSettings(path=":memory:"),
        server=ServerConfig(bootstrap_node=boot_addr is None),
    )


class SettleWatch:
    """Settled: connections within +-5 % of their value over the last 10 s, CPU below idle."""

    def __init__(self, idle_cpu: float) -> None:
        self.idle_cpu = idle_cpu
        self.samples: deque[tuple[float, int, float]] = deque()  # (t, conns, cpu fraction)

    def add(self, t: float, conns: int, cpu: float) -> None:
        self.samples.append((t, conns, cpu))
        while self.samples and self.samples[0][0] < t - SETTLE_WINDOW - 1:
            self.samples.popleft()

    def settled(self) -> bool:
        if not self.samples or self.samples[-1][0] - self.samples[0][0] < SETTLE_WINDOW:
            return False
        counts = [c for _, c, _ in self.samples]
        ref = counts[-1]
        if ref == 0 or any(abs(c - ref) > SETTLE_TOLERANCE * ref for c in counts):
            return False
        recent = [cpu for t, _, cpu in self.samples if t >= self.samples[-1][0] - 2.0]
        return statistics.fmean(recent) <= self.idle_cpu


class GcPauses:
    """The longest collector pause per generation (a full collection of a hundred nodes' heap
    stops the loop for as long as it takes)."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            g = info["generation"]
            self.count[g] += 1
            self.longest[g] = max(self.longest[g], time.perf_counter() - self._t)

    def report(self) -> dict[str, Any]:
        return {"gc_collections": self.count, "gc_longest_ms": [round(x * 1000, 1) for x in self.longest]}


class StallWatch(trio.abc.Instrument):
    """Task steps that held the loop for 50 ms or more, by task name (what a ping waits on)."""

    def __init__(self) -> None:
        self._t = 0.0
        self.stalls: dict[str, list[float]] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._t
        if took >= 0.05:
            self.stalls.setdefault(task.name.rsplit(".", 1)[-1][:60], []).append(took)

    def report(self) -> dict[str, Any]:
        top = sorted(self.stalls.items(), key=lambda kv: -max(kv[1]))[:8]
        return {"stalls": {k: [len(v), round(max(v) * 1000)] for k, v in top}}


def _stop_on_stdin_eof() -> threading.Event:
    """Set once standard input is closed: the caller (a test) says it is done with the crowd."""
    stop = threading.Event()

    def watch() -> None:
        for _ in sys.stdin:
            pass
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


async def run_crowd(nodes: int, seconds: float, idle_cpu: float, until_stdin_eof: bool = False) -> int:
    import multiaddr
    stop = _stop_on_stdin_eof() if until_stdin_eof else threading.Event()
    pauses = GcPauses()
    stalls = StallWatch()
    trio.lowlevel.add_instrument(stalls)

    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host
    from prozchain_discovery.service import DiscoveryService

    loop = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with AsyncExitStack() as stack:
        cpu0, t0 = _cpu(), trio.current_time()
        boot_host = make_host(listen_addrs=loop)
        await stack.enter_async_context(run_host(boot_host, loop))
        boot = await stack.enter_async_context(DiscoveryService(boot_host, crowd_config(None)).run())
        boot_addr = str(boot_host.get_addrs()[0])
        services = [boot]
        for _ in range(nodes - 1):
            h = make_host(listen_addrs=loop)
            await stack.enter_async_context(run_host(h, loop))
            services.append(await stack.enter_async_context(DiscoveryService(h, crowd_config(boot_addr)).run()))
        started = trio.current_time()
        # As the node does after start-up (cli/node.py): what lives as long as the process is
        # moved out of the collector's scans. A hundred nodes' heap in one process makes a full
        # collection stop the loop for up to a second otherwise (gc_longest_ms shows it).
        gc.collect()
        gc.freeze()
        _emit({"started": nodes, "start_s": round(started - t0, 2), "start_cpu_s": round(_cpu() - cpu0, 2)})
        watch = SettleWatch(idle_cpu)
        settled_at: float | None = None
        unsettled_after = 0
        after: list[int] = []  # connection counts once settled
        last_cpu, last_t = _cpu(), started
        cpu_at_settle = 0.0
        while trio.current_time() - started < seconds and not stop.is_set():
            await trio.sleep(1.0)
            now, cpu = trio.current_time(), _cpu()
            frac = (cpu - last_cpu) / max(1e-9, now - last_t)
            last_cpu, last_t = cpu, now
            counts = [s.connected_count() for s in services]
            conns = sum(counts)
            watch.add(now, conns, frac)
            _emit({"t": round(now - started, 1), "cpu": round(frac, 3), "conns": conns, "min": min(counts),
                   "median": statistics.median(counts), "joined": sum(1 for s in services[1:] if s.joined_at)})
            if settled_at is None and watch.settled():
                settled_at = now
                cpu_at_settle = cpu - cpu0
                gc.collect()  # the settled network's connections live on too
                gc.freeze()
                stalls.stalls.clear()
                _emit({"settled": round(now - started, 1), "cpu_seconds": round(cpu_at_settle, 1),
                       "conns": conns, "min": min(counts)})
                _emit({"targets": [str(s.host.get_addrs()[0]) for s in services[1:: max(1, nodes // 5)]][:5]})
            elif settled_at is not None:
                after.append(conns)
                if not watch.settled():
                    unsettled_after += 1
        dials = sum(s.metrics.get("dials", source=src) for s in services
                    for src in ("bootstrap", "pex", "static", "inbound", "mdns", "dns", "anchor"))
        _emit({"done": True, "settled": None if settled_at is None else round(settled_at - started, 1),
               "unsettled_seconds_after": unsettled_after,
               "conns_after": [min(after), max(after)] if after else None,
               "dials": dials,
               "dial_timeouts": sum(s.metrics.get("dial_timeouts") for s in services),
               "simultaneous_resolved": sum(s.metrics.get("simultaneous_connects_resolved") for s in services),
               "window_min": min((w.size for s in services if (w := getattr(s.dialer, "window", None))),
                                 default=None), **pauses.report(),
               **stalls.report()})
    return 0 if settled_at is not None else 1


async def run_pinger(addrs: list[str], seconds: float) -> int:
    import multiaddr
    from libp2p.host.ping import PingService
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host

    loop = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = make_host(listen_addrs=loop)
    rtts: list[float] = []
    failed = 0
    async with run_host(host, loop):
        ping = PingService(host)
        peers = []
        for a in addrs:
            info = info_from_p2p_addr(multiaddr.Multiaddr(a))
            with trio.move_on_after(10):
                await host.connect(info)
                peers.append(info.peer_id)
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            for pid in peers:
                t = time.perf_counter()
                with trio.move_on_after(2) as scope:
                    try:
                        await ping.ping(pid, 1)
                    except Exception:
                        failed += 1
                        continue
                if scope.cancelled_caught:
                    failed += 1
                    continue
                rtts.append((time.perf_counter() - t) * 1000)
            await trio.sleep(0.1)
    rtts.sort()
    within = sum(1 for r in rtts if r <= 100.0)
    _emit({"pings": len(rtts), "peers": len(peers), "failed": failed,
           "within_100ms": round(within / len(rtts), 4) if rtts else 0.0,
           "p50_ms": round(rtts[len(rtts) // 2], 2) if rtts else None,
           "p99_ms": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 2) if rtts else None,
           "max_ms": round(rtts[-1], 2) if rtts else None})
    return 0 if rtts and not failed else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start the crowd")
    r.add_argument("--nodes", type=int, default=100)
    r.add_argument("--seconds", type=float, default=120.0, help="run this long after the last node started")
    r.add_argument("--idle-cpu", type=float, default=0.35,
                   help="settled only below this fraction of one core (default 0.35)")
    r.add_argument("--until-stdin-eof", action="store_true",
                   help="stop early once standard input is closed (for a caller that is done)")
    g = sub.add_parser("ping", help="ping crowd nodes from another process")
    g.add_argument("addrs", nargs="+")
    g.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    if args.cmd == "run":
        return trio.run(run_crowd, args.nodes, args.seconds, args.idle_cpu, args.until_stdin_eof)
    return trio.run(run_pinger, args.addrs, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
