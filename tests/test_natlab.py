"""The NAT lab is what it claims to be (interop/natlab): reachability, NAT behaviour by coturn's
reference classifier, UPnP mappings, the core's delay, and a clean teardown."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from multiaddr import Multiaddr

from interop.natlab.lab import Lab
from prozchain_discovery.addrs import AddrScope, network_group, scope_of
from tests.natlab_fixture import lab_prerequisites, natlab  # noqa: F401  (a fixture)

pytestmark = pytest.mark.network

# One UDP datagram in, the sender's address back.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(100)
    s.sendto(("%s:%d" % addr).encode(), addr)
"""
UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
for _ in range(25):
    s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(100)[0].decode())
        break
    except TimeoutError:
        pass
"""
TCP_PEER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
c, addr = s.accept()
c.sendall(("%s:%d" % addr).encode())
c.close()
"""
TCP_ASK = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print("connected", s.recv(100).decode())
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e.errno)
"""


def py(lab: Lab, ns: str, script: str, *args: str, timeout: float = 10) -> str:
    r = lab.run(ns, [sys.executable, "-c", script, *args], capture_output=True, text=True,
                timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def serve(lab: Lab, ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    p = lab.spawn(ns, [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_public_addresses_span_three_network_groups():
    lab = Lab()  # the topology is data: no root needed
    assert lab.stun_ips == ("198.51.100.1", "198.51.100.2")
    seen = [h.ip for h in lab.public.values()] + [r.wan_ip for r in lab.routers.values()]
    for ip in seen:
        assert scope_of(Multiaddr(f"/ip4/{ip}/tcp/4001")) is AddrScope.PUBLIC, ip
    groups = {network_group(Multiaddr(f"/ip4/{ip}/tcp/4001")) for ip in seen}
    assert groups == {"4:192.0", "4:198.51", "4:203.0"}
    # The NAT'd routers sit in three different groups, and so do pub1, pub2 and the STUN server.
    assert len({network_group(Multiaddr(f"/ip4/{r.wan_ip}/tcp/1")) for r in lab.routers.values()}) == 3
    assert len({network_group(Multiaddr(f"/ip4/{lab.hosts[n].ip}/tcp/1"))
                for n in ("pub1", "pub2", "stun")}) == 3
    assert lab.clients["cone1"].public_ip == lab.routers["cone"].wan_ip
    assert lab.ns("cone1") == "pzl-cone1" and lab.ns("cone") == "pzl-rcone"


def test_clients_reach_public_hosts_from_their_router_address(natlab):  # noqa: F811
    pub1 = natlab.hosts["pub1"]
    serve(natlab, "pub1", UDP_ECHO, "7000")
    for name in ("cone1", "cone2", "sym1", "upnp1", "pub2"):
        seen = py(natlab, name, UDP_ASK, pub1.ip, "7000")
        assert seen.split(":")[0] == natlab.hosts[name].public_ip, (name, seen)
    r = natlab.run("cone1", ["ping", "-c1", "-W2", pub1.ip], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lan_unreachable_and_unsolicited_wan_input_dropped(natlab):  # noqa: F811
    cone1 = natlab.clients["cone1"]
    # The core has no route to any LAN: an immediate "unreachable", not a reply.
    r = natlab.run("pub1", ["ping", "-c1", "-W1", cone1.ip], capture_output=True, text=True)
    assert r.returncode != 0
    # A router drops what nobody asked for (a closed port answers nothing, not even a RST).
    assert py(natlab, "pub1", TCP_ASK, natlab.routers["cone"].wan_ip, "6000", "0.5") == "timeout"
    # ...while a public host refuses at once.
    assert py(natlab, "pub1", TCP_ASK, natlab.hosts["pub2"].ip, "6000", "2") == "refused"


def _verdict(out: str) -> tuple[str, str]:
    mapping = re.findall(r"NAT with (.+?) Mapping!", out)
    filtering = re.findall(r"NAT with (.+?) Filtering!", out)
    assert len(mapping) == 1 and len(filtering) == 1, out
    return mapping[0], filtering[0]


@pytest.mark.slow
def test_reference_classifier_agrees(natlab):  # noqa: F811
    """coturn's RFC 5780 client (~6 s behind NAT); the three run at once."""
    stun = natlab.stun_ips[0]
    procs = {name: natlab.spawn(name, ["turnutils_natdiscovery", "-m", "-f", stun],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("cone1", "sym1", "pub1")}
    outs = {name: p.communicate(timeout=30)[0] for name, p in procs.items()}
    assert _verdict(outs["cone1"]) == ("Endpoint Independent", "Address and Port Dependent")
    assert _verdict(outs["sym1"]) == ("Address and Port Dependent", "Address and Port Dependent")
    assert _verdict(outs["pub1"]) == ("Endpoint Independent", "Endpoint Independent")
    # No NAT in front of pub1: the mapped address is its own.
    assert f"UDP reflexive addr: {natlab.hosts['pub1'].ip}:" in outs["pub1"]
    assert f"UDP reflexive addr: {natlab.routers['sym'].wan_ip}:" in outs["sym1"]


def test_upnp_mapping_lets_the_internet_in(natlab):  # noqa: F811
    client = natlab.clients["upnp1"]
    wan = natlab.routers["upnp"].wan_ip
    # -i: miniupnpd calls its WAN (a documentation range) private, so the IGD looks "not connected".
    r = natlab.run("upnp1", ["upnpc", "-i", "-e", "natlab-test", "-a", client.ip, "8080", "8080", "TCP"],
                   capture_output=True, text=True, timeout=20)
    assert r.returncode in (0, 2), r.stdout + r.stderr  # 2: "not connected? IGD"
    assert f"external {wan}:8080 TCP is redirected to internal {client.ip}:8080" in r.stdout, r.stdout
    serve(natlab, "upnp1", TCP_PEER, "8080")
    out = py(natlab, "pub1", TCP_ASK, wan, "8080", "3")
    assert out.startswith(f"connected {natlab.hosts['pub1'].ip}:"), out  # no NAT on the way in
    # Without the mapping, the same port on the cone router (no UPnP) stays closed.
    assert py(natlab, "pub1", TCP_ASK, natlab.routers["cone"].wan_ip, "8080", "0.5") == "timeout"


def _rtt_ms(lab: Lab, src: str, dst: str) -> float:
    r = lab.run(src, ["ping", "-c3", "-i0.2", "-W2", dst], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stdout + r.stderr
    return float(re.search(r"= [\d.]+/([\d.]+)/", r.stdout).group(1))  # type: ignore[union-attr]


def test_core_delay(natlab):  # noqa: F811
    pub1 = natlab.hosts["pub1"].ip
    try:
        natlab.set_delay(20)
        assert _rtt_ms(natlab, "cone1", pub1) >= 40  # one way each direction through the core
        natlab.set_delay(0)
        assert _rtt_ms(natlab, "cone1", pub1) < 40
    finally:
        natlab.set_delay(0)


def test_up_is_idempotent_and_down_leaves_nothing(natlab):  # noqa: F811
    lab_prerequisites()
    # A second lab under another prefix: namespaces keep the two apart.
    lab = Lab(prefix="pzt-")
    with lab.locked(timeout=600), contextlib.ExitStack() as stack:
        stack.callback(lab.down)
        lab.up(delay_ms=5)
        daemons = [p.pid for p in lab._daemons.values()]
        lab.up()  # over the top of a running lab: cleans it first
        assert not any(Path(f"/proc/{pid}").exists() for pid in daemons)
        sleeper = lab.spawn("pub1", ["sleep", "60"])
        deadline = time.monotonic() + 5
        while sleeper.pid not in (pids := lab.lab_pids()) and time.monotonic() < deadline:
            time.sleep(0.01)  # until `ip netns exec` has entered the namespace
        assert sleeper.pid in pids and len(pids) >= 3  # coturn, miniupnpd, the sleeper
        assert sorted(lab.existing_namespaces()) == sorted(lab.namespaces)
        t0 = time.monotonic()
        lab.down()
        assert time.monotonic() - t0 < 30  # a guard: down() never waits out a process's timeout
    assert lab.existing_namespaces() == []
    assert sleeper.poll() is not None
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    # The session's lab was not touched.
    assert sorted(natlab.existing_namespaces()) == sorted(natlab.namespaces)
