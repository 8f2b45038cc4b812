"""The NAT lab: a small internet in network namespaces, with home routers doing Linux NAT.

Topology (every name below is a network namespace ``pzl-<name>``; routers are ``pzl-r<name>``)::

                       +------------------ inet (routed core, no NAT) ------------------+
                       |            |            |            |           |           |
      stun 198.51.100.1, .2   pub1 192.0.2.10   pub2 203.0.113.10   pub3 198.51.100.20  |
      (coturn, RFC 5780)                                                              |
            rcone WAN 192.0.2.100      rsym WAN 203.0.113.100      rupnp WAN 198.51.100.100
            MASQUERADE ("cone")        MASQUERADE --random-fully   MASQUERADE + miniupnpd
            LAN 10.0.1.0/24            LAN 10.0.2.0/24             LAN 10.0.3.0/24
            cone1 .2, cone2 .3         sym1 .2                     upnp1 .2

            rcone2 WAN 203.0.113.120   rsym2 WAN 192.0.2.120
            MASQUERADE ("cone")        MASQUERADE --random-fully
            LAN 10.0.4.0/24            LAN 10.0.5.0/24
            cone3 .2                   sym2 .2

* Router keys in :attr:`Lab.routers` are the namespace names without ``pzl-r``: ``cone``,
  ``sym``, ``upnp``, ``cone2``, ``sym2``. Host names win in :meth:`Lab.ns`: ``ns("cone2")`` is
  the *client* cone2 behind rcone, ``ns("rcone2")`` the second cone router; ``ns("sym2")`` is
  the client behind rsym2.

* Public hosts use only the documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24), so
  they fall in three different /16 network groups; the project's ``addrs.scope_of`` counts them
  as public. A fourth group would need an explicit scope policy, not a real public range.
* Every link is its own /28; the core's end of it is the link's last host address. The core
  knows every link by its connected routes; nothing routes to the routers' LANs.
* Routers (iptables-legacy): FORWARD policy DROP, LAN->WAN and ESTABLISHED,RELATED accepted;
  unsolicited input on the WAN dropped (as home routers do). The UPnP router also accepts UDP
  from the STUN server's ports 3478:3479, for miniupnpd's ``ext_perform_stun``.
* Optional SYN-dropping cone routers (``Lab(tcp_syn_drop=True)`` or :meth:`Lab.set_tcp_syn_drop`
  at run time): ``-A FORWARD -i wan -p tcp --syn -j DROP`` *before* the ESTABLISHED,RELATED
  accept, so an inbound bare SYN is dropped even when it answers our own SYN: a middlebox without
  TCP simultaneous open, where a TCP hole punch cannot work and a UDP (QUIC) one can.
* An optional one-way delay in the core: forwarded packets go through NFQUEUE to ``delay.py``.
  Every path between two namespaces crosses the core once, so the RTT grows by 2 * delay.

``Lab.up()`` first runs ``down()`` (a half-built lab never blocks the next run); ``down()`` ends
every process in a ``pzl-`` namespace by PID, then deletes the namespaces. The host namespace is
never touched: veth pairs are created directly inside the namespaces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "pzl-"
NETNS_DIR = Path("/run/netns")
STUN_PORT = 3478
STUN_ALT_PORT = 3479
UPNP_HTTP_PORT = 5555
NATPMP_PORT = 5351
DELAY_QUEUE = 0
# A middlebox without TCP simultaneous open: inbound bare SYNs from the WAN are dropped, even
# those that answer a SYN of ours (placed before the ESTABLISHED,RELATED accept).
SYN_DROP_RULE = ("-i", "wan", "-p", "tcp", "--syn", "-j", "DROP")


# --- topology as data ---------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """A place to run a node: a public host, the STUN server, or a client behind a router."""

    name: str
    ns: str
    ip: str
    ips: tuple[str, ...]
    prefixlen: int
    gateway: str
    router: str | None = None  # the router's name, for a client
    nat: str = "none"  # "none" | "cone" | "symmetric" (the NAT in front of it)
    public_ip: str = ""  # the address the internet sees it from (its own, or its router's WAN)
    upnp: bool = False  # its router runs miniupnpd

    @property
    def is_public(self) -> bool:
        return self.router is None


@dataclass(frozen=True)
class Router:
    name: str
    ns: str
    nat: str  # "cone" (MASQUERADE) | "symmetric" (MASQUERADE --random-fully)
    wan_ip: str
    wan_prefixlen: int
    wan_gateway: str
    lan_ip: str
    lan_net: str
    upnp: bool
    clients: tuple[str, ...]


# Public hosts: name, addresses, link subnet. The STUN server needs two addresses (RFC 5780).
PUBLIC_HOSTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("stun", ("198.51.100.1", "198.51.100.2"), "198.51.100.0/28"),
    ("pub1", ("192.0.2.10",), "192.0.2.0/28"),
    ("pub2", ("203.0.113.10",), "203.0.113.0/28"),
    ("pub3", ("198.51.100.20",), "198.51.100.16/28"),
)
# Routers: name, NAT kind, WAN address, WAN link subnet, LAN subnet, upnp, clients (name, host part).
ROUTERS: tuple[tuple[str, str, str, str, str, bool, tuple[tuple[str, int], ...]], ...] = (
    ("cone", "cone", "192.0.2.100", "192.0.2.96/28", "10.0.1.0/24", False, (("cone1", 2), ("cone2", 3))),
    ("sym", "symmetric", "203.0.113.100", "203.0.113.96/28", "10.0.2.0/24", False, (("sym1", 2),)),
    ("upnp", "cone", "198.51.100.100", "198.51.100.96/28", "10.0.3.0/24", True, (("upnp1", 2),)),
    # Second cone and symmetric routers (hole punching between two NATs of one kind), each in a
    # different /16 from its twin: only three documentation /16s exist, so groups repeat.
    ("cone2", "cone", "203.0.113.120", "203.0.113.112/28", "10.0.4.0/24", False, (("cone3", 2),)),
    ("sym2", "symmetric", "192.0.2.120", "192.0.2.112/28", "10.0.5.0/24", False, (("sym2", 2),)),
)

REQUIRED_COMMANDS: dict[str, str] = {  # command -> Debian package
    "ip": "iproute2",
    "iptables-legacy": "iptables",
    "iptables-legacy-restore": "iptables",
    "turnserver": "coturn",
    "turnutils_natdiscovery": "coturn",
    "miniupnpd": "miniupnpd-iptables",
    "upnpc": "miniupnpc",
    "ping": "iputils-ping",
}
PACKAGES_FILE = Path(__file__).with_name("packages.txt")


class LabError(RuntimeError):
    pass


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def node_env() -> dict[str, str]:
    """The environment for a project process in a lab namespace: the project on PYTHONPATH and
    no PROZCHAIN_DIAL_LOOPBACK_ONLY (lab traffic stays inside its namespaces, not on loopback)."""
    env = {k: v for k, v in os.environ.items() if k != "PROZCHAIN_DIAL_LOOPBACK_ONLY"}
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _last_host(net: str) -> str:
    n = ipaddress.ip_network(net)
    return str(n.broadcast_address - 1)


# --- packages ---------------------------------------------------------------------------------

def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")


def debian_packages() -> list[str]:
    """The packages in packages.txt (comments and blank lines skipped)."""
    out: list[str] = []
    for line in PACKAGES_FILE.read_text().splitlines():
        out.extend(line.split("#", 1)[0].split())
    return out


def missing_packages() -> list[str]:
    """Debian packages the lab needs that are not installed (judged by their commands)."""
    missing = {pkg for cmd, pkg in REQUIRED_COMMANDS.items() if _which(cmd) is None}
    if _which("dpkg-query") and "miniupnpd-iptables" not in missing:
        # miniupnpd-nftables also installs a `miniupnpd`; the lab's rules are iptables-legacy.
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "miniupnpd-iptables"],
                           capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.add("miniupnpd-iptables")
    return sorted(missing)


def ensure_packages(install: bool = True, quiet: bool = True) -> list[str]:
    """Install (as root, with apt-get) what the lab needs; returns what is still missing.

    Services are kept from starting on install (a temporary policy-rc.d): coturn and miniupnpd
    must run only inside the lab's namespaces."""
    missing = missing_packages()
    if not missing or not install or os.geteuid() != 0 or _which("apt-get") is None:
        return missing
    wanted = sorted(set(debian_packages()) | set(missing))
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# written by interop.natlab during apt-get install\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = subprocess.DEVNULL if quiet else None
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=out, stderr=out, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
                       env=env, stdout=out, stderr=out, check=False)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    return missing_packages()


