"""sqlite persistence for the peer database (stdlib ``sqlite3``, WAL, never on the trio loop).

Durability: WAL with ``synchronous=FULL``: a transaction that returned is on disk, and a
``kill -9`` at any moment leaves either the state before or after each transaction — never an
unreadable file. The node's private key is **not** stored here (py-libp2p's persistent
peerstore writes it in clear; we do not use that store).

Times: the database core keeps the caller's clock (trio's monotonic clock); rows hold wall-clock
seconds. :class:`AsyncPeerStore` converts with ``offset = time.time() - trio.current_time()``.

Errors (all :class:`PeerStoreError`, each naming the file in ``path``):

* :class:`PeerStoreCorrupt`: the *content* is not a peer database of ours — an empty (0-byte)
  file, garbage, a damaged sqlite file, someone else's sqlite file, our tables with other
  columns. :func:`open_or_reset` moves such a file aside (``<path>.corrupt-<unix time>``) and
  starts an empty book, returning one warning that names both paths.
* :class:`PeerStoreUnavailable`: the file could not be opened for a reason that is not its
  content (locked by another process, permissions, full disk, I/O error). It is left where it
  is — moving a healthy book aside because the disk was full would lose it — and
  :func:`open_or_reset` lets the error through.
* :class:`StoreWriteError`: a write failed (read-only file, full disk, I/O error). It loses
  nothing: the changes it carried are put back in the database's change set, so the next save
  writes them together with whatever changed since (the current state of each peer wins).
  :class:`FlushSchedule` says when to try again (sans-IO, exponential backoff).

Rows whose values do not make an entry (wrong types, undecodable text, addresses that are not
multiaddrs, ...) are skipped and counted (``skipped``), the rest loaded; ``load_warning`` is
one line naming the file and the count. Skipped rows are left in the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import trio

from ..addrs import group_of_bytes
from ..delays import doubling
from .core import PeerDatabase, PeerEntry, PeerSource

__all__ = [
    "PeerStore",
    "AsyncPeerStore",
    "PeerStoreError",
    "PeerStoreCorrupt",
    "PeerStoreUnavailable",
    "StoreWriteError",
    "FlushSchedule",
    "LoadResult",
    "open_or_reset",
    "pending_changes",
    "SCHEMA",
]

SCHEMA = "prozchain-peerdb/1"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    pid BLOB PRIMARY KEY,
    addrs BLOB NOT NULL,
    envelope BLOB,
    seq INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_attempt REAL NOT NULL,
    last_success REAL NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    source TEXT NOT NULL,
    source_peer BLOB,
    source_group TEXT NOT NULL,
    grp TEXT NOT NULL,
    in_tried INTEGER NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = {
    "meta": ["key", "value"],
    "peers": [
        "pid", "addrs", "envelope", "seq", "first_seen", "last_seen", "last_attempt",
        "last_success", "attempts", "failures", "source", "source_peer", "source_group", "grp",
        "in_tried",
    ],
}

# sqlite result codes (primary, ``code & 0xff``) that say the file could not be used for a reason
# outside it: the file is left alone. Every other failure to open is the content's.
_ENVIRONMENT = frozenset({
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOLFS, sqlite3.SQLITE_AUTH,
})

Row = tuple[Any, ...]


class PeerStoreError(RuntimeError):
    """Base of the store's errors; ``path`` names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class PeerStoreCorrupt(PeerStoreError):
    """The file is not a peer database of ours, or is damaged (:func:`open_or_reset` moves it
    aside)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, f"{path}: {detail}")
        self.detail = detail


class PeerStoreUnavailable(PeerStoreError):
    """The file could not be opened for a reason that is not its content (locked, permissions,
    full disk, I/O error). It was left where it is."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, f"cannot open peer database {path}: {detail}")
        self.detail = detail


class StoreWriteError(PeerStoreError):
    """A write failed; its changes are queued in the database again for the next save.

    ``detail`` is sqlite's or the OS's message (with sqlite's code name, e.g. ``SQLITE_FULL``);
    ``pending`` is how many changes (peers to write or delete) are now waiting."""

    def __init__(self, path: str, detail: str, pending: int = 0) -> None:
        super().__init__(path, f"cannot write peer database {path}: {detail}")
        self.detail = detail
        self.pending = pending


