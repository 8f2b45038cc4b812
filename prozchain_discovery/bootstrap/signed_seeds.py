"""Signed DNS seeds (``pzseed://``, protocols/dns-seed.md) on trio: the adapter of
:class:`~prozchain_discovery.dnsseed.sync.SeedSync`.

:class:`DnsTxt` looks up TXT records with dnspython (EDNS0 with a 1232-byte payload, TCP when an
answer comes back truncated, the resolver of ``[bootstrap.dns]``); :func:`drive` runs a sync's
queries in parallel until it has nothing more to ask; :class:`SignedSeed` is one configured
seed: a lookup for the leaves the cascade needs now (a random walk, depth + 1 round trips), then
the rest of the tree walked in the background, a few queries at a time. What this module hands
out has been verified by the core: a root signed by the URL's key, every hash on the way down,
every leaf's own peer-record signature.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio
from libp2p.peer.id import ID

from ..dnsseed.sync import SeedSync, SyncLimits
from ..dnsseed.tree import SeedRejection
from ..dnsseed.url import SeedUrl
from ..metrics import Metrics
from ..records import VerifiedRecord
from .dns import ResolverConfig, make_resolver

__all__ = ["TxtLookupError", "TxtQuery", "DnsTxt", "drive", "SignedSeed", "BACKGROUND_PARALLEL",
           "BACKGROUND_LEAVES"]

log = logging.getLogger("prozchain_discovery.dnsseed")

BACKGROUND_PARALLEL = 4  # queries at once while the rest of a tree is walked after the cascade
# Leaves a node samples from one seed in all: one seed's records share one source group of the
# peer database, which holds at most 16 buckets x 64 of them. A larger tree is sampled at
# random (a fresh sample per sync), so a 10,000-leaf seed costs a node ~1,090 queries, not 10,529.
BACKGROUND_LEAVES = 1024
MAX_TXT_ANSWER = 16  # records read from one answer (the core refuses more: oversized)

TxtRecords = list[list[bytes]]
TxtQuery = Callable[[str], Awaitable[TxtRecords]]


class TxtLookupError(Exception):
    """A TXT lookup that gave nothing: ``kind`` is nxdomain, no_answer, timeout or error."""

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        super().__init__(f"{kind} for {name}" + (f": {detail}" if detail else ""))
        self.kind = kind


class DnsTxt:
    """TXT lookups with dnspython on trio; each answer as a list of records of strings."""

    def __init__(self, config: ResolverConfig | None = None) -> None:
        self.config = config or ResolverConfig()
        self._resolver: dns.asyncresolver.Resolver | None = None  # made at the first lookup
        self.queries = 0

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = make_resolver(self.config)
        return self._resolver

    async def __call__(self, name: str) -> TxtRecords:
        self.queries += 1
        try:
            answer = await self.resolver.resolve(
                name, "TXT", backend=dns.asyncbackend.get_backend("trio"), raise_on_no_answer=True
            )
        except dns.resolver.NXDOMAIN:
            raise TxtLookupError("nxdomain", name) from None
        except dns.resolver.NoAnswer:
            raise TxtLookupError("no_answer", name) from None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise TxtLookupError("timeout", name, f"after {self.config.timeout:g} s") from None
        except trio.Cancelled:
            raise
        except Exception as exc:  # NoNameservers (SERVFAIL, REFUSED), bad packets, socket errors
            raise TxtLookupError("error", name, f"{type(exc).__name__}: {exc}"[:160]) from None
        out: TxtRecords = []
        for i, rr in enumerate(answer):
            if i > MAX_TXT_ANSWER:  # one more than the core reads: it names the answer oversized
                break
            out.append(list(rr.strings))  # type: ignore[attr-defined]
        return out


async def drive(
    sync: SeedSync,
    query: TxtQuery,
    *,
    parallel: int | None = None,
    on_leaves: Callable[[list[VerifiedRecord]], None] | None = None,
) -> None:
    """Ask ``sync``'s names (at most ``parallel`` at once; default: as many as it hands out)
    until it wants nothing more and no answer is out. Verified leaves go to ``on_leaves`` as
    they arrive (else they stay in the sync for :meth:`SeedSync.take_leaves`)."""
    limiter = trio.Semaphore(parallel) if parallel else None
    wake = trio.Event()
    out = 0

    async def one(name: str) -> None:
        nonlocal out
        try:
            if limiter is None:
                records = await query(name)
            else:
                async with limiter:
                    records = await query(name)
        except TxtLookupError as exc:
            sync.on_failure(name, str(exc))
        else:
            sync.on_answer(name, records)
        finally:
            out -= 1
            wake.set()
        if on_leaves is not None and (leaves := sync.take_leaves()):
            on_leaves(leaves)

    async with trio.open_nursery() as nursery:
        while True:
            for name in sync.wanted():
                out += 1
                nursery.start_soon(one, name)
            if out == 0:
                return
            await wake.wait()
            wake = trio.Event()


class SignedSeed:
    """One ``pzseed://`` seed: its sync state, the verified tree, the background walk.

    ``seq`` and ``root_hash`` are what the data dir must remember (rollback protection); the
    cascade saves them after each lookup. Records are attributed to :attr:`source_id`, the
    peer id of the seed's key.
    """

    def __init__(
        self,
        url: SeedUrl,
        query: TxtQuery,
        *,
        local_peer_id: ID | None = None,
        last_seq: int | None = None,
        last_root_hash: bytes | None = None,
        limits: SyncLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.query = query
        self.sync = SeedSync(url, last_seq=last_seq, last_root_hash=last_root_hash, limits=limits or SyncLimits(),
                             local_peer_id=local_peer_id, rng=rng)
        self.source_id = ID.from_pubkey(url.verifier())
        self._walk: trio.CancelScope | None = None
        self._walk_done = trio.Event()
        self._walk_done.set()
        self._reported: dict[SeedRejection, int] = {}
        self.walked = False  # the last background walk ended (its sample taken, or the tree walked)

    @property
    def seq(self) -> int | None:
        return self.sync.seq

    @property
    def root_hash(self) -> bytes | None:
        return self.sync.root_hash

    async def lookup(self, target: int) -> list[VerifiedRecord]:
        """A sync for ``target`` verified leaves (a walk still running is stopped first).

        Returns the leaves the walk reached, also those an earlier sync returned (a re-sync of
        an unchanged tree answers from memory: the same peers are still the seed's list)."""
        await self.stop_walk()
        self.sync.start(target)
        await drive(self.sync, self.query)
        self.sync.take_leaves()  # handed out here, not again by a background walk
        return self.sync.walk_leaves()

    async def walk_rest(self, on_leaves: Callable[[list[VerifiedRecord]], None], *,
                        leaves: int | None = None, parallel: int = BACKGROUND_PARALLEL) -> None:
        """Walk on after a lookup, ``parallel`` queries at a time, until ``leaves`` verified
        leaves in all (a random sample of the tree; None: the whole tree). The cascade's
        nursery runs it after a lookup; the next lookup stops it."""
        await self.stop_walk()
        self._walk_done = done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._walk = scope
                self.walked = False
                if leaves is None:
                    self.sync.want_all()
                else:
                    self.sync.want(leaves)
                await drive(self.sync, self.query, parallel=parallel, on_leaves=on_leaves)
                self.walked = True
        finally:
            self._walk = None
            done.set()

    async def stop_walk(self) -> None:
        if self._walk is not None:
            self._walk.cancel()
        await self._walk_done.wait()

    def count(self, metrics: Metrics, queries: int) -> None:
        """Metrics for ``queries`` more queries, the leaves verified and the entries refused
        since the last call; a WARNING names the refusals."""
        metrics.inc("dns_seed_queries", max(0, queries))
        metrics.set_gauge("dns_seed_leaves_verified", self.sync.leaves_verified, seed=self.url.domain)
        if self.sync.seq is not None:
            metrics.set_gauge("dns_seed_seq", self.sync.seq, seed=self.url.domain)
        fresh: dict[SeedRejection, int] = {}
        for reason, n in self.sync.rejected.items():
            if n > self._reported.get(reason, 0):
                fresh[reason] = n - self._reported.get(reason, 0)
                self._reported[reason] = n
                metrics.inc("dns_seed_rejected", fresh[reason], reason=reason.value)
        if fresh:
            shown = "; ".join(f"{name[:24]}: {reason.value}{' (' + detail + ')' if detail else ''}"
                              for name, reason, detail in self.sync.rejections[-3:])
            log.warning("dns seed %s refused %d entries (%s); e.g. %s", self.url.domain, sum(fresh.values()),
                        ", ".join(f"{r.value} {n}" for r, n in sorted(fresh.items(), key=lambda kv: kv[0].value)),
                        shown)

    def remembered(self) -> dict[str, Any] | None:
        """What the data dir keeps for rollback protection (None: no root verified yet)."""
        if self.sync.seq is None or self.sync.root_hash is None:
            return None
        return {"seq": self.sync.seq, "root": self.sync.root_hash.hex()}

    def remember(self, entry: dict[str, Any]) -> bool:
        """Take back what :meth:`remembered` gave; False (nothing taken) when it is damaged."""
        seq, root = entry.get("seq"), entry.get("root")
        try:
            root_hash = bytes.fromhex(root) if isinstance(root, str) else None
        except ValueError:
            root_hash = None
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and root_hash is not None):
            return False
        self.sync.seq, self.sync.root_hash = seq, root_hash
        return True

    def status(self) -> dict[str, Any]:
        return {
            "url": str(self.url),
            "seq": self.sync.seq,
            "phase": self.sync.phase.value,
            "leaves_verified": self.sync.leaves_verified,
            "queries_last_sync": self.sync.queries,
            "walked": self.walked,
            "rejected": {r.value: n for r, n in sorted(self.sync.rejected.items(), key=lambda kv: kv[0].value)},
        }
