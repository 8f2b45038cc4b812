"""STUN servers among our peers: ``/prozchain/stun/1.0`` (protocols/stun-service.md), both sides.

A node serving STUN (nat/stun_server.py) answers where; a node with no STUN server configured
asks connected peers whose identify lists the protocol. Only addresses at the IP we are
connected to the peer at are used, so a peer cannot aim our STUN traffic at a third party; at
most ``limit`` peers from distinct network groups are asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from ..net.exchange import ExchangeError, request, serve
from ..net.identify import listed_protocols
from ..net.sockets import direct_socket
from ..wire.messages import DecodeError
from ..wire.stun_service import STUN_SERVICE_PROTOCOL, StunServiceRequest, StunServiceResponse

__all__ = ["STUN_SERVICE_PROTOCOL", "serve_stun_service", "stun_servers_from_peers"]

log = logging.getLogger("prozchain_discovery.nat.stun_peers")

Addr = tuple[str, int]


def serve_stun_service(host: IHost, where: Callable[[], StunServiceResponse], timeout: float = 10.0) -> None:
    """Answer ``/prozchain/stun/1.0`` with ``where()`` (our STUN addresses)."""

    async def answer(data: bytes, _stream: INetStream) -> bytes:
        StunServiceRequest.decode(data)
        return where().encode()

    async def handler(stream: INetStream) -> None:
        await serve(stream, timeout, answer)

    host.set_stream_handler(STUN_SERVICE_PROTOCOL, handler)  # type: ignore[arg-type]


def _serves_stun(host: IHost, peer_id: ID) -> bool:
    return STUN_SERVICE_PROTOCOL in listed_protocols(host, peer_id)


async def stun_servers_from_peers(host: IHost, *, limit: int = 2, timeout: float = 3.0) -> tuple[list[Addr], list[str]]:
    """STUN servers (ip, port) offered by up to ``limit`` connected peers; and notes on refusals."""
    candidates: dict[str, tuple[ID, str]] = {}  # group -> (peer, its IP)
    for peer_id in list(host.get_network().get_connections_map()):
        if not _serves_stun(host, peer_id):
            continue
        sock = direct_socket(host, peer_id)
        if sock is not None and sock.group not in candidates:
            candidates[sock.group] = (peer_id, sock.remote[0])
    servers: list[Addr] = []
    notes: list[str] = []

    async def ask(peer_id: ID, ip: str) -> None:
        try:
            data, _ = await request(host, peer_id, STUN_SERVICE_PROTOCOL, StunServiceRequest().encode(), timeout)
            answer = StunServiceResponse.decode(data)
        except (ExchangeError, DecodeError) as exc:
            notes.append(f"{peer_id}: {exc}"[:160])
            return
        usable = [a for a in answer.addrs if a[0] == ip]
        if len(usable) < len(answer.addrs):
            notes.append(f"{peer_id}: ignored STUN addresses not at {ip}")
        servers.extend(usable[:1])  # one per peer: its OTHER-ADDRESS comes from STUN itself

    async with trio.open_nursery() as nursery:
        for peer_id, ip in list(candidates.values())[:limit]:
            nursery.start_soon(ask, peer_id, ip)
    return servers, notes
