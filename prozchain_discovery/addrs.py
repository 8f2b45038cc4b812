"""Address classification for multiaddrs: scope (public / private / loopback ...) and network group.

Everything here is pure: no sockets, no DNS. It is shared by the peer database (bucketing,
diversity), the sharing rules (no private addresses to public requesters) and the host factory
(never advertise ``0.0.0.0``).

Network groups follow Bitcoin Core's ``GetGroup`` idea adapted to libp2p:

* IPv4: the /16 (``"4:203.0"``); IPv6: the /32 (``"6:2a01:4f8"``);
* IPv6 addresses that only carry an IPv4 address are that IPv4 address, for scope *and*
  group: IPv4-mapped ``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, the NAT64 well-known
  prefix ``64:ff9b::/96``, 6to4 ``2002:AABB:CCDD::/48`` (the router's IPv4) and Teredo
  ``2001:0::/32`` (the client's IPv4, the last 32 bits inverted), as Bitcoin Core's
  ``GetLinkedIPv4``. So ``/ip6/::ffff:45.10.1.2/tcp/1`` is in ``"4:45.10"``: an IPv4 host
  has one group however its address is spelt;
* relayed addresses (``.../p2p-circuit``) belong to the *relay's* group, prefixed ``"relay:"``
  so a relay cannot be confused with a direct peer in the same /16;
* loopback, private (RFC 1918 / ULA / CGNAT) and link-local addresses are grouped **per
  address** (``"local:127.0.0.1:4001"``): on a test network every loopback node would
  otherwise share one group and diversity rules would allow a single outbound peer;
* DNS names (``/dns``, ``/dns4``, ``/dns6``, ``/dnsaddr``) are grouped, unresolved, by
  registrable domain (``"dns:example.com"`` for ``/dns4/n1.seeds.Example.COM.``) under the
  ICANN section of the Public Suffix List: fifty subdomains of one domain are one operator.
  The private section is deliberately not used: it lists suffixes under which names are free
  for anyone (``libp2p.direct`` of AutoTLS, dynamic DNS), which would make groups free too.
  Names are IDNA (UTS 46) normalised first, so Unicode spellings of a domain are one group.
  A TLD the list does not know is a public suffix, as the list's algorithm's default rule
  ``*`` says: ``n1.evil.example`` and ``n2.evil.example`` are one group ``evil.example``
  (otherwise an unlisted TLD would give anyone a group per name). A name that is itself a
  public suffix (``co.uk``, ``localhost``, ``example``) is its own group;
* anything else (``/unix``, ``/onion3``, ...) is ``"other:"`` plus the address up to its
  ``/p2p/``; bytes that are not a valid multiaddr are ``"other:invalid"`` (scope OTHER).

The scope of an address is decided by its first ``ip4`` / ``ip6`` / DNS component, looking only
at the relay's part of a relayed address. The ``*_of_bytes`` functions take raw multiaddr bytes
(from signed records) and never raise; :func:`scope_of` and :func:`network_group` are the same
functions on a :class:`Multiaddr` (whose bytes multiaddr does not validate until used) and never
raise either. Plain ``/ip4|ip6/A/tcp/P`` addresses take an integer-only fast path.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

import idna
from multiaddr import Multiaddr
from multiaddr.codecs import codec_by_name
from multiaddr.protocols import protocol_with_code
from multiaddr.transforms import bytes_to_string
from publicsuffixlist import PublicSuffixList

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
    "transport_and_scope",
    "is_relayed",
    "peer_id_of",
    "is_unspecified",
    "parse_multiaddr",
    "AddressError",
    "scope_of_bytes",
    "group_of_bytes",
    "share_class",
    "may_share",
]


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
    """Parse text or binary into a Multiaddr, raising :class:`AddressError` on bad input.

    Binary input is checked here: multiaddr 0.2 accepts any bytes and fails only when the
    address is used (``str()``, ``value_for_protocol``)."""
    if isinstance(value, Multiaddr):
        return value
    try:
        ma = Multiaddr(value)
    except Exception as exc:  # multiaddr raises a zoo of exception types
        shown = value[:80] if isinstance(value, str) else value[:40].hex()
        raise AddressError(f"not a valid multiaddr: {shown!r} ({exc})") from exc
    if isinstance(value, bytes) and value and _parts(value) is None:
        raise AddressError(f"not a valid multiaddr: {value[:40].hex()!r}")
    return ma


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


def _v4_scope(n: int) -> AddrScope:
    """IPv4 scope by integer arithmetic (ipaddress's is_private walks a list of networks:
    ~20x slower, and this runs for every address the peer database sees)."""
    a = n >> 24
    if n == 0:
        return AddrScope.UNSPECIFIED
    if a == 127:
        return AddrScope.LOOPBACK
    if a == 10 or (n >> 20) == 0xAC1 or (n >> 16) == 0xC0A8 or (n >> 22) == 0x191 or (n >> 17) == 0x6309:
        return AddrScope.PRIVATE  # 10/8, 172.16/12, 192.168/16, 100.64/10, 198.18/15
    if (n >> 16) == 0xA9FE:
        return AddrScope.LINK_LOCAL  # 169.254/16
    if a == 0 or a >= 224:
        return AddrScope.OTHER  # "this network", multicast, reserved, broadcast
    if (n >> 8) == 0xC00000:
        return AddrScope.OTHER  # 192.0.0/24 (IETF protocol assignments)
    return AddrScope.PUBLIC  # includes the documentation ranges our NAT lab uses as "internet"


def _embedded_v4(n: int) -> int | None:
    """The IPv4 address an IPv6 address ``n`` stands for, or None (Bitcoin Core's
    ``GetLinkedIPv4``): mapped, SIIT, NAT64 well-known prefix, 6to4, Teredo."""
    if (n >> 96) == 0x2001_0000:
        return (n & 0xFFFF_FFFF) ^ 0xFFFF_FFFF  # Teredo 2001:0::/32: client IPv4, inverted
    if (n >> 112) == 0x2002:
        return (n >> 80) & 0xFFFF_FFFF  # 6to4 2002:AABB:CCDD::/48
    head = n >> 32
    if head == 0xFFFF or head == 0xFFFF_0000 or head == 0x64_FF9B << 64:
        return n & 0xFFFF_FFFF  # ::ffff:0:0/96, ::ffff:0:0:0/96, 64:ff9b::/96
    return None


def _v6_scope(n: int) -> AddrScope:
    v4 = _embedded_v4(n)
    if v4 is not None:
        return _v4_scope(v4)
    ip = ipaddress.IPv6Address(n)
    if ip.is_unspecified:
        return AddrScope.UNSPECIFIED
    if ip.is_loopback:
        return AddrScope.LOOPBACK
    if ip.is_link_local:
        return AddrScope.LINK_LOCAL
    if ip.is_multicast:
        return AddrScope.OTHER
    if ip.is_private:
        return AddrScope.PRIVATE
    if ip.is_reserved:
        return AddrScope.OTHER
    return AddrScope.PUBLIC


def scope_of(ma: Multiaddr) -> AddrScope:
    """Where an address can be reached from. A relayed address has the relay's scope.

    Never raises: an address whose bytes do not parse is :attr:`AddrScope.OTHER`."""
    return scope_of_bytes(ma.to_bytes())


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


def _plain_tcp(b: bytes) -> int:
    """4 or 6 for a binary ``/ip4/A/tcp/P`` or ``/ip6/A/tcp/P`` address (the common case), else 0."""
    n = len(b)
    if n == 8 and b[0] == 0x04 and b[5] == 0x06:
        return 4
    if n == 20 and b[0] == 0x29 and b[17] == 0x06:
        return 6
    return 0


def transport_and_scope(ma: Multiaddr) -> tuple[Multiaddr, AddrScope]:
    """``(strip_p2p(ma), scope_of(...))``, with a fast path for plain ``/ip4|ip6/A/tcp/P``
    (no string round trips: ~1 us instead of ~18 us; records are full of these)."""
    b = ma.to_bytes()
    if _plain_tcp(b):
        return ma, scope_of_bytes(b)
    transport = strip_p2p(ma)
    return transport, scope_of(transport)


# Multiaddr protocol codes.
_IP4, _TCP, _IP6, _UDP, _P2P, _CIRCUIT = 0x04, 0x06, 0x29, 0x0111, 0x01A5, 0x0122
_DNS = frozenset((0x35, 0x36, 0x37, 0x38))  # dns, dns4, dns6, dnsaddr

# One component of a binary multiaddr: (code, value text or None for flags, raw value, offset).
_Part = tuple[int, str | None, bytes, int]


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = b[i]  # IndexError when truncated
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _parts(b: bytes) -> list[_Part] | None:
    """The components of binary multiaddr ``b``, or None when it is not a valid one (unknown
    protocol, truncated, a value its codec refuses). Decodes as multiaddr's ``bytes_to_string``
    does, and also refuses a truncated last value, which that silently shortens."""
    out: list[_Part] = []
    i, end = 0, len(b)
    try:
        while i < end:
            start = i
            code, i = _uvarint(b, i)
            proto = protocol_with_code(code)
            if proto.codec is None:
                out.append((code, None, b"", start))
                continue
            codec = codec_by_name(proto.codec)
            if codec.SIZE > 0:
                size = codec.SIZE // 8
            else:
                size, i = _uvarint(b, i)
            if i + size > end:
                return None
            raw = b[i : i + size]
            i += size
            out.append((code, codec.to_string(proto, raw), raw, start))
    except Exception:  # multiaddr raises a zoo of exception types
        return None
    return out


def _scope_of_parts(parts: list[_Part]) -> AddrScope:
    for code, _text, raw, _ in parts:
        if code == _IP4:
            return _v4_scope(int.from_bytes(raw, "big"))
        if code == _IP6:
            return _v6_scope(int.from_bytes(raw, "big"))
        if code in _DNS:
            return AddrScope.DNS
        if code == _CIRCUIT:
            break  # a relayed address has the relay's scope
    return AddrScope.OTHER


def _v4_group(n: int, port: int | None) -> str:
    scope = _v4_scope(n)
    if scope.is_local or scope is AddrScope.UNSPECIFIED:
        return f"local:{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}:{port}"
    return f"4:{n >> 24}.{n >> 16 & 255}"


def _v6_group(n: int, port: int | None) -> str:
    v4 = _embedded_v4(n)
    if v4 is not None:
        return _v4_group(v4, port)
    scope = _v6_scope(n)
    if scope.is_local or scope is AddrScope.UNSPECIFIED:
        return f"local:{ipaddress.IPv6Address(n)}:{port}"
    hi, lo = n >> 112, n >> 96 & 0xFFFF  # the /32, spelt as str(IPv6Address(...)).rstrip(":")
    return f"6:{hi:x}:{lo:x}" if lo else f"6:{hi:x}" if hi else "6:"


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List shipped with ``publicsuffixlist`` (built once, ~30 ms), ICANN
    section only; an unknown TLD is a public suffix (the algorithm's default rule ``*``)."""
    return PublicSuffixList(accept_unknown=True, only_icann=True)


