"""STUN client transactions and the RFC 5780 classifier, sans-IO, with plain floats for time.

The classifier runs against a simulated network written here: fake STUN servers (aioice's codec)
and a NAT model with endpoint-independent / address-dependent / address-and-port-dependent
mapping and filtering, on a virtual clock with a fixed one-way delay.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioice.stun import Class, Message, Method, parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.nat.classify import (
    FilteringBehavior,
    MappingBehavior,
    NatClassification,
    NatClassifier,
    NatType,
    nat_type_of,
)
from prozchain_discovery.nat.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    Addr,
    BindingError,
    BindingResponse,
    BindingTimeout,
    StunBusy,
    StunClient,
    check_framing,
    encode_binding_request,
    parse_stun_server,
)

SERVER: Addr = ("198.51.100.1", 3478)
ALT: Addr = ("198.51.100.2", 3479)


def counter_bytes() -> Callable[[int], bytes]:
    """A deterministic urandom: 12-byte ids 1, 2, 3 ..."""
    it = itertools.count(1)
    return lambda n: next(it).to_bytes(n, "big")


def answer(
    request: bytes,
    to: Addr,
    *,
    origin: Addr = SERVER,
    other: Addr | None = ALT,
    cls: Class = Class.RESPONSE,
    fingerprint: bool = True,
    extra: dict[str, object] | None = None,
) -> bytes:
    req = parse_message(request)
    attrs: dict[str, object] = {"XOR-MAPPED-ADDRESS": to, "RESPONSE-ORIGIN": origin}
    if other is not None:
        attrs["OTHER-ADDRESS"] = other
    attrs.update(extra or {})
    msg = Message(Method.BINDING, cls, transaction_id=req.transaction_id, attributes=attrs)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


# ---- StunClient: requests and the retransmission schedule ----------------------------------


def test_binding_request_and_response():
    c = StunClient(urandom=counter_bytes())
    tid = c.send_binding(SERVER, 0.0, tag="I")
    ((data, dst),) = c.datagrams_to_send(0.0)
    assert dst == SERVER and tid == (1).to_bytes(12, "big")
    req = parse_message(data)
    assert (req.message_method, req.message_class, req.transaction_id) == (
        Method.BINDING,
        Class.REQUEST,
        tid,
    )
    assert "CHANGE-REQUEST" not in req.attributes and "FINGERPRINT" in req.attributes
    assert data[4:8] == bytes.fromhex("2112a442")
    c.receive_datagram(answer(data, ("203.0.113.7", 40000)), SERVER, 0.025)
    (ev,) = c.events()
    assert isinstance(ev, BindingResponse) and ev.tag == "I"
    assert (
        ev.mapped == ("203.0.113.7", 40000)
        and ev.response_origin == SERVER
        and ev.other_address == ALT
    )
    assert ev.source == SERVER and ev.rtt == pytest.approx(0.025) and ev.sends == 1
    assert not c.busy and c.next_deadline() is None and c.stats["responses"] == 1


def test_change_request_is_encoded_as_rfc5780_flags():
    c = StunClient()
    c.send_binding(SERVER, 0.0, change_ip=True, change_port=True)
    c.send_binding(SERVER, 0.0, change_port=True)
    (a, _), (b, _) = c.datagrams_to_send(0.0)
    assert parse_message(a).attributes["CHANGE-REQUEST"] == CHANGE_IP | CHANGE_PORT == 6
    assert parse_message(b).attributes["CHANGE-REQUEST"] == CHANGE_PORT == 2
    # the attribute on the wire: type 0x0003, length 4, the flags in the last byte
    assert bytes.fromhex("0003000400000006") in a


def _run_until_done(c: StunClient) -> tuple[list[float], float]:
    sends: list[float] = [0.0]
    c.datagrams_to_send(0.0)
    now = 0.0
    while c.busy:
        deadline = c.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline
        c.on_timer(now)
        if c.datagrams_to_send(now):
            sends.append(now)
    return sends, now


def test_rfc5389_schedule_seven_sends_then_sixteen_rto():
    c = StunClient()
    c.send_binding(SERVER, 0.0)
    sends, end = _run_until_done(c)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert end == 39.5  # RFC 5389 §7.2.1: 39.5 s with RTO 500 ms
    (ev,) = c.events()
    assert isinstance(ev, BindingTimeout) and ev.sends == 7 and ev.elapsed == 39.5
    assert c.stats["timeouts"] == 1 and c.stats["sent"] == 7 and c.stats["retransmitted"] == 6


def test_short_schedule_for_tests():
    c = StunClient(rto=0.01, max_sends=3, final_wait=2)
    c.send_binding(SERVER, 0.0)
    sends, end = _run_until_done(c)
    assert sends == pytest.approx([0.0, 0.01, 0.03]) and end == pytest.approx(0.05)


def test_per_transaction_timeout_and_rto():
    c = StunClient()
    c.send_binding(SERVER, 0.0, timeout=0.3)
    sends, end = _run_until_done(c)
    assert sends == [0.0] and end == 0.3
    c = StunClient()
    c.send_binding(SERVER, 0.0, rto=0.1, timeout=1.0)
    sends, end = _run_until_done(c)
    assert sends == pytest.approx([0.0, 0.1, 0.3, 0.7]) and end == 1.0


def test_clock_starts_at_the_first_send_and_reschedule():
    c = StunClient()
    tid = c.send_binding(SERVER, 0.0)
    assert c.next_deadline() == 0.0  # queued: send now
    c.datagrams_to_send(2.0)
    assert c.next_deadline() == 2.5
    c.reschedule(tid, rto=0.1, timeout=0.3)
    assert c.next_deadline() == pytest.approx(2.1)
    c.on_timer(2.1)
    assert len(c.datagrams_to_send(2.1)) == 1 and c.stats["retransmitted"] == 1
    assert c.next_deadline() == 2.3  # the retransmission would be at 2.3 too: the end wins
    c.reschedule(tid, timeout=5.0)  # a timeout is only ever shortened
    c.on_timer(2.3)
    (ev,) = c.events()
    assert isinstance(ev, BindingTimeout) and ev.sends == 2 and ev.elapsed == pytest.approx(0.3)


def test_cancel_and_bounded_transactions():
    c = StunClient(max_transactions=2)
    a = c.send_binding(SERVER, 0.0)
    c.send_binding(SERVER, 0.0)
    with pytest.raises(StunBusy):
        c.send_binding(SERVER, 0.0)
    c.cancel(a)
    c.send_binding(SERVER, 0.0)
    assert len(c.datagrams_to_send(0.0)) == 2 and c.stats["cancelled"] == 1
    with pytest.raises(ValueError):
        StunClient(rto=0)
    with pytest.raises(ValueError):
        StunClient(max_sends=100)


# ---- StunClient: what the network sends is counted, never raised ----------------------------


def _client_with_request(
    change_ip: bool = False, change_port: bool = False
) -> tuple[StunClient, bytes]:
    c = StunClient(urandom=counter_bytes())
    c.send_binding(SERVER, 0.0, change_ip=change_ip, change_port=change_port)
    ((data, _),) = c.datagrams_to_send(0.0)
    return c, data


def test_malformed_datagrams_are_counted_and_ignored():
    c, req = _client_with_request()
    good = answer(req, ("203.0.113.7", 1))
    bad_cookie = good[:4] + b"\x00\x00\x00\x00" + good[8:]
    huge_attr = good[:20] + b"\x00\x20\xff\xff" + good[24:]  # XOR-MAPPED-ADDRESS of 65535 bytes
    bad_fp = good[:-1] + bytes([good[-1] ^ 1])
    bad_family = good[:20] + b"\x00\x20\x00\x08\x00\x07" + good[26:]  # unknown address family
    cases = {
        "truncated": [good[:10], good[:-4], b""],
        "bad_cookie": [bad_cookie],
        "not_stun": [b"\xff" + good[1:]],
        "malformed": [
            huge_attr,
            bad_fp,
            bad_family,
            good + b"\x00\x00\x00\x00",
            good[:2] + b"\x00\x05" + good[4:],
        ],
        "oversize": [good + bytes(2000)],
        "not_response": [req, answer(req, ("1.2.3.4", 1), cls=Class.INDICATION)],
    }
    for key, datagrams in cases.items():
        for d in datagrams:
            c.receive_datagram(d, SERVER, 0.01)
        assert c.stats[key] == len(datagrams), key
    assert not c.events() and c.busy
    c.receive_datagram(good, SERVER, 0.02)  # the real answer still counts
    assert isinstance(c.events()[0], BindingResponse)


def test_spoofed_late_and_wrong_source_answers():
    c, req = _client_with_request()
    spoof = answer(encode_binding_request(bytes(12)), ("6.6.6.6", 6))  # an id we never used
    c.receive_datagram(spoof, SERVER, 0.01)
    assert c.stats["unknown_transaction"] == 1
    c.receive_datagram(answer(req, ("6.6.6.6", 6)), ("192.0.2.66", 3478), 0.01)
    assert c.stats["unexpected_source"] == 1 and not c.events()
    good = answer(req, ("203.0.113.7", 1))
    c.receive_datagram(good, SERVER, 0.02)
    c.receive_datagram(good, SERVER, 0.03)  # a duplicate of the answer
    assert len(c.events()) == 1 and c.stats["late"] == 1


def test_change_request_must_be_answered_from_elsewhere():
    # A server that ignores CHANGE-REQUEST answers from its own address: refused, and the
    # timeout says how many such answers there were.
    c, req = _client_with_request(change_ip=True, change_port=True)
    c.receive_datagram(answer(req, ("203.0.113.7", 1)), SERVER, 0.01)
    c.receive_datagram(answer(req, ("203.0.113.7", 1)), (SERVER[0], ALT[1]), 0.01)  # only the port
    assert c.stats["unexpected_source"] == 2
    c.receive_datagram(answer(req, ("203.0.113.7", 1)), ALT, 0.02)
    (ev,) = c.events()
    assert isinstance(ev, BindingResponse) and ev.source == ALT
    c, req = _client_with_request(change_port=True)
    c.receive_datagram(answer(req, ("203.0.113.7", 1)), SERVER, 0.01)
    c.reschedule(next(iter(c._pending)), timeout=0.3)
    c.on_timer(0.3)
    (ev,) = c.events()
    assert isinstance(ev, BindingTimeout) and ev.rejected == 1
    # an error (420: CHANGE-REQUEST not understood) comes from the address asked
    c, req = _client_with_request(change_port=True)
    c.receive_datagram(
        answer(
            req, ("1.1.1.1", 1), cls=Class.ERROR, extra={"ERROR-CODE": (420, "Unknown Attribute")}
        ),
        SERVER,
        0.01,
    )
    (ev,) = c.events()
    assert isinstance(ev, BindingError) and (ev.code, ev.reason) == (420, "Unknown Attribute")


def test_ipv6_source_tuples_and_spellings_compare_equal():
    c = StunClient()
    c.send_binding(("2001:db8::0001", 3478), 0.0)
    ((req, dst),) = c.datagrams_to_send(0.0)
    assert dst == ("2001:db8::1", 3478)
    c.receive_datagram(
        answer(req, ("2001:db8::99", 5), origin=dst, other=None),
        ("2001:db8:0::1", 3478, 0, 0),
        0.01,
    )
    (ev,) = c.events()
    assert isinstance(ev, BindingResponse) and ev.mapped == ("2001:db8::99", 5)


@st.composite
def stun_like(draw: st.DrawFn) -> bytes:
    """Datagrams that pass the cheap checks often enough to reach aioice's parser."""
    tid = draw(st.sampled_from([(1).to_bytes(12, "big"), (2).to_bytes(12, "big"), bytes(12)]))
    body = draw(st.binary(max_size=120))
    cls = draw(st.sampled_from([0x0101, 0x0111, 0x0001, 0x0011, 0x0002, 0x3FFF]))
    length = draw(
        st.sampled_from([len(body), len(body) - len(body) % 4, draw(st.integers(0, 0xFFFF))])
    )
    return (
        cls.to_bytes(2, "big") + length.to_bytes(2, "big") + bytes.fromhex("2112a442") + tid + body
    )


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=80), stun_like()), max_size=8),
    st.sampled_from([SERVER, ALT, ("::1", 3478)]),
)
def test_fuzz_receive_datagram_never_raises(datagrams: list[bytes], src: Addr):
    c = StunClient(urandom=counter_bytes())
    c.send_binding(SERVER, 0.0)
    c.send_binding(SERVER, 0.0, change_port=True)
    c.datagrams_to_send(0.0)
    for d in datagrams:
        c.receive_datagram(d, src, 0.01)
        c.on_timer(0.02)
    outcomes = sum(
        c.stats[k]
        for k in (
            "oversize",
            "truncated",
            "not_stun",
            "bad_cookie",
            "malformed",
            "not_response",
            "unknown_transaction",
            "late",
            "unexpected_source",
            "responses",
            "error_responses",
        )
    )
    assert outcomes == c.stats["received"] == len(datagrams)
    assert len(c.events()) <= 2


