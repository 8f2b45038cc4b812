"""Bans for abusive peers (sans-IO): per peer id, and per IP once several ids abuse from it.

Issue #8 §3: a peer disconnected for ignoring ``RATE_LIMITED`` came back at once with the same
identity and was served again. The owner (guard.py) asks :meth:`BanList.is_banned` — two dict
lookups — before any work on every inbound stream, and reports offences with :meth:`BanList.ban`.

Rules:

* **Peer ids.** ``ban(peer, ip, now, reason)`` bans the id for ``base`` seconds; each repeated
  offence doubles it, up to ``cap`` (60 s, 120 s, ... 1 h). The returned duration is the peer's.
* **IPs.** Every ban also records the id against its IP (the one given, or the last one known
  for that id). An IP is banned only when ``ip_threshold`` (2) *distinct* peer ids were banned
  from it within ``ip_window`` (600 s) — so one abuser behind a NAT does not ban its neighbours,
  but a host that mints identities to dodge the per-id ban loses its IP. Each time an IP meets
  the threshold again its own ban doubles (``base`` up to ``cap``), like an id's.
* **Forgetting.** An offence history is forgotten after ``quiet_factor`` (4) times its last ban
  with no new offence; an IP's once its ids are out of the window and it has been quiet as
  long. A history past that point counts as forgotten even if :meth:`on_timer` has not run yet.
* **Memory.** At most ``max_entries`` peer entries and as many IP entries (an IP keeps only its
  ``ip_threshold`` most recent ids); when a table is full, the entry that would be forgotten
  first goes. Both tables are :class:`~.expiring.ExpiringMap`, whose timer rows are
  compacted, so memory stays flat under any sequence of calls.

Time is a float the owner passes in (``trio.current_time()``), never read here, and must not
go backwards. A ban ends by itself (``is_banned`` compares ``now`` with its end); the timer is
only for forgetting: the owner calls :meth:`on_timer` at :meth:`next_deadline`, which is never
later than the earliest moment an entry is to be forgotten.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from .delays import doubling
from .expiring import ExpiringMap

__all__ = ["BanList"]


@dataclass(slots=True)
class _Peer:
    offences: int
    since: float  # the last ban's start
    until: float  # banned until (may be past: then only the history is kept)
    forget_at: float
    ip: str | None
    reason: str


@dataclass(slots=True)
class _Ip:
    ids: dict[bytes, float]  # the ip_threshold most recently banned distinct ids -> when
    offences: int = 0  # times the threshold was met
    since: float = 0.0
    until: float = 0.0  # banned until (0: never banned)
    forget_at: float = float("-inf")


class BanList:
    def __init__(
        self,
        *,
        base: float = 60.0,
        cap: float = 3600.0,
        max_entries: int = 10_000,
        ip_threshold: int = 2,
        ip_window: float = 600.0,
        quiet_factor: float = 4.0,
    ) -> None:
        if not (0 < base <= cap) or max_entries < 1 or ip_threshold < 1 or ip_window < 0 or quiet_factor < 1:
            raise ValueError("need 0 < base <= cap, max_entries >= 1, ip_threshold >= 1, quiet_factor >= 1")
        self.base = base
        self.cap = cap
        self.max_entries = max_entries
        self.ip_threshold = ip_threshold
        self.ip_window = ip_window
        self.quiet_factor = quiet_factor
        # Each entry is kept until its forget_at (the map's deadline); the soonest goes when full.
        self._peers: ExpiringMap[bytes, _Peer] = ExpiringMap(0.0, max_entries)
        self._ips: ExpiringMap[str, _Ip] = ExpiringMap(0.0, max_entries)
        self.bans = 0
        self.ip_bans = 0

    def __len__(self) -> int:
        """Peer ids remembered (banned now, or with an offence history)."""
        return len(self._peers)

    def _duration(self, offences: int) -> float:
        return doubling(self.base, self.cap, offences)

    def ban(self, peer: bytes, ip: str | None, now: float, reason: str) -> float:
        """Ban ``peer`` (and, past the threshold, ``ip``); returns the peer's ban in seconds."""
        self.bans += 1
        known = self._peers.get(peer)
        if known is not None and known.forget_at <= now:  # quiet long enough: a first offence
            self._peers.pop(peer)
            known = None
        if known is None:
            offences = 1
        else:
            offences = known.offences + 1
            ip = ip or known.ip
        duration = self._duration(offences)
        entry = _Peer(offences, now, now + duration, now + self.quiet_factor * duration, ip, reason)
        self._peers.put_until(peer, entry, entry.forget_at)
        if ip is not None:
            self._ip_offence(ip, peer, now)
        return duration

    def _ip_offence(self, ip: str, peer: bytes, now: float) -> None:
        entry = self._ips.get(ip)
        if entry is not None and entry.forget_at <= now:
            self._ips.pop(ip)
            entry = None
        if entry is None:
            entry = _Ip({})
        ids = entry.ids
        ids.pop(peer, None)
        ids[peer] = now  # most recent last
        while len(ids) > self.ip_threshold:
            del ids[next(iter(ids))]
        forget_at = now + self.ip_window
        if len(ids) >= self.ip_threshold and min(ids.values()) >= now - self.ip_window:
            entry.offences += 1
            duration = self._duration(entry.offences)
            entry.since = now
            entry.until = max(entry.until, now + duration)
            forget_at = max(forget_at, now + self.quiet_factor * duration)
            self.ip_bans += 1
        if forget_at > entry.forget_at:  # a new entry's is -inf: always scheduled
            entry.forget_at = forget_at
            self._ips.put_until(ip, entry, forget_at)

    def is_banned(self, peer: bytes, ip: str | None, now: float) -> bool:
        """O(1): whether ``peer``, or ``ip``, is banned at ``now``."""
        entry = self._peers.get(peer)
        if entry is not None and now < entry.until:
            return True
        if ip is None:
            return False
        banned = self._ips.get(ip)
        return banned is not None and now < banned.until

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to forget (``None``: nothing remembered)."""
        a, b = self._peers.next_deadline(), self._ips.next_deadline()
        if a is None:
            return b
        return a if b is None else min(a, b)

    def on_timer(self, now: float) -> None:
        """Forget the histories whose quiet period ended by ``now``."""
        self._peers.on_timer(now)
        self._ips.on_timer(now)

    def snapshot(self, now: float, limit: int = 20) -> dict[str, Any]:
        """Counts, and the ``limit`` most recent bans still running (peers and IPs)."""
        peers = [(e.since, p, e) for p, e in self._peers.items() if now < e.until]
        ips = [(e.since, ip, e) for ip, e in self._ips.items() if now < e.until]
        recent: list[tuple[float, dict[str, Any]]] = [
            (since, {"peer": p.hex()[:16], "for": round(e.until - now, 1), "offences": e.offences,
                     "reason": e.reason})
            for since, p, e in heapq.nlargest(limit, peers, key=lambda r: r[0])
        ]
        recent += [
            (since, {"ip": ip, "for": round(e.until - now, 1), "offences": e.offences})
            for since, ip, e in heapq.nlargest(limit, ips, key=lambda r: r[0])
        ]
        recent.sort(key=lambda r: -r[0])
        return {
            "banned_peers": len(peers),
            "banned_ips": len(ips),
            "remembered": len(self._peers),
            "remembered_ips": len(self._ips),
            "timer_rows": self._peers.timer_rows + self._ips.timer_rows,
            "bans": self.bans,
            "ip_bans": self.ip_bans,
            "evicted": self._peers.evicted + self._ips.evicted,
            "recent": [r for _, r in recent[:limit]],
        }
