"""How many dials to have in flight (sans-IO): the deficit, plus a backup for each late dial.

A *hedged request*: with ``until`` set (a cascade step wants that many peers), as many dials run
as peers are missing; a dial still in flight after :attr:`HedgePolicy.delay` (``HEDGE_FACTOR`` x
the recent typical dial, at least ``HEDGE_MIN_DELAY``) earns one backup beside it. A black-holed
address then costs a few typical dials instead of a whole dial timeout, and the common case
dials exactly the deficit (a backup started for nothing costs a whole handshake of CPU).
Without ``until`` (the outbound manager filling its slots), up to ``limit`` dials run.
"""

from __future__ import annotations

__all__ = ["HedgePolicy", "DialRace", "HEDGE_FACTOR", "HEDGE_MIN_DELAY"]

HEDGE_FACTOR = 3.0
HEDGE_MIN_DELAY = 0.05


class HedgePolicy:
    """The recent typical dial time (a moving average of successful dials)."""

    def __init__(self, typical: float = 0.05) -> None:
        self.typical = typical

    def on_dial_success(self, took: float) -> None:
        self.typical += 0.2 * (took - self.typical)

    @property
    def delay(self) -> float:
        """How long a dial may take before a backup dial starts beside it."""
        return max(HEDGE_MIN_DELAY, HEDGE_FACTOR * self.typical)


class DialRace:
    """One :meth:`Dialer.dial_many` call: which dials are in flight and since when."""

    def __init__(self, limit: int, until: int | None, hedge_delay: float) -> None:
        self.limit = limit
        self.until = until
        self.hedge_delay = hedge_delay
        self.in_flight: dict[int, float] = {}  # token -> start time
        self._next_token = 0
        self.hedges = 0

    def reached(self, connected: int) -> bool:
        return self.until is not None and connected >= self.until

    def may_start(self, now: float, connected: int) -> bool:
        """Whether one more dial may start now."""
        if self.until is None:
            return len(self.in_flight) < self.limit
        missing = self.until - connected
        # ``t + delay <= now``, not ``now - t >= delay``: the same sum as next_deadline, or at a
        # large clock the two round apart and the dialer wakes at the deadline to find no late dial.
        late = sum(1 for t in self.in_flight.values() if t + self.hedge_delay <= now)
        return len(self.in_flight) < min(self.limit, missing + late)

    def start(self, now: float, connected: int) -> int:
        """Record a dial starting; returns its token. Counts it as a hedge if it is a backup."""
        if self.until is not None and len(self.in_flight) >= self.until - connected:
            self.hedges += 1
        self._next_token += 1
        self.in_flight[self._next_token] = now
        return self._next_token

    def end(self, token: int) -> None:
        self.in_flight.pop(token, None)

    def next_deadline(self, now: float) -> float | None:
        """When the next dial in flight becomes late (a backup may then start), if ever."""
        if self.until is None:
            return None
        due = [t + self.hedge_delay for t in self.in_flight.values() if t + self.hedge_delay > now]
        return min(due) if due else None