def test_check_framing():
    req = encode_binding_request(bytes(12))
    assert check_framing(req) is None
    assert check_framing(req[:19]) == "truncated"
    assert check_framing(req + b"\x00" * 4) == "malformed"


def test_parse_stun_server():
    assert parse_stun_server("stun.example.org:3479") == ("stun.example.org", 3479)
    assert parse_stun_server("Stun.Example.org") == ("stun.example.org", 3478)
    assert parse_stun_server("/ip4/1.2.3.4/udp/3478") == ("1.2.3.4", 3478)
    assert parse_stun_server("/ip6/::1/udp/19302") == ("::1", 19302)
    assert parse_stun_server("/dns4/stun.l.google.com/udp/19302") == ("stun.l.google.com", 19302)
    assert parse_stun_server("[::1]:3478") == ("::1", 3478)
    assert parse_stun_server("[2001:db8::1]") == ("2001:db8::1", 3478)
    assert parse_stun_server("2001:db8::1") == ("2001:db8::1", 3478)
    for bad in (
        "",
        ":3478",
        "host:0",
        "host:70000",
        "host:x",
        "/ip4/1.2.3.4/tcp/3478",
        "/ip4/::1/udp/1",
        "[1.2.3.4]:3478",
        "[::1]x",
        "a b:1",
        "::zz",
    ):
        with pytest.raises(ValueError):
            parse_stun_server(bad)


