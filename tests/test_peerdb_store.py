"""sqlite persistence: round trip, kill -9, corrupt and foreign files."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
from multiaddr import Multiaddr

from prozchain_discovery.peerdb import (
    AsyncPeerStore,
    PeerDatabase,
    PeerSource,
    PeerStore,
    PeerStoreCorrupt,
    open_or_reset,
)
from prozchain_discovery.records import sign_record, verify_record
from tests.conftest import identity


def _filled(n: int = 50) -> PeerDatabase:
    db = PeerDatabase(rng=random.Random(1))
    for i in range(n):
        key, pid = identity(i)
        if i % 2:
            rec = verify_record(sign_record(pid, [Multiaddr(f"/ip4/{i + 1}.2.3.4/tcp/4001")], key.private_key, seq=i))
            db.add_record(rec, PeerSource.PEX, 10.0, source_peer=identity(999)[1],
                          source_addr=Multiaddr("/ip4/8.8.8.8/tcp/1"))
        else:
            db.add_addrs(pid, [Multiaddr(f"/ip4/{i + 1}.2.3.4/tcp/4001")], PeerSource.DNS, 10.0)
    for i in range(0, n, 5):
        db.mark_success(identity(i)[1], 20.0)
    db.set_anchors([identity(0)[1], identity(5)[1]])
    return db


def _snapshot(db: PeerDatabase):
    return sorted(
        (e.pid, e.raw_addrs, e.envelope, e.seq, e.in_tried, e.source, e.source_group, e.group,
         e.failures, round(e.first_seen, 3))
        for e in db.entries()
    )


def test_round_trip(tmp_path):
    db = _filled()
    n = len(db)
    assert n >= 45  # a few adds lose their slot to earlier ones: that is the design
    store = PeerStore(tmp_path / "peers.sqlite")
    assert store.save_changes(db) == n
    store.close()
    again = PeerDatabase(rng=random.Random(2))
    store = PeerStore(tmp_path / "peers.sqlite")
    assert store.load(again) == n
    again.check()
    assert again.key == db.key  # placements are stable across restarts
    assert _snapshot(again) == _snapshot(db)
    assert [e.peer_id for e in again.anchors()] == [identity(0)[1], identity(5)[1]]
    # Incremental: only what changed is written; deletions are written too.
    # (Two peers the book holds: with a random bucketing key any given one may have lost its slot.)
    first, second = [e.peer_id for e in again.entries()][:2]
    again.mark_failure(first, 30.0)
    again.remove(second)
    assert store.save_changes(again) == 2
    assert store.count() == n - 1


def test_private_key_is_never_stored(tmp_path):
    from libp2p.crypto.ed25519 import create_new_key_pair

    db = PeerDatabase(rng=random.Random(1))
    keys = [create_new_key_pair() for _ in range(4)]  # random keys: nothing a file has by chance
    for i, key in enumerate(keys):
        from libp2p.peer.id import ID

        pid = ID.from_pubkey(key.public_key)
        rec = verify_record(sign_record(pid, [Multiaddr(f"/ip4/{i + 1}.2.3.4/tcp/1")], key.private_key))
        db.add_record(rec, PeerSource.PEX, 1.0)
    store = PeerStore(tmp_path / "p.sqlite")
    store.save_changes(db)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for key in keys:
        assert key.private_key.to_bytes() not in raw


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b""])
def test_corrupt_file_moved_aside(tmp_path, content):
    path = tmp_path / "peers.sqlite"
    path.write_bytes(content)
    with pytest.raises(PeerStoreCorrupt, match="peers.sqlite"):
        PeerStore(path)
    store, warning = open_or_reset(path)
    assert warning and "moved it to" in warning  # an empty file too: never a silent reset
    assert any(p.name.startswith("peers.sqlite.corrupt-") for p in tmp_path.iterdir())
    assert store.count() == 0
    store.close()


def test_foreign_sqlite_file(tmp_path):
    path = tmp_path / "peers.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(PeerStoreCorrupt, match="something else"):
        PeerStore(path)
    store, warning = open_or_reset(path)
    assert warning is not None and store.count() == 0


WRITER = textwrap.dedent("""
    import random, sys
    sys.path.insert(0, {root!r})
    from multiaddr import Multiaddr
    from prozchain_discovery.peerdb import PeerDatabase, PeerSource, PeerStore
    from libp2p.peer.id import ID
    store = PeerStore(sys.argv[1])
    db = PeerDatabase(rng=random.Random(1))
    i = 0
    while True:
        for _ in range(20):
            i += 1
            pid = ID(b"\\x00\\x04" + i.to_bytes(4, "big"))
            db.add_addrs(pid, [Multiaddr(f"/ip4/{{(i % 200) + 1}}.{{(i // 200) % 250}}.1.1/tcp/1")], PeerSource.PEX, float(i))
        store.save_changes(db)
        print(i, len(db), flush=True)
