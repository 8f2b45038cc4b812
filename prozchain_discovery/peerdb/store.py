"""sqlite persistence for the peer database (stdlib ``sqlite3``, WAL, never on the trio loop).

Durability: WAL with ``synchronous=FULL``: a transaction that returned is on disk, and a
``kill -9`` at any moment leaves either the state before or after each transaction — never an
unreadable file. The node's private key is **not** stored here (py-libp2p's persistent
peerstore writes it in clear; we do not use that store).

Times: the database core keeps the caller's clock (trio's monotonic clock); rows hold wall-clock
seconds. :class:`AsyncPeerStore` converts with ``offset = time.time() - trio.current_time()``.

A file that is not ours or is corrupt — an empty (0-byte) file included — raises
:class:`PeerStoreCorrupt`; :func:`open_or_reset` moves such a file aside
(``<path>.corrupt-<unix time>``) and starts an empty book, returning a warning that names both
paths. Rows whose values do not make an entry are skipped and counted (``skipped``).

A write that fails (read-only file, full disk, I/O error) loses nothing: the changes it carried
are put back in the database's change set, so the next save writes them with whatever changed
since, and :class:`StoreWriteError` says which file and why. :class:`FlushSchedule` is when to
try again (sans-IO).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from ..addrs import group_of_bytes
from .core import PeerDatabase, PeerEntry, PeerSource

__all__ = [
    "PeerStore",
    "AsyncPeerStore",
    "PeerStoreCorrupt",
    "StoreWriteError",
    "FlushSchedule",
    "open_or_reset",
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

Row = tuple[Any, ...]


class PeerStoreCorrupt(RuntimeError):
    """The file is not a peer database of ours, or is damaged. ``path`` names it."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