# ---- the classifier against a simulated NAT ---------------------------------------------------

EI, AD, APD = "ei", "ad", "apd"
LOCAL: Addr = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.7"
IP1, IP2, IP3 = "198.51.100.1", "198.51.100.2", "192.0.2.10"
P1, P2 = 3478, 3479


@dataclass
class FakeStunServer:
    """Answers Binding requests on every (ip, port) it has; RFC 5780 if it has two of each.
    ``ignore_change`` answers CHANGE-REQUEST from the address asked (as Google's servers do);
    ``refuse_change`` answers it with 420."""

    ips: tuple[str, ...]
    ports: tuple[int, ...]
    ignore_change: bool = False
    refuse_change: bool = False

    def locals(self) -> list[Addr]:
        return [(ip, port) for ip in self.ips for port in self.ports]

    def handle(self, data: bytes, src: Addr, local: Addr) -> list[tuple[bytes, Addr]]:
        req = parse_message(data)
        flags = req.attributes.get("CHANGE-REQUEST", 0)
        ip, port = local
        rfc5780 = len(self.ips) == 2 and len(self.ports) == 2
        if flags and self.refuse_change:
            err = Message(
                Method.BINDING,
                Class.ERROR,
                req.transaction_id,
                {"ERROR-CODE": (420, "Unknown Attribute")},
            )
            return [(bytes(err), local)]
        if flags and not self.ignore_change:
            if flags & CHANGE_IP:
                ip = next(i for i in self.ips if i != ip)
            if flags & CHANGE_PORT:
                port = next(p for p in self.ports if p != port)
        attrs: dict[str, object] = {"XOR-MAPPED-ADDRESS": src, "RESPONSE-ORIGIN": (ip, port)}
        if rfc5780:
            attrs["OTHER-ADDRESS"] = (
                next(i for i in self.ips if i != local[0]),
                next(p for p in self.ports if p != local[1]),
            )
        return [
            (bytes(Message(Method.BINDING, Class.RESPONSE, req.transaction_id, attrs)), (ip, port))
        ]


