"""AutoRelay after the happy path, with real py-libp2p hosts on loopback: every relay goes away
and one comes back; a relay refuses a renewal or never answers it; the node turns public and
then private again. The policy's rules are in tests/test_relay_unit.py (plain floats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace

import multiaddr
import pytest
import trio
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Reservation
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from prozchain_discovery.addrs import is_relayed
from prozchain_discovery.events import NatStatusChanged
from prozchain_discovery.nat.status import NatStatus, Reachability
from prozchain_discovery.peerdb import PeerSource
from prozchain_discovery.relay.transport import HOP_PROTOCOL
from prozchain_discovery.service import DiscoveryService
from tests.conftest import identity
from tests.netutil import Net, addr_of, cfg, wait_until

pytestmark = [pytest.mark.network]


def relay_cfg(**changes):
    c = cfg(min_peers=1)
    return replace(c, relay=replace(c.relay, **changes))


def circuits(private: DiscoveryService) -> set[str]:
    return {str(a) for a in private.autorelay.published}


def advertised_circuits(private: DiscoveryService) -> list[str]:
    return [str(a) for a in private.addresses.advertised() if is_relayed(a)]


async def private_node(net: Net) -> DiscoveryService:
    private = await net.node(cfg(min_peers=1))
    private.autorelay.policy.backoff_base = 0.2  # a relay that went away may be asked again soon
    return private


async def connect(private: DiscoveryService, host) -> None:
    assert await private.dial(host.get_id(), [multiaddr.Multiaddr(addr_of(host))], PeerSource.PEX)


def scripted_relay(host, answers: list[Callable[[], HopMessage | None]]) -> list[float]:
    """A hop handler that gives the n-th RESERVE the n-th answer (the last one repeats); an
    answer of None never comes (a relay gone silent). Returns the times RESERVEs came in."""
    seen: list[float] = []

    async def hop(stream) -> None:
        await read_delimited_msg(stream, HopMessage)
        seen.append(trio.current_time())
        answer = answers[min(len(seen), len(answers)) - 1]()
        if answer is None:
            await trio.sleep_forever()
        await write_delimited_msg(stream, answer)
        await stream.close()

    host.set_stream_handler(HOP_PROTOCOL, hop)
    return seen


def ok(host, ttl: int = 2) -> Callable[[], HopMessage]:
    def answer() -> HopMessage:
        addr = multiaddr.Multiaddr(addr_of(host)).to_bytes()
        return HopMessage(type=HopMessage.STATUS, status=StatusCode.OK,  # type: ignore[arg-type]
                          reservation=Reservation(expire=int(time.time()) + ttl, addrs=[addr]))
    return answer


def refused() -> HopMessage:
    return HopMessage(type=HopMessage.STATUS, status=StatusCode.RESERVATION_REFUSED)  # type: ignore[arg-type]


async def test_every_relay_goes_away_and_one_comes_back_with_the_same_peer_id():
    key, _ = identity(9001)
    async with AsyncExitStack() as stack:
        net = Net(stack)
        private = await private_node(net)
        async with AsyncExitStack() as doomed:  # the relay stops when this block ends
            relay = await net.node(relay_cfg(serve="on"), key=key, stack=doomed)
            await connect(private, relay.host)
            await wait_until(lambda: circuits(private) == {f"{addr_of(relay)}/p2p-circuit"}, 20)
            await wait_until(lambda: advertised_circuits(private) != [], 5)
            signed = private.metrics.get("own_record_signed")
        # No relay left: the circuit address leaves what we advertise and our record is re-signed.
        await wait_until(lambda: not circuits(private), 10)
        assert advertised_circuits(private) == []
        assert private.metrics.get("own_record_signed") > signed
        assert private.metrics.get("autorelay_releases", reason="disconnected") == 1
        assert private.status()["autorelay"]["relays"] == []
        # The relay restarts (same peer id, a new port) and connects to us (our dialer backs off
        # its old address): a reservation again.
        back = await net.node(relay_cfg(serve="on"), key=key)
        assert back.local_id == relay.local_id
        assert await back.dial(private.local_id, [multiaddr.Multiaddr(addr_of(private))], PeerSource.PEX)
        want = {f"{addr_of(back)}/p2p-circuit"}
        await wait_until(lambda: circuits(private) == want, 20)
        await wait_until(lambda: set(advertised_circuits(private)) == want, 5)
        assert back.status()["relay_server"]["reservations"] == 1


async def test_a_refused_renewal_withdraws_the_circuit_address_and_the_relay_is_asked_again():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        private = await private_node(net)
        relay = await net.host()
        seen = scripted_relay(relay, [ok(relay), refused, ok(relay, ttl=3600)])
        await connect(private, relay)
        want = {f"{addr_of(relay)}/p2p-circuit"}
        await wait_until(lambda: circuits(private) == want, 20)
        # The renewal (due within 2 s) is refused: the circuit address goes at once.
        await wait_until(lambda: private.metrics.get("autorelay_releases", reason="renewal failed") == 1, 5)
        assert len(seen) == 2 and advertised_circuits(private) == []
        await wait_until(lambda: len(seen) == 3 and circuits(private) == want, 10)  # after its backoff
        assert private.metrics.get("autorelay_reservation_failures", status=str(int(StatusCode.RESERVATION_REFUSED))) == 1


async def test_a_relay_that_never_answers_the_renewal_is_replaced_when_the_reservation_expires():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        private = await private_node(net)
        private.autorelay.policy.target = 1
        silent, good = await net.host(), await net.host()
        silent_seen = scripted_relay(silent, [ok(silent), lambda: None])
        good_seen = scripted_relay(good, [ok(good, ttl=3600)])
        await connect(private, silent)
        await wait_until(lambda: len(circuits(private)) == 1, 20)
        await connect(private, good)
        await trio.sleep(0.3)  # good is a candidate now; one reservation is the target
        assert good_seen == []
        # The renewal hangs (15 s time-out), the reservation runs out within 2 s: the silent
        # relay backs off and the other one takes over at once.
        await wait_until(lambda: private.metrics.get("autorelay_releases", reason="expired") == 1, 10)
        await wait_until(lambda: len(good_seen) == 1 and str(good.get_id()) in " ".join(circuits(private)), 5)
        assert len(silent_seen) == 2  # the first reservation and its renewal, nothing more
        assert not any(str(silent.get_id()) in a for a in advertised_circuits(private))


async def test_public_then_private_again_releases_then_reserves_again():
    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(serve="on"))
        private = await private_node(net)
        await connect(private, relay.host)
        want = {f"{addr_of(relay)}/p2p-circuit"}
        await wait_until(lambda: circuits(private) == want, 20)
        private.bus.publish(NatStatusChanged(NatStatus(reachability=Reachability.PUBLIC)))
        assert circuits(private) == set() and advertised_circuits(private) == []
        assert private.metrics.get("autorelay_releases", reason="public") == 1
        private.bus.publish(NatStatusChanged(NatStatus(reachability=Reachability.PRIVATE)))
        await wait_until(lambda: circuits(private) == want, 10)
        assert set(advertised_circuits(private)) == want
        assert private.metrics.get("autorelay_reservations", kind="new") == 2
        assert private.status()["autorelay"]["public"] is False


async def test_a_relay_that_stops_serving_is_dropped_at_the_next_rescan(monkeypatch):
    """A relay with serve = "auto" that turns private pushes identify without hop; the client
    drops it and its circuit address within one rescan, not at its renewal up to an hour later."""
    from prozchain_discovery.relay import client

    monkeypatch.setattr(client, "RESCAN_INTERVAL", 0.5)
    async with AsyncExitStack() as stack:
        net = Net(stack)
        relay = await net.node(relay_cfg(serve="auto"))
        relay.bus.publish(NatStatusChanged(NatStatus(reachability=Reachability.PUBLIC)))
        await wait_until(lambda: relay.relay_server.serving, 5)
        private = await net.node(cfg(bootstrap=(addr_of(relay),), min_peers=1))
        await wait_until(lambda: circuits(private) == {f"{addr_of(relay)}/p2p-circuit"}, 20)
        relay.bus.publish(NatStatusChanged(NatStatus(reachability=Reachability.PRIVATE)))
        await wait_until(lambda: not relay.relay_server.serving, 5)
        await wait_until(lambda: circuits(private) == set(), 10)
        assert not advertised_circuits(private)
        assert private.metrics.get("autorelay_releases", reason="no_hop") == 1
        assert relay.local_id in private.connected  # still a peer, only no relay
