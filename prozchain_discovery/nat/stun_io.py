"""The trio adapter of the STUN classifier: one UDP socket, bytes and time in and out.

:func:`classify_nat` resolves the servers, binds one socket, learns the local address (when
bound to a wildcard, from a second socket *connected* towards the first server: the kernel's
choice of source IP, so "mapped = local" can be told), then sends what
:class:`~.classify.NatClassifier` says, receives until its next deadline and feeds it the
datagrams and the time. All decisions live in the classifier.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import trio

from .classify import NatClassification, NatClassifier
from .stun import Addr, StunError, format_addr, norm_addr, parse_stun_server

__all__ = ["NoStunServer", "classify_nat", "parse_stun_server", "resolve_servers", "local_address"]

RECV_SIZE = 2048  # larger than stun.MAX_DATAGRAM, so an oversize datagram is seen as one


class NoStunServer(StunError):
    """None of the STUN servers could be resolved to an address of the socket's family."""


async def resolve_servers(
    servers: Sequence[tuple[str, int]], family: int, *, timeout: float = 5.0
) -> tuple[list[Addr], list[str]]:
    """(host, port) → (IP literal, port) of ``family``, in order; and what could not be resolved."""
    out: list[Addr] = []
    failed: list[str] = []
    for host, port in servers:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            if (ip.version == 6) == (family == trio.socket.AF_INET6):
                out.append(norm_addr((str(ip), port)))
            else:
                failed.append(f"{format_addr((host, port))} (other address family)")
            continue
        infos = []
        with trio.move_on_after(timeout):
            try:
                infos = await trio.socket.getaddrinfo(host, port, family, trio.socket.SOCK_DGRAM)
            except OSError:
                pass
        if infos:
            out.append(norm_addr(infos[0][4]))
        else:
            failed.append(f"{host}:{port} (not resolved)")
    return out, failed


async def local_address(sock: trio.socket.SocketType, towards: Addr) -> Addr:
    """The socket's address; a wildcard IP replaced by the source IP the kernel picks for
    ``towards`` (a connected UDP socket sends nothing)."""
    host, port = norm_addr(sock.getsockname())
    if not ipaddress.ip_address(host).is_unspecified:
        return host, port
    probe = trio.socket.socket(sock.family, trio.socket.SOCK_DGRAM)
    try:
        await probe.connect(towards)
        return norm_addr(probe.getsockname())[0], port
    except OSError:  # no route: keep the wildcard (then "mapped = local" is never concluded)
        return host, port
    finally:
        probe.close()


async def classify_nat(
    servers: Sequence[tuple[str, int]],
    *,
    bind: tuple[str, int] = ("0.0.0.0", 0),
    rto: float = 0.5,
    max_sends: int = 7,
    final_wait: float = 16.0,
    filter_floor: float = 0.3,
    filter_rtt_factor: float = 4.0,
    server_timeout: float | None = None,
    urandom: Callable[[int], bytes] = os.urandom,
) -> NatClassification:
    """Classify the NAT in front of ``bind`` with the STUN ``servers`` (host, port), tried in
    order; see :mod:`.classify` for the tests and their timing. Raises :class:`NoStunServer`
    if no server resolves, ``OSError`` if the socket cannot be bound."""
    family = trio.socket.AF_INET6 if ":" in bind[0] else trio.socket.AF_INET
    targets, failed = await resolve_servers(servers, family)
    if not targets:
        raise NoStunServer("no STUN server to ask: " + (", ".join(failed) or "none given"))
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        await sock.bind(bind)
        local = await local_address(sock, targets[0])
        clf = NatClassifier(
            targets,
            local,
            rto=rto,
            max_sends=max_sends,
            final_wait=final_wait,
            filter_floor=filter_floor,
            filter_rtt_factor=filter_rtt_factor,
            server_timeout=server_timeout,
            urandom=urandom,
        )
        send_errors = await _drive(clf, sock)
    finally:
        sock.close()
    result = clf.result()
    if result is None:  # the classifier always ends with a verdict; this is a guard
        raise StunError("the classifier stopped without a verdict")
    notes = [result.note] if result.note else []
    if failed:
        notes.append("skipped " + ", ".join(failed))
    stats = dict(result.stats, send_errors=send_errors)
    return replace(result, note="; ".join(notes), stats=stats)


async def _drive(clf: NatClassifier, sock: trio.socket.SocketType) -> int:
    """Move bytes and time between ``sock`` and ``clf`` until it has a verdict."""
    send_errors = 0
    clf.start(trio.current_time())
    while not clf.done:
        for payload, dst in clf.datagrams_to_send(trio.current_time()):
            try:
                await sock.sendto(payload, dst)
            except OSError:  # unreachable network: the transaction times out like a loss
                send_errors += 1
        deadline = clf.next_deadline()
        if deadline is None:
            break
        with trio.move_on_at(deadline):
            try:
                data, src = await sock.recvfrom(RECV_SIZE)
            except OSError:  # an ICMP error reported on the socket
                await trio.lowlevel.checkpoint()
            else:
                clf.receive_datagram(data, (src[0], src[1]), trio.current_time())
        clf.on_timer(trio.current_time())
    return send_errors