@dataclass
class NatModel:
    """RFC 4787 behaviours: ``mapping`` picks the key a mapping is kept under, ``filtering`` which
    remote endpoints may send in. ``None`` for both: no NAT at all (the host is public)."""

    mapping: str | None
    filtering: str | None
    public_ip: str = PUBLIC_IP
    mappings: dict[tuple[object, ...], int] = field(default_factory=dict)
    contacted: dict[int, set[Addr]] = field(default_factory=dict)
    internal: dict[int, Addr] = field(default_factory=dict)
    next_port: int = 40000

    def outbound(self, src: Addr, dst: Addr) -> Addr:
        if self.mapping is None:
            ext = src
        else:
            key: tuple[object, ...] = {EI: (src,), AD: (src, dst[0]), APD: (src, dst)}[self.mapping]
            if key not in self.mappings:
                self.mappings[key] = self.next_port
                self.internal[self.next_port] = src
                self.next_port += 1
            ext = (self.public_ip, self.mappings[key])
        self.contacted.setdefault(ext[1], set()).add(dst)
        return ext

    def inbound(self, remote: Addr, ext_port: int) -> Addr | None:
        seen = self.contacted.get(ext_port, set())
        if self.mapping is None:
            to: Addr | None = (self.public_ip, ext_port)
        else:
            to = self.internal.get(ext_port)
        if to is None:
            return None
        if self.filtering == AD and remote[0] not in {ip for ip, _ in seen}:
            return None
        if self.filtering == APD and remote not in seen:
            return None
        return to


