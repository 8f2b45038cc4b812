"""Join time: a node joining a 50-node loopback network through one bootstrap node.

The friendly baseline: the network is the demo's (the bootstrap node has no outbound slots,
PEX intervals shortened) and every node, joiners included, lives in this one process. The
shipped config, with the joiner in its own process, is measured by bench/bench_shipped.py.

Measures, in one run:
  * our cascade: start -> ``min_peers_for_startup`` (8) connected, over several fresh joiners;
  * one dial + Noise/Yamux handshake with our host factory (wall and CPU);
  * one bootstrap round trip on an open connection (the exchange, records not verified);
  * the floor: one dial + one bootstrap round trip + the CPU of 7 more handshakes on one core;
  * py-libp2p's stock mechanism on a network of the same size (bootstrap + Kademlia random
    walk, bench/dht_baseline.py), when available.

Every node of the network lives in this one process; in a real network each is its own
process with a small heap. A full (generation-2) garbage collection of 50 hosts' objects stalls
the loop ~350 ms, which lands in one join in ten, so once a network is built its objects are
moved out of the collector's way with ``gc.freeze()`` (``--no-gc-freeze`` to see the stalls).
The joiners' own objects are collected as usual. The DHT baseline gets the same treatment.

Run: .venv/bin/python bench/bench_join.py [--nodes 50] [--joins 7] [--no-dht] [--no-gc-freeze]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"  # before the service module reads it

from prozchain_discovery.demo import demo_config, start_network  # noqa: E402
from prozchain_discovery.host import make_host  # noqa: E402
from prozchain_discovery.libp2p_fixes import run_host  # noqa: E402
from prozchain_discovery.service import DiscoveryService  # noqa: E402

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def _realistic(cfg):
    """PEX at the defaults (60 s interval, first request 0.5 s after connecting), not the demo's."""
    from dataclasses import replace

    from prozchain_discovery.config import PexConfig

    d = PexConfig()
    return replace(cfg, pex=replace(cfg.pex, exchange_interval=d.exchange_interval,
                                    first_request_delay=d.first_request_delay))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure_dials(n: int = 20) -> tuple[float, float]:
    """Median wall and CPU ms of one dial + handshake between two fresh hosts."""
    walls, cpus = [], []
    async with AsyncExitStack() as stack:
        target = make_host(listen_addrs=LOOP)
        await stack.enter_async_context(run_host(target, LOOP))
        info = info_from_p2p_addr(target.get_addrs()[0])
        for _ in range(n):
            async with AsyncExitStack() as inner:
                h = make_host(listen_addrs=LOOP)
                await inner.enter_async_context(run_host(h, LOOP))
                w0, c0 = time.perf_counter(), time.process_time()
                await h.connect(info)
                walls.append((time.perf_counter() - w0) * 1000)
                cpus.append((time.process_time() - c0) * 1000)
    return statistics.median(walls), statistics.median(cpus)


async def measure_bootstrap_rtt(boot: DiscoveryService, stack: AsyncExitStack, n: int = 20) -> float:
    """Median ms of one bootstrap request/response on an already open connection.

    The exchange only (stream, request, answer, decode): the records' verification is the
    joiner's work and is counted in the join, not in the floor.
    """
    node = await stack.enter_async_context(
        DiscoveryService(await _host(stack), demo_config(None, 1, 50)).run()
    )
    await node.host.connect(info_from_p2p_addr(boot.host.get_addrs()[0]))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await node.cascade.bootstrap_request(boot.local_id)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def _host(stack: AsyncExitStack):
    h = make_host(listen_addrs=LOOP)
    await stack.enter_async_context(run_host(h, LOOP))
    return h


def settle_heap(freeze: bool) -> None:
    """Keep the scaffolding's heap (the other nodes) out of the joiners' garbage collections."""
    if freeze:
        gc.collect()
        gc.freeze()


async def measure_joins(nodes: int, joins: int, min_peers: int, freeze: bool = True) -> dict[str, float]:
    try:
        return await _measure_joins(nodes, joins, min_peers, freeze)
    finally:
        gc.unfreeze()


async def _measure_joins(nodes: int, joins: int, min_peers: int, freeze: bool) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        net = await start_network(stack, nodes - 1, min_peers, 50, config_hook=_realistic)
        with trio.fail_after(120):
            while any(s.joined_at is None for s in net.nodes):
                await trio.sleep(0.1)
        setup = time.perf_counter() - t0
        await trio.sleep(5.0)  # let identify and the first PEX rounds of the young network settle
        settle_heap(freeze)
        boot = net.services[0]
        boot_addr = str(boot.host.get_addrs()[0])
        times = []
        for _ in range(joins):
            async with AsyncExitStack() as inner:
                h = make_host(listen_addrs=LOOP)
                await inner.enter_async_context(run_host(h, LOOP))
                cfg = _realistic(demo_config(boot_addr, min_peers, 50))
                t = time.perf_counter()
                svc = await inner.enter_async_context(DiscoveryService(h, cfg).run())
                with trio.fail_after(30):
                    await svc.wait_for_peers(min_peers)
                times.append((time.perf_counter() - t) * 1000)
            await trio.sleep(0.3)
        rtt = await measure_bootstrap_rtt(boot, stack)
        return {
            "setup_s": setup,
            "join_median_ms": statistics.median(times),
            "join_p90_ms": pct(times, 0.9),
            "join_min_ms": min(times),
            "bootstrap_rtt_ms": rtt,
        }


async def main_async(args: argparse.Namespace) -> None:
    wall, cpu = await measure_dials()
    ours = await measure_joins(args.nodes, args.joins, 8, freeze=not args.no_gc_freeze)
    floor = wall + ours["bootstrap_rtt_ms"] + 7 * cpu
    print(f"network: {args.nodes} nodes on loopback (built in {ours['setup_s']:.1f} s), "
          f"joins measured: {args.joins}, network heap frozen: {not args.no_gc_freeze}")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| one dial + handshake (our host), wall | {wall:.1f} ms |")
    print(f"| one dial + handshake (our host), CPU | {cpu:.1f} ms |")
    print(f"| one bootstrap round trip (open connection) | {ours['bootstrap_rtt_ms']:.1f} ms |")
    print(f"| floor = dial + bootstrap RTT + 7 x handshake CPU | {floor:.1f} ms |")
    print(f"| **cascade: start -> 8 peers, median** | **{ours['join_median_ms']:.1f} ms** |")
    print(f"| cascade: p90 / best | {ours['join_p90_ms']:.1f} / {ours['join_min_ms']:.1f} ms |")
    print(f"| ratio to floor (median) | {ours['join_median_ms'] / floor:.2f} |")
    if not args.no_dht:
        try:
            from bench.dht_baseline import build_dht_network, measure_dht_join
        except Exception as exc:  # pragma: no cover - optional
            print(f"| stock DHT baseline | unavailable: {exc} |")
            return
        async with AsyncExitStack() as stack:
            hosts = await build_dht_network(stack, args.nodes)
            settle_heap(not args.no_gc_freeze)
            dht = []
            for _ in range(args.joins):
                dht.append(await measure_dht_join(hosts, 8, fast=True) * 1000)
        gc.unfreeze()
        med = statistics.median(dht)
        print(f"| stock py-libp2p bootstrap + Kademlia random walk -> 8 peers, median | {med:.1f} ms |")
        print(f"| stock DHT / our cascade (median) | {med / ours['join_median_ms']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--joins", type=int, default=7)
    parser.add_argument("--no-dht", action="store_true")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave the other nodes' objects in the collector (see above)")
    args = parser.parse_args()
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
