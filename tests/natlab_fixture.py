"""The ``natlab`` pytest fixture: the NAT lab (interop/natlab) built once per session.

Use it with an explicit import (conftest.py does not pull it in)::

    from tests.natlab_fixture import natlab  # noqa: F401  (a fixture)

    def test_something(natlab):
        natlab.run("cone1", ["ping", "-c1", natlab.hosts["pub1"].ip], check=True)

Needs root and a few Debian packages (interop/natlab/packages.txt); as root it installs missing
ones with apt-get. Without them it skips, but under ``CI=true`` it fails instead, saying what to
do: CI must run these tests, not quietly skip them. The lab's lock is held for the whole
session, so two test sessions on one machine take turns instead of tearing down each other's lab.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from interop.natlab.lab import Lab, ensure_packages


def lab_unavailable(reason: str) -> None:
    """Skip; under CI=true, fail with ``reason`` instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"NAT lab unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"NAT lab unavailable: {reason}")


def lab_prerequisites() -> None:
    """Skip (or, under CI=true, fail) unless the lab can be built here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        lab_unavailable("needs root (network namespaces, veth, iptables): run the tests as root")
    missing = ensure_packages()
    if missing:
        lab_unavailable(f"missing Debian packages {' '.join(missing)}: as root, "
                        "`python -m interop.natlab install` (make test does it)")


# Each test module that imports ``natlab`` gets its own copy of the fixture (pytest keys fixtures
# by where they are defined), so the lab itself is shared here: built by the first user, torn down
# (and its lock let go) after the last one.
_shared: dict[str, Any] = {"lab": None, "users": 0, "stack": None}


def _acquire() -> Lab:
    if _shared["users"] == 0:
        lab = Lab()
        with contextlib.ExitStack() as stack:
            stack.enter_context(lab.locked(timeout=900))
            stack.callback(lab.down)
            lab.up()
            _shared.update(lab=lab, stack=stack.pop_all())
    _shared["users"] += 1
    return _shared["lab"]


def _release() -> None:
    _shared["users"] -= 1
    if _shared["users"] == 0:
        stack, _shared["stack"], _shared["lab"] = _shared["stack"], None, None
        stack.close()  # down(), then unlock


@pytest.fixture(scope="session")
def natlab() -> Iterator[Lab]:
    """The lab, up (no delay) for the session, torn down at its end."""
    lab_prerequisites()
    lab = _acquire()
    try:
        yield lab
    finally:
        _release()


LAB_DELAY_MS = 25  # the one-way delay of `delayed_lab`: 50 ms RTT through the core


@pytest.fixture
def delayed_lab(natlab: Lab) -> Iterator[Lab]:
    """The lab with :data:`LAB_DELAY_MS` of one-way delay in the core, for the test's length."""
    natlab.set_delay(LAB_DELAY_MS)
    try:
        yield natlab
    finally:
        natlab.set_delay(0)
