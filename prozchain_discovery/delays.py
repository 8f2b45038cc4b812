"""The one doubling backoff the cores share: ``base``, ``2·base``, ``4·base``, … at most ``cap``.

Bans, the peer store's flush retries, relay reservations, hole-punch sessions, DNS-seed lookups
and mDNS restarts all wait this way after their n-th consecutive failure. (The dialer's backoff
is go-libp2p's quadratic one, in backoff.py.)
"""

from __future__ import annotations

__all__ = ["doubling"]


def doubling(base: float, cap: float, n: int) -> float:
    """The delay after the ``n``-th consecutive failure (``n`` ≥ 1): ``base · 2^(n-1)``, at most
    ``cap``. The exponent stops at 64, so a long run of failures never overflows a float."""
    return min(cap, base * 2.0 ** min(n - 1, 64))
