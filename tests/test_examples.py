"""The README's library example is a file, and it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embed_example_joins():
    env = {**os.environ, "PROZCHAIN_DIAL_LOOPBACK_ONLY": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "embed.py")], capture_output=True,
                         text=True, timeout=60, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "joined after" in out.stdout and "bootstrap=1" in out.stdout.replace("'", "").replace(": ", "=")
