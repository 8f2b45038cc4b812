"""Signed DNS seeds over real DNS (issue #17, item 5): a local dnsmasq serving a 10,000-leaf tree.

Measures, with the real adapter (``bootstrap/signed_seeds.py``: DnsTxt, drive, SignedSeed):

* 8 verified peers: ``SignedSeed.lookup(8)``, a fresh seed each trial (median and max);
* a full sync from nothing with drive's default parallelism (as many names as the SeedSync hands
  out, ``max_in_flight`` 32);
* the rest of the tree after a lookup at the background rate (``SignedSeed.walk_rest``,
  ``BACKGROUND_PARALLEL`` queries at once);
* a re-sync after one peer's record changed (the tree republished with seq 2);

at each resolver delay: queries, time, and time / RTT (round trips) next to depth + 1 and the
model's rounds (``dnsseed.sync.walk_zone`` over the same zone, no DNS). Goal: 8 peers in
<= depth + 1 round trips.

Delay: the delay is one way, as the NAT lab's ``delay_ms`` (interop/natlab/lab.py): "25 ms" adds
25 ms to every packet, 50 ms to a query's round trip. The kernel here has no netem, so the bench
(as root) re-runs itself in a network namespace of its own (``pzd-bench-<pid>``) where dnsmasq and
the client talk over loopback, and, for a delay, loopback's packets go through NFQUEUE to the lab's
``interop/natlab/delay.py``; the namespace is deleted at the end. Without root only ``--delays 0``
runs (on the host's loopback).

Rounds without a clock: in lock-step (:class:`LockStep`) the adapter's answers are held until every
query out has its answer and nothing else can run, then released together; the number of releases
is the rounds the adapter took. ``tests/test_bench_dnsseed.py`` asserts on them.

Run: .venv/bin/python bench/bench_dnsseed.py [--leaves 10000] [--delays 0,25] [--trials 5]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402
import trio.testing  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from multiaddr import Multiaddr  # noqa: E402

from prozchain_discovery.bootstrap.dns import ResolverConfig  # noqa: E402
from prozchain_discovery.bootstrap.signed_seeds import (  # noqa: E402
    BACKGROUND_LEAVES,
    BACKGROUND_PARALLEL,
    DnsTxt,
    SignedSeed,
    TxtLookupError,
    TxtQuery,
    TxtRecords,
    drive,
)
from prozchain_discovery.dnsseed.sync import SeedSync, SyncLimits, walk_zone  # noqa: E402
from prozchain_discovery.dnsseed.tree import SeedTree, build_tree, hash_name  # noqa: E402
from prozchain_discovery.records import VerifiedRecord, sign_record  # noqa: E402
from tests.dnsmasq import dnsmasq, txt_line  # noqa: E402

DOMAIN = "seed.test"  # tests/dnsmasq.py is authoritative for .test
TARGET = 8
DELAY_QUEUE = 7  # NFQUEUE number inside our own namespace
NS_PREFIX = "pzd-bench-"
DELAY_PY = ROOT / "interop" / "natlab" / "delay.py"


# ---- trees ------------------------------------------------------------------------------------

def dnsmasq_entry_text(domain: str) -> int:
    """The longest entry text whose ``txt-record=`` line dnsmasq reads (<= 1020 characters:
    dnsmasq reads config lines of at most ~1022; up to 4 quoted strings, 3 characters each)."""
    name = hash_name(b"\0" * 32, domain)
    return 1020 - len("txt-record=") - len(name) - 1 - 3 * 4


def signed_records(n: int, first: int = 0) -> list[bytes]:
    """``n`` signed peer records of deterministic identities (``first`` .. ``first + n - 1``)."""
    out = []
    for i in range(first, first + n):
        pair = create_new_key_pair((i + 1).to_bytes(32, "big"))
        addr = Multiaddr(f"/ip4/10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/tcp/4001")
        out.append(sign_record(ID.from_pubkey(pair.public_key), [addr], pair.private_key, seq=1))
    return out


def changed_record(n: int) -> bytes:
    """Identity ``n - 1``'s record at seq 2 with another address (one record changed)."""
    pair = create_new_key_pair(n.to_bytes(32, "big"))
    return sign_record(ID.from_pubkey(pair.public_key), [Multiaddr("/ip4/10.255.9.9/tcp/4001")],
                       pair.private_key, seq=2)


