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

import os
from collections.abc import Iterator

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


@pytest.fixture(scope="session")
def natlab() -> Iterator[Lab]:
    """The lab, up (no delay) for the session, torn down at its end."""
    lab_prerequisites()
    lab = Lab()
    with lab.locked(timeout=600):
        lab.up()
        try:
            yield lab
        finally:
            lab.down()
