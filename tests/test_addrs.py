"""Address helpers: the fast binary paths agree with the general (string) ones."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from prozchain_discovery.addrs import scope_of, strip_p2p, transport_and_scope
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