def _dns_group(name: str) -> str:
    """``"dns:"`` + the registrable domain of ``name`` (see the module docstring)."""
    if name.isascii():
        key = name.lower()  # what UTS 46 does to ASCII
    else:
        try:
            key = idna.encode(name, uts46=True).decode("ascii")
        except Exception:  # the domain codec already ran this very check; belt and braces
            key = name.lower()
    key = key.rstrip(".")
    try:
        domain = _public_suffixes().privatesuffix(key)
    except Exception:
        domain = None
    return "dns:" + (domain if isinstance(domain, str) and domain else key)


def _direct_group(b: bytes, parts: list[_Part], end: int) -> str:
    """The group of ``parts`` (no circuit among them), the components of ``b[:end]``."""
    port: int | None = None
    for code, _text, raw, _ in parts:
        if code == _TCP or code == _UDP:
            port = int.from_bytes(raw, "big")
            break
    for code, text, raw, _ in parts:
        if code == _IP4:
            return _v4_group(int.from_bytes(raw, "big"), port)
        if code == _IP6:
            return _v6_group(int.from_bytes(raw, "big"), port)
        if code in _DNS and text is not None:
            return _dns_group(text)
    for code, _text, _raw, offset in parts[1:]:
        if code == _P2P:
            end = offset  # the transport part, as strip_p2p
            break
    return "other:" + bytes_to_string(b[:end])


