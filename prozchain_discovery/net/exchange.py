"""One request, one response, on a fresh libp2p stream — the trio side of our protocols.

``/prozchain/bootstrap/1.0``, ``/prozchain/pex/1.0`` and ``/prozchain/stun/1.0`` are: the caller
opens a stream, sends one length-prefixed protobuf, reads one back; the responder answers and
closes. This module only moves bytes and time; what to answer is decided by the sans-IO
policies.

The caller's multistream-select goes out in the same write as the request (header, proposal,
request) and the listener's echoes come back in front of the answer, so a request on an open
connection is one round trip, not two (go-libp2p selects lazily like this when its peerstore
already lists the protocol; we only ask peers that said they serve ours, or bootstrap nodes
configured as such). A peer that answers ``na`` fails the request as ``unsupported``; it
never reads the request as a protocol message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from ..multistream import read_selected, select_message
from ..wire.framing import MAX_FRAME, FrameError, encode_frame
from ..wire.messages import DecodeError
from .frames import read_frame
from .sockets import is_relayed_conn

__all__ = ["ExchangeError", "request", "serve", "refuse", "observed_multiaddr", "is_relayed_stream"]

log = logging.getLogger(__name__)


class ExchangeError(Exception):
    """A request failed; ``kind`` is one of timeout, stream, framing, decode, unsupported (the
    peer answered multistream-select's ``na``: it does not speak the protocol)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def is_relayed_stream(stream: INetStream) -> bool:
    """Whether ``stream`` runs over a circuit-relayed connection (a limited one: small answers)."""
    return is_relayed_conn(getattr(stream, "muxed_conn", None))


def _is_quic(muxed: object) -> bool:
    return any(cls.__name__ == "QUICConnection" for cls in type(muxed).__mro__)


def observed_multiaddr(stream: INetStream) -> multiaddr.Multiaddr | None:
    """The remote end of ``stream`` as this side sees it, e.g. ``/ip4/1.2.3.4/tcp/5``, or
    ``/ip4/1.2.3.4/udp/5/quic-v1`` over QUIC.

    None over a relayed connection: its socket is the relay's, not the remote peer's.
    """
    if is_relayed_stream(stream):
        return None
    try:
        remote = stream.get_remote_address()
    except Exception:
        return None
    if not remote:
        return None
    ip, port = remote[0], remote[1]
    proto = "ip6" if ":" in str(ip) else "ip4"
    # A QUIC stream's remote end is a UDP port; py-libp2p names it /udp/P/quic (draft-29), but
    # the QUIC we speak and advertise is quic-v1 (the only version our listeners offer).
    muxed = getattr(stream, "muxed_conn", None)
    tail = "udp/{}/quic-v1" if getattr(muxed, "provides_native_muxing", False) or _is_quic(muxed) else "tcp/{}"
    try:
        return multiaddr.Multiaddr(f"/{proto}/{ip}/" + tail.format(port))
    except Exception:
        return None


async def request(
    host: IHost,
    peer_id: ID,
    protocol: str,
    payload: bytes,
    timeout: float,
) -> tuple[bytes, INetStream]:
    """Send one frame, read one frame back. Raises :class:`ExchangeError`."""
    stream: INetStream | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await host.get_network().new_stream(peer_id)
            await stream.write(select_message(protocol) + encode_frame(payload))
            if not await read_selected(stream, protocol):
                await _reset(stream)
                raise ExchangeError("unsupported", f"{peer_id} does not serve {protocol}")
            data = await read_frame(stream, MAX_FRAME)
        except FrameError as exc:
            if stream is not None:
                await _reset(stream)
            raise ExchangeError("framing", str(exc)) from exc
        except (trio.Cancelled, ExchangeError):
            raise
        except Exception as exc:
            if stream is not None:
                await _reset(stream)
            raise ExchangeError("stream", f"{type(exc).__name__}: {exc}"[:200]) from exc
        await _close(stream)
        return data, stream
    if stream is not None:
        await _reset(stream)
    raise ExchangeError("timeout", f"no answer from {peer_id} within {timeout:g}s ({scope})")


async def serve(
    stream: INetStream,
    timeout: float,
    answer: Callable[[bytes, INetStream], Awaitable[bytes | None]],
    on_error: Callable[[str, Any], None] | None = None,
) -> None:
    """Read one request (dropping a silent caller after ``timeout``), write ``answer``'s reply."""
    try:
        with trio.move_on_after(timeout) as scope:
            data = await read_frame(stream, MAX_FRAME)
        if scope.cancelled_caught:
            if on_error:
                on_error("timeout", None)
            await _reset(stream)
            return
        reply = await answer(data, stream)
        if reply is None:
            await _reset(stream)
            return
        with trio.move_on_after(timeout):
            await stream.write(encode_frame(reply))
        await _close(stream)
    except (FrameError, DecodeError) as exc:
        if on_error:
            on_error("framing" if isinstance(exc, FrameError) else "decode", exc)
        log.debug("bad request on %s: %s", stream.get_protocol(), exc)
        await _reset(stream)
    except trio.Cancelled:
        raise
    except Exception as exc:
        if on_error:
            on_error("stream", exc)
        log.debug("stream error serving %s: %s", stream.get_protocol(), exc)
        await _reset(stream)


async def refuse(stream: INetStream, *, close_connection: bool = False) -> None:
    """Reset ``stream`` without reading a byte of it (a banned or refused peer); with
    ``close_connection``, close the connection it came on as well, at once.

    The connection is closed directly, not through ``host.disconnect``: py-libp2p 0.8.1 keeps
    a second connection to one peer open but out of the swarm's table, where ``disconnect``
    cannot reach it, and a flooder keeps streaming on it (bench/bench_abuse.py: 450 streams/s
    and 80% of a core, against 9/s and 16% when the connection is closed here).
    """
    await _reset(stream)
    if close_connection:
        with trio.move_on_after(1), _quiet():
            await stream.muxed_conn.close()


async def _reset(stream: INetStream) -> None:
    with trio.move_on_after(1), _quiet():
        await stream.reset()


async def _close(stream: INetStream) -> None:
    with trio.move_on_after(1), _quiet():
        await stream.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and not issubclass(exc_type, trio.Cancelled)
