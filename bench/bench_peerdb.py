"""The peer database at addrman scale (80,000 entries).

Reports: adds per second (unsigned addresses, and verified signed records), the
``get_peers_for_sharing(1000)`` and ``select_for_dial()`` latencies, bytes per entry in RSS,
and sqlite: full save, load at start-up, incremental write throughput.

Run: .venv/bin/python bench/bench_peerdb.py [--entries 80000]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from multiaddr import Multiaddr  # noqa: E402

from prozchain_discovery.addrs import AddrScope  # noqa: E402
from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerStore  # noqa: E402
from prozchain_discovery.records import sign_record, verify_record  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def inputs(n: int, rng: random.Random) -> list[tuple[ID, Multiaddr, Multiaddr]]:
    out = []
    for _ in range(n):
        pid = ID(b"\x00\x24\x08\x01\x12\x20" + rng.getrandbits(256).to_bytes(32, "big"))
        ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        src = Multiaddr(f"/ip4/{rng.randint(1, 223)}.{rng.randint(0, 255)}.1.1/tcp/4001")
        out.append((pid, Multiaddr(f"/ip4/{ip}/tcp/4001"), src))
    return out


def ms(xs: list[float]) -> str:
    s = sorted(xs)
    return f"{statistics.median(s) * 1000:.3f} ms median, {s[int(0.99 * (len(s) - 1))] * 1000:.3f} ms p99"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=80_000)
    ap.add_argument("--signed", type=int, default=5_000, help="signed records for the add_record rate")
    args = ap.parse_args()
    rng = random.Random(1)
    # More inputs than slots: collisions refuse some adds, as in addrman.
    # Slots are hashed: filling 80,000 of 81,920 takes several adds per slot.
    data = inputs(int(args.entries * 3), rng)
    gc.collect()
    base = rss_bytes()
    db = PeerDatabase(rng=random.Random(2))
    table_bytes = rss_bytes() - base  # the fixed slot arrays
    t = time.perf_counter()
    attempted = 0
    tried_room = db.config.tried_buckets * db.config.bucket_size
    for pid, addr, src in data:
        if len(db) >= args.entries:
            break
        if db.add_addrs(pid, [addr], PeerSource.PEX, 0.0, source_addr=src) and attempted % 3 == 0 \
                and db.tried_count < 0.8 * tried_room:
            db.mark_success(pid, 0.0)  # a running node's book is part tried, part new
        attempted += 1
    add_s = time.perf_counter() - t
    db.take_changes()  # a running node flushes these every few seconds
    gc.collect()
    per_entry = (rss_bytes() - base - table_bytes) / len(db)
    db.check()
    print(f"entries {len(db)} (new {db.new_count}, tried {db.tried_count}) from {attempted} adds")

    # Signed records: verification + add (what a PEX answer costs per record).
    keys = [create_new_key_pair() for _ in range(args.signed)]
    blobs = [sign_record(ID.from_pubkey(k.public_key), [Multiaddr(f"/ip4/{1 + i % 200}.{i // 200 % 250}.3.4/tcp/4001")],
                         k.private_key) for i, k in enumerate(keys)]
    db2 = PeerDatabase(rng=random.Random(3))
    t = time.perf_counter()
    for b in blobs:
        db2.add_record(verify_record(b), PeerSource.PEX, 0.0, source_addr=Multiaddr("/ip4/9.9.9.9/tcp/1"))
    signed_s = time.perf_counter() - t
    t = time.perf_counter()
    recs = [verify_record(b) for b in blobs]
    verify_s = time.perf_counter() - t
    db3 = PeerDatabase(rng=random.Random(3))
    t = time.perf_counter()
    for r in recs:
        db3.add_record(r, PeerSource.PEX, 0.0, source_addr=Multiaddr("/ip4/9.9.9.9/tcp/1"))
    add_rec_s = time.perf_counter() - t

    # Sharing needs envelopes: give the big book's entries a (shared) envelope to hand out.
    for e in db.entries():
        e.envelope = blobs[0]
    share = []
    for _ in range(200):
        t = time.perf_counter()
        got = db.get_peers_for_sharing(1000, 1000.0, requester=data[0][0], requester_scope=AddrScope.PUBLIC,
                                       min_peer_age=60.0)
        share.append(time.perf_counter() - t)
    assert len(got) == 1000
    sel = []
    groups: set[str] = set()
    for i in range(2000):
        t = time.perf_counter()
        e = db.select_for_dial(1000.0, outbound_groups=groups)
        sel.append(time.perf_counter() - t)
        if e is not None and i % 8 < 7:
            groups.add(e.group)
        if i % 8 == 7:
            groups = set()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peers.sqlite"
        store = PeerStore(path)
        db.dirty = {e.pid for e in db.entries()}  # a first save writes everything
        db.meta_dirty = True
        t = time.perf_counter()
        n_saved = store.save_changes(db)
        save_s = time.perf_counter() - t
        store.close()
        size = path.stat().st_size + (Path(str(path) + "-wal").stat().st_size if Path(str(path) + "-wal").exists() else 0)
        store = PeerStore(path)
        fresh = PeerDatabase(rng=random.Random(4))
        t = time.perf_counter()
        loaded = store.load(fresh)
        load_s = time.perf_counter() - t
        fresh.check()
        # Incremental: 1,000 changed entries per flush, as a busy node's 5 s flush would.
        ents = list(fresh.entries())
        flushes = []
        for k in range(20):
            for e in ents[k * 1000:(k + 1) * 1000]:
                fresh.mark_seen(e.peer_id, 2000.0 + k)
            t = time.perf_counter()
            store.save_changes(fresh)
            flushes.append(time.perf_counter() - t)
        store.close()

    # A full garbage collection with the loaded book on the heap: the loop stalls this long.
    # The node CLI freezes its start-up heap (gc.freeze) so later full collections skip it.
    n_recs, n_blobs = len(recs), len(blobs)
    del ents, data, keys, blobs, recs, db2, db3
    gc_full = []
    for _ in range(3):
        t = time.perf_counter()
        gc.collect()
        gc_full.append(time.perf_counter() - t)
    gc.freeze()
    t = time.perf_counter()
    gc.collect()
    gc_frozen = time.perf_counter() - t
    gc.unfreeze()

    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| adds/s, unsigned (`add_addrs`), to {len(db)} entries | {attempted / add_s:,.0f}/s | >= 50,000/s |")
    print(f"| adds/s, verified signed records (`add_record`, verification excluded) | {n_recs / add_rec_s:,.0f}/s | |")
    print(f"| signed records verified + added | {n_blobs / signed_s:,.0f}/s ({verify_s / n_blobs * 1e6:.0f} us to verify one) | |")
    print(f"| `get_peers_for_sharing(1000)` at {len(db)} | {ms(share)} | <= 5 ms |")
    print(f"| `select_for_dial()` at {len(db)} | {ms(sel)} | |")
    print(f"| RSS per entry (unsigned, one address) | {per_entry:.0f} B (+ {table_bytes / 1e6:.1f} MB of fixed slot tables) | <= 400 B |")
    print(f"| sqlite full save of {n_saved} entries | {save_s:.2f} s ({n_saved / save_s:,.0f} entries/s), file {size / 1e6:.1f} MB | |")
    print(f"| sqlite load at start-up ({loaded} entries) | {load_s:.2f} s | |")
    print(f"| sqlite incremental flush of 1,000 changed entries | {ms(flushes)} ({1000 / statistics.median(flushes):,.0f} entries/s) | |")
    print(f"| full garbage collection, two books of {len(db)} loaded | {statistics.median(gc_full) * 1000:.0f} ms "
          f"(after `gc.freeze()`: {gc_frozen * 1000:.2f} ms) | |")


if __name__ == "__main__":
    main()
