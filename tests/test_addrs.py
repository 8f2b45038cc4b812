"""Address helpers: the fast binary paths agree with the general ones; issue #8 regressions."""

from __future__ import annotations

import ipaddress

import pytest
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
    strip_p2p,
    transport_and_scope,
)
from tests.conftest import identity

PID = str(identity(77)[1])

ip4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ip6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)) | st.sampled_from(
    ["::1", "fe80::1", "fd00::2", "::", "2001:db8::1", "::ffff:10.0.0.1", "64:ff9b::1.2.3.4"]
)
port = st.integers(0, 65535)
addresses = st.one_of(
    st.builds(lambda ip, p: f"/ip4/{ip}/tcp/{p}", ip4, port),
    st.builds(lambda ip, p: f"/ip6/{ip}/tcp/{p}", ip6, port),
    st.builds(lambda ip, p: f"/ip4/{ip}/udp/{p}/quic-v1", ip4, port),
    st.builds(lambda p: f"/dns4/seed.example/tcp/{p}", port),
)


@settings(max_examples=300, deadline=None)
@given(addresses, st.booleans())
def test_transport_and_scope_matches_strip_and_scope(text, with_id):
    ma = Multiaddr(f"{text}/p2p/{PID}" if with_id else text)
    transport, scope = transport_and_scope(ma)
    assert transport == strip_p2p(ma)
    assert scope is scope_of(strip_p2p(ma))


# ---- issue #8: grouping and scope of addresses that embed an IPv4, and of DNS names --------


def _group(text: str) -> str:
    """The group by both paths, which must agree."""
    ma = Multiaddr(text)
    group = network_group(ma)
    assert group_of_bytes(ma.to_bytes()) == group, text
    return group


def _scope(text: str) -> AddrScope:
    ma = Multiaddr(text)
    scope = scope_of(ma)
    assert scope_of_bytes(ma.to_bytes()) is scope, text
    return scope


def test_ipv4_mapped_ipv6_is_its_ipv4():
    # Used to recurse forever (network_group <-> group_of_bytes) on the TCP fast path.
    for tail in ("/tcp/4001", "/udp/4001/quic-v1", f"/tcp/4001/p2p/{PID}"):
        assert _group(f"/ip6/::ffff:45.10.1.2{tail}") == _group(f"/ip4/45.10.1.2{tail}") == "4:45.10"
        assert _scope(f"/ip6/::ffff:45.10.1.2{tail}") is AddrScope.PUBLIC
    assert _group("/ip6/::ffff:127.0.0.1/tcp/4001") == _group("/ip4/127.0.0.1/tcp/4001")
    assert _group("/ip6/::ffff:127.0.0.1/tcp/4001") == "local:127.0.0.1:4001"
    assert _scope("/ip6/::ffff:127.0.0.1/tcp/4001") is AddrScope.LOOPBACK
    assert _scope("/ip6/::ffff:10.1.2.3/tcp/1") is AddrScope.PRIVATE
    assert _scope("/ip6/::ffff:0.0.0.0/tcp/1") is AddrScope.UNSPECIFIED
    relay = f"/ip6/::ffff:45.10.1.2/tcp/1/p2p/{PID}/p2p-circuit"
    assert _group(relay) == "relay:4:45.10"


def test_tunnelled_ipv6_is_grouped_and_scoped_by_its_embedded_ipv4():
    # 6to4 (2002::/16): bits 16..47 are the IPv4 of the 6to4 router.
    assert _group("/ip6/2002:2d0a:102::1/tcp/1") == "4:45.10"
    assert _group("/ip6/2002:2d0a:ffff:1::1/tcp/1") == "4:45.10"
    assert _scope("/ip6/2002:2d0a:102::1/tcp/1") is AddrScope.PUBLIC
    assert _group("/ip6/2002:a00:1::1/tcp/7") == "local:10.0.0.1:7"
    # Teredo (2001:0::/32): the client's public IPv4 is the last 32 bits, inverted.
    teredo = "/ip6/2001:0:4136:e378:8000:63bf:d2f5:fefd/tcp/1"  # client 45.10.1.2
    assert _group(teredo) == "4:45.10" and _scope(teredo) is AddrScope.PUBLIC
    # A different Teredo server, same client /16: same group.
    assert _group("/ip6/2001:0:5ef5:79fd:0:63bf:d2f5:1/udp/1/quic-v1") == "4:45.10"
    # NAT64 well-known prefix and SIIT, as Bitcoin Core's GetGroup.
    assert _group("/ip6/64:ff9b::45.10.9.9/tcp/1") == "4:45.10"
    assert _group("/ip6/::ffff:0:45.10.9.9/tcp/1") == "4:45.10"
    # Ordinary IPv6 keeps its /32.
    assert _group("/ip6/2a01:4f8::1/tcp/1") == "6:2a01:4f8"
    assert _group("/ip6/2001:4860::1/tcp/1") == "6:2001:4860"


