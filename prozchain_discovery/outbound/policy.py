"""When to fill outbound slots and when a feeler runs (sans-IO, Bitcoin Core's net.cpp shape).

* Outbound slots are checked every ``SLOT_CHECK`` seconds while some are empty, every
  ``SLOT_IDLE_CHECK`` when all are full, and at once when a peer leaves (the manager wakes on
  ``PeerDisconnected``): a full node woke every second for nothing (3,600 times an hour).
* A *feeler* tests one NEW entry of the book about every ``feeler_interval`` (uniformly
  0.5x-1.5x, Bitcoin Core uses an exponential around 2 min), so the tried table fills with
  proven peers. A feeler connection is a test, not a slot: it is dropped afterwards unless the
  node is short of outbound peers (:meth:`keep_feeler`).
"""

from __future__ import annotations

import random

__all__ = ["OutboundPolicy", "SLOT_CHECK", "SLOT_IDLE_CHECK"]

SLOT_CHECK = 1.0
SLOT_IDLE_CHECK = 60.0


class OutboundPolicy:
    def __init__(self, target: int, feeler_interval: float, rng: random.Random, now: float) -> None:
        self.target = target
        self.feeler_interval = feeler_interval
        self.rng = rng
        self.next_slot_check = now + SLOT_CHECK
        self.next_feeler = now + feeler_interval

    def next_deadline(self) -> float:
        return min(self.next_slot_check, self.next_feeler)

    def slots_to_fill(self, outbound: int, now: float) -> int:
        """How many outbound dials to start now (and schedule the next check)."""
        missing = max(0, self.target - outbound) if self.target else 0
        self.next_slot_check = now + (SLOT_CHECK if missing else SLOT_IDLE_CHECK)
        return missing

    def feeler_due(self, now: float) -> bool:
        if now < self.next_feeler:
            return False
        self.next_feeler = now + self.feeler_interval * (0.5 + self.rng.random())
        return True

    def keep_feeler(self, outbound: int, is_static: bool) -> bool:
        """Whether a successful feeler's connection stays open."""
        return is_static or outbound <= self.target
