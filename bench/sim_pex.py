"""Convergence at scale: the real sans-IO cores for 1,000 and 10,000 nodes in virtual time.

A discrete-event simulation (a heap of timed events — no wall clock, no sockets) drives, per
node, the project's own ``PeerDatabase``, ``PeerExchange`` policy and ``BootstrapResponder``,
with real signed records (ed25519) verified by the real verifier. What is simulated is only the
network: one-way latency per link (a node sits at a random point of a 2-D "map"; latency
= 5 ms + distance, 5-155 ms), connection set-up (1.5 RTT), PEX round trips (1 RTT), churn
(nodes leaving and fresh nodes joining), inbound slot limits.

Reported per network size:
  * PEX rounds and virtual seconds until a joining node knows >= 1,000 addresses;
  * virtual seconds until every node has its target outbound count;
  * the overlay's connectivity and diameter (BFS);
  * the eclipse share when 10% of nodes are attackers that answer PEX only with each other.

Records are verified once per distinct envelope (identical bytes give an identical answer):
a cache around the verifier, as a node would keep, so 10,000 nodes fit a few minutes of CPU.

Run: .venv/bin/python bench/sim_pex.py --nodes 1000
     .venv/bin/python bench/sim_pex.py --nodes 10000 --minutes 4
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import resource
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from multiaddr import Multiaddr  # noqa: E402

from prozchain_discovery import records as records_mod  # noqa: E402
from prozchain_discovery.addrs import AddrScope  # noqa: E402
from prozchain_discovery.bootstrap.protocol import (  # noqa: E402
    BootstrapResponder,
    read_bootstrap_answer,
)
from prozchain_discovery.config import PexConfig  # noqa: E402
from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerTableParams  # noqa: E402
from prozchain_discovery.pex.policy import PeerExchange  # noqa: E402
from prozchain_discovery.wire.messages import BootstrapRequest, PexRequest  # noqa: E402

NET = "prozchain-sim"


def _install_verify_cache() -> None:
    real = records_mod.verify_record
    cache: dict[bytes, object] = {}

    def cached(data: bytes, **kw):  # type: ignore[no-untyped-def]
        hit = cache.get(data)
        if hit is None:
            try:
                hit = real(data, **{k: v for k, v in kw.items() if k != "local_peer_id"})
            except records_mod.RecordError as exc:
                hit = exc
            cache[data] = hit
        if isinstance(hit, records_mod.RecordError):
            raise hit
        lp = kw.get("local_peer_id")
        if lp is not None and hit.peer_id == lp:  # type: ignore[attr-defined]
            raise records_mod.RecordError(records_mod.RecordRejection.SELF)
        return hit

    records_mod.verify_record = cached  # type: ignore[assignment]


@dataclass
class Node:
    idx: int
    peer_id: ID
    ip: str
    pos: tuple[float, float]
    record: bytes
    db: PeerDatabase
    pex: PeerExchange
    attacker: bool = False
    bootstrap: bool = False
    alive: bool = False
    joined_at: float = -1.0
    full_at: float = -1.0  # first time outbound reached target
    outbound: set[int] = field(default_factory=set)
    inbound: set[int] = field(default_factory=set)
    dialing: set[int] = field(default_factory=set)


class Sim:
    def __init__(self, n: int, *, seed: int = 1, attackers: float = 0.0, bootstraps: int = 4,
                 target_outbound: int = 8, max_inbound: int = 117, pex_interval: float = 60.0,
                 min_peer_age: float = 60.0, churn_per_min: float = 0.01, small_tables: bool = True) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.target = target_outbound
        self.max_inbound = max_inbound
        self.churn = churn_per_min
        self.pex_cfg = PexConfig(min_peer_age=min_peer_age, exchange_interval=pex_interval,
                                 first_request_delay=0.5)
        self.db_cfg = (
            PeerTableParams(new_buckets=64, tried_buckets=16, bucket_size=32,
                         new_buckets_per_source_group=8, tried_buckets_per_group=2,
                         min_peer_age=min_peer_age)
            if small_tables else PeerTableParams(min_peer_age=min_peer_age)
        )
        self.nodes: list[Node] = []
        self.by_id: dict[ID, int] = {}
        self.n_attackers = int(n * attackers)
        self.stats = {"pex": 0, "dials": 0, "dial_fail": 0}
        self.responder = BootstrapResponder(NET, 50)
        for i in range(n + bootstraps):
            self._make_node(i, attacker=bootstraps <= i < bootstraps + self.n_attackers,
                            bootstrap=i < bootstraps)
        self.boot_ids = list(range(bootstraps))

    # ---- construction ---------------------------------------------------------------------
    def _public_ip(self) -> str:
        while True:
            a = self.rng.randint(1, 223)
            if a in (10, 100, 127, 169, 172, 192, 198, 203):
                continue
            return f"{a}.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}"

    def _make_node(self, i: int, attacker: bool, bootstrap: bool, cfg: PeerTableParams | None = None) -> Node:
        key = create_new_key_pair(self.rng.getrandbits(256).to_bytes(32, "big"))
        pid = ID.from_pubkey(key.public_key)
        ip = self._public_ip()
        rec = records_mod.sign_record(pid, [Multiaddr(f"/ip4/{ip}/tcp/4001")], key.private_key, seq=1)
        node = Node(
            i, pid, ip, (self.rng.random(), self.rng.random()), rec,
            PeerDatabase(cfg or self.db_cfg, rng=random.Random(self.rng.random()), local_peer_id=pid),
            PeerExchange(self.pex_cfg, NET, pid), attacker=attacker, bootstrap=bootstrap,
        )
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
            self.nodes.append(node)
        self.by_id[pid] = i
        return node

    # ---- event engine ---------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn))

    def run_until(self, t_end: float) -> None:
        while self.events and self.events[0][0] <= t_end:
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()
        self.now = t_end

    def latency(self, a: int, b: int) -> float:
        (x1, y1), (x2, y2) = self.nodes[a].pos, self.nodes[b].pos
        return 0.005 + 0.15 * math.hypot(x1 - x2, y1 - y2) / math.sqrt(2)

    # ---- behaviour ------------------------------------------------------------------------
    def start_node(self, i: int) -> None:
        node = self.nodes[i]
        node.alive = True
        node.joined_at = self.now
        if node.bootstrap:
            return
        b = self.rng.choice(self.boot_ids)
        self.connect(i, b, PeerSource.BOOTSTRAP, then=lambda: self.bootstrap_request(i, b))
        self.at(self.now + 5.0, lambda: self.maintain(i))
        self.at(self.now + 1.0, lambda: self.addr_fetch(i))

    def connect(self, a: int, b: int, source: PeerSource, then: Callable[[], None] | None = None) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        if b in na.outbound or b in na.dialing or a == b:
            return
        na.dialing.add(b)
        na.db.mark_attempt(nb.peer_id, self.now)
        self.stats["dials"] += 1
        rtt = 2 * self.latency(a, b)

        def done() -> None:
            na.dialing.discard(b)
            if not na.alive:
                return
            if not nb.alive or (len(nb.inbound) >= self.max_inbound and not nb.bootstrap):
                self.stats["dial_fail"] += 1
                na.db.mark_failure(nb.peer_id, self.now)
                self.at(self.now + 0.01, lambda: self.fill(a))
                return
            na.outbound.add(b)
            nb.inbound.add(a)
            # identify: each side stores the other's own signed record (service._learn_record)
            na.db.add_record(self._verified(b), source, self.now, source_peer=nb.peer_id,
                             source_addr=Multiaddr(f"/ip4/{nb.ip}/tcp/4001"))
            nb.db.add_record(self._verified(a), PeerSource.INBOUND, self.now, source_peer=na.peer_id,
                             source_addr=Multiaddr(f"/ip4/{na.ip}/tcp/4001"))
            if nb.peer_id in na.db:
                na.db.mark_success(nb.peer_id, self.now)
            if len(na.outbound) >= self.target and na.full_at < 0:
                na.full_at = self.now
            if then is not None:
                then()
            if not nb.bootstrap:
                self.at(self.now + self.pex_cfg.first_request_delay, lambda: self.pex_request(a, b))

        # a dead or refusing peer costs a timeout, a live one 1.5 RTT
        self.at(self.now + (1.5 * rtt if nb.alive else 5.0), done)

    def _verified(self, i: int) -> records_mod.VerifiedRecord:
        return records_mod.verify_record(self.nodes[i].record)

    def addr_fetch(self, a: int) -> None:
        """service._addr_fetch: one-shot connections to a few known peers while the book is thin."""
        na = self.nodes[a]
        if not na.alive:
            return
        budget = na.pex.addr_fetch_budget(len(na.db), self.now - na.joined_at)
        if budget <= 0:
            return
        exclude = {self.nodes[o].peer_id for o in na.outbound | na.dialing}
        # Judge the previous round (service: before/after the round's nursery).
        prev = getattr(na, "_fetch_mark", None)
        if prev is not None:
            na.pex.note_fetch_round(prev[0], len(na.db) - prev[1])
            if na.pex.addr_fetch_budget(len(na.db), self.now - na.joined_at) <= 0:
                return
        asked = 0
        for _ in range(budget):
            entry = na.db.select_for_dial(self.now, exclude=exclude)
            if entry is None:
                break
            exclude.add(entry.peer_id)
            b = self.by_id.get(entry.peer_id)
            if b is None:
                continue
            nb = self.nodes[b]
            rtt = 2 * self.latency(a, b)

            def connected(b: int = b, nb: Node = nb, rtt: float = rtt) -> None:
                if not na.alive:
                    return
                if not nb.alive:
                    na.db.mark_failure(nb.peer_id, self.now)
                    return
                na.db.mark_success(nb.peer_id, self.now)
                req = na.pex.make_request(nb.peer_id, self.now)
                resp, _ = nb.pex.handle_request(na.peer_id, PexRequest(NET, req.max_peers), self.now,
                                                lambda n: self.share(b, a, n))
                self.stats["pex"] += 1

                def receive() -> None:
                    out = na.pex.read_response(nb.peer_id, resp, self.now)
                    for rec in out.records:
                        na.db.add_record(rec, PeerSource.PEX, self.now, source_peer=nb.peer_id,
                                         source_addr=Multiaddr(f"/ip4/{nb.ip}/tcp/4001"))
                    self.on_pex(a)

                self.at(self.now + rtt, receive)

            na.db.mark_attempt(nb.peer_id, self.now)
            asked += 1
            self.at(self.now + (1.5 * rtt if nb.alive else 5.0), connected)
        na._fetch_mark = (asked, len(na.db))  # type: ignore[attr-defined]
        self.at(self.now + self.pex_cfg.exchange_interval, lambda: self.addr_fetch(a))

    def maintain(self, a: int) -> None:
        """The cascade's periodic check: below target with nothing to dial -> ask a bootstrap node."""
        na = self.nodes[a]
        if not na.alive:
            return
        if len(na.outbound) + len(na.dialing) < self.target:
            before = len(na.dialing)
            self.fill(a)
            if len(na.dialing) == before:
                b = self.rng.choice(self.boot_ids)
                self.connect(a, b, PeerSource.BOOTSTRAP, then=lambda: self.bootstrap_request(a, b))
        self.at(self.now + 5.0, lambda: self.maintain(a))

    def bootstrap_request(self, a: int, b: int) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        rtt = 2 * self.latency(a, b)
        peers = list(nb.inbound | nb.outbound)
        self.rng.shuffle(peers)
        cands = ((self.nodes[p].peer_id, self.nodes[p].record) for p in peers if self.nodes[p].alive)
        resp = self.responder.respond(BootstrapRequest(NET, 50), na.peer_id, None, cands)

        def done() -> None:
            ans = read_bootstrap_answer(resp, local_peer_id=na.peer_id, responder=nb.peer_id)
            for rec in ans.records:
                na.db.add_record(rec, PeerSource.BOOTSTRAP, self.now, source_peer=nb.peer_id,
                                 source_addr=Multiaddr(f"/ip4/{nb.ip}/tcp/4001"))
            # The bootstrap connection is not an outbound slot of the overlay (the bootstrap
            # node keeps it as inbound, so it can hand the joiner's record to later joiners).
            na.outbound.discard(b)
            self.fill(a)

        self.at(self.now + rtt, done)

    def fill(self, a: int) -> None:
        na = self.nodes[a]
        if not na.alive:
            return
        groups = {_group(self.nodes[o].ip) for o in na.outbound}
        exclude = {self.nodes[o].peer_id for o in na.outbound | na.dialing | na.inbound}
        want = self.target - len(na.outbound) - len(na.dialing)
        for _ in range(max(0, want)):
            entry = na.db.select_for_dial(self.now, exclude=exclude, outbound_groups=groups)
            if entry is None:
                break
            exclude.add(entry.peer_id)
            groups.add(entry.group)
            j = self.by_id.get(entry.peer_id)
            if j is not None:
                self.connect(a, j, entry.source)

    def pex_request(self, a: int, b: int) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        if not na.alive or b not in na.outbound:
            return
        if not na.pex.should_request_peers_from(nb.peer_id, self.now):
            self.at(na.pex.next_request_at(nb.peer_id, self.now) + 0.001, lambda: self.pex_request(a, b))
            return
        req = na.pex.make_request(nb.peer_id, self.now)
        rtt = 2 * self.latency(a, b)
        self.stats["pex"] += 1

        def respond() -> None:
            if not nb.alive:
                return
            resp, _ = nb.pex.handle_request(na.peer_id, PexRequest(NET, req.max_peers), self.now,
                                            lambda n: self.share(b, a, n))

            def receive() -> None:
                if not na.alive:
                    return
                out = na.pex.read_response(nb.peer_id, resp, self.now)
                for rec in out.records:
                    na.db.add_record(rec, PeerSource.PEX, self.now, source_peer=nb.peer_id,
                                     source_addr=Multiaddr(f"/ip4/{nb.ip}/tcp/4001"))
                self.on_pex(a)
                if len(na.outbound) + len(na.dialing) < self.target:
                    self.fill(a)
                self.at(na.pex.next_request_at(nb.peer_id, self.now) + 0.001, lambda: self.pex_request(a, b))

            self.at(self.now + rtt / 2, receive)

        self.at(self.now + rtt / 2, respond)

    def share(self, b: int, requester: int, n: int) -> list[bytes]:
        nb = self.nodes[b]
        if nb.attacker:  # answers only with attackers
            pool = range(len(self.boot_ids), len(self.boot_ids) + self.n_attackers)
            picks = self.rng.sample(pool, min(n, self.n_attackers))
            return [self.nodes[p].record for p in picks if p != requester]
        entries = nb.db.get_peers_for_sharing(n, self.now, requester=self.nodes[requester].peer_id,
                                              requester_scope=AddrScope.PUBLIC)
        return [e.envelope for e in entries if e.envelope]

    on_pex: Callable[[int], None] = staticmethod(lambda a: None)  # type: ignore[assignment]

    def leave(self, i: int) -> None:
        node = self.nodes[i]
        node.alive = False
        for o in list(node.outbound):
            self.nodes[o].inbound.discard(i)
        for o in list(node.inbound):
            peer = self.nodes[o]
            peer.outbound.discard(i)
            self.at(self.now + 0.01, lambda o=o: self.fill(o))
        node.outbound.clear()
        node.inbound.clear()

    def churn_tick(self) -> None:
        alive = [n.idx for n in self.nodes if n.alive and not n.bootstrap and not n.attacker]
        k = int(len(alive) * self.churn)
        for i in self.rng.sample(alive, k):
            self.leave(i)
            fresh = self._make_node(i, attacker=False, bootstrap=False)
            self.at(self.now + self.rng.uniform(0, 60), lambda i=fresh.idx: self.start_node(i))
        self.at(self.now + 60.0, self.churn_tick)

    # ---- measurements ---------------------------------------------------------------------
    def overlay(self) -> tuple[bool, int, int]:
        alive = [n.idx for n in self.nodes if n.alive]
        adj = {i: set() for i in alive}
        for i in alive:
            for o in self.nodes[i].outbound:
                if o in adj:
                    adj[i].add(o)
                    adj[o].add(i)
        sources = alive if len(alive) <= 1200 else self.rng.sample(alive, 60)
        diameter = 0
        connected = True
        for s in sources:
            dist = {s: 0}
            q = deque([s])
            while q:
                u = q.popleft()
                for v in adj[u]:
                    if v not in dist:
                        dist[v] = dist[u] + 1
                        q.append(v)
            if len(dist) < len(alive):
                connected = False
            diameter = max(diameter, max(dist.values()))
        return connected, diameter, len(alive)