""")


def test_kill_9_loses_no_committed_entry(tmp_path):
    path = tmp_path / "peers.sqlite"
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=root), str(path)],
                            stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line.split()[1])  # entries in the book when that transaction returned
        if committed >= 400:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 400, "writer did not get going"
    store = PeerStore(path)  # opens: never an unreadable file
    db = PeerDatabase(rng=random.Random(3))
    loaded = store.load(db)
    db.check()
    assert loaded >= committed


async def test_async_store_off_the_loop(tmp_path):
    db = _filled(20)
    n = len(db)
    store = AsyncPeerStore(PeerStore(tmp_path / "a.sqlite"))
    assert await store.save_changes(db) == n
    assert await store.save_changes(db) == 0  # nothing changed
    await store.close()
    again = PeerDatabase()
    store = AsyncPeerStore(PeerStore(tmp_path / "a.sqlite"))
    assert await store.load(again) == n
    await store.close()


def test_garbage_row_values_are_skipped_and_counted(tmp_path):
    path = tmp_path / "peers.sqlite"
    db = _filled(20)
    n = len(db)
    store = PeerStore(path)
    store.save_changes(db)
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE peers SET first_seen = 'yesterday' WHERE pid IN (SELECT pid FROM peers LIMIT 2)")
    con.execute("UPDATE peers SET source = 'carrier-pigeon' WHERE pid = (SELECT pid FROM peers LIMIT 1 OFFSET 5)")
    con.commit()
    con.close()
    store = PeerStore(path)
    again = PeerDatabase(rng=random.Random(1))
    assert store.load(again) == n - 3
    assert store.skipped == 3
    again.check()


def _read_only(store: PeerStore) -> None:
    """Make writes fail the way a read-only or full file does, even for root."""
    store._db.execute("PRAGMA query_only = ON")  # noqa: SLF001 - the failure is the test


def test_a_failed_write_loses_no_change(tmp_path):
    from prozchain_discovery.peerdb import StoreWriteError

    path = tmp_path / "peers.sqlite"
    db = _filled(30)
    store = PeerStore(path)
    store.save_changes(db)
    # Changes after the last good write: an update, a deletion, a deletion then re-add.
    key, pid = identity(1)
    db.mark_failure(pid, 30.0)
    gone = identity(3)[1]
    db.remove(gone)
    back = identity(7)[1]
    db.remove(back)
    db.add_addrs(back, [Multiaddr("/ip4/9.9.9.9/tcp/9")], PeerSource.DNS, 31.0)
    _read_only(store)
    with pytest.raises(StoreWriteError, match="peers.sqlite"):
        store.save_changes(db)
    assert db.dirty and db.deleted  # still queued
    newer = identity(11)[1]
    db.mark_failure(newer, 40.0)  # a change made while the disk was failing
    store._db.execute("PRAGMA query_only = OFF")  # noqa: SLF001 - the disk is back
    store.save_changes(db)
    store.close()
    again = PeerDatabase(rng=random.Random(1))
    PeerStore(path).load(again)
    assert _snapshot(again) == _snapshot(db)


async def test_async_store_keeps_changes_queued_when_the_disk_is_full(tmp_path):
    """A real full disk: a 256 KiB tmpfs (root only, as in CI)."""
    import shutil

    from prozchain_discovery.peerdb import StoreWriteError

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tiny tmpfs (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
    if (await trio.run_process(mount, check=False)).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        db = _filled(10)
        store = AsyncPeerStore(PeerStore(mnt / "peers.sqlite"))
        await store.save_changes(db)
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass  # the disk is full
        finally:
            os.close(fd)
        big = _filled(250)
        for e in big.entries():
            if not db.has_pid(e.pid):
                db.add_addrs(e.peer_id, list(e.addrs), PeerSource.PEX, 50.0)
        with pytest.raises(StoreWriteError, match=r"peers.sqlite: database or disk is full \(SQLITE_FULL\)"):
            await store.save_changes(db)
        queued = len(db.dirty)
        assert queued > 0
        filler.unlink()
        assert await store.save_changes(db) >= queued
        await store.close()
        again = PeerDatabase(rng=random.Random(1))
        assert PeerStore(mnt / "peers.sqlite").load(again) == len(db)
    finally:
        await trio.run_process(["umount", "-l", str(mnt)], check=False)


def test_groups_are_recomputed_on_load(tmp_path):
    """A book saved under older grouping rules (a DNS name per group) loads under today's."""
    path = tmp_path / "peers.sqlite"
    db = PeerDatabase(rng=random.Random(1))
    pid = identity(60)[1]
    db.add_addrs(pid, [Multiaddr("/dns4/node7.seeds.example.com/tcp/4001")], PeerSource.DNS, 10.0)
    store = PeerStore(path)
    store.save_changes(db)
    store._db.execute("UPDATE peers SET grp = 'dns:node7.seeds.example.com'")  # noqa: SLF001
    store.close()
    again = PeerDatabase(rng=random.Random(1))
    PeerStore(path).load(again)
    assert again.get(pid).group == "dns:example.com"


