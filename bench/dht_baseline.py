"""py-libp2p's stock discovery as a baseline: bootstrap + Kademlia DHT random walk.

``build_dht_network`` starts ``n`` stock hosts (``new_host`` with one connection per peer, as
the issue's reference figure used) each running ``KadDHT`` in server mode with random walk,
all introduced through host 0 and with their routing tables refreshed. ``measure_dht_join``
starts one more such host that knows only host 0 and returns the seconds until it has
``min_peers`` connections.

Run alone: .venv/bin/python bench/dht_baseline.py [--nodes 50] [--joins 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"

from prozchain_discovery.libp2p_fixes import run_host  # noqa: E402

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


async def _dht_host(stack: AsyncExitStack):  # type: ignore[no-untyped-def]
    host = new_host(listen_addrs=LOOP, connection_config=ConnectionConfig(max_connections_per_peer=1))
    await stack.enter_async_context(run_host(host, LOOP))
    dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=True)
    await stack.enter_async_context(background_trio_service(dht))
    return host, dht


async def build_dht_network(stack: AsyncExitStack, n: int) -> list:  # type: ignore[type-arg]
    nodes = [await _dht_host(stack) for _ in range(n)]
    boot_info = info_from_p2p_addr(nodes[0][0].get_addrs()[0])
    for host, _ in nodes[1:]:
        await host.connect(boot_info)
    await trio.sleep(1.0)
    async with trio.open_nursery() as nursery:
        for _, dht in nodes:
            nursery.start_soon(dht.refresh_routing_table)
    return nodes


async def measure_dht_join(nodes: list, min_peers: int = 8, *, fast: bool = True) -> float:  # type: ignore[type-arg]
    boot_info = info_from_p2p_addr(nodes[0][0].get_addrs()[0])
    async with AsyncExitStack() as stack:
        t = time.perf_counter()
        host, dht = await _dht_host(stack)
        await host.connect(boot_info)
        with trio.move_on_after(30):
            while len(host.get_connected_peers()) < min_peers:
                await trio.sleep(0.002)
            return time.perf_counter() - t
    return float("inf")


async def main_async(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        t = time.perf_counter()
        nodes = await build_dht_network(stack, args.nodes)
        print(f"{args.nodes}-node DHT network built in {time.perf_counter() - t:.1f} s")
        times = [await measure_dht_join(nodes) * 1000 for _ in range(args.joins)]
    print(f"stock bootstrap + Kademlia random walk -> 8 peers: median {statistics.median(times):.1f} ms "
          f"(all: {', '.join(f'{x:.0f}' for x in times)})")


def main() -> None:
    logging.disable(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--joins", type=int, default=5)
    trio.run(main_async, ap.parse_args())


if __name__ == "__main__":
    main()
