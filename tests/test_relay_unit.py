"""The autorelay policy core (relay/policy.py) with plain floats: no network, no clock."""

from __future__ import annotations

import random

from prozchain_discovery.relay.policy import AutoRelayPolicy, Release, Reserve

TTL = 3600.0


def reserves(actions: list) -> list:
    return [a.relay for a in actions if isinstance(a, Reserve) and not a.renewal]


def grant(p: AutoRelayPolicy, relay: str, now: float, ttl: float = TTL) -> None:
    p.reserved(relay, now + ttl, (f"/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit",), now)


def test_private_node_reserves_on_two_relays_in_distinct_groups_first():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=2)
    p.add_candidate("a1", "ip4:1.1")
    p.add_candidate("a2", "ip4:1.1")
    p.add_candidate("b1", "ip4:2.2")
    assert reserves(p.actions(0.0)) == ["a1", "b1"]
    p.check()
    assert p.actions(0.0) == []  # two in flight: nothing more


def test_same_group_is_used_when_nothing_else_is_left():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=2)
    p.add_candidate("a1", "loopback")
    p.add_candidate("a2", "loopback")
    assert reserves(p.actions(0.0)) == ["a1", "a2"]


def test_public_node_holds_no_reservations_and_turning_public_releases_them():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=2)
    p.add_candidate("a", "g1")
    p.add_candidate("b", "g2")
    p.actions(0.0)
    grant(p, "a", 1.0)
    grant(p, "b", 1.0)
    assert len(p.circuit_addrs()) == 2
    released = p.set_public(True)  # e.g. a UPnP mapping appeared
    assert sorted(r.relay for r in released) == ["a", "b"] and all(isinstance(r, Release) for r in released)
    assert p.circuit_addrs() == () and p.actions(2.0) == [] and p.next_deadline() is None
    p.check()
    assert p.set_public(False) == []
    assert sorted(reserves(p.actions(3.0))) == ["a", "b"]


def test_an_answer_arriving_after_turning_public_is_not_kept():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1)
    p.add_candidate("a", "g1")
    p.actions(0.0)
    p.set_public(True)
    grant(p, "a", 1.0)
    assert p.held == {}
    p.check()


def test_renewal_is_due_before_expiry_and_a_failed_renewal_replaces_the_relay():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0)
    p.add_candidate("a", "g1")
    p.add_candidate("b", "g2")
    assert reserves(p.actions(0.0)) == ["a"]
    grant(p, "a", 0.0)
    deadline = p.next_deadline()
    assert deadline == TTL - 120.0  # renewed 2 minutes before it runs out
    assert p.actions(deadline - 1) == []
    acts = p.actions(deadline)
    assert acts == [Reserve("a", renewal=True)]
    assert p.next_deadline() == TTL  # while renewing, the next thing is the expiry itself
    assert p.failed("a", deadline + 1) == [Release("a", "renewal failed")]
    assert reserves(p.actions(deadline + 1)) == ["b"]
    p.check()


def test_short_reservations_renew_at_three_quarters():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1)
    p.add_candidate("a", "g")
    p.actions(0.0)
    grant(p, "a", 0.0, ttl=40.0)
    assert p.next_deadline() == 30.0


def test_an_unrenewed_reservation_expires():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1)
    p.add_candidate("a", "g")
    p.actions(0.0)
    grant(p, "a", 0.0, ttl=100.0)
    p.actions(80.0)  # renewal started, its answer never comes
    acts = p.actions(100.0)
    assert Release("a", "expired") in acts
    assert p.circuit_addrs() == ()


def test_a_relay_that_goes_away_is_replaced_and_backs_off_exponentially():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0, backoff_cap=35.0)
    p.add_candidate("a", "g1")
    p.actions(0.0)
    grant(p, "a", 0.0)
    assert p.remove_candidate("a", 5.0) == [Release("a", "disconnected")]
    assert p.actions(5.0) == []  # nobody else to take
    p.add_candidate("a", "g1")  # it comes back at once
    assert p.in_backoff("a", 14.0) and p.next_deadline() == 15.0
    assert reserves(p.actions(15.0)) == ["a"]
    p.failed("a", 15.0)  # second failure: 20 s
    assert p.next_deadline() == 35.0
    p.failed("a", 35.0)  # third: 40 s, capped at 35
    assert p.next_deadline() == 70.0
    assert p.held == {} and p.pending == set()


