"""Shared fixtures: cheap identities and signed records."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

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



# ---- pytest-xdist: `make test` runs the suite with `-n N --dist loadgroup` -------------------
# Tests that share something machine-wide run on one worker, one after another:
# - "natlab": every module that uses the NAT lab (fixed namespace names and one machine-wide
#   lock: the lab is built once, by that worker);
# - "mdns": real mDNS on port 5353 (the nodes of two such tests would find each other), with the
#   js interop module, which holds one of them and shares module fixtures (the js mesh).
# Every other test is scheduled on its own. xdist's ``xdist_group`` marker would say the same,
# but xdist 3.8 groups by rewriting ``item._nodeid``, which pytest 9.2 no longer reads; so the
# scheduler is given the groups directly, by module.
_MDNS_MODULES = {"tests/test_mdns.py", "tests/test_js_interop.py"}
_TESTS = Path(__file__).parent


@functools.cache
def _xdist_group(module: str) -> str | None:
    if module in _MDNS_MODULES:
        return "mdns"
    try:
        source = (_TESTS.parent / module).read_text()
    except OSError:
        return None
    return "natlab" if "natlab_fixture import" in source else None


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ByResource(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _xdist_group(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return ByResource(config, log)


@pytest.fixture(autouse=True)
def _libp2p_logger_restored() -> Iterator[None]:
    """Every test starts with libp2p's logger as the one before left it at its start.

    The CLI run in-process (tests/test_cli.py) routes py-libp2p's records into ours
    (libp2p_logs.route_libp2p_logs: a handler, no propagation, a rate limit); left in place, a
    later test on the same worker no longer saw libp2p's records in caplog (#16)."""
    lg = logging.getLogger("libp2p")
    saved = (list(lg.handlers), lg.level, lg.propagate)
    root_filters = [(h, list(h.filters)) for h in logging.getLogger().handlers]
    yield
    # The CLI's setup_logging also puts a WarningLimiter on the root logger's handlers, which
    # in a test are pytest's capture handlers: later tests' WARNINGs were rate-limited, and
    # its "suppressed N similar" summaries showed up in their caplog.
    for h, filters in root_filters:
        h.filters[:] = filters
    if (list(lg.handlers), lg.level, lg.propagate) != saved:
        for h in list(lg.handlers):
            lg.removeHandler(h)
        handlers, level, propagate = saved
        for h in handlers:
            lg.addHandler(h)
        lg.setLevel(level)
        lg.propagate = propagate