@dataclass
class Net:
    """A virtual clock, one-way ``delay`` between the NAT and the servers (the LAN is instant)."""

    nat: NatModel
    servers: list[FakeStunServer]
    delay: float = 0.01
    drop: Callable[[bytes, Addr], bool] = lambda data, dst: False
    now: float = 0.0
    queue: list[tuple[float, int, str, bytes, Addr, Addr]] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)
    inject: list[tuple[bytes, Addr]] = field(default_factory=list)

    def send_from_client(self, src: Addr, data: bytes, dst: Addr) -> None:
        if self.drop(data, dst):
            return
        ext = self.nat.outbound(src, dst)
        heapq.heappush(
            self.queue, (self.now + self.delay, next(self.seq), "server", data, ext, dst)
        )

    def run(self, clf: NatClassifier, local: Addr) -> NatClassification:
        clf.start(self.now)
        while not clf.done:
            for data, dst in clf.datagrams_to_send(self.now):
                self.send_from_client(local, data, dst)
            deadline = clf.next_deadline()
            assert deadline is not None
            t = min(deadline, self.queue[0][0]) if self.queue else deadline
            assert self.now <= t < 120
            self.now = t
            while self.queue and self.queue[0][0] <= self.now:
                _, _, where, data, src, dst = heapq.heappop(self.queue)
                if where == "server":
                    for server in self.servers:
                        if dst in server.locals():
                            for out, origin in server.handle(data, src, dst):
                                heapq.heappush(
                                    self.queue,
                                    (
                                        self.now + self.delay,
                                        next(self.seq),
                                        "nat",
                                        out,
                                        origin,
                                        src,
                                    ),
                                )
                else:
                    to = self.nat.inbound(src, dst[1])
                    if to is not None:
                        for junk, junk_src in self.inject:
                            clf.receive_datagram(junk, junk_src, self.now)
                        clf.receive_datagram(data, src, self.now)
            clf.on_timer(self.now)
        result = clf.result()
        assert result is not None
        return result


def rfc5780_server(**kw: bool) -> FakeStunServer:
    return FakeStunServer((IP1, IP2), (P1, P2), **kw)


def classify(
    mapping: str | None,
    filtering: str | None,
    *,
    servers: list[FakeStunServer] | None = None,
    targets: list[Addr] | None = None,
    **kw: object,
) -> NatClassification:
    nat = NatModel(mapping, filtering)
    local = LOCAL if mapping is not None else (PUBLIC_IP, 5000)
    net = Net(nat, servers or [rfc5780_server()], **kw)  # type: ignore[arg-type]
    clf = NatClassifier(targets or [(IP1, P1)], local, urandom=counter_bytes())
    return net.run(clf, local)