def test_refused_reservation_tries_another_candidate_at_once():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1)
    p.add_candidate("a", "g1")
    p.add_candidate("b", "g1")
    assert reserves(p.actions(0.0)) == ["a"]
    p.failed("a", 0.5)
    assert reserves(p.actions(0.5)) == ["b"]


def test_disabled_or_zero_target_never_reserves():
    for p in (AutoRelayPolicy(target=2, enabled=False), AutoRelayPolicy(target=0)):
        p.add_candidate("a", "g")
        assert p.actions(0.0) == [] and p.next_deadline() is None


def test_random_operations_keep_the_invariants():
    rng = random.Random(7)
    p: AutoRelayPolicy[int] = AutoRelayPolicy(target=2, backoff_base=1.0, backoff_cap=8.0)
    now = 0.0
    for _ in range(5000):
        now += rng.random() * 5
        op = rng.randrange(7)
        relay = rng.randrange(8)
        if op == 0:
            p.add_candidate(relay, f"g{relay % 3}")
        elif op == 1:
            p.remove_candidate(relay, now)
        elif op == 2:
            p.set_public(rng.random() < 0.3)
        elif op == 3 and p.pending:
            k = rng.choice(sorted(p.pending))
            p.reserved(k, now + rng.choice([10.0, 60.0, 3600.0]), (f"/c/{k}",), now)
        elif op == 4 and p.pending:
            p.failed(rng.choice(sorted(p.pending)), now)
        else:
            p.actions(now)
        p.check()
        assert len(p._backoff) <= 8


def test_relay_config_section_defaults_to_go_libp2p_limits_and_names_bad_fields():
    import pytest

    from prozchain_discovery.config import ConfigError, config_from_dict

    relay = config_from_dict({}).relay
    assert (relay.serve, relay.autorelay, relay.reservations) == ("auto", True, 2)
    assert (relay.reservation_ttl, relay.max_reservations, relay.max_reservations_per_ip) == (3600, 128, 8)
    assert (relay.max_circuits_per_peer, relay.circuit_duration, relay.circuit_data) == (16, 120, 128 * 1024)
    assert config_from_dict({"relay": {"serve": "on", "reservations": 3}}).relay.reservations == 3
    with pytest.raises(ConfigError) as bad:
        config_from_dict({"relay": {"serve": "yes"}})
    assert bad.value.field == "relay.serve"
    with pytest.raises(ConfigError) as bad:
        config_from_dict({"relay": {"circuit_data": 0}})
    assert bad.value.field == "relay.circuit_data"


def test_status_text_shows_relays_and_circuit_addresses():
    from prozchain_discovery.cli.status import status_lines

    st = {"peer_id": "me", "network_id": "n", "phase": "done", "uptime": 1, "connected": 1, "outbound": 1,
          "min_peers": 1, "by_source": {}, "peerdb": {}, "peers": [],
          "autorelay": {"relays": [{"peer_id": "R", "expires_in": 3500.0}],
                        "circuit_addrs": ["/ip4/192.0.2.10/tcp/4001/p2p/R/p2p-circuit"]},
          "relay_server": {"serving": False}}
    text = "\n".join(status_lines(st))
    assert "via relay  R" in text and "circuit    /ip4/192.0.2.10/tcp/4001/p2p/R/p2p-circuit" in text


# ---- after the happy path: outages and late answers ---------------------------------------------
def test_a_relay_that_lets_its_reservation_expire_backs_off_and_another_takes_its_place():
    """A relay gone silent (its connection died without a close): the renewal is never answered,
    the reservation expires. Counting that as a failure keeps us from asking the same silent
    relay again at once while a working one waits."""
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0)
    p.add_candidate("silent", "g")
    p.add_candidate("good", "g")
    assert reserves(p.actions(0.0)) == ["silent"]
    grant(p, "silent", 0.0, ttl=100.0)
    assert p.actions(80.0) == [Reserve("silent", renewal=True)]  # never answered
    acts = p.actions(100.0)
    assert Release("silent", "expired") in acts
    assert reserves(acts) == ["good"] and p.in_backoff("silent", 100.0)
    assert p.circuit_addrs() == ()
    p.check()
    assert p.in_backoff("silent", 109.0) and not p.in_backoff("silent", 110.0)
    assert p.failed("silent", 101.0) == []  # the renewal's time-out, later: nothing held to release
    p.check()


