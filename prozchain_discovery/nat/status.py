"""What we know about our NAT: one value, published whenever it changes (sans-IO, no clock)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reachability", "NatStatus"]


class Reachability(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NatStatus:
    """Seed §3.3 ``NatType`` plus the evidence behind it.

    ``nat_type`` is one of open, full_cone, restricted_cone, port_restricted, symmetric, unknown
    (the STUN classifier's verdict, ``unknown`` until one ran); ``mapping`` and ``filtering`` are
    the raw RFC 4787 behaviours; ``external_addrs`` are addresses others can dial us at (port
    mappings, or our own addresses when the classifier says we are not behind a NAT).
    ``reachability`` is derived from the sources each time (NatService): a dial-back verdict,
    else a port mapping or an open NAT (public), else a known NAT type (private), else unknown.
    """

    nat_type: str = "unknown"
    mapping: str = "unknown"
    filtering: str = "unknown"
    reachability: Reachability = Reachability.UNKNOWN
    external_addrs: tuple[str, ...] = ()
    port_mappings: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    when: float = 0.0
    network: int = 0  # bumped on each new default route: verdicts made before are void
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nat_type": self.nat_type,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "reachability": self.reachability.value,
            "external_addrs": list(self.external_addrs),
            "port_mappings": list(self.port_mappings),
            "evidence": list(self.evidence),
            **self.details,
        }
