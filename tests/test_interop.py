"""Separate node processes on loopback find each other through a bootstrap node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_local_processes_join():
    out = subprocess.run(
        ["bash", str(ROOT / "interop" / "local_processes.sh"), "3", "6"],
        capture_output=True, text=True, timeout=90, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    peers_lines = [line for line in out.stdout.splitlines() if line.startswith("peers")]
    assert len(peers_lines) == 3, out.stdout
    for line in peers_lines:
        connected = int(line.split()[1])
        assert connected >= 3, out.stdout  # the bootstrap node and the two others