def test_a_renewal_answered_after_its_reservation_expired_does_not_exceed_the_target():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0)
    p.add_candidate("slow", "g")
    p.add_candidate("other", "g")
    p.actions(0.0)
    grant(p, "slow", 0.0, ttl=100.0)
    p.actions(80.0)  # renewal sent
    assert reserves(p.actions(100.0)) == ["other"]  # expired first; "other" takes the place
    grant(p, "slow", 101.0)  # the renewal's answer, too late
    p.check()
    assert list(p.held) == [] and p.pending == {"other"} and p.in_backoff("slow", 101.0)
    grant(p, "other", 102.0)
    assert list(p.held) == ["other"]
    p.check()


def test_a_late_answer_from_a_relay_that_went_away_keeps_its_backoff():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0)
    p.add_candidate("a", "g")
    p.actions(0.0)
    grant(p, "a", 0.0, ttl=100.0)
    assert p.actions(80.0) == [Reserve("a", renewal=True)]
    assert p.remove_candidate("a", 81.0) == [Release("a", "disconnected")]
    grant(p, "a", 82.0, ttl=100.0)  # the renewal's answer was already on its way
    assert p.held == {}
    p.add_candidate("a", "g")  # it reconnects at once: still in backoff from the disconnect
    assert p.actions(83.0) == [] and p.next_deadline() == 91.0
    assert reserves(p.actions(91.0)) == ["a"]
    p.check()


def test_a_refused_renewal_releases_the_relay_and_it_is_asked_again_after_backoff():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=1, backoff_base=10.0)
    p.add_candidate("a", "g")
    p.actions(0.0)
    grant(p, "a", 0.0, ttl=100.0)
    p.actions(80.0)
    assert p.failed("a", 81.0) == [Release("a", "renewal failed")]  # RESERVATION_REFUSED
    assert p.circuit_addrs() == () and p.actions(85.0) == [] and p.next_deadline() == 91.0
    assert reserves(p.actions(91.0)) == ["a"]
    grant(p, "a", 92.0)
    assert p.circuit_addrs() and not p.in_backoff("a", 92.0)
    p.check()


def test_every_relay_gone_then_one_back_and_public_then_private_again():
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=2, backoff_base=1.0)
    for k in ("a", "b"):
        p.add_candidate(k, k)
    p.actions(0.0)
    grant(p, "a", 0.0)
    grant(p, "b", 0.0)
    p.remove_candidate("a", 1.0)
    p.remove_candidate("b", 1.0)
    assert p.circuit_addrs() == () and p.actions(1.0) == [] and p.next_deadline() is None
    p.add_candidate("a", "a")  # the same peer id reconnects
    assert p.next_deadline() == 2.0 and reserves(p.actions(2.0)) == ["a"]
    grant(p, "a", 2.0)
    assert [r.relay for r in p.set_public(True)] == ["a"] and p.actions(3.0) == []
    p.set_public(False)
    assert reserves(p.actions(4.0)) == ["a"]  # no stale "public" left behind
    p.check()


def test_random_operations_with_renewals_and_late_answers_keep_the_invariants():
    """As above, but answers also come for renewals and for requests already dropped (expired,
    disconnected, public meanwhile), in any order: the outages of a real network."""
    rng = random.Random(11)
    p: AutoRelayPolicy[int] = AutoRelayPolicy(target=2, backoff_base=1.0, backoff_cap=8.0)
    asked: list[int] = []  # every request ever sent, answered or not
    now = 0.0
    for _ in range(20_000):
        now += rng.random() * 3
        op = rng.randrange(8)
        relay = rng.randrange(6)
        if op == 0:
            p.add_candidate(relay, f"g{relay % 2}")
        elif op == 1:
            p.remove_candidate(relay, now)
        elif op == 2:
            p.set_public(rng.random() < 0.2)
        elif op in (3, 4) and asked:
            k = asked.pop(rng.randrange(len(asked)))
            if op == 3:
                p.reserved(k, now + rng.choice([4.0, 20.0, 3600.0]), (f"/c/{k}",), now)
            else:
                p.failed(k, now)
        else:
            asked += [a.relay for a in p.actions(now) if isinstance(a, Reserve)]
            del asked[:-16]
        p.check()
        assert len(p._backoff) <= 6
