"""The status writer: a log line every ``status_interval`` and ``<data dir>/status.json``
(every 5 s, or every ``status_interval`` when that is shorter).

``prozchain-discovery status`` reads the file; it is replaced atomically and stays small however
long the node runs (every list in it is capped by the component that makes it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .fsutil import atomic_write
from .metrics import Metrics

__all__ = ["StatusWriter"]

log = logging.getLogger("prozchain_discovery")

WRITE_EVERY = 5.0


class StatusWriter:
    def __init__(
        self, snapshot: Callable[[], dict[str, Any]], *, data_dir: Path | None, interval: float, metrics: Metrics
    ) -> None:
        self.snapshot = snapshot
        self.data_dir = data_dir
        self.interval = interval
        self.metrics = metrics
        self._write_failed = False

    def write(self) -> None:
        if self.data_dir is None:
            return
        try:
            atomic_write(self.data_dir / "status.json", json.dumps(self.snapshot(), indent=1, default=str))
            self._write_failed = False
        except OSError as exc:
            self.metrics.inc("status_write_failures")
            if not self._write_failed:  # once per outage, not every 5 s
                log.warning("cannot write %s/status.json: %s", self.data_dir, exc)
            self._write_failed = True

    async def run(self) -> None:
        now = trio.current_time()
        next_log = now + self.interval if self.interval > 0 else float("inf")
        write_every = min(WRITE_EVERY, self.interval) if self.interval > 0 else WRITE_EVERY
        next_write = now + write_every
        while True:
            await trio.sleep_until(min(next_log, next_write))
            now = trio.current_time()
            if now >= next_log:
                next_log = now + self.interval
                st = self.snapshot()
                log.info(
                    "status: %d peers (%d out) %s phase=%s book=%s",
                    st["connected"], st["outbound"], st["by_source"], st["phase"],
                    st["peerdb"].get("total", "?"),
                )
            if now >= next_write:
                next_write = now + write_every
                self.write()
