"""The DCUtR schedule and punch policy (holepunch/schedule.py) and codec, with plain floats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from prozchain_discovery.holepunch.messages import (
    MAX_MESSAGE,
    DcutrProtocolError,
    decode_connect,
    decode_sync,
    encode_connect,
    encode_sync,
)
from prozchain_discovery.holepunch.schedule import (
    AttemptSchedule,
    HolepunchNotSupported,
    HolepunchParams,
    PairPlan,
    PunchBook,
    StepKind,
    Verdict,
    drives,
    plan_pair,
    refuses_peer_session,
    yields_to_peer,
)
from prozchain_discovery.wire.framing import FrameDecoder, encode_uvarint
from prozchain_discovery.wire.pb import dcutr_pb2


def test_only_the_side_that_accepted_the_relayed_connection_drives():
    assert drives(relayed_inbound=True) and not drives(relayed_inbound=False)


@pytest.mark.parametrize("ours,theirs,plan", [
    ("port_restricted", "port_restricted", PairPlan.PUNCH),
    ("unknown", "restricted_cone", PairPlan.PUNCH),
    ("full_cone", "unknown", PairPlan.PUNCH),
    ("symmetric", "symmetric", PairPlan.NOT_SUPPORTED),
    ("symmetric", "port_restricted", PairPlan.NOT_SUPPORTED),
    ("port_restricted", "symmetric", PairPlan.NOT_SUPPORTED),
    ("symmetric", "unknown", PairPlan.NOT_SUPPORTED),
    ("symmetric", "open", PairPlan.WE_DIAL),  # connection reversal
    ("symmetric", "full_cone", PairPlan.WE_DIAL),
    ("open", "symmetric", PairPlan.PEER_DIALS),
    ("garbage-from-the-wire", "port_restricted", PairPlan.PUNCH),  # unknown reads as "try"
])
def test_pair_plan(ours, theirs, plan):
    got, why = plan_pair(ours, theirs)
    assert got is plan
    assert (why is not None) == (plan is PairPlan.NOT_SUPPORTED)
    if why is not None:
        assert isinstance(why, HolepunchNotSupported) and "symmetric" in why.reason
        assert why.as_dict()["result"] == "HolepunchNotSupported"


def test_attempt_rtt_sync_delay_and_success():
    s = AttemptSchedule("port_restricted")
    step = s.start(100.0)
    assert step.kind is StepKind.SEND_CONNECT and s.attempts == 1
    s.connect_sent(100.0)
    step = s.connect_answered(100.1, "port_restricted")  # RTT 100 ms, CONNECT -> CONNECT
    assert step.kind is StepKind.SEND_SYNC_AND_DIAL
    assert step.delay == pytest.approx(0.05)  # RTT/2
    assert step.deadline == pytest.approx(100.1 + 0.05 + 5.0)  # 5 s per dial
    assert s.next_deadline() == step.deadline
    assert s.direct_connected(100.4).kind is StepKind.DONE
    assert s.outcome == "direct" and s.time_to_direct == pytest.approx(0.4) and s.next_deadline() is None


def test_three_attempts_each_rerunning_connect_then_give_up():
    s = AttemptSchedule("port_restricted")
    step, t, kinds = s.start(0.0), 0.0, []
    while step.kind not in (StepKind.DONE, StepKind.GIVE_UP):
        kinds.append(step.kind)
        if step.kind is StepKind.SEND_CONNECT:
            s.connect_sent(t)
            t += 0.2 + len(kinds) * 0.1
            step = s.connect_answered(t, None)
        else:
            t += step.delay + 5.0
            step = s.attempt_failed(t)
    assert kinds == [StepKind.SEND_CONNECT, StepKind.SEND_SYNC_AND_DIAL] * 3
    assert s.attempts == 3 and s.outcome == "failed" and len(s.rtts) == 3
    assert s.rtts[0] < s.rtts[1] < s.rtts[2]  # a fresh RTT every attempt
    assert s.attempt_failed(t + 1).kind is StepKind.GIVE_UP  # never a 4th


def test_sync_delay_is_capped_and_a_lost_connect_costs_an_attempt():
    s = AttemptSchedule("port_restricted", HolepunchParams(max_sync_delay=2.0))
    s.start(0.0)
    s.connect_sent(0.0)
    assert s.connect_answered(10.0, None).delay == 2.0
    assert s.attempt_failed(15.0).kind is StepKind.SEND_CONNECT  # attempt 2
    assert s.attempt_failed(25.0).kind is StepKind.SEND_CONNECT  # CONNECT timed out: attempt 3
    assert s.attempt_failed(35.0).kind is StepKind.GIVE_UP and s.attempts == 3


@pytest.mark.parametrize("ours,theirs", [("unknown", "port_restricted"), ("port_restricted", "unknown"),
                                         ("unknown", "unknown")])
def test_an_unknown_class_gets_one_attempt_then_the_session_is_undecided(ours, theirs):
    """#16 item 5: a side that has not classified its NAT (it may be symmetric) costs one
    attempt, not three; the session ends undecided, with no backoff, to be re-run later."""
    s = AttemptSchedule(ours)
    s.start(0.0)
    s.connect_sent(0.0)
    assert s.connect_answered(0.1, theirs).kind is StepKind.SEND_SYNC_AND_DIAL
    assert s.attempt_failed(5.2).kind is StepKind.GIVE_UP
    assert s.outcome == "undecided" and s.attempts == 1
    book: PunchBook[str] = PunchBook()
    assert book.begin("p", 0.0)
    book.end("p", 5.2, s.outcome)
    assert book.verdict("p", 5.2) is Verdict.START and book.undecided_sessions("p") == 1
    # once unknown has had its chances, it is taken as "just try" (go/js peers never say)
    t = AttemptSchedule(ours, one_attempt_if_unknown=False)
    t.start(0.0)
    t.connect_sent(0.0)
    t.connect_answered(0.1, theirs)
    assert t.attempt_failed(5.2).kind is StepKind.SEND_CONNECT
    # a go or js peer sends no class (None): the spec's three attempts
    g = AttemptSchedule("port_restricted")
    g.start(0.0)
    g.connect_sent(0.0)
    g.connect_answered(0.1, None)
    assert g.attempt_failed(5.2).kind is StepKind.SEND_CONNECT


def test_the_smaller_id_with_an_outbound_circuit_yields_and_a_refused_connect_is_no_attempt():
    small, large = b"\x00\x01", b"\x00\x02"
    assert yields_to_peer(small, large, outbound_relayed=True)
    assert not yields_to_peer(large, small, outbound_relayed=True)
    assert not yields_to_peer(small, large, outbound_relayed=False)  # it accepted the only circuit
    assert refuses_peer_session(large, small) and not refuses_peer_session(small, large)
    s = AttemptSchedule("port_restricted")
    s.start(0.0)
    s.connect_sent(0.0)  # refused by the driver: no answer
    assert s.yielded(0.1).kind is StepKind.GIVE_UP
    assert s.outcome == "yielded" and s.attempts == 0
    book: PunchBook[str] = PunchBook()
    assert book.begin("p", 0.0)
    book.end("p", 0.1, "yielded")
    assert book.verdict("p", 0.1) is Verdict.START and book.retry_at("p") == 0.1


def test_symmetric_gives_up_at_once_with_a_typed_answer():
    s = AttemptSchedule("symmetric")
    s.start(0.0)
    s.connect_sent(0.0)
    step = s.connect_answered(0.1, "port_restricted")
    assert step.kind is StepKind.GIVE_UP and isinstance(step.not_supported, HolepunchNotSupported)
    assert s.outcome == "not_supported" and s.attempts == 1
    r = AttemptSchedule("symmetric")
    r.start(0.0)
    assert r.connect_answered(0.1, "open").kind is StepKind.DIAL_DIRECT
    w = AttemptSchedule("open")
    w.start(0.0)
    assert w.connect_answered(0.1, "symmetric").kind is StepKind.WAIT_FOR_PEER


def test_punch_book_backoff_is_bounded_and_exponential():
    book: PunchBook[str] = PunchBook(HolepunchParams(backoff_base=60, backoff_max=240))
    assert book.begin("p", 0.0)
    assert book.verdict("p", 1.0) is Verdict.RUNNING and not book.begin("p", 1.0)
    book.end("p", 10.0, "failed")
    assert book.verdict("p", 69.0) is Verdict.BACKING_OFF and book.retry_at("p") == 70.0
    assert book.begin("p", 70.0)
    book.end("p", 80.0, "failed")
    assert book.retry_at("p") == 200.0  # doubled
    for t in (200.0, 500.0, 800.0):
        assert book.begin("p", t)
        book.end("p", t, "failed")
    assert book.retry_at("p") == 800.0 + 240  # capped
    assert book.begin("p", 1040.0)
    book.end("p", 1041.0, "direct")  # success resets
    assert book.verdict("p", 1041.0) is Verdict.START
    assert book.next_deadline() is None


def test_punch_book_remembers_not_supported_and_stays_bounded():
    book: PunchBook[int] = PunchBook(HolepunchParams(max_peers=3, backoff_max=100))
    why = HolepunchNotSupported("symmetric", "port_restricted", "symmetric NAT (ours)")
    book.note_not_supported(1, 0.0, why)
    assert book.verdict(1, 50.0) is Verdict.NOT_SUPPORTED and book.not_supported(1, 50.0) == why
    assert book.verdict(1, 100.0) is Verdict.START and book.not_supported(1, 100.0) is None
    assert book.snapshot(50.0)["1"]["result"] == "HolepunchNotSupported"
    for p in range(2, 10):
        book.begin(p, float(p))
        book.end(p, float(p), "failed")
    assert len(book) == 3
    book.on_timer(10_000.0)
    book.note_not_supported(42, 0.0, why)
    assert book.forget_not_supported() == 1 and book.verdict(42, 1.0) is Verdict.START


def test_params_are_validated():
    for bad in ({"max_attempts": 0}, {"dial_timeout": 0}, {"max_message": 10}):
        with pytest.raises(ValueError):
            HolepunchParams(**bad).validate()  # type: ignore[arg-type]


def test_codec_round_trip_and_limits():
    addrs = [Multiaddr("/ip4/203.0.113.120/tcp/4001"), Multiaddr("/ip4/10.0.4.2/tcp/4001")]
    dec = FrameDecoder(MAX_MESSAGE)
    dec.feed(encode_connect(addrs, "port_restricted") + encode_sync())
    c = decode_connect(dec.next_frame() or b"")
    assert c.addrs == tuple(addrs) and c.nat_type == "port_restricted" and c.skipped == 0
    decode_sync(dec.next_frame() or b"")
    # a go/js peer sends no nat_type: None ("unknown")
    plain = dcutr_pb2.HolePunch(type=dcutr_pb2.HolePunch.CONNECT)
    plain.ObsAddrs.extend([addrs[0].to_bytes(), b"\xff\xff not a multiaddr"])
    c = decode_connect(plain.SerializeToString())
    assert c.nat_type is None and c.addrs == (addrs[0],) and c.skipped == 1
    with pytest.raises(DcutrProtocolError):
        decode_sync(plain.SerializeToString())  # CONNECT where SYNC was due
    with pytest.raises(DcutrProtocolError):
        decode_connect(b"\x08")  # truncated
    with pytest.raises(DcutrProtocolError):
        decode_connect(b"\x00" * (MAX_MESSAGE + 1))
    big = FrameDecoder(MAX_MESSAGE)
    with pytest.raises(Exception):
        big.feed(encode_uvarint(MAX_MESSAGE + 1))  # refused on the prefix, before any body
        big.next_frame()
    many = encode_connect([Multiaddr(f"/ip4/198.51.100.{i}/tcp/1") for i in range(50)], None)
    assert len(many) < MAX_MESSAGE  # capped at 20 addresses


def test_dialable_addresses_from_a_connect():
    from prozchain_discovery.holepunch.service import _dialable

    wan, lan = Multiaddr("/ip4/203.0.113.120/tcp/4001"), Multiaddr("/ip4/10.0.4.2/tcp/4001")
    quic = Multiaddr("/ip4/203.0.113.120/udp/4001/quic-v1")
    circuit = Multiaddr("/ip4/198.51.100.20/tcp/4001/p2p/12D3KooWEmrZ3Ld5gC5Y1nTVU7oPBdT6dVZLC8rvqzJ4cmVjCq4q"
                        "/p2p-circuit")
    # behind another NAT: only the public TCP and QUIC addresses (no relay, no stranger's LAN)
    assert _dialable((wan, lan, quic, circuit)) == [wan, quic]
    # the peer is behind our own NAT (seen at our WAN IP): its LAN address first
    assert _dialable((wan, lan), {"203.0.113.120"}) == [lan, wan]
    # no public address at all (a LAN, loopback): what there is
    assert _dialable((lan,)) == [lan]
    assert _dialable((Multiaddr("/ip4/0.0.0.0/tcp/1"),)) == []


def test_lazy_select_sends_the_proposal_at_once_and_checks_the_echo_later():
    import trio
    from libp2p.io.exceptions import IOException
    from libp2p.utils import encode_delim

    from prozchain_discovery.multistream import LazySelect as _LazySelect
    from prozchain_discovery.multistream import delimited_count as _delimited_count

    header, noise = encode_delim(b"/multistream/1.0.0"), encode_delim(b"/noise")
    assert _delimited_count(header) == 1 and _delimited_count(header + noise) == 2
    assert _delimited_count(header + noise[:-1]) == 1 and _delimited_count(b"\xff") == 0

    class Wire:
        def __init__(self, incoming: bytes) -> None:
            self.sent: list[bytes] = []
            self.incoming = bytearray(incoming)

        async def write(self, data: bytes) -> None:
            self.sent.append(data)

        async def read(self, n: int | None = None) -> bytes:
            k = len(self.incoming) if n is None else min(n, len(self.incoming))
            out = bytes(self.incoming[:k])
            del self.incoming[:k]
            return out

        async def close(self) -> None:
            pass

    async def client(wire: Wire, split: bool) -> bytes:
        lazy = _LazySelect(wire)
        if split:  # header and proposal in two writes: nothing leaves before both
            await lazy.write(header)
            assert wire.sent == [] and await lazy.read(len(header)) == header
            await lazy.write(noise)
        else:
            await lazy.write(header + noise)
        assert wire.sent == [header + noise]  # out at once, no round trip
        want = noise if split else header + noise  # the echoes come back locally, before the peer's
        got = b""
        for _ in range(len(want)):
            got += await lazy.read(1)
        assert got == want and wire.incoming  # nothing consumed from the wire yet
        await lazy.write(b"msg1")
        return await lazy.read(100)  # the real echoes are checked and dropped first

    for split in (False, True):
        assert trio.run(client, Wire(header + noise + b"msg2"), split) == b"msg2"
    with pytest.raises(IOException):
        trio.run(client, Wire(header + encode_delim(b"na") + b"msg2"), False)


# ---- after the happy path -------------------------------------------------------------------------
def test_a_backoff_that_ended_is_no_deadline_any_more():
    """next_deadline() must not keep naming a retry time that passed: the service's loop waits
    until it, so a past one made it spin (a busy loop after every failed or unsupported punch)."""
    book: PunchBook[str] = PunchBook(HolepunchParams(backoff_base=60, backoff_max=240))
    why = HolepunchNotSupported("symmetric", "symmetric", "symmetric NAT (both)")
    assert book.begin("p", 0.0)
    book.end("p", 0.0, "failed")
    book.note_not_supported("q", 0.0, why)
    assert book.next_deadline() == 60.0
    book.on_timer(60.0)
    assert book.next_deadline() == 240.0
    book.on_timer(240.0)
    assert book.next_deadline() is None
    assert book.verdict("p", 240.0) is Verdict.START and book.verdict("q", 240.0) is Verdict.START
    assert book.begin("p", 300.0)  # failed again: a new backoff, doubled, and a new deadline
    book.end("p", 300.0, "failed")
    assert book.retry_at("p") == 420.0 and book.next_deadline() == 420.0


def test_after_a_direct_connection_closes_a_new_relayed_one_may_punch_again():
    book: PunchBook[str] = PunchBook(HolepunchParams(backoff_base=60))
    assert book.begin("p", 0.0)
    book.end("p", 1.0, "direct")
    assert book.verdict("p", 1.0) is Verdict.START  # nothing marks the peer "direct" for good
    assert book.begin("p", 500.0)
    book.end("p", 510.0, "failed")  # this time the punch fails: backoff from now on
    assert book.verdict("p", 569.0) is Verdict.BACKING_OFF and not book.begin("p", 569.0)
    assert book.begin("p", 570.0)


def test_the_punch_book_stays_bounded_under_many_failing_peers():
    book: PunchBook[int] = PunchBook(HolepunchParams(max_peers=64, backoff_base=60))
    for p in range(10_000):
        now = float(p)
        if book.begin(p, now):
            book.end(p, now + 0.5, "failed")
        assert len(book) <= 64
    assert len(book) == 64 and len(book.snapshot(10_000.0)) == 64
    deadline = book.next_deadline()
    assert deadline is not None and deadline >= 10_000.0 - 64


async def test_the_service_loop_sleeps_after_a_backoff_ended():
    """HolepunchService.run with a failed peer whose backoff is over: the loop must block."""
    import trio

    from prozchain_discovery.events import EventBus
    from prozchain_discovery.holepunch.service import HolepunchService
    from prozchain_discovery.metrics import Metrics

    hp = HolepunchService(object(), bus=EventBus(), metrics=Metrics())  # type: ignore[arg-type]
    now = trio.current_time()
    assert hp.book.begin("p", now - 1000.0)  # type: ignore[arg-type]
    hp.book.end("p", now - 1000.0, "failed")  # type: ignore[arg-type]  # backoff ended long ago
    wakes = 0
    on_timer = hp.book.on_timer

    def counting(t: float) -> None:
        nonlocal wakes
        wakes += 1
        on_timer(t)

    hp.book.on_timer = counting  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hp.run)
        for _ in range(200):
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert wakes <= 2


@given(st.binary(max_size=3000), st.integers(0, 40))
def test_fuzz_decoders_raise_only_their_own_error(data: bytes, max_addrs: int):
    """Whatever a peer sends as CONNECT or SYNC: a decoded message or DcutrProtocolError."""
    try:
        c = decode_connect(data, max_addrs)
        assert len(c.addrs) <= max_addrs
    except DcutrProtocolError:
        pass
    try:
        decode_sync(data)
    except DcutrProtocolError:
        pass


@given(st.lists(st.one_of(st.binary(max_size=60), st.sampled_from([
    Multiaddr("/ip4/198.51.100.7/tcp/4001").to_bytes(), Multiaddr("/ip6/::1/udp/4001/quic-v1").to_bytes()])),
    max_size=50), st.one_of(st.none(), st.text(max_size=300)), st.integers(1, 30))
def test_fuzz_well_framed_connects_with_any_addresses_and_nat_type(addrs: list[bytes], nat: str | None, limit: int):
    msg = dcutr_pb2.HolePunch(type=dcutr_pb2.HolePunch.CONNECT, ObsAddrs=addrs)
    if nat is not None:
        msg.nat_type = nat
    try:
        c = decode_connect(msg.SerializeToString(), limit)
    except DcutrProtocolError:
        return
    assert len(c.addrs) <= limit and len(c.addrs) + c.skipped <= len(addrs)


def test_punch_dial_failures_are_counted_by_a_bounded_reason():
    from prozchain_discovery.holepunch.service import _dial_failure_reason

    assert _dial_failure_reason(OSError(99, "Cannot assign requested address")) == "EADDRNOTAVAIL"
    wrapped = RuntimeError("Failed to connect 192.0.2.100:4001 from 10.0.4.2:4001: [Errno 99] Cannot assign")
    assert _dial_failure_reason(wrapped) == "EADDRNOTAVAIL"  # py-libp2p's text, no errno attribute
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as inner:
            raise RuntimeError("dial failed") from inner
    except RuntimeError as outer:
        assert _dial_failure_reason(outer) == "ECONNREFUSED"
    assert _dial_failure_reason(TimeoutError()) == "TimeoutError"
