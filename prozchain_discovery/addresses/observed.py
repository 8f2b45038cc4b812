"""Addresses peers say they see us at (sans-IO): a TTL per report, a distinct-observer threshold.

A single peer can claim anything, so an observed address counts as *confirmed* only once
``threshold`` distinct peers reported it within ``ttl`` (go-libp2p's ObservedAddrManager
activates an address after 4 observers from distinct groups; our networks start smaller, so the
default is 2 and the NAT component may raise it). Memory is bounded: at most ``max_addrs``
addresses (the least-reported is dropped) and ``max_observers`` reporters each. A QUIC address
reported as draft-29's ``/quic`` is counted as ``/quic-v1`` (:func:`quic_v1`).
"""

from __future__ import annotations

from multiaddr import Multiaddr

__all__ = ["ObservedAddrs", "quic_v1"]


def quic_v1(addr: Multiaddr) -> Multiaddr:
    """``/ip4|ip6/A/udp/P/quic`` as ``.../quic-v1``: py-libp2p names a QUIC connection's remote
    end with draft-29's ``/quic``, but the QUIC every libp2p node speaks today (and the only
    one we listen on) is v1; one address must not be counted twice under two names."""
    try:
        names = [p.name for p in addr.protocols()]
    except Exception:  # noqa: BLE001 - an address we cannot read stays as it is
        return addr
    if len(names) == 3 and names[0] in ("ip4", "ip6") and names[1:] == ["udp", "quic"]:
        return Multiaddr(str(addr) + "-v1")
    return addr


class ObservedAddrs:
    def __init__(
        self, ttl: float = 1800.0, threshold: int = 2, max_addrs: int = 64, max_observers: int = 32
    ) -> None:
        self.ttl = ttl
        self.threshold = threshold
        self.max_addrs = max_addrs
        self.max_observers = max_observers
        self._reports: dict[bytes, dict[bytes, float]] = {}  # addr -> reporter -> last report
        self.reports = 0

    def add(self, addr: Multiaddr, reporter: bytes, now: float) -> bool:
        """Record a report; True if it came from a reporter new for this address."""
        self.reports += 1
        key = quic_v1(addr).to_bytes()
        observers = self._reports.get(key)
        if observers is None:
            if len(self._reports) >= self.max_addrs:
                weakest = min(self._reports, key=lambda k: (len(self._reports[k]), max(self._reports[k].values())))
                del self._reports[weakest]
            observers = self._reports[key] = {}
        new = reporter not in observers
        if new and len(observers) >= self.max_observers:
            del observers[min(observers, key=observers.__getitem__)]
        observers[reporter] = now
        return new

    def counts(self) -> dict[str, int]:
        return {str(Multiaddr(k)): len(v) for k, v in self._reports.items()}

    def confirmed(self) -> list[Multiaddr]:
        return [Multiaddr(k) for k, v in self._reports.items() if len(v) >= self.threshold]

    def next_deadline(self) -> float | None:
        times = [t for observers in self._reports.values() for t in observers.values()]
        return min(times) + self.ttl if times else None

    def on_timer(self, now: float) -> None:
        for key in list(self._reports):
            observers = self._reports[key]
            # ``t + ttl <= now`` as next_deadline sums it: ``now - t >= ttl`` rounds otherwise at
            # a large clock, the report outlives its deadline and the owner's loop spins on it.
            for reporter in [r for r, t in observers.items() if t + self.ttl <= now]:
                del observers[reporter]
            if not observers:
                del self._reports[key]