def _describe(exc: BaseException) -> str:
    """sqlite's message and code name (``database or disk is full (SQLITE_FULL)``), or the OS's."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _environmental(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _ENVIRONMENT


class FlushSchedule:
    """When the next flush is due (sans-IO; the caller owns the clock and the I/O).

    Every ``interval`` while flushes succeed; after ``n`` consecutive failures the retry comes
    ``interval * 2 ** (n - 1)`` later, at most :attr:`CAP` (5 min)::

        try:
            await store.save_changes(db)
        except StoreWriteError as exc:
            delay = schedule.on_failure(now, exc)   # log / count; the changes are kept
        else:
            schedule.on_success(now)
        ... sleep until schedule.next_deadline() ...
    """

    CAP = 300.0

    def __init__(self, interval: float, now: float = 0.0) -> None:
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"flush interval must be a positive number of seconds, not {interval!r}")
        self.interval = interval
        self._next = now + interval
        self.consecutive_failures = 0
        self.failures = 0  # in total
        self.last_error = ""
        self.pending: int | None = 0  # changes waiting after the last failure (None: unknown)

    def next_deadline(self) -> float:
        return self._next

    def on_success(self, now: float) -> None:
        self._next = now + self.interval
        self.consecutive_failures = 0
        self.last_error = ""
        self.pending = 0

    def on_failure(self, now: float, error: BaseException | str, pending: int | None = None) -> float:
        """Record a failed flush; returns the delay until the retry (also :meth:`next_deadline`).

        ``pending`` defaults to ``error.pending`` for a :class:`StoreWriteError`."""
        if pending is None:
            pending = getattr(error, "pending", None)
        self.consecutive_failures += 1
        self.failures += 1
        self.last_error = str(error)[:300]
        self.pending = pending
        delay = doubling(self.interval, self.CAP, self.consecutive_failures)
        self._next = now + delay
        return delay

    def status(self) -> dict[str, object]:
        return {
            "failing": self.consecutive_failures > 0,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "pending": self.pending,
        }


def pending_changes(db: PeerDatabase) -> int:
    """Peers the next save will write or delete."""
    return len(db.dirty) + len(db.deleted)


# ---- row encoding ---------------------------------------------------------------------------
def _pack_addrs(addrs: Iterable[bytes]) -> bytes:
    out = bytearray()
    for a in addrs:
        out += len(a).to_bytes(2, "big") + a
    return bytes(out)


def _unpack_addrs(blob: bytes) -> tuple[bytes, ...]:
    """Inverse of :func:`_pack_addrs`; ValueError unless ``blob`` is exactly such a list."""
    out = []
    i = 0
    while i < len(blob):
        n = int.from_bytes(blob[i : i + 2], "big")
        if n == 0 or i + 2 + n > len(blob):
            raise ValueError("address list is not well framed")
        out.append(bytes(blob[i + 2 : i + 2 + n]))
        i += 2 + n
    return tuple(out)


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("truncated varint")
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _peer_id(v: object, what: str) -> bytes:
    """A peer id's bytes: a multihash (code, length, digest of that length)."""
    b = _blob(v, what)
    _, i = _uvarint(b, 0)
    size, i = _uvarint(b, i)
    if size == 0 or len(b) - i != size:
        raise ValueError(f"{what} is not a multihash")
    return b


def _blob(v: object, what: str) -> bytes:
    # Rows are read with text_factory=bytes: text (or a blob) comes back as bytes.
    if isinstance(v, bytes) and v:
        return v
    raise ValueError(f"{what} is not a blob: {type(v).__name__}")


def _opt_blob(v: object, what: str) -> bytes | None:
    return None if v is None or v == b"" else _blob(v, what)


def _text(v: object, what: str) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")  # UnicodeDecodeError is a ValueError
    raise ValueError(f"{what} is not text: {type(v).__name__}")


def _time(v: object, what: str) -> float:
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    raise ValueError(f"{what} is not a time: {v!r}")


def _count(v: object, what: str) -> int:
    if isinstance(v, int) and v >= 0:
        return v
    raise ValueError(f"{what} is not a count: {v!r}")


def _wall(t: float, offset: float) -> float:
    return t + offset if t else 0.0


def _local(t: float, offset: float) -> float:
    return t - offset if t else 0.0


