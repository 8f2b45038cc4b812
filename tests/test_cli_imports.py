"""Commands that need no host import no libp2p (issue #15 item 5: importing it costs ~1 s).

Each case runs the command in a fresh interpreter and lists the modules it ended with; a test on
what is imported, never on how long it took.
"""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from prozchain_discovery.nat.stun_server import StunResponder, serve_stun

# What a host needs and these commands do not: libp2p and what only it (or a node) pulls in.
HOST_ONLY = ("libp2p", "multiaddr", "prometheus_client", "zeroconf", "aioquic")

PROBE = """
import json, sys
from prozchain_discovery.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help, --version
    code = exc.code
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}), file=sys.stderr)
"""


def _top_modules(*args: str) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def test_help_and_version_import_no_host(tmp_path):
    for args in (["--help"], ["--version"], [], ["node", "--help"]):
        code, modules = _top_modules(*args)
        assert code == 0, args
        assert not modules & set(HOST_ONLY), (args, modules & set(HOST_ONLY))
        assert "trio" not in modules and "aioice" not in modules, args


def test_status_imports_no_host(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({
        "peer_id": "12D3KooWExample", "network_id": "n", "phase": "ready", "uptime": 3,
        "connected": 0, "outbound": 0, "min_peers": 8, "by_source": {}, "peerdb": "0 peers",
        "peers": [],
    }))
    code, modules = _top_modules("status", "--data-dir", str(tmp_path))
    assert code == 0
    assert not modules & set(HOST_ONLY), modules & set(HOST_ONLY)
    assert "trio" not in modules


async def test_nat_imports_no_host():
    async with trio.open_nursery() as nursery:
        server: StunResponder = await nursery.start(serve_stun, ["127.0.0.1", "127.0.0.2"], [0, 0])
        proc = await trio.run_process(
            [sys.executable, "-c", PROBE, "nat", "--json", "--stun", f"127.0.0.1:{server.primary[1]}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    result = json.loads(proc.stdout)
    assert result["nat_type"] == "open", result  # it did classify
    report = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert report["code"] == 0
    modules = set(report["modules"])
    assert not modules & set(HOST_ONLY), modules & set(HOST_ONLY)
