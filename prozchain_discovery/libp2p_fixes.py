"""Every py-libp2p 0.8.1 workaround in one place (see ../shared/notes/py-libp2p-0.8.1.md).

Each function names the bug it routes around; tests/test_libp2p_fixes.py shows each bug with the
stock configuration and its absence with ours.

* Bug 1 — 250 ms per dial: ``Swarm.dial_peer`` waits a happy-eyeballs delay unless the
  connection count reaches ``max_connections_per_peer`` (default 3). We use 1.
* Swarm dial retries (found here): a refused dial is retried 3 times with exponential backoff
  inside ``Swarm.dial_peer`` (~0.9 s before it fails). Our own backoff decides when to retry a
  peer, and a slow failure holds one of the cascade's few in-flight dial slots: a joiner waited
  ~0.6-0.9 s for dials to departed peers. :func:`no_swarm_retries` sets ``max_retries=0``.
* Identify on the join path (a choice, not a bug): py-libp2p identifies every new connection
  at once, ~7.6 ms of CPU per connection for both sides — more than the Noise handshake. A
  joining node's handshakes then queue behind identifies. :func:`defer_identify` starts each
  identify ``delay`` seconds after the connection (nothing waits for it: ``new_stream`` does not,
  and our own use of the signed record it brings waits up to 5 s) — except over a relayed
  (``/p2p-circuit``) connection and for peers named by :func:`identify_now` (hole punching).
* Yamux window updates per read (found here): a WINDOW_UPDATE frame after every read;
  :func:`yamux_window_hysteresis` sends one per half window consumed, as go-yamux does, and a
  window update that cannot be written no longer fails the read that had the data (#16).
* A cancelled writer broke the connection (found here, #16): a task cancelled inside
  ``Yamux._write_frame`` left Noise's nonce ahead of the wire; over a circuit that was the
  connection to the relay. :func:`whole_yamux_frames` shields each frame write (bounded).
* Bug 18 — negative dial cache: a peer whose addresses all failed is refused for 60 s by
  ``Swarm.dial_peer`` whatever our backoff says; :func:`allow_redial` evicts it before each dial
  the dialer decided to make (a static peer back after 10 s was unreachable for up to 60 s).
* Bug 2 — plaintext/secio accepted by default: we pass Noise as the only security transport.
* Bug 9 — hidden AutoConnector: any peer with addresses in the peerstore is dialed every
  ~10 s while below ``min_connections=50``. Our outbound policy (peer database +
  ``select_for_dial``) decides whom to dial, so the AutoConnector is replaced by an inert one.
* Bug 14 — ``0.0.0.0`` advertised: an ``addrs_factory`` expands wildcard listen addresses to
  the machine's interface addresses.
* Handler-removal race (found here, not in the notes): ``Multiselect.negotiate`` checks
  ``protocol in handlers``, awaits a write, then indexes ``handlers[protocol]``; a handler
  removed in between raises ``KeyError`` inside the host's nursery and takes the host down.
  :func:`tolerate_handler_removal` makes a late lookup return a handler that resets the stream.
* Zombie listener (found here): after ``async with host.run(...)`` exits, the TCP listener
  still accepts connections (the host is "stopped" but dialable; every accepted connection
  then fails with ``LifecycleError``). :func:`run_host` closes the listeners on exit.
* Round trips in protocol negotiation (a choice, not a bug): py-libp2p's multistream-select
  client writes the ``/multistream/1.0.0`` header, waits for the answer, then proposes the
  protocol and waits again: two round trips for each of Noise, Yamux and every new stream, so
  a dial took 6 RTT and a request on an open connection 3 (NAT lab, 25 ms one-way delay).
  :func:`pipeline_multistream` sends the header and the first proposal in one write, as
  go-libp2p's ``SelectProtoOrFail`` does: a dial takes 4 RTT and a request 2. A listener sees
  the same bytes in the same order, so every multistream-select implementation accepts it.
* Bug 16 — libp2p's logger has ``propagate=False`` and no handler: its own module,
  libp2p_logs.py (``route_libp2p_logs``), routes those records into ours, rate-limited.
* Identify replaces our signed record (found here): ``env_to_send_in_RPC`` re-signs the local
  record from ``host.get_addrs()`` whenever their address sets differ, so identify never sent
  the record the local-addresses component signed (port mappings, ``/p2p-circuit`` addresses
  through our relays, only public addresses when we have some). :func:`pin_local_record`.
* QUIC dials from an ephemeral port (found here): ``QUICTransport.dial`` binds a new UDP socket
  per connection, so behind a NAT a dial's packets leave from a port nobody was told about and a
  QUIC hole punch cannot work. :func:`quic_dial_from_listen_socket` (module quic_reuse.py) sends
  QUIC dials from the listen socket, as quic-go does.
* Identify's observed address over QUIC (DCUtR bug 4 in the notes): py-libp2p's identify answer
  names the remote end ``/ip4/A/tcp/P`` whatever the transport, so over a QUIC connection it
  reports a TCP port that is really a UDP one, and the observed-address manager drops it (no
  local TCP address matches on a QUIC-only node) or files it under TCP. A node reached only over
  QUIC never learned its WAN IP, and DCUtR had nothing to predict. :func:`quic_observed_addrs`
  rewrites an observation made on a QUIC connection to ``/udp/P/quic-v1`` before it is recorded.

Every patch checks that what it replaces exists and fails loudly (:class:`Libp2pPatchError`) at
``make_host`` if a py-libp2p upgrade moved it, instead of silently patching nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.network.config import ConnectionConfig

from .addrs import AddrScope, scope_of
from .multistream import PipelinedMultiselectClient
from .net.sockets import is_relayed_conn

__all__ = [
    "Libp2pPatchError",
    "identify_now",
    "safe_connection_config",
    "disable_auto_connector",
    "no_swarm_retries",
    "defer_identify",
    "expand_wildcard_addrs",
    "local_interface_ips",
    "tolerate_handler_removal",
    "quic_dial_from_listen_socket",
    "quic_observed_addrs",
    "pipeline_multistream",
    "whole_yamux_frames",
    "run_host",
    "close_listeners",
]


_fixes_log = logging.getLogger("prozchain_discovery.libp2p_fixes")


class Libp2pPatchError(RuntimeError):
    """A workaround found py-libp2p without the thing it patches (an upgrade moved it)."""


def _libp2p_version() -> str:
    try:
        from importlib.metadata import version

        return version("libp2p")
    except Exception:  # pragma: no cover - not installed as a distribution
        import libp2p

        return str(getattr(libp2p, "__version__", "?"))


def _patch_error(patch: str, thing: str) -> Libp2pPatchError:
    return Libp2pPatchError(
        f"{patch}: py-libp2p {_libp2p_version()} has no {thing}; this project pins libp2p==0.8.1"
    )


def _require(obj: Any, attr: str, patch: str, owner: str | None = None) -> Any:
    """``obj.attr``, or :class:`Libp2pPatchError` naming what is missing."""
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise _patch_error(patch, f"{owner or type(obj).__name__}.{attr}") from None


def _require_method(
    obj: Any, name: str, patch: str, *, is_async: bool, params: Sequence[str] | None = None,
    owner: str | None = None,
) -> Any:
    """``obj.name``, a method of the expected kind (and parameter names), or a loud error."""
    where = f"{owner or type(obj).__name__}.{name}"
    method = _require(obj, name, patch, owner)
    kind = "async method" if is_async else "method"
    if not callable(method) or inspect.iscoroutinefunction(method) != is_async:
        raise _patch_error(patch, f"{kind} {where}")
    if params is not None:
        try:
            names = [
                p.name for p in inspect.signature(method).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            names = []
        if names != list(params):
            raise _patch_error(patch, f"{kind} {where}({', '.join(params)})")
    return method


def safe_connection_config(dial_timeout: float = 10.0) -> ConnectionConfig:
    """Bug 1: one connection per peer makes a dial end as soon as it succeeds (5 ms, not 250)."""
    return ConnectionConfig(
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        min_connections=0,
    )


class _InertAutoConnector:
    """Stands in for ``libp2p.network.auto_connector.AutoConnector`` (bug 9).

    It has exactly what py-libp2p 0.8.1 uses, with the same sync/async kinds:
    ``Swarm.run`` awaits ``start()``, ``run_background_task(nursery)`` and ``stop()``;
    ``Swarm._schedule_auto_connect`` reads ``_is_connecting`` and runs ``maybe_connect`` as a
    task; ``Swarm.notify_disconnected`` calls ``record_disconnect(peer_id)``; the Kademlia DHT
    calls ``set_discovery_callback(cb)``. Anything else raises ``AttributeError``: a no-op
    answering every name would hide a new async hook (a coroutine never awaited) or a property
    read behind ``None``. :func:`disable_auto_connector` checks the real class still has
    exactly these.
    """

    __slots__ = ()
    _is_connecting = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run_background_task(self, nursery: Any) -> None:
        return None

    async def maybe_connect(self) -> None:
        return None

    def record_disconnect(self, peer_id: Any) -> None:
        return None

    def set_discovery_callback(self, callback: Any) -> None:
        return None


# name -> is_async, for every AutoConnector method py-libp2p 0.8.1 calls from outside the class.
_AUTO_CONNECTOR_HOOKS: dict[str, bool] = {
    "start": True,
    "stop": True,
    "run_background_task": True,
    "maybe_connect": True,
    "record_disconnect": False,
    "set_discovery_callback": False,
}
# Its other public methods in 0.8.1, which nothing outside the class calls. A method not in
# either list is new: something may call it on the inert stand-in, so make_host refuses.
_AUTO_CONNECTOR_UNUSED = frozenset(
    {"record_successful_connection", "record_failed_connection", "clear_cooldown",
     "clear_all_cooldowns"}
)


def disable_auto_connector(host: Any) -> None:
    """Bug 9: stop py-libp2p from dialing every peerstore entry behind our back."""
    patch = "disable_auto_connector"
    network = _require_method(host, "get_network", patch, is_async=False)()
    current = _require(network, "auto_connector", patch, "Swarm")
    if isinstance(current, _InertAutoConnector):
        return
    for name, is_async in _AUTO_CONNECTOR_HOOKS.items():
        _require_method(current, name, patch, is_async=is_async, owner="AutoConnector")
    if not isinstance(getattr(current, "_is_connecting", None), bool):
        raise _patch_error(patch, "AutoConnector._is_connecting flag")
    public = {
        n for n in dir(type(current))
        if not n.startswith("_") and callable(getattr(type(current), n, None))
    }
    unknown = sorted(public - set(_AUTO_CONNECTOR_HOOKS) - _AUTO_CONNECTOR_UNUSED)
    if unknown:
        raise Libp2pPatchError(
            f"{patch}: py-libp2p {_libp2p_version()} has AutoConnector methods the inert "
            f"stand-in lacks ({', '.join(unknown)}); this project pins libp2p==0.8.1"
        )
    network.auto_connector = _InertAutoConnector()


async def _reset_late_stream(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:
        pass


class _HandlerTable(dict):  # type: ignore[type-arg]
    """A handler looked up after its removal resets the stream instead of raising KeyError."""

    def __missing__(self, key: Any) -> Any:
        return _reset_late_stream


def tolerate_handler_removal(host: Any) -> None:
    """The handler-removal race (module docstring): a late lookup resets the stream."""
    patch = "tolerate_handler_removal"
    mux = _require(host, "multiselect", patch, "BasicHost")
    _require_method(mux, "negotiate", patch, is_async=True, owner="Multiselect")
    handlers = _require(mux, "handlers", patch, "Multiselect")
    if not isinstance(handlers, dict):
        raise _patch_error(patch, f"dict Multiselect.handlers (it is a {type(handlers).__name__})")
    if not isinstance(handlers, _HandlerTable):
        mux.handlers = _HandlerTable(handlers)


def pipeline_multistream(host: Any) -> None:
    """Negotiate Noise, Yamux and every stream in one round trip instead of two (see the top)."""
    patch = "pipeline_multistream"
    _require(host, "multiselect_client", patch, "BasicHost")
    upgrader = _require(_require_method(host, "get_network", patch, is_async=False)(), "upgrader", patch, "Swarm")
    selectors = []
    for name in ("security_multistream", "muxer_multistream"):
        selectors.append(_require(_require(upgrader, name, patch, "TransportUpgrader"), "_selector", patch, name))
    for selector in selectors:
        _require(selector, "multiselect_client", patch, "GenericMultistreamSelector")
        selector.multiselect_client = PipelinedMultiselectClient()
    host.multiselect_client = PipelinedMultiselectClient()


def no_swarm_retries(host: Any) -> None:
    """Swarm dial retries (module docstring): a refused dial fails at once."""
    from libp2p.network.config import RetryConfig

    patch = "no_swarm_retries"
    network = _require_method(host, "get_network", patch, is_async=False)()
    current = _require(network, "retry_config", patch, "Swarm")
    if not hasattr(current, "max_retries"):
        raise _patch_error(patch, "Swarm.retry_config.max_retries")
    network.retry_config = RetryConfig(max_retries=0)


def allow_redial(host: Any, peer_id: Any) -> None:
    """Bug 18 (negative dial cache): once every address of a peer failed, ``Swarm.dial_peer``
    refuses that peer for 60 s without touching the network. The dialer owns backoff (a static
    peer's cap may be 1 s), so a dial it decided to make evicts the peer from that cache first."""
    network = host.get_network()
    unblock = getattr(network, "unblock_peer", None)
    if unblock is None:
        raise _patch_error("allow_redial", "Swarm.unblock_peer")
    unblock(peer_id)


# ---- Yamux window updates -----------------------------------------------------------------

_HYSTERESIS_ATTR = "prozchain_window_hysteresis"


def yamux_window_hysteresis(host: Any) -> None:
    """Window updates per read (found here): py-libp2p 0.8.1's ``YamuxStream`` sends a
    WINDOW_UPDATE after *every* read (its "partial slack" and ``PY_YAMUX_RELEASE_ON_READ``
    branches), each one a Yamux frame through Noise and a socket write: 9 % of a 31-node demo's
    CPU, for request/response streams that never come near the 256 KiB window. go-yamux (and
    the spec's intent) sends one when the consumed part reaches half the window.

    A window update that cannot be written (issue #16: "Unexpected error during window
    update", on relayed connections whose circuit was closed) no longer fails the read that
    took the data from the buffer: the bytes are returned, and the connection's next write
    reports the closed connection.

    py-libp2p builds its ``Yamux`` itself (``MuxerMultistream.new_conn`` ignores the class
    given to ``new_host``), so this host's muxed connections are marked as they are made, and
    the stream method, wrapped once on the class, sends updates so for marked connections
    only: any other host keeps py-libp2p's behaviour."""
    from libp2p.io.exceptions import IOException
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    patch = "yamux_window_hysteresis"
    current = _require(YamuxStream, "_auto_tune_and_send_window_update", patch, "YamuxStream")
    _require(YamuxStream, "send_window_update", patch, "YamuxStream")
    if not getattr(current, "_prozchain", False):
        original = current

        async def window_update(self: Any, *, bytes_read: int = 0) -> None:
            if not getattr(self.conn, _HYSTERESIS_ATTR, False):
                await original(self, bytes_read=bytes_read)
                return
            async with self.window_lock:
                buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
                delta = self.target_recv_window - (self.recv_window + buffered)
                if delta <= 0 or delta < self.target_recv_window // 2:
                    return
                self.recv_window += delta
            try:
                await self.send_window_update(delta, skip_lock=True)
            except (RawConnError, IOException) as exc:
                # The connection under the stream can no longer write (a relayed connection
                # whose circuit the relay or the peer closed, e.g. after a hole punch): what
                # this read took from the buffer is still the caller's. py-libp2p raises here
                # (after "Unexpected error during window update" at WARNING) and the read that
                # had the data fails with it (issue #16). The next write meets the closed
                # connection anyway.
                _fixes_log.debug("window update on a connection that cannot write: %r", exc)

        window_update._prozchain = True  # type: ignore[attr-defined]
        YamuxStream._auto_tune_and_send_window_update = window_update  # type: ignore[method-assign]
    _mark_muxed_conns(host, _HYSTERESIS_ATTR, patch)


# ---- Yamux frame writes that a cancellation cannot cut ----------------------------------------

_SHIELD_ATTR = "prozchain_whole_frames"
SHIELDED_WRITE_LIMIT = 10.0  # s: a frame not written by then leaves the connection broken: closed


def whole_yamux_frames(host: Any) -> None:
    """A cancelled writer broke the whole connection (found here, issue #16: "a failed circuit
    took the whole relay connection down").

    py-libp2p 0.8.1's ``Yamux._write_frame`` takes the connection's write lock and awaits
    ``secured_conn.write``: Noise encrypts the frame (its nonce advances) and then awaits the
    socket. A task cancelled there — a circuit dial or hole punch given up at its timeout while
    its stream writes — leaves no frame, or part of one, on the wire after the nonce moved on:
    every later frame fails to decrypt at the peer ("Failed authentication of message"), which
    drops the connection. Over a circuit the writes end in the *relay's* connection, so one
    abandoned circuit handshake cost the reservation and every other circuit on it. Here the
    write itself is shielded (the cancellation takes effect right after it, at the lock's
    checkpoint), bounded by :data:`SHIELDED_WRITE_LIMIT`; a frame still unwritten by then
    closes the connection, as a partial frame would have anyway.

    This host's muxed connections are marked as they are made (see
    :func:`yamux_window_hysteresis`); the class method, wrapped once, shields marked ones only.
    """
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.stream_muxer.yamux.yamux import Yamux

    patch = "whole_yamux_frames"
    current = _require_method(Yamux, "_write_frame", patch, is_async=True, params=("self", "data"), owner="Yamux")
    _mark_muxed_conns(host, _SHIELD_ATTR, patch)
    if getattr(current, "_prozchain", False):
        return
    original = current

    async def write_frame(self: Any, data: bytes) -> None:
        if not getattr(self, _SHIELD_ATTR, False):
            await original(self, data)
            return
        async with self._write_lock:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHIELDED_WRITE_LIMIT) as limit:
                    await self.secured_conn.write(data)
                if limit.cancelled_caught:
                    with trio.move_on_after(2):
                        with contextlib.suppress(Exception):
                            await self.secured_conn.close()
                    raise RawConnError(f"a Yamux frame was not written within {SHIELDED_WRITE_LIMIT:.0f} s")
        await trio.lowlevel.checkpoint()

    write_frame._prozchain = True  # type: ignore[attr-defined]
    Yamux._write_frame = write_frame  # type: ignore[method-assign]


