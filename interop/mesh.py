"""A mixed py + js network on loopback, from one bootstrap node (issue #11).

``python -m interop.mesh --py 20 --js 10 [--relay js,py,py-node] [--boot py|js]`` starts a bootstrap
node and the nodes as separate processes (py: ``python -m prozchain_discovery node``, js:
``node interop/js/node.mjs``), shows progress until every node has ``min_peers`` connected
peers, then runs the cross checks:

* a js node on another network id is refused by the py bootstrap node, and a py node on another
  network id is refused by a js node (``WRONG_NETWORK``);
* forged records from a js node (``--forge-records``) are rejected by a py node, and forged
  records from a py peer (``interop/forger.py``) by a js node;
* with ``--relay``: a circuit relay v2 — js-libp2p's (``js``), py-libp2p's ``CircuitV2Protocol``
  (``py``) or a ProzChain node serving relay (``py-node``) — and py <-> js PEX both ways over
  relayed connections (``interop/relay_check.py`` is the py end).

It prints, per implementation: time to min_peers, peers learned via PEX from the other
implementation, and records rejected (0 between honest nodes). Exit status 1 if a node did not
reach min_peers, an honest node rejected a record, or a cross check failed; 2 if the setup
itself failed (no node/npm, a process did not start).

Bootstrap answers are capped (``--answer``, default 4 records) so that PEX does the spreading,
as in ``prozchain-discovery demo``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import (
    HelperProc,
    InteropError,
    JsNode,
    NodeProc,
    PyNode,
    helper,
    js_node,
    npm_ci,
    py_config,
    py_node,
)

__all__ = ["MeshOptions", "Mesh", "run_mesh", "main"]

NETWORK_ID = "prozchain-interop"
WRONG_NETWORK_ID = "prozchain-elsewhere"


@dataclass
class MeshOptions:
    py: int = 20
    js: int = 10
    min_peers: int = 6
    answer: int = 4
    boot: str = "py"
    relay: str | None = None  # "js", "py", "py-node", or several joined by commas
    cross_checks: bool = True
    timeout: float = 120.0
    exchange_interval: float = 10.0
    workdir: Path | None = None
    quiet: bool = False
    py_quic: bool = False  # py nodes listen on TCP and QUIC (js nodes: TCP only)


@dataclass
class Mesh:
    """The running processes of one mesh; :meth:`stop` ends them all."""

    opts: MeshOptions
    root: Path
    boot: NodeProc | None = None
    nodes: list[NodeProc] = field(default_factory=list)
    extra: list[NodeProc] = field(default_factory=list)  # cross-check and relay processes
    started: float = 0.0
    joined_seen: dict[str, float] = field(default_factory=dict)  # node name -> spawn to joined (s)
    all_joined_s: float | None = None  # first spawn -> every node joined, as the harness saw it

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    # ---- start --------------------------------------------------------------------------
    def config(self, name: str, *, network_id: str = NETWORK_ID, bootstrap_node: bool = False) -> Path:
        return py_config(self.root / f"{name}.toml", network_id=network_id, min_peers=self.opts.min_peers,
                         answer=self.opts.answer, bootstrap_node=bootstrap_node,
                         exchange_interval=self.opts.exchange_interval, quic=self.opts.py_quic)

    def make_py(self, name: str, bootstrap: list[str], *, network_id: str = NETWORK_ID,
                bootstrap_node: bool = False) -> PyNode:
        cfg = self.config(name, network_id=network_id, bootstrap_node=bootstrap_node)
        return py_node(name, self.root / name, cfg, bootstrap=bootstrap, bootstrap_node=bootstrap_node)

    def make_js(self, name: str, bootstrap: list[str], *, network_id: str = NETWORK_ID,
                extra: list[str] | None = None) -> JsNode:
        return js_node(name, self.root / name, network_id=network_id, min_peers=self.opts.min_peers,
                       answer=self.opts.answer, bootstrap=bootstrap, extra=extra or [],
                       exchange_interval=self.opts.exchange_interval)

    def start(self) -> None:
        o = self.opts
        if o.js or o.boot == "js" or o.relay or o.cross_checks:
            npm_ci()
        self.say(f"starting a {o.boot} bootstrap node, {o.py} py and {o.js} js nodes on 127.0.0.1 "
                 f"(min_peers={o.min_peers}, bootstrap answers capped at {o.answer} records)")
        self.boot = (self.make_py("boot", [], bootstrap_node=True) if o.boot == "py"
                     else self.make_js("boot", [], extra=["--bootstrap-node", "--min-peers", "1",
                                                         "--max-peers-per-exchange", str(o.answer)]))
        self.boot.start()
        boot_addr = self.boot.wait_ready(60)
        self.say(f"bootstrap node: {boot_addr}")
        self.started = time.monotonic()
        # Interleave the two implementations so neither gets a head start.
        order = [("py", i) for i in range(o.py)] + [("js", i) for i in range(o.js)]
        order.sort(key=lambda t: (t[1] / max(1, o.py if t[0] == "py" else o.js), t[0]))
        for impl, i in order:
            node = self.make_py(f"py{i}", [boot_addr]) if impl == "py" else self.make_js(f"js{i}", [boot_addr])
            node.start()
            self.nodes.append(node)

    # ---- observe ------------------------------------------------------------------------
    def joined(self, node: NodeProc) -> float | None:
        """The node's own time from start to min_peers (s), or None."""
        if isinstance(node, PyNode):
            st = node.status()
            value = st.get("joined_after") if st else None
            return float(value) if value is not None else None
        if isinstance(node, JsNode):
            ev = node.last.get("joined")
            return float(ev["ms"]) / 1000 if ev else None
        return None

    def wait_joined(self) -> bool:
        deadline = self.started + self.opts.timeout
        last = ""
        while True:
            now = time.monotonic()
            counts = {"py": [0, 0], "js": [0, 0]}
            dead = []
            for n in self.nodes:
                counts[n.impl][1] += 1
                if self.joined(n) is not None:
                    counts[n.impl][0] += 1
                    self.joined_seen.setdefault(n.name, now - n.spawned_at)
                elif not n.alive():
                    dead.append(n.name)
            line = (f"  {now - self.started:5.1f} s  py {counts['py'][0]}/{counts['py'][1]} joined, "
                    f"js {counts['js'][0]}/{counts['js'][1]} joined")
            if line != last:
                self.say(line)
                last = line
            if dead:
                self.say(f"  exited early: {', '.join(dead)}")
                for name in dead:
                    node = next(n for n in self.nodes if n.name == name)
                    self.say(f"    {name}: {node.stderr_tail(300)}")
                return False
            if all(self.joined(n) is not None for n in self.nodes):
                self.all_joined_s = now - self.started
                self.say(f"every node has min_peers={self.opts.min_peers} after {self.all_joined_s:.1f} s")
                return True
            if now > deadline:
                return False
            time.sleep(0.5)

    # ---- cross checks -------------------------------------------------------------------
    def cross_checks(self) -> dict[str, dict[str, Any]]:
        """Wrong network id and forged records, both ways. Each result: ok, detail."""
        assert self.boot is not None and self.boot.addr is not None
        results: dict[str, dict[str, Any]] = {}
        a_js = next((n for n in self.nodes if isinstance(n, JsNode)), None)
        # 1. js on another network -> refused by the py bootstrap node (or a py node).
        py_target = self.boot if isinstance(self.boot, PyNode) else next(n for n in self.nodes if isinstance(n, PyNode))
        wrong_js = self.make_js("x-js-wrong-net", [str(py_target.addr)], network_id=WRONG_NETWORK_ID)
        # 2. py on another network -> refused by a js node.
        js_target = a_js if a_js is not None else self.boot
        wrong_py = self.make_py("x-py-wrong-net", [str(js_target.addr)], network_id=WRONG_NETWORK_ID)
        # 3. forged records from js -> rejected by py.
        forger_js = self.make_js("x-js-forger", [], extra=["--forge-records"])
        # 4. forged records from py -> rejected by js.
        forger_py = helper("x-py-forger", self.root / "x-py-forger", "interop.forger", "--network-id", NETWORK_ID)
        for p in (wrong_js, wrong_py, forger_js, forger_py):
            p.start()
            self.extra.append(p)
        forger_js.wait_ready(60)
        forger_py.wait_ready(60)
        checker_py = self.make_py("x-py-checker", [str(forger_js.addr)])
        checker_js = self.make_js("x-js-checker", [str(forger_py.addr)])
        for p in (checker_py, checker_js):
            p.start()
            self.extra.append(p)
        deadline = time.monotonic() + 45

        def until(check: Callable[[], Any]) -> Any:
            while time.monotonic() < deadline:
                value = check()
                if value:
                    return value
                time.sleep(0.25)
            return check()

        ev = wrong_js.wait_for("wrong_network", max(1.0, deadline - time.monotonic()))
        results["js wrong network refused by py"] = {
            "ok": ev is not None and ev.get("peer") == py_target.peer_id,
            "detail": f"js got WRONG_NETWORK from {ev.get('peer', '?')[-8:]} via {ev.get('how')}" if ev else "no WRONG_NETWORK answer",
        }
        n = until(lambda: wrong_py.metric_sum(wrong_py.status(), "wrong_network")) if isinstance(wrong_py, PyNode) else 0
        served = js_target.find("served", status="wrong_network") if isinstance(js_target, JsNode) else []
        results["py wrong network refused by js"] = {
            "ok": bool(n) and bool(served),
            "detail": f"py counted wrong_network={n}; js answered WRONG_NETWORK {len(served)} time(s)",
        }
        rej = until(lambda: checker_py.metric_sum(checker_py.status(), "records_rejected"))
        st = checker_py.status() or {}
        reasons = {k: v for k, v in st.get("metrics", {}).items() if k.startswith("records_rejected")}
        acc = checker_py.metric_sum(st, "records_accepted")
        results["js forged records rejected by py"] = {
            "ok": rej >= 2 and acc == 0,
            "detail": f"py rejected {rej} ({', '.join(f'{k[17:-1]}={v}' for k, v in reasons.items())}), accepted {acc}",
        }

        def js_rejected() -> int:
            s = checker_js.last.get("peers") or {}
            return int(sum(s.get("rejected", {}).values()))

        rej_js = until(js_rejected)
        s = checker_js.last.get("peers") or {}
        results["py forged records rejected by js"] = {
            "ok": rej_js >= 2 and int(s.get("accepted", 0)) == 0,
            "detail": f"js rejected {rej_js} ({s.get('rejected', {})}), accepted {s.get('accepted', 0)}",
        }
        return results

    # ---- relay --------------------------------------------------------------------------
    def relay_check(self, kind: str) -> dict[str, dict[str, Any]]:
        """py <-> js through a ``kind`` (js|py) circuit relay v2; PEX both ways over it."""
        if kind == "js":
            relay: NodeProc = self.make_js("r-relay", [], extra=["--relay-server", "--min-peers", "1"])
        elif kind == "py-node":
            # The project's own relay (prozchain_discovery/relay/): a node with relay.serve = "on".
            cfg = self.config("r-relay")
            cfg.write_text(cfg.read_text() + '[relay]\nserve = "on"\nautorelay = false\n')
            relay = py_node("r-relay", self.root / "r-relay", cfg)
        else:
            relay = helper("r-relay", self.root / "r-relay", "interop.py_relay")
        relay.start()
        self.extra.append(relay)
        relay_addr = relay.wait_ready(60)
        js_client = self.make_js("r-js", [], extra=["--relay", relay_addr, "--min-peers", "1"])
        py_client = helper("r-py", self.root / "r-py", "interop.relay_check", "--relay", relay_addr,
                           "--network-id", NETWORK_ID)
        for p in (js_client, py_client):
            p.start()
            self.extra.append(p)
        js_client.wait_ready(60)
        py_client.wait_ready(60)
        results: dict[str, dict[str, Any]] = {}
        res = py_client.wait_for("reserved", 30) if isinstance(py_client, HelperProc) else None
        # js must hold its reservation (a /p2p-circuit address of its own) before py dials it.
        def js_reserved() -> bool:
            return any("p2p-circuit" in a for e in js_client.find("addresses") + js_client.find("listening")
                       for a in e.get("addrs", []))

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not js_reserved():
            time.sleep(0.1)
        js_circuit = f"{relay_addr}/p2p-circuit/p2p/{js_client.peer_id}"
        # py -> js through the relay, then PEX over the relayed connection.
        py_client.send({"cmd": "dial_pex", "addr": js_circuit, "peer": js_client.peer_id})
        out = py_client.wait_for("dial_pex", 40) if isinstance(py_client, HelperProc) else None
        js_saw = js_client.find("connected", peer=py_client.peer_id)
        results[f"py -> js PEX through a {kind} relay"] = {
            "ok": bool(out and out.get("ok") and out.get("status") in (0, 2) and js_saw and js_saw[0].get("limited")),
            "detail": json.dumps(out)[:300] if out else f"no answer (reserved={bool(res)})",
        }
        # js -> py through the relay, then PEX over the relayed connection.
        py_circuit = f"{relay_addr}/p2p-circuit/p2p/{py_client.peer_id}"
        dial = js_client.request({"cmd": "dial", "addr": py_circuit}, 30)
        pex = js_client.request({"cmd": "pex", "peer": py_client.peer_id}, 30)
        served = py_client.wait_for("served", 10) if isinstance(py_client, HelperProc) else None
        dial_ev = js_client.find("dial", why="command")
        results[f"js -> py PEX through a {kind} relay"] = {
            "ok": bool(dial and dial.get("ok") and pex and pex.get("ok") and pex.get("status") in ("ok", "rate_limited")
                       and dial_ev and dial_ev[-1].get("limited")),
            "detail": f"dial={dial_ev[-1] if dial_ev else None} pex={pex} py served={served}"[:400],
        }
        return results

    # ---- stop and report ----------------------------------------------------------------
    def stop(self) -> None:
        procs = [*self.extra, *self.nodes] + ([self.boot] if self.boot else [])
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)

    def summary(self) -> dict[str, Any]:
        """After :meth:`stop`: per node and per implementation figures."""
        impl_of: dict[str, str] = {n.peer_id: n.impl for n in self.nodes if n.peer_id}
        if self.boot is not None and self.boot.peer_id:
            impl_of[self.boot.peer_id] = self.boot.impl
        rows = []
        for n in self.nodes:
            row: dict[str, Any] = {"name": n.name, "impl": n.impl, "peer_id": n.peer_id,
                                   "join_s": self.joined(n), "spawn_to_join_s": self.joined_seen.get(n.name)}
            if isinstance(n, PyNode):
                st = n.status() or {}
                learned = n.learned_from().get("pex", {})
                row["peers"] = st.get("connected")
                row["rejected"] = n.metric_sum(st, "records_rejected")
                row["pex_from"] = {impl: sum(c for s, c in learned.items() if impl_of.get(s) == impl) for impl in ("py", "js")}
            elif isinstance(n, JsNode):
                s = n.last.get("summary") or n.last.get("peers") or {}
                learned = (s.get("learned_from_pex") or {})
                row["peers"] = s.get("count")
                row["rejected"] = int(sum(s.get("rejected", {}).values()))
                row["pex_from"] = {impl: sum(c for p, c in learned.items() if impl_of.get(p) == impl) for impl in ("py", "js")}
            rows.append(row)
        per: dict[str, Any] = {}
        for impl in ("py", "js"):
            mine = [r for r in rows if r["impl"] == impl]
            if not mine:
                continue
            joins = sorted(r["join_s"] for r in mine if r["join_s"] is not None)
            other = "js" if impl == "py" else "py"
            per[impl] = {
                "nodes": len(mine),
                "joined": len(joins),
                "join_median_s": round(statistics.median(joins), 3) if joins else None,
                "join_max_s": round(joins[-1], 3) if joins else None,
                "pex_from_other_total": sum(r["pex_from"][other] for r in mine),
                "nodes_learning_from_other": sum(1 for r in mine if r["pex_from"][other] > 0),
                "pex_from_same_total": sum(r["pex_from"][impl] for r in mine),
                "rejected": sum(r["rejected"] for r in mine),
            }
        # PEX answers that crossed implementations, counted on the js side (py has no per-peer log):
        # answers js nodes served to py nodes, and answers js nodes got from py nodes.
        js_nodes = [n for n in self.nodes if isinstance(n, JsNode)]
        served_py = [e for n in js_nodes for e in n.find("served", protocol="pex", status="ok")
                     if impl_of.get(str(e.get("peer"))) == "py"]
        got_from_py = [e for n in js_nodes for e in n.find("records", via="pex")
                       if impl_of.get(str(e.get("from"))) == "py"]
        if "py" in per:
            per["py"]["pex_answers_from_other"] = len(served_py)
        if "js" in per:
            per["js"]["pex_answers_from_other"] = len(got_from_py)
        return {"rows": rows, "per_impl": per}


