"""A state is logged (at INFO) when it changed, not again for every pass or piece of evidence
that leaves it as it was (#15 item 7d). On trio's MockClock."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from prozchain_discovery.bootstrap.dns import DnsSeedResult
from prozchain_discovery.events import EventBus, ReachabilityConfirmed
from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.service import NatService
from prozchain_discovery.nat.status import Reachability
from prozchain_discovery.service import DiscoveryService
from tests.fakehost import FakeHost
from tests.netutil import cfg
from tests.test_nat_service import _Verdict as _UnmappedVerdict


@dataclass
class _Verdict(_UnmappedVerdict):
    mapped_addr: tuple[str, int] = ("198.51.100.9", 4001)


def _info(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith(prefix)]


async def test_nat_line_once_per_change_not_per_evidence(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="prozchain_discovery")
    verdicts = iter([_Verdict("PORT_RESTRICTED")] * 3 + [_Verdict("OPEN", filtering="endpoint_independent")])

    async def classifier(servers):
        await trio.sleep(0.05)
        return next(verdicts)

    nat = NatService(FakeHost(), bus=EventBus(), metrics=Metrics(), stun_servers=[("198.51.100.1", 3478)],
                     classify_interval=60.0, classifier=classifier)
    async with trio.open_nursery() as n:
        n.start_soon(nat.run)
        await trio.sleep(1.0)  # classified, then cross-checked with observed addresses
        nat._on_dial_back(ReachabilityConfirmed(Reachability.UNKNOWN, ("autonat: no dial-back yet",)))
        await trio.sleep(120.0)  # re-classified twice, the same verdict
        assert nat.status_value.nat_type == "port_restricted"
        assert _info(caplog, "NAT: port_restricted") == ["NAT: port_restricted, private, external -"]
        await trio.sleep(60.0)  # a new verdict is news
        assert _info(caplog, "NAT: open") == ["NAT: open, public, external -"]
        n.cancel_scope.cancel()


async def test_cascade_passes_that_change_nothing_are_not_repeated(autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="prozchain_discovery.cascade")
    lookups: list[float] = []

    async def no_addresses(seeds):
        lookups.append(trio.current_time())
        return [DnsSeedResult(s) for s in seeds]

    async with DiscoveryService(FakeHost(), cfg(min_peers=1, dns_seeds=("seed.test",))).run() as svc:
        svc.cascade.dns.resolve_all = no_addresses  # type: ignore[method-assign]
        await trio.sleep(60.0)  # alone: a pass every 0.5 s
    book = [r for r in caplog.records if r.getMessage().startswith("cascade book:")]
    assert len(book) > 10 and [r.levelno for r in book].count(logging.INFO) == 1
    waits = [r for r in caplog.records if r.getMessage().startswith("dns seeds: next lookup allowed")]
    said = [r for r in waits if r.levelno == logging.INFO]
    assert len(waits) > len(said) and 1 <= len(said) <= len(lookups)  # once per wait between lookups
