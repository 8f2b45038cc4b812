"""A crowd in the NAT lab (issue #16, item 1): hole punching among several NATed nodes at once.

Per trial, with fresh identities (fresh data dirs, keys made here so every bootstrap address is
known before anything starts), every node is started at the same moment as a real
``prozchain-discovery node`` process in the lab (interop/natlab/lab.py):

* two public nodes on ``pub1`` and ``pub2``: ``[relay] serve = "auto"``, each serving STUN
  itself (``[nat] serve_stun_port``; no coturn for the nodes), each bootstrapping from the other;
* NATed nodes ``cone1`` (router "cone"), ``cone3`` ("cone2"), ``sym1`` ("sym"), ``sym2``
  ("sym2"), and with ``--cone2`` also ``cone2`` (behind "cone" with cone1: same NAT); they know
  the two public nodes as bootstrap nodes and STUN servers.

The config is the default one apart from ``[pex] min_peer_age = 0`` and what the lab needs
(network id, bootstrap nodes, STUN servers, STUN served on the public nodes).

A trial ends when every pair is settled (cone<->cone: a direct connection between the routers'
WAN addresses, or a failed hole punch; a pair with a symmetric side: connected, both sides
classified and the hole punch said "not supported" or ended) or after ``--timeout``; then every
node is stopped (SIGTERM, NATed nodes first, then the relays) and its exit code checked. Each
node's stderr (its log, INFO) goes to a file; nothing is read from a pipe.

Reported per trial and pair kind (cone-cone, cone-sym, sym-sym, same-nat): direct or not,
punched on the first attempt, time from the relayed connection to direct (seconds and RTTs of
the lab: ping between routers), time from process start to direct; for symmetric pairs the
punch attempts made and whether each symmetric side was classified symmetric; relay connections
lost (a NATed node logging "no longer using relay ... (disconnected)" while that relay still
runs); ERROR and WARNING lines of every node with the top messages.

Run (root)::

    python -m interop.natlab.crowd --trials 5 --delay-ms 0 --prefix pzc- [--json out.jsonl]
        [--keep-logs DIR] [--timeout 60] [--cone2]

``run_trials(lab, ...)`` is the same from Python (tests/test_crowd_lab.py, bench/bench_crowd_lab.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import PROJECT_ROOT, Lab, node_env

PUBLIC = ("pub1", "pub2")
NATED = ("cone1", "cone3", "sym1", "sym2")
SAME_NAT = "cone2"  # behind router "cone" with cone1
PORT = 4001
STUN_PORT = 3478
NETWORK_ID = "lab-crowd"
STATUS_INTERVAL = 0.5
DRIVER_OUTCOMES = ("direct", "failed", "yielded", "undecided", "reversal")
SYM_QUIET = 3.0  # a symmetric pair connected and classified, no punch running for this long: settled
KINDS = ("cone-cone", "cone-cone-shared", "same-nat", "cone-sym", "sym-sym")

# The node's log format (cli/common.py): "%(asctime)s %(levelname)-7s %(name)s: %(message)s" with
# datefmt "%H:%M:%S" (one-second resolution: precise times come from status.json).
_LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d)(?:,\d+)? (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(\S+): (.*)$")
UNROUTED = "libp2p(unrouted)"
_PEER_ID = re.compile(r"\b(12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})\b")
_PUNCH_DIRECT = re.compile(r"hole punch with (\S+): direct via (\S+) after (\d+) attempt")
_PUNCH_FAILED = re.compile(r"hole punch with (\S+) failed after (\d+) attempt")
_PUNCH_NA = re.compile(r"hole punch with (\S+) not supported")
_RELAY_GONE = re.compile(r"no longer using relay (\S+) \(([^)]*)\)")
_NAT_LINE = re.compile(r"NAT: (\S+), (\S+), external")


# ---- per node -------------------------------------------------------------------------------

@dataclass
class CrowdNode:
    name: str
    data: Path
    peer_id: str
    public_ip: str  # its own, or its router's WAN address
    lan_ip: str
    nat: str  # "none" | "cone" | "symmetric"
    router: str | None
    proc: subprocess.Popen[Any] | None = None
    started_wall: float = 0.0
    stopped_wall: float | None = None
    exit_code: int | None = None

    @property
    def log_path(self) -> Path:
        return self.data / "stderr.txt"

    def status(self) -> dict[str, Any]:
        """status.json, with ``_mtime`` (when the node wrote it, wall clock) added; {} if none."""
        path = self.data / "status.json"
        try:
            mtime = path.stat().st_mtime
            out = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(out, dict):
            return {}
        out["_mtime"] = mtime
        return out


def _make_identity(data: Path) -> str:
    """Create ``data/identity.key`` (a fresh Ed25519 key) and return its peer id."""
    from libp2p.peer.id import ID

    from prozchain_discovery.host import load_or_create_key

    key, _created = load_or_create_key(data / "identity.key")
    return str(ID.from_pubkey(key.public_key))


def node_toml(node: CrowdNode, boots: Sequence[str], stun: Sequence[str], serve_stun: bool,
              quic: bool = False) -> str:
    """The default config, apart from PEX ages and what the lab needs (and, with ``quic``, a
    QUIC listen address beside TCP's)."""
    quoted = ", ".join(f'"{b}"' for b in boots)
    stun_list = ", ".join(f'"{s}"' for s in stun)
    lines = [
        f'network_id = "{NETWORK_ID}"',
        f'listen = ["/ip4/0.0.0.0/tcp/{PORT}"' + (f', "/ip4/0.0.0.0/udp/{PORT}/quic-v1"]' if quic else "]"),
        "[bootstrap]",
        f"bootstrap_nodes = [{quoted}]",
        "[pex]",
        "min_peer_age = 0",
        "[nat]",
        f"stun_servers = [{stun_list}]",
    ]
    if serve_stun:
        lines.append(f"serve_stun_port = {STUN_PORT}")
    lines += ["[relay]", 'serve = "auto"']
    return "\n".join(lines) + "\n"


# ---- logs -----------------------------------------------------------------------------------

@dataclass
class LogLine:
    at: float  # wall clock, whole seconds (the node's asctime, local time of this machine)
    level: str
    logger: str
    message: str


def _parse_time(text: str, near: float) -> float:
    """``HH:MM:SS`` (local time) as the wall-clock second closest to ``near``."""
    day = dt.datetime.fromtimestamp(near).date()
    t = dt.datetime.combine(day, dt.datetime.strptime(text, "%H:%M:%S").time()).timestamp()
    if t - near > 43200:
        t -= 86400
    elif near - t > 43200:
        t += 86400
    return t


def read_log(path: Path, near: float) -> list[LogLine]:
    """A node's log records. Traceback lines are appended to their record. A line in neither
    form is a record of py-libp2p's that reached Python's last-resort handler (which prints
    WARNING and above as the bare message): py-libp2p's import clears the handlers of its
    ``libp2p`` logger, so a router installed before that import is gone. Such a line is counted
    as ERROR (every one seen so far comes from ``logger.error``), at the time of the record
    before it."""
    out: list[LogLine] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    in_tb = False
    last_at = near
    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = _LOG_LINE.match(raw)
        if m:
            last_at = _parse_time(m.group(1), near)
            out.append(LogLine(last_at, m.group(2), m.group(3), m.group(4)))
            in_tb = False
            continue
        starts_tb = raw.lstrip(" +|").startswith(("Traceback (most recent call last)", "Exception Group Traceback"))
        chained = raw.startswith(("The above exception was the direct cause",
                                  "During handling of the above exception"))
        if out and (starts_tb or chained or raw[:1] in (" ", "\t", "|", "+")):  # a traceback, a multi-line message
            in_tb = in_tb or starts_tb or chained
            out[-1].message += "\n" + raw
            continue
        if in_tb and out:  # the exception line that ends a traceback
            out[-1].message += "\n" + raw
            in_tb = False
            continue
        out.append(LogLine(last_at, "ERROR", UNROUTED, raw))
    return out


def template(message: str) -> str:
    """A log message with its variable parts (peer ids, addresses, numbers) masked, to group by."""
    first = message.split("\n", 1)[0]
    t = _PEER_ID.sub("<peer>", first)
    t = re.sub(r"/ip4/[0-9.]+/tcp/\d+", "<addr>", t)
    t = re.sub(r"\b\d+(\.\d+)*\b", "N", t)
    return t[:200]


# ---- RTT --------------------------------------------------------------------------------------

def measure_rtt(lab: Lab, count: int = 5) -> float:
    """Median ping RTT (seconds) from cone1 to pub2: every path between two lab hosts crosses the
    core once, so this is the RTT between two NATed nodes too (routers drop pings to their WAN)."""
    out = lab.run("cone1", ["ping", "-c", str(count), "-i", "0.2", "-W", "2", lab.hosts["pub2"].ip],
                  capture_output=True, text=True, timeout=30)
    rtts = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out.stdout)]
    if not rtts:
        raise RuntimeError(f"no ping answer from cone1 to pub2: {out.stdout[-500:]}")
    return statistics.median(rtts) / 1000