@dataclass
class Trees:
    v1: SeedTree  # seq 1
    resyncs: list[SeedTree]  # seq 2, 3, ...: each with one record changed from the one before
    t_sign: float
    t_build: float


def make_trees(leaves: int, resyncs: int, domain: str = DOMAIN) -> Trees:
    """The tree at seq 1, then ``resyncs`` republished trees (seq 2, 3, ...), each differing
    from the one before in one peer's record (the last peer's, changed and changed back)."""
    operator = create_new_key_pair(b"\x07" * 32)
    t0 = time.perf_counter()
    envs = signed_records(leaves)
    changed = envs[:-1] + [changed_record(leaves)]
    t1 = time.perf_counter()
    cap = dnsmasq_entry_text(domain)
    v1 = build_tree(envs, operator.private_key, domain, 1, max_entry_text=cap)
    later = [build_tree(envs if i % 2 else changed, operator.private_key, domain, 2 + i, max_entry_text=cap)
             for i in range(resyncs)]
    return Trees(v1, later, t1 - t0, time.perf_counter() - t1)


def write_conf(tree: SeedTree, path: Path) -> int:
    """The zone as dnsmasq ``txt-record`` lines; returns the longest line."""
    lines = [txt_line(name, strings) for name, strings in tree.zone.items()]
    path.write_text("\n".join(lines) + "\n")
    return max(map(len, lines))


def limits_for(leaves: int) -> SyncLimits:
    """The default limits when the tree fits them (10,000 leaves do), else raised to fit."""
    d = SyncLimits()
    if leaves <= d.max_leaves and leaves * 1.1 + 64 <= d.max_queries:
        return d
    return SyncLimits(max_leaves=leaves, max_queries=2 * leaves + 64, max_bytes=leaves * 2048)


# ---- query wrappers ---------------------------------------------------------------------------

class LockStep:
    """A TXT query wrapper that runs the adapter in rounds: every answer is held until all the
    queries out have their answers and every other task is blocked, then all are released at
    once. ``rounds`` counts the releases: the round trips the adapter needs, whatever the timing.

    Use inside :meth:`run` (its pacer task must run beside the adapter)."""

    def __init__(self, inner: TxtQuery) -> None:
        self.inner = inner
        self.rounds = 0
        self._flying = 0
        self._held: list[trio.Event] = []
        self._landed = trio.Event()

    async def __call__(self, name: str) -> TxtRecords:
        self._flying += 1
        outcome: TxtRecords | TxtLookupError
        try:
            outcome = await self.inner(name)
        except TxtLookupError as exc:
            outcome = exc
        finally:
            self._flying -= 1
            if self._flying == 0:
                self._landed.set()
        gate = trio.Event()
        self._held.append(gate)
        await gate.wait()
        if isinstance(outcome, TxtLookupError):
            raise outcome
        return outcome

    async def _pace(self) -> None:
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if self._flying:
                self._landed = trio.Event()
                await self._landed.wait()
                continue
            if not self._held:  # everything blocked, nothing out: the adapter waits on nothing
                raise RuntimeError("lock-step: the adapter stalled")
            self.rounds += 1
            held, self._held = self._held, []
            for gate in held:
                gate.set()

    async def run(self, work: Callable[[], Any]) -> int:
        """Run ``await work()`` in lock-step; returns the rounds it took."""
        start = self.rounds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pace)
            await work()
            nursery.cancel_scope.cancel()
        return self.rounds - start


# ---- measurements -----------------------------------------------------------------------------

@dataclass
class Run:
    queries: int
    seconds: float
    rounds: int | None = None  # lock-step rounds
    leaves: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    gc_pause: float = 0.0  # the longest garbage-collector pass of this process in the block


class GcPauses:
    """The garbage collector's passes in this process, timed (a generation-2 pass over the
    objects of a 10,000-leaf tree takes ~0.15 s: an outlier in a short measurement)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._start)


GC = GcPauses()


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Meter:
    """Wall time, this process's CPU and dnsmasq's CPU over a block."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    @contextlib.contextmanager
    def __call__(self, run: Run) -> Iterator[Run]:
        w, c, s = time.perf_counter(), time.process_time(), _cpu_of(self.server_pid)
        GC.longest = 0.0
        try:
            yield run
        finally:
            run.gc_pause = GC.longest
            run.seconds = time.perf_counter() - w
            run.client_cpu = time.process_time() - c
            run.server_cpu = _cpu_of(self.server_pid) - s


