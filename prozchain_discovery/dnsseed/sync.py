"""The DNS-seed client as a sans-IO state machine (protocols/dns-seed.md §6).

The adapter asks :meth:`SeedSync.wanted` for names, looks up their TXT records (in parallel),
and hands back each answer with :meth:`SeedSync.on_answer` or :meth:`SeedSync.on_failure`.
The machine verifies the root's signature against the URL's key, its sequence number against
the one remembered, every entry's hash against the name it was asked under, and every leaf as
PEX verifies records; verified peer records come out of :meth:`SeedSync.take_leaves`. No I/O,
no clock: the adapter decides when to re-sync (:meth:`SeedSync.start`).

Invariants:

1. Nothing leaves the machine unverified: a leaf is handed out only after its hash chain up to
   a verified root and its own signature have been checked.
2. Every hash is asked at most once per tree; a hash met twice is refused (``loop``).
3. Bounded: at most ``max_in_flight`` names out at once, ``max_queries`` queries, ``max_bytes``
   of TXT text and ``max_leaves`` verified leaves per sync, ``max_depth`` hash links, and
   ``max_children`` per branch; the log of rejections keeps the last ``MAX_REJECTIONS``; what
   is kept between syncs (the verified entries for reuse, the hashes handed out) is one tree.
4. The root's seq never goes down: a lower seq is ``rollback``, the same seq with another tree
   ``seq_reused``; the adapter persists :attr:`SeedSync.seq` / :attr:`SeedSync.root_hash`.

Random walk (as EIP-1459's client): the leaves wanted (``target``) are a *demand* split among
random children of each verified branch, so ``target`` leaves of a balanced tree arrive in
depth + 1 rounds of parallel queries (the root, then one round per level). Demand lost to a
thin subtree or a failed lookup, and demand added by :meth:`SeedSync.want`, is given to
unvisited children, deepest first, each as much as its subtree likely holds. ``want_all``
walks the rest. Entries verified under an earlier root are reused by hash: a re-sync queries
only what changed.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from libp2p.peer.id import ID

from ..records import RecordError, VerifiedRecord
from .tree import (
    MAX_CHILDREN,
    MAX_ENTRY_TEXT,
    MAX_STRINGS,
    ROOT_PREFIX,
    Branch,
    Leaf,
    SeedError,
    SeedRejection,
    entry_hash,
    hash_name,
    join_txt,
    parse_entry,
    parse_root,
    verify_leaf,
    verify_root,
)
from .url import SeedUrl

__all__ = ["SyncLimits", "SeedSync", "SyncPhase", "MAX_REJECTIONS", "MAX_RECORDS_PER_ANSWER", "walk_zone"]

MAX_REJECTIONS = 1000
MAX_RECORDS_PER_ANSWER = 16  # TXT records in one answer (the apex may hold SPF and others)


@dataclass(frozen=True)
class SyncLimits:
    max_depth: int = 6  # hash links root -> leaf; 22**5 = 5.1 M leaves
    max_children: int = MAX_CHILDREN
    max_leaves: int = 16_384
    max_queries: int = 18_000
    max_bytes: int = 16 * 1024 * 1024
    max_in_flight: int = 32


class SyncPhase(enum.Enum):
    IDLE = "idle"
    ROOT = "root"  # the root is wanted or being asked
    TREE = "tree"  # walking
    FAILED = "failed"  # no usable root this sync


@dataclass(slots=True)
class _Node:
    depth: int  # hash links from the root
    demand: int = 0  # leaves this subtree is asked to yield


class SeedSync:
    """One seed's client state (module docstring)."""

    def __init__(
        self,
        url: SeedUrl,
        *,
        last_seq: int | None = None,
        last_root_hash: bytes | None = None,
        limits: SyncLimits = SyncLimits(),
        local_peer_id: ID | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.limits = limits
        self.seq = last_seq
        self.root_hash = last_root_hash
        self._local = local_peer_id
        self._rng = rng or random.Random()
        self.phase = SyncPhase.IDLE
        self.rejected: Counter[SeedRejection] = Counter()
        self.rejections: list[tuple[str, SeedRejection, str]] = []
        self._target = 0
        self._full = False
        self._reset_walk()
        self._cache: dict[bytes, Branch | VerifiedRecord] = {}  # the last walk's, by hash
        self._given: set[bytes] = set()  # leaf hashes handed out (any tree)
        self._out: list[VerifiedRecord] = []  # verified, not taken yet (kept across syncs)

    def _reset_walk(self) -> None:
        self._nodes: dict[bytes, _Node] = {}
        self._ready: list[bytes] = []  # to ask, with demand or because of want_all
        self._frontier: list[bytes] = []  # known, not asked, no demand
        self._in_flight: dict[str, bytes | None] = {}  # name -> hash (None: the root)
        self._shortfall = 0
        self._leaf_depth = 0  # deepest leaf this walk met (0: none yet)
        self.depth = 0  # hash links from the root to the deepest entry this walk met whole
        self._width = 1  # widest branch this walk met
        self._tree: dict[bytes, Branch | VerifiedRecord] = {}
        self._peers: dict[ID, bytes] = {}
        self.queries = 0
        self.bytes = 0
        self._stopped = False
        self._complete = True  # no failure or refusal inside the tree so far

    # ---- driving ------------------------------------------------------------------------------

    def start(self, target: int) -> None:
        """Begin a sync (again): ask the root, then walk towards ``target`` leaves.

        What the last walk verified is kept, by hash, for reuse: an unchanged subtree under a
        new root is not asked again. Only one tree is kept (bounded by the limits).
        """
        if self._tree:
            self._cache = self._tree
            self._given &= self._cache.keys()  # bounded by one tree too
        self._reset_walk()
        self._target = max(0, target)
        self._full = False
        self.phase = SyncPhase.ROOT

    def want(self, n: int) -> None:
        """Raise the number of verified leaves wanted from this tree to ``n``."""
        if n > self._target:
            if self.phase is SyncPhase.TREE:
                self._shortfall += n - self._target
            self._target = n

    def want_all(self) -> None:
        """Walk the whole tree (the rest, after the first ``target``)."""
        self._full = True
        self._ready.extend(self._frontier)
        self._frontier.clear()
        self._settle()

    def wanted(self) -> list[str]:
        """Names to look up now (TXT); each is handed out once."""
        if self.phase is SyncPhase.ROOT and not self._in_flight and self.queries == 0:
            self.queries = 1
            self._in_flight[self.url.domain] = None
            return [self.url.domain]
        if self.phase is not SyncPhase.TREE or self._stopped:
            return []
        self._rebalance()
        out: list[str] = []
        while self._ready and len(self._in_flight) < self.limits.max_in_flight:
            if self.queries >= self.limits.max_queries:
                self._stop("queries", self.limits.max_queries)
                break
            digest = self._ready.pop()
            name = hash_name(digest, self.url.domain)
            self._in_flight[name] = digest
            self.queries += 1
            out.append(name)
        return out

    def on_answer(self, name: str, records: Sequence[Sequence[bytes | str]]) -> None:
        """The TXT records found at ``name`` (each a sequence of strings)."""
        name = name.lower().rstrip(".")
        if name not in self._in_flight:
            return  # not asked (or asked in an earlier sync): ignore
        digest = self._in_flight.pop(name)
        if self._stopped:
            return  # a bound was reached: answers still out are dropped unread
        if not isinstance(records, (list, tuple)) or len(records) > MAX_RECORDS_PER_ANSWER:
            self._refuse_lookup(name, digest, SeedError(SeedRejection.OVERSIZED, "too many TXT records"))
            return
        size = 0
        for rec in records:
            if isinstance(rec, (list, tuple)) and len(rec) <= MAX_STRINGS:  # longer: refused unread
                size += sum(len(s) for s in rec if isinstance(s, (bytes, str)))
        if self.bytes + size > self.limits.max_bytes:
            self._stop("bytes", self.limits.max_bytes)
            return
        self.bytes += size  # text of the answers read (refused ones too)
        if digest is None:
            self._on_root(name, records)
        else:
            self._on_entry(name, digest, records)
        self._settle()

    def on_failure(self, name: str, detail: str = "") -> None:
        """The lookup of ``name`` failed (NXDOMAIN, timeout, SERVFAIL): the path withheld it."""
        name = name.lower().rstrip(".")
        if name not in self._in_flight:
            return
        digest = self._in_flight.pop(name)
        self._refuse_lookup(name, digest, SeedError(SeedRejection.UNAVAILABLE, detail))
        self._settle()

    def take_leaves(self) -> list[VerifiedRecord]:
        """Verified records not handed out before (records of the same peer: highest seq)."""
        out, self._out = self._out, []
        return out

    # ---- state --------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Queries are out or could be asked now."""
        return bool(self._in_flight) or (self.phase is SyncPhase.ROOT) or (
            self.phase is SyncPhase.TREE and not self._stopped and bool(self._ready or (self._shortfall and self._frontier))
        )

    @property
    def complete(self) -> bool:
        """The whole tree was walked and every entry in it verified (``seed verify``)."""
        return (self.phase is SyncPhase.TREE and not self.busy and not self._frontier
                and not self._stopped and self._complete)

    def tree_leaves(self) -> list[VerifiedRecord]:
        """Every verified leaf of the current tree (cached ones included); after a refused
        root, of the last tree that verified."""
        return [e for e in self._tree.values() if isinstance(e, VerifiedRecord)]

    def walk_leaves(self) -> list[VerifiedRecord]:
        """The leaves this sync's walk has reached, one per peer (its highest seq), whether or
        not :meth:`take_leaves` handed them out before; none when the root was refused."""
        if self.phase is not SyncPhase.TREE:
            return []
        out = []
        for digest in self._peers.values():
            rec = self._tree[digest]
            assert isinstance(rec, VerifiedRecord)
            out.append(rec)
        return out

    @property
    def leaves_verified(self) -> int:
        return len(self._peers)

    # ---- internals ----------------------------------------------------------------------------

    def _reject(self, name: str, exc: SeedError) -> None:
        self.rejected[exc.reason] += 1
        self.rejections.append((name, exc.reason, exc.detail))
        if len(self.rejections) > MAX_REJECTIONS:
            del self.rejections[0]

    def _refuse_lookup(self, name: str, digest: bytes | None, exc: SeedError) -> None:
        if digest is None:
            self._root_refused(name, exc)
            return
        self._reject(name, exc)
        self._complete = False
        self._shortfall += self._nodes[digest].demand

    def _stop(self, what: str, bound: int) -> None:
        if not self._stopped:
            self._stopped = True
            self._complete = False
            self._reject(self.url.domain, SeedError(SeedRejection.LIMIT, f"{what} > {bound}"))

    def _root_refused(self, name: str, exc: SeedError) -> None:
        """No usable root this sync: the last verified tree stays the current one."""
        self._reject(name, exc)
        self.phase = SyncPhase.FAILED
        self._tree = dict(self._cache)

    def _on_root(self, name: str, records: Sequence[Sequence[bytes | str]]) -> None:
        best = None
        error: SeedError | None = None
        for rec in records:
            try:
                text = join_txt(rec)
                if not text.startswith(ROOT_PREFIX):
                    continue  # another TXT record at the apex (SPF...), or a root of another version
                root = parse_root(text)
                verify_root(root, self.url)
            except SeedError as exc:
                error = error or exc
                continue
            if best is None or root.seq > best.seq:
                best = root
        if best is None:
            self._root_refused(name, error or SeedError(SeedRejection.NO_ROOT))
            return
        if self.seq is not None and best.seq < self.seq:
            self._root_refused(name, SeedError(SeedRejection.ROLLBACK, f"seq {best.seq} < {self.seq}"))
            return
        if self.seq is not None and best.seq == self.seq and self.root_hash not in (None, best.top):
            self._root_refused(name, SeedError(SeedRejection.SEQ_REUSED, f"seq {best.seq}"))
            return
        self.seq, self.root_hash = best.seq, best.top
        self.phase = SyncPhase.TREE
        self._nodes[best.top] = _Node(depth=1, demand=self._target)
        self._ready.append(best.top)

    def _on_entry(self, name: str, digest: bytes, records: Sequence[Sequence[bytes | str]]) -> None:
        error: SeedError | None = None
        for rec in records:
            try:
                text = join_txt(rec, MAX_ENTRY_TEXT)
            except SeedError as exc:
                error = error or exc
                continue
            if entry_hash(text) != digest:
                error = error or SeedError(SeedRejection.HASH_MISMATCH)
                continue
            self.depth = max(self.depth, self._nodes[digest].depth)
            try:
                entry = parse_entry(text, max_children=self.limits.max_children)
                if isinstance(entry, Leaf):
                    self._accept_leaf(digest, verify_leaf(entry, local_peer_id=self._local))
                else:
                    self._accept_branch(digest, entry)
            except RecordError:  # our own record: not an attack, not a peer to dial
                self._accept_own(digest)
            except SeedError as exc:
                self._refuse_lookup(name, digest, exc)
            return
        self._refuse_lookup(name, digest, error or SeedError(SeedRejection.HASH_MISMATCH, "no TXT record"))

    def _accept_own(self, digest: bytes) -> None:
        node = self._nodes[digest]
        self._shortfall += node.demand

    def _accept_leaf(self, digest: bytes, rec: VerifiedRecord) -> None:
        node = self._nodes[digest]
        prev = self._peers.get(rec.peer_id)
        if prev is None and len(self._peers) >= self.limits.max_leaves:
            self._stop("leaves", self.limits.max_leaves)
            return
        self._tree[digest] = rec
        self._leaf_depth = max(self._leaf_depth, node.depth)
        if prev is not None:
            other = self._tree[prev]
            assert isinstance(other, VerifiedRecord)
            self._shortfall += node.demand
            if rec.seq <= other.seq:
                return
        elif node.demand > 1:
            self._shortfall += node.demand - 1
        self._peers[rec.peer_id] = digest
        if digest not in self._given:
            self._given.add(digest)
            self._out.append(rec)

    def _accept_branch(self, digest: bytes, branch: Branch) -> None:
        node = self._nodes[digest]
        self._tree[digest] = branch
        if not branch.children:
            self._shortfall += node.demand
            return
        if node.depth + 1 > self.limits.max_depth:
            self._complete = False
            self._shortfall += node.demand
            self._reject(hash_name(digest, self.url.domain),
                         SeedError(SeedRejection.TOO_DEEP, f"children at depth {node.depth + 1}"))
            return
        self._width = max(self._width, len(branch.children))
        fresh: list[bytes] = []
        for child in branch.children:
            if child in self._nodes:
                self._complete = False
                self._reject(hash_name(child, self.url.domain), SeedError(SeedRejection.LOOP, "met twice"))
                continue
            self._nodes[child] = _Node(depth=node.depth + 1)
            fresh.append(child)
        self._rng.shuffle(fresh)
        demand = node.demand
        if not fresh:
            self._shortfall += demand
            return
        chosen = min(len(fresh), demand)
        for i, child in enumerate(fresh):
            if i < chosen:
                self._nodes[child].demand = demand // chosen + (1 if i < demand % chosen else 0)
                self._ready.append(child)
            elif self._full:
                self._ready.append(child)
            else:
                self._frontier.append(child)

    def _capacity(self, depth: int) -> int:
        """The leaves an unvisited entry at ``depth`` likely holds: the builder balances its
        trees, so ``width ** levels`` below it, leaves being at the deepest depth met so far."""
        levels = self._leaf_depth - depth
        if levels <= 0:
            return 1
        return min(self._width ** levels, self.limits.max_leaves)

    def _rebalance(self) -> None:
        """Give lost or added demand to unvisited children, deepest first (fewest rounds to a
        leaf), each as much as its subtree likely holds: a large demand (``want``) fills whole
        subtrees instead of asking every branch of the tree for one leaf."""
        if self._shortfall <= 0 or not self._frontier:
            return
        self._rng.shuffle(self._frontier)
        self._frontier.sort(key=lambda h: self._nodes[h].depth)
        while self._shortfall > 0 and self._frontier:
            child = self._frontier.pop()
            give = min(self._shortfall, self._capacity(self._nodes[child].depth))
            self._nodes[child].demand = give
            self._shortfall -= give
            self._ready.append(child)

    def _settle(self) -> None:
        """Process ready entries already verified under an earlier root, without asking.

        Level by level (one pass over ``_ready`` per level): linear in the tree's size.
        """
        if self.phase is not SyncPhase.TREE:
            return
        self._rebalance()
        while not self._stopped:
            known = [h for h in self._ready if h in self._cache]
            if not known:
                return
            self._ready = [h for h in self._ready if h not in self._cache]
            for digest in known:
                self.depth = max(self.depth, self._nodes[digest].depth)
                cached = self._cache[digest]
                if isinstance(cached, Branch):
                    self._accept_branch(digest, cached)
                else:
                    self._accept_leaf(digest, cached)
            self._rebalance()


def walk_zone(sync: SeedSync, zone: Mapping[str, Sequence[str]], *, target: int = 0, full: bool = True) -> int:
    """Run one sync to its end over an in-memory ``zone`` (name -> one TXT record's strings;
    a missing name answers NXDOMAIN). Returns the rounds of parallel queries it took: the
    model the DNS adapter's timing is compared with (tests, ``bench/bench_dnsseed_core.py``).
    """
    sync.start(target)
    if full:
        sync.want_all()
    rounds = 0
    while names := sync.wanted():
        rounds += 1
        for name in names:
            if name in zone:
                sync.on_answer(name, [zone[name]])
            else:
                sync.on_failure(name, "NXDOMAIN")
    return rounds
