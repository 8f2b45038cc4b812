"""What peers' observed addresses say about our NAT, cross-checked with STUN (sans-IO).

go-libp2p infers NAT mapping only from the addresses peers report seeing us at. py-libp2p's TCP
dials do not reuse the listen port, so each outbound connection has its own source port and the
"same external port from many observers" test go uses cannot work here. What each report *can*
tell, given the local socket address of the connection it came over:

* the observed IP is one of our own interface IPs → that path has **no NAT**;
* the NAT kept our source port (observed port == local port) → **port-preserving** mapping, which
  is what Linux MASQUERADE and most home routers do and what hole punching relies on;
* the NAT changed it → **port-translating** (``--random-fully``, CGNAT): the address predicted for
  a hole punch will be wrong;
* several different external IPs at once → an **address-dependent** pool (CGNAT, multi-homing).

A report needs ``min_observers`` distinct observer groups before it makes a verdict, so one peer
cannot steer it. :meth:`ObservedMapping.cross_check` compares the verdict with the STUN
classifier's: the external IP should match STUN's mapped IP, and a port-translating path next to
a STUN "endpoint-independent" verdict (or the reverse) is a disagreement worth showing — e.g. a
NAT that treats TCP and UDP differently, or a second NAT on the TCP path.

Bounded: at most ``max_reports`` reports (oldest dropped), each forgotten after ``ttl``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["ObservedMapping", "MappingInference"]

Addr = tuple[str, int]


@dataclass(frozen=True)
class MappingInference:
    """The verdict from observed addresses; ``verdict`` is one of ``unknown``, ``no_nat``,
    ``port_preserving``, ``port_translating``, ``mixed``, ``address_dependent``."""

    verdict: str
    reports: int
    observers: int
    external_ips: tuple[str, ...]
    preserved: int  # reports whose port the NAT kept

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reports": self.reports,
            "observers": self.observers,
            "external_ips": list(self.external_ips),
            "port_preserved": self.preserved,
        }


@dataclass(frozen=True)
class _Report:
    local: Addr
    observed: Addr
    group: str
    at: float


class ObservedMapping:
    def __init__(self, *, ttl: float = 1800.0, min_observers: int = 2, max_reports: int = 64) -> None:
        self.ttl = ttl
        self.min_observers = min_observers
        self.max_reports = max_reports
        # keyed by (observer group, local socket): a peer re-reporting the same connection
        # replaces its report instead of adding weight
        self._reports: OrderedDict[tuple[str, Addr], _Report] = OrderedDict()
        self.ignored = 0

    def add(self, local: Addr, observed: Addr, observer_group: str, now: float) -> bool:
        """Record one report; False (and counted) when it cannot be used."""
        if not (0 < local[1] < 65536 and 0 < observed[1] < 65536) or not observed[0]:
            self.ignored += 1
            return False
        key = (observer_group, local)
        self._reports.pop(key, None)
        self._reports[key] = _Report(local, observed, observer_group, now)
        while len(self._reports) > self.max_reports:
            self._reports.popitem(last=False)
        return True

    def next_deadline(self) -> float | None:
        oldest = next(iter(self._reports.values()), None)
        return oldest.at + self.ttl if oldest is not None else None

    def on_timer(self, now: float) -> None:
        for key in [k for k, r in self._reports.items() if now - r.at >= self.ttl]:
            del self._reports[key]

    def infer(self, local_ips: frozenset[str] = frozenset()) -> MappingInference:
        """The verdict; ``local_ips`` are our interface addresses besides each socket's own."""
        reports = list(self._reports.values())
        observers = len({r.group for r in reports})
        ext_ips = tuple(sorted({r.observed[0] for r in reports}))
        preserved = sum(1 for r in reports if r.observed[1] == r.local[1])
        if observers < self.min_observers:
            verdict = "unknown"
        elif all(r.observed[0] == r.local[0] or r.observed[0] in local_ips for r in reports):
            verdict = "no_nat"
        elif len(ext_ips) > 1:
            verdict = "address_dependent"
        elif preserved == len(reports):
            verdict = "port_preserving"
        elif preserved == 0:
            verdict = "port_translating"
        else:
            verdict = "mixed"
        return MappingInference(verdict, len(reports), observers, ext_ips, preserved)

    @staticmethod
    def cross_check(inference: MappingInference, stun_nat_type: str, stun_mapping: str,
                    stun_mapped_ip: str | None) -> str:
        """``agree``, ``unknown`` (one side has no verdict) or ``disagree: <why>``."""
        if inference.verdict == "unknown" or stun_nat_type == "unknown":
            return "unknown"
        if inference.verdict == "no_nat":
            return "agree" if stun_nat_type == "open" else f"disagree: peers see no NAT, STUN says {stun_nat_type}"
        if stun_nat_type == "open":
            return f"disagree: STUN sees no NAT, peers see us at {', '.join(inference.external_ips)}"
        if stun_mapped_ip and stun_mapped_ip not in inference.external_ips:
            return (f"disagree: STUN maps us to {stun_mapped_ip}, peers see "
                    f"{', '.join(inference.external_ips)} (a second NAT or another route?)")
        eim = stun_mapping == "endpoint_independent"
        if eim and inference.verdict in ("port_translating", "address_dependent"):
            return f"disagree: STUN (UDP) says endpoint-independent, TCP observations are {inference.verdict}"
        if not eim and stun_mapping != "unknown" and inference.verdict == "port_preserving":
            return f"disagree: STUN (UDP) says {stun_mapping}, TCP observations keep the port"
        return "agree"