def _mark_muxed_conns(host: Any, attr: str, patch: str) -> None:
    """Set ``attr`` on every muxed connection this host's upgrader makes from now on."""
    network = _require_method(host, "get_network", patch, is_async=False)()
    muxers = _require(_require(network, "upgrader", patch, "Swarm"), "muxer_multistream", patch, "TransportUpgrader")
    new_conn = _require_method(muxers, "new_conn", patch, is_async=True, params=("conn", "peer_id"),
                               owner="MuxerMultistream")
    marks: set[str] = getattr(new_conn, "_prozchain_marks", set())
    if attr in marks:
        return

    async def marking(conn: Any, peer_id: Any) -> Any:
        muxed = await new_conn(conn, peer_id)
        with contextlib.suppress(AttributeError):
            setattr(muxed, attr, True)
        return muxed

    marking._prozchain_marks = marks | {attr}  # type: ignore[attr-defined]
    muxers.new_conn = marking


# ---- identify deferral --------------------------------------------------------------------

_DEFERRAL_ATTR = "_prozchain_identify_deferral"
_AT_ONCE_MAX = 1024  # peers marked by identify_now that have not connected yet


class _IdentifyDeferral:
    """Per-host state of :func:`defer_identify` (stored on the host, not in this module)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.at_once: dict[Any, None] = {}  # insertion-ordered set, bounded by _AT_ONCE_MAX
        self.waiting: dict[Any, trio.Event] = {}

    def mark(self, peer_id: Any) -> None:
        event = self.waiting.get(peer_id)
        if event is not None:
            event.set()  # a deferred identify is sleeping: wake it now
            return
        self.at_once.pop(peer_id, None)
        self.at_once[peer_id] = None
        while len(self.at_once) > _AT_ONCE_MAX:
            del self.at_once[next(iter(self.at_once))]

    def take(self, peer_id: Any) -> bool:
        """Whether ``peer_id`` was marked by :func:`identify_now` (the mark is used up)."""
        if peer_id in self.at_once:
            del self.at_once[peer_id]
            return True
        return False


def defer_identify(host: Any, delay: float = 0.25) -> None:
    """Start identify ``delay`` s after a connection, except where it is needed at once.

    py-libp2p spawns ``host._identify_task_entry(peer_id, reason)`` for every new connection;
    the wrapper waits ``delay`` first. It does not wait for a peer reached over a relayed
    connection (``/p2p-circuit`` transport address, or ``ConnectionType.RELAYED``), nor for a
    peer named by :func:`identify_now` (hole punching needs the peer's addresses and protocols
    before it can punch). The relayed check is repeated while waiting: an inbound circuit is
    tagged as relayed just after py-libp2p announces the connection.
    """
    patch = "defer_identify"
    current = _require(host, "_identify_task_entry", patch, "BasicHost")
    if getattr(current, "_deferred", False):
        return
    original = _require_method(
        host, "_identify_task_entry", patch, is_async=True, params=("peer_id", "reason"),
        owner="BasicHost",
    )
    _require_method(host, "_schedule_identify", patch, is_async=False, owner="BasicHost")
    network = _require_method(host, "get_network", patch, is_async=False)()
    _require_method(network, "get_connections", patch, is_async=False, owner="Swarm")
    state = _IdentifyDeferral(delay)

    async def deferred(peer_id: Any, reason: str) -> None:
        if not state.take(peer_id) and not _is_relayed_peer(host, peer_id):
            await _wait_unless_needed(host, state, peer_id)
        await original(peer_id, reason)

    deferred._deferred = True  # type: ignore[attr-defined]
    setattr(host, _DEFERRAL_ATTR, state)
    host._identify_task_entry = deferred


async def _wait_unless_needed(host: Any, state: _IdentifyDeferral, peer_id: Any) -> None:
    """Sleep ``state.delay``; end early on :func:`identify_now` or a connection seen relayed."""
    woken = state.waiting.setdefault(peer_id, trio.Event())
    try:
        deadline = trio.current_time() + state.delay
        # Two looks just after py-libp2p announced the connection (an inbound circuit is tagged
        # relayed a moment later), then sleep: looking every 50 ms for the whole delay walked
        # each connection's layers and built its addresses five times (3 % of a demo's CPU).
        start = trio.current_time()
        for look in (0.05, 0.1):
            with trio.move_on_at(min(deadline, start + look)):
                await woken.wait()
            if woken.is_set() or _is_relayed_peer(host, peer_id):
                return
        with trio.move_on_at(deadline):
            await woken.wait()
    finally:
        if state.waiting.get(peer_id) is woken:
            del state.waiting[peer_id]


def identify_now(host: Any, peer_id: Any) -> None:
    """Identify ``peer_id`` without the :func:`defer_identify` delay (e.g. before hole punching).

    If an identify of the peer is waiting out the delay, it starts now; if the peer is connected
    and not identified yet, identify is started; otherwise the next connection to the peer is
    identified at once. A host without :func:`defer_identify` identifies at once anyway.
    """
    state = getattr(host, _DEFERRAL_ATTR, None)
    if not isinstance(state, _IdentifyDeferral):
        return
    state.mark(peer_id)
    if peer_id in state.waiting:
        return
    try:
        connected = bool(host.get_network().get_connections(peer_id))
    except Exception:
        connected = False
    if connected:
        host._schedule_identify(peer_id, reason="identify-now")  # no-op if done or running


def _is_relayed_peer(host: Any, peer_id: Any) -> bool:
    """Whether any of our connections to ``peer_id`` goes through a circuit relay."""
    try:
        conns = host.get_network().get_connections(peer_id)
    except Exception:
        return False
    return any(is_relayed_conn(c) for c in conns or ())


def local_interface_ips() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses of this machine's interfaces (via ifaddr, which zeroconf already depends on)."""
    try:
        import ifaddr  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - zeroconf pulls it in
        return [ipaddress.ip_address("127.0.0.1")]
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                continue
            if addr.is_link_local:
                continue  # needs a zone to be dialable; never useful to others
            out.append(addr)
    return out


