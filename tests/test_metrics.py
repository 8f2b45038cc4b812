"""Metrics through prometheus_client, and the /metrics endpoint."""

from __future__ import annotations

import pytest
import trio

from prozchain_discovery.metrics import Metrics, parse_listen, serve_metrics


def test_counters_keep_the_old_api_and_export_as_prometheus():
    m = Metrics()
    m.inc("dials", source="static")
    m.inc("dials", 2, source="pex")
    m.inc("feelers")
    assert m.get("dials") == 3 and m.get("dials", source="pex") == 2 and m.get("nothing") == 0
    assert m.as_dict()["dials{source=pex}"] == 2 and m.as_dict()["feelers"] == 1
    text = m.prometheus()
    assert 'prozchain_discovery_dials_total{source="pex"} 2.0' in text
    assert "# HELP prozchain_discovery_dials_total Outbound dials started" in text


def test_label_names_must_not_change():
    m = Metrics()
    m.inc("records_rejected", reason="bad_signature", via="pex")
    with pytest.raises(ValueError, match="records_rejected"):
        m.inc("records_rejected", reason="bad_signature")


def test_histograms_show_in_both_views():
    m = Metrics()
    for s in (0.004, 0.006, 0.2):
        m.observe("dial_seconds", s)
    m.observe("dial_seconds", float("nan"))  # dropped
    d = m.as_dict()
    assert d["dial_seconds_count"] == 3 and abs(d["dial_seconds_sum"] - 0.21) < 1e-9
    assert 'prozchain_discovery_dial_seconds_bucket{le="0.005"} 1.0' in m.prometheus()


def test_two_nodes_in_one_process_do_not_share_metrics():
    a, b = Metrics(), Metrics()
    a.inc("dials", source="pex")
    assert b.get("dials") == 0 and "dials" not in b.prometheus()


@pytest.mark.parametrize(
    "text,expected",
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("localhost:1", ("localhost", 1))],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "::1:9464", "127.0.0.1:0", "127.0.0.1:http", "h:70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


async def _get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    data = b""
    with trio.fail_after(3):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_metrics_endpoint_serves_and_refuses(nursery):
    m = Metrics()
    m.inc("dials", source="bootstrap")
    port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    reply = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'prozchain_discovery_dials_total{source="bootstrap"} 1.0' in reply
    assert (await _get(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert await _get(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10_000) == b""  # oversized


async def test_metrics_endpoint_names_an_address_it_cannot_bind(nursery):
    port = await nursery.start(serve_metrics, Metrics(), "127.0.0.1", 0)
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        await serve_metrics(Metrics(), "127.0.0.1", port)