def _group_of_parts(b: bytes, parts: list[_Part]) -> str:
    for idx, part in enumerate(parts):
        if part[0] == _CIRCUIT:
            return "relay:" + _direct_group(b, parts[:idx], part[3])
    return _direct_group(b, parts, len(b))


def scope_of_bytes(b: bytes) -> AddrScope:
    """:func:`scope_of` for a binary multiaddr (from a signed record); never raises.

    Plain ``/ip4|ip6/A/tcp/P`` takes an integer-only fast path."""
    kind = _plain_tcp(b)
    if kind == 4:
        return _v4_scope(int.from_bytes(b[1:5], "big"))
    if kind == 6:
        return _v6_scope(int.from_bytes(b[1:17], "big"))
    parts = _parts(b)
    return AddrScope.OTHER if parts is None else _scope_of_parts(parts)


def group_of_bytes(b: bytes) -> str:
    """:func:`network_group` for a binary multiaddr (from a signed record); never raises.

    Bytes that are not a valid multiaddr are ``"other:invalid"``."""
    kind = _plain_tcp(b)
    if kind == 4:
        return _v4_group(int.from_bytes(b[1:5], "big"), b[6] << 8 | b[7])
    if kind == 6:
        return _v6_group(int.from_bytes(b[1:17], "big"), b[18] << 8 | b[19])
    parts = _parts(b)
    return "other:invalid" if parts is None else _group_of_parts(b, parts)


# Share classes of a set of addresses: who may be shown all of them.
SHARE_ANYONE = 0  # public / DNS only
SHARE_LOCAL = 1  # has private, loopback or link-local addresses: local requesters only
SHARE_NOBODY = 2  # has unspecified or unknown addresses


def share_class(addrs: Iterable[bytes]) -> int:
    worst = SHARE_ANYONE
    for b in addrs:
        scope = scope_of_bytes(b)
        if scope in (AddrScope.UNSPECIFIED, AddrScope.OTHER):
            return SHARE_NOBODY
        if scope not in (AddrScope.PUBLIC, AddrScope.DNS):
            worst = SHARE_LOCAL
    return worst


def may_share(klass: int, requester_scope: AddrScope) -> bool:
    """The rule of :func:`is_shareable_to`, for a whole record's share class."""
    if klass == SHARE_NOBODY:
        return False
    if requester_scope in (AddrScope.PUBLIC, AddrScope.DNS, AddrScope.OTHER):
        return klass == SHARE_ANYONE
    return True


def network_group(ma: Multiaddr) -> str:
    """The diversity group of an address (see the module docstring). Never raises."""
    return group_of_bytes(ma.to_bytes())