# --- processes ----------------------------------------------------------------------------------

def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / ns).st_ino
    except OSError:
        return None


def _pids_in(inodes: set[int]) -> dict[int, int]:
    """pid -> netns inode, for every live process whose network namespace is in ``inodes``."""
    found: dict[int, int] = {}
    if not inodes:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue  # gone, or a zombie
        if ino in inodes:
            found[int(entry.name)] = ino
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _listening(pid: int, proto: str, port: int) -> bool:
    """Does the network namespace of ``pid`` have a socket bound to ``port`` (udp) or listening
    on it (tcp)? Read from /proc/PID/net, so no process is started."""
    lines: list[str] = []
    for table in (proto, proto + "6"):  # a dual-stack socket is listed in tcp6/udp6 only
        with contextlib.suppress(OSError):
            lines += Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    want = f":{port:04X}"
    for line in lines:
        parts = line.split()
        if parts[1].endswith(want) and (proto == "udp" or parts[3] == "0A"):
            return True
    return False


# --- the lab --------------------------------------------------------------------------------------

@dataclass
class Lab:
    """Build, use and tear down the NAT lab. Needs root.

    Topology as data: :attr:`hosts` (every place to run a node: public hosts, the STUN server and
    the clients), :attr:`public` and :attr:`clients` (subsets of it), :attr:`routers`,
    :attr:`stun_ips`. Processes: :meth:`run` / :meth:`spawn` in a namespace given by namespace
    name (``"pzl-cone1"``) or by host/router name (``"cone1"``, ``"cone"``, ``"inet"``).
    """

    prefix: str = PREFIX
    state_dir: Path | None = None
    hosts: dict[str, Host] = field(init=False)
    routers: dict[str, Router] = field(init=False)
    delay_ms: float = field(init=False, default=0.0)
    tcp_syn_drop: bool = False  # cone routers drop inbound bare TCP SYNs (module docstring)

    def __post_init__(self) -> None:
        if self.state_dir is None:
            self.state_dir = Path("/run") / f"{self.prefix.rstrip('-')}-natlab"
        self._procs: list[subprocess.Popen[Any]] = []
        self._daemons: dict[str, subprocess.Popen[Any]] = {}
        self._lock_fd: int | None = None
        self.hosts = {}
        self.routers = {}
        for name, ips, net in PUBLIC_HOSTS:
            plen = ipaddress.ip_network(net).prefixlen
            self.hosts[name] = Host(name, self.prefix + name, ips[0], ips, plen, _last_host(net),
                                    public_ip=ips[0])
        for name, nat, wan, wnet, lnet, upnp, clients in ROUTERS:
            lan = ipaddress.ip_network(lnet)
            lan_ip = str(lan.network_address + 1)
            self.routers[name] = Router(name, self.prefix + "r" + name, nat, wan,
                                        ipaddress.ip_network(wnet).prefixlen, _last_host(wnet),
                                        lan_ip, lnet, upnp, tuple(c for c, _ in clients))
            for cname, part in clients:
                ip = str(lan.network_address + part)
                self.hosts[cname] = Host(cname, self.prefix + cname, ip, (ip,), lan.prefixlen, lan_ip,
                                         router=name, nat=nat, public_ip=wan, upnp=upnp)

    # topology views
    @property
    def core_ns(self) -> str:
        return self.prefix + "inet"

    @property
    def public(self) -> dict[str, Host]:
        """Hosts with a public address (the STUN server included)."""
        return {n: h for n, h in self.hosts.items() if h.is_public}

    @property
    def clients(self) -> dict[str, Host]:
        """Hosts behind a router."""
        return {n: h for n, h in self.hosts.items() if not h.is_public}

    @property
    def stun(self) -> Host:
        return self.hosts["stun"]

    @property
    def stun_ips(self) -> tuple[str, str]:
        a, b = self.stun.ips
        return a, b

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab, the core first."""
        return [self.core_ns, *(h.ns for h in self.public.values()),
                *(r.ns for r in self.routers.values()), *(h.ns for h in self.clients.values())]

    def ns(self, name: str) -> str:
        """The namespace for a host name, a router name, ``"inet"`` or a namespace name."""
        if name.startswith(self.prefix):
            return name
        if name in self.hosts:
            return self.hosts[name].ns
        if name in self.routers:
            return self.routers[name].ns
        if name[:1] == "r" and name[1:] in self.routers:  # "rcone", as the namespace is named
            return self.routers[name[1:]].ns
        if name in ("inet", "core"):
            return self.core_ns
        raise KeyError(f"no host, router or namespace {name!r} in the lab")

    def existing_namespaces(self) -> list[str]:
        """Namespaces with this lab's prefix that exist now (the lab's, or leftovers)."""
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix))
        except FileNotFoundError:
            return []

    def lab_pids(self) -> dict[int, str]:
        """pid -> namespace, for every live process in one of this lab's namespaces."""
        by_inode = {}
        for ns in self.existing_namespaces():
            ino = _ns_inode(ns)
            if ino is not None:
                by_inode[ino] = ns
        return {pid: by_inode[ino] for pid, ino in _pids_in(set(by_inode)).items() if _alive(pid)}

    # processes
    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``ip netns exec NS argv...`` (for callers that start processes themselves)."""
        return ["ip", "netns", "exec", self.ns(ns), *argv]

    def run(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside namespace ``ns``."""
        return subprocess.run(self.argv(ns, argv), **kwargs)

    def spawn(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside ``ns``; it is ended by PID at :meth:`down` (or end it yourself).

        ``ip netns exec`` execs the command, so the Popen's pid is the command's pid."""
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(ns, argv), **popen_kwargs)
        self._procs.append(p)
        return p

    # locking: one lab per prefix on the machine at a time
    @contextlib.contextmanager
    def locked(self, timeout: float = 300.0) -> Iterator[None]:
        """Hold the lab's lock (an flock) while inside; re-entrant for this Lab object.

        The pytest fixture holds it for the whole session, so two test sessions on one machine
        take turns instead of tearing down each other's lab."""
        if self._lock_fd is not None:
            yield
            return
        assert self.state_dir is not None
        lock_path = self.state_dir.with_name(self.state_dir.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise LabError(f"the NAT lab is in use by another process ({lock_path})") from e
                time.sleep(0.2)
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    # build
    def up(self, delay_ms: float = 0) -> float:
        """Build the lab (after cleaning leftovers); returns the seconds it took."""
        if os.geteuid() != 0:
            raise LabError("the NAT lab needs root (network namespaces, veth, iptables)")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        missing = missing_packages()
        if missing:
            raise LabError(f"missing Debian packages: {' '.join(missing)} "
                           "(as root: python -m interop.natlab install)")
        with self.locked():
            t0 = time.monotonic()
            self.down()
            assert self.state_dir is not None
            self.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._build_links()
                self._configure()
                self._start_daemons()
                if delay_ms:
                    self.set_delay(delay_ms)
            except BaseException:
                self.down()
                raise
            took = time.monotonic() - t0
            self._write_state(built_in_s=round(took, 3))
            return took

    def _ip_batch(self, lines: list[str], ns: str | None = None) -> subprocess.Popen[str]:
        cmd = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        p.stdin.write("\n".join(lines) + "\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        p.stdin.close()  # type: ignore[union-attr]
        p.stdin = None  # so that communicate() does not flush it again
        return p

    @staticmethod
    def _wait_all(procs: list[tuple[str, subprocess.Popen[str]]]) -> None:
        errors = []
        for what, p in procs:
            out = p.stdout.read() if p.stdout else ""
            if p.wait() != 0:
                errors.append(f"{what}: exit {p.returncode}: {out.strip()}")
        if errors:
            raise LabError("building the NAT lab failed:\n" + "\n".join(errors))

    def _build_links(self) -> None:
        core = self.core_ns
        lines = [f"netns add {ns}" for ns in self.namespaces]
        for h in self.public.values():
            lines.append(f"link add name eth0 netns {h.ns} type veth peer name {h.name} netns {core}")
        for r in self.routers.values():
            lines.append(f"link add name wan netns {r.ns} type veth peer name r{r.name} netns {core}")
            lines.append(f"link add name lan netns {r.ns} type bridge")
            for c in r.clients:
                lines.append(f"link add name eth0 netns {self.hosts[c].ns} type veth "
                             f"peer name l-{c} netns {r.ns}")
        self._wait_all([("ip -batch", self._ip_batch(lines))])

    def _configure(self) -> None:
        core = self.core_ns
        jobs: list[tuple[str, subprocess.Popen[str]]] = []
        # Leaves: addresses and a default route; ip -batch only, no shell.
        for h in self.hosts.values():
            lines = ["link set dev lo up"]
            lines += [f"addr add {ip}/{h.prefixlen} dev eth0" for ip in h.ips]
            lines += ["link set dev eth0 up", f"route add default via {h.gateway}"]
            jobs.append((h.ns, self._ip_batch(lines, h.ns)))
        # Core and routers: addresses, ip_forward, iptables-legacy rules.
        core_lines = ["link set dev lo up"]
        for h in self.public.values():
            core_lines += [f"addr add {h.gateway}/{h.prefixlen} dev {h.name}", f"link set dev {h.name} up"]
        for r in self.routers.values():
            core_lines += [f"addr add {r.wan_gateway}/{r.wan_prefixlen} dev r{r.name}",
                           f"link set dev r{r.name} up"]
        jobs.append((core, self._netns_setup(core, core_lines, self._core_rules())))
        for r in self.routers.values():
            plen = ipaddress.ip_network(r.lan_net).prefixlen
            lines = ["link set dev lo up", f"addr add {r.wan_ip}/{r.wan_prefixlen} dev wan",
                     "link set dev wan up", f"addr add {r.lan_ip}/{plen} dev lan", "link set dev lan up"]
            for c in r.clients:
                lines += [f"link set dev l-{c} master lan", f"link set dev l-{c} up"]
            lines.append(f"route add default via {r.wan_gateway}")
            jobs.append((r.ns, self._netns_setup(r.ns, lines, self._router_rules(r))))
        self._wait_all(jobs)

    def _netns_setup(self, ns: str, ip_lines: list[str], rules: str) -> subprocess.Popen[str]:
        assert self.state_dir is not None
        batch = self.state_dir / f"{ns}.ip"
        batch.write_text("\n".join(ip_lines) + "\n")
        script = (f"ip -batch {batch} && echo 1 > /proc/sys/net/ipv4/ip_forward && "
                  "exec iptables-legacy-restore")
        p = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        p.stdin.write(rules)  # type: ignore[union-attr]
        p.stdin.close()  # type: ignore[union-attr]
        p.stdin = None  # so that communicate() does not flush it again
        return p

    def _core_rules(self) -> str:
        return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

    def _router_rules(self, r: Router) -> str:
        masq = "-j MASQUERADE --random-fully" if r.nat == "symmetric" else "-j MASQUERADE"
        f = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
        n = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"]
        m: list[str] = []
        if r.upnp:
            f.append(":MINIUPNPD - [0:0]")
            n += [":MINIUPNPD - [0:0]", ":MINIUPNPD-POSTROUTING - [0:0]"]
            m = ["*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                 ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", ":MINIUPNPD - [0:0]",
                 "-A PREROUTING -i wan -j MINIUPNPD", "COMMIT"]
        f.append("-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
        if r.upnp:  # miniupnpd's ext_perform_stun: answers come from both addresses and ports
            for ip in self.stun_ips:
                f.append(f"-A INPUT -i wan -p udp -s {ip} --sport {STUN_PORT}:{STUN_ALT_PORT} -j ACCEPT")
        f.append("-A INPUT -i wan -j DROP")
        if self.tcp_syn_drop and r.nat == "cone":
            f.append("-A FORWARD " + " ".join(SYN_DROP_RULE))
        f += ["-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
              "-A FORWARD -i lan -o wan -j ACCEPT",
              "-A FORWARD -i lan -o lan -j ACCEPT"]  # bridged LAN traffic, if br_netfilter is on
        if r.upnp:
            f.append("-A FORWARD -i wan ! -o wan -j MINIUPNPD")
            n += ["-A PREROUTING -i wan -j MINIUPNPD", "-A POSTROUTING -o wan -j MINIUPNPD-POSTROUTING"]
        f.append("COMMIT")
        n += [f"-A POSTROUTING -o wan {masq}", "COMMIT"]
        return "\n".join(f + n + m) + "\n"

    # daemons
    def _daemon(self, key: str, ns: str, argv: list[str]) -> subprocess.Popen[Any]:
        assert self.state_dir is not None
        log = open(self.state_dir / f"{key}.log", "wb")  # noqa: SIM115 - the child keeps it
        try:
            p = subprocess.Popen(self.argv(ns, argv), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self._daemons[key] = p
        self._procs.append(p)
        return p

    def _wait_ready(self, key: str, checks: list[tuple[str, int]], timeout: float = 10.0) -> None:
        p = self._daemons[key]
        deadline = time.monotonic() + timeout
        while not all(_listening(p.pid, proto, port) for proto, port in checks):
            if p.poll() is not None or time.monotonic() > deadline:
                assert self.state_dir is not None
                log = (self.state_dir / f"{key}.log").read_text(errors="replace")[-2000:]
                state = "exited" if p.returncode is not None else "not ready"
                raise LabError(f"{key} {state} in the NAT lab; its log:\n{log}")
            time.sleep(0.005)

    def _start_daemons(self) -> None:
        assert self.state_dir is not None
        sd = self.state_dir
        a, b = self.stun_ips
        self._daemon("coturn", self.stun.ns, [
            "turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "-z", "--stun-only",
            "-L", a, "-L", b, "-p", str(STUN_PORT), "--alt-listening-port", str(STUN_ALT_PORT),
            "--pidfile", str(sd / "coturn.pid"), "--userdb", str(sd / "coturn.db"),
            "--log-file", "stdout", "--simple-log", "--no-software-attribute"])
        self._wait_ready("coturn", [("udp", STUN_PORT), ("udp", STUN_ALT_PORT)])
        for r in self.routers.values():
            if not r.upnp:
                continue
            conf = sd / f"miniupnpd-{r.name}.conf"
            conf.write_text("\n".join([
                "ext_ifname=wan", "listening_ip=lan", f"http_port={UPNP_HTTP_PORT}",
                "enable_upnp=yes", "enable_natpmp=yes", "secure_mode=yes", f"uuid={uuid.uuid4()}",
                "ext_perform_stun=yes", f"ext_stun_host={a}", f"ext_stun_port={STUN_PORT}",
                f"lease_file={sd / f'miniupnpd-{r.name}.leases'}", "system_uptime=yes",
                f"allow 1024-65535 {r.lan_net} 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535",
            ]) + "\n")
            key = f"miniupnpd-{r.name}"
            self._daemon(key, r.ns, ["miniupnpd", "-f", str(conf), "-d",
                                     "-P", str(sd / f"{key}.pid")])
        for r in self.routers.values():
            if r.upnp:
                self._wait_ready(f"miniupnpd-{r.name}", [("tcp", UPNP_HTTP_PORT), ("udp", NATPMP_PORT)])

    def set_delay(self, delay_ms: float) -> None:
        """Set the one-way delay of the core (0 removes it); packets in flight are let through."""
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        old = self._daemons.pop("delay", None)
        rule = ["FORWARD", "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
        core = self.core_ns
        if delay_ms and self.run(core, ["iptables-legacy", "-C", *rule], capture_output=True).returncode:
            self.run(core, ["iptables-legacy", "-A", *rule], check=True)
        if old is not None:  # --queue-bypass: while nobody is bound, packets pass undelayed
            self._end([old])
        else:
            self._end_other_delay()
        if delay_ms:
            p = self._daemon("delay", core, [sys.executable, str(Path(__file__).with_name("delay.py")),
                                             "--queue", str(DELAY_QUEUE), "--delay-ms", str(delay_ms)])
            deadline = time.monotonic() + 5
            assert self.state_dir is not None
            log = self.state_dir / "delay.log"
            while b"delay: queue" not in log.read_bytes():
                if p.poll() is not None or time.monotonic() > deadline:
                    raise LabError("the delay program did not start:\n" + log.read_text(errors="replace"))
                time.sleep(0.005)
        else:
            self.run(core, ["iptables-legacy", "-D", *rule], capture_output=True)
        self.delay_ms = float(delay_ms)
        if self.state_dir is not None and self.state_dir.exists():
            self._write_state()

    def set_tcp_syn_drop(self, on: bool, routers: Sequence[str] | None = None) -> None:
        """Turn the SYN-dropping rule on or off on ``routers`` (default: every cone router),
        first in their FORWARD chain; idempotent. The lab as built is left otherwise unchanged."""
        names = list(routers) if routers is not None else [r.name for r in self.routers.values()
                                                           if r.nat == "cone"]
        for name in names:
            ns = self.routers[name].ns
            present = self.run(ns, ["iptables-legacy", "-C", "FORWARD", *SYN_DROP_RULE],
                               capture_output=True).returncode == 0
            if on and not present:
                self.run(ns, ["iptables-legacy", "-I", "FORWARD", "1", *SYN_DROP_RULE], check=True)
            elif not on:
                while present:
                    self.run(ns, ["iptables-legacy", "-D", "FORWARD", *SYN_DROP_RULE], check=True)
                    present = self.run(ns, ["iptables-legacy", "-C", "FORWARD", *SYN_DROP_RULE],
                                       capture_output=True).returncode == 0

    def _end_other_delay(self) -> None:
        """End a delay program started by another process (``python -m interop.natlab up``)."""
        state = self.read_state()
        pid = state.get("delay_pid")
        if isinstance(pid, int) and self.lab_pids().get(pid) == self.core_ns:
            _kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 2
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            _kill(pid, signal.SIGKILL)

    # state (for `status` and a `down` from another process)
    def read_state(self) -> dict[str, Any]:
        assert self.state_dir is not None
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self, **extra: Any) -> None:
        assert self.state_dir is not None
        state = self.read_state()
        state.update(extra)
        state["delay_ms"] = self.delay_ms
        daemons = {k: v for k, v in state.get("daemons", {}).items() if k != "delay"}
        daemons.update({k: p.pid for k, p in self._daemons.items() if p.poll() is None})
        state["daemons"] = daemons
        state["delay_pid"] = daemons.get("delay")
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=1) + "\n")

    # teardown
    def _end(self, procs: list[subprocess.Popen[Any]]) -> None:
        for p in procs:
            if p.poll() is None:
                _kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(p.pid, signal.SIGKILL)
                p.wait()
        for p in procs:
            if p in self._procs:
                self._procs.remove(p)

    def down(self) -> None:
        """End every process in the lab's namespaces (by PID), delete the namespaces."""
        with self.locked():
            self._end(list(self._procs))
            self._daemons.clear()
            for _ in range(3):  # a process may fork while we kill; look again
                pids = self.lab_pids()
                if not pids:
                    break
                for pid in pids:
                    _kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 2
                while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                    time.sleep(0.01)
                for pid in pids:
                    if _alive(pid):
                        _kill(pid, signal.SIGKILL)
            leftovers = self.existing_namespaces()
            if leftovers:
                self._ip_batch([f"netns del {ns}" for ns in leftovers]).communicate()
            self.delay_ms = 0.0
            if self.state_dir is not None and self.state_dir.exists():
                shutil.rmtree(self.state_dir, ignore_errors=True)
            still = self.existing_namespaces()
            if still:
                raise LabError(f"could not delete namespaces: {' '.join(still)}")

    def describe(self) -> str:
        """The topology, one line per namespace."""
        out = [f"{self.core_ns:12} core: routes every link; delay {self.delay_ms:g} ms one way"]
        for h in self.public.values():
            out.append(f"{h.ns:12} public {', '.join(h.ips)} via {h.gateway}")
        for r in self.routers.values():
            extra = " + miniupnpd (UPnP IGD, NAT-PMP/PCP)" if r.upnp else ""
            kind = "MASQUERADE --random-fully" if r.nat == "symmetric" else "MASQUERADE"
            out.append(f"{r.ns:12} router WAN {r.wan_ip} LAN {r.lan_ip}/{r.lan_net.split('/')[1]} "
                       f"{kind} ({r.nat}){extra}")
            for c in r.clients:
                h = self.hosts[c]
                out.append(f"{h.ns:12}   client {h.ip} via {h.gateway}, seen as {h.public_ip}")
        return "\n".join(out)
