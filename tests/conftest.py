"""Shared fixtures: cheap identities and signed records."""

from __future__ import annotations

import functools
import os

# Nothing in this suite may dial off this machine: the service refuses non-loopback dials.
os.environ["PROZCHAIN_DIAL_LOOPBACK_ONLY"] = "1"

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID


@functools.cache
def identity(i: int) -> tuple[KeyPair, ID]:
    """Deterministic identity number ``i`` (key generation costs ~50 us; cached anyway)."""
    pair = create_new_key_pair(i.to_bytes(32, "big"))
    return pair, ID.from_pubkey(pair.public_key)


@pytest.fixture
def ident():
    return identity
