"""Local discovery with mDNS (libp2p's ``_p2p._udp.local`` convention), off the trio loop.

py-libp2p's own mDNS blocks the loop ~1.6 s in ``register_service``, calls back from
zeroconf's thread into the host, and keeps module-level state; we do not use it. Here every
blocking zeroconf call runs in a worker thread (``trio.to_thread``), and zeroconf's listener
callbacks — which fire on zeroconf's own thread — only hand a service name to trio through
``trio.from_thread.run_sync``; everything else happens on the trio side.

Advertised: one ``dnsaddr=<multiaddr>/p2p/<id>`` TXT string per address, as the libp2p mDNS
spec says; unspecified (``0.0.0.0``), circuit, websocket and webrtc addresses are skipped.
Peers are read from TXT ``dnsaddr=`` strings, or, for implementations that answer SRV + A only,
from the service's addresses and port (the peer id then comes from the TXT or instance name).

js-libp2p (and go-libp2p) answer a PTR query with the PTR and a TXT record only — no SRV, no A —
and zeroconf's ``get_service_info`` waits for an SRV that never comes. So a name is first
resolved from the TXT record zeroconf already cached with the PTR (:func:`parse_txt`: every
``dnsaddr=`` string, not zeroconf's properties dict, which keeps one value per key), and only
then by asking for the service info. The TXT is bounded (``MAX_TXT_STRINGS`` strings, each a
multiaddr with the same ``/p2p/<id>``; circuit, websocket, webrtc and unspecified addresses are
skipped, as in what we advertise).

Bounds (issue #8): a LAN — or one spoofer — can announce names faster than we resolve them, so

* at most ``max_resolves`` (4) names are resolved at once, by that many worker tasks;
* at most ``max_pending`` (256) names wait for (or are in) resolution; a name beyond that is
  dropped and counted (``dropped_pending``) — a peer still announcing is offered again at the
  next re-query;
* a name already pending is not queued twice (``deduplicated``); if it is announced again while
  its resolution is in flight, it is resolved once more afterwards (the records may have changed).

Every ``requery_interval`` a PTR query for ``_p2p._udp.local.`` is really sent (with the PTRs
we hold as known answers, RFC 6762 §7.1, so peers we know stay quiet and new ones answer), and
the names still in zeroconf's cache are offered again, so a peer still announcing is reported
again each interval (the local-discovery component re-dials from that while short of peers).
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ..addrs import AddrScope, peer_id_of, scope_of, strip_p2p

__all__ = ["MdnsPeer", "MdnsDiscovery", "SERVICE_TYPE", "Resolver", "Requerier", "send_ptr_query", "parse_txt"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2p._udp.local."
_SKIP = ("p2p-circuit", "ws", "wss", "webrtc", "webrtc-direct", "webtransport")
_TYPE_PTR = 12  # RFC 1035
_TYPE_TXT = 16
MAX_TXT_STRINGS = 64  # dnsaddr strings read from one TXT record (a record holds at most 64 addresses)
MAX_TXT_BYTES = 9000  # a multicast DNS message is at most 9000 bytes (RFC 6762 §17)
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000
RESOLVE_TIMEOUT_MS = 3000
MAX_SEEN = 1024  # peers reported since the last re-query (cleared at each one)


@dataclass(frozen=True)
class MdnsPeer:
    peer_id: ID
    addrs: tuple[Multiaddr, ...]  # full multiaddrs with /p2p/<id>


def advertisable(addrs: Sequence[Multiaddr], peer_id: ID) -> list[Multiaddr]:
    out = []
    for a in addrs:
        t = strip_p2p(a)
        if scope_of(t) in (AddrScope.UNSPECIFIED, AddrScope.OTHER):
            continue
        if any(p.name in _SKIP for p in t.protocols()):
            continue
        out.append(Multiaddr(f"{t}/p2p/{peer_id}"))
    return out


def parse_service(properties: dict[Any, Any], addresses: Sequence[str], port: int | None) -> MdnsPeer | None:
    """A peer from a resolved service's TXT properties (and SRV/A as a fallback)."""
    addrs: list[Multiaddr] = []
    peer: ID | None = None
    for key, value in properties.items():
        k = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        v = value.decode(errors="replace") if isinstance(value, bytes) else value
        if k != "dnsaddr" or not v:
            continue
        try:
            ma = Multiaddr(v)
        except Exception:
            continue
        pid = peer_id_of(ma)
        if pid is None or (peer is not None and pid != peer):
            continue
        peer = pid
        addrs.append(ma)
    if peer is None:
        return None
    if not addrs and port:
        addrs = [Multiaddr(f"/ip4/{ip}/tcp/{port}/p2p/{peer}") for ip in addresses if ":" not in ip]
    return MdnsPeer(peer, tuple(addrs)) if addrs else None


