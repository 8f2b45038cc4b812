"""``--log-level DEBUG`` shows our records and libp2p's, not multiaddr's codec tracing (#15 item 7c)."""

from __future__ import annotations

import logging

import pytest
from multiaddr import Multiaddr

from prozchain_discovery.cli.common import setup_logging
from prozchain_discovery.libp2p_logs import NOISY_LOGGERS, hold_noisy_loggers

PID = "12D3KooWNrEDrVTS69UooPtdbnC6ewWMFhvwa3Eo8tVyYt3yN2Xj"


@pytest.fixture
def noisy_levels_restored():
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _parse_some_addresses() -> None:
    ma = Multiaddr(f"/ip4/198.51.100.7/tcp/4001/p2p/{PID}")
    Multiaddr(ma.to_bytes())
    str(ma)


def test_debug_shows_ours_not_multiaddr_codec_tracing(noisy_levels_restored, caplog):
    caplog.set_level(logging.DEBUG)
    _parse_some_addresses()
    assert any(r.name.startswith("multiaddr") for r in caplog.records)  # what there is to hold
    caplog.clear()

    hold_noisy_loggers()
    _parse_some_addresses()
    logging.getLogger("prozchain_discovery.test").debug("ours")
    assert [r.name for r in caplog.records] == ["prozchain_discovery.test"]
    logging.getLogger("multiaddr.codecs").warning("a real problem")  # INFO and above still pass
    assert caplog.records[-1].name == "multiaddr.codecs"


def test_the_cli_holds_them_at_debug(noisy_levels_restored, monkeypatch):
    from prozchain_discovery import libp2p_logs

    monkeypatch.setattr(libp2p_logs, "route_libp2p_logs", lambda *a, **kw: None)
    setup_logging("DEBUG")
    assert logging.getLogger("multiaddr.transforms").getEffectiveLevel() == logging.INFO


def test_a_level_the_application_chose_is_kept(noisy_levels_restored):
    logging.getLogger("multiaddr").setLevel(logging.ERROR)
    hold_noisy_loggers()
    assert logging.getLogger("multiaddr").level == logging.ERROR
