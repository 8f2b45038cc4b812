"""Circuit relay v2 on the wire, client side: reserve on a relay, dial through one.

Two things py-libp2p 0.8.1 does not give us in a usable form:

* ``host.connect()`` never dials ``/p2p-circuit`` addresses (``Swarm.dial_peer`` drops them as
  "relay-only"). :class:`CircuitDialer` is a :class:`~..ports.DialTransport` the composition
  root hands to the Dialer; it dials through ``CircuitV2Transport.dial``, which registers an
  ordinary swarm connection, with ``RelayRole.STOP`` so that dialing does not also take a
  reservation slot on the relay (py-libp2p's CLIENT default does).
* ``CircuitV2Transport.reserve`` runs its own refresh loop (and spins without sleeping for a
  TTL of 30 s or less). :func:`reserve` is one RESERVE exchange; when to renew is the autorelay
  policy's decision (relay/policy.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from ..addrs import is_relayed, peer_id_of

__all__ = ["CircuitDialer", "ReservationError", "ReservationReply", "reserve", "HOP_PROTOCOL", "circuit_addr"]

log = logging.getLogger("prozchain_discovery.relay")

MAX_RESERVATION_ADDRS = 16  # a relay's answer lists its addresses; more is not useful


class ReservationError(Exception):
    """A reservation was not granted. ``status`` is the relay's status code, 0 if none came."""

    def __init__(self, relay: ID, status: int, why: str) -> None:
        super().__init__(f"reservation on {relay} refused: {why} (status {status})")
        self.relay = relay
        self.status = status


@dataclass(frozen=True)
class ReservationReply:
    expire: int  # unix seconds, as the relay says
    addrs: tuple[multiaddr.Multiaddr, ...]  # the relay's addresses, each ending in /p2p/<relay>
    limit_duration: int
    limit_data: int


def circuit_addr(relay_addr: multiaddr.Multiaddr, relay: ID) -> multiaddr.Multiaddr:
    """``<relay transport address>/p2p/<relay>/p2p-circuit`` (what a record advertises)."""
    text = str(relay_addr)
    if peer_id_of(relay_addr) is None:
        text += f"/p2p/{relay}"
    return multiaddr.Multiaddr(text + "/p2p-circuit")


async def reserve(host: IHost, relay: ID, timeout: float) -> ReservationReply:
    """One RESERVE exchange with a connected relay. Raises :class:`ReservationError`."""
    stream = None
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(relay, [HOP_PROTOCOL])
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            resp = await read_delimited_msg(stream, HopMessage)  # capped at 64 KiB by py-libp2p
    except trio.TooSlowError:
        raise ReservationError(relay, 0, "timed out") from None
    except Exception as exc:  # stream refused, reset, malformed answer
        raise ReservationError(relay, 0, f"{type(exc).__name__}: {exc}") from None
    finally:
        if stream is not None:
            with trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass
    status = resp.status if resp.HasField("status") else 0
    if resp.type != HopMessage.STATUS or status != StatusCode.OK or not resp.HasField("reservation"):
        name = StatusCode(status).name if status in StatusCode._value2member_map_ else str(status)
        raise ReservationError(relay, status, name)
    addrs: list[multiaddr.Multiaddr] = []
    for raw in list(resp.reservation.addrs)[:MAX_RESERVATION_ADDRS]:
        try:
            ma = multiaddr.Multiaddr(bytes(raw))
        except Exception:
            continue  # a relay's bad address is not our problem; skip it
        if not is_relayed(ma) and peer_id_of(ma) in (None, relay):
            addrs.append(ma)
    limit = resp.limit if resp.HasField("limit") else None
    return ReservationReply(
        expire=int(resp.reservation.expire),
        addrs=tuple(addrs),
        limit_duration=int(limit.duration) if limit is not None else 0,
        limit_data=int(limit.data) if limit is not None else 0,
    )


class CircuitDialer:
    """The Dialer's transport for ``/p2p-circuit`` addresses (a :class:`~..ports.DialTransport`)."""

    def __init__(self, host: IHost) -> None:
        self.host = host
        # The protocol object is only a constructor argument: dialing uses none of it.
        self.transport = CircuitV2Transport(host, CircuitV2Protocol(host), RelayConfig(roles=RelayRole.STOP))
        self.dials = 0

    def handles(self, addr: multiaddr.Multiaddr) -> bool:
        return is_relayed(addr)

    async def connect(self, peer_id: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """Dial ``peer_id`` through each relay in turn; raise the last error if none worked."""
        error: Exception | None = None
        for addr in addrs:
            if peer_id in self.host.get_connected_peers():
                return
            target = multiaddr.Multiaddr(f"{addr}/p2p/{peer_id}")
            self.dials += 1
            try:
                await self.transport.dial(target)
                return
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("circuit dial %s failed: %s", target, exc)
                error = exc
        raise error if error is not None else ConnectionError(f"no circuit address for {peer_id}")
