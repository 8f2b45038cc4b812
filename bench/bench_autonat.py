"""Time from start to a confirmed reachability by AutoNAT v2 dial-backs, in the NAT lab.

Per trial: three fresh AutoNAT servers on the public hosts stun, pub2 and pub3; then, all at
once, fresh clients that know only those three: pub1 (public), cone1 and sym1 (behind NAT, no
port mapping: private), upnp1 (behind the miniupnpd router, ``port_mapping = true``: public at
its mapped address). Reported per client: the node's own uptime when its ``status.json`` first
shows the confirmed reachability (3 agreeing servers) — the time from the service's start, not
counting the interpreter's start-up — median and max over the trials, with 0 and 25 ms one-way
delay in the core. Defaults are the shipped ones (dial-back timeout 10 s: a private verdict
waits for the servers' dials to the NAT to time out).

Needs root (network namespaces). Run: .venv/bin/python bench/bench_autonat.py [--trials 3]
[--delays 0,25]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interop.natlab.lab import node_env  # noqa: E402

SERVERS = ("stun", "pub2", "pub3")
CLIENTS = {"pub1": "public", "cone1": "private", "sym1": "private", "upnp1": "public"}
PORT = 4101


def _toml(boot: list[str], extra: str = "") -> str:
    nodes = ", ".join(f'"{b}"' for b in boot)
    return (f'network_id = "lab-autonat"\nlisten = ["/ip4/0.0.0.0/tcp/{PORT}"]\n'
            f"[bootstrap]\nmin_peers_for_startup = {max(1, len(boot))}\nbootstrap_nodes = [{nodes}]\n"
            f"[nat]\n{extra}")


def _status(data: Path) -> dict:
    try:
        return json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _start(lab, host: str, tmp: Path, toml: str) -> tuple[subprocess.Popen, Path]:
    data = tmp / host
    data.mkdir()
    (data / "node.toml").write_text(toml)
    argv = [sys.executable, "-m", "prozchain_discovery", "node", "--config", str(data / "node.toml"),
            "--data-dir", str(data), "--status-interval", "0.1", "--log-level", "WARNING"]
    proc = lab.spawn(host, argv, env=node_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, data


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def trial(lab, tmp: Path) -> dict[str, float]:
    procs: list[subprocess.Popen] = []
    try:
        servers = {}
        for s in SERVERS:
            proc, data = _start(lab, s, tmp, _toml([]))
            procs.append(proc)
            servers[s] = data
        deadline = time.monotonic() + 60
        while not all(_status(d).get("peer_id") for d in servers.values()):
            if time.monotonic() > deadline:
                raise SystemExit("servers did not start")
            time.sleep(0.05)
        boot = [f"/ip4/{lab.hosts[s].ip}/tcp/{PORT}/p2p/{_status(d)['peer_id']}" for s, d in servers.items()]
        clients = {}
        for c in CLIENTS:
            proc, data = _start(lab, c, tmp, _toml(boot, "port_mapping = true\n" if c == "upnp1" else ""))
            procs.append(proc)
            clients[c] = data
        took: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(took) < len(CLIENTS) and time.monotonic() < deadline:
            for c, want in CLIENTS.items():
                if c in took:
                    continue
                st = _status(clients[c])
                nat = st.get("nat", {})
                if nat.get("reachability") == want and any(e.startswith("autonat") for e in nat.get("evidence", [])):
                    took[c] = float(st.get("uptime", 0.0))
            time.sleep(0.02)
        return took
    finally:
        _stop(procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms, comma-separated")
    args = ap.parse_args()
    from interop.natlab.lab import Lab

    lab = Lab()
    rows = []
    with lab.locked(timeout=1800):
        try:
            for delay in (float(d) for d in args.delays.split(",")):
                lab.up(delay_ms=delay)
                runs: dict[str, list[float]] = {c: [] for c in CLIENTS}
                for _ in range(args.trials):
                    with TemporaryDirectory() as tmp:
                        for c, t in trial(lab, Path(tmp)).items():
                            runs[c].append(t)
                for c, want in CLIENTS.items():
                    got = runs[c]
                    rows.append((delay, c, want, len(got), statistics.median(got) if got else float("nan"),
                                 max(got) if got else float("nan")))
                    print(f"delay {delay:g} ms {c:6} {want:8} confirmed {len(got)}/{args.trials}: "
                          f"median {rows[-1][4]:.2f} s, max {rows[-1][5]:.2f} s", flush=True)
        finally:
            lab.down()
    print("\n| one-way delay | client | verdict | confirmed | median s | max s |\n|---|---|---|---|---|---|")
    for delay, c, want, n, med, mx in rows:
        print(f"| {delay:g} ms | {c} | {want} | {n}/{args.trials} | {med:.2f} | {mx:.2f} |")


if __name__ == "__main__":
    main()
