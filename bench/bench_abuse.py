"""A requester that ignores RATE_LIMITED, flooding PEX from another process: what it costs us.

One node serves PEX (exchange_interval 60 s). A flooder process opens PEX streams as fast as 4
concurrent loops allow, with one fixed key, reconnecting whenever it is dropped — for
``--seconds``, twice: once with the inbound guard switched off (every request decoded and
answered RATE_LIMITED, the abuser disconnected and back at once: the behaviour before bans),
once with it on (the abuser banned after its third ignored RATE_LIMITED; its streams reset
before a byte is read). Meanwhile an honest peer pings the node every 50 ms. Printed per phase:
the flood's request rate, the node process's CPU (the honest pinger included), the honest
ping's median and p99.

Run: .venv/bin/python bench/bench_abuse.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import multiaddr
import trio
from libp2p.host.ping import ID as PING_ID
from libp2p.peer.peerinfo import info_from_p2p_addr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"

from prozchain_discovery.bans import BanList  # noqa: E402
from prozchain_discovery.demo import demo_config  # noqa: E402
from prozchain_discovery.host import make_host  # noqa: E402
from prozchain_discovery.libp2p_fixes import run_host  # noqa: E402
from prozchain_discovery.service import DiscoveryService  # noqa: E402

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]

FLOODER = textwrap.dedent("""
    import sys, time, trio, multiaddr
    sys.path.insert(0, {root!r})
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host
    from prozchain_discovery.net.frames import read_frame
    from prozchain_discovery.wire.framing import encode_frame
    from prozchain_discovery.wire.messages import PEX_PROTOCOL, PexRequest
    LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    target = info_from_p2p_addr(multiaddr.Multiaddr(sys.argv[1]))
    seconds = float(sys.argv[2])
    sent = 0
    async def loop(host, deadline):
        global sent
        payload = encode_frame(PexRequest("prozchain-demo", 50).encode())
        while trio.current_time() < deadline:
            try:
                if target.peer_id not in host.get_connected_peers():
                    await host.connect(target)
                with trio.move_on_after(2):
                    s = await host.new_stream(target.peer_id, [PEX_PROTOCOL])
                    sent += 1
                    await s.write(payload)
                    await read_frame(s)
            except Exception:
                await trio.sleep(0)
    async def main():
        host = make_host(create_new_key_pair(b"f" * 32), listen_addrs=LOOP)
        async with run_host(host, LOOP):
            deadline = trio.current_time() + seconds
            async with trio.open_nursery() as n:
                for _ in range(4):
                    n.start_soon(loop, host, deadline)
        print(sent, flush=True)
    trio.run(main)
""")


async def _ping_loop(host, pid, until: float, out: list[float]) -> None:
    while trio.current_time() < until:
        t = time.perf_counter()
        try:
            with trio.fail_after(5):
                s = await host.new_stream(pid, [PING_ID])
                await s.write(b"p" * 32)
                await s.read(32)
                await s.close()
            out.append(time.perf_counter() - t)
        except Exception:
            out.append(5.0)
        await trio.sleep(0.05)


class _NoBans(BanList):
    """The node before bans: nobody is ever banned (the PEX handler still disconnects abusers)."""

    def ban(self, peer: bytes, ip: str | None, now: float, reason: str) -> float:
        return 0.0

    def is_banned(self, peer: bytes, ip: str | None, now: float) -> bool:
        return False


async def _phase(node: DiscoveryService, honest, seconds: float, guard: bool) -> dict[str, float]:
    node.guard.bans = BanList() if guard else _NoBans()
    addr = f"{node.host.get_addrs()[0]}"
    served0 = node.metrics.get("pex_requests_served")
    refused0 = node.metrics.get("refused_banned")
    closed0 = node.metrics.get("banned_connections_closed")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", FLOODER.format(root=str(ROOT)), addr, str(seconds)], stdout=subprocess.PIPE
    )
    pings: list[float] = []
    await _ping_loop(honest, node.local_id, trio.current_time() + seconds + 1.0, pings)
    await proc.wait()
    assert proc.stdout is not None
    sent = int((await proc.stdout.receive_some(100)).split()[0])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    pings.sort()
    return {
        "sent": sent / seconds,
        "served": (node.metrics.get("pex_requests_served") - served0) / seconds,
        "refused": (node.metrics.get("refused_banned") - refused0) / seconds,
        "closed": (node.metrics.get("banned_connections_closed") - closed0) / seconds,
        "cpu": 100 * cpu / wall,
        "ping_median": 1000 * statistics.median(pings),
        "ping_p99": 1000 * pings[int(0.99 * (len(pings) - 1))],
    }


async def main_async(seconds: float) -> None:
    c = demo_config(None, 1, 50)
    c = replace(c, pex=replace(c.pex, exchange_interval=60.0, first_request_delay=3600.0, addr_fetch_per_round=0),
                peerdb=replace(c.peerdb, target_outbound=0))
    async with AsyncExitStack() as stack:
        h = make_host(listen_addrs=LOOP)
        await stack.enter_async_context(run_host(h, LOOP))
        node = await stack.enter_async_context(DiscoveryService(h, c).run())
        honest = make_host(listen_addrs=LOOP)
        await stack.enter_async_context(run_host(honest, LOOP))
        await honest.connect(info_from_p2p_addr(h.get_addrs()[0]))
        quiet: list[float] = []
        await _ping_loop(honest, node.local_id, trio.current_time() + 2.0, quiet)
        before = await _phase(node, honest, seconds, guard=False)
        after = await _phase(node, honest, seconds, guard=True)
    print(f"honest ping with no flood: median {1000 * statistics.median(quiet):.2f} ms\n")
    print("| figure | no guard (before bans) | guard on |")
    print("|---|---|---|")
    for key, label, fmt in [
        ("sent", "flood: PEX streams opened per s", "{:.0f}"),
        ("served", "requests decoded and answered per s", "{:.0f}"),
        ("refused", "streams reset unread (banned) per s", "{:.0f}"),
        ("closed", "connections of the banned peer closed per s", "{:.0f}"),
        ("cpu", "node process CPU, % of one core", "{:.0f}%"),
        ("ping_median", "honest ping during the flood, median ms", "{:.2f}"),
        ("ping_p99", "honest ping during the flood, p99 ms", "{:.2f}"),
    ]:
        print(f"| {label} | {fmt.format(before[key])} | {fmt.format(after[key])} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    trio.run(main_async, args.seconds)


if __name__ == "__main__":
    main()
