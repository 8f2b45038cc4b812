"""Congestion control for dials (sans-IO): how many may be in flight, and what load to charge.

A dial is mostly CPU: a Noise handshake is two Diffie-Hellmans and a signature check on each
side, then Yamux and identify. When a node starts more handshakes than its CPU finishes —
a join storm on a bootstrap node, fifty nodes started at once in one process, a small
machine — every handshake slows down, timeouts fire, the failed dials are retried and the
retries cost more CPU: congestion collapse (measured here: a 50-node network at 99 % of a core
for 80 s, connections swinging 158 <-> 526).

:class:`DialWindow` is TCP's answer, AIMD, on a signal that does not depend on network
distance: the **loop lag**, how long a task that yields waits before it runs again (the
trio adapter measures it around each dial). An idle loop answers in microseconds; a loop with
a backlog of handshakes takes tens or hundreds of milliseconds, whatever the peers' RTT. A lag
above ``congested_lag`` or a dial timeout cuts the window in half (at most once per
``cut_interval``, so one burst is one cut); a dial that ends with the loop calm grows it by
``1/window``, back up to ``limit``. :attr:`load` (``limit / window``, 1 when calm) stretches
the backoff and turns hedged backup dials off: under load a slow dial is the CPU's fault, not
the peer's, and a backup dial only adds to the queue.

Invariants: ``floor <= window <= limit``; ``in_flight >= 0``; the window only shrinks on a
signal and never twice within ``cut_interval``.
"""

from __future__ import annotations

__all__ = ["DialWindow", "CONGESTED_LAG", "CALM_LAG"]

CONGESTED_LAG = 0.05  # a task waiting 50 ms to run again: the loop has a backlog
CALM_LAG = 0.01


class DialWindow:
    def __init__(
        self,
        limit: int,
        *,
        floor: int = 1,
        congested_lag: float = CONGESTED_LAG,
        calm_lag: float = CALM_LAG,
        cut_interval: float = 0.5,
    ) -> None:
        if limit < 1 or not 1 <= floor <= limit:
            raise ValueError("need 1 <= floor <= limit")
        self.limit = limit
        self.floor = floor
        self.window = float(limit)
        self.congested_lag = congested_lag
        self.calm_lag = calm_lag
        self.cut_interval = cut_interval
        self.in_flight = 0
        self.cuts = 0
        self.last_lag = 0.0
        self._cut_at = float("-inf")

    # ---- admission -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return max(self.floor, int(self.window))

    def may_start(self) -> bool:
        return self.in_flight < self.size

    def start(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    # ---- signals -------------------------------------------------------------------------------
    def on_lag(self, lag: float, now: float) -> None:
        """A measured loop lag: cut on a backlog, grow a little when calm."""
        self.last_lag = lag
        if lag >= self.congested_lag:
            self._cut(now)
        elif lag <= self.calm_lag:
            self.window = min(float(self.limit), self.window + 1.0 / self.window)

    def on_timeout(self, now: float, lag: float) -> None:
        """A dial ran out of time. With the loop lagging (``lag``, measured as it timed out, or
        the last measure) it is a congestion signal, as a lost packet is to TCP; with the loop
        calm it is a dead or black-holed peer — common on the internet, and no reason to dial
        less (cutting on those would serialise a join among stale addresses)."""
        self.last_lag = max(lag, self.last_lag)
        if self.last_lag > self.calm_lag:
            self._cut(now)

    def _cut(self, now: float) -> None:
        if now - self._cut_at < self.cut_interval:
            return
        self._cut_at = now
        new = max(float(self.floor), self.window / 2)
        if new < self.window:
            self.window = new
            self.cuts += 1

    @property
    def congested(self) -> bool:
        return self.window < self.limit

    @property
    def load(self) -> float:
        """1 when calm; ``limit / window`` when cut (up to ``limit / floor``)."""
        return self.limit / max(self.window, float(self.floor))

    def check(self) -> None:
        assert self.floor <= self.window <= self.limit, (self.floor, self.window, self.limit)
        assert self.in_flight >= 0

    def status(self) -> dict[str, float]:
        return {"window": round(self.window, 2), "limit": self.limit, "in_flight": self.in_flight,
                "cuts": self.cuts, "last_lag_ms": round(self.last_lag * 1000, 1)}
