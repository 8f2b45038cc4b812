"""AutoNAT v2 against js-libp2p 3 on loopback, with @libp2p/autonat-v2's own protobuf codec.

interop/autonat_v2/peer.mjs runs the js side (its header says why not the stock service: it
refuses private and documentation addresses). Both directions: a js client asks our server (its
own address, then a third party's: the amplification guard asks it to pay, the js client pays
in 4096-byte pieces, our server dials the third party's address and finds nothing there); our
client asks a js server, which dials back on a new connection.

Needs Node.js 20 and npm (skipped otherwise; failed under CI=true); runs ``npm ci`` in
interop/autonat_v2 when node_modules is older than its package-lock.json.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from interop.procs import node_available, npm_ci
from prozchain_discovery.addrs import strip_p2p
from prozchain_discovery.config import NatSettings
from prozchain_discovery.nat.autonat_core import ProbeOutcome
from tests.netutil import Net, addr_of, cfg, closed_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

JS = Path(__file__).resolve().parent.parent / "interop" / "autonat_v2"


def _require_js() -> None:
    """Node and npm, and ``npm ci`` in interop/autonat_v2 when its lock file is newer."""
    if not node_available():
        why = "Node.js 20 and npm are needed for the js AutoNAT v2 interop tests (apt-get install nodejs npm)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    npm_ci(JS)


def _cfg():
    c = cfg(min_peers=1)
    return replace(c, nat=NatSettings(autonat_allow_private=True, autonat_client=False,
                                      autonat_dial_back_timeout=5.0))


async def test_a_js_client_is_served_by_our_server_and_a_third_party_must_be_paid_for():
    _require_js()
    async with AsyncExitStack() as stack:
        net = Net(stack)
        server = await net.node(_cfg())
        third = closed_port().replace("127.0.0.1", "127.0.0.2")
        out = await trio.run_process(
            ["node", str(JS / "peer.mjs"), "client", "--server", addr_of(server), "--third", third],
            capture_stdout=True, capture_stderr=True, check=False, cwd=JS,
        )
        lines = [json.loads(x) for x in out.stdout.decode().splitlines() if x.startswith("{")]
        results = [x for x in lines if x["event"] == "result"]
        assert len(results) == 2, (lines, out.stderr.decode()[-2000:])
        own, paid = results
        assert own["status"] == "OK" and own["dialStatus"] == "OK" and own["paid"] == "0"
        assert own["nonceBack"] and own["newConnection"] and own["backFrom"] != own["server"]
        assert paid["status"] == "OK" and paid["dialStatus"] == "E_DIAL_ERROR"
        assert 30_000 <= int(paid["paid"]) <= 100_000 + 4096
        assert server.metrics.get("autonat_dial_backs", result="ok") == 1
        assert server.metrics.get("autonat_dial_backs", result="dial_error") == 1


async def test_our_client_is_served_by_a_js_server_on_a_new_connection():
    _require_js()
    async with AsyncExitStack() as stack:
        net = Net(stack)
        client = await net.node(_cfg())
        proc = await stack.enter_async_context(trio.open_nursery())
        js = await trio.lowlevel.open_process(
            ["node", str(JS / "peer.mjs"), "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=JS,
        )
        try:
            buf = b""
            with trio.fail_after(30):
                while b"\n" not in buf:
                    buf += await js.stdout.receive_some(4096)  # type: ignore[union-attr]
            hello = json.loads(buf.split(b"\n")[0])
            js_addr = f"{hello['addrs'][0]}"
            await client.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(js_addr)))
            from libp2p.peer.id import ID

            js_id = ID.from_base58(hello["peer"])
            own = str(strip_p2p(client.host.get_addrs()[0]))
            assert await client.autonat.probe(js_id, own) is ProbeOutcome.REACHABLE
            assert await client.autonat.probe(js_id, closed_port()) is ProbeOutcome.UNREACHABLE
            assert client.metrics.get("autonat_dial_backs_received", result="ok") == 1
        finally:
            proc.cancel_scope.cancel()
            await js.stdin.aclose()  # type: ignore[union-attr]
            with trio.move_on_after(10):
                await js.wait()
            if js.returncode is None:
                js.kill()
                await js.wait()
