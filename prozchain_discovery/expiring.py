"""A bounded map whose entries expire (sans-IO): the shape of every per-peer table we keep.

A long-running node meets peers without end; a plain dict keyed by peer id grows with them.
:class:`ExpiringMap` holds at most ``max_entries`` keys, each until its own deadline; the
oldest deadline goes first when it is full. Time is a parameter (``now``); the owner asks
:meth:`next_deadline` when to call :meth:`on_timer` (aioquic's ``get_timer``/``handle_timer``).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["ExpiringMap"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: dict[K, tuple[float, V]] = {}
        self._heap: list[tuple[float, int, K]] = []  # (deadline, tiebreak, key); stale ones skipped
        self._tick = 0
        self.evicted = 0

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def get(self, key: K, default: V | None = None) -> V | None:
        item = self._items.get(key)
        return default if item is None else item[1]

    def items(self) -> Iterator[tuple[K, V]]:
        return ((k, v) for k, (_, v) in self._items.items())

    def put(self, key: K, value: V, now: float, ttl: float | None = None) -> None:
        """Set ``key`` (replacing its value and deadline) until ``now + ttl``."""
        self.put_until(key, value, now + (self.ttl if ttl is None else ttl))

    def put_until(self, key: K, value: V, deadline: float) -> None:
        """Set ``key`` until the absolute time ``deadline``."""
        if key not in self._items and len(self._items) >= self.max_entries:
            self._evict_one()
        self._items[key] = (deadline, value)
        self._tick += 1
        heapq.heappush(self._heap, (deadline, self._tick, key))
        if len(self._heap) > 2 * len(self._items) + 64:  # re-puts leave stale heap rows behind
            self._heap = [(d, i, k) for i, (k, (d, _)) in enumerate(self._items.items())]
            heapq.heapify(self._heap)

    @property
    def timer_rows(self) -> int:
        """Rows in the timer heap, stale ones included (at most 2 x entries + 64)."""
        return len(self._heap)

    def pop(self, key: K, default: V | None = None) -> V | None:
        item = self._items.pop(key, None)
        return default if item is None else item[1]

    def deadline_of(self, key: K) -> float | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            item = self._items.get(key)
            if item is not None and item[0] == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def on_timer(self, now: float) -> int:
        """Drop every entry whose deadline has passed; returns how many."""
        dropped = 0
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._items[key]
            dropped += 1
        return dropped

    def _evict_one(self) -> None:
        if self.next_deadline() is None:
            return
        _, _, key = heapq.heappop(self._heap)
        del self._items[key]
        self.evicted += 1
