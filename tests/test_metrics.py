"""Metrics through prometheus_client, and the /metrics endpoint."""

from __future__ import annotations

import functools

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


def test_gauges_and_histograms_check_labels_too():
    m = Metrics()
    m.set_gauge("peers", 3, table="new")
    m.set_gauge("peers", 5, table="tried")
    m.set_gauge("connected", 2)
    assert m.as_dict()["peers{table=new}"] == 3 and m.as_dict()["connected"] == 2
    assert 'prozchain_discovery_peers{table="tried"} 5.0' in m.prometheus()
    with pytest.raises(ValueError, match=r"'peers'.*\('table',\).*\(\)"):
        m.set_gauge("peers", 1)
    m.observe("pex_round_trip_seconds", 0.01, outcome="ok")
    with pytest.raises(ValueError, match="pex_round_trip_seconds"):
        m.observe("pex_round_trip_seconds", 0.01)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["9464", ":9464", "::1:9464", "[::1]", "[]:9464", "[127.0.0.1]:9464", "127.0.0.1:0",
     "127.0.0.1:http", "h:70000", "h:-1", "h:\u0669", "a b:9464", ""],
)
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError, match="9464|port|host|HOST:PORT|IPv6"):
        parse_listen(text)


async def _get(port: int, request: bytes) -> bytes:
    """Send ``request`` and read to EOF; a reset (server closed with input unread) reads as b""."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    try:
        await stream.send_all(request)
        with trio.fail_after(3):
            while chunk := await stream.receive_some(65536):
                data += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return data


async def test_metrics_endpoint_serves_and_refuses(nursery):
    m = Metrics()
    m.inc("dials", source="bootstrap")
    port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
    reply = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head and b"Connection: close" in head
    assert b'prozchain_discovery_dials_total{source="bootstrap"} 1.0' in body
    assert f"Content-Length: {len(body)}".encode() in head
    m.inc("dials", source="bootstrap")  # every scrape reads the live numbers
    assert b'dials_total{source="bootstrap"} 2.0' in await _get(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert (await _get(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert await _get(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10_000) == b""  # oversized
    assert (await _get(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 404")


async def test_a_slow_client_is_dropped_and_does_not_block_others(nursery):
    port = await nursery.start(functools.partial(serve_metrics, request_timeout=0.2), Metrics(), "127.0.0.1", 0)
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    await slow.send_all(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
    start = trio.current_time()
    assert (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    with trio.fail_after(2):
        assert await slow.receive_some(100) == b""  # closed unanswered at the deadline
    assert 0.15 < trio.current_time() - start < 1.5
    await slow.aclose()


async def test_connections_beyond_the_limit_are_closed(nursery):
    port = await nursery.start(
        functools.partial(serve_metrics, request_timeout=5, max_connections=1), Metrics(), "127.0.0.1", 0
    )
    holder = await trio.open_tcp_stream("127.0.0.1", port)  # sends nothing: holds the one slot
    with trio.fail_after(2):  # answered until the server has accepted the holder, then closed
        while await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n") != b"":
            await trio.sleep(0.01)
    await holder.aclose()
    with trio.fail_after(2):
        while not (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200"):
            await trio.sleep(0.01)


async def test_cancelling_the_server_frees_the_port():
    async with trio.open_nursery() as inner:
        port = await inner.start(serve_metrics, Metrics(), "127.0.0.1", 0)
        inner.cancel_scope.cancel()
    async with trio.open_nursery() as again:
        assert await again.start(serve_metrics, Metrics(), "127.0.0.1", port) == port
        again.cancel_scope.cancel()


async def test_metrics_endpoint_names_an_address_it_cannot_bind(nursery):
    port = await nursery.start(serve_metrics, Metrics(), "127.0.0.1", 0)
    with pytest.raises(OSError, match=f"127.0.0.1:{port}") as err:
        await serve_metrics(Metrics(), "127.0.0.1", port)
    assert f"127.0.0.1:{port}" in err.value.strerror  # what the CLI prints
