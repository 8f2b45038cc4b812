"""Address classification for multiaddrs: scope (public / private / loopback ...) and network group.

Everything here is pure: no sockets, no DNS. It is shared by the peer database (bucketing,
diversity), the sharing rules (no private addresses to public requesters) and the host factory
(never advertise ``0.0.0.0``).

Network groups follow Bitcoin Core's ``GetGroup`` idea adapted to libp2p:

* IPv4: the /16 (``"4:203.0"``); IPv6: the /32 (``"6:2001:db8"``);
* relayed addresses (``.../p2p-circuit``) belong to the *relay's* group, prefixed ``"relay:"``
  so a relay cannot be confused with a direct peer in the same /16;
* loopback, private (RFC 1918 / ULA / CGNAT) and link-local addresses are grouped **per
  address** (``"local:127.0.0.1:4001"``): on a test network every loopback node would
  otherwise share one group and diversity rules would allow a single outbound peer;
* DNS names (``/dns4``, ``/dns6``, ``/dnsaddr``) are grouped by name, unresolved.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from multiaddr import Multiaddr

if TYPE_CHECKING:
    from libp2p.peer.id import ID

__all__ = [
    "AddrScope",
    "ip_of",
    "port_of",
    "scope_of",
    "is_shareable_to",
    "network_group",
    "strip_p2p",
    "is_relayed",
    "peer_id_of",
    "is_unspecified",
    "parse_multiaddr",
    "AddressError",
]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_V4_DOC = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


class AddressError(ValueError):
    """A multiaddr could not be parsed; the message names the offending text."""


class AddrScope(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"  # RFC 1918, ULA fc00::/7, CGNAT 100.64/10
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"  # 0.0.0.0 / :: : never advertised
    DNS = "dns"  # a name: scope unknown until resolved
    OTHER = "other"  # multicast, reserved, unknown protocols

    @property
    def is_local(self) -> bool:
        return self in (AddrScope.PRIVATE, AddrScope.LOOPBACK, AddrScope.LINK_LOCAL)


def parse_multiaddr(value: str | bytes | Multiaddr) -> Multiaddr:
    """Parse text or binary into a Multiaddr, raising :class:`AddressError` on bad input."""
    if isinstance(value, Multiaddr):
        return value
    try:
        return Multiaddr(value)
    except Exception as exc:  # multiaddr raises a zoo of exception types
        shown = value[:80] if isinstance(value, str) else value[:40].hex()
        raise AddressError(f"not a valid multiaddr: {shown!r} ({exc})") from exc


def _first_value(ma: Multiaddr, codes: Iterable[str]) -> tuple[str, str] | None:
    for proto in ma.protocols():
        if proto.name in codes:
            try:
                return proto.name, ma.value_for_protocol(proto.name)
            except Exception:
                return None
    return None


def peer_id_of(ma: Multiaddr) -> ID | None:
    """The peer id at the end of an address (``.../p2p/<id>``), or None."""
    from libp2p.peer.id import ID

    found = None
    for proto in ma.protocols():
        if proto.name == "p2p":
            found = True
    if not found:
        return None
    try:
        text = str(ma).rsplit("/p2p/", 1)[1].split("/", 1)[0]
        return ID.from_base58(text)
    except Exception:
        return None


def is_relayed(ma: Multiaddr) -> bool:
    return any(p.name == "p2p-circuit" for p in ma.protocols())


def strip_p2p(ma: Multiaddr) -> Multiaddr:
    """The transport part of an address: everything before the first ``/p2p/`` component.

    For a relayed address ``/ip4/R/tcp/1/p2p/RELAY/p2p-circuit/p2p/X`` this keeps the
    circuit (``.../p2p/RELAY/p2p-circuit``) and drops only the trailing ``/p2p/X``.
    """
    text = str(ma)
    if is_relayed(ma):
        head, _, _tail = text.rpartition("/p2p-circuit")
        return Multiaddr(head + "/p2p-circuit")
    idx = text.find("/p2p/")
    return Multiaddr(text[:idx]) if idx > 0 else ma


def ip_of(ma: Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    found = _first_value(ma, ("ip4", "ip6"))
    if found is None:
        return None
    try:
        return ipaddress.ip_address(found[1].split("%")[0])
    except ValueError:
        return None


def port_of(ma: Multiaddr) -> int | None:
    found = _first_value(ma, ("tcp", "udp"))
    if found is None:
        return None
    try:
        return int(found[1])
    except ValueError:
        return None


def _ip_scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> AddrScope:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _ip_scope(ip.ipv4_mapped)
    if ip.is_unspecified:
        return AddrScope.UNSPECIFIED
    if ip.is_loopback:
        return AddrScope.LOOPBACK
    if ip.is_link_local:
        return AddrScope.LINK_LOCAL
    if ip.is_multicast:
        return AddrScope.OTHER
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return AddrScope.PRIVATE
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in n for n in _V4_DOC):
        # Documentation ranges are what our NAT lab uses as "the internet"; treat as public.
        return AddrScope.PUBLIC
    if ip.is_private:
        return AddrScope.PRIVATE
    if ip.is_reserved:
        return AddrScope.OTHER
    return AddrScope.PUBLIC


def scope_of(ma: Multiaddr) -> AddrScope:
    """Where an address can be reached from. A relayed address has the relay's scope."""
    if _first_value(ma, ("dns", "dns4", "dns6", "dnsaddr")) is not None:
        return AddrScope.DNS
    ip = ip_of(ma)
    if ip is None:
        return AddrScope.OTHER
    return _ip_scope(ip)


def is_unspecified(ma: Multiaddr) -> bool:
    return scope_of(ma) is AddrScope.UNSPECIFIED


def is_shareable_to(addr: Multiaddr, requester_scope: AddrScope) -> bool:
    """May ``addr`` be handed to a requester whose own address has ``requester_scope``?

    Public requesters get public (and DNS) addresses only: private addresses leak network
    layout and are useless to them (go-libp2p identify does the same). Local requesters may
    get anything except unspecified addresses.
    """
    scope = scope_of(addr)
    if scope in (AddrScope.UNSPECIFIED, AddrScope.OTHER):
        return False
    if requester_scope in (AddrScope.PUBLIC, AddrScope.DNS, AddrScope.OTHER):
        return scope in (AddrScope.PUBLIC, AddrScope.DNS)
    return True


def network_group(ma: Multiaddr) -> str:
    """The diversity group of an address (see the module docstring)."""
    if is_relayed(ma):
        text = str(ma)
        relay_part = Multiaddr(text[: text.find("/p2p-circuit")])
        return "relay:" + network_group(relay_part)
    dns = _first_value(ma, ("dns", "dns4", "dns6", "dnsaddr"))
    if dns is not None:
        return "dns:" + dns[1].lower()
    ip = ip_of(ma)
    if ip is None:
        return "other:" + str(strip_p2p(ma))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    scope = _ip_scope(ip)
    if scope.is_local or scope is AddrScope.UNSPECIFIED:
        return f"local:{ip}:{port_of(ma)}"
    if isinstance(ip, ipaddress.IPv4Address):
        a, b, _, _ = ip.packed
        return f"4:{a}.{b}"
    net = ipaddress.IPv6Network((ip, 32), strict=False)
    return "6:" + str(net.network_address).rstrip(":")
