"""The kernel socket under a py-libp2p connection: its local and remote address.

py-libp2p 0.8.1 exposes the remote address of a connection but not the local one, which the NAT
component needs to tell whether a NAT kept our source port (nat/observed_mapping.py). The socket
sits a few wrappers down (swarm connection → muxer → secure session → raw connection → trio
stream → socket) under attribute names that differ between transports and versions, so this
walks the known names, bounded, instead of hard-coding one chain.
"""

from __future__ import annotations

import ipaddress
import socket as _socket
import struct
from dataclasses import dataclass
from typing import Any

import multiaddr

from ..addrs import network_group

__all__ = [
    "local_socket_addr", "socket_addrs", "is_relayed_conn", "is_open_conn", "initiated_locally",
    "DirectSocket", "direct_socket", "abortive_close",
]

_CHAIN = ("muxed_conn", "secured_conn", "conn", "raw_conn", "stream", "socket", "_socket", "read_writer")


def _layers(obj: Any, depth: int = 8) -> Any:
    """``obj`` and what it wraps, outermost first, bounded."""
    seen: set[int] = set()
    frontier = [obj]
    for _ in range(depth):
        nxt: list[Any] = []
        for o in frontier:
            if o is None or id(o) in seen:
                continue
            seen.add(id(o))
            yield o
            nxt.extend(getattr(o, name, None) for name in _CHAIN)
        frontier = nxt


def initiated_locally(conn: Any) -> bool:
    """Whether we dialed ``conn`` (a swarm connection): its direction, else its muxer's role."""
    direction = getattr(conn, "direction", None)
    name = getattr(direction, "name", "")
    if name in ("OUTBOUND", "INBOUND"):
        return bool(name == "OUTBOUND")
    return bool(getattr(getattr(conn, "muxed_conn", None), "is_initiator", False))


def is_open_conn(conn: Any) -> bool:
    """Neither ``conn`` nor its muxer is closed (py-libp2p lists a closing one for a while)."""
    return not (getattr(conn, "is_closed", False) or getattr(getattr(conn, "muxed_conn", None), "is_closed", False))


def is_relayed_conn(conn: Any) -> bool:
    """Whether ``conn`` (a connection, its muxer or a layer under it) runs through a circuit relay.

    A relayed connection wraps a stream of the relay's connection, so the socket under it is our
    socket *to the relay*: its addresses say nothing about the remote peer or our NAT.
    """
    for layer in _layers(conn):
        kind = getattr(layer, "get_connection_type", None)
        if callable(kind):
            try:
                if getattr(kind(), "name", "") == "RELAYED":
                    return True
            except Exception:  # a layer torn down while we look
                pass
        addrs = getattr(layer, "get_transport_addresses", None)
        if callable(addrs):
            try:
                if any("/p2p-circuit" in str(a) for a in addrs() or ()):
                    return True
            except Exception:
                pass
    return False


def _find_socket(obj: Any) -> Any:
    for layer in _layers(obj):
        if callable(getattr(layer, "getsockname", None)) and hasattr(layer, "family"):
            return layer
    return None


def abortive_close(conn: Any, on: bool = True) -> bool:
    """Make closing ``conn``'s socket send RST (SO_LINGER 0), or (``on=False``) a normal FIN
    again. A punched TCP connection that loses its race (upgrade failed, wrong peer, another
    dial won) must not leave its 4-tuple in TIME_WAIT: the next punch between the same two
    listen ports would fail with EADDRNOTAVAIL for a minute. False when no socket is found."""
    sock = _find_socket(conn)
    if sock is None:
        return False
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0) if on else struct.pack("ii", 0, 0))
    except OSError:
        return False
    return True


def _pair(name: Any) -> tuple[str, int] | None:
    if isinstance(name, tuple) and len(name) >= 2 and isinstance(name[0], str) and isinstance(name[1], int):
        return name[0], name[1]
    return None


def socket_addrs(conn: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """((local ip, port), (remote ip, port)) of ``conn``, or None (relayed, QUIC, closed)."""
    if is_relayed_conn(conn):
        return None
    sock = _find_socket(conn)
    if sock is None:
        return None
    try:
        local, remote = _pair(sock.getsockname()), _pair(sock.getpeername())
    except OSError:
        return None
    return (local, remote) if local is not None and remote is not None else None


def local_socket_addr(conn: Any) -> tuple[str, int] | None:
    """(ip, port) of our end of ``conn`` (a py-libp2p connection), or None."""
    both = socket_addrs(conn)
    return both[0] if both is not None else None


@dataclass(frozen=True, slots=True)
class DirectSocket:
    """Our end and the peer's end of a direct (not relayed) connection, and the peer's group."""

    local: tuple[str, int]
    remote: tuple[str, int]
    group: str


def direct_socket(host: Any, peer_id: Any) -> DirectSocket | None:
    """The first direct connection to ``peer_id`` with a socket under it, or None (none open,
    relayed or QUIC only, or a host without a swarm)."""
    try:
        conns = host.get_network().get_connections(peer_id)
    except Exception:  # a host stand-in, or a peer gone meanwhile
        return None
    for conn in conns:
        addrs = socket_addrs(conn)
        if addrs is None:
            continue
        local, (ip, port) = addrs
        try:
            proto = "ip4" if ipaddress.ip_address(ip).version == 4 else "ip6"
        except ValueError:
            continue
        return DirectSocket(local, (ip, port), network_group(multiaddr.Multiaddr(f"/{proto}/{ip}/tcp/{port}")))
    return None
