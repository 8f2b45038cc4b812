"""The cascade's retry schedule and the dial race, as plain objects with ``now`` passed in."""

from __future__ import annotations

from prozchain_discovery.bootstrap.schedule import SETTLED_CHECK, CascadeSchedule
from prozchain_discovery.dialer.race import DialRace, HedgePolicy


def test_short_passes_retry_quickly_then_settle_at_check_interval_and_a_minute_once_enough():
    s = CascadeSchedule(check_interval=5.0, now=0.0)
    assert s.due(0.0)
    now, gaps = 0.0, []
    for _ in range(6):
        s.on_pass_done(now, short=True)
        gaps.append(s.next_deadline() - now)
        now = s.next_deadline()
    assert gaps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    s.on_pass_done(now, short=False)
    # Enough peers: a peer leaving kicks the cascade, the timer is only a safety net.
    assert s.next_deadline() == now + SETTLED_CHECK


def test_kick_runs_at_once_and_restarts_the_short_retry():
    s = CascadeSchedule(check_interval=5.0)
    for t in range(4):
        s.on_pass_done(float(t), short=True)
    s.kick(10.0)
    assert s.due(10.0)
    s.on_pass_done(10.0, short=True)
    assert s.next_deadline() == 10.5


def test_race_dials_the_deficit_and_backs_up_only_late_dials():
    race = DialRace(limit=16, until=3, hedge_delay=0.15)
    tokens = []
    while race.may_start(0.0, connected=1):
        tokens.append(race.start(0.0, connected=1))
    assert len(tokens) == 2 and race.hedges == 0  # exactly the deficit
    assert race.next_deadline(0.0) == 0.15
    assert not race.may_start(0.1, connected=1)
    assert race.may_start(0.15, connected=1)  # one is late: a backup may start
    race.start(0.15, connected=1)
    assert race.hedges == 1
    assert race.next_deadline(0.2) == 0.30  # only dials not yet late count
    race.end(tokens[0])
    assert race.reached(3) and not race.reached(2)


def test_hedge_delay_follows_typical_dials_with_a_floor():
    h = HedgePolicy(typical=0.05)
    for _ in range(50):
        h.on_dial_success(0.005)
    assert h.delay == 0.05  # the floor
    for _ in range(50):
        h.on_dial_success(0.2)
    assert 0.55 < h.delay <= 0.6