def expand_wildcard_addrs(
    interface_ips: Callable[[], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = local_interface_ips,
    extra: Callable[[], list[multiaddr.Multiaddr]] | None = None,
) -> Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]]:
    """Bug 14: an ``addrs_factory`` that never advertises ``0.0.0.0`` / ``::``.

    ``/ip4/0.0.0.0/tcp/P`` becomes one ``/ip4/<ip>/tcp/P`` per IPv4 interface address (likewise
    IPv6). ``extra`` adds addresses learned elsewhere (observed, UPnP), deduplicated. TCP
    addresses come first.
    """

    def factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        out: list[multiaddr.Multiaddr] = []
        seen: set[str] = set()

        def add(ma: multiaddr.Multiaddr) -> None:
            key = str(ma)
            if key not in seen:
                seen.add(key)
                out.append(ma)

        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None
        for ma in list(candidates) + (extra() if extra else []):
            if scope_of(ma) is not AddrScope.UNSPECIFIED:
                add(ma)
                continue
            if ips is None:
                ips = interface_ips()
            text = str(ma)
            v6 = text.startswith("/ip6/")
            wildcard = "/ip6/::" if v6 else "/ip4/0.0.0.0"
            rest = text[len(wildcard) :]
            for ip in ips:
                if (ip.version == 6) == v6:
                    add(multiaddr.Multiaddr(f"/ip{ip.version}/{ip}{rest}"))
        # TCP first, in a stable order: py-libp2p starts listeners concurrently, so with TCP and
        # QUIC the order of get_addrs() changed from run to run, and whoever reads the first
        # address (the CLI's first line, a TCP-only js peer) sometimes got QUIC.
        out.sort(key=lambda ma: 0 if "/tcp/" in str(ma) else 1)
        return out

    return factory