class StoreWriteError(RuntimeError):
    """A write failed; the changes are still queued in the database for the next save."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"cannot write peer database {path}: {detail}")
        self.path = path
        self.detail = detail


class FlushSchedule:
    """When the next flush is due: every ``interval``; after failures, backing off to 5 min."""

    CAP = 300.0

    def __init__(self, interval: float, now: float = 0.0) -> None:
        self.interval = interval
        self._next = now + interval
        self.failures = 0  # consecutive
        self.total_failures = 0
        self.last_error = ""

    def next_deadline(self) -> float:
        return self._next

    def on_success(self, now: float) -> None:
        self._next = now + self.interval
        self.failures = 0
        self.last_error = ""

    def on_failure(self, now: float, error: str) -> float:
        """Returns the delay until the retry."""
        self.failures += 1
        self.total_failures += 1
        self.last_error = error[:200]
        delay = min(self.CAP, self.interval * 2 ** self.failures)
        self._next = now + delay
        return delay

    def status(self) -> dict[str, object]:
        return {"failing": self.failures > 0, "failures": self.total_failures, "last_error": self.last_error}


def _pack_addrs(addrs: Iterable[bytes]) -> bytes:
    out = bytearray()
    for a in addrs:
        out += len(a).to_bytes(2, "big") + a
    return bytes(out)


def _unpack_addrs(blob: bytes) -> tuple[bytes, ...]:
    out = []
    i = 0
    while i < len(blob):
        n = int.from_bytes(blob[i : i + 2], "big")
        out.append(bytes(blob[i + 2 : i + 2 + n]))
        i += 2 + n
    return tuple(out)


def _wall(t: float, offset: float) -> float:
    return t + offset if t else 0.0


def entry_row(e: PeerEntry, offset: float) -> Row:
    return (
        e.pid, _pack_addrs(e.raw_addrs), e.envelope, e.seq,
        _wall(e.first_seen, offset), _wall(e.last_seen, offset), _wall(e.last_attempt, offset),
        _wall(e.last_success, offset), e.attempts, e.failures, e.source.value, e.source_peer,
        e.source_group, e.group, int(e.in_tried),
    )


def row_entry(row: Row, offset: float) -> PeerEntry:
    (pid, addrs, env, seq, fs, ls, la, lsu, att, fail, src, sp, sg, grp, tried) = row
    raw_addrs = _unpack_addrs(addrs)
    # The group is recomputed: grouping rules change (DNS names by registrable domain, IPv4
    # embedded in IPv6) and an entry must land where a fresh add of it would.
    group = group_of_bytes(raw_addrs[0]) if raw_addrs else str(grp)
    e = PeerEntry(bytes(pid), raw_addrs, PeerSource(src), bytes(sp) if sp else None,
                  str(sg), group, _local(fs, offset))
    e.envelope = bytes(env) if env else None
    e.seq = int(seq)
    e.last_seen = _local(ls, offset)
    e.last_attempt = _local(la, offset)
    e.last_success = _local(lsu, offset)
    e.attempts = int(att)
    e.failures = int(fail)
    e.in_tried = bool(tried)
    return e


def _local(t: float, offset: float) -> float:
    return float(t) - offset if t else 0.0


class PeerStore:
    """Synchronous store. Use from one thread at a time (AsyncPeerStore serialises calls)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.skipped = 0  # rows of the last load that did not make an entry
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise PeerStoreCorrupt(self.path, "an empty (0-byte) file, not a database")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise PeerStoreCorrupt(self.path, f"cannot open: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._validate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise PeerStoreCorrupt(self.path, f"not a readable sqlite database ({exc})") from exc

    def _validate(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and not {"meta", "peers"} <= tables:
            raise PeerStoreCorrupt(self.path, f"a sqlite file of something else (tables: {sorted(tables)})")
        self._db.executescript(_DDL)
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

    # ---- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def read_rows(self) -> tuple[bytes | None, list[bytes], list[Row]]:
        key = self.get_meta("bucket_key")
        anchors_blob = self.get_meta("anchors") or b""
        rows = self._db.execute("SELECT * FROM peers").fetchall()
        return key, list(_unpack_addrs(anchors_blob)), rows

    def write(self, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
        """One transaction: upserts, deletes and meta — all or nothing."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                cur.executemany("INSERT OR REPLACE INTO peers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if deleted:
                cur.executemany("DELETE FROM peers WHERE pid=?", [(d,) for d in deleted])
            for k, v in meta.items():
                cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM peers").fetchone()[0])

    # ---- whole-database helpers (sync callers: tests, benches) ----------------------------
    def load(self, db: PeerDatabase, offset: float = 0.0) -> int:
        key, anchors, rows = self.read_rows()
        loaded, self.skipped = apply_loaded(db, key, anchors, rows, offset)
        return loaded

    def save_changes(self, db: PeerDatabase, offset: float = 0.0) -> int:
        rows, deleted, meta = collect_changes(db, offset)
        self.write_or_requeue(db, rows, deleted, meta)
        return len(rows) + len(deleted)

    def write_or_requeue(self, db: PeerDatabase, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
        """:meth:`write`; on failure the changes go back to ``db`` and StoreWriteError is raised."""
        try:
            self.write(rows, deleted, meta)
        except (sqlite3.Error, OSError) as exc:
            requeue_changes(db, rows, deleted, meta)
            raise StoreWriteError(self.path, str(exc)) from exc

    def close(self) -> None:
        self._db.close()


def collect_changes(db: PeerDatabase, offset: float) -> tuple[list[Row], list[bytes], dict[str, bytes]]:
    """Snapshot what changed, as plain rows (cheap; done on the caller's thread)."""
    changed, deleted = db.take_changes()
    rows = [entry_row(e, offset) for e in changed]
    meta: dict[str, bytes] = {}
    if db.meta_dirty:
        meta["bucket_key"] = db.key
        meta["anchors"] = _pack_addrs(db.anchor_ids)
        db.meta_dirty = False
    return rows, deleted, meta


def requeue_changes(db: PeerDatabase, rows: list[Row], deleted: list[bytes], meta: dict[str, bytes]) -> None:
    """Put changes a failed write carried back into ``db``'s change set.

    Changed entries are marked dirty again (the next save writes their *current* state, so a
    newer change wins); a deleted id is deleted again unless it came back since, in which case
    its new entry is written instead.
    """
    for row in rows:
        db.dirty.add(row[0])
    for pid in deleted:
        if db.has_pid(pid):
            db.dirty.add(pid)
        else:
            db.deleted.add(pid)
    if meta:
        db.meta_dirty = True


def apply_loaded(
    db: PeerDatabase, key: bytes | None, anchors: list[bytes], rows: list[Row], offset: float
) -> tuple[int, int]:
    """Rebuild ``db`` from stored rows; returns (loaded, skipped). The stored bucketing key is
    reused so placements match; a row whose values do not make an entry is skipped."""
    if key is not None and len(key) == 32:
        db.key = key
        db.meta_dirty = False
    else:
        db.meta_dirty = True
    loaded = skipped = 0
    for row in rows:
        try:
            e = row_entry(row, offset)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            skipped += 1
            continue
        if db.restore(e):
            loaded += 1
    db.set_anchor_ids(anchors)
    return loaded, skipped


def open_or_reset(path: str | os.PathLike[str]) -> tuple[PeerStore, str | None]:
    """Open the store; a corrupt or foreign file is moved aside and an empty book started."""
    try:
        return PeerStore(path), None
    except PeerStoreCorrupt as exc:
        aside = f"{path}.corrupt-{int(time.time())}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        warning = f"peer database {path} was unusable ({exc}); moved it to {aside} and started an empty book"
        return PeerStore(path), warning


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

    async def load(self, db: PeerDatabase) -> int:
        async with self._lock:
            key, anchors, rows = await trio.to_thread.run_sync(self._locked, self.store.read_rows)
        loaded, self.store.skipped = apply_loaded(db, key, anchors, rows, self.offset())
        return loaded

    async def save_changes(self, db: PeerDatabase) -> int:
        """Write what changed. Raises StoreWriteError with the changes back in ``db``."""
        rows, deleted, meta = collect_changes(db, self.offset())
        if not rows and not deleted and not meta:
            return 0
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self._locked, self.store.write, rows, deleted, meta)
            except (sqlite3.Error, OSError) as exc:
                requeue_changes(db, rows, deleted, meta)
                raise StoreWriteError(self.store.path, str(exc)) from exc
            except BaseException:  # cancelled mid-write: nothing may be lost either
                requeue_changes(db, rows, deleted, meta)
                raise
        return len(rows) + len(deleted)

    async def close(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._locked, self.store.close)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._thread_lock:
            return fn(*args)
