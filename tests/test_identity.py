"""The identity key: a new one only when nothing is there; anything else in the way is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from prozchain_discovery.host import KeyFileError, load_or_create_key


def test_created_then_loaded(tmp_path):
    key = tmp_path / "sub" / "identity.key"
    pair, created = load_or_create_key(key)
    assert created and (key.stat().st_mode & 0o777) == 0o600
    again, created = load_or_create_key(key)
    assert not created and again.public_key.serialize() == pair.public_key.serialize()


def test_dangling_symlink_is_refused_not_replaced(tmp_path):
    target = tmp_path / "unmounted-volume" / "identity.key"
    key = tmp_path / "identity.key"
    key.symlink_to(target)
    with pytest.raises(KeyFileError) as info:
        load_or_create_key(key)
    msg = str(info.value)
    assert str(key) in msg and str(target) in msg and "mount" in msg and "remove the link" in msg
    assert key.is_symlink() and not target.exists()  # nothing written through or over the link


def test_symlink_to_a_key_is_followed(tmp_path):
    real = tmp_path / "vol" / "identity.key"
    pair, _ = load_or_create_key(real)
    link = tmp_path / "identity.key"
    link.symlink_to(real)
    loaded, created = load_or_create_key(link)
    assert not created and loaded.public_key.serialize() == pair.public_key.serialize()


def test_directory_is_named_first(tmp_path):
    key = tmp_path / "identity.key"
    key.mkdir(mode=0o755)
    with pytest.raises(KeyFileError, match="is a directory") as info:
        load_or_create_key(key)
    assert "chmod" not in str(info.value)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_unreadable_key_is_refused_never_replaced(tmp_path, monkeypatch, code):
    key = tmp_path / "identity.key"
    load_or_create_key(key)
    before = key.read_bytes()

    def fail(self: Path) -> bytes:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "read_bytes", fail)
    with pytest.raises(KeyFileError, match=os.strerror(code)) as info:
        load_or_create_key(key)
    assert str(key) in str(info.value) and "new identity" not in str(info.value)
    monkeypatch.undo()
    assert key.read_bytes() == before


def test_stat_error_is_refused(tmp_path, monkeypatch):
    key = tmp_path / "identity.key"
    real_stat = Path.stat

    def fail(self: Path, **kw: object) -> os.stat_result:
        if self == key:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", fail)
    with pytest.raises(KeyFileError, match="Permission denied"):
        load_or_create_key(key)
    monkeypatch.undo()
    assert not key.exists()


def test_garbage_key_is_refused(tmp_path):
    key = tmp_path / "identity.key"
    key.write_bytes(b"\x00garbage")
    key.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a libp2p private key"):
        load_or_create_key(key)


def test_group_readable_key_is_refused(tmp_path):
    key = tmp_path / "identity.key"
    load_or_create_key(key)
    key.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(key)


def test_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(KeyFileError, match="not a directory"):
        load_or_create_key(tmp_path / "f" / "identity.key")
