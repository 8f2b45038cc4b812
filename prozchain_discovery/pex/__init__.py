"""Peer exchange: /prozchain/pex/1.0 (seed §3.2)."""