# ---- issue #8: failed writes lose nothing, damaged files and rows are reported ----------------
def _grow(db: PeerDatabase, n: int = 250, now: float = 50.0) -> None:
    """Add peers the book does not hold yet: enough rows to need new pages."""
    for e in _filled(n).entries():
        if not db.has_pid(e.pid):
            db.add_addrs(e.peer_id, list(e.addrs), PeerSource.PEX, now)


def _reload(path) -> PeerDatabase:
    again = PeerDatabase(rng=random.Random(1))
    store = PeerStore(path)
    store.load(again)
    store.close()
    again.check()
    return again


async def _reload_async(path) -> PeerDatabase:
    """As :func:`_reload`, through the trio adapter (same clock offset as the writer)."""
    again = PeerDatabase(rng=random.Random(1))
    store = AsyncPeerStore(PeerStore(path))
    await store.load(again)
    await store.close()
    again.check()
    return again


def test_a_full_disk_at_commit_is_reported_as_such(tmp_path):
    """sqlite rolls a failed COMMIT back by itself: our ROLLBACK's complaint must not replace
    the real error. ``max_page_count`` makes a real SQLITE_FULL without root."""
    from prozchain_discovery.peerdb import StoreWriteError

    path = tmp_path / "peers.sqlite"
    db = _filled(10)
    store = PeerStore(path)
    store.save_changes(db)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # noqa: SLF001 - the disk is full
    _grow(db)
    with pytest.raises(StoreWriteError, match=r"peers.sqlite: database or disk is full \(SQLITE_FULL\)") as info:
        store.save_changes(db)
    assert info.value.path == str(path)
    assert info.value.pending == len(db.dirty) + len(db.deleted) > 0
    pending = info.value.pending
    with pytest.raises(StoreWriteError):  # the retry fails too, and still keeps everything
        store.save_changes(db)
    store._db.execute("PRAGMA max_page_count = 1073741823")  # noqa: SLF001 - space again
    assert store.save_changes(db) == pending
    store.close()
    assert _snapshot(_reload(path)) == _snapshot(db)


def test_the_current_state_wins_over_a_failed_write(tmp_path):
    """Changes made between a failed write and the retry: a peer of the failed batch removed,
    a peer deleted by the failed batch added again (elsewhere), one changed again."""
    from prozchain_discovery.peerdb import StoreWriteError

    path = tmp_path / "peers.sqlite"
    db = _filled(30)
    store = PeerStore(path)
    store.save_changes(db)
    # Peers the book holds (the bucketing key is random: a given identity may have lost its slot).
    pex = [e.peer_id for e in db.entries() if e.source is PeerSource.PEX]
    changed, removed_later = pex[:2]
    back = next(e for e in db.entries() if e.source is PeerSource.DNS)
    deleted_then_back, back_addrs = back.peer_id, list(back.addrs)
    for pid in (changed, removed_later):
        db.mark_failure(pid, 30.0)
    db.remove(deleted_then_back)
    _read_only(store)
    with pytest.raises(StoreWriteError, match="readonly"):
        store.save_changes(db)
    db.remove(removed_later)
    # Added again as before, so to the slot it left: a new entry (first seen now).
    assert db.add_addrs(deleted_then_back, back_addrs, PeerSource.DNS, 31.0)
    db.mark_failure(changed, 32.0)
    store._db.execute("PRAGMA query_only = OFF")  # noqa: SLF001
    store.save_changes(db)
    store.close()
    again = _reload(path)
    assert _snapshot(again) == _snapshot(db)
    assert removed_later not in again
    assert again.get(deleted_then_back).first_seen == 31.0
    assert again.get(changed).failures == 2


