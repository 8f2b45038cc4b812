"""NAT traversal end to end in the NAT lab: the node's own components, nothing wired by hand.

Two nodes behind two different cone routers know only a relay on a public host. Each finds out
from STUN that it is private, reserves on the relay (autorelay) and advertises a ``/p2p-circuit``
address; PEX through the relay tells each the other's record; one dials the other through the
relay (the dialer's circuit transport), and hole punching (DCUtR) then gives them a direct
connection between the two routers' WAN addresses, while the relay leg closes.
"""

from __future__ import annotations

import pytest

from tests.natlab_fixture import natlab  # noqa: F401 - the fixture
from tests.test_nat_lab import _start, _status, _stop, _wait
from tests.test_relay_lab import node_toml, start_relay

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _direct_to(st: dict, peer_id: str, wan_ip: str) -> bool:
    return any(p["peer_id"] == peer_id and f"/ip4/{wan_ip}/tcp/" in p["addr"] and "p2p-circuit" not in p["addr"]
               for p in st.get("peers", []))


def test_two_cone_nodes_meet_through_the_relay_and_punch_a_direct_connection(natlab, tmp_path):  # noqa: F811
    lab = natlab
    relay, _relay_data, relay_addr = start_relay(lab, tmp_path)
    procs = {}
    try:
        for name in ("cone1", "cone3"):
            procs[name] = _start(lab, name, tmp_path, node_toml(lab, boot=relay_addr, min_peers=2))
        data = {name: d for name, (_p, d) in procs.items()}
        for name, d in data.items():
            _wait(lambda d=d: _status(d).get("autorelay", {}).get("circuit_addrs"), 60, f"{name}'s reservation")
        ids = {name: _status(d)["peer_id"] for name, d in data.items()}
        wan = {"cone1": lab.routers["cone"].wan_ip, "cone3": lab.routers["cone2"].wan_ip}

        def direct() -> bool:
            return (_direct_to(_status(data["cone1"]), ids["cone3"], wan["cone3"])
                    or _direct_to(_status(data["cone3"]), ids["cone1"], wan["cone1"]))

        _wait(direct, 90, "a direct connection between the two routers' WAN addresses")

        def successes() -> int:
            return sum(v for d in data.values() for k, v in _status(d).get("metrics", {}).items()
                       if k.startswith("holepunch_successes"))

        # The direct connection shows in a status snapshot as soon as it is up; the driver counts
        # its success a moment later (it sees the connection, then closes the relayed one), and a
        # snapshot can fall between the two on a busy machine.
        _wait(lambda: successes() >= 1, 10, "the hole punch's success to be counted")
    finally:
        errs = {name: _stop(p) for name, (p, _d) in procs.items()}
        relay_err = _stop(relay)
    for name, (p, _d) in procs.items():
        assert p.returncode == 0, (name, errs[name][-2000:])
    assert relay.returncode == 0, relay_err[-2000:]