def test_dns_names_are_grouped_by_registrable_domain():
    groups = {_group(f"/dns4/node{i}.seeds.example.com/tcp/4001") for i in range(50)}
    assert groups == {"dns:example.com"}  # one operator, one group (was 50)
    for proto in ("dns", "dns4", "dns6", "dnsaddr"):
        assert _group(f"/{proto}/a.b.Example.COM.") == "dns:example.com"
        assert _scope(f"/{proto}/a.b.example.com") is AddrScope.DNS
    assert _group("/dns4/x.y.example.co.uk/tcp/1") == "dns:example.co.uk"
    assert _group("/dns4/example.co.uk/tcp/1") != _group("/dns4/other.co.uk/tcp/1")
    # A name that is itself a public suffix: the name itself.
    assert _group("/dns4/co.uk/tcp/1") == "dns:co.uk"
    assert _group("/dns4/localhost/tcp/1") == "dns:localhost"
    assert _group("/dns4/example/tcp/1") == "dns:example"
    # A TLD the list does not know is a public suffix (the algorithm's default rule "*"): the
    # names under one domain of it are one group, as under a listed TLD.
    assert _group("/dns4/Seed.Example./tcp/1") == "dns:seed.example"
    assert _group("/dns4/a.seed.example/tcp/1") == "dns:seed.example"
    assert _group("/dns4/n1.evil.example/tcp/1") == _group("/dns4/n2.evil.example/tcp/1") == "dns:evil.example"
    assert _group("/dns4/n1.evil.example/tcp/1") != _group("/dns4/n1.good.example/tcp/1")
    assert _group("/dns4/a.b.node.localhost/tcp/1") == "dns:node.localhost"
    # Only ICANN suffixes count: free subdomains under a private-section suffix (AutoTLS's
    # libp2p.direct, dynamic DNS) would otherwise give anyone any number of groups.
    assert _group(f"/dns4/1-2-3-4.k51q{'a' * 20}.libp2p.direct/tcp/1") == "dns:libp2p.direct"
    assert _group("/dns4/alice.duckdns.org/tcp/1") == _group("/dns4/bob.duckdns.org/tcp/1")
    # Unicode spellings of one domain are one group (IDNA/UTS 46 normalised).
    assert _group("/dns4/a.bücher.de/tcp/1") == _group("/dns4/b.xn--bcher-kva.de/tcp/1")
    assert _group("/dns4/a.ＥXAMPLE.com/tcp/1") == "dns:example.com"
    # Relayed through a named relay: the relay's registrable domain.
    assert _group(f"/dns4/r1.relays.example.com/tcp/1/p2p/{PID}/p2p-circuit") == "relay:dns:example.com"


def test_bytes_functions_never_raise_on_malformed_records():
    ip4 = Multiaddr("/ip4/45.10.1.2/tcp/1").to_bytes()
    dns = Multiaddr("/dns4/example.com/tcp/1").to_bytes()
    bad = [
        b"\x04\x01\x02",  # truncated IPv4
        ip4[:-1],  # truncated port
        b"\xff\xff\xff\xff\x0f",  # unknown protocol code
        b"\x80",  # truncated varint
        b"\x36\x05ab",  # length prefix beyond the end
        b"\x36\x03\xff\xfe\xfd",  # a DNS name that is not UTF-8
        dns + b"\x06",  # trailing garbage
        b"\xa5\x03\x05hello",  # /p2p/ with a value that is not a CID
    ]
    for b in bad:
        assert scope_of_bytes(b) is AddrScope.OTHER, b
        assert group_of_bytes(b) == "other:invalid", b
        ma = Multiaddr(b)  # multiaddr 0.2 does not validate bytes until used
        assert scope_of(ma) is AddrScope.OTHER and network_group(ma) == "other:invalid"
        with pytest.raises(AddressError):  # observed addresses from peers come through here
            parse_multiaddr(b)
    assert parse_multiaddr(dns) == Multiaddr("/dns4/example.com/tcp/1")