@pytest.mark.parametrize(
    ("mapping", "filtering", "nat_type", "m", "f"),
    [
        (
            None,
            None,
            NatType.OPEN,
            MappingBehavior.ENDPOINT_INDEPENDENT,
            FilteringBehavior.ENDPOINT_INDEPENDENT,
        ),
        (
            EI,
            EI,
            NatType.FULL_CONE,
            MappingBehavior.ENDPOINT_INDEPENDENT,
            FilteringBehavior.ENDPOINT_INDEPENDENT,
        ),
        (
            EI,
            AD,
            NatType.RESTRICTED_CONE,
            MappingBehavior.ENDPOINT_INDEPENDENT,
            FilteringBehavior.ADDRESS_DEPENDENT,
        ),
        (
            EI,
            APD,
            NatType.PORT_RESTRICTED,
            MappingBehavior.ENDPOINT_INDEPENDENT,
            FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        ),
        (
            AD,
            APD,
            NatType.SYMMETRIC,
            MappingBehavior.ADDRESS_DEPENDENT,
            FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        ),
        (
            APD,
            APD,
            NatType.SYMMETRIC,
            MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
            FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        ),
        (
            APD,
            EI,
            NatType.SYMMETRIC,
            MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
            FilteringBehavior.ENDPOINT_INDEPENDENT,
        ),
        (
            AD,
            AD,
            NatType.SYMMETRIC,
            MappingBehavior.ADDRESS_DEPENDENT,
            FilteringBehavior.ADDRESS_DEPENDENT,
        ),
    ],
)
def test_verdicts_within_one_rto(mapping, filtering, nat_type, m, f):
    r = classify(mapping, filtering)
    assert (r.nat_type, r.mapping, r.filtering) == (nat_type, m, f), r.note
    assert r.rfc5780 and r.servers_used == ((IP1, P1),)
    assert r.mapped_addr == ((PUBLIC_IP, 5000) if mapping is None else (PUBLIC_IP, 40000))
    assert r.rtt == pytest.approx(0.02)
    # one RTO (500 ms) of virtual time: the 300 ms filtering window and one more round trip
    assert r.took <= 0.5
    if mapping is None:
        assert r.took == pytest.approx(0.02)  # no NAT: test I and filtering test II, one round trip
    elif filtering == EI:
        assert r.took == pytest.approx(0.04)  # two round trips, no waiting at all


def test_without_a_nat_no_mapping_test_is_sent():
    sent: list[Addr] = []

    def record(data: bytes, dst: Addr) -> bool:
        sent.append(dst)
        return False

    r = classify(None, None, drop=record)
    assert r.nat_type == NatType.OPEN and r.mapping == MappingBehavior.ENDPOINT_INDEPENDENT
    assert set(sent) == {(IP1, P1)}  # test I and the two CHANGE-REQUESTs, none to IP2


def test_no_nat_behind_a_firewall_is_open_and_says_so():
    r = classify(None, APD)
    assert (
        r.nat_type == NatType.OPEN and r.filtering == FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT
    )
    assert "firewall" in r.note


def test_filtering_window_follows_the_rtt():
    slow = classify(EI, APD, delay=0.1)  # r = 200 ms: 4 r = 800 ms, then one more round trip
    assert slow.nat_type == NatType.PORT_RESTRICTED and slow.took == pytest.approx(1.0)


def test_a_lost_filtering_probe_is_sent_again_on_the_rtt_based_rto():
    lost: set[Addr] = set()

    def drop_first_change_request(data: bytes, dst: Addr) -> bool:
        if "CHANGE-REQUEST" in parse_message(data).attributes and dst not in lost:
            lost.add(dst)
            return True
        return False

    r = classify(EI, EI, drop=drop_first_change_request)
    assert r.nat_type == NatType.FULL_CONE and lost
    assert r.took == pytest.approx(0.14)  # re-sent at 3 r = 100 ms, answered, one more round trip


def test_garbage_during_a_classification_changes_nothing():
    junk = [
        (b"\x00\x01\x00\x00!\x12\xa4B" + bytes(12), (IP1, P1)),
        (b"hello", (IP2, P2)),
        (bytes(2000), (IP1, P1)),
    ]
    r = classify(EI, AD, inject=junk)
    assert r.nat_type == NatType.RESTRICTED_CONE
    assert r.stats["not_response"] > 0 and r.stats["truncated"] > 0 and r.stats["oversize"] > 0


def test_without_rfc5780_two_servers_are_compared():
    plain = [FakeStunServer((IP1,), (P1,), ignore_change=True), FakeStunServer((IP3,), (P1,))]
    targets = [(IP1, P1), (IP3, P1)]
    r = classify(EI, APD, servers=plain, targets=targets)
    assert not r.rfc5780 and r.servers_used == tuple(targets)
    assert (
        r.mapping == MappingBehavior.ENDPOINT_INDEPENDENT
        and r.filtering == FilteringBehavior.UNKNOWN
    )
    assert r.nat_type == NatType.PORT_RESTRICTED
    assert "lacks RFC 5780 (no OTHER-ADDRESS)" in r.note and "two servers" in r.note
    assert r.took == pytest.approx(0.04)
    r = classify(APD, APD, servers=plain, targets=targets)
    assert (
        r.nat_type == NatType.SYMMETRIC
        and r.mapping == MappingBehavior.UNKNOWN
        and "destination" in r.note
    )
    r = classify(None, None, servers=plain, targets=targets)
    assert r.nat_type == NatType.OPEN and r.mapping == MappingBehavior.ENDPOINT_INDEPENDENT
    assert r.took == pytest.approx(0.02)  # no NAT: nothing to compare across servers
    r = classify(EI, EI, servers=plain[:1], targets=targets[:1])
    assert (
        r.nat_type == NatType.UNKNOWN
        and "only one server" in r.note
        and r.mapped_addr == (PUBLIC_IP, 40000)
    )


