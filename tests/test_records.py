"""Signed peer records: every forgery is refused with the right reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.peer.envelope import Envelope, make_unsigned, unmarshal_envelope
from libp2p.peer.peer_record import PeerRecord
from multiaddr import Multiaddr

from prozchain_discovery.records import (
    RecordBatch,
    RecordError,
    RecordRejection,
    VerifiedRecordCache,
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


# ---- RecordBatch: verified one at a time, on demand ---------------------------------------


def _signed(i: int, seq: int = 1) -> bytes:
    key, pid = identity(i)
    return sign_record(pid, [Multiaddr(f"/ip4/198.51.100.{i}/tcp/4001")], key.private_key, seq=seq)


def test_batch_verifies_only_what_is_taken():
    cache = VerifiedRecordCache()
    batch = RecordBatch([_signed(i) for i in range(10, 20)], cache=cache)
    first = batch.next_good()
    assert first is not None and first.peer_id == identity(10)[1]
    assert cache.misses == 1  # one signature checked for one record handed out
    rest = batch.finish()
    assert cache.misses == 10
    assert {r.peer_id for r in rest} == {identity(i)[1] for i in range(11, 20)}
    assert batch.finish() == [] and batch.next_good() is None


def test_batch_drops_and_counts_bad_records_without_losing_good_ones():
    key, pid = identity(30)
    tampered = unmarshal_envelope(_signed(31))
    other = PeerRecord(tampered.record().peer_id, [Multiaddr("/ip4/6.6.6.6/tcp/1")], 9).marshal_record()
    forged = Envelope(tampered.public_key, tampered.payload_type, other, tampered.signature).marshal_envelope()
    blobs = [b"junk", forged, _signed(32), sign_record(pid, [ADDR], key.private_key), _signed(33)]
    batch = RecordBatch(blobs, local_peer_id=pid)
    got = batch.next_good()
    assert got is not None and got.peer_id == identity(32)[1]  # junk and forgery skipped
    assert batch.rejected == {RecordRejection.MALFORMED: 1, RecordRejection.BAD_SIGNATURE: 1}
    rest = batch.finish()
    assert [r.peer_id for r in rest] == [identity(33)[1]]
    assert batch.rejected[RecordRejection.SELF] == 1


def test_batch_hands_out_each_peer_once_and_keeps_a_newer_record():
    blobs = [_signed(40, seq=1), _signed(40, seq=5), _signed(41), _signed(40, seq=3)]
    batch = RecordBatch(blobs)
    a = batch.next_good()
    b = batch.next_good()
    assert (a.peer_id, a.seq) == (identity(40)[1], 1)
    assert b.peer_id == identity(41)[1]  # not peer 40 again
    assert batch.next_good() is None
    rest = batch.finish()
    assert [(r.peer_id, r.seq) for r in rest] == [(identity(40)[1], 5)]  # the newest, once


def test_batch_skips_the_responder_silently():
    batch = RecordBatch([_signed(50), _signed(51)], skip=identity(50)[1])
    assert [r.peer_id for r in batch.finish()] == [identity(51)[1]]
    assert batch.rejected == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=60, max_value=66), max_size=12), st.integers(0, 12))
def test_batch_gives_the_same_peers_as_verify_many(ids, taken):
    blobs = [_signed(i) if i % 3 else b"\x00bad" + bytes([i]) for i in ids]
    batch = RecordBatch(blobs)
    out = [r for r in (batch.next_good() for _ in range(taken)) if r is not None]
    out += batch.finish()
    good, rejected = verify_many(blobs)
    assert sorted(r.peer_id.to_bytes() for r in out) == sorted(r.peer_id.to_bytes() for r in good)
    assert batch.rejected == rejected
