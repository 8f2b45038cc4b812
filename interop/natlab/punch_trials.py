"""Hole-punch trials in the NAT lab: a relay on a public host, two clients behind routers
(``punch_node.py`` processes), N trials each on fresh listen ports. Used by
tests/test_holepunch_lab.py and bench/bench_holepunch.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .lab import PROJECT_ROOT as ROOT
from .lab import Lab, node_env

RELAY_HOST = "pub3"  # 198.51.100.20: a /16 of its own, apart from rcone (192.0) and rcone2 (203.0)


class Node:
    def __init__(self, lab: Lab, ns: str, argv: list[str]) -> None:
        self.ns = ns
        self.proc = lab.spawn(ns, [sys.executable, "-m", "interop.natlab.punch_node", *argv],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=node_env(), cwd=str(ROOT))

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"punch node in {self.ns} exited ({self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"punch node in {self.ns}: {out['error']}")
        return out

    def cmd(self, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - ended by PID below
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Pair:
    a: Node  # accepts the relayed connection: drives DCUtR
    b: Node  # dials through the relay
    a_nat: str
    b_nat: str
    results: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def punch_pair(lab: Lab, a_ns: str, b_ns: str, relay_transports: tuple[str, ...] = ("tcp",)) -> Iterator[Pair]:
    """The relay and two clients. Clients reach the relay over TCP if it listens on TCP, else
    over QUIC (``relay_transports=("quic",)`` for QUIC-only clients)."""
    relay = Node(lab, RELAY_HOST, ["relay", "--port", "4001", "--transports", ",".join(relay_transports)])
    nodes = [relay]
    try:
        info = relay.read()
        via = "tcp/4001" if "tcp" in relay_transports else "udp/4001/quic-v1"
        relay_addr = f"/ip4/{lab.hosts[RELAY_HOST].ip}/{via}/p2p/{info['peer_id']}"
        stun = lab.stun_ips[0]
        a = Node(lab, a_ns, ["client", "--stun", stun, "--relay", relay_addr])
        nodes.append(a)
        b = Node(lab, b_ns, ["client", "--stun", stun, "--relay", relay_addr])
        nodes.append(b)
        yield Pair(a, b, a.read()["nat_type"], b.read()["nat_type"])
    finally:
        for n in reversed(nodes):
            n.stop()


def trial(pair: Pair, port: int, timeout: float = 20.0, migration: bool = True,
          transports: tuple[str, ...] = ("tcp",), wait_wan: bool = False) -> dict[str, Any]:
    """One trial: fresh hosts on ``port`` on both sides, b dials a through the relay, both wait
    for a direct connection (a drives) and a for its result. With ``migration``, a also waits for
    the relayed connection to close (``relay_close_grace``, 2 s). b waits for neither: only the
    driver records a result, and the relayed connection closes for both at once. ``transports``:
    what both clients listen and punch on (tcp, quic). ``wait_wan``: each client starts the
    trial once identify told it its WAN IP (punch_node.py), so the first CONNECT carries it."""
    ia = pair.a.cmd(cmd="up", port=port, transports=list(transports), wait_wan=wait_wan)
    ib = pair.b.cmd(cmd="up", port=port, transports=list(transports), wait_wan=wait_wan)
    try:
        pair.b.cmd(cmd="dial", circuit=ia["circuit"])
        ra = pair.a.cmd(cmd="wait", peer=ib["peer_id"], timeout=timeout, migration=migration)
        rb = pair.b.cmd(cmd="wait", peer=ia["peer_id"], timeout=5.0 if ra["direct"] is None else timeout,
                        settle=False, migration=False)
    finally:
        pair.a.cmd(cmd="down")
        pair.b.cmd(cmd="down")
    out = {"port": port, "a": ra, "b": rb}
    pair.results.append(out)
    return out