async def close_listeners(host: Any) -> None:
    """Close every transport listener of ``host`` (bounded, never raises).

    The listeners are also removed from the swarm's map first: py-libp2p computes the host's
    addresses from them (``getsockname``), and an identify request answered after the close
    would otherwise raise ``OSError`` inside the host's nursery.
    """
    listeners = getattr(host.get_network(), "listeners", None)
    if not isinstance(listeners, dict):
        return
    closing = list(listeners.values())
    listeners.clear()
    for listener in closing:
        with trio.move_on_after(2):
            try:
                await listener.close()
            except Exception:  # already closed, or closing raced the host's own teardown
                pass


@asynccontextmanager
async def run_host(host: Any, listen_addrs: Sequence[multiaddr.Multiaddr]) -> AsyncIterator[Any]:
    """``host.run(listen_addrs)`` that really stops listening when it exits (zombie listener)."""
    async with host.run(listen_addrs):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True):
                await close_listeners(host)


def quic_dial_from_listen_socket(host: Any) -> bool:
    """QUIC dials leave from the QUIC listen socket (quic_reuse.py); False for a TCP-only host."""
    from . import quic_reuse

    return quic_reuse.install(host)


def _is_quic_conn(conn: Any) -> bool:
    muxed = getattr(conn, "muxed_conn", conn)
    return any(cls.__name__ == "QUICConnection" for cls in type(muxed).__mro__)


