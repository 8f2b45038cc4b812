"""The peer database: Bitcoin Core's addrman, for libp2p peers with signed records (sans-IO).

Design (read this before the code)
----------------------------------
Peers live in one of two fixed-size tables of buckets x slots:

* **new** (default 1024 buckets x 64 slots): peers we have heard of but never connected to.
  A peer heard of from a source in network group S, with its own group G, goes to bucket
  ``H(k, S, H(k, G, S) mod B_S) mod 1024`` where ``B_S`` (``new_buckets_per_source_group``,
  default 16) bounds how many buckets one source group can ever reach. Bitcoin uses 64; we use
  16 so that one /16 feeding us addresses of *any* group owns at most 1/64 of the new table.
  An attacker's addresses inside its own /16 from sources in its /16 land in a single bucket.
* **tried** (default 256 x 64): peers we have connected to, placed by their own group (a group
  reaches at most ``tried_buckets_per_group`` = 8 buckets).

``k`` is a secret 32-byte key, so an attacker cannot aim at buckets. The slot inside a bucket is
``H(k, table, bucket, peer id) mod 64``. A new peer whose slot is taken by a healthy entry is
*not* inserted: established entries cannot be flushed by volume (no freshness bias, Heilman et
al. 2015). A slot held by a "terrible" entry (stale, repeatedly failing) is reused.

Moving a peer to tried when its tried slot is taken does **not** evict: the pair is queued as a
collision and the old entry is tested (test-before-evict). ``resolve_collisions`` evicts the old
entry (back to new) only if it failed its test, or did not answer within the test window.

Invariants (checked by :meth:`PeerDatabase.check`, after every mutation with ``debug=True``)
1. Every entry sits in exactly one slot of exactly one table, the one its ``in_tried`` names,
   at the (bucket, slot) its stored placement inputs hash to.
2. Every occupied slot names an existing entry whose placement points back at that slot.
3. The per-table id lists and each entry's ``list_pos`` agree; counts add up.
4. No entry is the local peer; addresses per entry <= ``max_addrs_per_peer``.
5. An entry with an envelope has ``seq`` equal to that envelope's record seq (checked on add).

Staleness (Bitcoin's ``IsTerrible``, parameters in :class:`PeerTableParams`): an entry is
terrible if unseen for ``horizon_days``, if it failed ``max_retries`` times and never succeeded,
or if it failed ``max_failures`` times with no success in ``min_fail_days``. Never within a
minute of an attempt (so a peer being dialed is not dropped under our feet).

Time is always a parameter (``now``, seconds); randomness comes from an injected
``random.Random``. Nothing here touches a socket, a file or a clock.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ..addrs import AddrScope, group_of_bytes, may_share, network_group, share_class
from ..records import VerifiedRecord

__all__ = [
    "PeerSource",
    "PeerTableParams",
    "PeerEntry",
    "PeerDatabase",
    "PeerDbInvariantError",
]

DAY = 86400.0


class PeerSource(enum.Enum):
    STATIC = "static"
    BOOTSTRAP = "bootstrap"
    DNS = "dns"
    MDNS = "mdns"
    PEX = "pex"
    INBOUND = "inbound"


class PeerDbInvariantError(AssertionError):
    """An invariant of the peer database does not hold; the message names it."""


@dataclass(frozen=True)
class PeerTableParams:
    """The table's shape and eviction constants (Bitcoin Core's addrman values, scaled).

    Not an operator setting: those are :class:`~prozchain_discovery.config.PeerDbSettings`
    (``[peerdb]`` in TOML: path, outbound target, flush interval). ``min_peer_age`` is only
    the default for :meth:`PeerDatabase.get_peers_for_sharing`; the service copies it from
    the one operator setting, ``[pex].min_peer_age``.
    """

    new_buckets: int = 1024
    tried_buckets: int = 256
    bucket_size: int = 64
    new_buckets_per_source_group: int = 16
    tried_buckets_per_group: int = 8
    max_addrs_per_peer: int = 64
    horizon_days: float = 30.0
    max_retries: int = 3
    max_failures: int = 10
    min_fail_days: float = 7.0
    min_peer_age: float = 60.0
    anchors: int = 2
    test_window: float = 40 * 60.0  # a collision's old entry not tested by then is evicted


class PeerEntry:
    """One peer. Read-only for callers; mutate through :class:`PeerDatabase`."""

    __slots__ = (
        "pid", "_addrs", "envelope", "seq", "first_seen", "last_seen", "last_attempt",
        "last_success", "attempts", "failures", "source", "source_peer", "source_group",
        "group", "in_tried", "slot", "list_pos", "share",
    )

    def __init__(self, pid: bytes, addrs: tuple[bytes, ...], source: PeerSource, source_peer: bytes | None,
                 source_group: str, group: str, now: float) -> None:
        self.pid = pid
        # One address (the common case) is kept as bare bytes: a 1-tuple costs 64 B an entry.
        self._addrs: bytes | tuple[bytes, ...] = addrs[0] if len(addrs) == 1 else addrs
        self.share = share_class(addrs)  # who may be shown these addresses (addrs.may_share)
        self.envelope: bytes | None = None
        self.seq = 0
        self.first_seen = now
        self.last_seen = now
        self.last_attempt = 0.0
        self.last_success = 0.0
        self.attempts = 0
        self.failures = 0
        self.source = source
        self.source_peer = source_peer
        self.source_group = source_group
        self.group = group
        self.in_tried = False
        self.slot = -1
        self.list_pos = -1

    @property
    def peer_id(self) -> ID:
        return ID(self.pid)

    @property
    def signed(self) -> bool:
        return self.envelope is not None

    @property
    def addrs(self) -> tuple[Multiaddr, ...]:
        return tuple(Multiaddr(a) for a in self.raw_addrs)

    @property
    def raw_addrs(self) -> tuple[bytes, ...]:
        a = self._addrs
        return (a,) if isinstance(a, bytes) else a

    def set_addrs(self, addrs: tuple[bytes, ...]) -> None:
        self._addrs = addrs[0] if len(addrs) == 1 else addrs
        self.share = share_class(addrs)

    def __repr__(self) -> str:
        table = "tried" if self.in_tried else "new"
        return f"<PeerEntry {self.peer_id} {table} src={self.source.value} fails={self.failures}>"


def _intern(s: str) -> str:
    return sys.intern(s)


class PeerDatabase:
    """See the module docstring. All mutating methods take ``now`` (seconds)."""

    def __init__(
        self,
        config: PeerTableParams | None = None,
        *,
        key: bytes | None = None,
        rng: random.Random | None = None,
        local_peer_id: ID | None = None,
        debug: bool = False,
    ) -> None:
        self.config = config or PeerTableParams()
        self.key = key if key is not None else os.urandom(32)
        if len(self.key) != 32:
            raise ValueError("bucketing key must be 32 bytes")
        self.rng = rng or random.Random()
        self.local = local_peer_id.to_bytes() if local_peer_id is not None else None
        self.debug = debug
        c = self.config
        self._new: list[bytes | None] = [None] * (c.new_buckets * c.bucket_size)
        self._tried: list[bytes | None] = [None] * (c.tried_buckets * c.bucket_size)
        self._new_ids: list[bytes] = []
        self._tried_ids: list[bytes] = []
        # Occupancy per bucket and the list of non-empty buckets (for bucket-first selection).
        self._fill = {False: [0] * c.new_buckets, True: [0] * c.tried_buckets}
        self._busy: dict[bool, list[int]] = {False: [], True: []}
        self._busy_pos: dict[bool, dict[int, int]] = {False: {}, True: {}}
        self._entries: dict[bytes, PeerEntry] = {}
        self._collisions: dict[bytes, tuple[bytes, float]] = {}  # new pid -> (tried pid, since)
        self._anchors: list[bytes] = []
        self._group_cache: dict[bytes, str] = {}  # source address -> group (sources repeat)
        self.dirty: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.meta_dirty = True

    # ---- hashing & placement --------------------------------------------------------------
    def _h(self, *parts: Any) -> int:
        h = hashlib.blake2b(key=self.key, digest_size=8)
        for p in parts:
            b = p if isinstance(p, bytes) else str(p).encode()
            h.update(len(b).to_bytes(2, "big"))
            h.update(b)
        return int.from_bytes(h.digest(), "big")

    def _new_slot(self, pid: bytes, group: str, source_group: str) -> int:
        c = self.config
        h1 = self._h(b"N1", group, source_group) % c.new_buckets_per_source_group
        bucket = self._h(b"N2", source_group, h1) % c.new_buckets
        return bucket * c.bucket_size + self._h(b"NP", bucket, pid) % c.bucket_size

    def _tried_slot(self, pid: bytes, group: str) -> int:
        c = self.config
        h1 = self._h(b"T1", pid) % c.tried_buckets_per_group
        bucket = self._h(b"T2", group, h1) % c.tried_buckets
        return bucket * c.bucket_size + self._h(b"TP", bucket, pid) % c.bucket_size

    # ---- table bookkeeping ----------------------------------------------------------------
    def _list(self, tried: bool) -> list[bytes]:
        return self._tried_ids if tried else self._new_ids

    def _bucket_add(self, tried: bool, bucket: int) -> None:
        fill = self._fill[tried]
        fill[bucket] += 1
        if fill[bucket] == 1:
            self._busy_pos[tried][bucket] = len(self._busy[tried])
            self._busy[tried].append(bucket)

    def _bucket_remove(self, tried: bool, bucket: int) -> None:
        fill = self._fill[tried]
        fill[bucket] -= 1
        if fill[bucket] == 0:
            busy, pos = self._busy[tried], self._busy_pos[tried]
            i = pos.pop(bucket)
            last = busy.pop()
            if last != bucket:
                busy[i] = last
                pos[last] = i

    def _place(self, e: PeerEntry, tried: bool, slot: int) -> None:
        (self._tried if tried else self._new)[slot] = e.pid
        self._bucket_add(tried, slot // self.config.bucket_size)
        e.in_tried = tried
        e.slot = slot
        ids = self._list(tried)
        e.list_pos = len(ids)
        ids.append(e.pid)

    def _unplace(self, e: PeerEntry) -> None:
        table = self._tried if e.in_tried else self._new
        if table[e.slot] == e.pid:
            table[e.slot] = None
            self._bucket_remove(e.in_tried, e.slot // self.config.bucket_size)
        ids = self._list(e.in_tried)
        last = ids.pop()
        if last != e.pid:
            ids[e.list_pos] = last
            self._entries[last].list_pos = e.list_pos
        e.slot = -1
        e.list_pos = -1

    def _delete(self, e: PeerEntry) -> None:
        self._unplace(e)
        del self._entries[e.pid]
        self._collisions.pop(e.pid, None)
        self.dirty.discard(e.pid)
        self.deleted.add(e.pid)

    def _touch(self, e: PeerEntry) -> None:
        self.dirty.add(e.pid)
        self.deleted.discard(e.pid)

    def is_terrible(self, e: PeerEntry, now: float) -> bool:
        c = self.config
        if e.last_attempt and now - e.last_attempt < 60.0:
            return False
        if e.last_seen > now + 600:
            return True
        if now - e.last_seen > c.horizon_days * DAY:
            return True
        if e.last_success == 0.0 and e.failures >= c.max_retries:
            return True
        if now - e.last_success > c.min_fail_days * DAY and e.failures >= c.max_failures:
            return True
        return False

    # ---- adding ---------------------------------------------------------------------------
    def _source_group(self, source: PeerSource, source_addr: Multiaddr | None) -> str:
        if source_addr is not None:
            key = source_addr.to_bytes()
            hit = self._group_cache.get(key)
            if hit is not None:
                return hit
            try:
                group = _intern(network_group(source_addr))
            except Exception:
                return _intern("src:" + source.value)
            if len(self._group_cache) > 4096:
                self._group_cache.clear()
            self._group_cache[key] = group
            return group
        return _intern("src:" + source.value)

    def _encode_addrs(self, addrs: Sequence[Multiaddr]) -> tuple[bytes, ...]:
        if len(addrs) == 1:
            return (addrs[0].to_bytes(),)
        out: list[bytes] = []
        for a in addrs[: self.config.max_addrs_per_peer]:
            b = a.to_bytes()
            if b not in out:
                out.append(b)
        return tuple(out)

    def _insert(self, pid: bytes, addrs: tuple[bytes, ...], source: PeerSource, source_peer: ID | None,
                source_addr: Multiaddr | None, now: float) -> PeerEntry | None:
        group = _intern(group_of_bytes(addrs[0]))
        sgroup = self._source_group(source, source_addr)
        slot = self._new_slot(pid, group, sgroup)
        occupant = self._new[slot]
        if occupant is not None:
            old = self._entries[occupant]
            if not self.is_terrible(old, now):
                return None  # established entries are not flushed by newcomers
            self._delete(old)
        e = PeerEntry(pid, addrs, source, source_peer.to_bytes() if source_peer else None, sgroup, group, now)
        self._entries[pid] = e
        self._place(e, False, slot)
        self._touch(e)
        return e

    def add_record(self, rec: VerifiedRecord, source: PeerSource, now: float, source_peer: ID | None = None,
                   source_addr: Multiaddr | None = None) -> bool:
        """Store a verified signed record. False if stale (seq not newer), ours, or no slot."""
        pid = rec.peer_id.to_bytes()
        if pid == self.local or not rec.addrs:
            return False
        addrs = self._encode_addrs(rec.addrs)
        e = self._entries.get(pid)
        if e is None:
            e = self._insert(pid, addrs, source, source_peer, source_addr, now)
            if e is None:
                return False
        elif e.signed and rec.seq <= e.seq:
            e.last_seen = max(e.last_seen, now)
            return False
        e.envelope = rec.envelope_bytes
        e.seq = rec.seq
        e.set_addrs(addrs)
        e.last_seen = max(e.last_seen, now)
        self._touch(e)
        self._debug_check()
        return True

    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], source: PeerSource, now: float,
                  source_peer: ID | None = None, source_addr: Multiaddr | None = None) -> bool:
        """Unsigned addresses (DNS, mDNS, config). Never replaces addresses from a signed record."""
        pid = peer_id.to_bytes()
        if pid == self.local or not addrs:
            return False
        enc = self._encode_addrs(addrs)
        e = self._entries.get(pid)
        if e is None:
            ok = self._insert(pid, enc, source, source_peer, source_addr, now) is not None
            self._debug_check()
            return ok
        if not e.signed:
            merged = list(e.raw_addrs)
            for a in enc:
                if a not in merged and len(merged) < self.config.max_addrs_per_peer:
                    merged.append(a)
            e.set_addrs(tuple(merged))
        e.last_seen = max(e.last_seen, now)
        self._touch(e)
        return True

    # ---- outcomes -------------------------------------------------------------------------
    def mark_attempt(self, peer_id: ID, now: float) -> None:
        e = self._entries.get(peer_id.to_bytes())
        if e is not None:
            e.attempts += 1
            e.last_attempt = now
            self._touch(e)

    def mark_seen(self, peer_id: ID, now: float) -> None:
        e = self._entries.get(peer_id.to_bytes())
        if e is not None:
            e.last_seen = max(e.last_seen, now)
            self._touch(e)

    def mark_failure(self, peer_id: ID, now: float) -> None:
        e = self._entries.get(peer_id.to_bytes())
        if e is not None:
            e.failures += 1
            self._touch(e)

    def penalize(self, peer_id: ID, now: float, amount: int = 1) -> None:
        """Misbehaviour (forged records, ignored rate limits) counts as failures."""
        e = self._entries.get(peer_id.to_bytes())
        if e is None:
            return
        e.failures += amount
        e.last_attempt = 0.0  # a misbehaving peer gets no "being dialed" grace
        if self.is_terrible(e, now):
            self._delete(e)
        else:
            self._touch(e)
        self._debug_check()

    def mark_success(self, peer_id: ID, now: float, addr: Multiaddr | None = None) -> None:
        """A connection worked: the peer moves to tried (test-before-evict on a collision)."""
        pid = peer_id.to_bytes()
        e = self._entries.get(pid)
        if e is None:
            return
        e.last_success = now
        e.last_seen = now
        e.last_attempt = now
        e.failures = 0
        self._touch(e)
        if not e.in_tried:
            self._promote(e, now)
        self._debug_check()

    def _promote(self, e: PeerEntry, now: float) -> None:
        slot = self._tried_slot(e.pid, e.group)
        occupant = self._tried[slot]
        if occupant is not None and occupant != e.pid:
            if e.pid not in self._collisions:
                self._collisions[e.pid] = (occupant, now)
            return
        self._unplace(e)
        self._place(e, True, slot)
        self._collisions.pop(e.pid, None)

    def _demote(self, e: PeerEntry, now: float) -> None:
        """Move a tried entry back to new (its own source group), or drop it if no room."""
        self._unplace(e)
        slot = self._new_slot(e.pid, e.group, e.source_group)
        occupant = self._new[slot]
        if occupant is not None:
            old = self._entries[occupant]
            if not self.is_terrible(old, now):
                del self._entries[e.pid]
                self.deleted.add(e.pid)
                self.dirty.discard(e.pid)
                return
            self._delete(old)
        self._place(e, False, slot)
        self._touch(e)

    def pending_collisions(self) -> list[tuple[ID, ID]]:
        """(new peer waiting for tried, old tried peer to test)."""
        return [(ID(n), ID(o)) for n, (o, _) in self._collisions.items()]

    def select_collision_to_test(self) -> PeerEntry | None:
        if not self._collisions:
            return None
        new_pid = self.rng.choice(list(self._collisions))
        return self._entries.get(self._collisions[new_pid][0])

    def resolve_collisions(self, now: float) -> int:
        """Settle collisions whose old entry was tested (or not, within the test window)."""
        settled = 0
        for new_pid, (old_pid, since) in list(self._collisions.items()):
            new = self._entries.get(new_pid)
            old = self._entries.get(old_pid)
            if new is None or new.in_tried:
                self._collisions.pop(new_pid, None)
                continue
            if old is None or not old.in_tried:
                self._collisions.pop(new_pid, None)
                self._promote(new, now)
                settled += 1
                continue
            if old.last_success >= since:
                self._collisions.pop(new_pid, None)  # the old one is alive: keep it
                settled += 1
            elif (old.last_attempt >= since and old.failures > 0) or now - since > self.config.test_window:
                self._demote(old, now)
                self._collisions.pop(new_pid, None)
                self._promote(new, now)
                settled += 1
        self._debug_check()
        return settled

    def remove(self, peer_id: ID) -> None:
        e = self._entries.get(peer_id.to_bytes())
        if e is not None:
            self._delete(e)

    def expire(self, now: float) -> int:
        """Drop terrible entries (staleness rules); returns how many."""
        dropped = [e for e in self._entries.values() if self.is_terrible(e, now)]
        for e in dropped:
            self._delete(e)
        if dropped:
            self._debug_check()
        return len(dropped)

    # ---- queries --------------------------------------------------------------------------
    def get(self, peer_id: ID) -> PeerEntry | None:
        return self._entries.get(peer_id.to_bytes())

    def get_first_seen(self, peer_id: ID) -> float | None:
        e = self._entries.get(peer_id.to_bytes())
        return e.first_seen if e else None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, ID) and peer_id.to_bytes() in self._entries

    def has_pid(self, pid: bytes) -> bool:
        """``__contains__`` for a peer id's bytes (as the store and change sets hold them)."""
        return pid in self._entries

    def entries(self) -> Iterator[PeerEntry]:
        return iter(list(self._entries.values()))

    @property
    def new_count(self) -> int:
        return len(self._new_ids)

    @property
    def tried_count(self) -> int:
        return len(self._tried_ids)

    def _sample(self, ids: list[bytes], k: int) -> list[bytes]:
        if k >= len(ids):
            out = list(ids)
            self.rng.shuffle(out)
            return out
        return self.rng.sample(ids, k)

    def get_peers_for_sharing(
        self,
        n: int,
        now: float,
        *,
        requester: ID | None = None,
        requester_scope: AddrScope = AddrScope.PUBLIC,
        min_peer_age: float | None = None,
        signed_only: bool = True,
    ) -> list[PeerEntry]:
        """Up to ``n`` entries to hand out (seed §3.2): known longer than ``min_peer_age``, tried
        first, random within that, never the requester or ourselves, and only entries whose every
        address may be shown to a requester of ``requester_scope`` (signed records cannot be
        trimmed, so a record with a private address is not sent to a public requester)."""
        if n <= 0:
            return []
        age = self.config.min_peer_age if min_peer_age is None else min_peer_age
        skip = requester.to_bytes() if requester is not None else None
        out: list[PeerEntry] = []
        for ids in (self._tried_ids, self._new_ids):
            if len(out) >= n:
                break
            want = n - len(out)
            # Sample a few times what we need so filtering rarely leaves us short.
            for pid in self._sample(ids, min(len(ids), 3 * want + 16)):
                e = self._entries[pid]
                if pid == skip or now - e.first_seen < age or self.is_terrible(e, now):
                    continue
                if signed_only and e.envelope is None:
                    continue
                if not may_share(e.share, requester_scope):
                    continue
                out.append(e)
                if len(out) >= n:
                    break
        return out

    @staticmethod
    def _chance(e: PeerEntry, now: float) -> float:
        """Bitcoin's GetChance: recently tried or often failing entries are picked less."""
        chance = 1.0
        if e.last_attempt and now - e.last_attempt < 600:
            chance *= 0.01
        return chance * 0.66 ** min(e.failures, 8)

    def select_for_dial(
        self,
        now: float,
        *,
        exclude: Collection[ID] = (),
        outbound_groups: Collection[str] = (),
        backoff: Callable[[ID], bool] | None = None,
        new_only: bool = False,
    ) -> PeerEntry | None:
        """addrman's Select: 50/50 tried/new, then a random non-empty *bucket*, then the first
        occupied slot from a random position in it, accepted by chance. Choosing the bucket first
        (as Bitcoin Core does since v25) gives every bucket the same weight however full it is,
        so a source group confined to few buckets gets few picks however many entries it fed.
        At most one outbound peer per network group (``outbound_groups``)."""
        excl = {p.to_bytes() for p in exclude}
        kinds = [False] if new_only else [True, False]
        kinds = [k for k in kinds if self._busy[k]]
        if not kinds:
            return None
        size = self.config.bucket_size
        factor = 1.0
        for _ in range(400):
            tried = kinds[0] if len(kinds) == 1 else self.rng.random() < 0.5
            busy = self._busy[tried]
            bucket = busy[self.rng.randrange(len(busy))]
            table = self._tried if tried else self._new
            start = self.rng.randrange(size)
            pid = None
            for i in range(size):
                pid = table[bucket * size + (start + i) % size]
                if pid is not None:
                    break
            if pid is None or pid in excl:
                continue
            e = self._entries[pid]
            if e.group in outbound_groups:
                continue
            if backoff is not None and backoff(e.peer_id):
                continue
            if self.rng.random() < factor * self._chance(e, now):
                return e
            factor *= 1.2
        return None

    def select_feeler(self, now: float, exclude: Collection[ID] = ()) -> PeerEntry | None:
        """A NEW entry to test-connect (Bitcoin's feeler), or an old tried entry in collision."""
        collision = self.select_collision_to_test()
        if collision is not None:
            return collision
        return self.select_for_dial(now, exclude=exclude, new_only=True)

    # ---- anchors --------------------------------------------------------------------------
    def set_anchors(self, peer_ids: Sequence[ID]) -> None:
        anchors = [p.to_bytes() for p in peer_ids if p.to_bytes() in self._entries][: self.config.anchors]
        if anchors and anchors != self._anchors:
            self._anchors = anchors
            self.meta_dirty = True

    def anchors(self) -> list[PeerEntry]:
        return [self._entries[p] for p in self._anchors if p in self._entries]

    @property
    def anchor_ids(self) -> list[bytes]:
        return list(self._anchors)

    # ---- persistence support --------------------------------------------------------------
    def take_changes(self) -> tuple[list[PeerEntry], list[bytes]]:
        """Entries changed and ids deleted since the last call (the store writes these)."""
        changed = [self._entries[p] for p in self.dirty if p in self._entries]
        deleted = list(self.deleted)
        self.dirty = set()
        self.deleted = set()
        return changed, deleted

    def restore(self, e: PeerEntry, anchors: Sequence[bytes] = ()) -> bool:
        """Put back an entry loaded from disk at its computed slot (no dirty marking)."""
        if e.pid in self._entries or e.pid == self.local:
            return False
        slot = self._tried_slot(e.pid, e.group) if e.in_tried else self._new_slot(e.pid, e.group, e.source_group)
        table = self._tried if e.in_tried else self._new
        if table[slot] is not None:
            if not e.in_tried:
                return False
            e.in_tried = False  # tried collision on load (e.g. config changed): back to new
            slot = self._new_slot(e.pid, e.group, e.source_group)
            if self._new[slot] is not None:
                return False
        e.group = _intern(e.group)
        e.source_group = _intern(e.source_group)
        self._entries[e.pid] = e
        self._place(e, e.in_tried, slot)
        return True

    def set_anchor_ids(self, ids: Sequence[bytes]) -> None:
        self._anchors = list(ids)

    # ---- invariants -----------------------------------------------------------------------
    def _debug_check(self) -> None:
        if self.debug:
            self.check()

    def check(self) -> None:
        def fail(msg: str) -> None:
            raise PeerDbInvariantError(msg)

        if len(self._new_ids) + len(self._tried_ids) != len(self._entries):
            fail(f"list sizes {len(self._new_ids)}+{len(self._tried_ids)} != {len(self._entries)} entries")
        for tried, ids, table in ((False, self._new_ids, self._new), (True, self._tried_ids, self._tried)):
            for i, pid in enumerate(ids):
                e = self._entries.get(pid)
                if e is None:
                    fail(f"list of {'tried' if tried else 'new'} names a missing entry")
                    return
                if e.list_pos != i or e.in_tried != tried:
                    fail(f"{e}: list position {e.list_pos} != {i} or wrong table")
                want = self._tried_slot(pid, e.group) if tried else self._new_slot(pid, e.group, e.source_group)
                if e.slot != want or table[e.slot] != pid:
                    fail(f"{e}: slot {e.slot} is not its placement {want}")
                if len(e.raw_addrs) > self.config.max_addrs_per_peer:
                    fail(f"{e}: {len(e.raw_addrs)} addresses")
                if pid == self.local:
                    fail("the local peer is in the database")
            occupied = sum(1 for s in table if s is not None)
            size = self.config.bucket_size
            for b, n in enumerate(self._fill[tried]):
                if n != sum(1 for s in table[b * size : (b + 1) * size] if s is not None):
                    fail(f"bucket {b} fill count {n} is wrong")
                if (n > 0) != (b in self._busy_pos[tried]):
                    fail(f"bucket {b} non-empty list is wrong")
            if occupied != len(ids):
                fail(f"{occupied} occupied slots but {len(ids)} entries in {'tried' if tried else 'new'}")
        for new_pid in self._collisions:
            if new_pid not in self._entries:
                fail("collision names a missing entry")

    def stats(self) -> dict[str, Any]:
        by_source: dict[str, int] = {}
        for e in self._entries.values():
            by_source[e.source.value] = by_source.get(e.source.value, 0) + 1
        return {
            "total": len(self._entries),
            "new": len(self._new_ids),
            "tried": len(self._tried_ids),
            "signed": sum(1 for e in self._entries.values() if e.signed),
            "collisions": len(self._collisions),
            "by_source": by_source,
        }