class Switch:
    """A TXT query whose target can change (the republished tree is another dnsmasq)."""

    def __init__(self, query: TxtQuery) -> None:
        self.query = query

    async def __call__(self, name: str) -> TxtRecords:
        return await self.query(name)


def txt(port: int) -> DnsTxt:
    return DnsTxt(ResolverConfig(nameservers=("127.0.0.1",), port=port, timeout=5.0))


async def lookup(tree: SeedTree, query: TxtQuery, seed: int, meter: Meter | None = None,
                 lockstep: bool = False) -> Run:
    """A fresh SignedSeed's ``lookup(TARGET)``."""
    step = LockStep(query) if lockstep else None
    s = SignedSeed(tree.url, step or query, rng=random.Random(seed), limits=limits_for(len(tree.leaves)))
    run = Run(0, 0.0)
    got: list[VerifiedRecord] = []

    async def work() -> None:
        got.extend(await s.lookup(TARGET))

    with meter(run) if meter else contextlib.nullcontext(run):
        if step is not None:
            run.rounds = await step.run(work)
        else:
            await work()
    run.queries, run.leaves = s.sync.queries, len(got)
    return run


async def full_then_resync(trees: Trees, ports: Sequence[int], meter: Meter | None = None,
                           lockstep: bool = False) -> tuple[Run, list[Run]]:
    """A full sync of v1 from nothing (drive's default parallelism), then re-syncs of the same
    seed against each later tree (one record changed each time): ``ports[i]`` serves
    ``[v1, *resyncs][i]``."""
    switch = Switch(txt(ports[0]))
    step = LockStep(switch) if lockstep else None
    s = SignedSeed(trees.v1.url, step or switch, rng=random.Random(1), limits=limits_for(len(trees.v1.leaves)))
    runs = []
    for tree, port in zip([trees.v1, *trees.resyncs], ports, strict=True):
        switch.query = txt(port)
        run = Run(0, 0.0)

        async def work() -> None:
            s.sync.start(0)
            s.sync.want_all()
            await drive(s.sync, s.query)

        with meter(run) if meter else contextlib.nullcontext(run):
            if step is not None:
                run.rounds = await step.run(work)
            else:
                await work()
        if not s.sync.complete or s.seq != tree.root.seq or len(s.sync.tree_leaves()) != len(tree.leaves):
            raise RuntimeError(f"sync of seq {tree.root.seq} incomplete: {s.status()}")
        run.queries, run.leaves = s.sync.queries, len(s.sync.tree_leaves())
        runs.append(run)
    return runs[0], runs[1:]


async def background(tree: SeedTree, port: int, meter: Meter) -> tuple[Run, Run]:
    """A lookup, then ``walk_rest`` (BACKGROUND_PARALLEL at once) to the end of the tree."""
    s = SignedSeed(tree.url, txt(port), rng=random.Random(2), limits=limits_for(len(tree.leaves)))
    first = Run(0, 0.0)
    with meter(first):
        first.leaves = len(await s.lookup(TARGET))
    first.queries = s.sync.queries
    rest = Run(0, 0.0)
    leaves: list[VerifiedRecord] = []
    with meter(rest):
        await s.walk_rest(leaves.extend)
    if not (s.walked and s.sync.complete and first.leaves + len(leaves) == len(tree.leaves)):
        raise RuntimeError(f"walk_rest did not reach the end of the tree: {s.status()}")
    rest.queries, rest.leaves = s.sync.queries, len(leaves)
    return first, rest


async def node_sample(tree: SeedTree, port: int, meter: Meter) -> Run:
    """What a node does: a lookup, then ``walk_rest(leaves=BACKGROUND_LEAVES)`` (a random
    sample of the tree, as much as the peer book holds from one seed)."""
    s = SignedSeed(tree.url, txt(port), rng=random.Random(3), limits=limits_for(len(tree.leaves)))
    run = Run(0, 0.0)
    leaves: list[VerifiedRecord] = []
    with meter(run):
        leaves += await s.lookup(TARGET)
        await s.walk_rest(leaves.extend, leaves=BACKGROUND_LEAVES)
    run.queries, run.leaves = s.sync.queries, len(leaves)
    if not (s.walked and run.leaves == min(BACKGROUND_LEAVES, len(tree.leaves))):
        raise RuntimeError(f"the sample has {run.leaves} leaves: {s.status()}")
    return run


