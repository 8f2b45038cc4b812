"""The STUN server (sans-IO responder and trio sockets) and classify_nat on loopback.

127.0.0.1 and 127.0.0.2 are both loopback on Linux, so a four-socket RFC 5780 server runs here;
the classification itself (no NAT on loopback) must say OPEN.
"""

from __future__ import annotations

import pytest
import trio
from aioice.stun import Class, Message, Method, parse_message

from prozchain_discovery.nat.classify import FilteringBehavior, MappingBehavior, NatType
from prozchain_discovery.nat.stun import encode_binding_request
from prozchain_discovery.nat.stun_io import NoStunServer, classify_nat
from prozchain_discovery.nat.stun_server import MAX_RESPONSE, StunResponder, serve_stun

A, B = "198.51.100.1", "198.51.100.2"
CLIENT = ("203.0.113.7", 40000)


def tid(i: int) -> bytes:
    return i.to_bytes(12, "big")


# ---- the responder, sans-IO -------------------------------------------------------------------


def test_binding_answer_with_rfc5780_attributes():
    r = StunResponder([A, B], [3478, 3479])
    ((payload, sent_from, to),) = r.handle(encode_binding_request(tid(1)), CLIENT, (A, 3478), 0.0)
    msg = parse_message(payload)
    assert (msg.message_class, msg.transaction_id, sent_from, to) == (
        Class.RESPONSE,
        tid(1),
        (A, 3478),
        CLIENT,
    )
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert msg.attributes["RESPONSE-ORIGIN"] == (A, 3478)
    assert msg.attributes["OTHER-ADDRESS"] == (B, 3479)
    assert "FINGERPRINT" in msg.attributes and len(payload) <= MAX_RESPONSE


def test_change_request_picks_the_socket():
    r = StunResponder([A, B], [3478, 3479])
    for flags, want in ((6, (B, 3479)), (2, (A, 3479)), (4, (B, 3478))):
        ((payload, sent_from, _),) = r.handle(
            encode_binding_request(tid(flags), flags), CLIENT, (A, 3478), 0.0
        )
        assert sent_from == want and parse_message(payload).attributes["RESPONSE-ORIGIN"] == want
    # from the alternate socket, OTHER-ADDRESS is the primary
    ((payload, _, _),) = r.handle(encode_binding_request(tid(9)), CLIENT, (B, 3479), 0.0)
    assert parse_message(payload).attributes["OTHER-ADDRESS"] == (A, 3478)


def test_change_request_without_an_alternate_is_refused_with_420():
    r = StunResponder([A], [3478, 3479])  # change port works, change IP cannot
    ((payload, sent_from, _),) = r.handle(encode_binding_request(tid(1), 2), CLIENT, (A, 3478), 0.0)
    assert sent_from == (A, 3479) and "OTHER-ADDRESS" not in parse_message(payload).attributes
    ((payload, sent_from, _),) = r.handle(encode_binding_request(tid(2), 6), CLIENT, (A, 3478), 0.0)
    msg = parse_message(payload)  # aioice checks the FINGERPRINT we appended by hand
    assert msg.message_class == Class.ERROR and msg.error_code == 420 and sent_from == (A, 3478)
    assert b"\x00\x0a\x00\x02\x00\x03\x00\x00" in payload  # UNKNOWN-ATTRIBUTES: CHANGE-REQUEST
    assert r.stats["error_responses"] == 1


def test_unknown_comprehension_required_attribute_gets_420():
    # RESPONSE-PORT (0x0027, RFC 5780) asks to answer to another port: not supported, refused
    req = b"\x00\x01\x00\x08\x21\x12\xa4\x42" + tid(1) + b"\x00\x27\x00\x04\x13\x88\x00\x00"
    ((payload, _, to),) = StunResponder([A], [3478]).handle(req, CLIENT, (A, 3478), 0.0)
    assert parse_message(payload).error_code == 420 and to == CLIENT
    assert b"\x00\x0a\x00\x02\x00\x27\x00\x00" in payload


def test_no_answer_to_anything_but_a_binding_request():
    r = StunResponder([A, B], [3478, 3479])
    allocate = bytes(Message(Method.ALLOCATE, Class.REQUEST, tid(1)))
    indication = bytes(Message(Method.BINDING, Class.INDICATION, tid(2)))
    response = bytes(
        Message(Method.BINDING, Class.RESPONSE, tid(3), {"XOR-MAPPED-ADDRESS": CLIENT})
    )
    unknown_method = b"\x00\x0b" + encode_binding_request(tid(4))[2:]
    good = encode_binding_request(tid(5))
    junk = [
        allocate,
        indication,
        response,
        unknown_method,
        b"",
        b"\x00" * 19,
        b"GET / HTTP/1.1\r\n\r\n",
        good[:4] + b"\xde\xad\xbe\xef" + good[8:],
        good + bytes(600),
        good[:-1] + b"\x00",
        good[:2] + b"\x00\x08" + good[4:20] + b"\x00\x20\xff\xf0" + bytes(4),
    ]
    for d in junk:
        assert r.handle(d, CLIENT, (A, 3478), 0.0) == []
    assert r.stats["responses"] == r.stats["error_responses"] == 0
    assert r.stats["not_binding"] == 2 and r.stats["not_request"] == 2
    assert (
        r.stats["received"]
        == len(junk)
        == sum(
            r.stats[k]
            for k in (
                "not_binding",
                "not_request",
                "truncated",
                "not_stun",
                "bad_cookie",
                "oversize",
                "malformed",
            )
        )
    )
    assert r.handle(good, ("0.0.0.0", 1), (A, 3478), 0.0) == [] and r.stats["bad_source"] == 1
    assert r.handle(good, CLIENT, ("192.0.2.1", 3478), 0.0) == [] and r.stats["unknown_local"] == 1