# ---- pairs ------------------------------------------------------------------------------------

def pair_kind(a: CrowdNode, b: CrowdNode, shared: Collection[str] = ()) -> str:
    """``shared``: routers with more than one crowd node behind them."""
    if a.router is not None and a.router == b.router:
        return "same-nat"
    nats = {a.nat, b.nat}
    if nats == {"cone"}:
        # Two nodes behind one NAT, both on port 4001: only one of them can have the mapping
        # WAN:4001 towards a given peer, so the other's predicted address is not its own.
        return "cone-cone-shared" if a.router in shared or b.router in shared else "cone-cone"
    if nats == {"symmetric"}:
        return "sym-sym"
    return "cone-sym"


def _peer_entries(st: dict[str, Any], peer_id: str) -> list[dict[str, Any]]:
    return [p for p in st.get("peers", []) if isinstance(p, dict) and p.get("peer_id") == peer_id]


def _since(st: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """When a connection in a snapshot opened (wall clock): the file's time minus its age."""
    try:
        return float(st["_mtime"]) - float(entry["for"])
    except (KeyError, TypeError, ValueError):
        return None


def _direct(st: dict[str, Any], other: CrowdNode, same_nat: bool) -> tuple[str, float | None] | None:
    """A direct (not relayed) connection to ``other`` in a status snapshot, at its router's WAN
    address (or its LAN address, for a peer behind the same NAT): (address, opened at)."""
    want = other.lan_ip if same_nat else other.public_ip
    for p in _peer_entries(st, other.peer_id):
        addr = str(p.get("addr") or "")
        if "p2p-circuit" not in addr and f"/ip4/{want}/" in addr:
            return addr, _since(st, p)
    return None


def _relayed(st: dict[str, Any], other: CrowdNode) -> tuple[str, float | None, str] | None:
    """A relayed connection to ``other``: (address, opened at, direction "in"/"out")."""
    for p in _peer_entries(st, other.peer_id):
        addr = str(p.get("addr") or "")
        if "p2p-circuit" in addr:
            return addr, _since(st, p), str(p.get("direction", ""))
    return None


def _hp_entry(st: dict[str, Any], other: CrowdNode) -> dict[str, Any]:
    entry = st.get("holepunch", {}).get("peers", {}).get(other.peer_id)
    return entry if isinstance(entry, dict) else {}


def _nat_type(st: dict[str, Any]) -> str:
    return str(st.get("nat", {}).get("nat_type", "unknown"))


@dataclass
class PairWatch:
    """What the harness saw of one pair while polling (times are wall clock)."""

    a: CrowdNode
    b: CrowdNode
    kind: str
    relayed_at: float | None = None
    direct_at: float | None = None
    direct_addr: str | None = None
    # Two relayed connections between one pair (each side dialed the other through a relay): both
    # sides list theirs with the same direction, or a side lists an outbound one at an address in
    # the listening side's form (``/p2p/<itself>/p2p-circuit/...``: direction from one
    # connection, address from the other).
    two_relayed_seen: bool = False
    settled_at: float | None = None
    quiet_since: float | None = None  # a symmetric pair: connected, classified, no session running

    def observe(self, sa: dict[str, Any], sb: dict[str, Any], now: float) -> None:
        same = self.kind == "same-nat"
        ra, rb = _relayed(sa, self.b), _relayed(sb, self.a)
        if ra and rb and ra[2] == rb[2]:
            self.two_relayed_seen = True
        for st, r in ((sa, ra), (sb, rb)):
            if r and r[2] == "out" and f"/p2p/{st.get('peer_id')}/p2p-circuit" in r[0]:
                self.two_relayed_seen = True
        if (ra or rb) and self.relayed_at is None:
            self.relayed_at = min((t for x in (ra, rb) if x for t in (x[1],) if t is not None), default=now)
        da, db = _direct(sa, self.b, same), _direct(sb, self.a, same)
        if (da or db) and self.direct_at is None:
            self.direct_at = min((t for x in (da, db) if x for t in (x[1],) if t is not None), default=now)
            self.direct_addr = (da or db or ("", None))[0]
        if self.settled_at is None and self.is_settled(sa, sb, now):
            self.settled_at = now

    def is_settled(self, sa: dict[str, Any], sb: dict[str, Any], now: float) -> bool:
        if self.direct_at is not None:
            return True
        ha, hb = _hp_entry(sa, self.b), _hp_entry(sb, self.a)
        ended = any(h.get("result") in ("failed", "direct") or h.get("state") == "not_supported"
                    for h in (ha, hb))
        running = any(h.get("state") == "running" for h in (ha, hb))
        if self.kind in ("cone-cone", "cone-cone-shared", "same-nat"):
            return ended and not running
        # a symmetric pair: connected, every symmetric side classified, the punch answered
        connected = bool(_peer_entries(sa, self.b.peer_id) or _peer_entries(sb, self.a.peer_id))
        classified = all(_nat_type(s) == "symmetric" for s, n in ((sa, self.a), (sb, self.b))
                         if n.nat == "symmetric")
        if not (connected and classified and not running):
            self.quiet_since = None
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        # No verdict may come at all (neither side ran a session): quiet for SYM_QUIET is settled.
        return ended or now - self.quiet_since >= SYM_QUIET


# ---- one trial -------------------------------------------------------------------------------

@dataclass
class TrialConfig:
    delay_ms: float = 0.0
    timeout: float = 60.0
    cone2: bool = False
    keep_logs: Path | None = None
    rebuild: bool = True  # rebuild the lab (fresh routers, no conntrack state) before each trial
    quic: bool = False  # every node also listens on QUIC (/udp/4001/quic-v1)


@dataclass
class Trial:
    index: int
    nodes: dict[str, CrowdNode] = field(default_factory=dict)
    pairs: list[PairWatch] = field(default_factory=list)
    started_wall: float = 0.0
    ended_wall: float = 0.0
    settled: bool = False
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # last status seen while running


def _pairs(nodes: dict[str, CrowdNode]) -> list[PairWatch]:
    nated = [n for n in nodes.values() if n.nat != "none"]
    per_router = Counter(n.router for n in nated)
    shared = {r for r, c in per_router.items() if r is not None and c > 1}
    out = []
    for i, a in enumerate(nated):
        for b in nated[i + 1:]:
            out.append(PairWatch(a, b, pair_kind(a, b, shared)))
    return out


def _start_nodes(lab: Lab, trial_dir: Path, cfg: TrialConfig) -> dict[str, CrowdNode]:
    names = list(PUBLIC) + list(NATED) + ([SAME_NAT] if cfg.cone2 else [])
    nodes: dict[str, CrowdNode] = {}
    for name in names:
        host = lab.hosts[name]
        data = trial_dir / name
        data.mkdir(parents=True)
        nodes[name] = CrowdNode(name, data, _make_identity(data), host.public_ip, host.ip, host.nat, host.router)
    addr = {n: f"/ip4/{lab.hosts[n].ip}/tcp/{PORT}/p2p/{nodes[n].peer_id}" for n in PUBLIC}
    stun = {n: f"{lab.hosts[n].ip}:{STUN_PORT}" for n in PUBLIC}
    for name, node in nodes.items():
        if node.nat == "none":
            others = [p for p in PUBLIC if p != name]
            toml = node_toml(node, [addr[p] for p in others], [stun[p] for p in others], serve_stun=True,
                             quic=cfg.quic)
        else:
            toml = node_toml(node, [addr[p] for p in PUBLIC], [stun[p] for p in PUBLIC], serve_stun=False,
                             quic=cfg.quic)
        (node.data / "node.toml").write_text(toml)
    # Everything is prepared: start them all at once.
    for node in nodes.values():
        argv = [sys.executable, "-m", "prozchain_discovery", "node", "--config", str(node.data / "node.toml"),
                "--data-dir", str(node.data), "--status-interval", str(STATUS_INTERVAL), "--log-level", "INFO"]
        with open(node.data / "stdout.txt", "w") as out, open(node.log_path, "w") as err:
            node.started_wall = time.time()
            node.proc = lab.spawn(node.name, argv, env=node_env(), stdout=out, stderr=err, cwd=str(PROJECT_ROOT))
    return nodes


def _stop(nodes: Iterable[CrowdNode], grace: float = 15.0) -> None:
    todo = [n for n in nodes if n.proc is not None]
    for n in todo:
        assert n.proc is not None
        n.stopped_wall = time.time()
        if n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for n in todo:
        assert n.proc is not None
        try:
            n.exit_code = n.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait()
            n.exit_code = -9  # did not stop within the grace period
        n.proc = None


def run_trial(lab: Lab, index: int, cfg: TrialConfig, work: Path,
              progress: Callable[[str], None] | None = None, rebuild: bool = False) -> Trial:
    """One trial; the lab must be up (rebuilt first when ``rebuild``)."""
    if rebuild:
        lab.up(delay_ms=cfg.delay_ms)
    trial_dir = work / f"trial-{index:03d}"
    trial = Trial(index)
    trial.started_wall = time.time()
    trial.nodes = _start_nodes(lab, trial_dir, cfg)
    trial.pairs = _pairs(trial.nodes)
    deadline = time.monotonic() + cfg.timeout
    try:
        while time.monotonic() < deadline:
            now = time.time()
            snaps = {n: node.status() for n, node in trial.nodes.items()}
            for n, snap in snaps.items():
                if snap:
                    trial.last[n] = snap
                else:
                    snaps[n] = trial.last.get(n, {})
            for pw in trial.pairs:
                pw.observe(snaps[pw.a.name], snaps[pw.b.name], now)
            dead = [n.name for n in trial.nodes.values() if n.proc is not None and n.proc.poll() is not None]
            if dead:
                if progress:
                    progress(f"trial {index}: node(s) exited early: {', '.join(dead)}")
                break
            if all(pw.settled_at is not None for pw in trial.pairs):
                trial.settled = True
                break
            time.sleep(0.2)
    finally:
        trial.ended_wall = time.time()
        # NATed nodes first: their relays still run while they stop (a reservation lost then
        # is not a lost relay connection); the log lines after the stop are not counted anyway.
        _stop([n for n in trial.nodes.values() if n.nat != "none"])
        _stop([n for n in trial.nodes.values() if n.nat == "none"])
    return trial


# ---- analysis ------------------------------------------------------------------------------

def _ts(x: float | None, base: float) -> float | None:
    return None if x is None else round(x - base, 3)


def analyse(trial: Trial, rtt: float, delay_ms: float) -> dict[str, Any]:
    """One trial as a JSON-able dict: pairs, relay losses, log levels, exit codes."""
    nodes = trial.nodes
    by_id = {n.peer_id: n for n in nodes.values()}
    start = min(n.started_wall for n in nodes.values())
    logs = {name: read_log(n.log_path, start) for name, n in nodes.items()}
    finals = {name: trial.last.get(name, {}) for name in nodes}

    def before_stop(name: str) -> list[LogLine]:
        stop = nodes[name].stopped_wall or trial.ended_wall
        return [ln for ln in logs[name] if ln.at < stop]

    # classification times (first "NAT: <type>, ..." line of a kind other than unknown)
    classified_at: dict[str, float | None] = {}
    for name in nodes:
        classified_at[name] = next((ln.at for ln in logs[name] if (m := _NAT_LINE.search(ln.message))
                                    and m.group(1) != "unknown"), None)

    pairs_out = []
    for pw in trial.pairs:
        a, b = pw.a, pw.b
        sessions: list[dict[str, Any]] = []  # at, side, outcome, attempts, remote
        for side, other in ((a, b), (b, a)):
            for ln in before_stop(side.name):
                if other.peer_id not in ln.message:
                    continue
                if m := _PUNCH_DIRECT.search(ln.message):
                    sessions.append({"at": ln.at, "side": side.name, "outcome": "direct",
                                     "attempts": int(m.group(3)), "remote": m.group(2)})
                elif m := _PUNCH_FAILED.search(ln.message):
                    sessions.append({"at": ln.at, "side": side.name, "outcome": "failed",
                                     "attempts": int(m.group(2))})
                elif _PUNCH_NA.search(ln.message):
                    sessions.append({"at": ln.at, "side": side.name, "outcome": "not_supported", "attempts": 0})
        sessions.sort(key=lambda s: s["at"])
        sa, sb = finals[a.name], finals[b.name]
        hp = {a.name: _hp_entry(sa, b), b.name: _hp_entry(sb, a)}
        direct = pw.direct_at is not None
        first = sessions[0] if sessions else None
        first_attempt = bool(direct and first is not None and first["outcome"] == "direct" and first["attempts"] == 1)
        direct_at = pw.direct_at
        direct_log = next((s["at"] for s in sessions if s["outcome"] == "direct"), None)
        if direct_log is not None and (direct_at is None or direct_log < direct_at):
            direct_at = direct_log
        ttd_session = next((h.get("time_to_direct_s") for h in hp.values() if h.get("result") == "direct"
                            and h.get("time_to_direct_s") is not None), None)
        relayed_to_direct = None
        if direct and pw.relayed_at is not None and direct_at is not None:
            relayed_to_direct = max(0.0, direct_at - pw.relayed_at)
        ttd = ttd_session if ttd_session is not None else relayed_to_direct
        sym_sides = [n for n in (a, b) if n.nat == "symmetric"]
        sym_classified = {n.name: _nat_type(finals[n.name]) == "symmetric" for n in sym_sides}
        # punch attempts on a symmetric pair that ended after every symmetric side was classified
        cls_times = [classified_at[n.name] for n in sym_sides]
        all_cls = None if not cls_times or any(t is None for t in cls_times) \
            else max(t for t in cls_times if t is not None)
        attempts_total = sum(s["attempts"] for s in sessions)
        attempts_after = sum(s["attempts"] for s in sessions if all_cls is not None and s["at"] >= all_cls)
        pairs_out.append({
            "a": a.name, "b": b.name, "kind": pw.kind,
            "met": pw.relayed_at is not None or direct,
            "direct": direct, "direct_addr": pw.direct_addr,
            "first_attempt": first_attempt,
            "sessions": [{**s, "at": _ts(s["at"], start)} for s in sessions],
            "two_relayed_seen": pw.two_relayed_seen,
            # a side drove if it logged a session's end, or its holepunch book shows one (a session
            # that yielded to the peer's is not logged at INFO)
            "drivers": sorted({s["side"] for s in sessions if s["outcome"] != "not_supported"}
                              | {n for n, h in hp.items() if h.get("last") in DRIVER_OUTCOMES}),
            "yielded": sorted(n for n, h in hp.items() if h.get("last") == "yielded"),
            "relayed_at_s": _ts(pw.relayed_at, start),
            "relayed_addrs": {a.name: (_relayed(sa, b) or ("",))[0], b.name: (_relayed(sb, a) or ("",))[0]},
            "direct_at_s": _ts(direct_at, start),
            "time_to_direct_s": None if ttd is None else round(ttd, 3),
            "time_to_direct_rtt": None if ttd is None or rtt <= 0 else round(ttd / rtt, 1),
            "relayed_to_direct_polled_s": None if relayed_to_direct is None else round(relayed_to_direct, 3),
            "start_to_direct_s": _ts(direct_at, start),
            "punch_attempts": attempts_total if sym_sides else None,
            "punch_attempts_once_classified": attempts_after if sym_sides else None,
            "sym_classified": sym_classified or None,
            "holepunch": hp,
            "settled_s": _ts(pw.settled_at, start),
        })

    # relay connections lost: a NATed node's "no longer using relay X (disconnected)" before it
    # was stopped, while relay X's process still ran (public nodes are stopped last)
    relay_lost = []
    releases = []
    for name, n in nodes.items():
        if n.nat == "none":
            continue
        for ln in before_stop(name):
            m = _RELAY_GONE.search(ln.message)
            if not m:
                continue
            relay = by_id.get(m.group(1))
            entry = {"node": name, "relay": relay.name if relay else m.group(1), "reason": m.group(2),
                     "at_s": _ts(ln.at, start)}
            releases.append(entry)
            relay_running = relay is not None and (relay.stopped_wall is None or ln.at < relay.stopped_wall)
            if m.group(2) == "disconnected" and relay_running:
                relay_lost.append(entry)

    levels: dict[str, dict[str, int]] = {}
    top: dict[str, Counter[str]] = {"ERROR": Counter(), "WARNING": Counter()}
    examples: dict[str, str] = {}
    for name in nodes:
        cnt = {"ERROR": 0, "WARNING": 0, "ERROR_at_stop": 0, "WARNING_at_stop": 0}
        stop = nodes[name].stopped_wall or trial.ended_wall
        for ln in logs[name]:
            if ln.level not in ("ERROR", "CRITICAL", "WARNING"):
                continue
            lvl = "WARNING" if ln.level == "WARNING" else "ERROR"
            if ln.at >= stop:
                cnt[f"{lvl}_at_stop"] += 1
                continue
            cnt[lvl] += 1
            key = f"{name}: {ln.logger}: {template(ln.message)}"
            top[lvl][key] += 1
            examples.setdefault(key, ln.message.split("\n", 1)[0][:400])
        levels[name] = cnt

    return {
        "trial": trial.index,
        "delay_ms": delay_ms,
        "rtt_ms": round(rtt * 1000, 3),
        "settled": trial.settled,
        "duration_s": round(trial.ended_wall - trial.started_wall, 2),
        "peer_ids": {name: n.peer_id for name, n in nodes.items()},
        "nat_types": {name: _nat_type(finals[name]) for name in nodes},
        "classified_at_s": {name: _ts(t, start) for name, t in classified_at.items()},
        "relay_serving": {name: bool(finals[name].get("relay_server", {}).get("serving"))
                          for name in nodes if nodes[name].nat == "none"},
        # circuits the relays carried at their last status while running, against the NATed pairs
        # connected through a relay then: more circuits than pairs = a pair with two circuits
        "relay_circuits": sum(int(finals[name].get("relay_server", {}).get("circuits_open", 0) or 0)
                              for name in nodes if nodes[name].nat == "none"),
        "relayed_pairs": sum(1 for pw in trial.pairs
                             if _relayed(finals[pw.a.name], pw.b) or _relayed(finals[pw.b.name], pw.a)),
        "reservations": {name: finals[name].get("autorelay", {}).get("circuit_addrs", [])
                         for name in nodes if nodes[name].nat != "none"},
        "exit_codes": {name: n.exit_code for name, n in nodes.items()},
        "metrics": {name: {k: v for k, v in finals[name].get("metrics", {}).items()
                           if k.startswith(("holepunch", "autorelay", "relay"))} for name in nodes},
        "pairs": pairs_out,
        "relay_lost": relay_lost,
        "relay_releases": releases,
        "log_levels": levels,
        "errors": sum(c["ERROR"] for c in levels.values()),
        "warnings": sum(c["WARNING"] for c in levels.values()),
        "errors_at_stop": sum(c["ERROR_at_stop"] for c in levels.values()),
        "top_errors": [{"count": c, "what": k, "example": examples[k]} for k, c in top["ERROR"].most_common(8)],
        "top_warnings": [{"count": c, "what": k, "example": examples[k]} for k, c in top["WARNING"].most_common(8)],
    }


# ---- many trials -------------------------------------------------------------------------------

def run_trials(lab: Lab, trials: int, cfg: TrialConfig, *, json_out: Path | None = None,
               progress: Callable[[str], None] | None = None,
               on_trial: Callable[[dict[str, Any]], None] | None = None,
               stop_at: float | None = None) -> list[dict[str, Any]]:
    """``trials`` trials in ``lab``; returns their analyses (and appends each to ``json_out``).
    With ``stop_at`` (wall clock), no trial starts after it (the first always runs)."""
    results: list[dict[str, Any]] = []
    work_ctx: contextlib.AbstractContextManager[str]
    if cfg.keep_logs is not None:
        cfg.keep_logs.mkdir(parents=True, exist_ok=True)
        work_ctx = contextlib.nullcontext(str(cfg.keep_logs))
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="crowd-")
    with work_ctx as work_s:
        work = Path(work_s)
        if cfg.rebuild:
            lab.up(delay_ms=cfg.delay_ms)
        elif lab.delay_ms != cfg.delay_ms:
            lab.set_delay(cfg.delay_ms)
        rtt = measure_rtt(lab)
        for i in range(trials):
            if stop_at is not None and i > 0 and time.time() >= stop_at:
                if progress:
                    progress(f"stopping after {i} trials: out of time")
                break
            trial = run_trial(lab, i, cfg, work, progress, rebuild=cfg.rebuild and i > 0)
            res = analyse(trial, rtt, cfg.delay_ms)
            results.append(res)
            if json_out is not None:
                with open(json_out, "a") as f:
                    f.write(json.dumps(res) + "\n")
            if progress:
                progress(trial_line(res))
            if on_trial:
                on_trial(res)
            if cfg.keep_logs is None:
                shutil.rmtree(work / f"trial-{i:03d}", ignore_errors=True)
    return results


