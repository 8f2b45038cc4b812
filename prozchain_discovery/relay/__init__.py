"""Circuit relay v2: the relay server (hop), autorelay reservations, and ``/p2p-circuit`` dials."""
