"""Hole punching (DCUtR) in the NAT lab: real Linux NAT, 25 ms one-way delay in the core.

A relay on pub3 (py-libp2p's circuit relay v2 until prozchain_discovery/relay/ lands), clients
behind two cone routers (cone1 behind rcone, cone3 behind rcone2) and two symmetric ones (sym1,
sym2). Each client process (interop/natlab/punch_node.py) classifies its NAT with our STUN
classifier and mounts ``HolepunchService`` the way the composition root does.
"""

from __future__ import annotations

import pytest

from interop.natlab.punch_trials import punch_pair, trial
from tests.natlab_fixture import delayed_lab, natlab  # noqa: F401

TRIALS = 10
MIGRATIONS = 2


def test_cone_to_cone_goes_direct_between_the_routers_wan_addresses(delayed_lab):  # noqa: F811
    lab = delayed_lab
    wan_a, wan_b = lab.routers["cone"].wan_ip, lab.routers["cone2"].wan_ip
    relay_ip = lab.hosts["pub3"].ip
    direct = migrated = 0
    with punch_pair(lab, "cone1", "cone3") as pair:
        assert (pair.a_nat, pair.b_nat) == ("port_restricted", "port_restricted")
        for i in range(TRIALS):
            # The migration (relayed connection closed after its 2 s grace) is the same every
            # time: followed in the first MIGRATIONS trials, the rest only count direct ones.
            r = trial(pair, 4100 + i, migration=i < MIGRATIONS)
            a, b = r["a"], r["b"]
            # the direct connection runs between the two routers' public addresses, not the relay
            if a["direct"] and b["direct"] and f"/ip4/{wan_b}/" in a["direct"] \
                    and f"/ip4/{wan_a}/" in b["direct"] and relay_ip not in a["direct"] + b["direct"]:
                direct += 1
                assert a["result"]["result"] == "direct" and 1 <= a["result"]["attempts"] <= 3
                if i < MIGRATIONS:  # migrated: the relayed connection closed, the direct one stays
                    assert a["relayed_conns"] == 0 and a["still_direct"], r
                    migrated += 1
    print(f"cone1 <-> cone3: direct in {direct}/{TRIALS}; "
          + ", ".join(f"{x['a']['relayed_to_direct_s']}" for x in pair.results))
    assert direct >= 9, pair.results
    assert migrated >= 1, pair.results


@pytest.mark.parametrize("a_ns,b_ns,nats", [
    ("cone1", "sym1", ("port_restricted", "symmetric")),  # the cone side drives
    ("sym1", "cone3", ("symmetric", "port_restricted")),  # the symmetric side drives
    ("sym1", "sym2", ("symmetric", "symmetric")),
])
def test_symmetric_pairs_stay_relayed_and_say_not_supported(delayed_lab, a_ns, b_ns, nats):  # noqa: F811
    with punch_pair(delayed_lab, a_ns, b_ns) as pair:
        assert (pair.a_nat, pair.b_nat) == nats
        for i in range(2):
            r = trial(pair, 4200 + i, timeout=15.0)
            a, b = r["a"], r["b"]
            assert a["direct"] is None and b["direct"] is None, r
            assert a["relayed_conns"] == 1, r  # still connected, through the relay
            # both sides answer HolepunchNotSupported after one CONNECT exchange: no punching
            for side in (a, b):
                assert side["result"] is not None and side["result"]["result"] == "HolepunchNotSupported", r
            assert a["waited_s"] < 15.0  # it answered, it did not time out
