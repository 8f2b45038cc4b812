"""Time to a first PEX answer from a private node, through a relay (issue #10 benchmark).

In the NAT lab with ``--delay-ms`` one-way delay in the core: a relay node (``[relay] serve =
"on"``) on pub1; private nodes behind the cone router (cone1) and the symmetric router (sym1)
that know only the relay, reserve on it (autorelay) and advertise ``/p2p-circuit`` addresses.
Then, ``--trials`` times per private node, a fresh requester on pub2 that knows only the
private node's circuit address dials it through the relay (our Dialer's transport,
relay/transport.py) and sends one PEX request. Reported: time from the first packet to the PEX
answer (cold: includes connecting to the relay), split into relay connect, circuit (HOP CONNECT,
STOP, Noise + Yamux over the circuit) and the PEX exchange, in ms and in RTTs (TCP connect time
pub2 → relay, measured in the same run). Also the private nodes' time from start to a
reservation.

Needs root (network namespaces). Run: .venv/bin/python bench/bench_relay_lab.py [--delay-ms 25]
[--trials 20]
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

TARGETS = ("cone1", "sym1")


def _toml(stun: str, boot: str = "", serve: str = "auto") -> str:
    return (
        'network_id = "lab"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\n'
        '[bootstrap]\nmin_peers_for_startup = 1\n'
        + (f'bootstrap_nodes = ["{boot}"]\n' if boot else "")
        + f'[nat]\nstun_servers = ["{stun}"]\n[relay]\nserve = "{serve}"\n'
    )


def _status(data: Path) -> dict:
    try:
        return json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(pred, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


# ---- the requester, run inside pub2 -------------------------------------------------------------
def requester(relay_ip: str, relay_addr: str, target: str, circuit: str, trials: int, ip: str) -> None:
    import multiaddr
    import trio
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from prozchain_discovery.host import make_host
    from prozchain_discovery.libp2p_fixes import run_host
    from prozchain_discovery.net import exchange
    from prozchain_discovery.relay.transport import CircuitDialer
    from prozchain_discovery.wire.messages import PEX_PROTOCOL, PexRequest, PexResponse

    async def rtt() -> float:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            s = await trio.open_tcp_stream(relay_ip, 4001)
            best = min(best, time.perf_counter() - t)
            await s.aclose()
        return best

    async def one() -> dict:
        listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
        host = make_host(listen_addrs=listen)
        async with run_host(host, listen):
            pid = ID.from_base58(target)
            t0 = time.perf_counter()
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(relay_addr)))
            t1 = time.perf_counter()
            with trio.fail_after(30):
                await CircuitDialer(host).connect(pid, [multiaddr.Multiaddr(circuit)])
            t2 = time.perf_counter()
            data, _s = await exchange.request(host, pid, PEX_PROTOCOL, PexRequest("lab", 50).encode(), 15)
            t3 = time.perf_counter()
            resp = PexResponse.decode(data)
            await host.disconnect(pid)
            return {"relay": t1 - t0, "circuit": t2 - t1, "pex": t3 - t2, "total": t3 - t0,
                    "status": resp.status, "records": len(resp.signed_records)}

    async def main() -> None:
        out: dict = {"rtt": await rtt(), "trials": [], "failed": 0, "errors": []}
        for _ in range(trials):
            try:
                out["trials"].append(await one())
            except Exception as exc:  # counted, not fatal: the row says how many failed
                out["failed"] += 1
                out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        print(json.dumps(out))

    trio.run(main)


# ---- the orchestrator ---------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--requester", nargs=5, metavar=("RELAY_IP", "RELAY_ADDR", "TARGET", "CIRCUIT", "IP"))
    args = ap.parse_args()
    if args.requester:
        relay_ip, relay_addr, target, circuit, ip = args.requester
        requester(relay_ip, relay_addr, target, circuit, args.trials, ip)
        return

    from interop.natlab.lab import Lab

    lab = Lab()
    rows = []
    with lab.locked(timeout=1800), TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen] = []
        try:
            lab.up(delay_ms=args.delay_ms)
            stun = f"{lab.stun_ips[0]}:3478"

            def start(ns: str, toml: str) -> Path:
                data = Path(tmp) / ns
                data.mkdir()
                (data / "node.toml").write_text(toml)
                procs.append(lab.spawn(ns, [sys.executable, "-m", "prozchain_discovery", "node", "--config",
                                            str(data / "node.toml"), "--data-dir", str(data), "--status-interval",
                                            "0.05", "--log-level", "WARNING"],
                                       env=node_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                return data

            relay = start("pub1", _toml(stun, serve="on"))
            _wait(lambda: _status(relay).get("relay_server", {}).get("serving"), 60, "the relay")
            relay_ip = lab.hosts["pub1"].ip
            relay_addr = f"/ip4/{relay_ip}/tcp/4001/p2p/{_status(relay)['peer_id']}"
            for ns in TARGETS:
                data = start(ns, _toml(stun, boot=relay_addr))
                took = _wait(lambda d=data: _status(d).get("autorelay", {}).get("circuit_addrs"), 90,
                             f"{ns}'s reservation")
                st = _status(data)
                circuit = st["autorelay"]["circuit_addrs"][0]
                out = lab.run("pub2", [sys.executable, str(Path(__file__).resolve()), "--trials", str(args.trials),
                                       "--requester", relay_ip, relay_addr, st["peer_id"], circuit,
                                       lab.hosts["pub2"].ip],
                              env=node_env(), capture_output=True, text=True, timeout=1200)
                if out.returncode != 0:
                    raise SystemExit(f"requester failed: {out.stderr[-1500:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res["reserved_after"] = took
                res["nat"] = st["nat"]["nat_type"]
                rows.append((ns, res))
                print(f"{ns}: {res['failed']} failed, {len(res['trials'])} ok {res['errors'][:3]}", file=sys.stderr,
                      flush=True)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            lab.down()

    print(f"NAT lab, {args.delay_ms:g} ms one-way delay in the core; relay on pub1, requester on pub2 "
          f"(a fresh node per trial that knows only the circuit address), {args.trials} trials per row; medians")
    print()
    print("| private node | RTT pub2→relay | reservation after start (status poll 50 ms) | relay connect | "
          "circuit (CONNECT + STOP + Noise/Yamux) | PEX exchange | **first PEX answer, cold** | p90 | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ns, res in rows:
        rtt = res["rtt"]
        tr = res["trials"]

        def med(key: str, tr=tr) -> float:
            return statistics.median(t[key] for t in tr) if tr else float("nan")

        tot = sorted(t["total"] for t in tr)
        p90 = tot[min(len(tot) - 1, int(0.9 * len(tot)))] if tot else float("nan")
        print(f"| {ns} ({res['nat']}) | {rtt * 1000:.1f} ms | {res['reserved_after']:.2f} s "
              f"| {med('relay') * 1000:.0f} ms = {med('relay') / rtt:.1f} RTT "
              f"| {med('circuit') * 1000:.0f} ms = {med('circuit') / rtt:.1f} RTT "
              f"| {med('pex') * 1000:.0f} ms = {med('pex') / rtt:.1f} RTT "
              f"| **{med('total') * 1000:.0f} ms = {med('total') / rtt:.1f} RTT** | {p90 * 1000:.0f} ms "
              f"| {res['failed']} of {res['failed'] + len(tr)} |")


if __name__ == "__main__":
    main()
