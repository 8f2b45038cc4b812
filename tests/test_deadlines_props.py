"""Every sans-IO core's timer contract, under random operation sequences with a rising clock.

The components sleep until a core's ``next_deadline()`` and then call its ``on_timer(now)`` (or
the step that does the timed work). If that step leaves a deadline at or before ``now``, the
component wakes at once, does nothing, and wakes again: a spin at full CPU (the hole-punch
loop's bug, tests/test_holepunch_unit.py). So, for each core, after its timed step at ``now``:

* ``next_deadline()`` is ``None`` or later than ``now``; and
* its tables stay within their documented bounds.

Times start at a large offset too (trio's real clock does), where ``a + b`` and ``c - a``
round differently: a core must compare a deadline the same way it computes it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from aioice.stun import Class, Message, Method, parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from prozchain_discovery.addresses.observed import ObservedAddrs
from prozchain_discovery.backoff import DialBackoff
from prozchain_discovery.bans import BanList
from prozchain_discovery.bootstrap.schedule import CascadeSchedule
from prozchain_discovery.config import BackoffConfig, PexConfig
from prozchain_discovery.dialer.congestion import DialWindow
from prozchain_discovery.dialer.race import DialRace
from prozchain_discovery.expiring import ExpiringMap
from prozchain_discovery.nat.classify import NatClassifier
from prozchain_discovery.nat.natpmp import NatPmpClient, Protocol
from prozchain_discovery.nat.pcp import PcpClient
from prozchain_discovery.nat.stun import RECENT_IDS, StunClient
from prozchain_discovery.outbound.policy import OutboundPolicy
from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerTableParams
from prozchain_discovery.peerdb.store import FlushSchedule
from prozchain_discovery.pex.policy import PeerExchange
from prozchain_discovery.relay.policy import AutoRelayPolicy, Reserve
from prozchain_discovery.wire.messages import PexResponse, PexStatus
from tests.conftest import identity

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A start time: 0, or where trio's real clock starts (a random offset of 10^4..10^6 s).
start = st.one_of(st.just(0.0), st.floats(1e4, 1e6, allow_nan=False, allow_infinity=False))
# A clock step: often tiny (the next event at once), sometimes long.
step = st.one_of(
    st.just(0.0),
    st.floats(0.0, 1.0, allow_nan=False),
    st.floats(0.0, 5000.0, allow_nan=False),
)


def later(deadline: float | None, now: float) -> bool:
    return deadline is None or deadline > now


# ---- expiring.py / bans.py -----------------------------------------------------------------


@FAST
@given(start, st.lists(st.tuples(st.sampled_from("ppptx"), st.integers(0, 30), step, step), max_size=150))
def test_expiring_map(t0, ops):
    m: ExpiringMap[int, int] = ExpiringMap(10.0, 8)
    now = t0
    for kind, key, dt, ttl in ops:
        now += dt
        if kind == "p":
            m.put(key, key, now, ttl)
        elif kind == "t":
            m.put_until(key, key, now + ttl)
        elif kind == "x":
            m.pop(key)
        m.on_timer(now)
        assert later(m.next_deadline(), now)
        assert len(m) <= 8 and m.timer_rows <= 2 * len(m) + 64


@FAST
@given(start, st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5), st.booleans(), step), max_size=150))
def test_ban_list(t0, ops):
    bans = BanList(base=1.0, cap=16.0, max_entries=16, ip_window=5.0)
    now = t0
    for peer, ip, ban, dt in ops:
        now += dt
        if ban:
            bans.ban(bytes([peer]), f"10.0.0.{ip}" if ip else None, now, "x")
        bans.on_timer(now)
        assert later(bans.next_deadline(), now)
        snap = bans.snapshot(now)
        assert snap["remembered"] <= 16 and snap["remembered_ips"] <= 16
        assert snap["timer_rows"] <= 2 * (16 + 64) + 2 * 16


# ---- backoff.py (no timer: the dialer asks allowed / wait_time) ------------------------------


@FAST
@given(start, st.lists(st.tuples(st.sampled_from("afsk"), st.integers(0, 30), step), max_size=150))
def test_dial_backoff_is_bounded_and_wait_time_agrees_with_allowed(t0, ops):
    b = DialBackoff(BackoffConfig(), rng=random.Random(1), max_entries=8)
    now = t0
    kept: set[int] = set()
    for kind, key, dt in ops:
        now += dt
        if kind == "a":
            b.record_attempt(key, now)
        elif kind == "f":
            b.record_failure(key, now)
        elif kind == "s":
            b.record_success(key, now)
        elif key % 5 == 0:
            b.keep_trying(key)
            kept.add(key)
        assert len(b) <= 8 + len(kept)
        wait = b.wait_time(key, now)
        if wait != float("inf"):  # a key that may wait 0 may go; one waiting w may go after w
            assert b.allowed(key, now) == (wait == 0.0)
            assert b.allowed(key, max(now, b.state(key).retry_at if b.state(key) else now))


# ---- dialer/race.py --------------------------------------------------------------------------


@FAST
@given(
    start,
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(1, 4)),
    st.floats(0.05, 2.0),
    st.lists(st.tuples(st.sampled_from("sset"), step), max_size=80),
)
def test_dial_race_wakes_only_when_a_dial_turns_late(t0, limit, until, delay, ops):
    race = DialRace(limit, until, delay)
    now = t0
    for kind, dt in ops:
        if kind == "t":  # the dialer slept until the deadline
            deadline = race.next_deadline(now)
            if deadline is None:
                continue
            assert deadline > now
            late_before = sum(1 for t in race.in_flight.values() if t + delay <= now)
            now = deadline
            late_after = sum(1 for t in race.in_flight.values() if t + delay <= now)
            assert late_after > late_before, "woke for a dial that is not late yet"
            continue
        now += dt
        if kind == "s" and race.may_start(now, 0):
            race.start(now, 0)
        elif kind == "e" and race.in_flight:
            race.end(next(iter(race.in_flight)))
        assert later(race.next_deadline(now), now)
        assert len(race.in_flight) <= limit


# ---- dialer/congestion.py (no timer: the dialer measures loop lag around each dial) ----------


@FAST
@given(start, st.lists(st.tuples(st.sampled_from(["lag", "timeout", "start", "end"]),
                                 st.floats(0, 1), step), max_size=200))
def test_dial_window_stays_within_floor_and_limit_under_any_signals(t0, ops):
    w = DialWindow(16)
    now = t0
    for kind, lag, dt in ops:
        now += dt
        if kind == "lag":
            w.on_lag(lag, now)
        elif kind == "timeout":
            w.on_timeout(now, lag)
        elif kind == "start" and w.may_start():
            w.start()
        elif kind == "end":
            w.end()
        w.check()
        assert w.in_flight <= 16


# ---- bootstrap/schedule.py, outbound/policy.py ------------------------------------------------


@FAST
@given(start, st.floats(0.1, 100.0), st.lists(st.tuples(st.booleans(), st.booleans(), step), max_size=80))
def test_cascade_schedule(t0, interval, ops):
    s = CascadeSchedule(interval, t0)
    now = t0
    for kick, short, dt in ops:
        now = max(now + dt, now) if kick else max(now, s.next_deadline())
        if kick:
            s.kick(now)
        if s.due(now):
            s.on_pass_done(now, short)
        assert s.next_deadline() > now


@FAST
@given(start, st.floats(0.1, 300.0), st.integers(0, 2**32), st.lists(st.tuples(st.booleans(), step), max_size=80))
def test_outbound_policy(t0, feeler, seed, ops):
    p = OutboundPolicy(8, feeler, random.Random(seed), t0)
    now = t0
    for woken, dt in ops:  # the manager's loop: woken by PeersNeeded, or at the deadline
        now = now + dt if woken else max(now, p.next_deadline())
        p.slots_to_fill(3, now)
        p.feeler_due(now)
        assert p.next_deadline() > now


# ---- pex/policy.py ---------------------------------------------------------------------------

OK = PexStatus.Value("OK")
RATE_LIMITED = PexStatus.Value("RATE_LIMITED")


@FAST
@given(
    start,
    st.one_of(st.sampled_from([0.5, 1.0, 60.0]), st.floats(0.01, 100.0)),
    st.lists(st.tuples(st.sampled_from("cdwr"), st.integers(0, 5), st.sampled_from("oolf"), step), max_size=80),
)
def test_pex_loop_sleeps_when_nothing_is_due(t0, interval, ops):
    """pex/service.py's loop: fetch round (only while connected), due requests, on_timer, sleep."""
    pex = PeerExchange(PexConfig(exchange_interval=interval, first_request_delay=0.5), "net")
    pex.start_fetching(t0)
    peers: dict[int, float] = {}
    now = t0
    for kind, who, answer, dt in ops:
        if kind == "c":
            now += dt
            peers.setdefault(who, now)
        elif kind == "d":
            now += dt
            peers.pop(who, None)
        else:  # woken: at the deadline, or by an event
            deadline = pex.next_deadline([(identity(p)[1], s) for p, s in peers.items()], now)
            now = now + dt if kind == "w" or deadline is None else max(now, deadline)
        outbound = [(identity(p)[1], s) for p, s in peers.items()]
        if peers:
            pex.fetch_due(now)
        for pid in pex.due(outbound, now):
            pex.make_request(pid, now)
            if answer == "o":
                pex.read_response(pid, PexResponse(OK), now)
            elif answer == "l":
                pex.read_response(pid, PexResponse(RATE_LIMITED, retry_after_ms=int(dt * 1000)), now)
            # "f": the request failed; make_request already counted it
        pex.on_timer(now)
        assert later(pex.next_deadline(outbound, now), now)
        assert len(pex._retry_at) <= 6 and len(pex._last_exchange) <= 6