def _print_table(summary: dict[str, Any], min_peers: int) -> None:
    print(f"\n{'impl':<4} {'nodes':>5} {'joined':>6} {'median s':>9} {'max s':>7} "
          f"{'PEX peers from other impl':>26} {'PEX answers from other':>22} {'rejected':>8}")
    for impl, p in summary["per_impl"].items():
        other = f"{p['pex_from_other_total']} ({p['nodes_learning_from_other']}/{p['nodes']} nodes)"
        med = "-" if p["join_median_s"] is None else f"{p['join_median_s']:.3f}"
        mx = "-" if p["join_max_s"] is None else f"{p['join_max_s']:.3f}"
        answers = p.get("pex_answers_from_other", "-")
        print(f"{impl:<4} {p['nodes']:>5} {p['joined']:>6} {med:>9} {mx:>7} {other:>26} {answers:>22} {p['rejected']:>8}")
    print(f"(time to min_peers={min_peers} on each node's own clock, from its start; "
          "'PEX peers from other impl': peers a node first learned from a PEX answer of the other implementation; "
          "'PEX answers from other': OK answers it got from the other implementation)")


def run_mesh(opts: MeshOptions, during: Callable[[Mesh], dict[str, Any]] | None = None) -> tuple[int, dict[str, Any]]:
    """Run one mesh; ``during(mesh)`` runs once it joined (the benchmark measures there)."""
    with tempfile.TemporaryDirectory(prefix="prozchain-mesh-") as tmp:
        root = opts.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        mesh = Mesh(opts, root)
        checks: dict[str, dict[str, Any]] = {}
        extra: dict[str, Any] = {}
        try:
            mesh.start()
            ok = mesh.wait_joined()
            if not ok:
                mesh.say("not every node reached min_peers in time")
            if during is not None and ok:
                extra = during(mesh)
            if opts.cross_checks:
                mesh.say("cross checks: wrong network id and forged records, both ways")
                checks.update(mesh.cross_checks())
            for kind in (opts.relay or "").split(","):
                if kind:
                    mesh.say(f"circuit relay v2 through a {kind} relay")
                    checks.update(mesh.relay_check(kind))
        finally:
            mesh.stop()
        summary = mesh.summary()
        summary["checks"] = checks
        summary["extra"] = extra
        summary["options"] = {k: str(v) for k, v in vars(opts).items()}
    if not opts.quiet:
        _print_table(summary, opts.min_peers)
        for name, res in checks.items():
            print(f"{'PASS' if res['ok'] else 'FAIL'}  {name}: {res['detail']}")
    failed_nodes = [r["name"] for r in summary["rows"] if r["join_s"] is None]
    rejected = sum(p["rejected"] for p in summary["per_impl"].values())
    failed_checks = [k for k, v in checks.items() if not v["ok"]]
    code = 0
    if failed_nodes:
        print(f"{len(failed_nodes)} node(s) did not reach min_peers: {', '.join(failed_nodes)}", file=sys.stderr)
        code = 1
    if rejected:
        print(f"honest nodes rejected {rejected} record(s)", file=sys.stderr)
        code = 1
    if failed_checks:
        print(f"failed: {'; '.join(failed_checks)}", file=sys.stderr)
        code = 1
    return code, summary


