"""The processes of bench/bench_join_lab.py, run inside NAT lab namespaces.

``network``: start ``--nodes`` nodes (ours or stock Kademlia) listening on ``--ip``, joined
through ``--boot`` (or being the bootstrap node when none); print one JSON line with the first
node's address once all have joined, then run until stdin closes.

``join``: from this namespace, measure ``--joins`` fresh joiners (ours or stock Kademlia) that
know only ``--boot``, each to 8 connected peers; plus the pieces of the floor: TCP connect (one
RTT), dial + Noise/Yamux handshake, one bootstrap request on an open connection. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prozchain_discovery.config import PexConfig  # noqa: E402
from prozchain_discovery.demo import demo_config  # noqa: E402
from prozchain_discovery.host import make_host  # noqa: E402
from prozchain_discovery.libp2p_fixes import run_host  # noqa: E402
from prozchain_discovery.service import DiscoveryService  # noqa: E402

MIN_PEERS = 8
STOCK = os.environ.get("BENCH_STOCK_MULTISTREAM") == "1"  # undo libp2p_fixes.pipeline_multistream


def _make_host(listen):  # type: ignore[no-untyped-def]
    host = make_host(listen_addrs=listen)
    if STOCK:
        from libp2p.protocol_muxer.multiselect_client import MultiselectClient

        upgrader = host.get_network().upgrader
        for selector in (upgrader.security_multistream._selector, upgrader.muxer_multistream._selector):
            selector.multiselect_client = MultiselectClient()
        host.multiselect_client = MultiselectClient()
    return host


def _config(ip: str, boot: str | None, *, is_bootstrap: bool = False):  # type: ignore[no-untyped-def]
    cfg = demo_config(boot, MIN_PEERS, 50, is_bootstrap=is_bootstrap)
    d = PexConfig()  # PEX at its defaults, as bench_join.py's "realistic" network
    return replace(cfg, listen=(f"/ip4/{ip}/tcp/0",),
                   pex=replace(cfg.pex, exchange_interval=d.exchange_interval,
                               first_request_delay=d.first_request_delay))


async def _our_node(stack: AsyncExitStack, ip: str, boot: str | None, is_bootstrap: bool = False) -> DiscoveryService:
    listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
    host = _make_host(listen)
    await stack.enter_async_context(run_host(host, listen))
    cfg = _config(ip, boot, is_bootstrap=is_bootstrap)
    if is_bootstrap:
        cfg = replace(cfg, peerdb=replace(cfg.peerdb, target_outbound=0))
    return await stack.enter_async_context(DiscoveryService(host, cfg).run())


async def _dht_node(stack: AsyncExitStack, ip: str):  # type: ignore[no-untyped-def]
    from libp2p import new_host
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.network.config import ConnectionConfig
    from libp2p.tools.anyio_service import background_trio_service

    listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
    host = new_host(listen_addrs=listen, connection_config=ConnectionConfig(max_connections_per_peer=1))
    await stack.enter_async_context(run_host(host, listen))
    dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=True)
    await stack.enter_async_context(background_trio_service(dht))
    return host, dht


def _p2p(host) -> str:  # type: ignore[no-untyped-def]
    return f"{host.get_addrs()[0]}"


async def network(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        if args.kind == "ours":
            first = await _our_node(stack, args.ip, args.boot, is_bootstrap=args.boot is None)
            boot = args.boot or _p2p(first.host)
            nodes = [first] + [await _our_node(stack, args.ip, boot) for _ in range(args.nodes - 1)]
            with trio.fail_after(120):
                while any(n.joined_at is None for n in nodes[1:]):
                    await trio.sleep(0.1)
            addr = _p2p(first.host)
        else:
            dhts = [await _dht_node(stack, args.ip) for _ in range(args.nodes)]
            target = info_from_p2p_addr(multiaddr.Multiaddr(args.boot or _p2p(dhts[0][0])))
            for host, _ in dhts if args.boot else dhts[1:]:
                await host.connect(target)
            await trio.sleep(1.0)
            async with trio.open_nursery() as nursery:
                for _, dht in dhts:
                    nursery.start_soon(dht.refresh_routing_table)
            addr = _p2p(dhts[0][0])
        print(json.dumps({"addr": addr}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the driver closes our stdin


async def _tcp_rtt(addr: multiaddr.Multiaddr, n: int = 9) -> float:
    ip, port = addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        stream = await trio.open_tcp_stream(ip, port)
        times.append(time.perf_counter() - t)
        await stream.aclose()
    return statistics.median(times)


async def join(args: argparse.Namespace) -> None:
    boot = multiaddr.Multiaddr(args.boot)
    rtt = await _tcp_rtt(boot)
    dials, requests, joins = [], [], []
    info = info_from_p2p_addr(boot)
    for i in range(6):  # one dial + handshake, then one bootstrap request on it (first: warm-up)
        async with AsyncExitStack() as stack:
            node = await _our_node(stack, args.ip, None)
            t = time.perf_counter()
            await node.host.connect(info)
            if i:
                dials.append(time.perf_counter() - t)
            if args.kind == "ours":
                t = time.perf_counter()
                await node.cascade.bootstrap_request(info.peer_id)
                if i:
                    requests.append(time.perf_counter() - t)
    for _ in range(args.joins):
        async with AsyncExitStack() as stack:
            t = time.perf_counter()
            if args.kind == "ours":
                svc = await stack.enter_async_context(
                    DiscoveryService(await _host(stack, args.ip), _config(args.ip, args.boot)).run())
                with trio.move_on_after(30):
                    await svc.wait_for_peers(MIN_PEERS)
                    joins.append(time.perf_counter() - t)
            else:
                host, _dht = await _dht_node(stack, args.ip)
                await host.connect(info)
                with trio.move_on_after(30):
                    while len(host.get_connected_peers()) < MIN_PEERS:
                        await trio.sleep(0.002)
                    joins.append(time.perf_counter() - t)
        await trio.sleep(0.5)
    print(json.dumps({"rtt": rtt, "dial": statistics.median(dials),
                      "request": statistics.median(requests) if requests else None,
                      "joins": joins, "failed": args.joins - len(joins)}), flush=True)


async def _host(stack: AsyncExitStack, ip: str):  # type: ignore[no-untyped-def]
    listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
    host = _make_host(listen)
    await stack.enter_async_context(run_host(host, listen))
    return host


def main() -> None:
    logging.disable(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["network", "join"])
    ap.add_argument("--kind", choices=["ours", "dht"], default="ours")
    ap.add_argument("--ip", required=True, help="the namespace's address to listen on")
    ap.add_argument("--boot", default=None, help="the bootstrap node's multiaddr (with /p2p/)")
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--joins", type=int, default=7)
    args = ap.parse_args()
    trio.run(network if args.role == "network" else join, args)


if __name__ == "__main__":
    main()