def _dnsaddr(value: str, peer: ID | None) -> tuple[ID, Multiaddr] | None:
    """One ``dnsaddr=`` value as (peer id, multiaddr), or None if it is unusable or names another peer."""
    try:
        ma = Multiaddr(value)
        pid = peer_id_of(ma)
        if pid is None or (peer is not None and pid != peer):
            return None
        transport = strip_p2p(ma)
        if any(p.name in _SKIP for p in transport.protocols()):
            return None
        if scope_of(transport) in (AddrScope.UNSPECIFIED, AddrScope.OTHER):
            return None
    except Exception:
        return None
    return pid, ma


def parse_txt(text: bytes) -> MdnsPeer | None:
    """A peer from the raw rdata of a TXT record: length-prefixed ``dnsaddr=<multiaddr>`` strings.

    What js-libp2p and go-libp2p send instead of SRV + A. Bounded: at most ``MAX_TXT_BYTES`` of
    rdata and ``MAX_TXT_STRINGS`` dnsaddr strings are read; strings that do not parse, name
    another peer than the first good one, or hold circuit / websocket / webrtc / unspecified
    addresses are skipped. Never raises.
    """
    data = bytes(text[:MAX_TXT_BYTES])
    pos = 0
    peer: ID | None = None
    addrs: list[Multiaddr] = []
    strings = 0
    while pos < len(data) and strings < MAX_TXT_STRINGS:
        n = data[pos]
        item = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if len(item) < n or not item.startswith(b"dnsaddr="):
            continue
        strings += 1
        try:
            value = item[len(b"dnsaddr="):].decode("ascii")
        except UnicodeDecodeError:
            continue
        found = _dnsaddr(value, peer)
        if found is None:
            continue
        peer = found[0]
        if found[1] not in addrs:
            addrs.append(found[1])
    return MdnsPeer(peer, tuple(addrs)) if peer is not None and addrs else None


def cached_txt_peer(zc: Any, name: str) -> MdnsPeer | None:
    """The peer in a TXT record for ``name`` that zeroconf already cached (it came with the PTR).

    Call it through ``trio.to_thread``, as every zeroconf call here.
    """
    from zeroconf import DNSText, current_time_millis

    now = current_time_millis()
    for record in zc.cache.get_all_by_details(name, _TYPE_TXT, _CLASS_IN):
        if isinstance(record, DNSText) and not record.is_expired(now):
            peer = parse_txt(record.text)
            if peer is not None:
                return peer
    return None


Resolver = Callable[[str], Awaitable[MdnsPeer | None]]
"""Resolve one service instance name to a peer (``None``: no answer, or nothing usable)."""
Requerier = Callable[[], Awaitable[Iterable[str]]]
"""Send a PTR query for :data:`SERVICE_TYPE`; returns the instance names known now."""


def send_ptr_query(zc: Any) -> list[str]:
    """Send one multicast PTR query for :data:`SERVICE_TYPE`, from any thread.

    The PTRs in ``zc``'s cache that are less than half expired go along as known answers (RFC
    6762 §7.1: responders we already know stay quiet; new ones answer). Returns the instance
    names of every unexpired cached PTR. ``DNSCache.get_all_by_details`` copies before
    iterating and ``Zeroconf.send`` hands the packet to zeroconf's loop thread-safely; still,
    call it through ``trio.to_thread``, as every zeroconf call here.
    """
    from zeroconf import DNSOutgoing, DNSPointer, DNSQuestion, current_time_millis

    now = current_time_millis()
    cached = [
        r for r in zc.cache.get_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN)
        if isinstance(r, DNSPointer) and not r.is_expired(now)
    ]
    out = DNSOutgoing(_FLAGS_QUERY, True)
    out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
    for r in cached:
        if not r.is_stale(now):
            out.add_answer_at_time(r, now)
    zc.send(out)
    return [r.alias for r in cached]


