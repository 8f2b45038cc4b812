"""QUIC dials leave from the QUIC listen socket: one UDP socket listens and dials (as quic-go).

py-libp2p 0.8.1's ``QUICTransport.dial`` gives every outbound connection a new UDP socket bound
to an ephemeral port (``QUICConnection._initiate_connection`` binds ``0.0.0.0:0``). Behind a NAT
that is a new mapping per dial, on a port nobody was told about: a hole punch's outgoing packets
open a mapping the peer never hits, and the peer's packets to our advertised (listen) port are
dropped by our NAT. go-libp2p's quic-go transport sends every dial from the listen socket.

What this module does, per host (:func:`install`):

* ``QUICTransport.dial`` is replaced by :func:`_dial`: when the transport has a listener of the
  remote's address family, the client connection is a :class:`SharedSocketConnection` built on
  the listener's socket (``listener_socket=``, so closing the connection never closes the
  socket). Its ``_initiate_connection`` only starts the handshake (upstream's would re-bind the
  socket; with a socket given it raises ``UnboundLocalError`` on ``family``) and it runs no
  receive loop of its own (two readers on one socket would steal each other's datagrams).
* The listener's socket is read by the listener alone. Each listener's ``_process_packet`` is
  wrapped: a datagram whose destination connection id is one of our client connections' source
  ids (``QuicConnection._host_cids``: the ids the server addresses us by) goes to that client
  connection, as upstream routes a packet to a server connection; anything else goes on to
  upstream's demultiplexer unchanged.
* With no listener (a node that dials QUIC but does not listen on it), upstream's dial runs.

:func:`send_from_listen_socket` sends raw datagrams from the same socket: the QUIC hole punch's
random packets (holepunch/quic.py) must leave from the port the NAT mapping is for.
"""

from __future__ import annotations

import copy
import logging
import socket
import time
from typing import Any

import multiaddr
import trio

__all__ = ["install", "SharedSocketConnection", "listen_socket", "send_from_listen_socket", "installed"]

log = logging.getLogger("prozchain_discovery.quic")

PATCH = "quic_dial_from_listen_socket"


def _quic_classes() -> tuple[Any, Any, Any]:
    from libp2p.transport.quic.connection import QUICConnection
    from libp2p.transport.quic.listener import QUICListener
    from libp2p.transport.quic.transport import QUICTransport

    return QUICTransport, QUICListener, QUICConnection


def _make_connection_class() -> Any:
    _, _, QUICConnection = _quic_classes()

    class _Shared(QUICConnection):  # type: ignore[misc, valid-type]
        """A client QUIC connection that sends from, and is fed by, the listener's socket."""

        async def _initiate_connection(self) -> None:
            self._quic.connect(self._remote_addr, now=time.time())
            await self._transmit()

        async def _client_packet_receiver(self) -> None:
            # The listener reads the socket and routes our datagrams here (module docstring).
            await self._closed_event.wait()

    _Shared.__name__ = _Shared.__qualname__ = "SharedSocketConnection"
    return _Shared


SharedSocketConnection: Any = None  # the class, made on first install (imports py-libp2p's QUIC lazily)


class _ClientTable:
    """Our client connections that share a transport's listen sockets, found by connection id."""

    def __init__(self) -> None:
        self.conns: list[Any] = []

    def add(self, conn: Any) -> None:
        self.conns.append(conn)

    def discard(self, conn: Any) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def find(self, data: bytes) -> Any | None:
        """The client connection ``data`` (a QUIC datagram) is addressed to, or None."""
        if not data:
            return None
        long_header = bool(data[0] & 0x80)
        if long_header:
            if len(data) < 6:
                return None
            dcid = data[6 : 6 + data[5]]
        closed = [c for c in self.conns if getattr(c, "_closed", False)]
        for c in closed:
            self.conns.remove(c)
        for conn in self.conns:
            for host_cid in getattr(conn._quic, "_host_cids", ()):
                cid = host_cid.cid
                if (dcid == cid) if long_header else (data[1 : 1 + len(cid)] == cid):
                    return conn
        return None


def listen_socket(transport: Any, family: int = socket.AF_INET) -> Any | None:
    """The bound UDP socket of ``transport``'s first listening QUIC listener of ``family``."""
    for listener in list(getattr(transport, "_listeners", ())):
        sock = getattr(listener, "_socket", None)
        if sock is None or not listener.is_listening():
            continue
        if sock.family == family:
            return sock
    return None


def quic_transport(host: Any) -> Any | None:
    """The QUIC transport of ``host``'s swarm, or None (a TCP-only node)."""
    QUICTransport, _, _ = _quic_classes()
    manager = getattr(host.get_network(), "transport_manager", None)
    if manager is None:
        return None
    for t in manager.get_transports():
        if isinstance(t, QUICTransport):
            return t
    return None


def installed(transport: Any) -> bool:
    return isinstance(getattr(transport, "_pzq_clients", None), _ClientTable)


