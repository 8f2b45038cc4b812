"""AutoNAT v2 without I/O: the codec (wire/autonat.py) and the policies (nat/autonat_core.py).

Plain floats for time; hypothesis for malformed input and random operation sequences.
"""

from __future__ import annotations

import random

import multiaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.nat.autonat_core import (
    MAX_TRACKED_ADDRS,
    AutonatClientPolicy,
    AutonatServerPolicy,
    Probe,
    ProbeOutcome,
    ServerVerdict,
    dialable_tcp,
)
from prozchain_discovery.nat.status import Reachability
from prozchain_discovery.wire.autonat import (
    MAX_DIAL_DATA,
    MAX_MESSAGE,
    MIN_DIAL_DATA,
    AutonatDecodeError,
    DialBack,
    DialDataCounter,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decode_dial_back,
    decode_dial_back_response,
    decode_message,
    dial_data_frames,
    encode_dial_back,
    encode_message,
    frame_message,
)
from prozchain_discovery.wire.framing import FrameDecoder, FrameTooLarge, encode_uvarint
from prozchain_discovery.wire.pb import autonat_v2_pb2 as pb


def ma(text: str) -> bytes:
    return multiaddr.Multiaddr(text).to_bytes()


PUB = "/ip4/203.0.113.7/tcp/4001"


# ---- codec ----------------------------------------------------------------------------------
def test_field_numbers_and_enum_values_are_the_specs():
    """Bytes a go-libp2p client would send decode here (hand-built from the spec's numbers)."""
    addr = ma(PUB)
    # Message{dialRequest(1){addrs(1): addr, nonce(2, fixed64): 7}}
    inner = b"\x0a" + bytes([len(addr)]) + addr + b"\x11" + (7).to_bytes(8, "little")
    assert decode_message(b"\x0a" + bytes([len(inner)]) + inner) == DialRequest((addr,), 7)
    # Message{dialResponse(2){status(1)=200, addrIdx(2)=0, dialStatus(3)=101}}
    inner = b"\x08\xc8\x01\x18\x65"
    assert decode_message(b"\x12" + bytes([len(inner)]) + inner) == DialResponse(
        ResponseStatus.OK, 0, DialStatus.E_DIAL_BACK_ERROR)
    # Message{dialDataRequest(3){addrIdx(1)=1, numBytes(2)=30000}}
    inner = b"\x08\x01\x10" + encode_uvarint(30000)
    assert decode_message(b"\x1a" + bytes([len(inner)]) + inner) == DialDataRequest(1, 30000)
    assert decode_message(b"\x22\x03\x0a\x01x") == DialDataResponse(b"x")
    assert decode_dial_back(b"\x09" + (5).to_bytes(8, "little")).nonce == 5
    assert pb.DialResponse.E_REQUEST_REJECTED == 100 and pb.DialResponse.E_DIAL_REFUSED == 101


@pytest.mark.parametrize("message", [
    DialRequest((ma(PUB), ma("/ip6/2001:db8::1/tcp/1")), (1 << 64) - 1),
    DialResponse(ResponseStatus.OK, 3, DialStatus.OK),
    DialResponse(ResponseStatus.E_DIAL_REFUSED),
    DialDataRequest(0, 50_000),
    DialDataResponse(b"\0" * 4096),
])
def test_round_trip(message):
    assert decode_message(encode_message(message)) == message
    framed = frame_message(message)
    dec = FrameDecoder(MAX_MESSAGE)
    dec.feed(framed)
    assert decode_message(dec.next_frame() or b"") == message


def test_unknown_statuses_and_empty_messages_are_refused():
    with pytest.raises(AutonatDecodeError):
        decode_message(b"")  # no oneof set
    with pytest.raises(AutonatDecodeError):
        decode_message(b"\x12\x03\x08\xe7\x07")  # status 999
    with pytest.raises(AutonatDecodeError):
        decode_message(b"\x12\x02\x18\x07")  # dialStatus 7
    with pytest.raises(AutonatDecodeError):
        decode_dial_back_response(b"\x08\x01")  # DialBackResponse status 1
    with pytest.raises(AutonatDecodeError):
        decode_message(b"\x00" * (MAX_MESSAGE + 1))


