"""The whole node as it ships (issue #15 §1): join, idle CPU, a 50-node start, stock Kademlia, the demo.

Every node of every network here runs ``DiscoveryConfig()``'s defaults — 8 outbound slots,
feelers, PEX at 60 s with ``min_peer_age`` 60 s, NAT classification, AutoNAT v2 client and
server, autorelay, relay ``serve = "auto"``, hole punching, status.json every 5 s — as a user
gets them. Only what loopback needs differs: listen on 127.0.0.1 (port 0), the bootstrap node's
address, a data dir per node, a network id, ``PROZCHAIN_DIAL_LOOPBACK_ONLY=1``. The bootstrap
node is started with ``--bootstrap-node`` (as a user runs one: larger bootstrap answers) and
keeps its 8 outbound slots. ``min_peer_age`` stays at 60 s: bootstrap answers ignore it, so a
young network needs no change. Process nodes log at the CLI's default level (INFO).

Parts, all in one run (``--only`` picks some), each figure beside a baseline or floor from the
same run (the machine's speed varies ~3x between days; compare ratios, not milliseconds):

join   ``--nodes`` (20) node processes + a bootstrap node process (``python -m
       prozchain_discovery node``), settled; ``--joins`` (7) fresh joiner processes, one at a
       time, each knowing only the bootstrap node: ``joined: 8 peers after`` (the node's INFO log
       line: from its service start) and the time from spawning the process until that line
       arrives. Floor: one dial + handshake (wall) + one bootstrap round trip on an open
       connection to the bootstrap node process + 7 x handshake CPU (as bench_join.py).
       Start-up: spawn -> listen addresses printed, vs a stock py-libp2p host process (import,
       ``new_host``, listen, print), one after each join.
       Handshake: a fresh host dials a listening one (both in one child process; wall and CPU
       of ``connect``): ours (``host.make_host``) vs a stock ``libp2p.new_host`` with Noise +
       Yamux and ``max_connections_per_peer=1`` (Ed25519 keys for both), each in its own
       child process, alternated.
idle   The same network once settled: CPU-seconds of each node process over ``--idle-window``
       (utime + stime from /proc/<pid>/stat) / window. Baseline: stock py-libp2p hosts running
       KadDHT (random walk) idle over the same window, per host (one process; part ``dht``).
settle ``--settle-nodes`` (50: a bootstrap node + 49) default-config nodes in one child process:
       every host listening, the bootstrap node's service up, then the 49 other services
       started at once (one nursery); the heap frozen once all are up, as the CLI does per
       process. Settled
       = for 10 s the connection count stays within +-5 % of its median AND the process's CPU
       over those 10 s is below 2 x (idle per node from ``idle``) x nodes, at most half a core.
       Reports the time from the last node's start (and from the first's: starting 50 nodes
       takes a while) to the start of that 10 s window, CPU-seconds until then,
       whether it stays so for 20 s more, peers per node; after ``--give-up`` (120 s):
       "did not settle" with the connection-count trace.
dht    bench/dht_baseline.py's stock network (``new_host`` + KadDHT server mode, random walk)
       of the join network's size, in one child process; time for a fresh host knowing only
       host 0 to reach 8 connections, median of ``--joins``.
demo   ``python -m prozchain_discovery demo --nodes 30`` (what ``make demo`` runs), its
       summary.json: median / slowest time to 8 peers vs the one-core floor: half of
       31 nodes x 8 handshakes x our handshake CPU.

``--quick``: 10 node processes, 3 joins, 10 s windows, a 20-node start given 40 s, a 10-node
demo — about two minutes; its figures are a smoke test, not results.

Run: .venv/bin/python bench/bench_shipped.py [--quick] [--only join,idle,settle,dht,demo]
     [--nodes 20] [--joins 7] [--settle-nodes 50] [--pin-settle CPU]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NETWORK_ID = "prozchain-bench"
PARTS = ("join", "idle", "settle", "dht", "demo")
JOINED = re.compile(r"joined: (\d+) peers after ([0-9.]+) s")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ISSUE_IDLE_PCT = 0.46  # issue #15's measured idle per node, used when `idle` is not run
IDLE_CAP = 0.5  # a process using half a core or more is not idle, whatever `idle` measured


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---- node processes ---------------------------------------------------------------------------
@dataclass
class NodeProcess:
    """``python -m prozchain_discovery node`` with the shipped config and loopback flags only.

    stdout (the listen addresses) and stderr (the log) are read by threads that note when each
    line arrived, so the time from spawning to ``joined:`` is measured outside the node.
    """

    name: str
    workdir: Path
    bootstrap: str | None = None
    bootstrap_node: bool = False
    popen: subprocess.Popen[str] | None = None
    spawned: float = 0.0
    addr: str | None = None
    addr_at: float | None = None
    joined_at: float | None = None  # monotonic, when the joined: line arrived
    joined_after: float | None = None  # what the line says (from service start)
    _ready: threading.Event = field(default_factory=threading.Event)
    _joined: threading.Event = field(default_factory=threading.Event)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "prozchain_discovery", "node", "--listen", "/ip4/127.0.0.1/tcp/0",
                "--network-id", NETWORK_ID, "--data-dir", str(self.workdir / "data")]
        if self.bootstrap:
            argv += ["--bootstrap", self.bootstrap]
        if self.bootstrap_node:
            argv.append("--bootstrap-node")
        return argv

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawned = time.monotonic()
        self.popen = subprocess.Popen(self.argv(), cwd=REPO, env=_env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            if self.addr is None and "/p2p/" in line:
                self.addr, self.addr_at = line.strip(), time.monotonic()
                self._ready.set()
        self._ready.set()

    def _read_stderr(self) -> None:
        assert self.popen is not None and self.popen.stderr is not None
        with (self.workdir / "stderr.log").open("w") as log:
            for line in self.popen.stderr:
                if self.joined_at is None:
                    m = JOINED.search(line)
                    if m:
                        self.joined_at, self.joined_after = time.monotonic(), float(m.group(2))
                        self._joined.set()
                log.write(line)
        self._joined.set()

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout) or self.addr is None:
            raise RuntimeError(f"{self.name} printed no address within {timeout:.0f} s: {self.stderr_tail()}")
        return self.addr

    def wait_joined(self, timeout: float) -> bool:
        return self._joined.wait(timeout) and self.joined_at is not None

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads((self.workdir / "data" / "status.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def cpu_seconds(self) -> float:
        assert self.popen is not None
        with open(f"/proc/{self.popen.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stderr_tail(self, n: int = 400) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def stop_all(nodes: list[NodeProcess]) -> None:
    for n in nodes:
        n.stop()
    for n in nodes:
        n.wait()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- children (one job each, JSON on the last stdout line) ---------------------------------------
def run_child(args: list[str], *, timeout: float, pin: str | None = None, log: Path | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    err = log.open("w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.run(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=timeout, check=False)
    finally:
        if log:
            err.close()  # type: ignore[union-attr]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-600:] if log and log.exists() else ""
        raise RuntimeError(f"child {args[0]} failed (exit {proc.returncode}): {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child_main(argv: list[str]) -> None:
    import logging

    import trio

    job, rest = argv[0], argv[1:]
    kw = json.loads(rest[0]) if rest else {}
    if job != "settle":
        logging.disable(logging.CRITICAL)
    fn = {"dials": _child_dials, "settle": _child_settle, "dht": _child_dht, "listen": _child_listen}[job]
    print(json.dumps(trio.run(fn, kw)), flush=True)


async def _child_dials(kw: dict[str, Any]) -> dict[str, Any]:
    """``kw['impl']`` = ours | stock: ``kw['n']`` dials + handshakes between fresh hosts; with
    ``kw['boot']`` (ours), also bootstrap round trips to that node on an open connection."""
    from contextlib import AsyncExitStack

    import multiaddr
    import trio
    from libp2p.peer.peerinfo import info_from_p2p_addr

    loop = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    if kw["impl"] == "ours":
        from prozchain_discovery.host import make_host

        def factory() -> Any:
            return make_host(listen_addrs=loop)
    else:  # stock py-libp2p: nothing of this project imported in this process
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
        from libp2p.network.config import ConnectionConfig
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
        from libp2p.security.noise.transport import Transport as Noise
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
        from libp2p.stream_muxer.yamux.yamux import Yamux

        def factory() -> Any:
            pair = create_new_key_pair()
            return new_host(key_pair=pair, sec_opt={NOISE: Noise(libp2p_keypair=pair, noise_privkey=new_x25519().private_key)},
                            muxer_opt={YAMUX: Yamux}, listen_addrs=loop,  # type: ignore[dict-item]
                            connection_config=ConnectionConfig(max_connections_per_peer=1))

    walls, cpus, rtts = [], [], []
    async with AsyncExitStack() as stack:
        target = factory()
        await stack.enter_async_context(target.run(loop))
        info = info_from_p2p_addr(target.get_addrs()[0])
        for _ in range(kw["n"] + 1):  # the first warms imports and caches: not counted
            async with AsyncExitStack() as inner:
                h = factory()
                await inner.enter_async_context(h.run(loop))
                w0, c0 = time.perf_counter(), time.process_time()
                with trio.fail_after(10):
                    await h.connect(info)
                walls.append((time.perf_counter() - w0) * 1000)
                cpus.append((time.process_time() - c0) * 1000)
                await trio.sleep(0.05)
        if kw.get("boot"):
            from prozchain_discovery.net import exchange
            from prozchain_discovery.wire.messages import (
                BOOTSTRAP_PROTOCOL,
                BootstrapRequest,
                BootstrapResponse,
            )

            h = factory()
            await stack.enter_async_context(h.run(loop))
            boot = info_from_p2p_addr(multiaddr.Multiaddr(kw["boot"]))
            await h.connect(boot)
            await trio.sleep(0.5)  # identify both ways first: it shares the connection
            req = BootstrapRequest(NETWORK_ID, 50).encode()
            for _ in range(kw["n"] + 1):
                t = time.perf_counter()
                data, _ = await exchange.request(h, boot.peer_id, BOOTSTRAP_PROTOCOL, req, 10)
                BootstrapResponse.decode(data)
                rtts.append((time.perf_counter() - t) * 1000)
    return {"wall": walls[1:], "cpu": cpus[1:], "rtt": rtts[1:]}


async def _child_listen(kw: dict[str, Any]) -> dict[str, Any]:
    """A stock py-libp2p host process: import, build, listen, print the address (a baseline for
    the node's start-up; nothing of this project imported)."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair

    loop = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(key_pair=create_new_key_pair(), listen_addrs=loop)
    async with host.run(loop):
        print(host.get_addrs()[0], flush=True)
    return {"ok": True}


def stock_listen_ms(root: Path) -> float:
    """ms from spawning a stock py-libp2p host process until it prints its listen address."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "listen"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = (time.monotonic() - t0) * 1000
    proc.wait(30)
    if "/p2p/" not in line:
        raise RuntimeError("the stock host process printed no address")
    return took


def _shipped_config(boot_addr: str | None, *, bootstrap_node: bool = False) -> Any:
    """``DiscoveryConfig()`` with only loopback's needs changed (see the module docstring)."""
    import dataclasses

    from prozchain_discovery.config import DiscoveryConfig

    d = DiscoveryConfig()
    return d.replace(
        network_id=NETWORK_ID,
        listen=("/ip4/127.0.0.1/tcp/0",),
        bootstrap=dataclasses.replace(d.bootstrap, bootstrap_nodes=(boot_addr,) if boot_addr else ()),
        server=dataclasses.replace(d.server, bootstrap_node=bootstrap_node),
    )


async def _child_settle(kw: dict[str, Any]) -> dict[str, Any]:
    """``kw['n']`` default-config nodes started at once in this process; watch them settle."""
    import gc
    from contextlib import AsyncExitStack

    import multiaddr
    import trio

    from prozchain_discovery.config import DiscoveryConfig
    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host
    from prozchain_discovery.service import DiscoveryService

    n, give_up, threshold = kw["n"], kw["give_up"], kw["idle_threshold"]  # threshold: cores (0.46 = 46 %)
    stable_s, stay_s = kw["stable_s"], kw["stay_s"]
    root = Path(kw["workdir"])
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    services: list[Any] = []
    samples: list[tuple[float, float, int]] = []  # (t, process CPU s, connections)

    def connections() -> int:
        return sum(len(s.connected) for s in services) // 2  # every end is in this process

    async def monitor() -> None:
        while True:
            samples.append((trio.current_time(), time.process_time(), connections()))
            await trio.sleep(0.5)

    def window(since: float) -> list[tuple[float, float, int]]:
        return [s for s in samples if s[0] >= since]

    def rate(ws: list[tuple[float, float, int]]) -> float:
        return (ws[-1][1] - ws[0][1]) / max(1e-9, ws[-1][0] - ws[0][0])

    def steady(ws: list[tuple[float, float, int]], ref: float | None = None) -> tuple[bool, float]:
        counts = [c for _, _, c in ws]
        mid = ref if ref is not None else statistics.median(counts)
        ok = mid > 0 and max(counts) <= 1.05 * mid and min(counts) >= 0.95 * mid and rate(ws) < threshold
        return ok, mid

    out: dict[str, Any] = {"n": n, "threshold_pct": round(threshold * 100, 1)}
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(monitor)
        # Every host listening first; then the bootstrap node's service; then the other n - 1
        # services at once, each a task of one nursery (no node has a head start).
        hosts = []
        for _ in range(n):
            host = make_host(listen_addrs=listen, dial_timeout=DiscoveryConfig().bootstrap.dial_timeout)
            await stack.enter_async_context(run_host(host, listen))
            hosts.append(host)
        boot_addr = str(hosts[0].get_addrs()[0])
        all_up = trio.Event()

        async def run_node(i: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            cfg = _shipped_config(None if i == 0 else boot_addr, bootstrap_node=i == 0)
            async with DiscoveryService(hosts[i], cfg, data_dir=root / f"n{i}").run() as svc:
                services.append(svc)
                task_status.started()
                if len(services) == n:
                    all_up.set()
                await trio.sleep_forever()

        nodes = await stack.enter_async_context(trio.open_nursery())
        t0, c0 = trio.current_time(), time.process_time()
        await nodes.start(run_node, 0)
        for i in range(1, n):
            nodes.start_soon(run_node, i)
        await all_up.wait()
        t_last, c_last = trio.current_time(), time.process_time()
        gc.collect()
        gc.freeze()  # what the CLI does in each node process once it is up
        out["start_all_s"] = round(t_last - t0, 2)
        out["start_cpu_s"] = round(c_last - c0, 2)
        settled_at = None
        while trio.current_time() - t_last < give_up:
            await trio.sleep(0.5)
            now = trio.current_time()
            ws = window(max(t_last, now - stable_s))
            if now - t_last < stable_s or len(ws) < 4:
                continue
            ok, mid = steady(ws)
            if ok:
                settled_at, settled_mid, settled_cpu = ws[0][0], mid, ws[0][1]
                break
        if settled_at is not None:
            out["settled_after_s"] = round(settled_at - t_last, 1)
            out["settled_after_first_s"] = round(settled_at - t0, 1)
            out["cpu_until_settled_s"] = round(settled_cpu - c_last, 1)
            confirm = trio.current_time()
            await trio.sleep(stay_s)
            ws = window(confirm)
            ok, _ = steady(ws, settled_mid)
            counts = [c for _, _, c in ws]
            out["stayed"] = ok
            out["stay_conns"] = [min(counts), max(counts)]
            out["stay_cpu_pct"] = round(rate(ws) * 100, 1)
            out["settled_conns"] = settled_mid
        else:
            out["settled_after_s"] = None
            out["cpu_until_give_up_s"] = round(time.process_time() - c_last, 1)
        peers = sorted(len(s.connected) for s in services)
        out["peers_min"], out["peers_median"], out["peers_max"] = peers[0], statistics.median(peers), peers[-1]
        out["nodes_below_3"] = sum(1 for p in peers if p < 3)
        # The trace, every 5 s from the last node's start: (s, connections, CPU % over those 5 s).
        trace, last = [], None
        for t, c, k in samples:
            if t >= t_last and (last is None or t - last[0] >= 5.0):
                if last is not None:
                    trace.append([round(t - t_last), k, round((c - last[1]) / (t - last[0]) * 100)])
                last = (t, c)
        out["trace"] = trace
        out["total_s"] = round(trio.current_time() - t_last, 1)
        nodes.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
        gc.unfreeze()
    return out


async def _child_dht(kw: dict[str, Any]) -> dict[str, Any]:
    """bench/dht_baseline.py's stock network: idle CPU per host, then fresh joiners to 8 peers."""
    import gc
    from contextlib import AsyncExitStack

    import trio

    sys.path.insert(0, str(REPO))
    from bench.dht_baseline import build_dht_network, measure_dht_join

    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        hosts = await build_dht_network(stack, kw["n"])
        built = time.perf_counter() - t0
        gc.collect()
        gc.freeze()
        await trio.sleep(kw["settle"])
        w0, c0 = time.perf_counter(), time.process_time()
        await trio.sleep(kw["window"])
        idle = (time.process_time() - c0) / (time.perf_counter() - w0) / kw["n"] * 100
        joins = [await measure_dht_join(hosts, 8) * 1000 for _ in range(kw["joins"])]
    gc.unfreeze()
    return {"built_s": round(built, 1), "idle_pct": idle, "joins_ms": joins}


# ---- the parts ------------------------------------------------------------------------------------
def measure_handshakes(n: int, boot: str | None, rounds: int, logdir: Path) -> dict[str, Any]:
    """Ours and stock alternated, each in its own fresh child process."""
    got: dict[str, dict[str, list[float]]] = {"ours": {"wall": [], "cpu": [], "rtt": []},
                                              "stock": {"wall": [], "cpu": [], "rtt": []}}
    for r in range(rounds):
        for impl in ("ours", "stock") if r % 2 == 0 else ("stock", "ours"):
            kw = {"impl": impl, "n": n, "boot": boot if impl == "ours" and r == 0 else None}
            res = run_child(["dials", json.dumps(kw)], timeout=180, log=logdir / f"dials-{impl}-{r}.log")
            for k in ("wall", "cpu", "rtt"):
                got[impl][k] += res[k]
    return {impl: {k: median(v) for k, v in d.items()} | {"n": len(d["wall"])} for impl, d in got.items()}


@dataclass
class ProcessNetwork:
    root: Path
    boot: NodeProcess | None = None
    nodes: list[NodeProcess] = field(default_factory=list)
    built_s: float = 0.0

    def everyone(self) -> list[NodeProcess]:
        return ([self.boot] if self.boot else []) + self.nodes

    def start(self, n: int, timeout: float) -> None:
        t0 = time.monotonic()
        self.boot = NodeProcess("boot", self.root / "boot", bootstrap_node=True)
        self.boot.start()
        addr = self.boot.wait_ready(60)
        for i in range(n):
            node = NodeProcess(f"n{i}", self.root / f"n{i}", bootstrap=addr)
            node.start()
            self.nodes.append(node)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            dead = [x.name for x in self.everyone() if not x.alive()]
            if dead:
                raise RuntimeError(f"node processes exited: {dead}: {self.everyone()[0].stderr_tail()}")
            if all(x.joined_at is not None for x in self.nodes):
                self.built_s = time.monotonic() - t0
                return
            time.sleep(0.25)
        late = [x.name for x in self.nodes if x.joined_at is None]
        raise RuntimeError(f"{len(late)} of {n} node processes did not reach 8 peers within {timeout:.0f} s")

    def peers(self) -> list[int]:
        return [int(x.status().get("connected", 0)) for x in self.nodes]


def measure_idle(net: ProcessNetwork, window: float) -> dict[str, Any]:
    procs = net.everyone()
    before = [p.cpu_seconds() for p in procs]
    t0 = time.monotonic()
    time.sleep(window)
    wall = time.monotonic() - t0
    after = [p.cpu_seconds() for p in procs]
    pct = [(a - b) / wall * 100 for a, b in zip(after, before, strict=True)]
    nodes = pct[1:]
    peers = net.peers()
    return {"window_s": round(wall, 1), "median_pct": median(nodes), "max_pct": max(nodes), "boot_pct": pct[0],
            "peers": [min(peers), median(peers), max(peers)], "n": len(nodes)}


def measure_joins(net: ProcessNetwork, joins: int, gap: float) -> dict[str, Any]:
    assert net.boot is not None and net.boot.addr is not None
    svc: list[float] = []
    proc: list[float] = []
    addr: list[float] = []
    stock: list[float] = []
    dials: list[int] = []
    for j in range(joins):
        joiner = NodeProcess(f"joiner{j}", net.root / f"joiner{j}", bootstrap=net.boot.addr)
        joiner.start()
        try:
            if not joiner.wait_joined(60):
                raise RuntimeError(f"joiner {j} did not reach 8 peers within 60 s: {joiner.stderr_tail()}")
            assert joiner.joined_at is not None and joiner.joined_after is not None
            svc.append(joiner.joined_after * 1000)
            proc.append((joiner.joined_at - joiner.spawned) * 1000)
            if joiner.addr_at is not None:
                addr.append((joiner.addr_at - joiner.spawned) * 1000)
            dials.append(_dials_started(joiner))
            say(f"  join {j + 1}/{joins}: {joiner.joined_after * 1000:.0f} ms from service start, "
                f"{proc[-1]:.0f} ms from process start, {dials[-1]} outbound dials started")
        finally:
            joiner.stop()
            joiner.wait()
        stock.append(stock_listen_ms(net.root))  # between joins: the same conditions
        time.sleep(gap)
    return {"service_ms": svc, "process_ms": proc, "addr_ms": addr, "stock_listen_ms": stock, "dials": dials}


def _dials_started(joiner: NodeProcess, wait: float = 6.0) -> int:
    """Outbound dials the joiner started, from the first status.json written after it joined
    (status.json is rewritten every 5 s; -1 if none came)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        st = joiner.status()
        if st.get("joined_after") is not None:
            return sum(int(v) for k, v in st.get("metrics", {}).items() if k.startswith("dials{"))
        time.sleep(0.1)
    return -1


def run_demo(nodes: int, out: Path, log: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "prozchain_discovery", "demo", "--nodes", str(nodes), "--out", str(out)]
    with log.open("w") as f:
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=300, check=False)
        wall = time.monotonic() - t0
    summary = json.loads((out / "summary.json").read_text())
    joins = [r["join_s"] for r in summary["nodes"] if r["role"] == "node"]
    done = sorted(x for x in joins if x is not None)
    return {"exit": proc.returncode, "wall_s": wall, "joined": len(done), "nodes": len(joins),
            "median_s": median(done), "max_s": done[-1] if done else None}


# ---- the report -----------------------------------------------------------------------------------
def ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.1f} ms" if x < 100 else f"{x:.0f} ms"


def report(r: dict[str, Any], args: argparse.Namespace, cmd: str, wall: float) -> str:
    lines = [f"`{cmd}` — {os.cpu_count()} cores (shared), load average at start "
             f"{'/'.join(f'{x:.1f}' for x in r['load'])}, whole run {wall:.0f} s"
             + (" — **--quick: a smoke test, not results**" if args.quick else ""), ""]
    if "net" in r:
        lines.append(f"Process network: {args.nodes} node processes + a bootstrap node process, every one "
                     f"`DiscoveryConfig()` defaults (loopback listen, network id, data dir, "
                     f"PROZCHAIN_DIAL_LOOPBACK_ONLY=1; the bootstrap node with `--bootstrap-node`); every node at "
                     f"8 peers {r['net']['built_s']:.1f} s after the first spawn, then {args.settle_wait:.0f} s to settle.")
        lines.append("")
    lines += ["| part | figure | value | same-run baseline / floor | ratio | goal |", "|---|---|---|---|---|---|"]
    hs = r.get("hs")
    if hs:
        o, s = hs["ours"], hs["stock"]
        lines.append(f"| handshake | one dial + Noise + Yamux, our `make_host`: wall / CPU (n={o['n']}) | "
                     f"{ms(o['wall'])} / {ms(o['cpu'])} | stock `new_host` (Noise, Yamux, 1 conn/peer): "
                     f"{ms(s['wall'])} / {ms(s['cpu'])} (n={s['n']}) | wall {o['wall'] / s['wall']:.2f}, "
                     f"CPU {o['cpu'] / s['cpu']:.2f} | ≤ 1.0 |")
    if "joins" in r and hs:
        j, o = r["joins"], hs["ours"]
        floor = o["wall"] + o["rtt"] + 7 * o["cpu"]
        med = median(j["service_ms"])
        lines.append(f"| join | fresh joiner process → `joined: 8 peers after`, from service start, median of "
                     f"{len(j['service_ms'])} (min–max) | **{ms(med)}** ({ms(min(j['service_ms']))}–"
                     f"{ms(max(j['service_ms']))}) | floor = dial {ms(o['wall'])} + bootstrap RTT {ms(o['rtt'])} "
                     f"+ 7 × {ms(o['cpu'])} = {ms(floor)} | **{med / floor:.2f}** | ≤ 1.3 |")
        dl = sorted(x for x in j["dials"] if x >= 0)
        if dl:
            lines.append(f"| join | outbound dials the joiner started (its status.json ≤ 5 s after joining), "
                         f"median (min–max) | {median(dl):.0f} ({dl[0]}–{dl[-1]}) | 8 (the bootstrap node + 7 more "
                         f"peers) | {median(dl) / 8:.2f} | — |")
        pm, am, sm = median(j["process_ms"]), median(j["addr_ms"]), median(j["stock_listen_ms"])
        lines.append(f"| join | the same from process spawn (imports, key, database), median (min–max) | "
                     f"{ms(pm)} ({ms(min(j['process_ms']))}–{ms(max(j['process_ms']))}) | "
                     f"— | — | — |")
        lines.append(f"| start-up | process spawn → listen addresses printed, median | {ms(am)} | a stock "
                     f"`new_host` process: spawn → listening, {ms(sm)} | {am / sm:.2f} | ≤ 1 s |")
    if "idle" in r:
        i = r["idle"]
        base = r.get("dht", {}).get("idle_pct")
        base_txt = (f"stock `new_host` + KadDHT (random walk) idle, per host, {r['dht']['n']} in one process: "
                    f"{base:.2f} %" if base is not None else "—")
        ratio = f"{i['median_pct'] / 0.3:.2f} of goal" + (f"; {i['median_pct'] / base:.1f}× stock DHT" if base else "")
        lines.append(f"| idle | CPU per node process, settled, {i['window_s']:.0f} s window, {i['n']} nodes with "
                     f"{i['peers'][0]}–{i['peers'][2]} peers (median {i['peers'][1]:.0f}): median / max "
                     f"(bootstrap node) | **{i['median_pct']:.2f} %** / {i['max_pct']:.2f} % "
                     f"({i['boot_pct']:.2f} %) of a core | {base_txt} | {ratio} | ≤ 0.3 % |")
    if "settle" in r:
        s = r["settle"]
        pin = f", pinned to CPU {args.pin_settle}" if args.pin_settle is not None else ""
        head = (f"| settle | {s['n']} default-config nodes started at once in one process{pin} "
                f"(all services up {s['start_all_s']} s after the first, {s['start_cpu_s']} CPU-s); settled = connections ±5 % "
                f"for 10 s and CPU < {s['threshold_pct']} % of a core |")
        if s.get("settled_after_s") is not None:
            lines.append(f"{head} **{s['settled_after_s']} s** after the last node started "
                         f"({s['settled_after_first_s']} s after the first), "
                         f"{s['cpu_until_settled_s']} CPU-s; {s['settled_conns']:.0f} connections; "
                         f"{args.stay:.0f} s more: {'stayed' if s['stayed'] else '**did not stay**'} "
                         f"({s['stay_conns'][0]}–{s['stay_conns'][1]} conns, {s['stay_cpu_pct']} % CPU); peers "
                         f"per node min {s['peers_min']} / median {s['peers_median']:.0f} | goal 30 s | "
                         f"{s['settled_after_s'] / 30:.2f} | ≤ 30 s, stays |")
        else:
            lines.append(f"{head} **did not settle** in {args.give_up:.0f} s ({s['cpu_until_give_up_s']} CPU-s "
                         f"since the last start); peers per node min {s['peers_min']} / median "
                         f"{s['peers_median']:.0f} / max {s['peers_max']}, {s['nodes_below_3']} nodes below 3 | "
                         f"goal 30 s | > {args.give_up / 30:.1f} | ≤ 30 s, stays |")
    if "dht" in r and r["dht"].get("joins_ms"):
        d = r["dht"]
        dm = median(d["joins_ms"])
        ours = median(r["joins"]["service_ms"]) if "joins" in r else None
        lines.append(f"| dht | stock bootstrap + Kademlia random walk → 8 peers, {d['n']}-host network in one "
                     f"process, median of {len(d['joins_ms'])} | {ms(dm)} | ours (join, above): {ms(ours)} | "
                     f"{'stock / ours ' + format(dm / ours, '.2f') if ours else '-'} | ours faster |")
    if "demo" in r:
        dm, hsc = r["demo"], hs["ours"]["cpu"] if hs else float("nan")
        floor = (args.demo_nodes + 1) * 8 / 2 * hsc / 1000
        lines.append(f"| demo | `prozchain-discovery demo --nodes {args.demo_nodes}`: {dm['joined']}/{dm['nodes']} "
                     f"joined; median / slowest to 8 peers | **{dm['median_s']:.2f} s** / "
                     f"{dm['max_s'] if dm['max_s'] is None else format(dm['max_s'], '.2f')} s | one-core floor = "
                     f"{args.demo_nodes + 1} × 8 / 2 × {ms(hsc)} = {floor:.2f} s | **{dm['median_s'] / floor:.1f}** | "
                     f"≤ 1.5 |")
    if "settle" in r and r["settle"].get("trace"):
        lines += ["", f"Settle trace ({r['settle']['n']} nodes; s after the last start: connections, process CPU "
                  "% over the previous 5 s): "
                  + ", ".join(f"{t}: {k} ({c} %)" for t, k, c in r["settle"]["trace"])]
    for name, err in r.get("errors", {}).items():
        lines += ["", f"**{name} failed**: {err}"]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"
        child_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring for what each part measures.")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="small and short (about two minutes): a smoke test")
    ap.add_argument("--nodes", type=int, help="node processes besides the bootstrap node (default 20; quick 10)")
    ap.add_argument("--joins", type=int, help="fresh joiners, and DHT joins (default 7; quick 3)")
    ap.add_argument("--settle-wait", type=float, help="s after every node joined before measuring (30; quick 5)")
    ap.add_argument("--idle-window", type=float, help="s of CPU measured per node (30; quick 10)")
    ap.add_argument("--settle-nodes", type=int, help="nodes started at once in one process (50; quick 20)")
    ap.add_argument("--give-up", type=float, help="s before the settle part reports 'did not settle' (120; quick 40)")
    ap.add_argument("--stay", type=float, help="s it must stay settled (20; quick 10)")
    ap.add_argument("--pin-settle", metavar="CPU", help="run the settle part under `taskset -c CPU`")
    ap.add_argument("--demo-nodes", type=int, help="nodes of the demo part (30 as `make demo`; quick 10)")
    ap.add_argument("--handshakes", type=int, help="dials per handshake child (15; quick 8), 4 children")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dirs)")
    args = ap.parse_args()
    q = args.quick
    for name, full, quick in (("nodes", 20, 10), ("joins", 7, 3), ("settle_wait", 30.0, 5.0),
                              ("idle_window", 30.0, 10.0), ("settle_nodes", 50, 20), ("give_up", 120.0, 40.0),
                              ("stay", 20.0, 10.0), ("demo_nodes", 30, 10), ("handshakes", 15, 8)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - set(PARTS):
        ap.error(f"--only: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    cmd = "python " + " ".join(shlex.quote(a) for a in ["bench/bench_shipped.py", *sys.argv[1:]])
    root = Path(tempfile.mkdtemp(prefix="bench-shipped-"))
    t_run = time.monotonic()
    r: dict[str, Any] = {"load": os.getloadavg(), "errors": {}}
    say(f"work directory {root}")
    try:
        if parts & {"join", "idle"}:
            net = ProcessNetwork(root / "net")
            try:
                say(f"join/idle: starting a bootstrap node process and {args.nodes} node processes (shipped config)")
                net.start(args.nodes, timeout=180)
                r["net"] = {"built_s": net.built_s}
                say(f"  every node at 8 peers after {net.built_s:.1f} s; settling {args.settle_wait:.0f} s")
                time.sleep(args.settle_wait)
                if "idle" in parts:
                    say(f"idle: measuring every node's CPU over {args.idle_window:.0f} s")
                    r["idle"] = measure_idle(net, args.idle_window)
                if "join" in parts:
                    say("join: handshakes, ours vs stock (4 child processes, alternated)")
                    r["hs"] = measure_handshakes(args.handshakes, net.boot.addr if net.boot else None, 4, root)
                    say(f"join: {args.joins} fresh joiner processes")
                    r["joins"] = measure_joins(net, args.joins, gap=3.0 if not q else 1.5)
            finally:
                stop_all(net.everyone())
        if "demo" in parts and "hs" not in r:
            say("handshakes, ours vs stock (for the demo's floor)")
            r["hs"] = measure_handshakes(args.handshakes, None, 2, root)
        if "settle" in parts:
            idle = r["idle"]["median_pct"] / 100 if "idle" in r else ISSUE_IDLE_PCT / 100
            threshold = min(2 * idle * args.settle_nodes, IDLE_CAP)
            kw = {"n": args.settle_nodes, "give_up": args.give_up, "idle_threshold": threshold,
                  "stable_s": 10.0, "stay_s": args.stay, "workdir": str(root / "settle")}
            say(f"settle: {args.settle_nodes} nodes at once in one process (gives up after {args.give_up:.0f} s)")
            try:
                r["settle"] = run_child(["settle", json.dumps(kw)], timeout=args.give_up + args.stay + 300,
                                        pin=args.pin_settle, log=root / "settle.log")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                r["errors"]["settle"] = str(exc)[:400]
        if "dht" in parts:
            n = args.nodes + 1
            say(f"dht: stock Kademlia network of {n} hosts in one process, {args.joins} joins")
            kw = {"n": n, "joins": args.joins, "settle": 2.0, "window": min(args.idle_window, 15.0)}
            try:
                r["dht"] = run_child(["dht", json.dumps(kw)], timeout=600, log=root / "dht.log") | {"n": n}
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                r["errors"]["dht"] = str(exc)[:400]
        if "demo" in parts:
            say(f"demo: prozchain-discovery demo --nodes {args.demo_nodes}")
            try:
                r["demo"] = run_demo(args.demo_nodes, root / "demo-out", root / "demo.log")
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                r["errors"]["demo"] = str(exc)[:400]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report(r, args, cmd, time.monotonic() - t_run))
    (Path(tempfile.gettempdir()) / "bench-shipped-last.json").write_text(json.dumps(r, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
