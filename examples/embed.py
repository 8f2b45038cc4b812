"""Mount prozchain-discovery on your own py-libp2p host: two nodes on loopback.

    .venv/bin/python examples/embed.py

Node A is a bootstrap node; node B knows only A's address. B joins, and prints what it sees.
"""

from __future__ import annotations

import multiaddr
import trio

from prozchain_discovery.config import BootstrapConfig, DiscoveryConfig
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.service import DiscoveryService

LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


async def main() -> None:
    host_a = make_host(listen_addrs=LISTEN)  # Noise only, Yamux, fast dials
    async with run_host(host_a, LISTEN):
        cfg_a = DiscoveryConfig(network_id="example-net", bootstrap=BootstrapConfig(min_peers_for_startup=1))
        async with DiscoveryService(host_a, cfg_a).run():
            a_addr = f"{host_a.get_addrs()[0]}"  # includes /p2p/<peer id>
            host_b = make_host(listen_addrs=LISTEN)
            async with run_host(host_b, LISTEN):
                cfg_b = DiscoveryConfig(
                    network_id="example-net",
                    bootstrap=BootstrapConfig(bootstrap_nodes=(a_addr,), min_peers_for_startup=1),
                )
                async with DiscoveryService(host_b, cfg_b).run() as node_b:
                    with trio.fail_after(10):
                        await node_b.wait_for_peers(1)
                    st = node_b.status()
                    print(f"node B {st['peer_id']} joined after {st['joined_after']} s: "
                          f"{st['connected']} peer(s), sources {st['by_source']}")


if __name__ == "__main__":
    trio.run(main)
