"""NAT traversal in the NAT lab (interop/natlab): real Linux NAT, real miniupnpd, real nodes.

Nodes run as `prozchain-discovery node` processes inside the lab's namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.natlab_fixture import natlab  # noqa: F401 - the fixture

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROZCHAIN_DIAL_LOOPBACK_ONLY", None)  # lab traffic stays inside its namespaces
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(lab, host: str, tmp: Path, toml: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    data = tmp / host
    data.mkdir()
    (data / "node.toml").write_text(toml)
    argv = [sys.executable, "-m", "prozchain_discovery", "node", "--config", str(data / "node.toml"),
            "--data-dir", str(data), "--status-interval", "0.3", "--log-level", "INFO", *extra]
    proc = lab.spawn(host, argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, data


def _status(data: Path) -> dict:
    try:
        return json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err or ""


def _miniupnpd_rules(lab) -> str:
    out = lab.run("upnp", ["iptables-legacy", "-t", "nat", "-S", "MINIUPNPD"], capture_output=True, text=True)
    return out.stdout


def test_a_node_behind_a_upnp_router_is_reachable_at_its_mapped_address(natlab, tmp_path):  # noqa: F811
    lab = natlab
    client, router = lab.hosts["upnp1"], lab.routers["upnp"]
    toml = ('network_id = "lab"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\n'
            '[bootstrap]\nmin_peers_for_startup = 1\n[nat]\nport_mapping = true\n')
    behind, data = _start(lab, "upnp1", tmp_path, toml)
    try:
        _wait(lambda: _status(data).get("nat", {}).get("port_mappings"), 20, "a port mapping")
        st = _status(data)
        mapped = f"/ip4/{router.wan_ip}/tcp/4001"
        assert st["nat"]["external_addrs"] == [mapped] and st["nat"]["reachability"] == "public"
        assert "4001" in _miniupnpd_rules(lab)
        # A node on a public host that knows only the mapped address joins through it.
        boot = f"{mapped}/p2p/{st['peer_id']}"
        pub_toml = ('network_id = "lab"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\n'
                    f'[bootstrap]\nmin_peers_for_startup = 1\nbootstrap_nodes = ["{boot}"]\n')
        public, pub_data = _start(lab, "pub1", tmp_path, pub_toml)
        try:
            _wait(lambda: _status(pub_data).get("connected", 0) >= 1, 20, "the public node to connect")
            assert _status(pub_data)["peers"][0]["peer_id"] == st["peer_id"]
        finally:
            _stop(public)
        assert client.ip not in json.dumps(_status(pub_data)["peers"])  # it came through the WAN side
    finally:
        err = _stop(behind)
    assert behind.returncode == 0, err[-2000:]
    assert "4001" not in _miniupnpd_rules(lab), "the mapping outlived the node"
