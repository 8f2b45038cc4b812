"""Smoke run of bench/bench_dnsseed.py: a 300-leaf signed tree served by a real dnsmasq, the real
adapter in lock-step (rounds counted whatever the timing): 8 verified peers in depth + 1 rounds,
as the in-memory model says; a full sync and a re-sync ask what the model asks."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import trio

from bench.bench_dnsseed import full_then_resync, lookup, make_trees, model, txt, write_conf
from tests.dnsmasq import dnsmasq

pytestmark = pytest.mark.network

LEAVES = 300
TRIALS = 3
RESYNCS = 2


def test_bench_dnsseed_rounds(tmp_path: Path) -> None:
    trees = make_trees(LEAVES, RESYNCS)
    m = model(trees, TRIALS)
    with contextlib.ExitStack() as stack:
        ports = []
        for t in [trees.v1, *trees.resyncs]:
            d = tmp_path / f"seq{t.root.seq}"
            d.mkdir()
            assert write_conf(t, d / "zone.conf") <= 1022  # dnsmasq's line limit
            ports.append(stack.enter_context(dnsmasq(d, conf_files=[d / "zone.conf"])))

        async def main() -> None:
            goal = trees.v1.depth + 1
            for t in range(TRIALS):
                run = await lookup(trees.v1, txt(ports[0]), t, lockstep=True)
                assert run.leaves == 8
                assert run.rounds == m.lookup_rounds[t] <= goal
                assert run.queries == m.lookup_queries[t]
            full, resyncs = await full_then_resync(trees, ports, lockstep=True)
            assert full.leaves == LEAVES and full.queries == len(trees.v1.zone) == m.full_queries
            assert full.rounds is not None and full.rounds >= math.ceil(full.queries / 32)  # max_in_flight
            for i, resync in enumerate(resyncs):  # each: one record changed, a new seq
                assert resync.leaves == LEAVES
                assert resync.queries == m.resync_queries[i] <= goal  # the root and the changed leaf's path
                assert resync.rounds == m.resync_rounds[i]

        trio.run(main)