async def rtt(port: int, name: str, n: int = 21) -> float:
    """Median time of one TXT query (dnspython on trio, one leaf's answer)."""
    q = txt(port)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await q(name)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Model:
    """The in-memory driver's figures for the same trees (no DNS, no adapter)."""
    lookup_rounds: list[int] = field(default_factory=list)
    lookup_queries: list[int] = field(default_factory=list)
    full_rounds: int = 0
    full_queries: int = 0
    resync_rounds: list[int] = field(default_factory=list)
    resync_queries: list[int] = field(default_factory=list)


def model(trees: Trees, trials: int) -> Model:
    m = Model()
    limits = limits_for(len(trees.v1.leaves))
    for t in range(trials):
        sync = SeedSync(trees.v1.url, rng=random.Random(t), limits=limits)
        m.lookup_rounds.append(walk_zone(sync, trees.v1.zone, target=TARGET, full=False))
        m.lookup_queries.append(sync.queries)
    sync = SeedSync(trees.v1.url, rng=random.Random(1), limits=limits)
    m.full_rounds = walk_zone(sync, trees.v1.zone, target=0, full=True)
    m.full_queries = sync.queries
    for tree in trees.resyncs:
        m.resync_rounds.append(walk_zone(sync, tree.zone, target=0, full=True))
        m.resync_queries.append(sync.queries)
    return m


# ---- the delay --------------------------------------------------------------------------------

