"""Hole punching through a relay (DCUtR, ``/libp2p/dcutr``): the attempt schedule and punch policy
(``schedule.py``, sans-IO), the message codec (``messages.py``) and the component
(``service.py``) that upgrades relayed connections to direct ones."""

from .schedule import HolepunchNotSupported, HolepunchParams, PairPlan

__all__ = ["HolepunchNotSupported", "HolepunchParams", "PairPlan"]
