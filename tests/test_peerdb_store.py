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
        with pytest.raises(StoreWriteError):
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
