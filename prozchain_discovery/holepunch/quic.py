"""QUIC in DCUtR: predicted QUIC addresses, the client's dial, the other side's random packets.

The DCUtR spec's QUIC punch: the side that receives SYNC (our answering side) is the QUIC
*client* and dials the peer's addresses the moment SYNC arrives; the side that sent SYNC (our
driver), ``RTT/2`` later, sends UDP packets of random bytes to the peer's addresses, from its
QUIC listen socket, every 10-200 ms until a connection arrives. Its packets open its NAT's
mapping towards the client (and are dropped by the client's NAT or QUIC stack); the client's
Initial, sent from its own listen socket (quic_reuse.py), opens the client's mapping and then
finds the server's open. go-libp2p does the same (quic-go's ``HolePunch``, the simultaneous-
connect "server" side). Unlike TCP, there is no simultaneous open: one side is the QUIC client,
the other accepts on its listener, so the security roles come from QUIC's TLS handshake.

Both sides put QUIC and TCP addresses in CONNECT (``WAN IP + UDP listen port`` as
``/udp/P/quic-v1``, as for TCP), and :meth:`HolepunchService._dial_all` runs the QUIC and TCP
dials together: the first direct connection wins, the others are cancelled, and if two made it
:func:`keep_one_direct` closes all but one, by a rule both sides apply alike (QUIC first).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from .. import quic_reuse
from ..addrs import ip_of, is_relayed, port_of, strip_p2p
from ..net.sockets import is_relayed_conn

__all__ = ["is_quic", "quic_listen", "predicted", "dial", "send_punch_packets", "keep_one_direct",
           "PUNCH_PACKET_BYTES"]

log = logging.getLogger("prozchain_discovery.holepunch")

PUNCH_PACKET_BYTES = 64  # as go-libp2p's quic transport
PUNCH_INTERVAL = (0.010, 0.200)  # the spec's "random intervals between 10 and 200 ms"


def is_quic(addr: Multiaddr) -> bool:
    """A plain ``/ip4|ip6/A/udp/P/quic-v1`` address (not relayed, not webtransport)."""
    text = str(strip_p2p(addr))
    return "/udp/" in text and text.endswith("/quic-v1") and not is_relayed(addr)


def quic_listen(host: Any) -> tuple[str, int] | None:
    """Our QUIC listen (ip, port): a non-loopback IPv4 one if any."""
    best: tuple[str, int] | None = None
    for a in host.get_addrs():
        if not is_quic(a):
            continue
        ip, port = ip_of(a), port_of(a)
        if ip is None or port is None or ip.version != 4:
            continue
        if not ip.is_loopback:
            return (str(ip), port)
        best = best or (str(ip), port)
    return best


def predicted(host: Any, wan_ips: Iterable[str]) -> list[Multiaddr]:
    """``/ip4/<WAN IP>/udp/<QUIC listen port>/quic-v1`` per WAN IP: where a port-preserving NAT
    maps our listen socket (our QUIC dials and punch packets leave from it)."""
    listen = quic_listen(host)
    if listen is None or not quic_reuse.installed(quic_reuse.quic_transport(host)):
        return []  # without the shared socket our packets leave from elsewhere: nothing to predict
    out = []
    for wan in wan_ips:
        proto = "ip6" if ":" in wan else "ip4"
        out.append(Multiaddr(f"/{proto}/{wan}/udp/{listen[1]}/quic-v1"))
    return out


def _endpoint(addr: Multiaddr) -> tuple[str, int] | None:
    ip, port = ip_of(addr), port_of(addr)
    return None if ip is None or port is None else (str(ip), port)


async def dial(host: Any, peer: ID, addr: Multiaddr) -> Any:
    """Dial ``addr`` as the QUIC client (from our listen socket) and add the connection to the
    swarm, as ``Swarm.dial_addr`` does for a pre-multiplexed connection. Raises on failure."""
    swarm: Any = host.get_network()
    target = Multiaddr(f"{strip_p2p(addr)}/p2p/{peer}")
    transport = swarm.transport_manager.transport_for_dialing(target)
    if transport is None:
        raise OSError(f"no QUIC transport for {addr}")
    raw = await transport.dial(target)
    try:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            return await swarm.add_conn(raw, direction="outbound")
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await raw.close()
            except Exception:  # noqa: BLE001 - already closed
                pass
        raise


async def send_punch_packets(host: Any, addrs: list[Multiaddr], rng: random.Random | None = None) -> int:
    """Random UDP packets from our QUIC listen socket to each of ``addrs`` until cancelled;
    returns how many left. The first byte has QUIC's fixed bit cleared: no QUIC stack takes it
    for a packet (RFC 9000 §17: such packets are discarded)."""
    rng = rng or random.Random()
    targets = [e for a in addrs if (e := _endpoint(a)) is not None]
    sent = 0
    try:
        while targets:
            for target in targets:
                payload = bytearray(rng.randbytes(PUNCH_PACKET_BYTES))
                payload[0] &= 0x3F
                if await quic_reuse.send_from_listen_socket(host, bytes(payload), target):
                    sent += 1
            await trio.sleep(rng.uniform(*PUNCH_INTERVAL))
        await trio.sleep_forever()  # nothing to send to: wait for the other dials
    finally:
        log.debug("QUIC punch: %d random packets to %s", sent, targets)
    return sent  # pragma: no cover - the loop ends by cancellation


def _conn_is_quic(conn: Any) -> bool:
    try:
        return any(is_quic(a) or "/udp/" in str(a) for a in conn.get_transport_addresses())
    except Exception:  # noqa: BLE001
        return False


async def keep_one_direct(host: Any, peer: ID) -> Any | None:
    """Close all direct connections to ``peer`` but one, the same one on both sides (QUIC before
    TCP, then the oldest): the QUIC and TCP punches can both succeed. Returns the kept one."""
    try:
        conns = [c for c in host.get_network().get_connections(peer)
                 if not is_relayed_conn(c) and not getattr(c, "is_closed", False)]
    except Exception:  # noqa: BLE001 - a peer gone meanwhile
        return None
    if len(conns) <= 1:
        return conns[0] if conns else None
    keep = next((c for c in conns if _conn_is_quic(c)), conns[0])
    for c in conns:
        if c is not keep:
            try:
                await c.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
    return keep
