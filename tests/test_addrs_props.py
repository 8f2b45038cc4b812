"""Properties of address scope and network group over every kind of address (issue #8).

The bytes functions (``scope_of_bytes`` / ``group_of_bytes``) read raw multiaddr bytes out of
signed records from anyone: they must never raise, whatever the bytes. The Multiaddr functions
(``scope_of`` / ``network_group``) must agree with them, and the groups must follow the rules of
the module docstring (checked here against ``ipaddress``'s own 6to4 / Teredo decoding).
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from prozchain_discovery.addrs import (
    AddressError,
    AddrScope,
    group_of_bytes,
    network_group,
    parse_multiaddr,
    scope_of,
    scope_of_bytes,
)
from tests.conftest import identity

PID = str(identity(78)[1])
RELAY = str(identity(79)[1])
FEW = settings(max_examples=150, deadline=None)

v4_int = st.integers(0, 2**32 - 1) | st.sampled_from(
    [0, 0x7F000001, 0x0A000001, 0xC0A80101, 0xAC100001, 0x64400001, 0xA9FE0101, 0xE0000001,
     0xFFFFFFFF, 0x2D0A0102, 0xC0000201]
)
port = st.integers(0, 65535)


def _v6(n: int) -> str:
    return str(ipaddress.IPv6Address(n))


# IPv6 addresses that embed an IPv4 one, built from (IPv4, 96 random bits).
def _mapped(v4: int, _r: int) -> str:
    return _v6(0xFFFF << 32 | v4)


def _siit(v4: int, _r: int) -> str:
    return _v6(0xFFFF0000 << 32 | v4)


def _nat64(v4: int, _r: int) -> str:
    return _v6(0x64FF9B << 96 | v4)


def _6to4(v4: int, r: int) -> str:
    return _v6(0x2002 << 112 | v4 << 80 | r & (2**80 - 1))


def _teredo(v4: int, r: int) -> str:
    return _v6(0x20010000 << 96 | (r >> 32) << 32 | v4 ^ 0xFFFFFFFF)


EMBEDDERS = [_mapped, _siit, _nat64, _6to4, _teredo]
embedded = st.builds(lambda f, v4, r: (f(v4, r), v4), st.sampled_from(EMBEDDERS), v4_int,
                     st.integers(0, 2**96 - 1))

ip4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), v4_int)
ip6 = st.builds(_v6, st.integers(0, 2**128 - 1)) | st.sampled_from(
    ["::1", "::", "fe80::1", "fd00::2", "2001:db8::1", "2a01:4f8::1", "ff02::1", "64:ff9b:1::1"]
) | embedded.map(lambda pair: pair[0])

# "--" in a label's 3rd and 4th place is reserved for IDNA ("xn--"): multiaddr's idna check
# refuses "00--0", so such labels are no DNS names to test with.
label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True).filter(
    lambda s: s[2:4] != "--"
)
suffix = st.sampled_from(
    ["com", "COM", "co.uk", "example", "de", "bücher.de", "xn--bcher-kva.de", "github.io",
     "libp2p.direct", "duckdns.org", "local", "localhost", "s3.amazonaws.com", "jp", "kyoto.jp"]
)
dns_name = st.builds(
    lambda labels, sfx, dot: ".".join([*labels, sfx]) + dot,
    st.lists(label, min_size=0, max_size=3), suffix, st.sampled_from(["", "."]),
)
dns_proto = st.sampled_from(["dns", "dns4", "dns6", "dnsaddr"])

tail = st.sampled_from(["/tcp/{p}", "/udp/{p}/quic-v1", "/udp/{p}", "/tcp/{p}/ws", ""]).flatmap(
    lambda t: st.builds(t.format, p=port)
)
with_id = st.sampled_from(["", f"/p2p/{PID}"])

direct = st.one_of(
    st.builds(lambda ip, t: f"/ip4/{ip}{t}", ip4, tail),
    st.builds(lambda ip, t: f"/ip6/{ip}{t}", ip6, tail),
    st.builds(lambda proto, name, t: f"/{proto}/{name}{t}", dns_proto, dns_name, tail),
    st.sampled_from([f"/p2p/{RELAY}", "/memory/7", "/ip6zone/eth0/ip6/fe80::1/tcp/1"]),
)
relayed = st.builds(lambda relay, end: f"{relay}/p2p/{RELAY}/p2p-circuit{end}", direct, with_id)
# /unix is a path: it takes the rest of the address, so it only ever comes last.
unix = st.sampled_from(["/unix/tmp/node.sock", "/unix/a/p2p/b", "/ip4/1.2.3.4/tcp/1/unix/x"])
address = st.builds(lambda a, end: a + end, direct, with_id) | relayed | unix


def _bytes_mutations(b: bytes) -> st.SearchStrategy[bytes]:
    """Valid bytes, truncated, extended or with one byte changed."""
    return st.one_of(
        st.just(b),
        st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n]),
        st.binary(min_size=1, max_size=4).map(lambda x: b + x),
        st.tuples(st.integers(0, max(len(b) - 1, 0)), st.integers(0, 255)).map(
            lambda iv: b[: iv[0]] + bytes([iv[1]]) + b[iv[0] + 1 :]
        ),
    )


raw = st.binary(max_size=48) | address.map(lambda t: Multiaddr(t).to_bytes()).flatmap(_bytes_mutations)


@FEW
@given(raw)
def test_bytes_functions_never_raise_and_agree_with_multiaddr_functions(b):
    scope, group = scope_of_bytes(b), group_of_bytes(b)
    assert isinstance(scope, AddrScope) and isinstance(group, str) and group
    ma = Multiaddr(b)  # multiaddr 0.2 takes any bytes; using them is what fails
    assert scope_of(ma) is scope and network_group(ma) == group
    try:
        parsed = parse_multiaddr(b)
    except AddressError:
        assert group == "other:invalid" and scope is AddrScope.OTHER
    else:
        str(parsed)  # what parse_multiaddr accepts can be used


@FEW
@given(address)
def test_every_address_kind_is_classified_the_same_by_both_paths(text):
    ma = Multiaddr(text)
    b = ma.to_bytes()
    assert scope_of(ma) is scope_of_bytes(b)
    assert network_group(ma) == group_of_bytes(b)
    assert group_of_bytes(b) != "other:invalid"
    # A trailing /p2p/<id> changes neither.
    if "/p2p/" not in text and "/unix/" not in text:
        with_peer = Multiaddr(f"{text}/p2p/{PID}")
        assert scope_of(with_peer) is scope_of(ma) and network_group(with_peer) == network_group(ma)


@FEW
@given(direct)
def test_relayed_address_is_in_its_relays_group_and_scope(relay):
    circuit = Multiaddr(f"{relay}/p2p/{RELAY}/p2p-circuit/p2p/{PID}")
    assert network_group(circuit) == "relay:" + network_group(Multiaddr(relay))
    assert scope_of(circuit) is scope_of(Multiaddr(relay))


def _linked_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The embedded IPv4, decoded by ipaddress itself (an independent reading of the formats)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    for net in ("64:ff9b::/96", "::ffff:0:0:0/96"):
        if ip in ipaddress.IPv6Network(net):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@FEW
@given(ip6, st.sampled_from(["/tcp/{p}", "/udp/{p}/quic-v1"]), port)
def test_ipv6_group_follows_embedded_ipv4_or_its_slash_32(ip_text, t, p):
    ip = ipaddress.IPv6Address(ip_text)
    addr = f"/ip6/{ip_text}" + t.format(p=p)
    group, scope = group_of_bytes(Multiaddr(addr).to_bytes()), scope_of(Multiaddr(addr))
    v4 = _linked_v4(ip)
    if v4 is not None:
        as_v4 = Multiaddr(f"/ip4/{v4}" + t.format(p=p))
        assert group == network_group(as_v4) and scope is scope_of(as_v4)
    elif scope.is_local or scope is AddrScope.UNSPECIFIED:
        assert group == f"local:{ip}:{p}"
    else:
        net = ipaddress.IPv6Network((ip, 32), strict=False)
        assert group == "6:" + str(net.network_address).rstrip(":")


@FEW
@given(v4_int, port)
def test_ipv4_group_is_its_slash_16_unless_local(n, p):
    ip = ipaddress.IPv4Address(n)
    ma = Multiaddr(f"/ip4/{ip}/tcp/{p}")
    scope = scope_of(ma)
    a, b, _, _ = ip.packed
    if scope.is_local or scope is AddrScope.UNSPECIFIED:
        assert network_group(ma) == f"local:{ip}:{p}"
    else:
        assert network_group(ma) == f"4:{a}.{b}"


@FEW
@given(embedded, port)
def test_embedded_ipv4_is_grouped_and_scoped_as_that_ipv4(pair, p):
    v6_text, v4 = pair
    v6, v4_ma = Multiaddr(f"/ip6/{v6_text}/tcp/{p}"), Multiaddr(f"/ip4/{ipaddress.IPv4Address(v4)}/tcp/{p}")
    assert network_group(v6) == network_group(v4_ma)
    assert scope_of(v6) is scope_of(v4_ma)


@FEW
@given(dns_proto, dns_name, label, tail)
def test_dns_group_is_a_registrable_domain_shared_by_its_subdomains(proto, name, sub, t):
    ma = Multiaddr(f"/{proto}/{name}{t}")
    group = network_group(ma)
    assert scope_of(ma) is AddrScope.DNS
    assert group.startswith("dns:") and group == group.lower() and not group.endswith(".")
    deeper = network_group(Multiaddr(f"/dns4/{sub}.{name}/tcp/1"))
    domain = group[len("dns:") :]
    if domain.count(".") < name.rstrip(".").count("."):
        # ``name`` is under a registrable domain: a subdomain more changes nothing.
        assert deeper == group
    else:
        # ``name`` is its own group (a public suffix, an unknown TLD, or the domain itself).
        assert deeper == group or deeper == f"dns:{sub.lower()}.{domain}"
