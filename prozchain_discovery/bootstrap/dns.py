"""DNS seeds with dnspython, on trio, with a configurable resolver.

A seed is one of:

* ``/dnsaddr/<domain>`` — TXT ``_dnsaddr.<domain>``, each string ``dnsaddr=<multiaddr>``;
  entries that are themselves ``/dnsaddr/...`` are followed up to ``max_depth`` (4, as
  go-libp2p) with loops detected, and at most ``max_addrs`` (100) addresses in all.
  ``/dnsaddr/<domain>/p2p/<id>`` keeps only entries for that peer id.
* ``/dns/<name>/...``, ``/dns4/...``, ``/dns6/...`` — A/AAAA, keeping the rest of the multiaddr.
* ``host.name`` or ``host.name:port`` — A and AAAA records combined with the port (default
  ``default_port``). These carry no peer id; the service learns it with a Noise handshake
  (:mod:`prozchain_discovery.probe`) before dialing.

Failures (NXDOMAIN, timeout, no answer, junk TXT) never raise out of :meth:`resolve`: they are
returned as :class:`DnsSeedError` entries beside whatever was found.

:class:`DnsLookupGate` is the seed's rule "look up at most once per ``dns_lookup_interval``"
as a sans-IO object (the service persists ``last_lookup`` across restarts). Only a lookup that
gave addresses counts; a failed one (server down, timeouts, nothing usable) is retried after
``FIRST_RETRY`` seconds, doubling up to the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio
from multiaddr import Multiaddr

from ..addrs import AddressError, parse_multiaddr, peer_id_of
from ..delays import doubling

__all__ = [
    "ResolverConfig",
    "DnsSeedError",
    "DnsSeedResult",
    "DnsSeedResolver",
    "DnsLookupGate",
    "FIRST_RETRY",
    "EDNS_PAYLOAD",
    "make_resolver",
]

FIRST_RETRY = 5.0  # after a failed lookup; doubles up to the interval
EDNS_PAYLOAD = 1232  # DNS Flag Day 2020: no IP fragmentation; a larger answer comes over TCP


@dataclass(frozen=True)
class ResolverConfig:
    nameservers: tuple[str, ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    port: int = 53
    timeout: float = 5.0  # lifetime of one query


class DnsSeedError(Exception):
    """One failed lookup. ``kind``: nxdomain, timeout, no_answer, bad_record, recursion_limit,
    query_limit, error."""

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        super().__init__(f"{kind} for {name}" + (f": {detail}" if detail else ""))
        self.kind = kind
        self.name = name


MAX_QUERIES = 32  # per seed: a TXT answer full of /dns4 or /dnsaddr entries costs no more
MAX_ERRORS = 16  # per seed kept (and logged); the rest are counted in ``errors_dropped``


@dataclass
class DnsSeedResult:
    seed: str
    addrs: list[Multiaddr] = field(default_factory=list)
    errors: list[DnsSeedError] = field(default_factory=list)
    queries: int = 0
    errors_dropped: int = 0

    def error(self, err: DnsSeedError) -> None:
        """Keep ``err`` (a seed full of junk TXT strings makes one warning each, up to a bound)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(err)
        else:
            self.errors_dropped += 1


class DnsLookupGate:
    """At most one successful lookup per ``interval`` seconds (sans-IO; ``now`` from the caller).

    A failed lookup does not start the interval (it would leave a node that started while its
    DNS server was down without seeds for the whole interval, hours on some networks): it is
    retried after ``first_retry`` seconds, doubling up to ``interval``.
    """

    def __init__(self, interval: float, last_lookup: float | None = None, first_retry: float | None = None) -> None:
        self.interval = interval
        self.last_lookup = last_lookup  # the last successful lookup
        self.first_retry = FIRST_RETRY if first_retry is None else first_retry
        self.retry_at: float | None = None  # set while lookups fail
        self.failures = 0

    def may_lookup(self, now: float) -> bool:
        if self.retry_at is not None:
            return now >= self.retry_at
        return self.last_lookup is None or now - self.last_lookup >= self.interval

    def record_lookup(self, now: float) -> None:
        """A lookup that gave addresses: the next one waits ``interval``."""
        self.last_lookup = now
        self.retry_at = None
        self.failures = 0

    def record_failure(self, now: float) -> float:
        """A lookup that gave nothing: returns the delay before the next try."""
        self.failures += 1
        delay = doubling(self.first_retry, self.interval, self.failures)
        self.retry_at = now + delay
        return delay

    def next_allowed(self, now: float) -> float:
        if self.retry_at is not None:
            return max(0.0, self.retry_at - now)
        if self.last_lookup is None:
            return 0.0
        return max(0.0, self.last_lookup + self.interval - now)


def make_resolver(cfg: ResolverConfig) -> dns.asyncresolver.Resolver:
    """A dnspython resolver for ``cfg`` (the system's when no nameservers are given), with
    EDNS0 at :data:`EDNS_PAYLOAD` bytes; dnspython retries over TCP when an answer is truncated."""
    r = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
    if cfg.nameservers:
        r.nameservers = list(cfg.nameservers)
    r.port = cfg.port
    r.lifetime = cfg.timeout
    r.timeout = cfg.timeout
    r.use_edns(0, 0, EDNS_PAYLOAD)
    return r


