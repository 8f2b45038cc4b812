"""Bans for abusive peers (sans-IO): per peer id, and per IP once several ids abuse from it.

Rules:

* ``ban(peer, ip, now)`` bans the peer id for ``base`` seconds, doubling with each repeated
  offence up to ``cap`` (an offender that comes back after its ban is banned twice as long).
* An IP is banned only when ``ip_threshold`` (2) distinct banned peer ids used it within the
  IP window (``cap``): one abuser behind a NAT does not ban its neighbours at once, but a host
  that mints identities to dodge the per-id ban loses its IP too, for as long as the longest
  ban of its ids.
* An offence history is forgotten after four times its last ban without a new offence.
* At most ``max_entries`` peer entries: when full, the one that would be forgotten first goes.

The core never reads a clock: the owner calls :meth:`on_timer` at :meth:`next_deadline`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

__all__ = ["BanList"]


@dataclass(slots=True)
class _Offender:
    offences: int
    until: float  # banned until (may be in the past: then only the history is kept)
    forget_at: float
    ip: str | None
    reason: str


class BanList:
    def __init__(
        self, *, base: float = 60.0, cap: float = 3600.0, max_entries: int = 10_000, ip_threshold: int = 2
    ) -> None:
        self.base = base
        self.cap = cap
        self.max_entries = max_entries
        self.ip_threshold = ip_threshold
        self._peers: dict[bytes, _Offender] = {}
        self._ips: dict[str, tuple[set[bytes], float]] = {}  # ip -> (banned ids, banned until)
        self._heap: list[tuple[float, bytes]] = []  # (forget_at, peer): stale rows are skipped
        self.bans = 0

    def __len__(self) -> int:
        return len(self._peers)

    def ban(self, peer: bytes, ip: str | None, now: float, reason: str) -> float:
        """Ban ``peer`` (and maybe ``ip``); returns the ban's duration in seconds."""
        self.bans += 1
        known = self._peers.get(peer)
        offences = (known.offences + 1) if known is not None else 1
        duration = min(self.cap, self.base * 2 ** (offences - 1))
        if known is None and len(self._peers) >= self.max_entries:
            self._evict_one()
        entry = _Offender(offences, now + duration, now + 4 * duration, ip or (known.ip if known else None), reason)
        self._peers[peer] = entry
        heapq.heappush(self._heap, (entry.forget_at, peer))
        if entry.ip is not None:
            ids, until = self._ips.get(entry.ip, (set(), 0.0))
            ids = {p for p in ids if p in self._peers and now - self._peers[p].until < self.cap}
            ids.add(peer)
            self._ips[entry.ip] = (ids, max(until, entry.until))
        return duration

    def is_banned(self, peer: bytes, ip: str | None, now: float) -> bool:
        entry = self._peers.get(peer)
        if entry is not None and now < entry.until:
            return True
        if ip is None:
            return False
        banned = self._ips.get(ip)
        return banned is not None and len(banned[0]) >= self.ip_threshold and now < banned[1]

    def next_deadline(self) -> float | None:
        while self._heap:
            at, peer = self._heap[0]
            entry = self._peers.get(peer)
            if entry is not None and entry.forget_at == at:
                return at
            heapq.heappop(self._heap)
        return None

    def on_timer(self, now: float) -> None:
        """Forget offenders quiet for four times their last ban, and IP bans past their end."""
        while (at := self.next_deadline()) is not None and at <= now:
            _, peer = heapq.heappop(self._heap)
            del self._peers[peer]
        for ip in [ip for ip, (_ids, until) in self._ips.items() if until <= now]:
            del self._ips[ip]

    def _evict_one(self) -> None:
        """Make room: the entry that would be forgotten first goes."""
        if self.next_deadline() is not None:
            _, peer = heapq.heappop(self._heap)
            del self._peers[peer]

    def snapshot(self, now: float, limit: int = 20) -> dict[str, Any]:
        active = [(p, e) for p, e in self._peers.items() if now < e.until]
        active.sort(key=lambda pe: -pe[1].until)
        return {
            "banned_peers": len(active),
            "banned_ips": sum(1 for ids, until in self._ips.values() if len(ids) >= self.ip_threshold and now < until),
            "remembered": len(self._peers),
            "recent": [
                {"peer": p.hex()[:16], "for": round(e.until - now, 1), "offences": e.offences, "reason": e.reason}
                for p, e in active[:limit]
            ],
        }
