"""The ban list (issue #8 §3), with plain floats for time: the core never reads a clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.bans import BanList

IP = "198.51.100.7"


def test_repeat_offences_double_up_to_the_cap():
    b = BanList(base=60, cap=600)
    durations = []
    now = 0.0
    for _ in range(6):
        d = b.ban(b"p", None, now, "ignored_rate_limit")
        durations.append(d)
        assert b.is_banned(b"p", None, now + d - 1) and not b.is_banned(b"p", None, now + d)
        now += d + 1
    assert durations == [60, 120, 240, 480, 600, 600]
    assert b.ban(b"other", None, now, "x") == 60  # per key: another id starts from the base


def test_defaults_are_a_minute_doubling_to_an_hour():
    b = BanList()
    assert [b.ban(b"p", None, 0.0, "x") for _ in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    for _ in range(2000):  # no overflow however often
        assert b.ban(b"p", None, 0.0, "x") == 3600


def test_one_abuser_does_not_ban_its_ip_two_do():
    b = BanList(base=60)
    b.ban(b"a", IP, 0.0, "x")
    assert b.is_banned(b"a", IP, 1.0)
    assert not b.is_banned(b"neighbour", IP, 1.0)  # same NAT, not banned
    b.ban(b"a", IP, 100.0, "x")  # the same id again is still one id
    assert not b.is_banned(b"neighbour", IP, 101.0)
    b.ban(b"b", IP, 102.0, "x")  # a second identity from the same IP, within the window
    assert b.is_banned(b"fresh-identity", IP, 103.0)
    assert not b.is_banned(b"fresh-identity", "203.0.113.1", 103.0)
    assert not b.is_banned(b"fresh-identity", IP, 162.0)  # the IP's first ban: 60 s
    assert b.is_banned(b"fresh-identity", None, 103.0) is False  # no IP given: ids only


def test_two_ids_far_apart_do_not_ban_the_ip():
    b = BanList(base=60, ip_window=600)
    b.ban(b"a", IP, 0.0, "x")
    b.ban(b"b", IP, 601.0, "x")
    assert not b.is_banned(b"c", IP, 602.0)
    b.ban(b"c", IP, 700.0, "x")  # b and c within 600 s
    assert b.is_banned(b"d", IP, 701.0)


def test_an_ip_ban_escalates_like_an_id_ban():
    b = BanList(base=60, cap=3600)
    b.ban(b"a", IP, 0.0, "x")
    b.ban(b"b", IP, 1.0, "x")
    assert b.is_banned(b"z", IP, 60.0) and not b.is_banned(b"z", IP, 61.0)
    b.ban(b"c", IP, 100.0, "x")  # a third id: the threshold is met again
    assert b.is_banned(b"z", IP, 219.0) and not b.is_banned(b"z", IP, 220.0)  # 120 s


def test_ip_threshold_one_bans_the_ip_at_once_and_a_known_ip_is_used():
    b = BanList(ip_threshold=1)
    b.ban(b"a", IP, 0.0, "x")
    assert b.is_banned(b"neighbour", IP, 1.0)
    b2 = BanList()
    b2.ban(b"a", IP, 0.0, "x")
    b2.ban(b"a", None, 10.0, "x")  # the IP it had is remembered with it
    b2.ban(b"b", IP, 20.0, "x")
    assert b2.is_banned(b"fresh", IP, 21.0)


def test_history_is_forgotten_after_a_quiet_period():
    b = BanList(base=60)
    b.ban(b"p", None, 0.0, "x")
    assert b.next_deadline() == 240.0  # 4 x the last ban
    b.on_timer(239.0)
    assert len(b) == 1
    b.on_timer(240.0)
    assert len(b) == 0 and b.next_deadline() is None
    assert b.ban(b"p", None, 300.0, "x") == 60  # a first offence again


def test_a_ban_ends_and_history_is_forgotten_even_if_the_timer_is_late():
    b = BanList(base=60)
    b.ban(b"p", None, 0.0, "x")
    assert not b.is_banned(b"p", None, 60.0)  # no on_timer needed for a ban to end
    assert b.ban(b"p", None, 250.0, "x") == 60  # quiet for 4 x 60 s: forgotten, timer or not
    assert len(b) == 1 and b.next_deadline() == 250.0 + 240.0


def test_the_next_deadline_covers_ips_too():
    b = BanList(base=60, ip_window=600)
    b.ban(b"a", IP, 0.0, "x")
    b.ban(b"b", IP, 0.0, "x")  # IP banned 60 s, remembered max(600, 240) s
    assert b.next_deadline() == 240.0
    b.on_timer(240.0)
    assert len(b) == 0 and b.snapshot(240.0)["remembered_ips"] == 1
    assert b.next_deadline() == 600.0
    b.on_timer(600.0)
    assert b.next_deadline() is None and b.snapshot(600.0)["remembered_ips"] == 0


def test_100000_distinct_abusers_leave_the_tables_at_their_bound():
    b = BanList(max_entries=1000)
    for i in range(100_000):
        b.ban(i.to_bytes(8, "big"), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", float(i), "x")
    snap = b.snapshot(100_000.0)
    assert len(b) == 1000 and snap["remembered_ips"] == 1000
    assert snap["timer_rows"] <= 2 * (2 * 1000 + 64)
    assert snap["evicted"] == 2 * 99_000
    assert b.is_banned((99_999).to_bytes(8, "big"), None, 100_000.0)  # the oldest went first
    assert not b.is_banned((0).to_bytes(8, "big"), None, 1.0)
    assert len(snap["recent"]) == 20


def test_re_banning_one_peer_keeps_memory_flat():
    b = BanList()
    for i in range(50_000):
        b.ban(b"p", IP, float(i), "x")
    assert len(b) == 1 and b.snapshot(0.0)["timer_rows"] <= 2 * (2 + 64)


def test_snapshot_is_small_and_newest_first():
    b = BanList(base=60)
    for i in range(30):
        b.ban(bytes([i]), None, float(i), f"r{i}")
    b.ban(b"x", IP, 30.0, "flood")
    b.ban(b"y", IP, 31.0, "flood")
    snap = b.snapshot(32.0)
    assert snap["banned_peers"] == 32 and snap["banned_ips"] == 1 and snap["remembered"] == 32
    assert snap["bans"] == 32 and snap["ip_bans"] == 1
    recent = snap["recent"]
    assert len(recent) == 20
    assert recent[0]["peer"] == b"y".hex() and recent[1]["ip"] == IP and recent[2]["peer"] == b"x".hex()
    assert recent[0] == {"peer": "79", "for": 59.0, "offences": 1, "reason": "flood"}
    assert b.snapshot(10_000.0)["banned_peers"] == 0 and b.snapshot(10_000.0)["recent"] == []


def test_nonsense_parameters_are_refused():
    for kw in ({"base": 0}, {"base": 10, "cap": 5}, {"max_entries": 0}, {"ip_threshold": 0}):
        with pytest.raises(ValueError):
            BanList(**kw)  # type: ignore[arg-type]


BASE, CAP, WINDOW = 10.0, 100.0, 50.0
IPS = [None, "a", "b"]
op = st.one_of(
    st.tuples(st.just("ban"), st.integers(0, 12), st.sampled_from(IPS), st.floats(0, 300)),
    st.tuples(st.just("timer"), st.just(0), st.just(None), st.floats(0, 300)),
    st.tuples(st.just("check"), st.integers(0, 12), st.sampled_from(IPS), st.floats(0, 300)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=60))
def test_against_a_model_the_deadline_precedes_every_expiry_and_nothing_survives_it(ops):
    b = BanList(base=BASE, cap=CAP, ip_window=WINDOW)
    model: dict[int, tuple[int, float, float, str | None]] = {}  # peer -> offences, until, forget, ip
    offences_by_ip: list[tuple[int, str, float]] = []
    now = 0.0
    for kind, peer, ip, dt in ops:
        now += dt
        if kind == "ban":
            prev = model.get(peer)
            k = prev[0] + 1 if prev is not None and prev[2] > now else 1
            if prev is not None and prev[2] > now:
                ip = ip or prev[3]
            d = min(CAP, BASE * 2 ** (k - 1))
            assert b.ban(bytes([peer]), ip, now, "x") == d
            model[peer] = (k, now + d, now + 4 * d, ip)
            if ip is not None:
                offences_by_ip.append((peer, ip, now))
        elif kind == "timer":
            b.on_timer(now)
            model = {p: m for p, m in model.items() if m[2] > now}
        assert len(b) == len(model)
        if model:  # never later than the earliest expiry
            deadline = b.next_deadline()
            assert deadline is not None and deadline <= min(m[2] for m in model.values())
        for p in range(13):
            assert b.is_banned(bytes([p]), None, now) == (p in model and now < model[p][1])
        for a in ("a", "b"):
            if b.is_banned(b"fresh", a, now):  # only after two ids abused from it, lately
                recent = {p for p, i, t in offences_by_ip if i == a and t >= now - CAP - WINDOW}
                assert len(recent) >= 2
    end = now + 4 * CAP + WINDOW + 1
    b.on_timer(end)
    assert len(b) == 0 and b.next_deadline() is None
    assert b.snapshot(end)["remembered_ips"] == 0
    assert not any(b.is_banned(bytes([p]), ip, end) for p in range(13) for ip in IPS)
    assert not b.is_banned(b"fresh", "a", end)
