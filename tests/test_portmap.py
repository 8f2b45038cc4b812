"""PortMapper.run on trio's MockClock: renewals, a gateway that goes away and comes back, a
renewal that hands out another external address. The gateway is a stand-in for the three
methods (the lab tests in test_nat_lab.py use the real miniupnpd)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import trio

from prozchain_discovery.metrics import Metrics
from prozchain_discovery.nat.portmap import PortMapper, PortMapping

LEASE = 120


@dataclass
class Gateway:
    up: bool = True
    external_ip: str = "198.51.100.100"
    asked: list[float] = field(default_factory=list)
    deleted: list[PortMapping] = field(default_factory=list)


class MapperOnGateway(PortMapper):
    def __init__(self, gw: Gateway, changes: list[list[str]]) -> None:
        super().__init__(lambda: [("tcp", 4001)], metrics=Metrics(),
                         on_change=lambda ms: changes.append([m.multiaddr for m in ms]), lease=LEASE)
        self.gw = gw

    async def _map(self, proto: str, port: int, renewing: PortMapping | None) -> PortMapping | None:
        self.gw.asked.append(trio.current_time())
        await trio.sleep(0.01)
        if not self.gw.up:
            self.last_error = "NAT-PMP: no answer"
            return None
        return PortMapping("natpmp", proto, port, self.gw.external_ip, port, LEASE, trio.current_time())

    async def _delete(self, m: PortMapping) -> None:
        self.gw.deleted.append(m)


MAPPED = ["/ip4/198.51.100.100/tcp/4001"]


async def test_renewed_at_half_the_lease_and_deleted_on_stop(autojump_clock):
    gw, changes = Gateway(), []
    mapper = MapperOnGateway(gw, changes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mapper.run)
        await trio.sleep(LEASE * 2 + 1)
        nursery.cancel_scope.cancel()
    assert [round(t) for t in gw.asked] == [0, 60, 120, 180, 240]  # mapped, then every LEASE/2
    assert changes == [MAPPED, []]  # a renewal of the same address is no news; stopping is
    assert len(gw.deleted) == 1


async def test_a_gateway_outage_withdraws_the_address_and_its_return_restores_it(autojump_clock):
    gw, changes = Gateway(), []
    mapper = MapperOnGateway(gw, changes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(mapper.run, retry=30.0))
        await trio.sleep(1)
        assert changes == [MAPPED]
        gw.up = False
        await trio.sleep(60)  # the renewal at 60 s fails
        assert changes == [MAPPED, []], "a mapping whose renewal failed was still advertised"
        assert mapper.status()["port_mappings"] == [] and "no answer" in mapper.status()["port_mapping_error"]
        gw.up = True
        await trio.sleep(31)  # retried every 30 s
        assert changes == [MAPPED, [], MAPPED]
        nursery.cancel_scope.cancel()


async def test_a_renewal_with_another_external_address_is_reported(autojump_clock):
    gw, changes = Gateway(), []
    mapper = MapperOnGateway(gw, changes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mapper.run)
        await trio.sleep(1)
        gw.external_ip = "203.0.113.9"  # the router got a new WAN address
        await trio.sleep(60)
        assert changes == [MAPPED, ["/ip4/203.0.113.9/tcp/4001"]]
        nursery.cancel_scope.cancel()