class MdnsDiscovery:
    """Advertise ourselves and report peers found on the LAN as :class:`MdnsPeer`.

    ``resolver`` and ``requerier`` replace the zeroconf-backed resolution and re-query (tests
    drive :meth:`serve` and :meth:`offer` with them, without multicast); :meth:`run` uses them
    when given, and zeroconf's otherwise.
    """

    SERVICE_TYPE = SERVICE_TYPE

    def __init__(
        self,
        peer_id: ID,
        addrs_provider: Callable[[], Sequence[Multiaddr]],
        *,
        interfaces: Any = None,
        requery_interval: float = 10.0,
        max_resolves: int = 4,
        max_pending: int = 256,
        resolver: Resolver | None = None,
        requerier: Requerier | None = None,
    ) -> None:
        if max_resolves < 1 or max_pending < 1:
            raise ValueError("max_resolves and max_pending must be at least 1")
        self.peer_id = peer_id
        self.addrs_provider = addrs_provider
        self.interfaces = interfaces
        self.requery_interval = requery_interval
        self.max_resolves = max_resolves
        self.max_pending = max_pending
        self.resolver = resolver
        self.requerier = requerier
        self.instance = secrets.token_hex(16)  # the spec wants a random 32-63 char label
        self._seen: dict[ID, tuple[str, ...]] = {}  # reported since the last re-query
        # Names queued or being resolved -> announced again while being resolved. The queue
        # never holds more than len(_pending) names, so its buffer of max_pending never fills.
        self._pending: dict[str, bool] = {}
        self._resolving: set[str] = set()
        self._queue_send, self._queue_recv = trio.open_memory_channel[str](max_pending)
        self._found = 0
        self._resolves = 0
        self._resolve_failures = 0
        self._dropped_pending = 0
        self._deduplicated = 0
        self._requeries = 0
        self._requery_failures = 0

    def stats(self) -> dict[str, int]:
        return {
            "found": self._found,
            "resolves": self._resolves,
            "resolve_failures": self._resolve_failures,
            "dropped_pending": self._dropped_pending,
            "deduplicated": self._deduplicated,
            "requeries": self._requeries,
            "requery_failures": self._requery_failures,
            "pending": len(self._pending),
            "resolving": len(self._resolving),
        }

    def offer(self, name: str) -> bool:
        """Queue a service instance name for resolution (from the trio thread).

        False if the name is ours, already pending (deduplicated), or dropped because
        ``max_pending`` names are pending.
        """
        if name.startswith(self.instance):
            return False
        if name in self._pending:
            self._deduplicated += 1
            if name in self._resolving:
                self._pending[name] = True  # resolve it again once this resolution ends
            return False
        if len(self._pending) >= self.max_pending:
            self._dropped_pending += 1
            return False
        self._pending[name] = False
        self._queue_send.send_nowait(name)
        return True

    def _service_info(self) -> Any:
        from zeroconf import ServiceInfo

        addrs = advertisable(self.addrs_provider(), self.peer_id)
        ipv4 = []
        port = 0
        for a in addrs:
            try:
                ip = a.value_for_protocol("ip4")
                port = port or int(a.value_for_protocol("tcp"))
                ipv4.append(socket.inet_aton(ip))
            except Exception:
                continue
        # One TXT string per address. zeroconf's properties are a dict, so keys must differ:
        # we pass pre-encoded TXT strings through the "text" argument instead.
        text = b"".join(len(s).to_bytes(1, "big") + s for s in (f"dnsaddr={a}".encode() for a in addrs)
                        if len(s) < 256)
        return ServiceInfo(
            SERVICE_TYPE,
            f"{self.instance}.{SERVICE_TYPE}",
            addresses=ipv4 or [socket.inet_aton("127.0.0.1")],
            port=port or 1,
            properties=text,
            server=f"{self.instance}.local.",
        )

    async def run(
        self,
        found: trio.MemorySendChannel[MdnsPeer],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceStateChange,
            Zeroconf,
        )

        token = trio.lowlevel.current_trio_token()

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # Runs on zeroconf's thread: only hand the name over.
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                try:
                    trio.from_thread.run_sync(self.offer, name, trio_token=token)
                except trio.RunFinishedError:
                    pass

        interfaces = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only))
        browser = None
        try:
            info = self._service_info()
            await trio.to_thread.run_sync(zc.register_service, info)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
            )

            async def resolve(name: str) -> MdnsPeer | None:
                return await _zc_resolve(zc, name)

            async def requery() -> list[str]:
                return await trio.to_thread.run_sync(send_ptr_query, zc, abandon_on_cancel=True)  # type: ignore[call-arg]

            await self.serve(
                found,
                resolver=self.resolver or resolve,
                requerier=self.requerier or requery,
                task_status=task_status,
            )
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await trio.to_thread.run_sync(self._shutdown, zc, browser, abandon_on_cancel=True)  # type: ignore[call-arg]

    async def serve(
        self,
        found: trio.MemorySendChannel[MdnsPeer],
        *,
        resolver: Resolver | None = None,
        requerier: Requerier | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The trio side: resolve offered names (bounded) and re-query every interval."""
        resolver = resolver or self.resolver
        requerier = requerier or self.requerier
        if resolver is None or requerier is None:
            raise ValueError("serve() needs a resolver and a requerier")
        async with trio.open_nursery() as nursery:
            for _ in range(self.max_resolves):
                nursery.start_soon(self._worker, resolver, found)
            nursery.start_soon(self._requery_loop, requerier)
            task_status.started()

    @staticmethod
    def _shutdown(zc: Any, browser: Any) -> None:
        try:
            if browser is not None:
                browser.cancel()
            zc.unregister_all_services()
        finally:
            zc.close()

    async def _requery_loop(self, requerier: Requerier) -> None:
        """Send a real query each interval; offer again the names still announced."""
        while True:
            await trio.sleep(self.requery_interval)
            try:
                names = list(await requerier())
            except Exception as e:
                self._requery_failures += 1
                log.debug("mdns: re-query failed: %r", e)
                continue
            self._requeries += 1
            self._seen.clear()  # a peer still announcing is reported again
            for name in names:
                self.offer(name)

    async def _worker(self, resolver: Resolver, found: trio.MemorySendChannel[MdnsPeer]) -> None:
        async for name in self._queue_recv:
            self._resolving.add(name)
            try:
                await self._resolve(resolver, name, found)
            finally:
                self._resolving.discard(name)
                if self._pending.pop(name, False):
                    self.offer(name)

    async def _resolve(self, resolver: Resolver, name: str, found: trio.MemorySendChannel[MdnsPeer]) -> None:
        self._resolves += 1
        try:
            peer = await resolver(name)
        except Exception as e:
            log.debug("mdns: resolving %s failed: %r", name, e)
            peer = None
        if peer is None:
            self._resolve_failures += 1
            return
        if peer.peer_id == self.peer_id:
            return
        key = tuple(sorted(str(a) for a in peer.addrs))
        if self._seen.get(peer.peer_id) == key:
            return
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        self._seen[peer.peer_id] = key
        self._found += 1
        log.info("mdns: found %s at %s", peer.peer_id, ", ".join(key))
        try:
            await found.send(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _zc_resolve(zc: Any, name: str) -> MdnsPeer | None:
    # js/go answer PTR + TXT only: use the TXT zeroconf cached with the PTR before asking for
    # an SRV that may never come.
    peer: MdnsPeer | None = await trio.to_thread.run_sync(cached_txt_peer, zc, name)
    if peer is not None:
        return peer
    info = await trio.to_thread.run_sync(  # type: ignore[call-arg]
        zc.get_service_info, SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS, abandon_on_cancel=True
    )
    if info is None:
        # The TXT may have arrived while we waited (an answer to zeroconf's own queries).
        return await trio.to_thread.run_sync(cached_txt_peer, zc, name)
    peer = parse_txt(info.text) if info.text else None
    if peer is not None:
        return peer
    try:
        addresses = info.parsed_addresses()
    except Exception:
        addresses = []
    return parse_service(info.properties or {}, addresses, info.port)
