"""The dial congestion window (dialer/congestion.py): AIMD on loop lag and timeouts, plain floats.

Its invariants under random signals are checked with every other sans-IO core's, in
tests/test_deadlines_props.py."""

from __future__ import annotations

import random

import pytest

from prozchain_discovery.dialer.congestion import CALM_LAG, CONGESTED_LAG, DialWindow


def test_a_calm_loop_keeps_the_whole_window():
    w = DialWindow(16)
    for i in range(100):
        w.on_lag(0.0001, float(i))
    assert w.size == 16 and w.load == 1.0 and not w.congested


def test_a_backlog_halves_the_window_once_per_interval():
    w = DialWindow(16, cut_interval=0.5)
    w.on_lag(CONGESTED_LAG, 10.0)
    assert w.size == 8 and w.load == 2.0 and w.congested
    w.on_lag(0.2, 10.1)  # the same burst: no second cut
    assert w.size == 8
    w.on_lag(0.2, 10.6)
    assert w.size == 4
    w.on_timeout(11.2, lag=0.2)
    assert w.size == 2


def test_a_timeout_with_the_loop_calm_is_a_dead_peer_not_congestion():
    """Black-holed and stale addresses time out all the time on the internet: no cut."""
    w = DialWindow(16)
    for i in range(20):
        w.on_timeout(float(i), lag=0.0001)
    assert w.size == 16 and not w.congested
    w.on_timeout(30.0, lag=0.03)  # the loop is not calm: the timeout may be the CPU's
    assert w.size == 8


def test_the_window_never_goes_below_its_floor_and_grows_back_additively():
    w = DialWindow(16)
    for i in range(20):
        w.on_timeout(float(i), lag=0.2)
    assert w.size == 1 and w.load == 16.0
    calm = 0
    while w.size < 16:
        w.on_lag(CALM_LAG / 2, 100.0)
        calm += 1
    # Additive increase: ~sum(k for k in 1..15) calm dials to grow from 1 to 16, not a jump.
    assert 100 <= calm <= 140


def test_admission_counts_dials_in_flight():
    w = DialWindow(2)
    assert w.may_start()
    w.start()
    w.start()
    assert not w.may_start()
    w.end()
    assert w.may_start()
    w.end()
    w.end()  # an extra end never goes negative
    assert w.in_flight == 0


def test_limits_are_checked():
    with pytest.raises(ValueError):
        DialWindow(0)
    with pytest.raises(ValueError):
        DialWindow(4, floor=5)


def test_many_nodes_cut_together_when_they_share_a_loop():
    """Fifty dialers on one loop see the same lag: their total in flight shrinks from 800."""
    rng = random.Random(3)
    windows = [DialWindow(16) for _ in range(50)]
    for t in range(10):
        for w in windows:
            w.on_lag(0.05 + rng.random() * 0.2, t * 1.0)
    assert sum(w.size for w in windows) == 50  # every window at its floor of one