# ---- addresses/observed.py -------------------------------------------------------------------


@FAST
@given(start, st.lists(st.tuples(st.integers(0, 80), st.integers(0, 40), step), max_size=120))
def test_observed_addrs(t0, ops):
    obs = ObservedAddrs(ttl=7.3, max_addrs=8, max_observers=4)
    now = t0
    for addr, reporter, dt in ops:
        now += dt
        if addr % 3:
            obs.add(Multiaddr(f"/ip4/198.51.100.{addr}/tcp/4001"), bytes([reporter]), now)
        else:  # local.py's loop: woken at the deadline
            now = max(now, obs.next_deadline() or now)
        obs.on_timer(now)
        assert later(obs.next_deadline(), now)
        assert len(obs._reports) <= 8 and all(len(v) <= 4 for v in obs._reports.values())


# ---- peerdb: expiry, collisions and the flush schedule ---------------------------------------

SMALL = PeerTableParams(new_buckets=8, tried_buckets=2, bucket_size=2, new_buckets_per_source_group=2,
                        tried_buckets_per_group=2, max_addrs_per_peer=2)


@FAST
@given(st.lists(st.tuples(st.sampled_from("aasfx"), st.integers(0, 30), st.floats(0, 3 * 86400.0)), max_size=80))
def test_peerdb_timers(ops):
    db = PeerDatabase(SMALL, key=b"k" * 32, rng=random.Random(0))
    now = 0.0
    for kind, peer, dt in ops:
        now += dt
        pid = identity(peer)[1]
        if kind == "a":
            db.add_addrs(pid, [Multiaddr(f"/ip4/{peer + 1}.{peer}.0.1/tcp/1")], PeerSource.PEX, now,
                         source_addr=Multiaddr("/ip4/20.0.0.1/tcp/1"))
        elif kind == "s":
            db.mark_success(pid, now)
        elif kind == "f":
            db.mark_attempt(pid, now)
            db.mark_failure(pid, now)
        db.expire(now)
        assert not any(db.is_terrible(e, now) for e in db.entries())
        # Collisions older than the test window are settled by the next resolve_collisions.
        db.resolve_collisions(now + db.config.test_window + 1)
        assert len(db.pending_collisions()) <= len(db)
        db.check()


