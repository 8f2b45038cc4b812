"""mDNS resolution bounds, de-duplication and re-query, without multicast (issue #8).

A fake resolver and requerier go in through the constructor; the tests drive the public
``serve``/``offer`` path that ``run`` feeds from zeroconf's browser.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from multiaddr import Multiaddr

from prozchain_discovery.bootstrap.mdns import SERVICE_TYPE, MdnsDiscovery, MdnsPeer, send_ptr_query
from tests.conftest import identity

LOCAL = identity(1)[1]


def name(i: int) -> str:
    return f"peer{i}.{SERVICE_TYPE}"


def peer_for(i: int, port: int = 4001) -> MdnsPeer:
    pid = identity(100 + i)[1]
    return MdnsPeer(pid, (Multiaddr(f"/ip4/10.0.0.{i % 250 + 1}/tcp/{port}/p2p/{pid}"),))


class FakeResolver:
    """Resolves ``peer<i>...`` to ``peer_for(i)``; blocks while ``gate`` is unset."""

    def __init__(self, *, block: bool = False) -> None:
        self.gate = trio.Event()
        if not block:
            self.gate.set()
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0
        self.port = 4001

    async def __call__(self, n: str) -> MdnsPeer | None:
        self.calls.append(n)
        port = self.port  # the records as they were when the query went out
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gate.wait()
            if n.startswith("broken"):
                raise OSError("no answer")
            if n.startswith("silent"):
                return None
            if n.startswith("self"):
                return MdnsPeer(LOCAL, (Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{LOCAL}"),))
            return peer_for(int(n.split(".")[0].removeprefix("peer")), port)
        finally:
            self.active -= 1


class FakeRequerier:
    def __init__(self, names: list[str] | None = None) -> None:
        self.names = names or []
        self.sent_at: list[float] = []

    async def __call__(self) -> list[str]:
        self.sent_at.append(trio.current_time())
        return list(self.names)


async def collect(recv: trio.MemoryReceiveChannel[MdnsPeer], out: list[MdnsPeer]) -> None:
    async for p in recv:
        out.append(p)


async def test_resolves_are_bounded_and_the_pending_set_too():
    resolver = FakeResolver(block=True)
    d = MdnsDiscovery(LOCAL, list, max_resolves=4, max_pending=8,
                      resolver=resolver, requerier=FakeRequerier(), requery_interval=3600)
    found: list[MdnsPeer] = []
    async with trio.open_nursery() as nursery:
        send, recv = trio.open_memory_channel[MdnsPeer](100)
        await nursery.start(d.serve, send)
        nursery.start_soon(collect, recv, found)
        accepted = [d.offer(name(i)) for i in range(1000)]  # an announcement storm
        await trio.testing.wait_all_tasks_blocked()
        assert sum(accepted) == 8 and accepted[:8] == [True] * 8
        assert resolver.max_active == 4 and len(resolver.calls) == 4
        s = d.stats()
        assert s["dropped_pending"] == 992 and s["pending"] == 8 and s["resolving"] == 4

        resolver.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert resolver.max_active == 4
        assert sorted(resolver.calls) == sorted(name(i) for i in range(8))
        assert {p.peer_id for p in found} == {peer_for(i).peer_id for i in range(8)}
        s = d.stats()
        assert s["pending"] == 0 and s["resolving"] == 0
        assert s["found"] == 8 and s["resolves"] == 8 and s["resolve_failures"] == 0

        assert d.offer(name(500))  # room again once the backlog is worked off
        await trio.testing.wait_all_tasks_blocked()
        assert found[-1] == peer_for(500)
        nursery.cancel_scope.cancel()


async def test_a_name_already_pending_is_not_queued_twice():
    resolver = FakeResolver(block=True)
    d = MdnsDiscovery(LOCAL, list, max_resolves=1, resolver=resolver,
                      requerier=FakeRequerier(), requery_interval=3600)
    found: list[MdnsPeer] = []
    async with trio.open_nursery() as nursery:
        send, recv = trio.open_memory_channel[MdnsPeer](100)
        await nursery.start(d.serve, send)
        nursery.start_soon(collect, recv, found)
        assert d.offer(name(1)) and d.offer(name(2))
        await trio.testing.wait_all_tasks_blocked()
        assert resolver.calls == [name(1)]  # 1 in flight, 2 queued
        assert not d.offer(name(2)) and not d.offer(name(2))  # queued: nothing to add
        assert not d.offer(name(1))  # in flight: resolved once more afterwards
        assert not d.offer(name(1))
        assert d.stats()["deduplicated"] == 4 and d.stats()["pending"] == 2

        resolver.port = 4002  # the re-announcement carried new records
        resolver.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert resolver.calls == [name(1), name(2), name(1)]
        assert found == [peer_for(1), peer_for(2, 4002), peer_for(1, 4002)]
        assert d.stats()["pending"] == 0
        nursery.cancel_scope.cancel()


async def test_ourselves_and_failures_are_not_reported_and_do_not_stop_the_workers():
    resolver = FakeResolver()
    d = MdnsDiscovery(LOCAL, list, max_resolves=2, resolver=resolver,
                      requerier=FakeRequerier(), requery_interval=3600)
    found: list[MdnsPeer] = []
    async with trio.open_nursery() as nursery:
        send, recv = trio.open_memory_channel[MdnsPeer](100)
        await nursery.start(d.serve, send)
        nursery.start_soon(collect, recv, found)
        assert not d.offer(f"{d.instance}.{SERVICE_TYPE}")  # our own announcement
        for n in ("broken1", "broken2", "silent1", "self1", name(3), name(3)):
            d.offer(n)
            await trio.testing.wait_all_tasks_blocked()
        assert found == [peer_for(3)]  # the second resolve of 3 found nothing new
        s = d.stats()
        assert s["resolves"] == 6 and s["resolve_failures"] == 3 and s["found"] == 1
        nursery.cancel_scope.cancel()


async def test_a_query_is_sent_every_interval_and_known_names_are_reported_again(autojump_clock):
    resolver = FakeResolver()
    requerier = FakeRequerier([name(1), name(2)])
    d = MdnsDiscovery(LOCAL, list, requery_interval=10.0, resolver=resolver, requerier=requerier)
    found: list[MdnsPeer] = []
    async with trio.open_nursery() as nursery:
        send, recv = trio.open_memory_channel[MdnsPeer](100)
        t0 = trio.current_time()
        await nursery.start(d.serve, send)
        nursery.start_soon(collect, recv, found)
        d.offer(name(1))
        await trio.sleep(35)
        assert [round(t - t0) for t in requerier.sent_at] == [10, 20, 30]
        assert d.stats()["requeries"] == 3
        # Peer 1 from the browser, then 1 and 2 again after each query: still announcing.
        assert [p.peer_id for p in found].count(peer_for(1).peer_id) == 4
        assert [p.peer_id for p in found].count(peer_for(2).peer_id) == 3
        nursery.cancel_scope.cancel()


async def test_a_failing_query_is_counted_and_the_next_one_still_goes(autojump_clock):
    calls: list[float] = []

    async def requerier() -> list[str]:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise OSError("zeroconf closed")
        return []

    d = MdnsDiscovery(LOCAL, list, requery_interval=5.0, resolver=FakeResolver(), requerier=requerier)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.serve, trio.open_memory_channel[MdnsPeer](1)[0])
        await trio.sleep(11)
        assert len(calls) == 2
        assert d.stats()["requery_failures"] == 1 and d.stats()["requeries"] == 1
        nursery.cancel_scope.cancel()


async def test_serve_needs_a_resolver_and_a_requerier():
    d = MdnsDiscovery(LOCAL, list)  # the service's call: constructor unchanged
    with pytest.raises(ValueError):
        await d.serve(trio.open_memory_channel[MdnsPeer](1)[0])


def test_send_ptr_query_asks_with_known_answers_and_lists_cached_names():
    from zeroconf import DNSCache, DNSPointer

    cache = DNSCache()
    ptrs = [DNSPointer(SERVICE_TYPE, 12, 1, 4500, name(i)) for i in (1, 2)]
    other = DNSPointer("_http._tcp.local.", 12, 1, 4500, "web._http._tcp.local.")
    cache.async_add_records([*ptrs, other])

    class FakeZeroconf:
        def __init__(self) -> None:
            self.cache = cache
            self.sent: list = []

        def send(self, out) -> None:
            self.sent.append(out)

    zc = FakeZeroconf()
    names = send_ptr_query(zc)
    assert sorted(names) == [name(1), name(2)]
    [out] = zc.sent
    assert [(q.name, q.type) for q in out.questions] == [(SERVICE_TYPE, 12)]
    assert sorted(r.alias for r, _ in out.answers) == [name(1), name(2)]  # known answers
    assert out.packets()  # serialises


# ---- TXT-only answers (js-libp2p, go-libp2p): PTR + TXT ``dnsaddr=``, no SRV -------------------

def _txt(*strings: str) -> bytes:
    return b"".join(len(s.encode()).to_bytes(1, "big") + s.encode() for s in strings)


def test_parse_txt_reads_every_dnsaddr_and_skips_bad_ones():
    from prozchain_discovery.bootstrap.mdns import parse_txt

    pid, other = identity(1)[1], identity(2)[1]
    raw = _txt(
        f"dnsaddr=/ip4/127.0.0.1/tcp/4001/p2p/{pid}",
        f"dnsaddr=/ip4/192.168.1.5/tcp/4001/p2p/{pid}",
        f"dnsaddr=/ip4/192.168.1.5/tcp/4001/p2p/{pid}",  # duplicate: kept once
        f"dnsaddr=/ip4/10.0.0.1/tcp/4001/p2p/{other}",  # another peer: skipped
        f"dnsaddr=/ip4/1.2.3.4/tcp/1/p2p/{other}/p2p-circuit/p2p/{pid}",  # circuit: skipped
        f"dnsaddr=/ip4/0.0.0.0/tcp/4001/p2p/{pid}",  # unspecified: skipped
        f"dnsaddr=/ip4/10.0.0.2/tcp/4001/ws/p2p/{pid}",  # websocket: skipped
        "dnsaddr=not a multiaddr",
        "something=else",
    )
    assert parse_txt(raw) == MdnsPeer(pid, (Multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}"),
                                            Multiaddr(f"/ip4/192.168.1.5/tcp/4001/p2p/{pid}")))


@pytest.mark.parametrize("raw", [b"", b"\xff" + b"x" * 10, b"\x05junk!", b"\x00\x00", _txt("dnsaddr=\xff\xfe"),
                                 _txt("dnsaddr=/ip4/10.0.0.1/tcp/1")])  # no /p2p/: no peer id
def test_parse_txt_without_a_usable_address_is_none(raw):
    from prozchain_discovery.bootstrap.mdns import parse_txt

    assert parse_txt(raw) is None


def test_parse_txt_is_bounded():
    from prozchain_discovery.bootstrap.mdns import MAX_TXT_STRINGS, parse_txt

    pid = identity(3)[1]
    raw = _txt(*(f"dnsaddr=/ip4/127.0.0.1/tcp/{4000 + i}/p2p/{pid}" for i in range(300)))
    peer = parse_txt(raw)
    assert peer is not None and len(peer.addrs) <= MAX_TXT_STRINGS


def test_a_txt_cached_with_the_ptr_resolves_without_srv():
    """What js-libp2p answers: the TXT zeroconf cached with the PTR is enough."""
    from zeroconf import DNSCache, DNSText

    from prozchain_discovery.bootstrap.mdns import cached_txt_peer

    pid = identity(4)[1]
    cache = DNSCache()
    cache.async_add_records([DNSText(name(4), 16, 1, 4500, _txt(f"dnsaddr=/ip4/127.0.0.1/tcp/4004/p2p/{pid}"))])

    class CacheOnly:
        def __init__(self) -> None:
            self.cache = cache

    assert cached_txt_peer(CacheOnly(), name(4)) == MdnsPeer(pid, (Multiaddr(f"/ip4/127.0.0.1/tcp/4004/p2p/{pid}"),))
    assert cached_txt_peer(CacheOnly(), name(5)) is None