def quic_observation(conn: Any, observed: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    """``observed`` as a QUIC address when ``conn`` is a QUIC connection (``/tcp/P`` and
    draft-29's ``/quic`` become ``/udp/P/quic-v1``); unchanged otherwise."""
    if not _is_quic_conn(conn):
        return observed
    try:
        parts = [(p.name, observed.value_for_protocol(p.name)) for p in observed.protocols()]
    except Exception:
        return observed
    if len(parts) >= 2 and parts[0][0] in ("ip4", "ip6") and parts[1][0] in ("tcp", "udp"):
        if [n for n, _ in parts[2:]] in ([], ["quic"], ["quic-v1"]):
            return multiaddr.Multiaddr(f"/{parts[0][0]}/{parts[0][1]}/udp/{parts[1][1]}/quic-v1")
    return observed


def quic_observed_addrs(host: Any) -> None:
    """Observations over QUIC recorded as ``/udp/P/quic-v1`` (module docstring)."""
    patch = "quic_observed_addrs"
    manager = _require(host, "_observed_addr_manager", patch)
    if manager is None:
        return  # address discovery off: nothing is recorded
    record = _require_method(manager, "record_observation", patch, is_async=False,
                             params=["conn", "observed_addr", "local_addrs"])

    def record_observation(conn: Any, observed_addr: Any, local_addrs: Any) -> None:
        record(conn, quic_observation(conn, observed_addr), local_addrs)

    manager.record_observation = record_observation


def pin_local_record(host: Any, envelope: Any) -> None:
    """Make ``envelope`` the signed record identify sends, until the next call.

    py-libp2p 0.8.1's identify asks ``env_to_send_in_RPC(host)``, which keeps the stored local
    record only if ``envelope._env_addrs_set() == set(host.get_addrs())`` and otherwise signs
    and stores a new one from ``host.get_addrs()``. Our record deliberately differs (it is what
    we advertise, not what we listen on), so the stored envelope answers that comparison with
    the host's current addresses. It is re-pinned whenever our advertised addresses change.
    """
    patch = "pin_local_record"
    peerstore = _require_method(host, "get_peerstore", patch, is_async=False)()
    _require_method(peerstore, "set_local_record", patch, is_async=False)
    _require_method(envelope, "_env_addrs_set", patch, is_async=False, owner="Envelope")
    envelope._env_addrs_set = lambda: set(host.get_addrs())
    peerstore.set_local_record(envelope)