def test_rate_limited_per_source_in_a_bounded_table():
    r = StunResponder([A], [3478], rate=10, burst=5, max_sources=3)
    req = encode_binding_request(tid(1))
    answered = sum(len(r.handle(req, CLIENT, (A, 3478), 0.0)) for _ in range(20))
    assert answered == 5 and r.stats["rate_limited"] == 15
    assert len(r.handle(req, CLIENT, (A, 3478), 0.1)) == 1  # 10/s refills one in 100 ms
    for i in range(100):
        r.handle(req, (f"192.0.2.{i}", 5000), (A, 3478), 1.0)
    assert len(r._sources) == 3
    g = StunResponder([A], [3478], global_rate=10, burst=100)
    total = sum(len(g.handle(req, (f"192.0.2.{i}", 5000), (A, 3478), 0.0)) for i in range(50))
    assert total == 10


def test_responder_refuses_bad_configurations():
    for ips, ports in (
        ([], [1]),
        ([A, B, "198.51.100.3"], [1]),
        ([A, A], [1, 2]),
        ([A], [1, 1]),
        (["0.0.0.0", B], [1, 2]),
        ([A, "::1"], [1, 2]),
        ([A], [0]),
    ):
        with pytest.raises(ValueError):
            StunResponder(ips, ports)


# ---- on loopback --------------------------------------------------------------------------------


async def test_classify_against_our_server_on_loopback_is_open():
    async with trio.open_nursery() as nursery:
        server: StunResponder = await nursery.start(serve_stun, ["127.0.0.1", "127.0.0.2"], [0, 0])
        assert len(server.locals) == 4 and server.rfc5780
        result = await classify_nat([server.primary])  # bound to 0.0.0.0: local IP learned
        nursery.cancel_scope.cancel()
    assert result.nat_type == NatType.OPEN and result.rfc5780, result.note
    assert result.mapping == MappingBehavior.ENDPOINT_INDEPENDENT
    assert result.filtering == FilteringBehavior.ENDPOINT_INDEPENDENT
    assert result.local_addr[0] == "127.0.0.1" and result.mapped_addr == result.local_addr
    assert result.servers_used == (server.primary,)
    assert result.took < 1.0  # a few ms: every answer comes at once, nothing waits for a timeout
    assert server.stats["responses"] >= 3  # test I and both filtering tests (no NAT: no mapping tests)


async def test_a_plain_server_gives_open_without_rfc5780():
    async with trio.open_nursery() as nursery:
        server: StunResponder = await nursery.start(serve_stun, ["127.0.0.1"], [0])
        result = await classify_nat(
            [(f"{server.primary[0]}", server.primary[1])], bind=("127.0.0.1", 0)
        )
        nursery.cancel_scope.cancel()
    assert result.nat_type == NatType.OPEN and not result.rfc5780
    assert "lacks RFC 5780" in result.note and result.took < 1.0
    assert server.stats["error_responses"] >= 1  # CHANGE-REQUESTs refused with 420


async def test_malformed_datagrams_do_not_crash_the_server():
    async with trio.open_nursery() as nursery:
        server: StunResponder = await nursery.start(serve_stun, ["127.0.0.1", "127.0.0.2"], [0, 0])
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        good = encode_binding_request(tid(7))
        junk = [
            b"",
            b"x",
            bytes(19),
            b"\xff" * 40,
            good[:4] + bytes(4) + good[8:],
            bytes(1400),
            bytes(Message(Method.ALLOCATE, Class.REQUEST, tid(1))),
            good[:-2],
        ]
        for local in server.locals:
            for d in junk:
                await sock.sendto(d, local)
        await sock.sendto(good, server.primary)
        with trio.fail_after(2):
            data, src = await sock.recvfrom(2048)  # the server still answers
        assert parse_message(data).transaction_id == tid(7) and src[:2] == server.primary
        result = await classify_nat([server.primary])
        assert result.nat_type == NatType.OPEN
        sock.close()
        nursery.cancel_scope.cancel()
    assert server.stats["responses"] >= 4 and server.stats["received"] >= 4 * len(junk)
    assert server.stats["not_binding"] == 4 and server.stats["truncated"] >= 4


async def test_no_server_resolves():
    with pytest.raises(NoStunServer):
        await classify_nat([("::1", 3478)])  # an IPv6 server for an IPv4 socket
