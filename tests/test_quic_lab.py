"""QUIC hole punching (DCUtR) in the NAT lab, and routers where only QUIC can punch.

Clients behind the two cone routers (cone1 behind rcone, cone3 behind rcone2), a relay on pub3,
as tests/test_holepunch_lab.py. ``transports`` says what both clients listen and punch on.
With ``set_tcp_syn_drop`` the cone routers drop inbound bare TCP SYNs from the WAN, before
their ESTABLISHED,RELATED accept (a middlebox without TCP simultaneous open): a TCP punch
cannot work there, a QUIC one can.
"""

from __future__ import annotations

import pytest

from interop.natlab.lab import SYN_DROP_RULE
from interop.natlab.punch_trials import Pair, punch_pair, trial
from tests.natlab_fixture import delayed_lab, natlab  # noqa: F401


@pytest.fixture
def syn_drop_lab(natlab):  # noqa: F811
    natlab.set_tcp_syn_drop(True, ["cone", "cone2"])
    try:
        yield natlab
    finally:
        natlab.set_tcp_syn_drop(False, ["cone", "cone2"])


def _direct_between_wans(lab, r: dict) -> str | None:
    """The direct connection's address when it runs between the two routers' WAN addresses."""
    wan_a, wan_b = lab.routers["cone"].wan_ip, lab.routers["cone2"].wan_ip
    a, b = r["a"]["direct"], r["b"]["direct"]
    if a and b and f"/ip4/{wan_b}/" in a and f"/ip4/{wan_a}/" in b:
        return str(a)
    return None


def _trials(lab, pair: Pair, n: int, first_port: int, transports: tuple[str, ...],
            timeout: float = 20.0) -> list[str | None]:
    return [_direct_between_wans(lab, trial(pair, first_port + i, timeout=timeout, migration=False,
                                            transports=transports, wait_wan=True)) for i in range(n)]


def test_cone_to_cone_goes_direct_over_quic(delayed_lab):  # noqa: F811
    lab = delayed_lab
    with punch_pair(lab, "cone1", "cone3", relay_transports=("quic",)) as pair:
        assert (pair.a_nat, pair.b_nat) == ("port_restricted", "port_restricted")
        direct = _trials(lab, pair, 4, 4400, ("quic",))
    print("QUIC only, cone1 <-> cone3:", direct)
    ok = [d for d in direct if d is not None]
    assert len(ok) >= 3, pair.results
    assert all("/udp/" in d for d in ok), direct  # a QUIC connection, between the WAN addresses
    for r in pair.results:
        if _direct_between_wans(lab, r):
            assert r["a"]["result"]["result"] == "direct"


def test_without_tcp_simultaneous_open_only_quic_punches(syn_drop_lab):
    lab = syn_drop_lab
    for name in ("cone", "cone2"):
        check = lab.run(lab.routers[name].ns, ["iptables-legacy", "-C", "FORWARD", *SYN_DROP_RULE], capture_output=True)
        assert check.returncode == 0  # the rule is in place
    with punch_pair(lab, "cone1", "cone3") as pair:
        tcp_only = _trials(lab, pair, 2, 4500, ("tcp",), timeout=15.0)
        both = _trials(lab, pair, 3, 4510, ("tcp", "quic"))
    print("SYN-dropping routers: TCP only", tcp_only, "TCP and QUIC", both)
    assert tcp_only == [None, None], pair.results  # the SYNs never cross: TCP cannot punch here
    ok = [d for d in both if d is not None]
    assert len(ok) >= 2 and all("/udp/" in d for d in ok), pair.results  # QUIC does