@FAST
@given(start, st.floats(0.1, 60.0), st.lists(st.tuples(st.booleans(), step), max_size=60))
def test_flush_schedule(t0, interval, ops):
    f = FlushSchedule(interval, t0)
    now = t0
    for ok, dt in ops:
        now = max(now + dt, f.next_deadline())
        if ok:
            f.on_success(now)
        else:
            f.on_failure(now, "disk full")
        assert f.next_deadline() > now


# ---- nat/stun.py (StunClient) and nat/classify.py --------------------------------------------


def counter_bytes() -> Callable[[int], bytes]:
    n = iter(range(1, 1 << 30))
    return lambda k: next(n).to_bytes(k, "big")


def stun_answer(request: bytes, server: tuple[str, int]) -> bytes:
    req = parse_message(request)
    attrs = {"XOR-MAPPED-ADDRESS": ("203.0.113.5", 40000), "RESPONSE-ORIGIN": server}
    return bytes(Message(Method.BINDING, Class.RESPONSE, transaction_id=req.transaction_id, attributes=attrs))


@FAST
@given(
    start,
    st.lists(
        st.tuples(st.sampled_from("bbarcwt"), st.integers(0, 20), st.floats(0.01, 5.0), step), max_size=100
    ),
)
def test_stun_client(t0, ops):
    c = StunClient(rto=0.1, max_sends=4, final_wait=4.0, max_transactions=6, urandom=counter_bytes())
    sent: list[tuple[bytes, tuple[str, int]]] = []
    tids: list[bytes] = []
    now = t0
    for kind, i, x, dt in ops:
        if kind == "w":  # stun_io's loop: woken at the deadline
            now = max(now, c.next_deadline() or now)
        else:
            now += dt
        if kind == "b" and len(c._pending) < 6:
            tids.append(c.send_binding(("198.51.100.1", 3478 + i % 2), now, timeout=x if i % 3 == 0 else None))
        elif kind == "a" and sent:
            data, server = sent[i % len(sent)]
            c.receive_datagram(stun_answer(data, server), server, now)
        elif kind == "r" and tids:
            c.reschedule(tids[i % len(tids)], rto=x / 10, timeout=x)
        elif kind == "c" and tids:
            c.cancel(tids[i % len(tids)])
        c.on_timer(now)
        sent += c.datagrams_to_send(now)
        del sent[:-20]
        c.events()
        tids = [t for t in tids if c.is_pending(t)]
        assert later(c.next_deadline(), now)
        assert len(c._recent) <= RECENT_IDS


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.9), st.floats(0.001, 0.5), start)
def test_nat_classifier_ends_without_a_spin(seed, loss, delay, t0):
    """Servers answer (or not) from random places after a random delay; the classifier must
    finish, and every step must leave its deadline in the future."""
    rng = random.Random(seed)
    servers = [("198.51.100.1", 3478), ("198.51.100.2", 3479), ("192.0.2.7", 3478)]
    clf = NatClassifier(servers, ("10.0.0.2", 5000), rto=0.1, max_sends=3, final_wait=4.0,
                        urandom=counter_bytes())
    now = t0
    clf.start(now)
    inflight: list[tuple[float, bytes, tuple[str, int]]] = []
    for _ in range(10_000):
        for data, dst in clf.datagrams_to_send(now):
            if rng.random() >= loss:
                req = parse_message(data)
                origin = rng.choice([dst, *servers, (dst[0], dst[1] + 1)])
                attrs: dict[str, object] = {"XOR-MAPPED-ADDRESS": rng.choice([("203.0.113.5", 40000),
                                                                               ("203.0.113.5", 40001)]),
                                            "RESPONSE-ORIGIN": origin}
                if rng.random() < 0.7:
                    attrs["OTHER-ADDRESS"] = rng.choice([("198.51.100.9", 3479), servers[1], dst])
                msg = Message(Method.BINDING, rng.choice([Class.RESPONSE, Class.RESPONSE, Class.ERROR]),
                              transaction_id=req.transaction_id, attributes=attrs)
                if msg.message_class == Class.ERROR:
                    msg.attributes = {"ERROR-CODE": (420, "Unknown Attribute")}
                inflight.append((now + rng.uniform(0, delay), bytes(msg), origin))
        if clf.done:
            break
        deadline = clf.next_deadline()
        assert deadline is not None and deadline > now
        inflight.sort(key=lambda r: r[0])
        if inflight and inflight[0][0] < deadline:
            at, data, origin = inflight.pop(0)
            now = max(now, at)
            clf.receive_datagram(data, origin, now)
        else:
            now = deadline
        clf.on_timer(now)
    else:
        raise AssertionError("the classifier never finished")
    assert clf.result() is not None and clf.next_deadline() is None