def _relay_kinds(text: str) -> str:
    kinds = [k for k in text.split(",") if k]
    bad = [k for k in kinds if k not in ("js", "py", "py-node")]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: expected js, py or py-node (comma-separated)")
    return ",".join(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.mesh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--py", type=int, default=20, help="py nodes (default 20)")
    parser.add_argument("--js", type=int, default=10, help="js nodes (default 10)")
    parser.add_argument("--min-peers", type=int, default=6, help="peers each node wants (default 6)")
    parser.add_argument("--answer", type=int, default=4, help="records per bootstrap answer (default 4)")
    parser.add_argument("--boot", choices=("py", "js"), default="py", help="bootstrap node implementation")
    parser.add_argument("--relay", type=_relay_kinds, metavar="js|py|py-node[,...]",
                        help="also check py <-> js through a relay: js-libp2p's (js), py-libp2p's "
                        "CircuitV2Protocol (py), or a prozchain node with relay.serve = on (py-node); "
                        "several separated by commas")
    parser.add_argument("--no-cross-checks", action="store_true", help="skip the wrong-network and forgery checks")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after S seconds (default 120)")
    parser.add_argument("--json", metavar="FILE", help="write the summary as JSON")
    args = parser.parse_args(argv)
    if args.py < 0 or args.js < 0 or args.py + args.js < 1 or args.min_peers < 1:
        parser.error("need at least one node, and --min-peers of at least 1")
    if args.min_peers > args.py + args.js:
        parser.error("--min-peers is more than the other nodes there are")
    opts = MeshOptions(py=args.py, js=args.js, min_peers=args.min_peers, answer=args.answer, boot=args.boot,
                       relay=args.relay, cross_checks=not args.no_cross_checks, timeout=args.timeout)
    try:
        code, summary = run_mesh(opts)
    except InteropError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
