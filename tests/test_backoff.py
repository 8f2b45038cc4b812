from __future__ import annotations

import random

from prozchain_discovery.backoff import DialBackoff
from prozchain_discovery.config import BackoffConfig


def test_go_libp2p_schedule_without_jitter():
    b = DialBackoff(BackoffConfig(jitter=0.0, give_up_after=100), random.Random(1))
    delays = [b.record_failure("a", 0.0) for _ in range(30)]
    assert delays[:4] == [6.0, 9.0, 14.0, 21.0]  # 5 + 1*n^2
    assert max(delays) == 300.0  # capped at 5 min


def test_allowed_and_success_resets():
    b = DialBackoff(BackoffConfig(jitter=0.0), random.Random(1))
    assert b.allowed("a", 0.0)
    b.record_failure("a", 0.0)
    assert not b.allowed("a", 5.9)
    assert b.allowed("a", 6.0)
    b.record_success("a", 7.0)
    assert b.allowed("a", 7.0) and b.state("a").failures == 0


def test_jitter_bounds():
    b = DialBackoff(BackoffConfig(jitter=0.1, give_up_after=100), random.Random(7))
    for n in range(1, 20):
        d = b.record_failure("k", 0.0)
        base = min(300.0, 5.0 + n * n)
        assert base * 0.9 - 1e-9 <= d <= base * 1.1 + 1e-9


def test_give_up_after_n():
    b = DialBackoff(BackoffConfig(give_up_after=3), random.Random(1))
    for _ in range(3):
        b.record_failure("k", 0.0)
    assert b.state("k").given_up
    assert not b.allowed("k", 1e9)
    snap = b.snapshot(0.0)
    assert snap["k"]["given_up"] is True
    b.reset_given_up()
    assert b.allowed("k", 0.0)


def test_kept_keys_are_never_given_up_and_wait_at_most_five_minutes():
    b = DialBackoff(BackoffConfig(jitter=0.0, give_up_after=3, cap=3600.0, step=100.0), random.Random(1))
    b.keep_trying("static")
    delays = [b.record_failure("static", 0.0) for _ in range(50)]
    assert not b.state("static").given_up
    assert max(delays) == 300.0
    assert b.allowed("static", 300.0)


def test_a_kept_key_is_retried_sooner_at_first():
    """#16: a bootstrap node that refused us has most often not started yet (a network restarted
    at once): retries 1, 2, 4 s later, then the normal curve (5 + n² s)."""
    b = DialBackoff(BackoffConfig(jitter=0.0, give_up_after=100), random.Random(1))
    b.keep_trying("boot")
    assert [b.record_failure("boot", 0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [b.record_failure("boot", 0.0) for _ in range(2)] == [32.0, 54.0]  # then 5 + 7² < 64: the normal curve
    assert [b.record_failure("peer", 0.0) for _ in range(2)] == [6.0, 9.0]  # other keys: as before


def test_given_up_keys_return_when_connectivity_does():
    b = DialBackoff(BackoffConfig(give_up_after=2), random.Random(1))
    for _ in range(2):
        b.record_failure("k", 0.0)
    assert b.wait_time("k", 0.0) == float("inf")
    assert b.reset_given_up() == 1
    assert b.allowed("k", 0.0)


def test_table_stays_bounded_after_100000_failed_peers():
    b = DialBackoff(BackoffConfig(), random.Random(1), max_entries=1000)
    b.keep_trying(b"static")
    for i in range(100_000):
        key = i.to_bytes(8, "big")
        b.record_attempt(key, float(i))
        b.record_failure(key, float(i), "refused")
    assert len(b) == 1001 and b.evicted == 99_000
    assert b.state(b"static") is not None  # kept keys are never evicted
    assert len(b.snapshot(0.0)) <= 50


def test_load_stretches_the_delay_up_to_the_cap():
    """Under load (the dialer's window cut) a retry waits longer; the cap still holds."""
    b = DialBackoff(BackoffConfig(jitter=0.0, give_up_after=100), random.Random(1))
    assert b.record_failure("a", 0.0, scale=4.0) == 24.0  # (5 + 1) x 4
    assert b.record_failure("b", 0.0, scale=0.5) == 6.0  # never shorter than unloaded
    for _ in range(20):
        d = b.record_failure("c", 0.0, scale=16.0)
    assert d == 300.0
