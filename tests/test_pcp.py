"""PCP (RFC 6887) MAP codec and client, sans-IO: byte layout, answers, what the network can send."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from prozchain_discovery.nat.natpmp import Protocol
from prozchain_discovery.nat.pcp import UNSUPPORTED_VERSION, PcpClient, encode_map

GW = "10.0.3.1"
NONCE = bytes(range(12))


def _answer(nonce=NONCE, result=0, proto=6, internal=4001, external=4001, ext_ip="198.51.100.100", lifetime=3600):
    mapped = b"\x00" * 10 + b"\xff\xff" + bytes(int(x) for x in ext_ip.split("."))
    header = struct.pack("!BBBBII", 2, 0x81, 0, result, lifetime, 12345) + b"\x00" * 12
    return header + nonce + struct.pack("!B3xHH", proto, internal, external) + mapped


def test_map_request_layout():
    req = encode_map("10.0.3.2", NONCE, Protocol.TCP, 4001, 4001, 7200)
    assert len(req) == 60
    assert req[:4] == bytes([2, 1, 0, 0]) and struct.unpack("!I", req[4:8])[0] == 7200
    assert req[8:24] == b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 3, 2])  # IPv4-mapped client IP
    assert req[24:36] == NONCE and req[36] == 6
    assert struct.unpack("!HH", req[40:44]) == (4001, 4001)


def test_a_granted_mapping_and_retransmission():
    c = PcpClient(GW, client_ip="10.0.3.2", initial_rto=0.25, max_sends=3, urandom=lambda n: NONCE)
    assert c.request_mapping(Protocol.TCP, 4001, 4001, 3600, 0.0) == NONCE
    assert len(c.datagrams_to_send()) == 1
    c.on_timer(0.25)
    assert len(c.datagrams_to_send()) == 1  # resent after the first timeout
    c.receive_datagram(_answer(), GW, 0.3)
    [r] = c.results()
    assert r.ok and r.external_ip == "198.51.100.100" and r.external_port == 4001 and r.lifetime == 3600
    assert not c.busy


def test_answers_that_are_not_ours_are_ignored_and_counted():
    c = PcpClient(GW, client_ip="10.0.3.2", urandom=lambda n: NONCE)
    c.request_mapping(Protocol.TCP, 4001, 4001, 3600, 0.0)
    c.receive_datagram(_answer(), "10.9.9.9", 0.1)  # not the gateway
    c.receive_datagram(_answer(nonce=b"x" * 12), GW, 0.1)  # another client's nonce
    c.receive_datagram(_answer(internal=4002), GW, 0.1)  # a port we did not ask for
    c.receive_datagram(b"\x02\x81", GW, 0.1)  # truncated
    assert c.busy and c.results() == []
    assert c.stats["unexpected"] == 3 and c.stats["malformed"] == 1


def test_errors_and_a_nat_pmp_only_gateway():
    c = PcpClient(GW, client_ip="10.0.3.2", urandom=lambda n: NONCE)
    c.request_mapping(Protocol.UDP, 4001, 4001, 3600, 0.0)
    c.receive_datagram(_answer(result=2, proto=17), GW, 0.1)
    [r] = c.results()
    assert not r.ok and r.error == "not authorized" and r.op == "pcp-map-udp"
    c.request_mapping(Protocol.TCP, 4001, 4001, 3600, 1.0)
    c.receive_datagram(struct.pack("!BBHI", 0, 0x82, 1, 99), GW, 1.1)  # NAT-PMP: unsupported version
    [r] = c.results()
    assert not r.ok and r.error == UNSUPPORTED_VERSION


def test_delete_reuses_the_mapping_nonce_and_gives_up_after_max_sends():
    c = PcpClient(GW, client_ip="10.0.3.2", initial_rto=0.1, max_sends=2, urandom=lambda n: b"\xaa" * 12)
    c.request_mapping(Protocol.TCP, 4001, 0, 0, 0.0, NONCE)
    [req] = c.datagrams_to_send()
    assert req[24:36] == NONCE and struct.unpack("!I", req[4:8])[0] == 0
    c.on_timer(0.1)
    c.on_timer(0.5)
    [r] = c.results()
    assert not r.ok and "no answer" in r.error


@given(st.binary(max_size=1200))
def test_garbage_never_raises(data):
    c = PcpClient(GW, client_ip="10.0.3.2", urandom=lambda n: NONCE)
    c.request_mapping(Protocol.TCP, 4001, 4001, 3600, 0.0)
    c.receive_datagram(data, GW, 0.1)
    c.results()