def test_an_oversized_message_is_refused_on_its_length_prefix():
    dec = FrameDecoder(MAX_MESSAGE)
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_uvarint(MAX_MESSAGE + 1))
    assert dec.buffered <= 4


def test_more_than_fifty_addresses_are_cut_not_refused():
    req = DialRequest(tuple(ma(f"/ip4/203.0.113.{i}/tcp/1") for i in range(60)), 1)
    assert len(decode_message(encode_message(req)).addrs) == 50  # type: ignore[union-attr]


def test_dial_data_frames_carry_at_least_what_was_asked():
    counter = DialDataCounter(30_001)
    for frame in dial_data_frames(30_001):
        dec = FrameDecoder(MAX_MESSAGE)
        dec.feed(frame)
        counter.add(decode_message(dec.next_frame() or b""))
    assert counter.done and 30_001 <= counter.received < 30_001 + 4096


def test_tiny_dial_data_pieces_and_other_messages_are_refused():
    counter = DialDataCounter(30_000)
    with pytest.raises(AutonatDecodeError):
        counter.add(DialDataResponse(b"x" * 10))
    with pytest.raises(AutonatDecodeError):
        DialDataCounter(100).add(DialRequest((), 1))
    last = DialDataCounter(150)
    last.add(DialDataResponse(b"x" * 140))
    last.add(DialDataResponse(b"x" * 10))  # a small last piece is fine: the total is reached
    assert last.done


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_raise_only_their_typed_error_whatever_the_bytes(data):
    for decode in (decode_message, decode_dial_back, decode_dial_back_response):
        try:
            decode(data)
        except AutonatDecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(0, (1 << 64) - 1))
def test_any_request_round_trips_and_the_server_never_crashes_on_its_addresses(addrs, nonce):
    req = DialRequest(tuple(addrs), nonce)
    assert decode_message(encode_message(req)) == req
    pol = AutonatServerPolicy(rng=random.Random(1))
    decision = pol.decide(req.addrs, "203.0.113.7", 0.0)
    assert decision.verdict in ServerVerdict
    assert encode_dial_back(DialBack(nonce))


# ---- server policy --------------------------------------------------------------------------
def test_per_peer_global_and_concurrency_limits_slide_with_the_minute():
    pol = AutonatServerPolicy(global_rpm=30, per_peer_rpm=3)
    for i in range(3):
        assert pol.admit("a", float(i))
        assert not pol.admit("a", float(i))  # one at a time per peer
        pol.complete("a")
    assert not pol.admit("a", 10.0)  # 3 a minute
    assert pol.admit("a", 60.0)  # the first one left the window
    pol.complete("a")
    for i in range(28):  # with the two from t=2 and t=60 still in the window: 30
        assert pol.admit(f"p{i}", 61.0)
        pol.complete(f"p{i}")
    assert not pol.admit("fresh", 61.0)  # 30 a minute in all
    assert pol.admit("fresh", 121.0)
    pol.check()


def test_the_first_address_we_dial_is_chosen_and_nothing_else():
    pol = AutonatServerPolicy(rng=random.Random(7))
    addrs = [b"\xff\xfe", ma("/dns4/example.com/tcp/1"), ma("/ip4/10.0.0.1/tcp/1"), ma("/ip4/127.0.0.1/tcp/1"),
             ma("/ip4/203.0.113.7/udp/1/quic-v1"), ma(PUB), ma("/ip4/198.51.100.1/tcp/1")]
    d = pol.decide(addrs, "203.0.113.7", 0.0)
    assert (d.verdict, d.idx, d.addr) == (ServerVerdict.DIAL, 5, PUB)
    assert pol.decide(addrs[:5], "203.0.113.7", 0.0).verdict is ServerVerdict.REFUSE
    # A lab or loopback network: the switch lets private and loopback addresses through.
    lab = AutonatServerPolicy(allow_private=True)
    assert lab.decide(addrs, "10.0.0.1", 0.0).idx == 2


