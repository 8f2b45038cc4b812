"""A py-libp2p circuit relay v2 for the interop checks (issue #11).

``python -m interop.py_relay`` listens on 127.0.0.1, runs py-libp2p 0.8.1's ``CircuitV2Protocol``
with hop enabled and generous limits, prints ``{"event": "listening", "peer_id": …, "addrs": […]}``
and runs until SIGTERM. A stand-in until the project's own relay (``prozchain_discovery/relay/``)
lands; see /work/shared/notes/py-libp2p-0.8.1-relay.md for that relay's known bugs.
"""

from __future__ import annotations

import json
import signal
import sys

import multiaddr
import trio
from libp2p.relay.circuit_v2 import CircuitV2Protocol, RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host

__all__ = ["main"]


async def _serve() -> None:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = make_host(listen_addrs=listen)
    limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=64, max_reservations=256,
                         reservation_ttl=3600)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, listen):
            relay = CircuitV2Protocol(host, limits=limits, allow_hop=True)
            async with background_trio_service(relay):
                print(json.dumps({"event": "listening", "peer_id": str(host.get_id()),
                                  "addrs": [str(a) for a in host.get_addrs()]}), flush=True)
                async for _ in signals:
                    break


def main() -> int:
    trio.run(_serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
