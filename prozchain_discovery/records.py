"""Signed peer records (libp2p RFC 0003) — verification with typed, countable reasons.

A record arrives as the bytes of a signed envelope (``libp2p.peer.envelope``). Before anything
is stored we check, in order, cheapest first:

1. size (``MAX_ENVELOPE_BYTES``) — before any parsing;
2. the envelope parses and its payload type is ``/libp2p/routing-state-record`` (0x0301);
3. the signature over the ``libp2p-peer-record`` domain (a tampered payload and a record
   signed for another domain fail here alike);
4. the record's peer id is the id of the signing key (no record about somebody else);
5. addresses parse, there are at most ``MAX_ADDRS_PER_RECORD`` of them, none unspecified.

The caller decides what else applies (not our own id, newer seq than stored). Each failure is a
:class:`RecordError` carrying a :class:`RecordRejection` so metrics can count by reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from libp2p.crypto.keys import PrivateKey
from libp2p.peer.envelope import Envelope, seal_record, unmarshal_envelope
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord, timestamp_seq
from libp2p.peer.peerstore import PeerStoreError
from multiaddr import Multiaddr

from .addrs import AddrScope, strip_p2p, transport_and_scope
from .wire.framing import MAX_ENVELOPE_BYTES

__all__ = [
    "PEER_RECORD_DOMAIN",
    "MAX_ENVELOPE_BYTES",
    "MAX_ADDRS_PER_RECORD",
    "RecordRejection",
    "RecordError",
    "VerifiedRecord",
    "verify_record",
    "sign_record",
    "verify_many",
    "VerifiedRecordCache",
    "RecordBatch",
]

PEER_RECORD_DOMAIN = "libp2p-peer-record"
PEER_RECORD_PAYLOAD_TYPE = b"\x03\x01"
MAX_ADDRS_PER_RECORD = 64


class RecordRejection(enum.Enum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    BAD_SIGNATURE = "bad_signature"
    SIGNER_MISMATCH = "signer_mismatch"
    BAD_ADDRESS = "bad_address"
    TOO_MANY_ADDRS = "too_many_addrs"
    SELF = "self"
    STALE_SEQ = "stale_seq"
    REQUESTER = "requester"


class RecordError(ValueError):
    """A record was refused; ``reason`` says why (for metrics and blame)."""

    def __init__(self, reason: RecordRejection, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedRecord:
    """A record whose envelope, signer and addresses have been checked."""

    peer_id: ID
    seq: int
    addrs: tuple[Multiaddr, ...]  # transport addresses, trailing /p2p/<id> stripped
    envelope_bytes: bytes

    @property
    def envelope(self) -> Envelope:
        return unmarshal_envelope(self.envelope_bytes)


def verify_record(
    data: bytes,
    *,
    max_addrs: int = MAX_ADDRS_PER_RECORD,
    local_peer_id: ID | None = None,
) -> VerifiedRecord:
    """Check a signed envelope carrying a PeerRecord; raise :class:`RecordError` if bad."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise RecordError(RecordRejection.TOO_LARGE, f"{len(data)} bytes > {MAX_ENVELOPE_BYTES}")
    try:
        env = unmarshal_envelope(bytes(data))
    except Exception as exc:
        raise RecordError(RecordRejection.MALFORMED, str(exc)[:120]) from exc
    if env.payload_type != PEER_RECORD_PAYLOAD_TYPE:
        raise RecordError(RecordRejection.WRONG_PAYLOAD_TYPE, env.payload_type.hex())
    try:
        env.validate(PEER_RECORD_DOMAIN)
    except Exception as exc:
        raise RecordError(RecordRejection.BAD_SIGNATURE, str(exc)[:120]) from exc
    try:
        record: PeerRecord = env.record()
    except Exception as exc:
        raise RecordError(RecordRejection.MALFORMED, f"payload: {exc}"[:160]) from exc
    try:
        signer = ID.from_pubkey(env.public_key)
    except Exception as exc:
        raise RecordError(RecordRejection.MALFORMED, f"key: {exc}"[:160]) from exc
    if signer != record.peer_id:
        raise RecordError(RecordRejection.SIGNER_MISMATCH, f"signed by {signer}")
    if local_peer_id is not None and record.peer_id == local_peer_id:
        raise RecordError(RecordRejection.SELF)
    if len(record.addrs) > max_addrs:
        raise RecordError(RecordRejection.TOO_MANY_ADDRS, f"{len(record.addrs)} > {max_addrs}")
    addrs: list[Multiaddr] = []
    for addr in record.addrs:
        try:
            transport, scope = transport_and_scope(addr)
        except Exception as exc:
            raise RecordError(RecordRejection.BAD_ADDRESS, str(exc)[:120]) from exc
        if scope is AddrScope.UNSPECIFIED:
            raise RecordError(RecordRejection.BAD_ADDRESS, f"unspecified address {transport}")
        if transport not in addrs:
            addrs.append(transport)
    return VerifiedRecord(record.peer_id, int(record.seq), tuple(addrs), bytes(data))


def sign_record(
    peer_id: ID, addrs: list[Multiaddr], key: PrivateKey, seq: int | None = None
) -> bytes:
    """Seal our own record. ``seq`` defaults to a timestamp (strictly increasing)."""
    record = PeerRecord(peer_id, [strip_p2p(a) for a in addrs], timestamp_seq() if seq is None else seq)
    return seal_record(record, key).marshal_envelope()