def entry_row(e: PeerEntry, offset: float) -> Row:
    return (
        e.pid, _pack_addrs(e.raw_addrs), e.envelope, e.seq,
        _wall(e.first_seen, offset), _wall(e.last_seen, offset), _wall(e.last_attempt, offset),
        _wall(e.last_success, offset), e.attempts, e.failures, e.source.value, e.source_peer,
        e.source_group, e.group, int(e.in_tried),
    )


def row_entry(row: Row, offset: float) -> PeerEntry:
    """The entry a stored row describes; ValueError (or TypeError) when its values do not make
    one. Expects rows as :meth:`PeerStore.read_rows` returns them (text as bytes)."""
    (pid, addrs, env, seq, fs, ls, la, lsu, att, fail, src, sp, sg, _grp, tried) = row
    raw_addrs = _unpack_addrs(_blob(addrs, "addrs"))
    if not raw_addrs:
        raise ValueError("no addresses")
    groups = [group_of_bytes(a) for a in raw_addrs]
    if "other:invalid" in groups:
        raise ValueError("an address is not a multiaddr")
    if tried not in (0, 1) or isinstance(tried, float):
        raise ValueError(f"in_tried is {tried!r}")
    # The group is recomputed (the stored one is ignored): grouping rules change (DNS names by
    # registrable domain, IPv4 embedded in IPv6) and an entry must land where a fresh add would.
    e = PeerEntry(_peer_id(pid, "pid"), raw_addrs, PeerSource(_text(src, "source")),
                  None if _opt_blob(sp, "source_peer") is None else _peer_id(sp, "source_peer"),
                  _text(sg, "source_group"), groups[0], _local(_time(fs, "first_seen"), offset))
    e.envelope = _opt_blob(env, "envelope")
    e.seq = _count(seq, "seq")
    e.last_seen = _local(_time(ls, "last_seen"), offset)
    e.last_attempt = _local(_time(la, "last_attempt"), offset)
    e.last_success = _local(_time(lsu, "last_success"), offset)
    e.attempts = _count(att, "attempts")
    e.failures = _count(fail, "failures")
    e.in_tried = bool(tried)
    return e


class LoadResult(NamedTuple):
    loaded: int  # entries now in the database
    skipped: int  # rows whose values do not make an entry (damaged), left in the file
    rows: int  # rows in the file
    damaged_meta: tuple[str, ...]  # "bucket key", "anchors": unreadable, replaced/ignored

    def warning(self, path: str) -> str | None:
        """One line for the log when something stored could not be used; None if all was."""
        parts = []
        if self.skipped:
            parts.append(f"skipped {self.skipped} damaged row(s) of {self.rows} (left in the file)")
        if "bucket key" in self.damaged_meta:
            parts.append("the bucketing key was unreadable: a new one was made")
        if "anchors" in self.damaged_meta:
            parts.append("the anchor list was unreadable: no anchors")
        return f"peer database {path}: " + "; ".join(parts) if parts else None


