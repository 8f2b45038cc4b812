"""Smoke run of bench/bench_dnsseed.py: a 300-leaf signed tree served by a real dnsmasq, the real
adapter in lock-step (rounds counted whatever the timing): 8 verified peers in depth + 1 rounds,
as the in-memory model says; a full sync and a re-sync ask what the model asks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio

from bench.bench_dnsseed import full_then_resync, lookup, make_trees, model, txt, write_conf
from tests.dnsmasq import dnsmasq

pytestmark = pytest.mark.network

LEAVES = 300
TRIALS = 3


def test_bench_dnsseed_rounds(tmp_path: Path) -> None:
    trees = make_trees(LEAVES)
    m = model(trees, TRIALS)
    d1, d2 = tmp_path / "v1", tmp_path / "v2"
    d1.mkdir()
    d2.mkdir()
    assert write_conf(trees.v1, d1 / "zone.conf") <= 1022  # dnsmasq's line limit
    write_conf(trees.v2, d2 / "zone.conf")
    with dnsmasq(d1, conf_files=[d1 / "zone.conf"]) as p1, dnsmasq(d2, conf_files=[d2 / "zone.conf"]) as p2:

        async def main() -> None:
            goal = trees.v1.depth + 1
            for t in range(TRIALS):
                run = await lookup(trees.v1, txt(p1), t, lockstep=True)
                assert run.leaves == 8
                assert run.rounds == m.lookup_rounds[t] <= goal
                assert run.queries == m.lookup_queries[t]
            full, resync = await full_then_resync(trees, p1, p2, lockstep=True)
            assert full.leaves == LEAVES and full.queries == len(trees.v1.zone) == m.full_queries
            assert full.rounds is not None and full.rounds >= math.ceil(full.queries / 32)  # max_in_flight
            assert resync.leaves == LEAVES
            assert resync.queries == m.resync_queries <= goal  # the root and the changed leaf's path
            assert resync.rounds == m.resync_rounds

        trio.run(main)
