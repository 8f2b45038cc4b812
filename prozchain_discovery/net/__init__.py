"""Stream and socket I/O: the only place (besides the trio adapters) that awaits on bytes.

``frames`` reads one length-prefixed frame off a libp2p stream, ``exchange`` runs one
request/response on a fresh stream, ``probe`` learns the peer id behind a bare address,
``identify`` reads what identify told us about a peer, ``sockets`` finds the kernel socket
under a connection. The codecs they use are in :mod:`prozchain_discovery.wire`, which is pure.
"""