class VerifiedRecordCache:
    """Remembers the last ``size`` envelopes that verified, by their exact bytes.

    The same record reaches a node from many peers (every PEX answer repeats popular ones);
    a signature check costs ~100 us, a dict lookup ~100 ns. Identical bytes verify
    identically, so a hit is as good as a check. Only successes are cached: a forged record
    is re-checked (and re-counted) every time it is sent.
    """

    def __init__(self, size: int = 4096) -> None:
        from collections import OrderedDict

        self.size = size
        self._items: OrderedDict[bytes, VerifiedRecord] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def verify(self, data: bytes, *, max_addrs: int = MAX_ADDRS_PER_RECORD,
               local_peer_id: ID | None = None) -> VerifiedRecord:
        rec = self._items.get(data)
        if rec is not None and len(rec.addrs) <= max_addrs:
            self.hits += 1
            self._items.move_to_end(data)
            if local_peer_id is not None and rec.peer_id == local_peer_id:
                raise RecordError(RecordRejection.SELF)
            return rec
        self.misses += 1
        rec = verify_record(data, max_addrs=max_addrs, local_peer_id=local_peer_id)
        self._items[bytes(data)] = rec
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return rec


def verify_many(
    blobs: list[bytes],
    *,
    local_peer_id: ID | None = None,
    max_addrs: int = MAX_ADDRS_PER_RECORD,
    cache: VerifiedRecordCache | None = None,
) -> tuple[list[VerifiedRecord], dict[RecordRejection, int]]:
    """Verify each record on its own: bad ones are dropped and counted, the rest kept.

    Duplicates of one peer in the same answer keep only the highest seq.
    """
    batch = RecordBatch(blobs, local_peer_id=local_peer_id, max_addrs=max_addrs, cache=cache)
    return batch.finish(), batch.rejected


class RecordBatch:
    """The signed records of one answer, verified one at a time as the caller needs them.

    A joiner needs 7 of a bootstrap answer's 50 records to reach its minimum; checking all 50
    before the first dial (~100 us each) puts 5 ms on the critical path of a ~50 ms join.
    :meth:`next_good` verifies records in order until one passes and hands it out;
    :meth:`finish` verifies the rest. Nothing leaves the batch unverified. Rejections are
    counted in :attr:`rejected` as they are found, so the caller reports them once, at the
    end. A peer appears at most once from :meth:`next_good`; :meth:`finish` returns every good
    record not handed out yet (the highest seq per peer).
    """

    __slots__ = ("_blobs", "_pos", "_check", "_max_addrs", "_local", "_given", "_held", "rejected", "skip")

    def __init__(
        self,
        blobs: list[bytes],
        *,
        local_peer_id: ID | None = None,
        max_addrs: int = MAX_ADDRS_PER_RECORD,
        cache: VerifiedRecordCache | None = None,
        skip: ID | None = None,
    ) -> None:
        self._blobs = list(blobs)
        self._pos = 0
        self._check = cache.verify if cache is not None else verify_record
        self._max_addrs = max_addrs
        self._local = local_peer_id
        self._given: dict[ID, int] = {}  # peer id -> seq handed out by next_good
        self._held: dict[ID, VerifiedRecord] = {}  # verified, not handed out yet
        self.rejected: dict[RecordRejection, int] = {}
        self.skip = skip  # a peer whose record is dropped silently (the responder itself)

    def shuffle(self, rng: Any) -> None:
        """Randomise the order records are checked and handed out (before the first use)."""
        rng.shuffle(self._blobs)

    def _verify_next(self) -> VerifiedRecord | None:
        blob = self._blobs[self._pos]
        self._pos += 1
        try:
            rec: VerifiedRecord = self._check(blob, max_addrs=self._max_addrs, local_peer_id=self._local)
        except RecordError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            return None
        return None if rec.peer_id == self.skip else rec

    def next_good(self) -> VerifiedRecord | None:
        """The next record that verifies, from a peer not handed out before; None when done."""
        while self._pos < len(self._blobs):
            rec = self._verify_next()
            if rec is None:
                continue
            if rec.peer_id in self._given:
                if rec.seq > self._given[rec.peer_id]:
                    self._keep(rec)  # a newer record of a peer already handed out
                continue
            self._given[rec.peer_id] = rec.seq
            return rec
        return None

    def _keep(self, rec: VerifiedRecord) -> None:
        prev = self._held.get(rec.peer_id)
        if prev is None or rec.seq > prev.seq:
            self._held[rec.peer_id] = rec

    def finish(self) -> list[VerifiedRecord]:
        """Verify whatever is left; return the good records :meth:`next_good` did not give."""
        while self._pos < len(self._blobs):
            rec = self._verify_next()
            if rec is None:
                continue
            if rec.peer_id in self._given and rec.seq <= self._given[rec.peer_id]:
                continue
            self._keep(rec)
        held = list(self._held.values())
        self._held.clear()
        return held


def peerstore_record(peerstore: Any, peer_id: ID) -> Envelope | None:
    """The peer's signed record from py-libp2p's peerstore, or None.

    py-libp2p 0.8.1's ``get_peer_record`` raises ``PeerStoreError`` instead of returning None
    when the peer's addresses have expired (its garbage collection calls ``addrs()``, which
    raises for an expired peer); both mean "no usable record".
    """
    try:
        env: Envelope | None = peerstore.get_peer_record(peer_id)
    except PeerStoreError:
        return None
    return env
