"""Helpers for multi-host tests on loopback: real py-libp2p hosts, real services."""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import multiaddr
import trio

from prozchain_discovery.config import (
    BackoffConfig,
    BootstrapConfig,
    DiscoveryConfig,
    PeerDbSettings,
    PexConfig,
    ServerConfig,
)
from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.service import DiscoveryService

LOOP = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
NET = "prozchain-test"


def cfg(
    *,
    bootstrap: tuple[str, ...] = (),
    static: tuple[str, ...] = (),
    dns_seeds: tuple[str, ...] = (),
    min_peers: int = 3,
    network_id: str = NET,
    answer: int = 50,
    target_outbound: int = 0,
    pex: bool = False,
    peerdb_path: str = ":memory:",
    **boot: Any,
) -> DiscoveryConfig:
    return DiscoveryConfig(
        network_id=network_id,
        listen=("/ip4/127.0.0.1/tcp/0",),
        bootstrap=BootstrapConfig(
            bootstrap_nodes=bootstrap,
            static_peers=static,
            dns_seeds=dns_seeds,
            min_peers_for_startup=min_peers,
            dial_timeout=boot.pop("dial_timeout", 3.0),
            check_interval=boot.pop("check_interval", 0.5),
            backoff=boot.pop("backoff", BackoffConfig(base=0.2, step=0.1, cap=2.0)),
            **boot,
        ),
        pex=PexConfig(enabled=pex, min_peer_age=0.0, exchange_interval=1.0, first_request_delay=0.05),
        peerdb=PeerDbSettings(path=peerdb_path, target_outbound=target_outbound, flush_interval=0.5,
                              debug_checks=True),
        server=ServerConfig(max_bootstrap_answer=answer, max_bootstrap_answer_as_bootstrap_node=answer,
                            request_timeout=2.0),
    )


class Net:
    """Owns hosts and services for one test; everything stops when the stack closes."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack

    async def host(self, key: Any = None):
        h = make_host(key, listen_addrs=LOOP)
        await self.stack.enter_async_context(run_host(h, LOOP))
        return h

    async def node(self, config: DiscoveryConfig, *, key: Any = None, data_dir: Any = None,
                   stack: AsyncExitStack | None = None) -> DiscoveryService:
        st = stack or self.stack
        h = make_host(key, listen_addrs=LOOP)
        await st.enter_async_context(run_host(h, LOOP))
        return await st.enter_async_context(DiscoveryService(h, config, data_dir=data_dir).run())

    async def ring(self, n: int, config: DiscoveryConfig | None = None) -> list[DiscoveryService]:
        """``n`` plain nodes that know nobody (they will be found through others)."""
        c = config or cfg(min_peers=1)
        return [await self.node(c) for _ in range(n)]


def addr_of(svc_or_host: Any) -> str:
    host = getattr(svc_or_host, "host", svc_or_host)
    return str(host.get_addrs()[0])


def black_hole() -> tuple[socket.socket, str]:
    """A loopback TCP port that accepts connections (backlog) but never speaks."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"/ip4/127.0.0.1/tcp/{port}"


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)
    return trio.current_time() - start


def with_min(c: DiscoveryConfig, n: int) -> DiscoveryConfig:
    return replace(c, bootstrap=replace(c.bootstrap, min_peers_for_startup=n))