async def send_from_listen_socket(host: Any, data: bytes, addr: tuple[str, int]) -> bool:
    """Send one raw datagram from ``host``'s QUIC listen socket; False if it has none."""
    transport = quic_transport(host)
    if transport is None:
        return False
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = listen_socket(transport, family)
    if sock is None:
        return False
    try:
        await sock.sendto(data, addr)
    except OSError as exc:  # unreachable, no route: the punch's packets are best effort
        log.debug("QUIC punch packet to %s failed: %s", addr, exc)
        return False
    return True


def _wrap_listener(listener: Any, clients: _ClientTable) -> None:
    upstream = listener._process_packet

    async def process_packet(data: bytes, addr: tuple[str, int]) -> None:
        conn = clients.find(data)
        if conn is None:
            await upstream(data, addr)
            return
        try:  # as upstream's QUICListener._route_to_connection
            conn._quic.receive_datagram(data, addr, now=time.time())
            conn._signal_activity()
            await conn._process_quic_events_batched()
            await conn._transmit()
        except Exception as exc:  # noqa: BLE001 - one connection's trouble, never the listener's
            log.debug("QUIC client packet from %s: %s", addr, exc)

    listener._process_packet = process_packet


async def _dial(transport: Any, maddr: multiaddr.Multiaddr, upstream: Any) -> Any:
    """``QUICTransport.dial`` from the listen socket (module docstring); upstream's without one."""
    from aioquic.quic.connection import QuicConnection as NativeQUICConnection
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.transport.quic.exceptions import QUICDialError
    from libp2p.transport.quic.utils import (
        is_quic_multiaddr,
        multiaddr_to_quic_version,
        quic_multiaddr_to_endpoint,
    )

    if transport._closed or not is_quic_multiaddr(maddr):
        return await upstream(maddr)
    host, port = quic_multiaddr_to_endpoint(maddr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = listen_socket(transport, family)
    if sock is None or transport._background_nursery is None:
        return await upstream(maddr)
    peer_text = maddr.get_peer_id()
    if peer_text is None:
        raise QUICDialError("Unable to derive peer id from multiaddr")
    config = transport._quic_configs.get(TProtocol(f"{multiaddr_to_quic_version(maddr)}_client"))
    if config is None:
        raise QUICDialError(f"Unsupported QUIC version in {maddr}")
    config = copy.copy(config)
    config.is_client = True
    conn = SharedSocketConnection(
        quic_connection=NativeQUICConnection(configuration=config),
        remote_addr=(host, port),
        remote_peer_id=ID.from_string(peer_text),
        local_peer_id=transport._peer_id,
        is_initiator=True,
        maddr=maddr,
        transport=transport,
        security_manager=transport._security_manager,
        listener_socket=sock,
    )
    clients: _ClientTable = transport._pzq_clients
    clients.add(conn)  # before the first packet leaves: the server's answer comes to the listener
    try:
        await conn.connect(transport._background_nursery)
    except BaseException as exc:
        clients.discard(conn)
        with trio.CancelScope(shield=True):
            try:
                await conn.close()
            except Exception:  # noqa: BLE001
                pass
        if isinstance(exc, trio.Cancelled):
            raise
        raise QUICDialError(f"Dial failed: {exc}") from exc
    transport._connections[f"{host}:{port}"] = conn
    return conn


def install(host: Any) -> bool:
    """Make ``host``'s QUIC dials leave from its QUIC listen socket; False if it has no QUIC."""
    global SharedSocketConnection
    from .libp2p_fixes import _require, _require_method

    transport = quic_transport(host)
    if transport is None:
        return False
    if installed(transport):
        return True
    QUICTransport, QUICListener, QUICConnection = _quic_classes()
    for name, params in (("_initiate_connection", ["self"]), ("_client_packet_receiver", ["self"]),
                         ("_process_quic_events_batched", ["self"]), ("_transmit", ["self"])):
        _require_method(QUICConnection, name, PATCH, is_async=True, params=params)
    _require_method(QUICConnection, "_signal_activity", PATCH, is_async=False)
    _require_method(QUICListener, "_process_packet", PATCH, is_async=True, params=["self", "data", "addr"])
    _require_method(QUICTransport, "create_listener", PATCH, is_async=False)
    for attr in ("_quic_configs", "_listeners", "_connections", "_security_manager", "_peer_id"):
        _require(transport, attr, PATCH)
    if SharedSocketConnection is None:
        SharedSocketConnection = _make_connection_class()

    clients = _ClientTable()
    transport._pzq_clients = clients
    upstream_dial = transport.dial
    upstream_create = transport.create_listener

    async def dial(maddr: multiaddr.Multiaddr) -> Any:
        return await _dial(transport, maddr, upstream_dial)

    def create_listener(handler_function: Any) -> Any:
        listener = upstream_create(handler_function)
        _wrap_listener(listener, clients)
        return listener

    transport.dial = dial
    transport.create_listener = create_listener
    for listener in list(transport._listeners):  # listeners made before install
        _wrap_listener(listener, clients)
    return True
