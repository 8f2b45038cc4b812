"""The DNS-seed core (dnsseed/) without DNS: build and walk a signed tree in memory.

Counts what the network will cost — rounds of parallel queries and queries to get 8 verified
peers, queries to sync the whole tree, queries to re-sync after one record changed — and the
CPU time of the core itself (building, hashing, signature checks). The DNS benchmark of #17
(dnsmasq, 0 and 25 ms resolver delay) adds the network to these counts.

Run: .venv/bin/python bench/bench_dnsseed_core.py [--leaves 10000] [--walks 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from multiaddr import Multiaddr  # noqa: E402

from prozchain_discovery.dnsseed.sync import SeedSync, SyncLimits, walk_zone  # noqa: E402
from prozchain_discovery.dnsseed.tree import build_tree  # noqa: E402
from prozchain_discovery.records import sign_record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leaves", type=int, default=10_000)
    ap.add_argument("--walks", type=int, default=50)
    args = ap.parse_args()
    envs = []
    for i in range(args.leaves):
        pair = create_new_key_pair(i.to_bytes(32, "big") if i else b"\x01" * 32)
        pid = ID.from_pubkey(pair.public_key)
        addr = Multiaddr(f"/ip4/10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/tcp/4001")
        envs.append(sign_record(pid, [addr], pair.private_key, seq=1))
    operator = create_new_key_pair(b"\x07" * 32)
    t0 = time.perf_counter()
    tree = build_tree(envs, operator.private_key, "seed.example.org", 1)
    t_build = time.perf_counter() - t0
    zone_bytes = sum(len(n) + sum(map(len, v)) for n, v in tree.zone.items())
    print(f"tree: {len(tree.leaves)} leaves, {len(tree.zone)} TXT records, depth {tree.depth}, "
          f"fanout {tree.fanout}, {zone_bytes / 1e6:.2f} MB of names+text; build {t_build:.2f} s")
    rounds, queries, cpu = [], [], []
    for seed in range(args.walks):
        sync = SeedSync(tree.url, rng=random.Random(seed))
        t0 = time.perf_counter()
        rounds.append(walk_zone(sync, tree.zone, target=8, full=False))
        cpu.append(time.perf_counter() - t0)
        queries.append(sync.queries)
        assert sync.leaves_verified >= 8
    print(f"8 verified peers: rounds max {max(rounds)} (depth + 1 = {tree.depth + 1}), queries median "
          f"{statistics.median(queries)} max {max(queries)}, core CPU median {statistics.median(cpu) * 1e3:.1f} ms")
    sync = SeedSync(tree.url, rng=random.Random(0), limits=SyncLimits(max_leaves=max(16_384, args.leaves)))
    t0 = time.perf_counter()
    r = walk_zone(sync, tree.zone, target=0, full=True)
    t_full = time.perf_counter() - t0
    assert sync.complete and len(sync.tree_leaves()) == args.leaves
    print(f"full sync: {sync.queries} queries in {r} rounds of <= 32, {sync.bytes / 1e6:.2f} MB of TXT text, "
          f"core CPU {t_full:.2f} s")
    changed = envs[:-1] + [sign_record(*_ident(args.leaves - 1), seq=2)]
    new = build_tree(changed, operator.private_key, "seed.example.org", 2)
    t0 = time.perf_counter()
    r = walk_zone(sync, new.zone, target=0, full=True)
    print(f"re-sync, one peer's record changed: {sync.queries} queries in {r} rounds, core CPU "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
    fewer = build_tree(changed[1:], operator.private_key, "seed.example.org", 3)
    t0 = time.perf_counter()
    r = walk_zone(sync, fewer.zone, target=0, full=True)
    print(f"re-sync, one peer removed: {sync.queries} queries in {r} rounds, core CPU "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms")


def _ident(i: int) -> tuple[ID, list[Multiaddr], object]:
    pair = create_new_key_pair(i.to_bytes(32, "big") if i else b"\x01" * 32)
    return ID.from_pubkey(pair.public_key), [Multiaddr("/ip4/10.9.9.9/tcp/4001")], pair.private_key


if __name__ == "__main__":
    main()
