"""The py side of issue #11's relay check: a py ProzChain node reachable through a circuit relay v2.

``python -m interop.relay_check --relay /ip4/…/p2p/<relay> --network-id ID`` starts a py host with
the discovery service (so it answers ``/prozchain/pex/1.0``, also on relayed connections), takes
a reservation on the relay, and prints JSON lines: ``listening`` (with its circuit address),
``reserved``, ``served`` (when it answered a PEX request). Commands on stdin, one JSON per line:

* ``{"cmd": "dial_pex", "addr": "<relay>/p2p-circuit/p2p/<peer>", "peer": "<peer>"}`` — dial the
  peer through the relay (``CircuitV2Transport.dial``: py-libp2p's ``host.connect`` drops circuit
  addresses) and send one PEX request over that relayed connection; prints ``dial_pex`` with the
  status, round trip and records.

Uses py-libp2p 0.8.1's ``CircuitV2Protocol``/``CircuitV2Transport`` directly until the project's
relay component (``prozchain_discovery/relay/``) lands.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.tools.anyio_service import background_trio_service

from prozchain_discovery.config import DiscoveryConfig, PeerDbSettings, PexConfig
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.net import exchange
from prozchain_discovery.records import verify_many
from prozchain_discovery.service import DiscoveryService
from prozchain_discovery.wire.messages import PEX_PROTOCOL, PexRequest, PexResponse

__all__ = ["main"]


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


async def _dial_pex(host: Any, transport: CircuitV2Transport, network_id: str, cmd: dict[str, Any]) -> None:
    addr = multiaddr.Multiaddr(str(cmd["addr"]))
    peer = ID.from_base58(str(cmd["peer"]))
    t0 = trio.current_time()
    try:
        with trio.fail_after(20):
            await transport.dial(addr)
    except Exception as exc:
        _emit("dial_pex", ok=False, stage="dial", error=f"{type(exc).__name__}: {exc}"[:200])
        return
    dial_ms = (trio.current_time() - t0) * 1000
    t1 = trio.current_time()
    try:
        data, _stream = await exchange.request(host, peer, PEX_PROTOCOL, PexRequest(network_id, 50).encode(), 15.0)
        resp = PexResponse.decode(data)
    except Exception as exc:
        _emit("dial_pex", ok=False, stage="pex", dial_ms=round(dial_ms, 2), error=f"{type(exc).__name__}: {exc}"[:200])
        return
    rtt_ms = (trio.current_time() - t1) * 1000
    good, rejected = verify_many(list(resp.signed_records), local_peer_id=host.get_id())
    _emit("dial_pex", ok=True, relayed=True,  # dialed through CircuitV2Transport only
          dial_ms=round(dial_ms, 2), pex_ms=round(rtt_ms, 2),
          status=int(resp.status), records=len(resp.signed_records), accepted=len(good),
          rejected={k.value: v for k, v in rejected.items()})


async def _run(relay_addr: str, network_id: str) -> None:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = make_host(listen_addrs=listen)
    cfg = DiscoveryConfig(
        network_id=network_id,
        listen=("/ip4/127.0.0.1/tcp/0",),
        pex=PexConfig(min_peer_age=0.0, exchange_interval=10.0, first_request_delay=0.05),
        peerdb=PeerDbSettings(path=":memory:", target_outbound=0),
    )
    relay_info = info_from_p2p_addr(multiaddr.Multiaddr(relay_addr))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, listen), DiscoveryService(host, cfg).run() as svc:
            proto = CircuitV2Protocol(host)
            async with background_trio_service(proto), trio.open_nursery() as nursery:
                transport = CircuitV2Transport(host, proto, RelayConfig())
                await host.connect(relay_info)
                stream = await host.new_stream(relay_info.peer_id, [HOP])
                reserved = await transport.reserve(stream, relay_info.peer_id, nursery)
                await stream.close()
                circuit = f"{relay_addr}/p2p-circuit/p2p/{host.get_id()}"
                _emit("listening", peer_id=str(host.get_id()), addrs=[str(a) for a in host.get_addrs()],
                      circuit=circuit)
                _emit("reserved", ok=bool(reserved), relay=str(relay_info.peer_id))

                async def watch_served() -> None:
                    seen = 0
                    while True:
                        n = svc.metrics.get("pex_requests_served")
                        if n != seen:
                            seen = n
                            _emit("served", protocol="pex", total=n, metrics={
                                k: v for k, v in svc.metrics.as_dict().items() if k.startswith("pex_requests_served")})
                        await trio.sleep(0.1)

                async def commands() -> None:
                    stdin = trio.lowlevel.FdStream(0)
                    buf = b""
                    while True:
                        chunk = await stdin.receive_some(4096)
                        if not chunk:
                            return
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            if len(line) > 4096:
                                continue
                            try:
                                cmd = json.loads(line)
                            except ValueError:
                                continue
                            if isinstance(cmd, dict) and cmd.get("cmd") == "dial_pex":
                                nursery.start_soon(_dial_pex, host, transport, network_id, cmd)

                nursery.start_soon(watch_served)
                nursery.start_soon(commands)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.relay_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay", required=True, help="the relay's multiaddr with /p2p/<id>")
    parser.add_argument("--network-id", default="prozchain-interop")
    args = parser.parse_args(argv)
    trio.run(_run, args.relay, args.network_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
