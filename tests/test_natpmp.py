"""NAT-PMP (RFC 6886) client codec and retransmission, with plain floats for time."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.nat.natpmp import NatPmpClient, Protocol, renew_at

GW = "10.0.1.1"


def _gateway_answer(request: bytes, epoch: int = 77) -> bytes:
    """What a gateway (miniupnpd) answers: external 203.0.113.5, maps the asked port."""
    version, op = request[0], request[1]
    if op == 0:
        return struct.pack("!BBHI", version, 128, 0, epoch) + bytes([203, 0, 113, 5])
    _, _, _, internal, external, lifetime = struct.unpack("!BBHHHI", request)
    return struct.pack("!BBHIHHI", version, 128 + op, 0, epoch, internal, external or internal, min(lifetime, 3600))


def test_external_address_and_mapping():
    c = NatPmpClient(GW)
    c.request_external_address(0.0)
    c.request_mapping(Protocol.TCP, 4001, 4001, 7200, 0.0)
    sent = c.datagrams_to_send()
    assert sent[0] == b"\x00\x00" and sent[1] == struct.pack("!BBHHHI", 0, 2, 0, 4001, 4001, 7200)
    for d in sent:
        c.receive_datagram(_gateway_answer(d), GW, 0.012)
    ext, tcp = sorted(c.results(), key=lambda r: r.op)
    assert ext.ok and ext.external_ip == "203.0.113.5" and abs(ext.rtt - 0.012) < 1e-9
    assert tcp.ok and tcp.op == "map-tcp" and tcp.external_port == 4001 and tcp.lifetime == 3600
    assert renew_at(10.0, tcp.lifetime) == 1810.0
    assert not c.busy and c.next_deadline() is None


def test_retransmits_doubling_then_gives_up():
    c = NatPmpClient(GW, initial_rto=0.25, max_sends=4)
    c.request_external_address(0.0)
    c.datagrams_to_send()
    sends, now = [0.0], 0.0
    while c.busy:
        now = c.next_deadline()
        c.on_timer(now)
        if c.datagrams_to_send():
            sends.append(now)
    assert sends == [0.0, 0.25, 0.75, 1.75]
    (r,) = c.results()
    assert not r.ok and "no answer" in r.error and c.stats["timeouts"] == 1


def test_refusal_is_reported_with_its_reason():
    c = NatPmpClient(GW)
    c.request_mapping(Protocol.UDP, 4001, 0, 60, 0.0)
    c.datagrams_to_send()
    c.receive_datagram(struct.pack("!BBHIHHI", 0, 129, 2, 5, 4001, 0, 0), GW, 0.01)
    (r,) = c.results()
    assert not r.ok and "refused" in r.error


def test_answers_from_elsewhere_or_unasked_are_ignored():
    c = NatPmpClient(GW)
    c.request_external_address(0.0)
    (req,) = c.datagrams_to_send()
    c.receive_datagram(_gateway_answer(req), "198.51.100.9", 0.01)  # not the gateway
    c.receive_datagram(struct.pack("!BBHIHHI", 0, 130, 0, 5, 9999, 9999, 60), GW, 0.01)  # not asked
    assert c.busy and c.results() == []
    assert c.stats["unexpected"] == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_datagrams_never_raise(data):
    c = NatPmpClient(GW)
    c.request_external_address(0.0)
    c.request_mapping(Protocol.TCP, 4001, 4001, 60, 0.0)
    c.receive_datagram(data, GW, 0.01)
    assert sum(c.stats.values()) >= 0