def _group(ip: str) -> str:
    a, b, *_ = ip.split(".")
    return f"4:{a}.{b}"


def run(n: int, minutes: float, attackers: float, seed: int, probes: int, small: bool) -> dict[str, float | str]:
    t0 = time.perf_counter()
    sim = Sim(n, seed=seed, attackers=attackers, small_tables=small)
    setup = time.perf_counter() - t0
    for node in sim.nodes:
        if node.bootstrap:
            sim.start_node(node.idx)
    # Nodes arrive over the first minute; churn starts after two.
    for node in sim.nodes:
        if not node.bootstrap:
            sim.at(sim.rng.uniform(0, 60.0), lambda i=node.idx: sim.start_node(i))
    sim.at(120.0, sim.churn_tick)
    warm = minutes * 60.0
    sim.run_until(warm)
    honest = [x for x in sim.nodes if x.alive and not x.attacker and not x.bootstrap]
    all_full_at = max((x.full_at for x in honest if x.joined_at < 60.0), default=-1)
    not_full = sum(1 for x in honest if len(x.outbound) < sim.target)
    connected, diameter, alive = sim.overlay()

    # Probes: fresh nodes with default-size tables join together now; for each, the virtual
    # time (and PEX round: one request to each outbound peer per exchange_interval) at which its
    # book first holds >= 1,000 addresses.
    start = sim.now
    probe_ids = []
    reached: dict[int, float] = {}
    for _ in range(probes):
        idx = len(sim.nodes)
        sim._make_node(idx, attacker=False, bootstrap=False, cfg=PeerTableParams(min_peer_age=sim.pex_cfg.min_peer_age))
        probe_ids.append(idx)

    def on_pex(a: int) -> None:
        if a in probe_ids and a not in reached and len(sim.nodes[a].db) >= 1000:
            reached[a] = sim.now - start

    sim.on_pex = on_pex  # type: ignore[assignment]
    for idx in probe_ids:
        sim.start_node(idx)
    rounds_run = 5
    sim.run_until(start + rounds_run * sim.pex_cfg.exchange_interval + 1.0)
    results = []
    for idx in probe_ids:
        t = reached.get(idx, math.inf)
        rounds = math.inf if t == math.inf else math.floor(t / sim.pex_cfg.exchange_interval) + 1
        results.append((t, rounds, len(sim.nodes[idx].db)))

    eclipse = []
    if attackers:
        for x in honest:
            if x.outbound:
                eclipse.append(sum(1 for o in x.outbound if sim.nodes[o].attacker) / len(x.outbound))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, float | str] = {
        "nodes": n,
        "attackers": f"{attackers:.0%}",
        "virtual_minutes": minutes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "setup_s": round(setup, 1),
        "peak_rss_mb": round(rss),
        "pex_exchanges": sim.stats["pex"],
        "all_initial_nodes_full_at_s": round(all_full_at, 1),
        "nodes_below_target_at_end": not_full,
        "overlay_connected": str(connected),
        "diameter": diameter,
        "log2_n": round(math.log2(alive), 1),
        "probe_s_to_1000_median": round(statistics.median(r[0] for r in results), 1),
        "probe_rounds_to_1000_max": max(r[1] for r in results),
        "probe_book_after_5_rounds": int(statistics.median(r[2] for r in results)),
    }
    if eclipse:
        es = sorted(eclipse)
        out["eclipse_outbound_share_mean"] = round(statistics.mean(es), 3)
        out["eclipse_outbound_share_p99"] = round(es[int(0.99 * (len(es) - 1))], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000])
    parser.add_argument("--minutes", type=float, default=6.0, help="virtual minutes before probes join")
    parser.add_argument("--attackers", type=float, default=0.0)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--only-attackers", action="store_true", help="skip the attacker-free run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--full-tables", action="store_true", help="default-size tables for every node")
    args = parser.parse_args()
    _install_verify_cache()
    rows = []
    for n in args.nodes:
        for att in ([args.attackers] if args.only_attackers else sorted({0.0, args.attackers})):
            res = run(n, args.minutes, att, args.seed, args.probes, not args.full_tables)
            print(res, flush=True)
            rows.append(res)
    keys = list(rows[0].keys()) + [k for r in rows[1:] for k in r if k not in rows[0]]
    keys = list(dict.fromkeys(keys))
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
