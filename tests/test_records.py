"""Signed peer records: every forgery is refused with the right reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.peer.envelope import Envelope, make_unsigned, unmarshal_envelope
from libp2p.peer.peer_record import PeerRecord
from multiaddr import Multiaddr

from prozchain_discovery.records import (
    RecordError,
    RecordRejection,
    sign_record,
    verify_many,
    verify_record,
)
from tests.conftest import identity

ADDR = Multiaddr("/ip4/198.51.100.7/tcp/4001")


def _reason(data: bytes, **kw) -> RecordRejection:
    with pytest.raises(RecordError) as info:
        verify_record(data, **kw)
    return info.value.reason


def test_good_record():
    key, pid = identity(1)
    rec = verify_record(sign_record(pid, [ADDR], key.private_key, seq=3))
    assert rec.peer_id == pid and rec.seq == 3 and rec.addrs == (ADDR,)


def test_p2p_suffix_is_stripped():
    key, pid = identity(1)
    rec = verify_record(sign_record(pid, [Multiaddr(f"{ADDR}/p2p/{pid}")], key.private_key))
    assert rec.addrs == (ADDR,)


def test_wrong_signer():
    key1, pid1 = identity(1)
    key2, _ = identity(2)
    # A record about peer 1, signed by peer 2.
    env = Envelope(key2.public_key, b"\x03\x01", PeerRecord(pid1, [ADDR], 1).marshal_record(), b"")
    payload = env.raw_payload
    sig = key2.private_key.sign(make_unsigned("libp2p-peer-record", b"\x03\x01", payload))
    forged = Envelope(key2.public_key, b"\x03\x01", payload, sig).marshal_envelope()
    assert _reason(forged) is RecordRejection.SIGNER_MISMATCH


def test_tampered_payload():
    key, pid = identity(1)
    env = unmarshal_envelope(sign_record(pid, [ADDR], key.private_key))
    other = PeerRecord(pid, [Multiaddr("/ip4/6.6.6.6/tcp/1")], 99).marshal_record()
    tampered = Envelope(env.public_key, env.payload_type, other, env.signature).marshal_envelope()
    assert _reason(tampered) is RecordRejection.BAD_SIGNATURE


def test_wrong_domain():
    key, pid = identity(1)
    payload = PeerRecord(pid, [ADDR], 1).marshal_record()
    sig = key.private_key.sign(make_unsigned("some-other-domain", b"\x03\x01", payload))
    env = Envelope(key.public_key, b"\x03\x01", payload, sig).marshal_envelope()
    assert _reason(env) is RecordRejection.BAD_SIGNATURE


def test_wrong_payload_type():
    key, pid = identity(1)
    payload = PeerRecord(pid, [ADDR], 1).marshal_record()
    sig = key.private_key.sign(make_unsigned("libp2p-peer-record", b"\x99", payload))
    env = Envelope(key.public_key, b"\x99", payload, sig).marshal_envelope()
    assert _reason(env) is RecordRejection.WRONG_PAYLOAD_TYPE


def test_too_many_addresses():
    key, pid = identity(1)
    addrs = [Multiaddr(f"/ip4/10.{i // 250}.{i % 250}.1/tcp/1") for i in range(65)]
    assert _reason(sign_record(pid, addrs, key.private_key)) is RecordRejection.TOO_MANY_ADDRS


def test_ten_thousand_addresses_refused_by_size_first():
    key, pid = identity(1)
    addrs = [Multiaddr(f"/ip4/10.{i // 250 % 250}.{i % 250}.1/tcp/{i % 60000 + 1}") for i in range(10_000)]
    assert _reason(sign_record(pid, addrs, key.private_key)) is RecordRejection.TOO_LARGE


def test_unspecified_address():
    key, pid = identity(1)
    blob = sign_record(pid, [Multiaddr("/ip4/0.0.0.0/tcp/1")], key.private_key)
    assert _reason(blob) is RecordRejection.BAD_ADDRESS


def test_self():
    key, pid = identity(1)
    assert _reason(sign_record(pid, [ADDR], key.private_key), local_peer_id=pid) is RecordRejection.SELF


def test_verify_many_keeps_the_good_and_highest_seq():
    k1, p1 = identity(1)
    k2, p2 = identity(2)
    blobs = [
        sign_record(p1, [ADDR], k1.private_key, seq=1),
        sign_record(p1, [ADDR], k1.private_key, seq=5),
        b"junk",
        sign_record(p2, [ADDR], k2.private_key, seq=2),
    ]
    good, rejected = verify_many(blobs)
    assert {(r.peer_id, r.seq) for r in good} == {(p1, 5), (p2, 2)}
    assert rejected == {RecordRejection.MALFORMED: 1}


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_typed_error(data):
    try:
        verify_record(data)
    except RecordError:
        pass


@settings(max_examples=100)
@given(st.integers(0, 163), st.integers(0, 7))
def test_any_single_bit_flip_is_caught(pos, bit):
    key, pid = identity(3)
    blob = bytearray(sign_record(pid, [ADDR], key.private_key, seq=1))
    pos %= len(blob)
    blob[pos] ^= 1 << bit
    try:
        rec = verify_record(bytes(blob))
    except RecordError:
        return
    # A flip that still verifies can only be in non-signed framing bytes that decode the same.
    assert rec.peer_id == pid and rec.addrs == (ADDR,)