def test_amplification_guard_asks_30_to_100_kb_before_dialing_another_ip():
    pol = AutonatServerPolicy(rng=random.Random(3), dial_data_rpm=2)
    third_party = [ma("/ip4/198.51.100.1/tcp/1")]
    d = pol.decide(third_party, "203.0.113.7", 0.0)
    assert d.verdict is ServerVerdict.PAY_FIRST and MIN_DIAL_DATA <= d.num_bytes <= MAX_DIAL_DATA
    assert pol.decide(third_party, None, 0.0).verdict is ServerVerdict.PAY_FIRST  # IP unknown: pay too
    assert pol.decide(third_party, "203.0.113.7", 1.0).verdict is ServerVerdict.REJECT  # 2 a minute here
    assert pol.decide(third_party, "203.0.113.7", 61.0).verdict is ServerVerdict.PAY_FIRST
    pol.check()


def test_dialable_tcp_accepts_only_plain_tcp_in_a_scope_we_dial():
    assert dialable_tcp(ma(PUB), False) == PUB
    assert dialable_tcp(ma("/ip4/10.0.0.1/tcp/1"), False) is None
    assert dialable_tcp(ma("/ip4/10.0.0.1/tcp/1"), True) == "/ip4/10.0.0.1/tcp/1"
    assert dialable_tcp(ma("/ip4/169.254.1.1/tcp/1"), True) is None
    assert dialable_tcp(ma("/ip4/0.0.0.0/tcp/1"), True) is None
    assert dialable_tcp(ma(PUB + "/p2p/12D3KooWGvKDv5kkmmCnnRwn1cMKgwsXBhWrafqn3BMGxHsemqQC"), False) is None
    assert dialable_tcp(b"", False) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "complete", "decide"]), st.integers(0, 5),
                          st.floats(0, 5)), max_size=80))
def test_server_policy_invariants_hold_under_any_sequence(ops):
    pol = AutonatServerPolicy(global_rpm=6, per_peer_rpm=2, dial_data_rpm=3, rng=random.Random(0))
    now, active = 0.0, []
    for op, peer, dt in ops:
        now += dt
        if op == "admit" and pol.admit(peer, now):
            active.append(peer)
        elif op == "complete" and peer in active:
            active.remove(peer)
            pol.complete(peer)
        elif op == "decide":
            pol.decide([ma("/ip4/198.51.100.1/tcp/1")], "203.0.113.7", now)
        pol.check()


# ---- client policy --------------------------------------------------------------------------
def _answer(pol: AutonatClientPolicy, probes: list[Probe], outcome: ProbeOutcome, now: float) -> None:
    for p in probes:
        pol.on_result(p, outcome, now)


def test_three_agreeing_servers_flip_an_address_and_two_do_not():
    pol = AutonatClientPolicy(confirmations=3)
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["s1", "s2"], 0.0)
    probes = pol.on_timer(0.0)
    assert {p.server for p in probes} == {"s1", "s2"} and pol.on_timer(0.0) == []
    _answer(pol, probes, ProbeOutcome.REACHABLE, 1.0)
    assert pol.reachability is Reachability.UNKNOWN
    assert pol.on_timer(1.0) == []  # both already answered: no third opinion yet
    pol.set_servers(["s1", "s2", "s3"], 2.0)
    (third,) = pol.on_timer(2.0)
    assert third.server == "s3"
    assert pol.on_result(third, ProbeOutcome.REACHABLE, 3.0)
    assert pol.reachability is Reachability.PUBLIC
    (line,) = pol.evidence()
    assert PUB in line and "confirmed by 3 servers (s1, s2, s3)" in line and "3.0" in line


