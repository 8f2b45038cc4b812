"""Node processes for the interop scripts: py nodes (``python -m prozchain_discovery node``), js
nodes (``node interop/js/node.mjs``) and the py helpers under ``interop/``.

Each process's stdout is read by a daemon thread: py nodes print their listen addresses, js
nodes print JSON lines (interop/js/node.mjs). A py node's state is read from its
``status.json`` (written every ``status_interval``) and, after it stopped, from its peer
database (``peers.sqlite``: who told it about each peer). Plain threads and ``subprocess``
rather than trio: the script only waits on processes and files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "JS_DIR",
    "NodeProc",
    "PyNode",
    "JsNode",
    "HelperProc",
    "py_config",
    "npm_ci",
    "node_available",
    "InteropError",
]

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "interop" / "js"
MAX_EVENTS = 5000  # JSON lines kept per js process


class InteropError(RuntimeError):
    """The interop setup itself failed (no node, npm ci failed, a process did not start)."""


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def npm_ci(js_dir: Path = JS_DIR, *, timeout: float = 600.0) -> bool:
    """``npm ci`` in ``js_dir`` unless node_modules is newer than package-lock.json.

    Returns True if it ran. ``npm ci`` writes ``node_modules/.package-lock.json`` last, so its
    mtime says whether the install finished after the lock file last changed.
    """
    lock = js_dir / "package-lock.json"
    stamp = js_dir / "node_modules" / ".package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return False
    if not node_available():
        raise InteropError("node and npm are needed: install Node.js 20 (e.g. apt-get install nodejs npm)")
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=js_dir, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise InteropError(f"npm ci in {js_dir} failed: {proc.stderr.strip()[-800:]}")
    return True


def py_config(
    path: Path,
    *,
    network_id: str,
    min_peers: int,
    answer: int,
    bootstrap_node: bool = False,
    exchange_interval: float = 10.0,
    quic: bool = False,
) -> Path:
    """A TOML config for a loopback py node (the demo's short intervals: PEX within seconds);
    with ``quic`` it listens on QUIC too (TCP first: that is the address printed first)."""
    target = 0 if bootstrap_node else min_peers
    listen = '"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"' if quic else '"/ip4/127.0.0.1/tcp/0"'
    path.write_text(
        f'network_id = "{network_id}"\n'
        f"listen = [{listen}]\n"
        "status_interval = 0.5\n"
        "[bootstrap]\n"
        f"min_peers_for_startup = {min_peers}\n"
        "check_interval = 1.0\n"
        "dial_timeout = 5.0\n"
        "[pex]\n"
        "min_peer_age = 0.0\n"
        f"exchange_interval = {exchange_interval}\n"
        "first_request_delay = 0.05\n"
        # A bootstrap node answers PEX as sparingly as bootstrap requests: the spreading is PEX's
        # work between the nodes, not the bootstrap node's.
        + (f"max_peers_per_exchange = {answer}\n" if bootstrap_node else "")
        + "[peerdb]\n"
        f"target_outbound = {target}\n"
        "feeler_interval = 30.0\n"
        "flush_interval = 1.0\n"
        "[server]\n"
        f"max_bootstrap_answer = {answer}\n"
        f"max_bootstrap_answer_as_bootstrap_node = {answer}\n"
    )
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"  # a loopback run never dials out
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class NodeProc:
    """One child process and what its stdout said."""

    name: str
    impl: str  # "py" or "js"
    argv: list[str]
    workdir: Path
    popen: subprocess.Popen[str] | None = None
    spawned_at: float = 0.0
    lines: list[str] = field(default_factory=list)
    addr: str | None = None
    peer_id: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stderr: Any = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawned_at = time.monotonic()
        self._stderr = open(self.workdir / "stderr.log", "w")  # noqa: SIM115 (closed in wait())
        self.popen = subprocess.Popen(
            self.argv, cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1,
        )
        threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            with self._lock:
                if len(self.lines) < MAX_EVENTS:
                    self.lines.append(line)
            self.on_line(line)
        self._ready.set()  # EOF: whoever waits for readiness sees the process is gone

    def on_line(self, line: str) -> None:
        if self.addr is None and "/p2p/" in line:
            self.addr = line.strip()
            self.peer_id = self.addr.rsplit("/p2p/", 1)[1]
            self._ready.set()

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout) or self.addr is None:
            raise InteropError(f"{self.name} did not start within {timeout:.0f} s: {self.stderr_tail()}")
        return self.addr

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stderr_tail(self, n: int = 600) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def send(self, obj: dict[str, Any]) -> None:
        if self.popen is None or self.popen.stdin is None:
            return
        try:
            self.popen.stdin.write(json.dumps(obj) + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def terminate(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


@dataclass
class PyNode(NodeProc):
    """``python -m prozchain_discovery node`` with a config file and its own data dir."""

    def status(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.workdir / "data" / "status.json").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def metric_sum(self, status: dict[str, Any] | None, name: str, **labels: str) -> int:
        """Sum of a counter in status.json's metrics over the keys that carry ``labels``."""
        if not status:
            return 0
        total = 0
        for key, value in status.get("metrics", {}).items():
            base, _, rest = key.partition("{")
            if base != name or not isinstance(value, int | float):
                continue
            have = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
            if all(have.get(k) == v for k, v in labels.items()):
                total += int(value)
        return total

    def learned_from(self) -> dict[str, dict[str, int]]:
        """source -> {sender peer id: peers it told us about} from the peer database (after stop)."""
        path = self.workdir / "data" / "peers.sqlite"
        out: dict[str, dict[str, int]] = {}
        if not path.exists():
            return out
        from libp2p.peer.id import ID

        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = con.execute("SELECT source, source_peer FROM peers").fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return out
        for source, sp in rows:
            if sp is None:
                continue
            try:
                sender = str(ID(bytes(sp)))
            except Exception:
                continue
            per = out.setdefault(str(source), {})
            per[sender] = per.get(sender, 0) + 1
        return out


def py_node(name: str, workdir: Path, config: Path, *, bootstrap: Iterable[str] = (),
            bootstrap_node: bool = False, extra: Iterable[str] = ()) -> PyNode:
    argv = [sys.executable, "-m", "prozchain_discovery", "node", "--config", str(config),
            "--data-dir", str(workdir / "data"), "--log-level", "WARNING"]
    for b in bootstrap:
        argv += ["--bootstrap", b]
    if bootstrap_node:
        argv.append("--bootstrap-node")
    argv += list(extra)
    return PyNode(name=name, impl="py", argv=argv, workdir=workdir)


@dataclass
class JsonLinesProc(NodeProc):
    """A process that prints JSON lines: each kept (bounded), ``listening`` gives its address."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def on_line(self, line: str) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            return
        if not isinstance(ev, dict):
            return
        with self._lock:
            if len(self.events) < MAX_EVENTS:
                self.events.append(ev)
            self.on_event(ev)
        if ev.get("event") == "listening" and self.addr is None:
            self.peer_id = ev.get("peer_id")
            self.addr = self.listen_addr(ev.get("addrs", []))
            self._ready.set()

    def on_event(self, ev: dict[str, Any]) -> None:
        """Called under the lock for each event (subclasses keep more)."""

    def listen_addr(self, addrs: list[str]) -> str | None:
        return addrs[0] if addrs else None

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == event
                    and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, event: str, timeout: float, **match: Any) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, **match)
            if found:
                return found[-1]
            if not self.alive():
                return None
            time.sleep(0.05)
        return None


@dataclass
class JsNode(JsonLinesProc):
    """``node interop/js/node.mjs``; its JSON lines are parsed as they arrive."""

    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # event name -> latest

    def on_event(self, ev: dict[str, Any]) -> None:
        self.last[str(ev.get("event"))] = ev

    def listen_addr(self, addrs: list[str]) -> str | None:
        direct = [a for a in addrs if "p2p-circuit" not in a]
        return direct[0] if direct else None

    def request(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any] | None:
        """Send a stdin command and wait for its ``result`` line."""
        rid = f"r{time.monotonic_ns()}"
        self.send({**cmd, "id": rid})
        return self.wait_for("result", timeout, id=rid)


def js_node(name: str, workdir: Path, *, network_id: str, min_peers: int, answer: int,
            bootstrap: Iterable[str] = (), extra: Iterable[str] = (), exchange_interval: float = 10.0) -> JsNode:
    argv = ["node", str(JS_DIR / "node.mjs"), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--network-id", network_id, "--min-peers", str(min_peers), "--max-answer", str(answer),
            "--min-peer-age", "0", "--exchange-interval", str(exchange_interval),
            "--first-request-delay", "0.05", "--status-interval", "0.5"]
    for b in bootstrap:
        argv += ["--bootstrap", b]
    argv += list(extra)
    return JsNode(name=name, impl="js", argv=argv, workdir=workdir)


@dataclass
class HelperProc(JsonLinesProc):
    """A py helper under interop/ that prints JSON lines (forger, relay, relay client)."""


def helper(name: str, workdir: Path, module: str, *args: str) -> HelperProc:
    return HelperProc(name=name, impl="py", argv=[sys.executable, "-m", module, *args], workdir=workdir)