class DnsSeedResolver:
    def __init__(
        self,
        config: ResolverConfig | None = None,
        *,
        default_port: int = 4001,
        max_depth: int = 4,
        max_addrs: int = 100,
        max_queries: int = MAX_QUERIES,
    ) -> None:
        self.config = config or ResolverConfig()
        self.max_queries = max_queries
        self.default_port = default_port
        self.max_depth = max_depth
        self.max_addrs = max_addrs
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = make_resolver(self.config)
        return self._resolver

    async def _query(self, name: str, rdtype: str, result: DnsSeedResult) -> list[str]:
        if result.queries >= self.max_queries:
            if result.queries == self.max_queries:
                result.error(DnsSeedError("query_limit", name, f"more than {self.max_queries} queries for one seed"))
                result.queries += 1
            return []
        result.queries += 1
        try:
            answer = await self._get_resolver().resolve(
                name, rdtype, backend=dns.asyncbackend.get_backend("trio"), raise_on_no_answer=True
            )
        except dns.resolver.NXDOMAIN:
            result.error(DnsSeedError("nxdomain", name))
            return []
        except dns.resolver.NoAnswer:
            result.error(DnsSeedError("no_answer", name, rdtype))
            return []
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            result.error(DnsSeedError("timeout", name, f"{rdtype} after {self.config.timeout:g}s"))
            return []
        except trio.Cancelled:
            raise
        except Exception as exc:  # NoNameservers, bad packets, socket errors
            result.error(DnsSeedError("error", name, f"{type(exc).__name__}: {exc}"[:160]))
            return []
        if rdtype == "TXT":
            out = []
            for rr in answer:
                out.append(b"".join(rr.strings).decode("utf-8", "replace"))  # type: ignore[attr-defined]
            return out
        return [rr.to_text() for rr in answer]

    async def resolve(self, seed: str) -> DnsSeedResult:
        result = DnsSeedResult(seed)
        seed = seed.strip()
        if seed.startswith("/dnsaddr/"):
            try:
                ma = parse_multiaddr(seed)
            except AddressError as exc:
                result.error(DnsSeedError("bad_record", seed, str(exc)))
                return result
            await self._dnsaddr(ma, 1, set(), result)
        elif seed.startswith("/dns"):
            try:
                ma = parse_multiaddr(seed)
            except AddressError as exc:
                result.error(DnsSeedError("bad_record", seed, str(exc)))
                return result
            result.addrs.extend(await self._dns_ma(ma, result))
        else:
            host, _, port_text = seed.rpartition(":") if ":" in seed else (seed, "", "")
            try:
                port = int(port_text) if port_text else self.default_port
            except ValueError:
                result.error(DnsSeedError("bad_record", seed, "port is not a number"))
                return result
            for rdtype, proto in (("A", "ip4"), ("AAAA", "ip6")):
                for ip in await self._query(host, rdtype, result):
                    result.addrs.append(Multiaddr(f"/{proto}/{ip}/tcp/{port}"))
            # One of A/AAAA missing is normal: report no_answer only if both were empty.
            if result.addrs:
                result.errors = [e for e in result.errors if e.kind != "no_answer"]
        del result.addrs[self.max_addrs :]
        return result

    async def _dns_ma(self, ma: Multiaddr, result: DnsSeedResult) -> list[Multiaddr]:
        text = str(ma)
        proto, _, rest = text[1:].partition("/")
        name, _, tail = rest.partition("/")
        kinds = {"dns4": [("A", "ip4")], "dns6": [("AAAA", "ip6")]}.get(
            proto, [("A", "ip4"), ("AAAA", "ip6")]
        )
        out = []
        for rdtype, ipproto in kinds:
            for ip in await self._query(name, rdtype, result):
                out.append(Multiaddr(f"/{ipproto}/{ip}/{tail}" if tail else f"/{ipproto}/{ip}"))
        return out

    async def _dnsaddr(self, ma: Multiaddr, depth: int, seen: set[str], result: DnsSeedResult) -> None:
        domain = ma.value_for_protocol("dnsaddr")
        want = peer_id_of(ma)
        if domain in seen:
            result.error(DnsSeedError("recursion_limit", domain, "loop"))
            return
        seen.add(domain)
        for txt in await self._query(f"_dnsaddr.{domain}", "TXT", result):
            if len(result.addrs) >= self.max_addrs:
                return
            if not txt.startswith("dnsaddr="):
                continue
            try:
                entry = parse_multiaddr(txt[len("dnsaddr=") :])
            except AddressError as exc:
                result.error(DnsSeedError("bad_record", domain, str(exc)[:120]))
                continue
            if want is not None and peer_id_of(entry) not in (None, want):
                continue
            if str(entry).startswith("/dnsaddr/"):
                if depth >= self.max_depth:
                    result.error(
                        DnsSeedError("recursion_limit", str(entry), f"deeper than {self.max_depth}")
                    )
                    continue
                await self._dnsaddr(entry, depth + 1, seen, result)
            elif str(entry).startswith("/dns"):
                result.addrs.extend(await self._dns_ma(entry, result))
            else:
                result.addrs.append(entry)

    async def resolve_all(self, seeds: Sequence[str]) -> list[DnsSeedResult]:
        results: list[DnsSeedResult | None] = [None] * len(seeds)

        async def one(i: int, seed: str) -> None:
            results[i] = await self.resolve(seed)

        async with trio.open_nursery() as nursery:
            for i, seed in enumerate(seeds):
                nursery.start_soon(one, i, seed)
        return [r for r in results if r is not None]

