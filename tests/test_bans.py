"""The ban list, with plain floats for time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prozchain_discovery.bans import BanList


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


def test_one_abuser_does_not_ban_its_ip_two_do():
    b = BanList(base=60)
    b.ban(b"a", "198.51.100.7", 0.0, "x")
    assert b.is_banned(b"a", "198.51.100.7", 1.0)
    assert not b.is_banned(b"neighbour", "198.51.100.7", 1.0)  # same NAT, not banned
    b.ban(b"b", "198.51.100.7", 2.0, "x")  # a second identity from the same IP
    assert b.is_banned(b"fresh-identity", "198.51.100.7", 3.0)
    assert not b.is_banned(b"fresh-identity", "203.0.113.1", 3.0)
    assert not b.is_banned(b"fresh-identity", "198.51.100.7", 70.0)  # over with the ids' bans


def test_history_is_forgotten_after_a_quiet_period():
    b = BanList(base=60)
    b.ban(b"p", None, 0.0, "x")
    assert b.next_deadline() == 240.0
    b.on_timer(239.0)
    assert len(b) == 1
    b.on_timer(240.0)
    assert len(b) == 0 and b.next_deadline() is None
    assert b.ban(b"p", None, 300.0, "x") == 60  # a first offence again


def test_100000_distinct_abusers_leave_the_table_at_its_bound():
    b = BanList(max_entries=1000)
    for i in range(100_000):
        b.ban(i.to_bytes(8, "big"), None, float(i), "x")
    assert len(b) == 1000
    assert b.is_banned((99_999).to_bytes(8, "big"), None, 100_000.0)
    assert len(b.snapshot(100_000.0)["recent"]) <= 20


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 10_000), st.sampled_from([None, "a", "b"])), max_size=40))
def test_deadline_precedes_every_expiry_and_nothing_survives_it(events):
    b = BanList(base=10, cap=100)
    now = 0.0
    for peer, dt, ip in events:
        now += dt
        b.on_timer(now)
        b.ban(bytes([peer]), ip, now, "x")
        deadline = b.next_deadline()
        assert deadline is not None and deadline > now
    end = now + 4 * 100 + 1
    b.on_timer(end)
    assert len(b) == 0
    assert not any(b.is_banned(bytes([p]), ip, end) for p in range(21) for ip in (None, "a", "b"))