def test_an_interrupted_sync_write_keeps_the_changes(tmp_path, monkeypatch):
    path = tmp_path / "peers.sqlite"
    db = _filled(10)
    store = PeerStore(path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save_changes(db)
    monkeypatch.undo()
    assert store.save_changes(db) == len(db)
    store.close()
    assert _snapshot(_reload(path)) == _snapshot(db)


async def test_a_save_cancelled_while_waiting_for_the_store_keeps_the_changes(tmp_path):
    path = tmp_path / "peers.sqlite"
    db = _filled(10)
    store = AsyncPeerStore(PeerStore(path))
    async with trio.open_nursery() as nursery:
        async def busy() -> None:  # e.g. a load or another save under way
            async with store._lock:  # noqa: SLF001
                await trio.sleep(1)

        nursery.start_soon(busy)
        await trio.sleep(0.01)
        with trio.move_on_after(0.05) as scope:
            await store.save_changes(db)
        assert scope.cancelled_caught
    assert len(db.dirty) == len(db)  # nothing was taken
    assert await store.save_changes(db) == len(db)
    await store.close()
    assert _snapshot(await _reload_async(path)) == _snapshot(db)


async def test_async_failed_write_then_success_writes_everything(tmp_path):
    from prozchain_discovery.peerdb import StoreWriteError

    path = tmp_path / "peers.sqlite"
    db = _filled(10)
    store = AsyncPeerStore(PeerStore(path))
    await store.save_changes(db)
    _read_only(store.store)
    _grow(db, 40)
    db.remove(identity(2)[1])
    with pytest.raises(StoreWriteError, match=r"peers.sqlite: attempt to write a readonly database") as info:
        await store.save_changes(db)
    assert info.value.pending == len(db.dirty) + len(db.deleted) > 0
    store.store._db.execute("PRAGMA query_only = OFF")  # noqa: SLF001
    assert await store.save_changes(db) == info.value.pending
    await store.close()
    assert _snapshot(await _reload_async(path)) == _snapshot(db)


_ONE_ROW = "WHERE pid = (SELECT pid FROM peers ORDER BY pid LIMIT 1)"


@pytest.mark.parametrize("update", [
    "pid = 12345",  # an integer where the id's bytes belong (bytes(12345) is 12345 zeros)
    "pid = x'0102'",  # bytes that are not a multihash
    "pid = CAST(x'ff00' AS TEXT)",  # text that is not UTF-8: sqlite3 cannot even fetch it
    "source = CAST(x'ff' AS TEXT)",
    "addrs = x'00ff0102'",  # an address list cut short
    "addrs = x'0003ffffff'",  # one address that is not a multiaddr
    "addrs = x''",
    "envelope = 7",
    "source_peer = 3",
    "seq = 1.5",
    "failures = -1",
    "last_seen = 'Inf'",
    "in_tried = 2",
])
def test_a_damaged_row_is_skipped_counted_and_warned_about(tmp_path, update):
    path = tmp_path / "peers.sqlite"
    db = _filled(20)
    n = len(db)
    store = PeerStore(path)
    store.save_changes(db)
    store.close()
    con = sqlite3.connect(path)
    con.execute(f"UPDATE peers SET {update} {_ONE_ROW}")
    con.commit()
    con.close()
    store = PeerStore(path)
    again = PeerDatabase(rng=random.Random(1))
    assert store.load(again) == n - 1
    assert store.skipped == 1
    assert store.load_warning == f"peer database {path}: skipped 1 damaged row(s) of {n} (left in the file)"
    again.check()


@pytest.mark.parametrize(("update", "said"), [
    ("UPDATE meta SET value = 'not a key' WHERE key = 'bucket_key'", "bucketing key"),
    ("UPDATE meta SET value = 32 WHERE key = 'bucket_key'", "bucketing key"),
    ("UPDATE meta SET value = CAST(x'ff' AS TEXT) WHERE key = 'bucket_key'", "bucketing key"),
    ("UPDATE meta SET value = 'x' WHERE key = 'anchors'", "anchor list"),
])
async def test_damaged_meta_loads_the_peers_with_a_warning(tmp_path, update, said):
    path = tmp_path / "peers.sqlite"
    db = _filled(20)
    store = PeerStore(path)
    store.save_changes(db)
    store.close()
    con = sqlite3.connect(path)
    con.execute(update)
    con.commit()
    con.close()
    store = AsyncPeerStore(PeerStore(path))
    again = PeerDatabase(rng=random.Random(1))
    loaded = await store.load(again)
    again.check()
    if said == "bucketing key":  # placed under a new random key: a slot may be taken twice
        assert len(db) - 3 <= loaded == len(again)
    else:
        assert loaded == len(db)
    assert store.skipped == 0
    assert store.load_warning is not None and said in store.load_warning and str(path) in store.load_warning
    if said == "bucketing key":
        assert again.key != db.key and again.meta_dirty  # the new key is saved next time
    await store.save_changes(again)
    await store.close()
    assert _reload(path).key == again.key


def test_a_good_book_loads_without_a_warning(tmp_path):
    store = PeerStore(tmp_path / "peers.sqlite")
    store.save_changes(_filled(10))
    store.load(PeerDatabase())
    assert store.skipped == 0 and store.load_warning is None


def test_our_tables_with_other_columns_are_moved_aside(tmp_path):
    path = tmp_path / "peers.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE peers (pid BLOB PRIMARY KEY, addrs BLOB);
        INSERT INTO meta VALUES ('schema', 'prozchain-peerdb/1');
    """)
    con.commit()
    con.close()
    with pytest.raises(PeerStoreCorrupt, match="table peers has columns"):
        PeerStore(path)
    store, warning = open_or_reset(path)
    assert warning is not None and str(path) in warning and "moved it to" in warning
    assert store.save_changes(_filled(5)) > 0  # and the new book takes writes
    store.close()


def test_a_truncated_file_is_moved_aside(tmp_path):
    path = tmp_path / "peers.sqlite"
    store = PeerStore(path)
    store.save_changes(_filled(50))
    store.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    store, warning = open_or_reset(path)
    assert warning is not None and "SQLITE_CORRUPT" in warning
    store.close()


def test_a_locked_book_is_left_alone(tmp_path):
    """Another process holding the file is no reason to throw the book away."""
    from prozchain_discovery.peerdb import PeerStoreUnavailable

    path = tmp_path / "peers.sqlite"
    db = _filled(20)
    store = PeerStore(path)
    store.save_changes(db)
    store.close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT OR REPLACE INTO meta VALUES ('x', x'00')")
    with pytest.raises(PeerStoreUnavailable, match=r"peers.sqlite: database is locked \(SQLITE_BUSY\)"):
        open_or_reset(path, timeout=0.05)
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    other.execute("ROLLBACK")
    other.close()
    assert _snapshot(_reload(path)) == _snapshot(db)


def test_a_path_that_cannot_be_opened_is_left_alone(tmp_path):
    from prozchain_discovery.peerdb import PeerStoreError, PeerStoreUnavailable

    path = tmp_path / "peers.sqlite"
    path.mkdir()  # e.g. a mistaken volume mount
    (path / "keep").write_text("mine")
    with pytest.raises(PeerStoreUnavailable, match="unable to open") as info:
        open_or_reset(path)
    assert isinstance(info.value, PeerStoreError) and info.value.path == str(path)
    assert (path / "keep").read_text() == "mine"


def test_flush_schedule_backs_off_from_the_interval_to_five_minutes():
    from prozchain_discovery.peerdb import FlushSchedule, StoreWriteError

    s = FlushSchedule(5.0, now=100.0)
    assert s.next_deadline() == 105.0
    assert s.status() == {"failing": False, "failures": 0, "consecutive_failures": 0,
                          "last_error": "", "pending": 0}
    err = StoreWriteError("/data/peers.sqlite", "database or disk is full (SQLITE_FULL)", pending=7)
    delays = [s.on_failure(200.0, err) for _ in range(9)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert s.next_deadline() == 500.0
    assert s.status() == {
        "failing": True, "failures": 9, "consecutive_failures": 9,
        "last_error": "cannot write peer database /data/peers.sqlite: database or disk is full (SQLITE_FULL)",
        "pending": 7,
    }
    s.on_success(600.0)
    assert s.next_deadline() == 605.0
    assert s.status() == {"failing": False, "failures": 9, "consecutive_failures": 0,
                          "last_error": "", "pending": 0}
    assert s.on_failure(700.0, "disk I/O error") == 5.0  # a plain message: pending unknown
    assert s.status()["pending"] is None
    assert s.on_failure(700.0, "disk I/O error", pending=3) == 10.0
    assert s.status()["pending"] == 3
    with pytest.raises(ValueError):
        FlushSchedule(0.0)
