"""A settled node sleeps: wake-ups of its timer-driven tasks over a simulated idle hour (issue #15).

Before: status.json was built, encoded and written every 5 s (721 steps an hour) and AutoNAT
looked for servers every 5 s (720), whatever happened; together about 15 % of a settled node
process's idle CPU. Counted in trio task steps on MockClock, so machine speed does not matter.
"""

from __future__ import annotations

import json

import trio

from prozchain_discovery.config import BootstrapConfig, DiscoveryConfig, PeerDbSettings
from prozchain_discovery.service import DiscoveryService
from prozchain_discovery.status import SETTLED_WRITE_EVERY, WRITE_EVERY, StatusSchedule, state_of
from tests.conftest import identity
from tests.fakehost import FakeHost
from tests.test_components_clock import _addr, _TaskSteps

HOUR = 3600.0


def _drive(s: StatusSchedule, until: float, state=lambda now: {}) -> list[float]:
    """Run the schedule as StatusWriter.run does; the times the file was written."""
    writes = []
    while (now := s.next_deadline()) <= until:
        _log, write = s.on_timer(now)
        if write:
            s.written(state_of(state(now)), now)
            writes.append(now)
    return writes


def _settled(now: float) -> dict:  # only the parts that change by themselves change
    return {"connected": 8, "peers": [{"peer_id": "a", "for": now}], "uptime": now, "metrics": {"x": now}}


def test_status_file_slows_down_once_the_state_stays_the_same():
    s = StatusSchedule(30.0, now=0.0)
    writes = _drive(s, HOUR, _settled)
    assert writes[:2] == [WRITE_EVERY, 2 * WRITE_EVERY]  # a new state, then the same one
    assert all(b - a <= SETTLED_WRITE_EVERY for a, b in zip(writes, writes[1:], strict=False))
    assert len(writes) <= HOUR / SETTLED_WRITE_EVERY + 3  # was 720: every 5 s
    # A change brings the 5 s cadence back at once.
    s.written(state_of(_settled(HOUR) | {"connected": 7}), HOUR)
    assert s.next_deadline() == HOUR + WRITE_EVERY


def test_a_short_status_interval_keeps_its_cadence_and_no_file_means_no_writes():
    fresh = _drive(StatusSchedule(0.5, now=0.0), 60.0, _settled)
    assert len(fresh) == 120  # tools that poll the file asked for it fresh
    assert _drive(StatusSchedule(0.0, now=0.0, file=False), HOUR) == []
    logs_only = StatusSchedule(30.0, now=0.0, file=False)
    assert logs_only.next_deadline() == 30.0 and logs_only.on_timer(30.0) == (True, False)


async def test_a_settled_node_wakes_its_timers_rarely(autojump_clock, tmp_path):
    _, boot_id = identity(23)
    c = DiscoveryConfig(network_id="t", listen=("/ip4/127.0.0.1/tcp/0",), status_interval=30.0,
                        bootstrap=BootstrapConfig(bootstrap_nodes=(_addr(boot_id),), min_peers_for_startup=1),
                        peerdb=PeerDbSettings(path=":memory:"))
    host = FakeHost(reachable=lambda pid, now: True)
    async with DiscoveryService(host, c, data_dir=tmp_path).run() as svc:
        await trio.sleep(120.0)  # start-up done
        assert svc.connected
        counter = _TaskSteps()
        trio.lowlevel.add_instrument(counter)
        await trio.sleep(HOUR)
        trio.lowlevel.remove_instrument(counter)
        st = json.loads((tmp_path / "status.json").read_text())
        assert st["uptime"] >= 120.0 + HOUR - SETTLED_WRITE_EVERY - 1  # still written, at most 30 s old
    steps = counter.steps
    assert steps["StatusWriter.run"] <= HOUR / SETTLED_WRITE_EVERY + 5, steps.most_common(8)  # was 721
    assert steps["AutonatService.run"] <= HOUR / 60.0 + 5, steps.most_common(8)  # was 720
    assert steps["Cascade.run"] <= HOUR / 60.0 + 5, steps.most_common(8)  # was 720 (every 5 s)


def test_full_outbound_slots_are_looked_at_once_a_minute_not_every_second():
    import random

    from prozchain_discovery.outbound.policy import SLOT_CHECK, SLOT_IDLE_CHECK, OutboundPolicy

    p = OutboundPolicy(8, 120.0, random.Random(1), 0.0)
    assert p.slots_to_fill(5, 0.0) == 3 and p.next_slot_check == SLOT_CHECK
    assert p.slots_to_fill(8, 1.0) == 0 and p.next_slot_check == 1.0 + SLOT_IDLE_CHECK
