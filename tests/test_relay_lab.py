"""Circuit relay v2 in the NAT lab (interop/natlab): real Linux NAT, nodes as processes.

A relay runs on a public host; clients behind cone and symmetric routers reserve on it, reach
each other through it, and exchange PEX over the relayed connections. A UPnP mapping that
appears later makes a private node public: its reservation goes, its mapped address is
advertised, and a peer learns that address through PEX.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from prozchain_discovery.config import NatSettings
from prozchain_discovery.records import verify_record
from tests.natlab_fixture import natlab  # noqa: F401 - the fixture
from tests.test_nat_lab import _start, _status, _stop, _wait

pytestmark = [pytest.mark.network, pytest.mark.slow]


def node_toml(lab, *, boot: str = "", serve: str = "auto", min_peers: int = 1, nat: str = "", pex: str = "",
              peerdb: str = "") -> str:
    stun = f"{lab.stun_ips[0]}:3478"
    return (
        'network_id = "lab"\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\n'
        f'[bootstrap]\nmin_peers_for_startup = {min_peers}\ncheck_interval = 0.5\n'
        + (f'bootstrap_nodes = ["{boot}"]\n' if boot else "")
        + '[pex]\nmin_peer_age = 0.0\nexchange_interval = 2.0\nfirst_request_delay = 0.2\n' + pex
        + '[peerdb]\nflush_interval = 0.5\n' + peerdb
        + f'[nat]\nstun_servers = ["{stun}"]\n' + nat
        + f'[relay]\nserve = "{serve}"\n'
    )


def start_relay(lab, tmp: Path) -> tuple[subprocess.Popen, Path, str]:
    proc, data = _start(lab, "pub1", tmp, node_toml(lab, serve="on"))
    _wait(lambda: _status(data).get("relay_server", {}).get("serving"), 30, "the relay to serve hop")
    addr = f"/ip4/{lab.hosts['pub1'].ip}/tcp/4001/p2p/{_status(data)['peer_id']}"
    return proc, data, addr


def relayed_peer(st: dict, peer_id: str) -> bool:
    return any(p["peer_id"] == peer_id and "p2p-circuit" in p["addr"] for p in st.get("peers", []))


def outbound(st: dict, peer_id: str) -> bool:
    return any(p["peer_id"] == peer_id and p["direction"] == "out" for p in st.get("peers", []))


def pex_served(st: dict) -> int:
    return sum(v for k, v in st.get("metrics", {}).items() if k.startswith("pex_requests_served{"))


def test_cone_and_symmetric_clients_connect_through_a_relay_and_exchange_pex(natlab, tmp_path):  # noqa: F811
    lab = natlab
    relay, relay_data, relay_addr = start_relay(lab, tmp_path)
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for name in ("cone1", "sym1", "sym2"):
            procs[name] = _start(lab, name, tmp_path, node_toml(lab, boot=relay_addr, min_peers=3))
        data = {name: d for name, (_p, d) in procs.items()}
        for name, d in data.items():  # private (STUN) → a reservation on the relay, a circuit address
            _wait(lambda d=d: _status(d).get("autorelay", {}).get("circuit_addrs"), 60, f"{name}'s reservation")
            st = _status(d)
            assert st["nat"]["reachability"] == "private", (name, st["nat"])
            assert st["autorelay"]["circuit_addrs"] == [f"{relay_addr}/p2p-circuit"]
        ids = {name: _status(d)["peer_id"] for name, d in data.items()}

        def linked(a: str, b: str) -> bool:
            return relayed_peer(_status(data[a]), ids[b]) or relayed_peer(_status(data[b]), ids[a])

        _wait(lambda: linked("cone1", "sym1"), 90, "cone1 and sym1 connected through the relay")
        _wait(lambda: linked("sym1", "sym2"), 90, "sym1 and sym2 connected through the relay")
        # Nothing reaches a client but through the relay, and the relay never asks (its
        # connections are inbound): what a client served came over a relayed connection. PEX
        # asks outbound peers, so in each pair the side that was dialed answers.
        def exchanged(a: str, b: str) -> bool:
            sa, sb = _status(data[a]), _status(data[b])
            return any((outbound(s1, ids[y]) and pex_served(s2) >= 1)
                       for s1, s2, y in ((sa, sb, b), (sb, sa, a)))

        for a, b in (("cone1", "sym1"), ("sym1", "sym2")):
            _wait(lambda a=a, b=b: exchanged(a, b), 90, f"a PEX exchange between {a} and {b}")
        rst = _status(relay_data)
        assert rst["relay_server"]["reservations"] == 3
        assert rst["metrics"].get("relay_reservations_served{kind=reservations}", 0) >= 3
    finally:
        errs = {name: _stop(p) for name, (p, _d) in procs.items()}
        relay_err = _stop(relay)
    for name, (p, _d) in procs.items():
        assert p.returncode == 0, (name, errs[name][-2000:])
    assert relay.returncode == 0, relay_err[-2000:]


# Keep to one connection, the relay: no extra outbound peers, no address fetch, no AutoNAT
# dial-backs (which connect peers directly and bring records by identify, not by PEX).
ONLY_THE_RELAY = {
    "pex": "addr_fetch_per_round = 0\n",
    "peerdb": "target_outbound = 1\n",
    "nat": "autonat_server = false\nautonat_client = false\n"
    if "autonat_server" in NatSettings.__dataclass_fields__ else "",
}


def _records_in_book(data: Path) -> dict[str, list[str]]:
    """peer id -> addresses of the signed records in a node's peers.sqlite."""
    out: dict[str, list[str]] = {}
    try:
        db = sqlite3.connect(f"file:{data / 'peers.sqlite'}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return out  # not flushed yet
    try:
        for (env,) in db.execute("SELECT envelope FROM peers WHERE envelope IS NOT NULL"):
            try:
                rec = verify_record(bytes(env))
            except Exception:
                continue
            out[str(rec.peer_id)] = [str(a) for a in rec.addrs]
    except sqlite3.Error:
        pass  # the node is creating it
    finally:
        db.close()
    return out


def test_a_upnp_mapping_makes_a_private_node_public_and_peers_learn_its_address_by_pex(natlab, tmp_path):  # noqa: F811
    lab = natlab
    router = lab.routers["upnp"]
    gateway = lab.hosts["upnp1"].gateway
    mapped = f"/ip4/{router.wan_ip}/tcp/4001"
    relay, relay_data, relay_addr = start_relay(lab, tmp_path)
    # No default route at first, only routes to the lab's public ranges: no gateway to ask for a
    # mapping (and no SSDP), but STUN, the relay and peers are reachable.
    lab.run("upnp1", ["ip", "route", "del", "default"], check=True)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"):
        lab.run("upnp1", ["ip", "route", "add", net, "via", gateway], check=True)
    procs: list[subprocess.Popen] = [relay]
    try:
        behind, data = _start(lab, "upnp1", tmp_path, node_toml(
            lab, boot=relay_addr, **{**ONLY_THE_RELAY, "nat": ONLY_THE_RELAY["nat"] + "port_mapping = true\n"}))
        procs.append(behind)
        _wait(lambda: _status(data).get("autorelay", {}).get("circuit_addrs"), 60, "upnp1's reservation")
        st = _status(data)
        assert st["nat"]["reachability"] == "private" and not st["nat"]["port_mappings"]
        me = st["peer_id"]
        # Both keep to the relay: whatever the learner learns of upnp1 comes in answers from it.
        learner, learner_data = _start(lab, "pub2", tmp_path, node_toml(lab, boot=relay_addr, **ONLY_THE_RELAY))
        procs.append(learner)
        _wait(lambda: any("p2p-circuit" in a for a in _records_in_book(learner_data).get(me, [])), 60,
              "the peer to hold upnp1's record with its circuit address")
        # The gateway comes back: the NAT component maps the port, upnp1 turns public.
        lab.run("upnp1", ["ip", "route", "add", "default", "via", gateway], check=True)
        _wait(lambda: _status(data).get("nat", {}).get("port_mappings"), 60, "a port mapping")
        _wait(lambda: not _status(data).get("autorelay", {}).get("relays"), 30, "the reservation to be released")
        st = _status(data)
        assert st["nat"]["reachability"] == "public" and st["autorelay"]["circuit_addrs"] == []
        assert mapped in st["addrs"] or mapped in st["nat"]["external_addrs"]
        _wait(lambda: _records_in_book(learner_data).get(me) == [mapped], 60,
              "the peer to learn upnp1's mapped address")
        # status.json is rewritten every 0.3 s, the book flushed every 0.5 s: wait for the count.
        _wait(lambda: _status(learner_data).get("metrics", {}).get("records_accepted{via=pex}", 0) >= 1, 10,
              f"a record accepted by PEX ({_status(learner_data).get('metrics')})")
        assert not any(p["peer_id"] == me for p in _status(learner_data)["peers"])  # PEX brought it
    finally:
        errs = [_stop(p) for p in reversed(procs)]
        lab.run("upnp1", ["ip", "route", "replace", "default", "via", gateway])
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errs]
