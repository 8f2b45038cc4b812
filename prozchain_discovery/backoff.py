"""Connection-attempt tracking: exponential backoff with jitter and give-up (sans-IO).

The delay after the n-th consecutive failure is ``base + step * n**2`` seconds, capped at
``cap`` (go-libp2p's dial backoff: 5 s + 1 s x tries², cap 5 min), with +-``jitter`` so a fleet
restarted together does not re-dial in lockstep. After ``give_up_after`` consecutive failures a
key is given up — except a key marked :meth:`keep_trying` (static peers, bootstrap nodes),
which is retried for ever at no more than ``cap`` apart, and sooner at first (1, 2, 4 s:
:data:`KEPT_FIRST_RETRY`). Given-up keys come back with
:meth:`reset_given_up` when connectivity returns (the dialer does that on
:class:`~.events.ConnectivityRestored`).

Keys are any hashable: the dialer uses peer-id bytes (cheap to hash, where ``str(peer_id)``
costs a base58 encoding) and ``"probe <multiaddr>"`` for a DNS seed's bare address; ``label``
turns a key into text for status. The table is bounded: at most ``max_entries`` keys, the
least recently used forgotten first (a forgotten key starts again with no failures, which is
the cost of a node that has failed to reach more peers than it can remember); kept keys are
never forgotten.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .config import BackoffConfig

__all__ = ["DialBackoff", "AttemptState", "KEEP_TRYING_CAP"]

KEEP_TRYING_CAP = 300.0  # a static peer or bootstrap node is re-dialed at least every 5 min
# ... and after its n-th failure at most 1, 2, 4, ... s later while that is sooner than the
# normal curve (5 s + n² s): a fleet started at once finds its bootstrap nodes listening ~1 s
# later, where the normal first retry cost the NAT lab's crowd 6-8 s (#16)
KEPT_FIRST_RETRY = 1.0


@dataclass(slots=True)
class AttemptState:
    attempts: int = 0
    failures: int = 0  # consecutive
    last_attempt: float | None = None
    last_success: float | None = None
    retry_at: float = 0.0
    last_error: str = ""
    given_up: bool = False


class DialBackoff:
    def __init__(
        self,
        config: BackoffConfig | None = None,
        rng: random.Random | None = None,
        label: Callable[[Hashable], str] = str,
        max_entries: int = 4096,
    ) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng or random.Random()
        self._label = label
        self.max_entries = max_entries
        self._states: OrderedDict[Hashable, AttemptState] = OrderedDict()  # LRU order
        self._kept: dict[Hashable, AttemptState] = {}  # keep_trying keys: never evicted
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._states) + len(self._kept)

    def state(self, key: Hashable) -> AttemptState | None:
        return self._kept.get(key) or self._states.get(key)

    def keep_trying(self, key: Hashable) -> None:
        """Never give ``key`` up (a static peer or bootstrap node): retry at most ``cap`` apart."""
        st = self._states.pop(key, None) or self._kept.get(key) or AttemptState()
        if st.given_up:
            st.given_up, st.failures, st.retry_at = False, 0, 0.0
        self._kept[key] = st

    def _touch(self, key: Hashable) -> AttemptState:
        st = self._kept.get(key)
        if st is not None:
            return st
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = AttemptState()
            while len(self._states) > self.max_entries:
                self._states.popitem(last=False)
                self.evicted += 1
        else:
            self._states.move_to_end(key)
        return st

    def delay_for(self, failures: int) -> float:
        c = self.config
        return float(min(c.cap, c.base + c.step * failures * failures))

    def allowed(self, key: Hashable, now: float) -> bool:
        st = self.state(key)
        return st is None or (not st.given_up and now >= st.retry_at)

    def wait_time(self, key: Hashable, now: float) -> float:
        st = self.state(key)
        if st is None:
            return 0.0
        if st.given_up:
            return float("inf")
        return max(0.0, st.retry_at - now)

    def record_attempt(self, key: Hashable, now: float) -> None:
        st = self._touch(key)
        st.attempts += 1
        st.last_attempt = now

    def record_failure(self, key: Hashable, now: float, error: str = "", *, scale: float = 1.0) -> float:
        """Returns the delay until the next attempt is allowed (inf once given up).

        ``scale`` (>= 1) stretches the delay when the node is overloaded (the dialer's
        :attr:`~.dialer.congestion.DialWindow.load`): a retry then waits for the CPU to catch up
        instead of adding to the queue. The cap still holds."""
        st = self._touch(key)
        st.failures += 1
        st.last_error = error[:200]
        if st.failures >= self.config.give_up_after and key not in self._kept:
            st.given_up = True
            st.retry_at = float("inf")
            return float("inf")
        normal = self.delay_for(st.failures)
        if key in self._kept:
            # A static peer or bootstrap node that refuses us is most often one that starts a
            # moment after us (a network restarted at once): its first retries come sooner.
            normal = min(normal, KEPT_FIRST_RETRY * 2.0 ** (st.failures - 1))
        delay = min(float(self.config.cap), normal * max(1.0, scale))
        if key in self._kept:
            delay = min(delay, KEEP_TRYING_CAP)
        if self.config.jitter:
            delay *= 1.0 + self._rng.uniform(-self.config.jitter, self.config.jitter)
        st.retry_at = now + delay
        return delay

    def record_success(self, key: Hashable, now: float) -> None:
        st = self._touch(key)
        st.failures = 0
        st.given_up = False
        st.retry_at = 0.0
        st.last_success = now
        st.last_error = ""

    def forget(self, key: Hashable) -> None:
        self._states.pop(key, None)
        self._kept.pop(key, None)

    def reset_given_up(self) -> int:
        """A fresh start (the network came back): given-up keys may be tried again. Returns how many."""
        n = 0
        for st in self._states.values():
            if st.given_up:
                st.given_up = False
                st.failures = 0
                st.retry_at = 0.0
                n += 1
        return n

    def snapshot(self, now: float, limit: int = 50) -> dict[str, dict[str, object]]:
        """For status output: kept keys, then the most recent keys that have failed (at most ``limit``)."""
        out: dict[str, dict[str, object]] = {}
        for key, st in [*self._kept.items(), *reversed(self._states.items())]:
            if len(out) >= limit:
                break
            if st.failures or st.given_up:
                out[self._label(key)] = {
                    "attempts": st.attempts,
                    "failures": st.failures,
                    "retry_in": None if st.given_up else round(max(0.0, st.retry_at - now), 1),
                    "given_up": st.given_up,
                    "last_error": st.last_error,
                }
        return out
