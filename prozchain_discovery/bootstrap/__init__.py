"""Bootstrap cascade: static peers, bootstrap nodes, DNS seeds, mDNS, and /prozchain/bootstrap/1.0."""
