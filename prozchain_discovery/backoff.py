"""Connection-attempt tracking: exponential backoff with jitter and give-up (sans-IO).

The delay after the n-th consecutive failure is ``base + step * n**2`` seconds, capped at
``cap`` (go-libp2p's dial backoff: 5 s + 1 s x tries², cap 5 min), with +-``jitter`` so a fleet
restarted together does not re-dial in lockstep. After ``give_up_after`` consecutive failures a
key is given up for this run. Keys are any hashable (the service uses peer-id bytes: cheap to hash,
where ``str(peer_id)`` costs a base58 encoding); ``label`` turns a key into text for status.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .config import BackoffConfig

__all__ = ["DialBackoff", "AttemptState"]


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
    ) -> None:
        self.config = config or BackoffConfig()
        self._rng = rng or random.Random()
        self._label = label
        self._states: dict[Hashable, AttemptState] = {}

    def state(self, key: Hashable) -> AttemptState | None:
        return self._states.get(key)

    def delay_for(self, failures: int) -> float:
        c = self.config
        return float(min(c.cap, c.base + c.step * failures * failures))

    def allowed(self, key: Hashable, now: float) -> bool:
        st = self._states.get(key)
        return st is None or (not st.given_up and now >= st.retry_at)

    def wait_time(self, key: Hashable, now: float) -> float:
        st = self._states.get(key)
        if st is None:
            return 0.0
        if st.given_up:
            return float("inf")
        return max(0.0, st.retry_at - now)

    def record_attempt(self, key: Hashable, now: float) -> None:
        st = self._states.setdefault(key, AttemptState())
        st.attempts += 1
        st.last_attempt = now

    def record_failure(self, key: Hashable, now: float, error: str = "") -> float:
        """Returns the delay until the next attempt is allowed (inf once given up)."""
        st = self._states.setdefault(key, AttemptState())
        st.failures += 1
        st.last_error = error[:200]
        if st.failures >= self.config.give_up_after:
            st.given_up = True
            st.retry_at = float("inf")
            return float("inf")
        delay = self.delay_for(st.failures)
        if self.config.jitter:
            delay *= 1.0 + self._rng.uniform(-self.config.jitter, self.config.jitter)
        st.retry_at = now + delay
        return delay

    def record_success(self, key: Hashable, now: float) -> None:
        st = self._states.setdefault(key, AttemptState())
        st.failures = 0
        st.given_up = False
        st.retry_at = 0.0
        st.last_success = now
        st.last_error = ""

    def forget(self, key: Hashable) -> None:
        self._states.pop(key, None)

    def reset_given_up(self) -> None:
        """A fresh start (e.g. the network came back): given-up keys may be tried again."""
        for st in self._states.values():
            if st.given_up:
                st.given_up = False
                st.failures = 0
                st.retry_at = 0.0

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """For status output: every key that has failed at least once."""
        out: dict[str, dict[str, object]] = {}
        for key, st in self._states.items():
            if st.failures or st.given_up:
                out[self._label(key)] = {
                    "attempts": st.attempts,
                    "failures": st.failures,
                    "retry_in": None if st.given_up else round(max(0.0, st.retry_at - now), 1),
                    "given_up": st.given_up,
                    "last_error": st.last_error,
                }
        return out