class LoopbackDelay:
    """``delay_ms`` one way on this namespace's loopback (NFQUEUE + interop/natlab/delay.py)."""

    RULE = ["OUTPUT", "-o", "lo", "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.delay_ms = 0.0

    def set(self, delay_ms: float) -> None:
        self.clear()
        if not delay_ms:
            return
        log = self.log_dir / f"delay-{delay_ms:g}.log"
        with log.open("wb") as f:
            self.proc = subprocess.Popen([sys.executable, str(DELAY_PY), "--queue", str(DELAY_QUEUE),
                                          "--delay-ms", f"{delay_ms:g}"], stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while b"delay: queue" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("delay.py did not start: " + log.read_text(errors="replace")[-300:])
            time.sleep(0.02)
        subprocess.run(["iptables-legacy", "-A", *self.RULE], check=True)
        self.delay_ms = delay_ms

    def clear(self) -> None:
        if self.delay_ms:
            subprocess.run(["iptables-legacy", "-D", *self.RULE], check=False)
            self.delay_ms = 0.0
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# ---- report -----------------------------------------------------------------------------------

def _rt(seconds: float, rtt_s: float | None) -> str:
    return f"{seconds / rtt_s:.1f} RTT" if rtt_s else "- RTT"


@dataclass
class DelayResult:
    delay_ms: float
    rtt_s: float  # nominal: 2 x the one-way delay
    query_s: float  # median TXT query as measured
    lookups: list[Run]
    full: Run
    resyncs: list[Run]
    bg_first: Run
    bg_rest: Run
    sample: Run


def report_delay(r: DelayResult, tree: SeedTree, m: Model) -> list[str]:
    tag = f"[{r.delay_ms:g} ms]"
    rtt_s = r.query_s if r.delay_ms else None  # at 0 ms the RTT is ~0.1 ms: RTTs say nothing
    times = [x.seconds for x in r.lookups]
    med, mx = statistics.median(times), max(times)
    qs = [x.queries for x in r.lookups]
    goal = tree.depth + 1
    nominal = f"RTT {r.rtt_s * 1e3:g} ms nominal" if r.delay_ms else "no delay"
    out = [f"{tag} one TXT query: median {r.query_s * 1e3:.2f} ms ({nominal}); RTT below = time / this"]
    line = (f"{tag} {TARGET} verified peers (lookup, fresh seed, {len(times)} trials): queries median "
            f"{statistics.median(qs):g} max {max(qs)}, time median {med * 1e3:.0f} ms max {mx * 1e3:.0f} ms")
    if rtt_s:
        ok = mx / rtt_s < goal + 1  # no round trip more than depth + 1 (the rest is client CPU)
        line += (f" = {med / rtt_s:.1f} / {mx / rtt_s:.1f} RTT (depth + 1 = {goal}; model {max(m.lookup_rounds)} rounds)"
                 f" {'meets' if ok else 'MISSES'} the goal")
    else:
        line += f" (depth + 1 = {goal}; model {max(m.lookup_rounds)} rounds)"
    line += (f"; client CPU median {statistics.median(x.client_cpu for x in r.lookups) * 1e3:.0f} ms; "
             f"longest GC pass {max(x.gc_pause for x in r.lookups) * 1e3:.0f} ms")
    out.append(line)
    f = r.full
    out.append(f"{tag} full sync from nothing (drive, <= 32 in flight): {f.queries} queries, {f.leaves} leaves in "
               f"{f.seconds:.2f} s = {_rt(f.seconds, rtt_s)} (model {m.full_rounds} rounds); client CPU "
               f"{f.client_cpu:.2f} s ({f.client_cpu / f.queries * 1e3:.2f} ms/query), dnsmasq CPU {f.server_cpu:.2f} s ({f.server_cpu / f.queries * 1e6:.0f} us/query)")
    b1, b2 = r.bg_first, r.bg_rest
    out.append(f"{tag} lookup then walk_rest ({BACKGROUND_PARALLEL} in flight): the rest, {b2.queries - b1.queries} "
               f"queries, {b2.leaves} leaves in {b2.seconds:.2f} s = {_rt(b2.seconds, rtt_s)} (>= "
               f"{math.ceil((b2.queries - b1.queries) / BACKGROUND_PARALLEL)} rounds at {BACKGROUND_PARALLEL} in "
               f"flight); client CPU {b2.client_cpu:.2f} s, dnsmasq CPU {b2.server_cpu:.2f} s")
    sp = r.sample
    out.append(f"{tag} what a node does: lookup, then a sample of {BACKGROUND_LEAVES} leaves in all "
               f"({BACKGROUND_PARALLEL} in flight): {sp.queries} queries, {sp.leaves} leaves in {sp.seconds:.2f} s = "
               f"{_rt(sp.seconds, rtt_s)}; client CPU {sp.client_cpu:.2f} s")
    t = sorted(x.seconds for x in r.resyncs)
    out.append(f"{tag} re-sync after one record changed (new seq; {len(t)} times, each a new change): queries "
               f"max {max(x.queries for x in r.resyncs)}, time median {statistics.median(t) * 1e3:.0f} ms max "
               f"{t[-1] * 1e3:.0f} ms = {_rt(statistics.median(t), rtt_s)} / {_rt(t[-1], rtt_s)} (model "
               f"{max(m.resync_queries)} queries in {max(m.resync_rounds)} rounds); client CPU median "
               f"{statistics.median(x.client_cpu for x in r.resyncs) * 1e3:.0f} ms; longest GC pass "
               f"{max(x.gc_pause for x in r.resyncs) * 1e3:.0f} ms")
    return out


def markdown(results: list[DelayResult], tree: SeedTree, m: Model, ls: dict[str, Any], cmd: str) -> str:
    goal = tree.depth + 1
    head = "| figure | goal / model | " + " | ".join(f"{r.delay_ms:g} ms one way" for r in results) + " |"
    out = [head, "|---|---|" + "---|" * len(results)]

    def row(name: str, goal_text: str, cell: Callable[[DelayResult], str]) -> None:
        out.append(f"| {name} | {goal_text} | " + " | ".join(cell(r) for r in results) + " |")

    def rt(sec: float, r: DelayResult) -> str:
        return f" = {sec / r.query_s:.1f} RTT" if r.delay_ms else ""

    row("one TXT query (median)", "-", lambda r: f"{r.query_s * 1e3:.1f} ms")

    def lk(r: DelayResult) -> str:
        t = sorted(x.seconds for x in r.lookups)
        q = max(x.queries for x in r.lookups)
        return f"{q} queries, {statistics.median(t) * 1e3:.0f} / {t[-1] * 1e3:.0f} ms{rt(statistics.median(t), r)}"

    row(f"{TARGET} verified peers, median / max of {len(results[0].lookups)}",
        f"<= depth + 1 = {goal} RT; model {max(m.lookup_rounds)} rounds, adapter {ls['lookup_rounds']}", lk)
    row("full sync, <= 32 in flight", f"model {m.full_rounds} rounds, adapter {ls['full_rounds']}",
        lambda r: f"{r.full.queries} queries, {r.full.seconds:.1f} s{rt(r.full.seconds, r)}")
    row(f"rest of the tree, walk_rest ({BACKGROUND_PARALLEL} in flight)", "-",
        lambda r: f"{r.bg_rest.queries - r.bg_first.queries} queries, {r.bg_rest.seconds:.1f} s"
                  f"{rt(r.bg_rest.seconds, r)}")
    row(f"what a node does: lookup + sample to {BACKGROUND_LEAVES} leaves ({BACKGROUND_PARALLEL} in flight)", "-",
        lambda r: f"{r.sample.queries} queries, {r.sample.seconds:.1f} s{rt(r.sample.seconds, r)}")

    def rs(r: DelayResult) -> str:
        t = sorted(x.seconds for x in r.resyncs)
        return (f"{max(x.queries for x in r.resyncs)} queries, {statistics.median(t) * 1e3:.0f} / "
                f"{t[-1] * 1e3:.0f} ms{rt(statistics.median(t), r)}")

    row(f"re-sync, one record changed, median / max of {len(results[0].resyncs)}",
        f"model {max(m.resync_queries)} queries, {max(m.resync_rounds)} rounds; adapter {ls['resync_rounds']}", rs)
    row("dnsmasq CPU per query (full sync)", "-", lambda r: f"{r.full.server_cpu / r.full.queries * 1e6:.0f} us")
    out.append("")
    out.append(f"{len(tree.leaves)} leaves, {len(tree.zone)} TXT records, depth {tree.depth}, fan-out {tree.fanout} "
               "(dnsmasq lines <= 1020 characters); one way delay on loopback in a network namespace "
               "(NFQUEUE, interop/natlab/delay.py: no netem here), RTT = 2 x delay; RT = round trips = time / "
               f"median TXT query time. From `{cmd}`.")
    return "\n".join(out)


# ---- main -------------------------------------------------------------------------------------

async def measure(args: argparse.Namespace, trees: Trees, ports: list[int], server_pid: int | None,
                  delay: LoopbackDelay | None, m: Model) -> None:
    """``ports[i]`` serves ``[v1, *resyncs][i]``; ``server_pid`` is v1's dnsmasq."""
    p1 = ports[0]
    meter = Meter(server_pid)
    # Rounds of the real adapter over the real dnsmasq, in lock-step (no delay needed).
    ls_lookups = [await lookup(trees.v1, txt(p1), t, lockstep=True) for t in range(args.trials)]
    ls_full, ls_resyncs = await full_then_resync(trees, ports, lockstep=True)
    ls = {"lookup_rounds": max(x.rounds or 0 for x in ls_lookups), "full_rounds": ls_full.rounds,
          "resync_rounds": max(x.rounds or 0 for x in ls_resyncs)}
    print(f"adapter in lock-step (real dnsmasq; rounds whatever the timing): {TARGET} peers in max "
          f"{ls['lookup_rounds']} rounds, {max(x.queries for x in ls_lookups)} queries (depth + 1 = "
          f"{trees.v1.depth + 1}, model {max(m.lookup_rounds)}); full sync {ls_full.queries} queries in "
          f"{ls_full.rounds} rounds (model {m.full_rounds}); re-sync max {max(x.queries for x in ls_resyncs)} queries in "
          f"{ls['resync_rounds']} rounds (model {max(m.resync_queries)} in {max(m.resync_rounds)})", flush=True)
    leaf_name = next(iter(trees.v1.zone))
    results = []
    for d in args.delays:
        if delay is not None:
            delay.set(d)
        try:
            q_s = await rtt(p1, leaf_name)
            lookups = [await lookup(trees.v1, txt(p1), t, meter) for t in range(args.trials)]
            full, resyncs = await full_then_resync(trees, ports, meter)
            bg_first, bg_rest = await background(trees.v1, p1, meter)
            sample = await node_sample(trees.v1, p1, meter)
        finally:
            if delay is not None:
                delay.clear()
        r = DelayResult(d, 2 * d / 1e3, q_s, lookups, full, resyncs, bg_first, bg_rest, sample)
        results.append(r)
        for line in report_delay(r, trees.v1, m):
            print(line, flush=True)
    cmd = shlex.join(["python", "bench/bench_dnsseed.py", *args.argv])
    print()
    print(f"Proposed for bench/RESULTS.md, from `{cmd}`:")
    print()
    print(markdown(results, trees.v1, m, ls, cmd))


def run_here(args: argparse.Namespace) -> int:
    """The measurements, in this process's network namespace."""
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        print("bench_dnsseed: dnsmasq is not installed (apt-get install dnsmasq-base)", file=sys.stderr)
        return 2
    where = f"network namespace {args.in_netns}" if args.in_netns else "the host's loopback"
    print(f"bench_dnsseed: {args.leaves} leaves, delays {','.join(f'{d:g}' for d in args.delays)} ms one way, "
          f"{args.trials} trials; dnsmasq and client on {where}", flush=True)
    trees = make_trees(args.leaves, args.trials)
    tree = trees.v1
    m = model(trees, args.trials)
    with tempfile.TemporaryDirectory(prefix="pzd-bench-") as tmp, contextlib.ExitStack() as stack:
        ports, longest, starts, pid1 = [], 0, [], None
        for i, t in enumerate([trees.v1, *trees.resyncs]):  # one dnsmasq per published tree
            d = Path(tmp, f"seq{t.root.seq}")
            d.mkdir()
            longest = max(longest, write_conf(t, d / "zone.conf"))
            t0 = time.perf_counter()
            ports.append(stack.enter_context(dnsmasq(d, conf_files=[d / "zone.conf"])))
            starts.append(time.perf_counter() - t0)
            if i == 0:
                pid1 = _pid(d)
        print(f"setup (not measured): {args.leaves} signed peer records {trees.t_sign:.1f} s, "
              f"{1 + len(trees.resyncs)} trees built {trees.t_build:.1f} s; dnsmasq: {len(tree.zone)} txt-record "
              f"lines (longest {longest} characters), up and answering in median "
              f"{statistics.median(starts):.2f} s, RSS {_rss_mb(pid1):.0f} MB", flush=True)
        print(f"tree: {len(tree.leaves)} leaves, {len(tree.zone)} TXT records, depth {tree.depth}, fan-out "
              f"{tree.fanout} (max_entry_text {dnsmasq_entry_text(DOMAIN)}); model (walk_zone, no DNS): "
              f"{TARGET} peers in max {max(m.lookup_rounds)} rounds, {max(m.lookup_queries)} queries; full sync "
              f"{m.full_queries} queries in {m.full_rounds} rounds; re-sync max {max(m.resync_queries)} queries in "
              f"{max(m.resync_rounds)} rounds", flush=True)
        if any(args.delays):
            print("delay: one way on loopback, as the NAT lab's delay_ms: every packet held N ms (NFQUEUE, "
                  "interop/natlab/delay.py; the kernel has no netem), a query's RTT = 2 N ms", flush=True)
        delay = LoopbackDelay(Path(tmp)) if args.in_netns else None
        try:
            trio.run(measure, args, trees, ports, pid1, delay, m)
        finally:
            if delay is not None:
                delay.clear()
    return 0


def _pid(tmp: Path) -> int | None:
    try:
        return int((tmp / "dnsmasq.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    conf = str(tmp / "dnsmasq.conf")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if conf in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return int(proc.name)
            except OSError:
                continue
    return None


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_in_netns(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Re-run this bench inside a network namespace of its own; delete it at the end."""
    ns = f"{NS_PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    child: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()),
                                  "--in-netns", ns, *argv])
        return child.wait()
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        # Whatever is left in the namespace was started by this bench (it is ours alone).
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", type=int, default=10_000)
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms, comma-separated (the NAT lab's sense)")
    ap.add_argument("--trials", type=int, default=5, help="8-peer lookups per delay, each a fresh SignedSeed")
    ap.add_argument("--in-netns", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        args.delays = [float(x) for x in args.delays.split(",") if x.strip()]
    except ValueError:
        print(f"bench_dnsseed: --delays: not a list of numbers: {args.delays!r}", file=sys.stderr)
        return 2
    if not args.delays or min(args.delays) < 0 or args.leaves < TARGET or args.trials < 1:
        print("bench_dnsseed: need delays >= 0, --leaves >= 8 and --trials >= 1", file=sys.stderr)
        return 2
    args.argv = [a for a in argv if a != "--in-netns" and a != args.in_netns]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.in_netns:
        return run_here(args)
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("iptables-legacy"):
        return run_in_netns(args, argv)
    if any(args.delays):
        print("bench_dnsseed: a resolver delay needs root (a network namespace with NFQUEUE); "
              "run as root or with --delays 0", file=sys.stderr)
        return 2
    return run_here(args)


if __name__ == "__main__":
    sys.exit(main())