class PeerStore:
    """Synchronous store. Use from one thread at a time (AsyncPeerStore serialises calls).

    Raises :class:`PeerStoreCorrupt` or :class:`PeerStoreUnavailable` when the file cannot be
    used; ``timeout`` is how long to wait for another connection's lock."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = str(path)
        self.skipped = 0  # rows of the last load that did not make an entry
        self.load_warning: str | None = None  # the last load's warning (see LoadResult.warning)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            empty = os.path.isfile(self.path) and os.path.getsize(self.path) == 0
        except OSError as exc:
            raise PeerStoreUnavailable(self.path, str(exc)) from exc
        if empty:
            raise PeerStoreCorrupt(self.path, "an empty (0-byte) file, not a database")
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise self._open_error(exc, "cannot open") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._validate()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._open_error(exc, "not a readable sqlite database") from exc
            raise

    def _open_error(self, exc: sqlite3.Error, what: str) -> PeerStoreError:
        if _environmental(exc):
            return PeerStoreUnavailable(self.path, _describe(exc))
        return PeerStoreCorrupt(self.path, f"{what} ({_describe(exc)})")

    def _validate(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and not {"meta", "peers"} <= tables:
            raise PeerStoreCorrupt(self.path, f"a sqlite file of something else (tables: {sorted(tables)})")
        self._db.executescript(_DDL)
        for table, want in _COLUMNS.items():
            cols = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]
            if cols != want:
                raise PeerStoreCorrupt(self.path, f"table {table} has columns {cols}, expected {want}")
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            if tables:
                raise PeerStoreCorrupt(self.path, "peer tables without a schema marker")
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA,))
        elif row[0] != SCHEMA:
            raise PeerStoreCorrupt(self.path, f"schema {row[0]!r}, expected {SCHEMA!r}")
        check = self._db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise PeerStoreCorrupt(self.path, f"integrity check failed: {check}")

    @contextlib.contextmanager
    def _raw_text(self) -> Iterator[None]:
        """Read text as bytes: undecodable text is a damaged value, not a failed query."""
        self._db.text_factory = bytes
        try:
            yield
        finally:
            self._db.text_factory = str

    # ---- reading --------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        """A meta value's bytes (blob or text); None when absent or of another type."""
        with self._raw_text():
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row and isinstance(row[0], bytes) else None

    def read_rows(self) -> tuple[bytes | None, bytes | None, list[Row]]:
        """(bucket key, packed anchors, peer rows) as stored — text as bytes, nothing checked."""
        key = self.get_meta("bucket_key")
        anchors = self.get_meta("anchors")
        with self._raw_text():
            rows = self._db.execute("SELECT * FROM peers").fetchall()
        return key, anchors, rows

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM peers").fetchone()[0])

    # ---- writing --------------------------------------------------------------------------
    def write(self, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
        """One transaction: upserts, deletes and meta — all or nothing. Raises what sqlite
        raised (a failed COMMIT's error, not the ROLLBACK's)."""
        db = self._db
        if db.in_transaction:  # a rollback that failed earlier
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                db.executemany("INSERT OR REPLACE INTO peers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if deleted:
                db.executemany("DELETE FROM peers WHERE pid=?", [(d,) for d in deleted])
            for k, v in meta.items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
            db.execute("COMMIT")
        except BaseException:
            # sqlite rolls back by itself on some errors (a full disk at COMMIT): then there is
            # nothing to roll back, and ROLLBACK's complaint must not hide the real error.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    # ---- whole-database helpers (sync callers: tests, benches) ----------------------------
    def load(self, db: PeerDatabase, offset: float = 0.0) -> int:
        """Fill ``db``; returns the entries loaded. Sets ``skipped`` and ``load_warning``."""
        key, anchors, rows = self.read_rows()
        result = apply_loaded(db, key, anchors, rows, offset)
        self.skipped = result.skipped
        self.load_warning = result.warning(self.path)
        return result.loaded

    def save_changes(self, db: PeerDatabase, offset: float = 0.0) -> int:
        """Write what changed in ``db``; returns the peers written or deleted.

        Raises :class:`StoreWriteError` with the changes queued in ``db`` again."""
        rows, deleted, meta = collect_changes(db, offset)
        if not rows and not deleted and not meta:
            return 0
        self.write_or_requeue(db, rows, deleted, meta)
        return len(rows) + len(deleted)

    def write_or_requeue(self, db: PeerDatabase, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
        """:meth:`write`; on any failure the changes go back to ``db`` (StoreWriteError for
        sqlite and OS errors, anything else re-raised)."""
        try:
            self.write(rows, deleted, meta)
        except (sqlite3.Error, OSError) as exc:
            requeue_changes(db, rows, deleted, meta)
            raise StoreWriteError(self.path, _describe(exc), pending_changes(db)) from exc
        except BaseException:
            requeue_changes(db, rows, deleted, meta)
            raise

    def close(self) -> None:
        self._db.close()


def collect_changes(db: PeerDatabase, offset: float) -> tuple[list[Row], list[bytes], dict[str, bytes]]:
    """Take what changed, as plain rows (cheap; done on the caller's thread). A caller whose
    write fails must hand them to :func:`requeue_changes`."""
    changed, deleted = db.take_changes()
    rows = [entry_row(e, offset) for e in changed]
    meta: dict[str, bytes] = {}
    if db.meta_dirty:
        meta["bucket_key"] = db.key
        meta["anchors"] = _pack_addrs(db.anchor_ids)
        db.meta_dirty = False
    return rows, deleted, meta


def requeue_changes(db: PeerDatabase, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
    """Put the changes a failed write carried back into ``db``'s change set.

    The database's *current* state wins over what the failed write carried: each peer named
    in it is written again if ``db`` holds it now (so a newer change, or a re-add after a
    deletion, is what gets written) and deleted if it does not (a deletion, also one made
    after a change that failed to be written). Meta is written again with its current value.
    """
    for pid in [r[0] for r in rows] + deleted:
        if db.has_pid(pid):
            db.dirty.add(pid)
            db.deleted.discard(pid)
        else:
            db.deleted.add(pid)
            db.dirty.discard(pid)
    if meta:
        db.meta_dirty = True


def apply_loaded(
    db: PeerDatabase, key: bytes | None, anchors: bytes | None, rows: list[Row], offset: float
) -> LoadResult:
    """Rebuild ``db`` from stored rows (as :meth:`PeerStore.read_rows` returns them).

    The stored bucketing key is reused so placements match. A row whose values do not make an
    entry is skipped and counted; an unreadable key is replaced, unreadable anchors ignored."""
    damaged: list[str] = []
    if isinstance(key, bytes) and len(key) == 32:
        db.key = key
        db.meta_dirty = False
    else:
        db.meta_dirty = True
        if key is not None or rows:
            damaged.append("bucket key")
    loaded = skipped = 0
    limit = db.config.max_addrs_per_peer
    for row in rows:
        try:
            e = row_entry(row, offset)
            if len(e.raw_addrs) > limit:
                raise ValueError(f"{len(e.raw_addrs)} addresses")
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError):
            skipped += 1
            continue
        if db.restore(e):
            loaded += 1
    anchor_ids: tuple[bytes, ...] = ()
    if anchors:
        try:
            anchor_ids = _unpack_addrs(anchors)
        except ValueError:
            damaged.append("anchors")
    db.set_anchor_ids(list(anchor_ids))
    return LoadResult(loaded, skipped, len(rows), tuple(damaged))


def open_or_reset(path: str | os.PathLike[str], timeout: float = 5.0) -> tuple[PeerStore, str | None]:
    """Open the store; a corrupt or foreign file is moved aside and an empty book started, with
    one warning naming the file and where it went. :class:`PeerStoreUnavailable` (and OSError
    from moving the file) is raised: a file that cannot be opened right now is left alone."""
    try:
        return PeerStore(path, timeout), None
    except PeerStoreCorrupt as exc:
        aside = f"{path}.corrupt-{int(time.time())}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        warning = f"peer database {path} was unusable ({exc.detail}); moved it to {aside} and started an empty book"
        return PeerStore(path, timeout), warning


class AsyncPeerStore:
    """Trio adapter: every sqlite call runs in a worker thread, one at a time."""

    def __init__(self, store: PeerStore) -> None:
        self.store = store
        self._lock = trio.Lock()
        self._thread_lock = threading.Lock()

    @staticmethod
    def offset() -> float:
        return time.time() - trio.current_time()

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def skipped(self) -> int:
        return self.store.skipped

    @property
    def load_warning(self) -> str | None:
        return self.store.load_warning

    async def load(self, db: PeerDatabase) -> int:
        """Fill ``db``; returns the entries loaded. Sets ``skipped`` and ``load_warning``."""
        async with self._lock:
            key, anchors, rows = await trio.to_thread.run_sync(self._locked, self.store.read_rows)
        result = apply_loaded(db, key, anchors, rows, self.offset())
        self.store.skipped = result.skipped
        self.store.load_warning = result.warning(self.store.path)
        return result.loaded

    async def save_changes(self, db: PeerDatabase) -> int:
        """Write what changed; returns the peers written or deleted.

        Raises :class:`StoreWriteError` (changes queued in ``db`` again). Cancellation loses
        nothing either: the changes are taken only once the store is ours, and a write that was
        under way finishes (or its changes are put back)."""
        async with self._lock:
            rows, deleted, meta = collect_changes(db, self.offset())
            if not rows and not deleted and not meta:
                return 0
            try:
                await trio.to_thread.run_sync(self._locked, self.store.write, rows, deleted, meta)
            except (sqlite3.Error, OSError) as exc:
                requeue_changes(db, rows, deleted, meta)
                raise StoreWriteError(self.store.path, _describe(exc), pending_changes(db)) from exc
            except BaseException:
                requeue_changes(db, rows, deleted, meta)
                raise
        return len(rows) + len(deleted)

    async def close(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._locked, self.store.close)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._thread_lock:
            return fn(*args)