# ---- reporting ----------------------------------------------------------------------------------

def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f} % ({n}/{d})" if d else "n/a"


def _quantile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def trial_line(res: dict[str, Any]) -> str:
    parts = [f"trial {res['trial']:3d} ({res['duration_s']:5.1f} s{'' if res['settled'] else ', TIMEOUT'}):"]
    for kind in KINDS:
        ps = [p for p in res["pairs"] if p["kind"] == kind]
        if not ps:
            continue
        if kind in ("cone-cone", "cone-cone-shared", "same-nat"):
            d = sum(p["direct"] for p in ps)
            f1 = sum(p["first_attempt"] for p in ps)
            parts.append(f"{kind} direct {d}/{len(ps)} first {f1}")
        else:
            att = sum(p["punch_attempts_once_classified"] or 0 for p in ps)
            dr = sum(p["direct"] for p in ps)
            parts.append(f"{kind} punched-once-classified {att} direct {dr}/{len(ps)}")
    parts.append(f"relay lost {len(res['relay_lost'])}")
    parts.append(f"ERROR {res['errors']} WARNING {res['warnings']}")
    bad_exit = {k: v for k, v in res["exit_codes"].items() if v != 0}
    if bad_exit:
        parts.append(f"exit {bad_exit}")
    for p in res["pairs"]:  # why a cone pair is not direct, in one line
        if p["kind"].startswith("cone-cone") and not p["direct"]:
            parts.append(f"\n    {p['a']}<->{p['b']} NOT direct: met {p['met']}, drivers {p.get('drivers')}, "
                         f"yielded {p.get('yielded')}, two relayed conns {p.get('two_relayed_seen')}, "
                         f"sessions {[(x['side'], x['outcome'], x['attempts']) for x in p['sessions']]}")
    return " ".join(parts)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates over trials, per pair kind."""
    out: dict[str, Any] = {"trials": len(results), "kinds": {}}
    for kind in KINDS:
        ps = [p for r in results for p in r["pairs"] if p["kind"] == kind]
        if not ps:
            continue
        direct = [p for p in ps if p["direct"]]
        ttd = [p["time_to_direct_s"] for p in direct if p["time_to_direct_s"] is not None]
        ttd_rtt = [p["time_to_direct_rtt"] for p in direct if p["time_to_direct_rtt"] is not None]
        s2d = [p["start_to_direct_s"] for p in direct if p["start_to_direct_s"] is not None]
        k: dict[str, Any] = {
            "pairs": len(ps), "met": sum(p["met"] for p in ps), "direct": len(direct),
            "first_attempt": sum(p["first_attempt"] for p in ps),
            "dual_drivers": sum(len(p.get("drivers", [])) > 1 for p in ps),
            "two_relayed": sum(p.get("two_relayed_seen", False) for p in ps),
            "ttd_median_s": statistics.median(ttd) if ttd else None, "ttd_p90_s": _quantile(ttd, 0.9),
            "ttd_median_rtt": statistics.median(ttd_rtt) if ttd_rtt else None,
            "ttd_p90_rtt": _quantile(ttd_rtt, 0.9),
            "start_to_direct_median_s": statistics.median(s2d) if s2d else None,
            "start_to_direct_p90_s": _quantile(s2d, 0.9),
        }
        if kind in ("cone-sym", "sym-sym"):
            k["punch_attempts"] = sum(p["punch_attempts"] or 0 for p in ps)
            k["punch_attempts_once_classified"] = sum(p["punch_attempts_once_classified"] or 0 for p in ps)
            k["pairs_punched_once_classified"] = sum(bool(p["punch_attempts_once_classified"]) for p in ps)
            sides = [v for p in ps for v in (p["sym_classified"] or {}).values()]
            k["sym_sides_classified"] = f"{sum(sides)}/{len(sides)}"
        out["kinds"][kind] = k
    out["extra_circuits"] = sum(max(0, r.get("relay_circuits", 0) - r.get("relayed_pairs", 0)) for r in results)
    out["trials_with_extra_circuits"] = sum(r.get("relay_circuits", 0) > r.get("relayed_pairs", 0) for r in results)
    out["relay_lost"] = sum(len(r["relay_lost"]) for r in results)
    out["trials_with_relay_lost"] = sum(bool(r["relay_lost"]) for r in results)
    errs = [r["errors"] for r in results]
    out["errors_per_trial_median"] = statistics.median(errs) if errs else None
    out["errors_per_trial_max"] = max(errs) if errs else None
    out["errors_total"] = sum(errs)
    out["warnings_total"] = sum(r["warnings"] for r in results)
    out["trials_timed_out"] = sum(not r["settled"] for r in results)
    out["bad_exits"] = sum(1 for r in results for v in r["exit_codes"].values() if v != 0)
    top_e: Counter[str] = Counter()
    top_w: Counter[str] = Counter()
    ex: dict[str, str] = {}
    for r in results:
        for e in r["top_errors"]:
            top_e[e["what"]] += e["count"]
            ex.setdefault(e["what"], e["example"])
        for e in r["top_warnings"]:
            top_w[e["what"]] += e["count"]
            ex.setdefault(e["what"], e["example"])
    out["top_errors"] = [{"count": c, "what": k, "example": ex[k]} for k, c in top_e.most_common(10)]
    out["top_warnings"] = [{"count": c, "what": k, "example": ex[k]} for k, c in top_w.most_common(10)]
    return out


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def format_summary(s: dict[str, Any], delay_ms: float, rtt_ms: float | None = None) -> str:
    lines = [f"NAT lab crowd, {delay_ms:g} ms one-way delay"
             + (f" (router-to-router ping RTT {rtt_ms:.2f} ms)" if rtt_ms is not None else "")
             + f", {s['trials']} trials ({s['trials_timed_out']} hit the timeout)", "",
             "| pair kind | pairs | met | direct | first attempt | both sides drove / two relayed conns | time to direct "
             "median / p90 (s) | (RTTs) | start -> direct median / p90 (s) | punched once classified |",
             # a pair kind's "time to direct" is the driver's own (session start -> direct), or the
             # relayed connection's opening -> the direct one's (status.json) when it has none
             "|---|---|---|---|---|---|---|---|---|---|"]
    def rtts(k: dict[str, Any]) -> str:  # at 0 ms the RTT is ~0.1 ms: RTTs say nothing there
        if rtt_ms is not None and rtt_ms < 1:
            return "-"
        return f"{_f(k['ttd_median_rtt'], '.1f')} / {_f(k['ttd_p90_rtt'], '.1f')}"

    for kind, k in s["kinds"].items():
        punched = (f"{k['punch_attempts_once_classified']} attempts in {k['pairs_punched_once_classified']} pairs "
                   f"(all attempts {k['punch_attempts']}); sym sides classified {k['sym_sides_classified']}"
                   if "punch_attempts" in k else "")
        lines.append(
            f"| {kind} | {k['pairs']} | {k['met']} | {_pct(k['direct'], k['pairs'])} | "
            f"{_pct(k['first_attempt'], k['pairs'])} | {k['dual_drivers']} / {k.get('two_relayed', 0)} | "
            f"{_f(k['ttd_median_s'])} / {_f(k['ttd_p90_s'])} | {rtts(k)} | {_f(k['start_to_direct_median_s'])} / "
            f"{_f(k['start_to_direct_p90_s'])} | {punched} |")
    lines += ["",
              f"relay connections lost: {s['relay_lost']} (in {s['trials_with_relay_lost']} trials); "
              f"circuits on the relays beyond one per relayed pair, at the end: {s.get('extra_circuits', 0)} "
              f"(in {s.get('trials_with_extra_circuits', 0)} trials); "
              f"ERROR lines per trial: median {_f(s['errors_per_trial_median'], 'g')}, "
              f"max {_f(s['errors_per_trial_max'], 'g')}, total {s['errors_total']}; WARNING lines total "
              f"{s['warnings_total']}; nodes with a non-zero exit code: {s['bad_exits']}"]
    for lvl in ("errors", "warnings"):
        if s[f"top_{lvl}"]:
            lines.append(f"top {lvl[:-1].upper()} messages:")
            for e in s[f"top_{lvl}"]:
                lines.append(f"  {e['count']:5d}  {e['what']}")
                lines.append(f"         e.g. {e['example'][:300]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m interop.natlab.crowd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--prefix", default="pzc-", help="the lab's namespace prefix (default pzc-)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a trial may take to settle")
    ap.add_argument("--json", type=Path, help="append one JSON line per trial to this file")
    ap.add_argument("--keep-logs", type=Path, help="keep every node's data dir and log under DIR/trial-NNN/")
    ap.add_argument("--cone2", action="store_true",
                    help="add cone2, a second node behind router 'cone' with cone1 (same NAT, same port)")
    ap.add_argument("--reuse-lab", action="store_true",
                    help="build the lab once, not before every trial (routers keep conntrack state)")
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    ap.add_argument("--quic", action="store_true", help="every node also listens on /udp/4001/quic-v1")
    ap.add_argument("--tcp-syn-drop", action="store_true",
                    help="cone routers drop inbound bare TCP SYNs (no TCP simultaneous open)")
    args = ap.parse_args(argv)
    if args.prefix == "pzl-":
        print("note: pzl- is the test suite's lab prefix", file=sys.stderr)
    lab = Lab(prefix=args.prefix, tcp_syn_drop=args.tcp_syn_drop)
    cfg = TrialConfig(delay_ms=args.delay_ms, timeout=args.timeout, cone2=args.cone2,
                      keep_logs=args.keep_logs, rebuild=not args.reuse_lab, quic=args.quic)
    if args.json is not None and args.json.exists():
        args.json.unlink()
    with lab.locked(timeout=1800):
        try:
            results = run_trials(lab, args.trials, cfg, json_out=args.json,
                                 progress=lambda m: print(m, file=sys.stderr, flush=True))
        finally:
            if not args.keep_lab:
                lab.down()
    summary = summarize(results)
    rtt = results[0]["rtt_ms"] if results else None
    print(format_summary(summary, args.delay_ms, rtt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
