"""When the bootstrap cascade runs (sans-IO; aioquic's ``get_timer``/``handle_timer`` shape).

* At start, at once.
* After a pass that left the node short of ``min_peers_for_startup``: again after 0.5 s, then
  1 s, 2 s ... up to ``check_interval`` (new records usually arrive within a PEX round, so the
  first retries are quick; a node alone on its network does not spin).
* After a pass that reached the minimum: a check every ``SETTLED_CHECK`` (60 s) at the most
  often — a peer leaving kicks the cascade (``PeersNeeded``), so the check is only a safety net
  (every ``check_interval``, 5 s, it was 720 wake-ups an hour of a settled node).
* :meth:`kick` (a peer left, new addresses arrived, connectivity came back): at once, and the
  short retry starts over.
"""

from __future__ import annotations

__all__ = ["CascadeSchedule", "FIRST_RETRY", "SETTLED_CHECK"]

FIRST_RETRY = 0.5
SETTLED_CHECK = 60.0


class CascadeSchedule:
    def __init__(self, check_interval: float, now: float = 0.0) -> None:
        self.check_interval = check_interval
        self._deadline = now
        self._retry = FIRST_RETRY
        self.passes = 0

    def next_deadline(self) -> float:
        return self._deadline

    def due(self, now: float) -> bool:
        return now >= self._deadline

    def kick(self, now: float) -> None:
        self._deadline = min(self._deadline, now)
        self._retry = FIRST_RETRY

    def on_pass_done(self, now: float, short: bool) -> None:
        """A pass (or a check that found enough peers) ended at ``now``."""
        self.passes += 1
        if short:
            self._deadline = now + min(self.check_interval, self._retry)
            self._retry = min(self.check_interval, self._retry * 2)
        else:
            self._deadline = now + max(self.check_interval, SETTLED_CHECK)
            self._retry = FIRST_RETRY
