"""The status writer: a log line every ``status_interval`` and ``<data dir>/status.json``.

status.json is rewritten every 5 s (or every ``status_interval`` when that is shorter) while
the node's state changes; once a write finds the same state as the one before (uptime,
counters and connection ages aside), the next one comes after 30 s, and 5 s again after a
change. A settled node otherwise built, encoded and wrote its whole status twelve times a
minute for nobody: a tenth of its idle CPU (issue #15). A ``status_interval`` under 5 s asks
for a fresh file (tools poll it) and keeps its cadence.

``prozchain-discovery status`` reads the file; it is replaced atomically and stays small however
long the node runs (every list in it is capped by the component that makes it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .fsutil import atomic_write
from .metrics import Metrics

__all__ = ["StatusSchedule", "StatusWriter", "state_of"]

log = logging.getLogger("prozchain_discovery")

WRITE_EVERY = 5.0
SETTLED_WRITE_EVERY = 30.0
# Parts of a snapshot that change with time or traffic, not with the node's state.
VOLATILE = frozenset({"uptime", "metrics", "events"})


def state_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` without what changes by itself (uptime, counters, connection ages)."""
    state = {k: v for k, v in snapshot.items() if k not in VOLATILE}
    peers = state.get("peers")
    if isinstance(peers, list):
        state["peers"] = [{k: v for k, v in p.items() if k != "for"} if isinstance(p, dict) else p
                          for p in peers]
    return state


class StatusSchedule:
    """When the status line and status.json are due (sans-IO: the caller owns clock and I/O)::

        log_due, write_due = schedule.on_timer(now)
        ... build the snapshot if either is due; log; write ...
        schedule.written(state_of(snapshot), now)   # after every write
        ... sleep until schedule.next_deadline() ...
    """

    def __init__(self, interval: float, now: float, *, file: bool = True) -> None:
        self.interval = interval
        self.file = file
        self.write_every = min(WRITE_EVERY, interval) if interval > 0 else WRITE_EVERY
        self.settled_every = SETTLED_WRITE_EVERY if self.write_every >= WRITE_EVERY else self.write_every
        self.next_log = now + interval if interval > 0 else math.inf
        self.next_write = now + self.write_every if file else math.inf
        self._last: dict[str, Any] | None = None

    def next_deadline(self) -> float:
        return min(self.next_log, self.next_write)

    def on_timer(self, now: float) -> tuple[bool, bool]:
        """(log line due, file due). A due log line makes the file due too: its snapshot is built."""
        log_due = now >= self.next_log
        if log_due:
            self.next_log = now + self.interval
        return log_due, self.file and (log_due or now >= self.next_write)

    def written(self, state: dict[str, Any], now: float) -> None:
        """The file was (or failed to be) written with ``state``: schedule the next one."""
        same = state == self._last
        self._last = state
        self.next_write = now + (self.settled_every if same else self.write_every)


class StatusWriter:
    def __init__(
        self, snapshot: Callable[[], dict[str, Any]], *, data_dir: Path | None, interval: float, metrics: Metrics
    ) -> None:
        self.snapshot = snapshot
        self.data_dir = data_dir
        self.interval = interval
        self.metrics = metrics
        self._write_failed = False

    def write(self, st: dict[str, Any] | None = None) -> None:
        if self.data_dir is None:
            return
        try:
            atomic_write(self.data_dir / "status.json",
                         json.dumps(self.snapshot() if st is None else st, indent=1, default=str))
            self._write_failed = False
        except OSError as exc:
            self.metrics.inc("status_write_failures")
            if not self._write_failed:  # once per outage, not every 5 s
                log.warning("cannot write %s/status.json: %s", self.data_dir, exc)
            self._write_failed = True

    async def run(self) -> None:
        schedule = StatusSchedule(self.interval, trio.current_time(), file=self.data_dir is not None)
        while True:
            await trio.sleep_until(schedule.next_deadline())
            now = trio.current_time()
            log_due, write_due = schedule.on_timer(now)
            st = self.snapshot()
            if log_due:
                log.info(
                    "status: %d peers (%d out) %s phase=%s book=%s",
                    st["connected"], st["outbound"], st["by_source"], st["phase"],
                    st["peerdb"].get("total", "?"),
                )
            if write_due:
                self.write(st)
                schedule.written(state_of(st), now)
