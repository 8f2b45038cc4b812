"""What discovery did, as Prometheus metrics (``prometheus_client``) and as a dict for status.

Every :class:`Metrics` has its own ``CollectorRegistry`` (tests, the demo and the benchmarks run
many nodes in one process). Counters are made on first use with the label names of that call
and exported as ``prozchain_discovery_<name>_total``; histograms (:meth:`observe`) hold latencies
in seconds. :func:`serve_metrics` answers ``GET /metrics`` from a task in the caller's nursery
(``prozchain-discovery node --metrics-listen 127.0.0.1:9464``), as kubo and go-libp2p expose theirs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "serve_metrics", "parse_listen", "PREFIX"]

log = logging.getLogger("prozchain_discovery.metrics")

PREFIX = "prozchain_discovery_"
# From a loopback dial (~5 ms) to a dial timeout on a bad path (10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HELP = {
    "dials": "Outbound dials started, by source of the address",
    "dial_failures": "Outbound dials that failed or timed out, by source",
    "dial_hedges": "Backup dials started beside a late dial",
    "dials_refused_loopback_only": "Dials refused by the address filter",
    "records_accepted": "Signed peer records stored in the peer book, by route",
    "records_rejected": "Signed peer records refused, by reason and route",
    "pex_requests_sent": "PEX requests sent",
    "pex_requests_failed": "PEX requests that failed (stream, timeout, decode)",
    "pex_requests_served": "PEX requests answered, by verdict",
    "dial_fallbacks": "Dials whose direct addresses failed, continued through a relay (/p2p-circuit)",
    "answers_over_relay": "Bootstrap/PEX answers over relayed connections, capped at server.max_answer_over_relay",
    "bootstrap_requests_sent": "Bootstrap handshakes completed as a caller",
    "bootstrap_requests_failed": "Bootstrap handshakes that failed as a caller",
    "bootstrap_requests_served": "Bootstrap requests answered, by status",
    "wrong_network": "Peers found on another network id",
    "bad_requests": "Inbound requests dropped (framing, decode, timeout, stream)",
    "bans": "Peers banned for abuse, by reason",
    "refused_banned": "Inbound streams refused because the peer or its IP is banned",
    "peerdb_flush_failures": "Peer database flushes that failed (changes kept for the retry)",
    "dial_seconds": "Time to a connected, secured, multiplexed outbound connection",
    "join_seconds": "Time from start to min_peers_for_startup connected peers",
    "pex_round_trip_seconds": "PEX request to verified-free response, on an open connection",
    "bootstrap_round_trip_seconds": "Bootstrap request to response, on an open connection",
    "holepunch_attempts": "DCUtR CONNECT/SYNC rounds we drove",
    "holepunch_successes": "Relayed connections upgraded to direct ones by hole punching",
    "holepunch_failures": "Hole-punch sessions that used every attempt without a direct connection",
    "holepunch_not_supported": "Relayed connections left relayed: symmetric NAT on a side (HolepunchNotSupported)",
    "holepunch_time_to_direct_seconds": "Start of the DCUtR session to a direct connection",
    "relay_reservations_served": "Circuit relay reservations granted by our relay (new, renewals)",
    "relay_reservations_refused": "Circuit relay reservations refused, by reason (spoofed, relay_full, per_ip)",
    "relay_reservations_active": "Reservations our relay holds now",
    "relay_circuits_cut": "Relayed connections cut at a limit, by limit (data, duration)",
    "relay_circuits_ended": "Relayed connections through our relay that ended normally, by how (eof, reset)",
    "relay_hop_failures": "Hop requests to our relay that never came whole, by reason (closed, timeout, malformed)",
    "relay_stop_failures": "Circuits to us that failed before their handshake completed, by step",
    "libp2p_records_demoted": "py-libp2p WARNING/ERROR records of normal teardown logged at DEBUG, by kind (whole process)",
    "relay_serving": "1 while we serve circuit relay hop",
    "autorelay_reservations": "Reservations we made on relays (new, renewal)",
    "autorelay_reservation_failures": "Reservations on relays that failed, by relay status code (0: no answer)",
    "autorelay_reservations_held": "Relays we hold a reservation on now",
    "autorelay_releases": "Relays we stopped using, by reason",
    "autonat_dial_backs": "AutoNAT v2 requests served, by result (ok, dial_error, refused, rejected, unpaid...)",
    "autonat_probes": "AutoNAT v2 dial-back probes of our addresses, by outcome",
    "autonat_dial_backs_received": "AutoNAT v2 dial-back streams received, by result (ok, unknown_nonce, bad)",
    "autonat_dial_data_paid": "Bytes of AutoNAT v2 dial data we paid to servers (amplification guard)",
    "dns_seed_queries": "TXT queries for signed (pzseed) DNS seeds",
    "dns_seed_rejected": "Entries of signed (pzseed) DNS seeds refused, by reason (bad_signature, hash_mismatch, rollback...)",
    "dns_seed_seq": "Sequence number of a signed DNS seed's last verified root, by seed domain",
    "dns_seed_leaves_verified": "Verified peer records in a signed DNS seed's current tree, by seed domain",
    "dns_seed_lookup_seconds": "A signed DNS seed's lookup for the cascade: root to min_peers verified records",
    "autonat_dial_back_missing": "Servers that said they dialed us back but whose nonce never came",
}


class Metrics:
    """Named counters, gauges and histograms with optional labels.

    ``inc("records_rejected", 3, reason="bad_signature", via="pex")``; all calls for one name
    must use the same label names (Prometheus requires it; a mismatch is a ValueError).
    """

    def __init__(self, demoted: Callable[[], dict[str, int]] | None = None) -> None:
        """``demoted``: the process-wide counts of py-libp2p records demoted by kind
        (``libp2p_logs.demoted_counts``, passed in by the composition root), followed as
        ``libp2p_records_demoted``."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}
        self._histograms: dict[str, tuple[Histogram, tuple[str, ...]]] = {}
        # The same numbers for status.json and tests: (name, sorted labels) -> value.
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauge_values: dict[str, float] = {}
        # py-libp2p's teardown records demoted by libp2p_logs (process-wide): counted from now.
        self._demoted = demoted
        self._demoted_seen: dict[str, int] = demoted() if demoted is not None else {}

    @staticmethod
    def _labels(name: str, known: tuple[str, ...] | None, labels: dict[str, str]) -> tuple[str, ...]:
        names = tuple(sorted(labels))
        if known is not None and known != names:
            raise ValueError(f"metric {name!r} was first used with labels {known}, now with {names}")
        return names

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        entry = self._counters.get(name)
        names = self._labels(name, entry[1] if entry else None, labels)
        if entry is None:
            counter = Counter(name, HELP.get(name, name.replace("_", " ")), names,
                              namespace=PREFIX.rstrip("_"), registry=self.registry)
            entry = self._counters[name] = (counter, names)
        metric = entry[0].labels(**labels) if names else entry[0]
        metric.inc(amount)
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0) + amount

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        entry = self._gauges.get(name)
        names = self._labels(name, entry[1] if entry else None, labels)
        if entry is None:
            gauge = Gauge(name, HELP.get(name, name.replace("_", " ")), names,
                          namespace=PREFIX.rstrip("_"), registry=self.registry)
            entry = self._gauges[name] = (gauge, names)
        (entry[0].labels(**labels) if names else entry[0]).set(value)
        key = name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
        self._gauge_values[key] = value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """One latency sample, in seconds (non-finite samples are dropped)."""
        if not math.isfinite(seconds):
            return
        entry = self._histograms.get(name)
        names = self._labels(name, entry[1] if entry else None, labels)
        if entry is None:
            hist = Histogram(name, HELP.get(name, name.replace("_", " ")), names,
                             namespace=PREFIX.rstrip("_"), registry=self.registry, buckets=LATENCY_BUCKETS)
            entry = self._histograms[name] = (hist, names)
        (entry[0].labels(**labels) if names else entry[0]).observe(seconds)
        for suffix, value in (("_count", 1.0), ("_sum", seconds)):
            key = (name + suffix, tuple(sorted(labels.items())))
            self._values[key] = self._values.get(key, 0) + value

    def _follow_demoted(self) -> None:
        """Bring ``libp2p_records_demoted`` up to libp2p_logs' process-wide counts."""
        if self._demoted is None:
            return
        for kind, n in self._demoted().items():
            seen = self._demoted_seen.get(kind, 0)
            if n > seen:
                self._demoted_seen[kind] = n
                self.inc("libp2p_records_demoted", n - seen, kind=kind)

    def get(self, name: str, **labels: str) -> int:
        """A counter's value for ``labels``, or its sum over all labels when none are given."""
        if name == "libp2p_records_demoted":
            self._follow_demoted()
        if labels:
            return int(self._values.get((name, tuple(sorted(labels.items()))), 0))
        return int(sum(v for (n, _), v in self._values.items() if n == name))

    def as_dict(self) -> dict[str, object]:
        self._follow_demoted()
        out: dict[str, object] = {}
        for (name, labels), value in sorted(self._values.items()):
            key = name + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else "")
            out[key] = round(value, 6) if isinstance(value, float) and not value.is_integer() else int(value)
        out.update(self._gauge_values)
        return out

    def prometheus(self) -> str:
        self._follow_demoted()
        return generate_latest(self.registry).decode()


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` → (host, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses, e.g. [::1]:9464")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: {port!r} is not a port (1-65535)")
    return host, int(port)


MAX_REQUEST = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds to read a request, and again to send the answer
MAX_CONNECTIONS = 32  # scrapes answered at once; more are closed unanswered
# generate_latest writes the classic text format whatever CONTENT_TYPE_LATEST says (1.0.0 in 0.26+).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[int]; trio-stubs lack it
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; ``task_status`` gets the bound port.

    Runs in the caller's nursery (no threads). Each request is read with a size limit
    (:data:`MAX_REQUEST`) and a deadline, answered, and the connection closed; at most
    ``max_connections`` are served at once. A bind failure raises OSError naming the address.
    With port 0 and a host name that resolves to several addresses, only the first is served
    (each would get its own port).
    """
    shown = f"[{host}]" if ":" in host else host
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {shown}:{port}: {exc.strerror or exc}") from None
    if port == 0:
        for extra in listeners[1:]:
            extra.socket.close()
        listeners = listeners[:1]
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics at http://%s:%d/metrics", shown, bound)
    limiter = trio.CapacityLimiter(max_connections)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            await _answer(metrics, stream, request_timeout)
        finally:
            limiter.release()

    task_status.started(bound)
    await trio.serve_listeners(handler, listeners)


async def _answer(metrics: Metrics, stream: trio.SocketStream, timeout: float) -> None:
    try:
        data = b""
        with trio.move_on_after(timeout):
            while b"\r\n\r\n" not in data and len(data) <= MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        if b"\r\n\r\n" not in data or data.index(b"\r\n\r\n") + 4 > MAX_REQUEST:
            return  # too slow, too big or cut short: dropped unanswered
        line = data.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            body = metrics.prometheus().encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\n"
        else:
            body = b"not found: try /metrics\n"
            head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with trio.move_on_after(timeout):
            await stream.send_all(head.encode() + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    except Exception:  # a scrape must never take the node down with it
        log.exception("metrics request failed")
    finally:
        await stream.aclose()
