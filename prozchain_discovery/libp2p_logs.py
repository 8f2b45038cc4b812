"""py-libp2p's log records, routed into ours (bug 16 of ../shared/notes/py-libp2p-0.8.1.md).

py-libp2p 0.8.1's ``libp2p`` logger has ``propagate=False`` and no handler, so its errors reach no
handler of the application's. :func:`route_libp2p_logs` (called by the CLI, not at import) hands
its records at ``level`` and above to ``prozchain_discovery.libp2p.<module>``, at most
``rate_per_minute`` per message template (then one "suppressed K similar" record), with
:data:`SHUTDOWN_NOISE` — what py-libp2p logs at ERROR for every stream torn down under it —
and :data:`TEARDOWN_NOISE` — what it logs at WARNING/ERROR for circuits, relayed connections
and punches ending normally, and peers going away — demoted to DEBUG, the latter counted.

:func:`hold_noisy_loggers` (also the CLI's call) keeps dependencies that trace their internals
at DEBUG (:data:`NOISY_LOGGERS`, item 20 of the notes) at INFO, so ``--log-level DEBUG`` shows
our records and libp2p's.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "LIBP2P_LOGGER",
    "NOISY_LOGGERS",
    "SHUTDOWN_NOISE",
    "TEARDOWN_NOISE",
    "demoted_counts",
    "noise_kind",
    "RateLimitFilter",
    "WarningLimiter",
    "limit_warnings",
    "Libp2pLogRouter",
    "route_libp2p_logs",
    "hold_noisy_loggers",
    "is_shutdown_noise",
    "message_template",
]


LIBP2P_LOGGER = "prozchain_discovery.libp2p"

# What py-libp2p 0.8.1 logs at WARNING/ERROR for every stream or connection torn down under it
# (a peer or our own host shutting down, a connection closed mid-negotiation): (logger name
# prefix, regular expression matched at the start of the formatted message). The caller of the
# failed operation gets an exception and handles it; these records only repeat it, one per
# stream. Measured by running tests/test_pex_network.py and tests/test_cascade.py.
SHUTDOWN_NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    # BasicHost.new_stream, a stream reset or closed while protocols were being negotiated
    ("libp2p.host.basic_host",
     re.compile(r"Failed to open stream to peer \S+:\s+Error: (handshake|protocol) (read|write) failed")),
    # MultiselectClient.handshake, the same streams one layer down
    ("libp2p.protocol_muxer.multiselect_client",
     re.compile(r"MultiselectClient handshake: (read|write) failed")),
    # Yamux.handle_incoming when the connection under it is closed
    ("libp2p.stream_muxer.yamux",
     re.compile(r"Error in handle_incoming for peer \S+: (ClosedResourceError|ConnectionClosedError|BrokenResourceError)")),
    # Swarm.add_conn cancelled because the host is stopping
    ("libp2p.network.swarm", re.compile(r"\[ADDCONN_FAIL\] add_conn failed for peer \S+: Cancelled\(")),
)

# What py-libp2p 0.8.1 logs at WARNING/ERROR in the normal life of relayed connections, circuits
# and hole punches, and when peers go away (issue #16: a relay logged 86 ERROR lines in three
# minutes of a healthy crowd): (kind, logger name prefix, pattern at the start of the message).
# Each is demoted to DEBUG and counted by kind (:func:`demoted_counts`, exported by every
# :class:`~.metrics.Metrics` as ``libp2p_records_demoted``). The caller of the failed operation
# gets an exception and counts it where it matters (dial failures, relay_circuits_ended ...).
TEARDOWN_NOISE: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    # CircuitV2Transport.dial looks in py-libp2p's peerstore for circuit addresses of a peer it
    # never stored (our Dialer passes the address): one per circuit dial.
    ("circuit_dial_peerstore", "libp2p.relay.circuit_v2.transport",
     re.compile(r"Failed to fetch stored addresses for peer \S+: 'peer ID not found'")),
    # ... and the relay went away or refused the stream
    ("circuit_dial_relay_gone", "libp2p.relay.circuit_v2.transport", re.compile(r"Failed to open stream to relay ")),
    # Our relay (upstream's CONNECT handler): the target went away, or refused or ignored STOP
    ("circuit_target_gone", "libp2p.relay.circuit_v2.protocol",
     re.compile(r"(Error establishing relay connection: |Destination rejected connection: )")),
    # Upstream's stop and hop handlers, where they still run (ours replace them: relay/hop.py)
    ("circuit_handshake_failed", "libp2p.relay.circuit_v2.protocol", re.compile(r"Error handling stop stream: ")),
    ("hop_stream_ended", "libp2p.relay.circuit_v2.protocol",
     re.compile(r"(Error reading from hop stream from |Unexpected error reading from stream: |Error relaying data: )")),
    # A Yamux window update on a relayed connection whose circuit was closed (after a punch):
    # libp2p_fixes.yamux_window_hysteresis keeps the data read; the connection is going.
    ("yamux_window_update_closed", "libp2p.stream_muxer.yamux",
     re.compile(r"Stream \d+: Unexpected error during window update")),
    # An outbound upgrade that failed (a punch or circuit that lost its race, a peer that went
    # away mid-handshake): the dial fails and the dialer counts it. py-libp2p already logs the
    # inbound one at DEBUG ("expected churn").
    ("upgrade_failed", "libp2p.network.swarm",
     re.compile(r"(failed to upgrade security for peer |fail(ed)? to upgrade mux for peer )")),
    # Our identify push (addresses or protocols changed) to a peer that has just gone, e.g. a
    # short-lived AutoNAT dial-back identity: nothing to act on, the next identify catches up
    ("identify_push_failed", "libp2p.identity.identify_push", re.compile(r"Error pushing identify to peer ")),
    # ... and identify (push) with a peer that went away mid-exchange: a push that never came
    # whole (the error text is empty: a timeout or EOF), an answer into a reset connection
    ("identify_peer_gone", "libp2p.identity.identify_push",
     re.compile(r"Error processing identify/push from \S+: ?(\Z|.*(?i:closed|reset|incomplete|broken|eof|timed? ?out))")),
    ("identify_peer_gone", "libp2p.identity.identify",
     re.compile(r"Error sending identify response to \S+: (Write operation failed|.*(?i:closed|reset|broken))")),
    # A dial to a peer that stopped (make demo's teardown: nodes redial stopped nodes), and a
    # punch dial from our listen port while that 4-tuple is taken (both sides punched at once)
    ("tcp_dial_failed", "libp2p.transport.tcp", re.compile(r"Failed to open TCP stream: ")),
    ("tcp_dial_failed", "libp2p.transport.tcp",
     re.compile(r"Unexpected error opening TCP stream: Failed to connect \S+ from \S+: \[Errno (98|99|111|113)\]")),
)

def demoted_counts() -> dict[str, int]:
    """How many py-libp2p records :data:`TEARDOWN_NOISE` demoted, by kind, in this process
    (py-libp2p's records do not say which host logged them). The counts live in the
    :class:`Libp2pLogRouter` on libp2p's logger (none installed: empty)."""
    out: dict[str, int] = {}
    for h in logging.getLogger("libp2p").handlers:
        if isinstance(h, Libp2pLogRouter):
            for kind, n in h.demoted.items():
                out[kind] = out.get(kind, 0) + n
    return out


def noise_kind(record: logging.LogRecord) -> str | None:
    """The :data:`TEARDOWN_NOISE` kind of ``record`` (WARNING and above), or None."""
    if record.levelno < logging.WARNING:
        return None
    message: str | None = None
    for kind, prefix, pattern in TEARDOWN_NOISE:
        if record.name.startswith(prefix):
            if message is None:
                message = record.getMessage()
            if pattern.match(message):
                return kind
    return None


# Dependencies whose DEBUG records trace their internals, not events: multiaddr logs each step
# of encoding or decoding every field of every address ("[DEBUG CID to_bytes] ...", "[DEBUG
# bytes_to_string] ..."): 98 % of a node's lines at DEBUG, about 170 a second with 3 peers.
# Found by running nodes at DEBUG and counting lines per logger; no other logger came close.
NOISY_LOGGERS: tuple[str, ...] = ("multiaddr",)

_PEER_ID = re.compile(r"\b(?:12D3KooW|16Uiu2|Qm)[1-9A-HJ-NP-Za-km-z]{20,}")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


def is_shutdown_noise(record: logging.LogRecord) -> bool:
    """Whether ``record`` is one of :data:`SHUTDOWN_NOISE`."""
    if record.levelno < logging.WARNING:
        return False
    message: str | None = None
    for prefix, pattern in SHUTDOWN_NOISE:
        if record.name.startswith(prefix):
            if message is None:
                message = record.getMessage()
            if pattern.match(message):
                return True
    return False


def message_template(record: logging.LogRecord) -> str:
    """What counts as "the same message" for rate limiting.

    ``record.msg`` when the record has arguments; otherwise (py-libp2p formats most messages
    itself, with f-strings) the message with peer ids and numbers blanked out.
    """
    if record.args:
        return str(record.msg)[:300]
    return _NUMBER.sub("N", _PEER_ID.sub("<peer>", str(record.msg)))[:300]


class RateLimitFilter(logging.Filter):
    """At most ``rate_per_minute`` records per logger and message template in each window.

    A template's window starts at its first record and lasts ``window`` seconds (clock:
    ``clock``, :func:`time.monotonic` unless a test injects one). Records over the limit are
    dropped and counted; when the window is over, :meth:`pop_summaries` returns one
    "suppressed N similar" record for it (looked for at the template's next record, and among
    all templates at most once per second of the clock).
    """

    def __init__(
        self, rate_per_minute: int = 10, *, clock: Callable[[], float] = time.monotonic,
        window: float = 60.0, max_templates: int = 512,
    ) -> None:
        super().__init__()
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self.rate = rate_per_minute
        self.clock = clock
        self.window = window
        self.max_templates = max_templates
        # (logger name, template) -> [window start, records seen, records dropped, level]
        self._windows: dict[tuple[str, str], list[Any]] = {}
        self._summaries: list[logging.LogRecord] = []
        self._last_sweep = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        key = (record.name, message_template(record))
        window = self._windows.get(key)
        if window is not None and now - window[0] >= self.window:
            self._close(key, window)
            window = None
        if window is None:
            if len(self._windows) >= self.max_templates:
                self._sweep(now, force=True)
            window = self._windows[key] = [now, 0, 0, record.levelno]
        window[1] += 1
        window[3] = max(window[3], record.levelno)
        if window[1] <= self.rate:
            return True
        window[2] += 1
        return False

    def pop_summaries(self) -> list[logging.LogRecord]:
        """The "suppressed N similar" records of windows that are over."""
        self._sweep(self.clock())
        out, self._summaries = self._summaries, []
        return out

    def _sweep(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for key, window in list(self._windows.items()):
            if now - window[0] >= self.window:
                self._close(key, window)
        while len(self._windows) >= self.max_templates:  # a flood of distinct messages
            key = next(iter(self._windows))
            self._close(key, self._windows[key])

    def _close(self, key: tuple[str, str], window: list[Any]) -> None:
        del self._windows[key]
        if window[2]:
            name, template = key
            self._summaries.append(logging.LogRecord(
                name, window[3], __file__, 0,
                "suppressed %d similar records in the last %d s: %s",
                (window[2], round(self.window), template.splitlines()[0] if template else ""),
                None,
            ))


class WarningLimiter(logging.Filter):
    """A handler filter: WARNING and above at most ``rate_per_minute`` per logger and message
    template (a :class:`RateLimitFilter`), lower levels untouched; the "suppressed N similar"
    summary of a window that is over goes out through the same handler before the next record.
    :func:`limit_warnings` puts one on the application's handlers, so our own WARNING/ERROR
    records are rate-limited as py-libp2p's are (issue #16: "rate-limited either way")."""

    def __init__(self, rate_per_minute: int = 10, **kw: Any) -> None:
        super().__init__()
        self.limiter = RateLimitFilter(rate_per_minute, **kw)
        self.handler: logging.Handler | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        summaries = self.limiter.pop_summaries()
        if summaries and self.handler is not None:
            for summary in summaries:
                self.handler.handle(summary)  # passes this filter: its template is new
        if record.levelno < logging.WARNING:
            return True
        return self.limiter.filter(record)


def limit_warnings(handlers: list[logging.Handler], rate_per_minute: int = 10) -> None:
    """Give each handler a :class:`WarningLimiter` (once; a second call changes nothing)."""
    for handler in handlers:
        if any(isinstance(f, WarningLimiter) for f in handler.filters):
            continue
        limiter = WarningLimiter(rate_per_minute)
        limiter.handler = handler
        handler.addFilter(limiter)


class Libp2pLogRouter(logging.Handler):
    """A handler on the ``libp2p`` logger: its records go to :data:`LIBP2P_LOGGER`.

    A record ``libp2p.X`` is handled by the logger ``prozchain_discovery.libp2p.X`` (so the
    application's configuration of ``prozchain_discovery`` decides where it goes), after
    :func:`is_shutdown_noise` records are demoted to DEBUG and WARNING+ records pass
    :attr:`limiter` (a :class:`RateLimitFilter`).
    """

    def __init__(self, level: int = logging.WARNING, rate_per_minute: int = 10) -> None:
        super().__init__(level)
        self.limiter = RateLimitFilter(rate_per_minute)
        self.demoted: dict[str, int] = {}  # kind -> records demoted (demoted_counts)

    def emit(self, record: logging.LogRecord) -> None:
        rec = copy.copy(record)  # other handlers on libp2p's loggers see the original
        kind = noise_kind(rec)
        if kind is not None:
            self.demoted[kind] = self.demoted.get(kind, 0) + 1
        if kind is not None or is_shutdown_noise(rec):
            rec.levelno, rec.levelname = logging.DEBUG, "DEBUG"
        target = _target_logger(rec.name)
        if not target.isEnabledFor(rec.levelno):
            return  # before the limiter: a record nobody sees uses no quota
        for summary in self.limiter.pop_summaries():
            _forward(summary)
        if record.levelno >= logging.WARNING and not self.limiter.filter(rec):
            return
        _forward(rec)


def _target_logger(libp2p_name: str) -> logging.Logger:
    """``libp2p.network.swarm`` -> the logger ``prozchain_discovery.libp2p.network.swarm``."""
    if libp2p_name == "libp2p" or libp2p_name.startswith("libp2p."):
        return logging.getLogger(LIBP2P_LOGGER + libp2p_name[len("libp2p"):])
    return logging.getLogger(LIBP2P_LOGGER)


def _forward(rec: logging.LogRecord) -> None:
    logger = _target_logger(rec.name)
    if logger.isEnabledFor(rec.levelno):
        rec.name = logger.name
        logger.handle(rec)


def route_libp2p_logs(level: int = logging.WARNING, *, rate_per_minute: int = 10) -> None:
    """Bug 16: libp2p's records at ``level`` and above go to :data:`LIBP2P_LOGGER`.

    WARNING and above are rate-limited (``rate_per_minute`` per message template, then a
    "suppressed N similar" summary); :data:`SHUTDOWN_NOISE` is demoted to DEBUG. Idempotent:
    a second call replaces the :class:`Libp2pLogRouter` of the first. libp2p's logger keeps
    ``propagate=False``, so nothing is printed twice.
    """
    # Importing libp2p runs its setup_logging(), which clears the ``libp2p`` logger's handlers:
    # a router attached before that import (the CLI sets logging up before it loads the host)
    # was wiped, and every py-libp2p record went bare to logging.lastResort (issue #16).
    import libp2p  # noqa: F401

    lg = logging.getLogger("libp2p")
    router = Libp2pLogRouter(level, rate_per_minute)
    for old in [h for h in lg.handlers if isinstance(h, Libp2pLogRouter)]:
        for kind, n in old.demoted.items():  # counts only grow (Metrics follows them)
            router.demoted[kind] = router.demoted.get(kind, 0) + n
        lg.removeHandler(old)
        old.close()
    lg.addHandler(router)
    lg.setLevel(level)
    lg.propagate = False


def hold_noisy_loggers(level: int = logging.INFO) -> None:
    """Each of :data:`NOISY_LOGGERS` passes records at ``level`` and above only, whatever the
    root logger's level; one the application already set higher is left as it is."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < level:  # NOTSET (inherit the root's DEBUG) or DEBUG
            logger.setLevel(level)
