"""prozchain-discovery: peer discovery for ProzChain as a plugin on a py-libp2p host."""

__version__ = "0.1.0"