# ---- nat/natpmp.py, nat/pcp.py ----------------------------------------------------------------


def natpmp_map_answer(port: int) -> bytes:
    return struct.pack("!BBHIHHI", 0, 128 + 2, 0, 1, port, port, 3600)


@FAST
@given(
    start,
    st.booleans(),
    st.lists(st.tuples(st.sampled_from("rrawg"), st.integers(0, 5), step), max_size=80),
)
def test_gateway_requests(t0, pcp, ops):
    c: NatPmpClient | PcpClient
    if pcp:
        c = PcpClient("192.168.1.1", initial_rto=0.25, max_sends=4, client_ip="192.168.1.2", urandom=counter_bytes())
    else:
        c = NatPmpClient("192.168.1.1", initial_rto=0.25, max_sends=4)
    now = t0
    for kind, port, dt in ops:
        now = max(now, c.next_deadline() or now) if kind == "w" else now + dt
        if kind == "r":
            c.request_mapping(Protocol.TCP, 4000 + port, 4000 + port, 3600, now)
        elif kind == "g" and not pcp:
            c.request_external_address(now)  # type: ignore[union-attr]
        elif kind == "a" and not pcp:
            c.receive_datagram(natpmp_map_answer(4000 + port), "192.168.1.1", now)
        c.on_timer(now)
        c.datagrams_to_send()
        c.results()
        assert later(c.next_deadline(), now)
        assert len(c._pending) <= 7


