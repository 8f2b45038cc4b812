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
  and our own use of the signed record it brings waits up to 5 s).
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
* Bug 16 — libp2p's logger has ``propagate=False`` and no handler: :func:`route_libp2p_logs`
  (called by the CLI, not at import) sends its warnings through the application's logging,
  rate-limited per message, with the known shutdown noise demoted to DEBUG.

Every patch checks that what it replaces exists and fails loudly (:class:`Libp2pPatchError`) at
``make_host`` if a py-libp2p upgrade moved it, instead of silently patching nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.network.config import ConnectionConfig

from .addrs import AddrScope, scope_of

__all__ = [
    "Libp2pPatchError",
    "identify_now",
    "safe_connection_config",
    "disable_auto_connector",
    "no_swarm_retries",
    "defer_identify",
    "expand_wildcard_addrs",
    "route_libp2p_logs",
    "local_interface_ips",
    "tolerate_handler_removal",
    "run_host",
    "close_listeners",
]


class Libp2pPatchError(RuntimeError):
    """A workaround found py-libp2p without the thing it patches (an upgrade moved it)."""


def _require(obj: Any, attr: str, patch: str) -> Any:
    if not hasattr(obj, attr):
        import libp2p

        version = getattr(libp2p, "__version__", "?")
        raise Libp2pPatchError(
            f"{patch}: py-libp2p {version} has no {type(obj).__name__}.{attr}; this project "
            "pins libp2p==0.8.1 (see prozchain_discovery/libp2p_fixes.py)"
        )
    return getattr(obj, attr)


def safe_connection_config(dial_timeout: float = 10.0) -> ConnectionConfig:
    """Bug 1: one connection per peer makes a dial end as soon as it succeeds (5 ms, not 250)."""
    return ConnectionConfig(
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        min_connections=0,
    )


class _InertAutoConnector:
    """Stands in for ``libp2p.network.auto_connector.AutoConnector`` (bug 9)."""

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

    # Exactly what py-libp2p 0.8.1 calls (start, stop, run_background_task, maybe_connect,
    # record_disconnect, set_discovery_callback, _is_connecting). Anything else raises
    # AttributeError: a no-op answering every name would hide a new async hook (a coroutine
    # never awaited) or a property read behind None.


def disable_auto_connector(host: Any) -> None:
    """Bug 9: stop py-libp2p from dialing every peerstore entry behind our back."""
    network = host.get_network()
    _require(network, "auto_connector", "disable_auto_connector")
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
    mux = _require(host, "multiselect", "tolerate_handler_removal")
    handlers = _require(mux, "handlers", "tolerate_handler_removal")
    if not isinstance(handlers, dict):
        raise Libp2pPatchError(f"tolerate_handler_removal: multiselect.handlers is a {type(handlers).__name__}")
    if not isinstance(handlers, _HandlerTable):
        mux.handlers = _HandlerTable(handlers)


def no_swarm_retries(host: Any) -> None:
    from libp2p.network.config import RetryConfig

    network = host.get_network()
    _require(network, "retry_config", "no_swarm_retries")
    network.retry_config = RetryConfig(max_retries=0)


def defer_identify(host: Any, delay: float = 0.25) -> None:
    """Start identify ``delay`` s after a connection, except where it is needed at once.

    Relayed connections (``/p2p-circuit``) and peers named by :func:`identify_now` (hole
    punching needs the peer's addresses before it can punch) are identified immediately.
    """
    original = _require(host, "_identify_task_entry", "defer_identify")
    if getattr(original, "_deferred", False):
        return
    if not hasattr(host, "_prozchain_identify_now"):
        host._prozchain_identify_now = set()

    async def deferred(peer_id: Any, reason: str) -> None:
        if peer_id not in host._prozchain_identify_now and not _is_relayed_peer(host, peer_id):
            await trio.sleep(delay)
        host._prozchain_identify_now.discard(peer_id)
        await original(peer_id, reason)

    deferred._deferred = True  # type: ignore[attr-defined]
    host._identify_task_entry = deferred


def identify_now(host: Any, peer_id: Any) -> None:
    """The next identify of ``peer_id`` starts at once (no :func:`defer_identify` delay)."""
    pending = getattr(host, "_prozchain_identify_now", None)
    if pending is not None and len(pending) < 1024:
        pending.add(peer_id)


def _is_relayed_peer(host: Any, peer_id: Any) -> bool:
    try:
        conns = host.get_network().get_connections(peer_id)
    except Exception:  # a host without the method: treat as direct
        return False
    for conn in conns:
        try:
            addrs = conn.get_transport_addresses()
        except Exception:
            continue
        if any("/p2p-circuit" in str(a) for a in addrs):
            return True
    return False


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
    IPv6). ``extra`` adds addresses learned elsewhere (observed, UPnP), deduplicated.
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
        return out

    return factory


# Messages py-libp2p logs at WARNING/ERROR for every stream torn down while a host stops.
SHUTDOWN_NOISE = (
    "Error resetting stream",
    "Error closing muxed connection",
    "Error while closing muxed connection",
    "Error closing connection",
    "Failed to send GO_AWAY",
    "LifecycleError",
    "Stream closed",
    "stream reset",
)


class RateLimitFilter(logging.Filter):
    """At most ``rate_per_minute`` records per message template and logger each minute; then one
    "suppressed N similar" line when the minute is over. Known shutdown noise goes to DEBUG."""

    def __init__(self, rate_per_minute: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.rate = rate_per_minute
        self.clock = clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True  # installed on the application's handlers: only libp2p's records
        verdict = getattr(record, "_prozchain_rate_verdict", None)
        if verdict is None:  # one decision per record, however many handlers ask
            verdict = self._decide(record)
            record._prozchain_rate_verdict = verdict
        return bool(verdict)

    def _decide(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if record.levelno > logging.DEBUG and any(n in text or n in record.getMessage() for n in SHUTDOWN_NOISE):
            if logging.getLogger("libp2p").getEffectiveLevel() > logging.DEBUG:
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        key = (record.name, text[:200])
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= 60.0:
            if window is not None and window[2]:
                record.msg = f"{record.msg} (and {int(window[2])} similar in the last minute, suppressed)"
            if len(self._windows) > 1000:
                self._windows.clear()  # bounded: a flood of distinct messages resets the table
            self._windows[key] = [now, 1, 0]
            return True
        window[1] += 1
        if window[1] <= self.rate:
            return True
        window[2] += 1
        return False


def route_libp2p_logs(level: int = logging.WARNING, *, rate_per_minute: int = 10,
                      clock: Callable[[], float] = time.monotonic) -> RateLimitFilter:
    """Bug 16: libp2p's records at ``level`` and above go through the application's handlers,
    rate-limited (:class:`RateLimitFilter` on the root logger's handlers: a logger's own filters
    do not see its children's records). Idempotent: a second call replaces the filter."""
    lg = logging.getLogger("libp2p")
    lg.propagate = True
    lg.setLevel(level)
    limiter = RateLimitFilter(rate_per_minute, clock)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RateLimitFilter)]:
            handler.removeFilter(old)
        handler.addFilter(limiter)
    # Some libp2p modules pin their own level to INFO (e.g. the auto connector); quiet them.
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(obj, logging.Logger):
            obj.setLevel(level)
            obj.propagate = True
    return limiter


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
