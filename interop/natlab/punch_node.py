"""A node for hole-punch trials in the NAT lab, driven line by line over stdin/stdout (JSON).

``python -m interop.natlab.punch_node relay --port 4001``: a circuit relay v2 (py-libp2p's
``CircuitV2Protocol``, hop on) that prints ``{"peer_id", "addr"}`` and serves until stdin closes.

``python -m interop.natlab.punch_node client --stun IP --relay ADDR``: classifies its NAT once
(our STUN classifier against the lab's coturn), prints ``{"nat_type"}``, then per command:

* ``{"cmd": "up", "port": P, "transports": ["tcp", "quic"]}`` — a fresh host listening on
  0.0.0.0:P, TCP and/or UDP (QUIC; ``transports`` defaults to TCP only) (a fresh port per trial:
  the last trial's 4-tuple may still sit in TIME_WAIT), connected to the relay with a
  reservation (with ``"wait_wan": true``, answered once identify told it its WAN IP, at most
  3 s: a trial then measures the punch, not the race with the relay's identify), with the
  hole-punch component (``HolepunchService``) mounted as the composition
  root mounts it: a ``ConnectionTracker`` publishing ``PeerConnected``, ``NatStatusChanged``
  with the classification. Answers ``{"peer_id", "circuit"}``.
* ``{"cmd": "dial", "circuit": C}`` — dial the other client through the relay (the other side,
  which accepts the relayed connection, drives DCUtR).
* ``{"cmd": "wait", "peer": ID, "timeout": T, "settle": true, "migration": true}`` — wait for a
  direct connection to that peer; answers its remote address, the hole-punch result with that
  peer and the time from the relayed connection to the direct one. Once direct, ``settle`` also
  waits (up to 2 s) for the driver's result, ``migration`` for the relayed connection to close
  (after the service's ``relay_close_grace``); both default to true.
* ``{"cmd": "down"}`` — close the trial's host.

Until the relay component (prozchain_discovery/relay/) lands, relayed connections are made with
py-libp2p's ``CircuitV2Transport`` directly (../shared/notes/py-libp2p-0.8.1-relay.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from prozchain_discovery.connections import ConnectionTracker
from prozchain_discovery.events import EventBus, NatStatusChanged, PeerConnected
from prozchain_discovery.holepunch.schedule import HolepunchNotSupported
from prozchain_discovery.holepunch.service import PROTOCOL_ID, HolepunchResult, HolepunchService
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.status import NatStatus, Reachability


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def readline() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline)


def listen_addrs(port: int, transports: list[str]) -> list[multiaddr.Multiaddr]:
    kinds = {"tcp": f"/ip4/0.0.0.0/tcp/{port}", "quic": f"/ip4/0.0.0.0/udp/{port}/quic-v1"}
    return [multiaddr.Multiaddr(kinds[t]) for t in transports]


async def relay_main(port: int, transports: list[str]) -> None:
    from libp2p.relay.circuit_v2 import CircuitV2Protocol, RelayLimits
    from libp2p.tools.anyio_service import background_trio_service

    listen = listen_addrs(port, transports)
    host = make_host(listen_addrs=listen)
    async with run_host(host, listen):
        limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=64,
                             max_reservations=1024, reservation_ttl=3600)
        proto = CircuitV2Protocol(host, limits=limits, allow_hop=True)
        async with background_trio_service(proto):
            addrs = [str(a) for a in host.get_addrs() if "127.0.0.1" not in str(a)]
            emit({"peer_id": str(host.get_id()), "addrs": addrs})
            await readline()  # until the test closes stdin


class Trial:
    def __init__(self, nat: NatStatus, relay: str) -> None:
        self.nat = nat
        self.relay = multiaddr.Multiaddr(relay)
        self.relay_info = info_from_p2p_addr(self.relay)
        self.relayed_at: dict[ID, float] = {}

    async def run(self, port: int, transports: list[str] | None = None, wait_wan: bool = False,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
        from libp2p.tools.anyio_service import background_trio_service

        listen = listen_addrs(port, transports or ["tcp"])
        host = make_host(listen_addrs=listen)
        self.host = host
        bus, metrics = EventBus(), Metrics()
        tracker = ConnectionTracker(host, bus, metrics, min_peers=1, static_ids=set())
        self.hp = hp = HolepunchService(host, bus=bus, metrics=metrics)
        bus.subscribe(PeerConnected, self._on_connected)
        async with run_host(host, listen):
            host.get_network().register_notifee(tracker.notifee)
            host.set_stream_handler(PROTOCOL_ID, hp.handle)  # type: ignore[arg-type]
            bus.publish(NatStatusChanged(self.nat))
            proto = CircuitV2Protocol(host)
            async with background_trio_service(proto), trio.open_nursery() as nursery:
                nursery.start_soon(hp.run)
                self.transport = CircuitV2Transport(host, proto, RelayConfig(roles=RelayRole.STOP))
                await host.connect(self.relay_info)
                reserver = CircuitV2Transport(host, proto, RelayConfig())
                s = await host.new_stream(self.relay_info.peer_id, [HOP])
                ok = await reserver.reserve(s, self.relay_info.peer_id, nursery)
                with contextlib.suppress(Exception):
                    await s.close()
                circuit = f"{self.relay}/p2p-circuit/p2p/{host.get_id()}"
                if wait_wan:
                    with trio.move_on_after(3.0):
                        while not hp._wan_ips():
                            await trio.sleep(0.02)
                task_status.started({"peer_id": str(host.get_id()), "circuit": circuit, "reserved": ok,
                                     "wan_ips": sorted(hp._wan_ips())})
                self.stop = trio.Event()
                await self.stop.wait()
                nursery.cancel_scope.cancel()

    def _on_connected(self, ev: PeerConnected) -> None:
        if ev.addr is not None and "p2p-circuit" in str(ev.addr):
            self.relayed_at[ev.peer_id] = trio.current_time()

    async def dial(self, circuit: str) -> dict[str, Any]:
        t = time.perf_counter()
        await self.transport.dial(multiaddr.Multiaddr(circuit))
        return {"dialed_ms": round((time.perf_counter() - t) * 1000, 1)}

    async def wait(self, peer: ID, timeout: float, settle: bool = True, migration: bool = True) -> dict[str, Any]:
        start = trio.current_time()
        direct: str | None = None
        with trio.move_on_after(timeout):
            while True:
                conn = self.hp._direct_conn(peer)
                if conn is not None:
                    addrs = conn.get_transport_addresses()
                    direct = str(addrs[0]) if addrs else "?"
                    break
                res = self.hp.result(peer)
                if isinstance(res, HolepunchNotSupported) or (
                        isinstance(res, HolepunchResult) and res.outcome != "direct"):
                    break
                await trio.sleep(0.01)
        now = trio.current_time()
        res = self.hp.result(peer)
        relayed = self.relayed_at.get(peer)
        out: dict[str, Any] = {
            "direct": direct,
            "relayed_to_direct_s": None if direct is None or relayed is None else round(now - relayed, 4),
            "waited_s": round(now - start, 3),
            "result": None if res is None else res.as_dict(),
            "relayed_conns": len(self.hp._relayed_conns(peer)),
            # the CONNECT/SYNC rounds this side drove with anyone during the trial
            "attempts_driven": self.hp.metrics.get("holepunch_attempts"),
        }
        if isinstance(res, HolepunchNotSupported) and relayed is not None:
            out["verdict_after_s"] = round(now - relayed, 4)
        if direct is not None and settle:  # let the driver's record settle (it finishes just after us)
            with trio.move_on_after(2.0):
                while not isinstance(self.hp.result(peer), HolepunchResult):
                    await trio.sleep(0.02)
            res = self.hp.result(peer)
            out["result"] = None if res is None else res.as_dict()
        if direct is not None and migration:
            # migration: the relay leg closes once the direct connection exists (after a grace)
            t0 = trio.current_time()
            with trio.move_on_after(self.hp.relay_close_grace + 8.0):
                while self.hp._relayed_conns(peer):
                    await trio.sleep(0.05)
            out["relayed_conns"] = len(self.hp._relayed_conns(peer))
            out["relay_closed_after_s"] = round(trio.current_time() - t0, 2)
            out["still_direct"] = self.hp.has_direct_connection(peer)
        return out


async def client_main(stun: str, relay: str) -> None:
    from prozchain_discovery.nat.stun_io import classify_nat

    r = await classify_nat([(stun, 3478)], server_timeout=3.0)
    nat_type = getattr(r.nat_type, "value", str(r.nat_type))
    nat = NatStatus(nat_type=nat_type, mapping=getattr(r.mapping, "value", "unknown"),
                    filtering=getattr(r.filtering, "value", "unknown"),
                    reachability=Reachability.PUBLIC if nat_type == "open" else Reachability.PRIVATE)
    emit({"nat_type": nat_type})
    trial: Trial | None = None
    async with trio.open_nursery() as nursery:
        while True:
            line = await readline()
            if not line:
                break
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "up":
                    trial = Trial(nat, relay)
                    info = await nursery.start(trial.run, int(cmd["port"]), list(cmd.get("transports", ["tcp"])),
                                               bool(cmd.get("wait_wan", False)))
                    emit(info)
                elif cmd["cmd"] == "dial" and trial is not None:
                    emit(await trial.dial(cmd["circuit"]))
                elif cmd["cmd"] == "wait" and trial is not None:
                    emit(await trial.wait(ID.from_base58(cmd["peer"]), float(cmd.get("timeout", 20)),
                                          bool(cmd.get("settle", True)), bool(cmd.get("migration", True))))
                elif cmd["cmd"] == "metrics" and trial is not None:
                    emit(trial.hp.metrics.as_dict())
                elif cmd["cmd"] == "down" and trial is not None:
                    trial.stop.set()
                    await trio.sleep(0.2)
                    trial = None
                    emit({"down": True})
                else:
                    emit({"error": f"bad command {cmd}"})
            except Exception as exc:  # noqa: BLE001 - report to the test, keep serving
                emit({"error": f"{type(exc).__name__}: {exc}"})
        nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    rp = sub.add_parser("relay")
    rp.add_argument("--port", type=int, default=4001)
    rp.add_argument("--transports", default="tcp", help="comma-separated: tcp, quic")
    cp = sub.add_parser("client")
    cp.add_argument("--stun", required=True)
    cp.add_argument("--relay", required=True)
    args = p.parse_args()
    if args.role == "relay":
        trio.run(relay_main, args.port, args.transports.split(","))
    else:
        trio.run(client_main, args.stun, args.relay)


if __name__ == "__main__":
    main()
