"""AutoNAT v2 in the NAT lab (interop/natlab): real Linux NAT, real miniupnpd, node processes.

Three servers on public hosts (stun, pub2, pub3: three distinct servers give the three agreeing
confirmations). A node on pub1 is confirmed public; clients behind the cone and the symmetric
NAT without a port mapping are confirmed private (the servers' dial-backs to the IP they observe
die at the router); the client behind the miniupnpd router with ``port_mapping = true`` is
confirmed public at its mapped address. Everything runs in one lab session, in parallel.
Every node serves AutoNAT (the default), so clients that meet may also confirm each other.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop.natlab.lab import node_env
from tests.natlab_fixture import natlab  # noqa: F401 - the fixture

pytestmark = [pytest.mark.network, pytest.mark.slow]

SERVERS = ("stun", "pub2", "pub3")
PORT = 4101  # not the 4001 other lab tests use, so a leftover never answers for us


def _toml(boot: list[str] = (), min_peers: int = 1, extra: str = "") -> str:  # type: ignore[assignment]
    nodes = ", ".join(f'"{b}"' for b in boot)
    return (f'network_id = "lab-autonat"\nlisten = ["/ip4/0.0.0.0/tcp/{PORT}"]\n'
            f"[bootstrap]\nmin_peers_for_startup = {min_peers}\nbootstrap_nodes = [{nodes}]\n"
            f"[nat]\nautonat_dial_back_timeout = 4.0\n{extra}")


class Node:
    def __init__(self, lab, host: str, tmp: Path, toml: str) -> None:
        self.data = tmp / host
        self.data.mkdir()
        (self.data / "node.toml").write_text(toml)
        self.log = open(self.data / "log.txt", "w")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "prozchain_discovery", "node", "--config", str(self.data / "node.toml"),
                "--data-dir", str(self.data), "--status-interval", "0.3", "--log-level", "INFO"]
        self.proc = lab.spawn(host, argv, env=node_env(), stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        try:
            return json.loads((self.data / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def reachability(self) -> str:
        return self.status().get("nat", {}).get("reachability", "")

    def evidence(self) -> list[str]:
        return [e for e in self.status().get("nat", {}).get("evidence", []) if e.startswith("autonat")]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return (self.data / "log.txt").read_text(errors="replace")


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_reachability_by_dial_back_public_cone_symmetric_and_upnp(natlab, tmp_path):  # noqa: F811
    lab = natlab
    nodes: dict[str, Node] = {}
    try:
        for name in SERVERS:
            nodes[name] = Node(lab, name, tmp_path, _toml())
        _wait(lambda: all(nodes[s].status().get("peer_id") for s in SERVERS), 60, "the servers")
        boot = [f"/ip4/{lab.hosts[s].ip}/tcp/{PORT}/p2p/{nodes[s].status()['peer_id']}" for s in SERVERS]
        for name, extra in (("pub1", ""), ("cone1", ""), ("sym1", ""), ("upnp1", "port_mapping = true\n")):
            nodes[name] = Node(lab, name, tmp_path, _toml(boot, min_peers=3, extra=extra))
        want = {"pub1": "public", "cone1": "private", "sym1": "private", "upnp1": "public"}
        _wait(lambda: all(nodes[n].reachability() == r and nodes[n].evidence() for n, r in want.items()),
              120, "every client's confirmed reachability: " + ", ".join(
                  f"{n}={nodes[n].reachability()}" for n in want))
        ev = {n: nodes[n].evidence() for n in want}
        assert any(f"/ip4/{lab.hosts['pub1'].ip}/tcp/{PORT} reachable" in e for e in ev["pub1"]), ev["pub1"]
        mapped = f"/ip4/{lab.routers['upnp'].wan_ip}/tcp/{PORT} reachable"
        assert any(mapped in e for e in ev["upnp1"]), ev["upnp1"]
        for n, router in (("cone1", "cone"), ("sym1", "sym")):
            assert any(f"/ip4/{lab.routers[router].wan_ip}/tcp/{PORT} unreachable" in e for e in ev[n]), ev[n]
        for n in want:
            assert all("confirmed by 3 servers" in e for e in ev[n]), ev[n]
        # Every definite verdict (reachable, unreachable) is a dial-back a server really made and
        # counted. Not only the three SERVERS: every node serves AutoNAT by default, and clients
        # that meet (through PEX or outbound slots) ask each other, so a client's three
        # confirmations may include another client. A server counts a dial-back just before it
        # answers, and status.json is rewritten every 0.3 s: wait for the files to catch up.
        def counted(prefix: str, results: tuple[str, ...]) -> int:
            return sum(int(v) for node in nodes.values() for k, v in node.status().get("metrics", {}).items()
                       if k in {f"{prefix}{{result={r}}}" for r in results})

        def tally() -> tuple[int, int]:
            return (counted("autonat_dial_backs", ("ok", "dial_error", "dial_back_error")),
                    counted("autonat_probes", ("reachable", "unreachable")))

        _wait(lambda: (t := tally())[0] >= t[1] >= 12, 60, f"dial-backs served >= definite probes >= 12 {tally()}")
    finally:
        logs = {n: node.stop() for n, node in nodes.items()}
    for n, node in nodes.items():
        assert node.proc.returncode == 0, (n, logs[n][-2000:])