def test_a_contrary_streak_needs_three_distinct_servers_to_flip_back():
    pol = AutonatClientPolicy(confirmations=3, reprobe_interval=100.0)
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["a", "b", "c", "d"], 0.0)
    _answer(pol, pol.on_timer(0.0), ProbeOutcome.UNREACHABLE, 1.0)
    assert pol.reachability is Reachability.PRIVATE
    assert pol.next_deadline() == 101.0  # re-probe after the interval
    (p,) = pol.on_timer(101.0)  # one server suffices to re-check a confirmed state
    pol.on_result(p, ProbeOutcome.REACHABLE, 102.0)
    assert pol.reachability is Reachability.PRIVATE  # one contrary answer is not enough
    more = pol.on_timer(102.0)
    assert len(more) == 2 and p.server not in {q.server for q in more}
    _answer(pol, more, ProbeOutcome.REACHABLE, 103.0)
    assert pol.reachability is Reachability.PUBLIC


def test_inconclusive_answers_retry_later_and_other_servers_at_once():
    pol = AutonatClientPolicy(confirmations=2, retry_interval=30.0)
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["a", "b", "c"], 0.0)
    first = pol.on_timer(0.0)
    assert len(first) == 2
    _answer(pol, first, ProbeOutcome.INCONCLUSIVE, 1.0)
    (p,) = pol.on_timer(1.0)
    assert p.server == "c"
    pol.on_result(p, ProbeOutcome.INCONCLUSIVE, 2.0)
    assert pol.on_timer(2.0) == [] and pol.next_deadline() == 31.0
    assert len(pol.on_timer(31.0)) == 2


def test_no_servers_backs_off_and_a_new_server_resets_it():
    pol = AutonatClientPolicy(no_server_backoff=(5.0, 20.0))
    pol.set_addresses([PUB], 0.0)
    looks = []
    now = 0.0
    for _ in range(5):
        assert pol.on_timer(now) == []
        looks.append(pol.next_deadline())
        now = looks[-1]  # type: ignore[assignment]
    assert looks == [5.0, 15.0, 35.0, 55.0, 75.0]
    pol.set_servers(["s"], now)
    assert len(pol.on_timer(now)) == 1


def test_reachability_is_public_if_any_address_is_and_addresses_are_bounded():
    pol = AutonatClientPolicy(confirmations=1, max_in_flight=10)
    other = "/ip4/198.51.100.9/tcp/4001"
    pol.set_addresses([PUB, other], 0.0)
    pol.set_servers(["s"], 0.0)
    for p in pol.on_timer(0.0):
        pol.on_result(p, ProbeOutcome.REACHABLE if p.addr == other else ProbeOutcome.UNREACHABLE, 1.0)
    assert pol.reachability is Reachability.PUBLIC
    pol.set_addresses([PUB], 2.0)  # the reachable one went away
    assert pol.reachability is Reachability.PRIVATE
    pol.set_addresses([f"/ip4/203.0.113.{i}/tcp/1" for i in range(40)], 3.0)
    assert len(pol.addrs) == MAX_TRACKED_ADDRS
    assert pol.reachability is Reachability.UNKNOWN


def test_an_answer_for_a_forgotten_address_is_ignored():
    pol = AutonatClientPolicy()
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["s"], 0.0)
    (p,) = pol.on_timer(0.0)
    pol.set_addresses([], 1.0)
    assert not pol.on_result(p, ProbeOutcome.REACHABLE, 2.0)
    assert pol.next_deadline() is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(ProbeOutcome)), st.floats(0, 4000)),
                max_size=60),
       st.integers(1, 4))
