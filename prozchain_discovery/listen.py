"""Listen addresses: can this node listen there? Checked before the host starts, and after.

py-libp2p 0.8.1 skips an address it cannot listen on (no transport for it, a bind error) with a
debug log line and starts anyway, so a node given only bad addresses runs with none. Before the
host starts, :func:`check_listen_addrs` refuses what py-libp2p would skip: anything but
``/ip4|ip6/<address>/tcp/<port>`` and ``/ip4|ip6/<address>/udp/<port>/quic-v1`` (the two
transports :func:`~prozchain_discovery.host.make_host` sets up), and an address a plain socket
(TCP or UDP) cannot bind, with the errno text and a hint (``[Errno 98] Address already in
use``). The plain socket has no ``SO_REUSEPORT``, so it also finds a port held by another
py-libp2p node, which py-libp2p's own listener (``SO_REUSEPORT``) would silently share. After the start, :func:`not_listening` compares the host's listeners with
what was asked (a port taken in between).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import multiaddr

__all__ = ["SUPPORTED", "listen_problem", "check_listen_addrs", "not_listening"]

SUPPORTED = "/ip4|ip6/<address>/tcp/<port> or /ip4|ip6/<address>/udp/<port>/quic-v1"

_HINTS = {
    errno.EADDRINUSE: "another program or node is listening on port {port}",
    errno.EADDRNOTAVAIL: "{ip} is not an address of this machine",
    errno.EACCES: "ports below 1024 need privileges",
    errno.EAFNOSUPPORT: "this machine has no IPv{version}",
}


def _target(text: str) -> tuple[str, int, int] | str:
    """``(ip, port, socket type)`` of a supported listen address, or why it is not supported."""
    try:
        ma = multiaddr.Multiaddr(text)
        parts = [(proto.name, value) for proto, value in ma.items()]
    except Exception as exc:  # multiaddr raises a zoo of exception types
        return f"not a valid multiaddr ({exc})"
    names = [name for name, _ in parts]
    if len(names) < 2 or names[0] not in ("ip4", "ip6"):
        return f"not a transport this node has (it listens on {SUPPORTED})"
    if names[1:] == ["tcp"]:
        kind = socket.SOCK_STREAM
    elif names[1:] == ["udp", "quic-v1"]:
        kind = socket.SOCK_DGRAM
    elif names[1:] == ["udp", "quic"]:
        return f"QUIC draft-29 (/quic) is not supported: use /quic-v1 (it listens on {SUPPORTED})"
    else:
        return f"not a transport this node has (it listens on {SUPPORTED})"
    try:
        ip = ipaddress.ip_address(parts[0][1])
        port = int(parts[1][1])
    except ValueError as exc:
        return f"not a valid address ({exc})"
    return str(ip), port, kind


def _bind_problem(ip: str, port: int, kind: int = socket.SOCK_STREAM) -> str | None:
    """Bind a plain socket (``SO_REUSEADDR`` as a listener has; no ``SO_REUSEPORT``) and close it.

    ``kind`` is ``SOCK_STREAM`` for TCP, ``SOCK_DGRAM`` for QUIC's UDP socket."""
    version = ipaddress.ip_address(ip).version
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        return _describe(exc, ip, port, version)
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
        except OSError as exc:
            return _describe(exc, ip, port, version)
    return None


def _describe(exc: OSError, ip: str, port: int, version: int) -> str:
    text = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)
    hint = _HINTS.get(exc.errno or 0)
    return f"{text} ({hint.format(ip=ip, port=port, version=version)})" if hint else text


def listen_problem(text: str) -> str | None:
    """Why this node cannot listen on ``text`` (one line, without the address), or None."""
    target = _target(text)
    if isinstance(target, str):
        return target
    return _bind_problem(*target)


def check_listen_addrs(addrs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split ``addrs`` into those this node can listen on and ``(addr, problem)`` for the rest."""
    ok: list[str] = []
    failed: list[tuple[str, str]] = []
    for text in addrs:
        problem = listen_problem(text)
        if problem is None:
            ok.append(text)
        else:
            failed.append((text, problem))
    return ok, failed


def not_listening(host: Any, addrs: Sequence[str]) -> list[str]:
    """Those of ``addrs`` the running ``host`` has no listener for."""
    listeners = getattr(host.get_network(), "listeners", None)
    if not isinstance(listeners, dict):
        return []  # not a swarm we know how to look into: trust it
    return [text for text in addrs if str(multiaddr.Multiaddr(text)) not in listeners]