def test_a_plain_first_server_hands_over_to_an_rfc5780_one():
    plain = FakeStunServer((IP3,), (P1,), ignore_change=True)
    r = classify(EI, AD, servers=[plain, rfc5780_server()], targets=[(IP3, P1), (IP1, P1)])
    assert r.rfc5780 and r.nat_type == NatType.RESTRICTED_CONE, r.note
    assert r.servers_used == ((IP3, P1), (IP1, P1)) and "RFC 5780 tests against" in r.note
    assert r.took == pytest.approx(0.04 + 0.32)
    # ...unless this socket already sent to the alternate IP: address-dependent filtering
    # would let filtering test II's answer in, so only the mappings are compared
    spoiler = FakeStunServer((IP2,), (9999,))
    r = classify(
        EI,
        AD,
        servers=[plain, spoiler, rfc5780_server()],
        targets=[(IP3, P1), (IP2, 9999), (IP1, P1)],
    )
    assert not r.rfc5780 and r.filtering == FilteringBehavior.UNKNOWN
    assert r.mapping == MappingBehavior.ENDPOINT_INDEPENDENT


def test_a_server_refusing_change_request_leaves_filtering_unknown():
    r = classify(EI, AD, servers=[rfc5780_server(refuse_change=True)])
    assert (
        r.mapping == MappingBehavior.ENDPOINT_INDEPENDENT
        and r.filtering == FilteringBehavior.UNKNOWN
    )
    assert "420" in r.note and r.nat_type == NatType.PORT_RESTRICTED


def test_a_server_ignoring_change_request_is_not_taken_for_open_filtering():
    r = classify(EI, APD, servers=[rfc5780_server(ignore_change=True)])
    assert r.filtering == FilteringBehavior.UNKNOWN and "wrong address" in r.note


def test_a_dead_server_is_replaced_by_the_next():
    targets = [("192.0.2.99", P1), (IP1, P1)]
    nat = NatModel(EI, APD)
    net = Net(nat, [rfc5780_server()])
    clf = NatClassifier(targets, LOCAL, server_timeout=2.0, urandom=counter_bytes())
    r = net.run(clf, LOCAL)
    assert r.nat_type == NatType.PORT_RESTRICTED and r.servers_used == tuple(targets)
    assert "192.0.2.99:3478: no answer" in r.note and r.took == pytest.approx(2.32)


def test_nobody_answers():
    net = Net(NatModel(EI, EI), [])
    clf = NatClassifier([(IP1, P1)], LOCAL, rto=0.1, max_sends=3, final_wait=4)
    r = net.run(clf, LOCAL)
    assert (
        r.nat_type == NatType.UNKNOWN
        and r.mapped_addr is None
        and "no STUN server answered" in r.note
    )
    assert r.took == pytest.approx(0.7)  # 0, 0.1, 0.3 then 4 RTO
    empty = NatClassifier([], LOCAL)
    empty.start(0.0)
    assert empty.done and empty.result().nat_type == NatType.UNKNOWN  # type: ignore[union-attr]


def test_nat_type_of():
    ei, ad = MappingBehavior.ENDPOINT_INDEPENDENT, MappingBehavior.ADDRESS_DEPENDENT
    assert nat_type_of(ad, FilteringBehavior.ENDPOINT_INDEPENDENT) == NatType.SYMMETRIC
    assert nat_type_of(ad, FilteringBehavior.UNKNOWN, no_nat=True) == NatType.OPEN
    assert (
        nat_type_of(MappingBehavior.UNKNOWN, FilteringBehavior.ENDPOINT_INDEPENDENT)
        == NatType.UNKNOWN
    )
    assert nat_type_of(ei, FilteringBehavior.UNKNOWN) == NatType.PORT_RESTRICTED
    assert [t.value for t in NatType] == [
        "open",
        "full_cone",
        "restricted_cone",
        "port_restricted",
        "symmetric",
        "unknown",
    ]
