"""PEX round trip vs a libp2p ping on the same connection, and PEX requests served per second.

Both are measured the same way: a new stream on an open connection (multistream negotiation
included), one request, one answer. The ping is ``/ipfs/ping/1.0.0`` (32 random bytes echoed);
the PEX answer carries 50 signed records, verified by the requester (warm: the verified-record
cache already holds them, as it does for a node that has exchanged before; cold: every
signature checked).

Run: .venv/bin/python bench/bench_pex.py [--n 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import multiaddr
import trio
from libp2p.host.ping import ID as PING_ID
from libp2p.peer.peerinfo import info_from_p2p_addr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"  # before the service module reads it

from prozchain_discovery.demo import demo_config  # noqa: E402
from prozchain_discovery.host import make_host  # noqa: E402
from prozchain_discovery.libp2p_fixes import run_host  # noqa: E402
from prozchain_discovery.peerdb import PeerSource  # noqa: E402
from prozchain_discovery.records import VerifiedRecordCache, sign_record, verify_record  # noqa: E402
from prozchain_discovery.service import DiscoveryService  # noqa: E402

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def _cfg():
    c = demo_config(None, 1, 50)
    # No rate limit and records shareable at once: the benchmark measures the exchange itself.
    # Nothing here dials on its own (no outbound target, no address fetch): the book holds
    # made-up peers, all on loopback addresses nobody listens on.
    return replace(
        c,
        # The PEX loop is kept quiet (first request after an hour): only the measured requests run.
        pex=replace(c.pex, exchange_interval=0.0, min_peer_age=0.0, addr_fetch_per_round=0,
                    first_request_delay=3600.0),
        peerdb=replace(c.peerdb, target_outbound=0),
    )


async def _node(stack: AsyncExitStack) -> DiscoveryService:
    h = make_host(listen_addrs=LOOP)
    await stack.enter_async_context(run_host(h, LOOP))
    return await stack.enter_async_context(DiscoveryService(h, _cfg()).run())


async def ping_once(host, peer_id) -> float:
    t = time.perf_counter()
    s = await host.new_stream(peer_id, [PING_ID])
    payload = os.urandom(32)
    await s.write(payload)
    got = b""
    while len(got) < 32:
        got += await s.read(32 - len(got))
    await s.close()
    assert got == payload
    return time.perf_counter() - t


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


async def main_async(n: int) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    async with AsyncExitStack() as stack:
        responder = await _node(stack)
        requester = await _node(stack)
        # 200 peers in the responder's book, each with its own signed record.
        now = trio.current_time()
        for i in range(200):
            k = create_new_key_pair()
            pid = ID.from_pubkey(k.public_key)
            rec = verify_record(sign_record(pid, [multiaddr.Multiaddr(f"/ip4/127.1.{i}.1/tcp/9")], k.private_key))
            responder.db.add_record(rec, PeerSource.PEX, now - 3600,
                                    source_addr=multiaddr.Multiaddr(f"/ip4/127.2.{i}.1/tcp/9"))
        await requester.host.connect(info_from_p2p_addr(responder.host.get_addrs()[0]))
        pid = responder.local_id
        for _ in range(20):  # warm up both paths
            await ping_once(requester.host, pid)
            await requester.request_peers(pid)
        pings, pex_warm, pex_cold = [], [], []
        got = 0
        for i in range(n):
            pings.append(await ping_once(requester.host, pid))
            t = time.perf_counter()
            got = await requester.request_peers(pid)
            pex_warm.append(time.perf_counter() - t)
            if i % 4 == 0:
                # Cold: a fresh cache for this one request, then the warm cache back — so the
                # warm requests that follow are really warm (an earlier version kept the fresh
                # cache, and the next warm requests re-verified most of their records).
                warm_cache = requester.book.record_cache
                requester.book.record_cache = requester.pex.policy.cache = VerifiedRecordCache()
                t = time.perf_counter()
                await requester.request_peers(pid)
                pex_cold.append(time.perf_counter() - t)
                requester.book.record_cache = requester.pex.policy.cache = warm_cache
        records = requester.metrics.get("records_accepted", via="pex") + got
        # Throughput: 8 requesters hammer one responder for 3 s.
        clients = [await _node(stack) for _ in range(8)]
        for c in clients:
            await c.host.connect(info_from_p2p_addr(responder.host.get_addrs()[0]))
        served0 = responder.metrics.get("pex_requests_served")
        cpu0 = time.process_time()
        t0 = time.perf_counter()

        async def hammer(c: DiscoveryService) -> None:
            while time.perf_counter() - t0 < 3.0:
                await c.request_peers(pid)

        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(hammer, c)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        served = responder.metrics.get("pex_requests_served") - served0

    ping_ms = med_ms(pings)
    print(f"requests: {n} of each, alternating, on one open connection; answer = 50 records "
          f"({records} records accepted in all)")
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| libp2p ping (new stream, 32 B echo), median | {ping_ms:.2f} ms | |")
    print(f"| PEX round trip, 50 records, warm cache, median | {med_ms(pex_warm):.2f} ms | |")
    print(f"| **ratio PEX / ping (warm)** | **{med_ms(pex_warm) / ping_ms:.2f}** | <= 2 |")
    print(f"| PEX round trip, 50 records, every signature checked, median | {med_ms(pex_cold):.2f} ms "
          f"(ratio {med_ms(pex_cold) / ping_ms:.2f}) | |")
    print(f"| PEX requests served, 8 requesters, same process | {served / wall:,.0f}/s "
          f"(process CPU {cpu / wall:.0%} of one core, requesters included) | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    trio.run(main_async, args.n)


if __name__ == "__main__":
    main()