# ---- relay/policy.py -------------------------------------------------------------------------


@FAST
@given(
    start,
    st.integers(1, 3),
    st.lists(st.tuples(st.sampled_from("ccdprfaw"), st.integers(0, 5), st.sampled_from([0.5, 20.0, 3600.0]), step),
             max_size=120),
)
def test_autorelay_policy(t0, target, ops):
    """relay/client.py's loop: actions(now), then sleep until next_deadline()."""
    p: AutoRelayPolicy[int] = AutoRelayPolicy(target=target, backoff_base=1.0, backoff_cap=8.0)
    asked: list[int] = []
    now = t0
    for kind, relay, ttl, dt in ops:
        now = max(now, p.next_deadline() or now) if kind == "w" else now + dt
        if kind == "c":
            p.add_candidate(relay, f"g{relay % 3}")
        elif kind == "d":
            p.remove_candidate(relay, now)
        elif kind == "p":
            p.set_public(relay == 0)
        elif kind in "rf" and asked:
            k = asked.pop(relay % len(asked))
            if kind == "r":
                p.reserved(k, now + ttl, (f"/c/{k}",), now)
            else:
                p.failed(k, now)
        asked += [a.relay for a in p.actions(now) if isinstance(a, Reserve)]
        del asked[:-16]
        p.check()
        assert later(p.next_deadline(), now), (p.held, p.pending, p._backoff, p.candidates)
        assert len(p._backoff) <= 6


def test_autorelay_fills_every_free_slot_in_one_pass():
    """Target 3, two candidates in one group and one in another: all three are asked at once
    (a same-group candidate left over kept its ended backoff as a past deadline)."""
    p: AutoRelayPolicy[str] = AutoRelayPolicy(target=3, backoff_base=1.0)
    for relay, group in [("a1", "g1"), ("a2", "g1"), ("b", "g2")]:
        p.add_candidate(relay, group)
    p.failed("a2", 0.0)  # backs off until 1.0
    assert sorted(a.relay for a in p.actions(5.0) if isinstance(a, Reserve)) == ["a1", "a2", "b"]
    assert p.next_deadline() is None


# ---- the cases the properties found, spelled out --------------------------------------------


def test_a_dial_is_late_at_its_own_deadline_on_a_large_clock():
    race = DialRace(2, 1, 1.01706448936463)
    race.start(10000.0, 0)
    deadline = race.next_deadline(10000.0)
    assert deadline is not None and race.may_start(deadline, 0)  # the backup starts


def test_an_observed_address_expires_at_its_deadline():
    obs = ObservedAddrs(ttl=7.3)
    obs.add(Multiaddr("/ip4/198.51.100.1/tcp/4001"), b"r", 505.0)
    deadline = obs.next_deadline()
    assert deadline is not None
    obs.on_timer(deadline)
    assert obs.next_deadline() is None


def test_an_isolated_node_has_no_fetch_deadline_after_the_timer():
    pex = PeerExchange(PexConfig(first_request_delay=0.5), "net")
    pex.start_fetching(0.0)
    assert pex.next_deadline([], 0.0) == 0.5
    pex.on_timer(1.0)  # no connection: the service did not ask fetch_due
    assert pex.next_deadline([], 1.0) is None
    assert pex.fetch_due(2.0)  # still due once a peer connects


def test_a_pex_peer_is_due_at_its_deadline_on_any_clock():
    pex = PeerExchange(PexConfig(exchange_interval=0.5, first_request_delay=0.5), "net")
    peer = [(identity(1)[1], 0.99999)]
    deadline = pex.next_deadline(peer, 1.0)
    assert deadline is not None and pex.due(peer, deadline) == [peer[0][0]]


def test_a_stun_transaction_past_its_timeout_ends_instead_of_retransmitting():
    c = StunClient(rto=0.1, urandom=counter_bytes())
    c.send_binding(("198.51.100.1", 3478), 0.0, timeout=1.0)
    c.datagrams_to_send(0.0)
    c.on_timer(1.0)  # late: past both the retransmission (0.1) and the timeout (1.0)
    assert c.datagrams_to_send(1.0) == [] and c.next_deadline() is None
    assert [type(e).__name__ for e in c.events()] == ["BindingTimeout"]
