"""What identify told us about a peer, read from py-libp2p's peerstore."""

from __future__ import annotations

from libp2p.abc import IHost
from libp2p.peer.id import ID

__all__ = ["listed_protocols"]


def listed_protocols(host: IHost, peer_id: ID) -> list[str]:
    """The protocols ``peer_id`` listed in identify; empty while identify has not run (py-libp2p
    0.8.1 raises PeerStoreError for a peer it has no data on)."""
    try:
        return list(host.get_peerstore().get_protocols(peer_id) or [])
    except Exception:
        return []
