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
  (called by the CLI, not at import) sends its warnings through the application's logging.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.network.config import ConnectionConfig

from .addrs import AddrScope, scope_of

__all__ = [
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

    def __getattr__(self, name: str) -> Any:
        # Any other hook the swarm may call in a later 0.8.x: a no-op.
        def _noop(*_args: Any, **_kwargs: Any) -> None:
            return None

        return _noop


def disable_auto_connector(host: Any) -> None:
    """Bug 9: stop py-libp2p from dialing every peerstore entry behind our back."""
    network = host.get_network()
    if hasattr(network, "auto_connector"):
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
    mux = getattr(host, "multiselect", None)
    if mux is not None and isinstance(mux.handlers, dict) and not isinstance(mux.handlers, _HandlerTable):
        mux.handlers = _HandlerTable(mux.handlers)


def no_swarm_retries(host: Any) -> None:
    from libp2p.network.config import RetryConfig

    network = host.get_network()
    if hasattr(network, "retry_config"):
        network.retry_config = RetryConfig(max_retries=0)


def defer_identify(host: Any, delay: float = 0.25) -> None:
    original = getattr(host, "_identify_task_entry", None)
    if original is None or getattr(original, "_deferred", False):
        return

    async def deferred(peer_id: Any, reason: str) -> None:
        await trio.sleep(delay)
        await original(peer_id, reason)

    deferred._deferred = True  # type: ignore[attr-defined]
    host._identify_task_entry = deferred


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


def route_libp2p_logs(level: int = logging.WARNING) -> None:
    """Bug 16: make libp2p's warnings go through the application's handlers, at ``level``."""
    lg = logging.getLogger("libp2p")
    lg.propagate = True
    lg.setLevel(level)
    # Some libp2p modules pin their own level to INFO (e.g. the auto connector); quiet them.
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(obj, logging.Logger):
            obj.setLevel(level)


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
