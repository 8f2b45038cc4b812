"""The command line: a real node process, its identity, status and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from prozchain_discovery.cli import main

pytestmark = pytest.mark.network


def _start(data_dir, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    env = dict(os.environ, PROZCHAIN_DIAL_LOOPBACK_ONLY="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prozchain_discovery", "node", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--data-dir", str(data_dir), "--min-peers", "1", "--status-interval", "0.5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip()]
    return proc, lines


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_node_prints_p2p_addresses_keeps_identity_and_stops_cleanly(tmp_path):
    proc, lines = _start(tmp_path)
    try:
        first = lines[0]
        assert first.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in first
        key = tmp_path / "identity.key"
        deadline = time.monotonic() + 10
        while not (tmp_path / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "stopped cleanly" in err
    # Same data dir, same peer id.
    proc, lines = _start(tmp_path)
    try:
        assert lines[0].split("/p2p/")[1] == first.split("/p2p/")[1]
    finally:
        _stop(proc)


def test_status_command(tmp_path, capsys):
    proc, lines = _start(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert main(["status", "--data-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert lines[0].split("/p2p/")[1] in out and "network" in out
    finally:
        _stop(proc)


def test_bad_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[bootstrap]\nbootstrap_nodes = ["/ip4/1.2.3.4/tcp/1"]\n')
    assert main(["node", "--config", str(cfg), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bootstrap.bootstrap_nodes[0]" in err and "/p2p/" in err


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "node" in out and "demo" in out and "status" in out