def test_client_policy_stays_bounded_and_consistent_under_any_answers(ops, confirmations):
    pol = AutonatClientPolicy(confirmations=confirmations, max_in_flight=3)
    addrs = [PUB, "/ip4/198.51.100.9/tcp/1"]
    pol.set_addresses(addrs, 0.0)
    now = 0.0
    flying: list[Probe] = []
    for servers, outcome, dt in ops:
        now += dt
        pol.set_servers([f"s{i}" for i in range(servers)], now)
        flying += pol.on_timer(now)
        assert pol.in_flight() <= 3
        if flying:
            pol.on_result(flying.pop(0), outcome, now)
        nxt = pol.next_deadline()
        assert nxt is None or nxt == nxt  # never NaN
        for v in pol.addrs.values():
            assert len(v.streak_servers) <= 4
            if v.reachability is not Reachability.UNKNOWN:
                assert v.confirmed_at is not None


def test_a_re_probe_in_flight_leaves_nothing_due_until_it_answers():
    """next_deadline agreed with on_timer only for fresh addresses: while the one re-probe of
    a confirmed address was in flight it said "now" and the probe loop spun at 100% CPU."""
    pol = AutonatClientPolicy(confirmations=3, reprobe_interval=100.0)
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["a", "b", "c"], 0.0)
    _answer(pol, pol.on_timer(0.0), ProbeOutcome.REACHABLE, 1.0)
    (p,) = pol.on_timer(101.0)
    assert pol.on_timer(101.0) == [] and pol.next_deadline() != 101.0
    pol.on_result(p, ProbeOutcome.UNREACHABLE, 102.0)  # a contrary answer: two more, at once
    assert pol.next_deadline() == 102.0 and len(pol.on_timer(102.0)) == 2


def test_server_churn_grows_neither_the_streak_nor_the_asked_table():
    pol = AutonatClientPolicy(confirmations=3, reprobe_interval=100.0)
    pol.set_addresses([PUB], 0.0)
    now = 0.0
    for i in range(300):  # a new server every re-probe, all agreeing
        pol.set_servers([f"s{i}", f"t{i}", f"u{i}"], now)
        _answer(pol, pol.on_timer(now), ProbeOutcome.REACHABLE, now + 1)
        now += 101.0
    v = pol.addrs[PUB]
    assert v.reachability is Reachability.PUBLIC
    assert len(v.streak_servers) <= 3 and len(v.asked) <= 3 and len(v.confirmed_by) <= 3


def test_a_verdict_nobody_re_confirms_lapses_and_a_new_network_forgets_them_all():
    pol = AutonatClientPolicy(confirmations=3, reprobe_interval=100.0)
    pol.set_addresses([PUB], 0.0)
    pol.set_servers(["a", "b", "c"], 0.0)
    _answer(pol, pol.on_timer(0.0), ProbeOutcome.REACHABLE, 1.0)
    pol.set_servers([], 2.0)  # the servers that confirmed us left: the verdict stands ...
    assert pol.on_timer(150.0) == [] and pol.reachability is Reachability.PUBLIC
    pol.on_timer(200.0)
    assert pol.reachability is Reachability.PUBLIC and pol.next_deadline() == 201.0
    pol.on_timer(201.0)  # ... until it is two re-probe intervals old
    assert pol.reachability is Reachability.UNKNOWN and pol.evidence() == ()
    pol.set_servers(["a", "b", "c"], 202.0)  # they are back: confirmed again
    _answer(pol, pol.on_timer(202.0), ProbeOutcome.REACHABLE, 203.0)
    assert pol.reachability is Reachability.PUBLIC
    (late,) = pol.on_timer(303.0)
    pol.forget_verdicts(304.0)  # a new default route
    assert pol.reachability is Reachability.UNKNOWN and pol.next_deadline() == 304.0
    assert not pol.on_result(late, ProbeOutcome.REACHABLE, 305.0)  # asked on the old network
    assert pol.addrs[PUB].results == {}
