"""Key files: the node's identity key, a DNS seed's signing key (libp2p's protobuf encoding of
a private key, as go-libp2p and js-libp2p write it).

One set of checks for every key file read (:func:`read_key_file`): a regular file, not
readable by other users, holding a key. Imports only libp2p's key code, not the host stack.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key

__all__ = ["KEY_FILE_NAME", "KeyFileError", "load_or_create_key", "read_key_file", "create_key_file"]

KEY_FILE_NAME = "identity.key"


class KeyFileError(RuntimeError):
    """A key file that cannot be used; the message says how to fix it (worded for the node's
    identity key). ``problem`` is what is wrong without the file's name, for a caller that
    names the file its own way (``--key PATH: ...``)."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


def read_key_file(key_file: str | Path) -> KeyPair:
    """The key pair in an existing key file; :class:`KeyFileError` for anything else (a
    missing file's ``problem`` is ``"no such file"``)."""
    path = Path(key_file)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file", "no such file") from None
    except NotADirectoryError:
        raise KeyFileError(f"identity key {path}: {path.parent} is not a directory",
                           f"{path.parent} is not a directory") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read identity key {path}: {exc.strerror or exc}",
                           str(exc.strerror or exc)) from None
    return _read_checked(path, st)


def _read_checked(path: Path, st: os.stat_result) -> KeyPair:
    if stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"identity key {path} is a directory, not a key file", "is a directory, not a key file")
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"identity key {path} is not a regular file", "not a regular file")
    mode = st.st_mode & 0o777
    if mode & 0o077:
        fix = f"readable by other users (mode {mode:o}); run: chmod 600 {path}"
        raise KeyFileError(f"{path} is {fix}", fix)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read identity key {path}: {exc.strerror or exc}; fix access to it "
            "(the node's peer id is in this file)", str(exc.strerror or exc),
        ) from None
    try:
        private = deserialize_private_key(data)
    except Exception as exc:  # protobuf, key-type and length errors of every kind: a damaged file
        raise KeyFileError(
            f"{path} is not a libp2p private key ({exc}); move it away to create a new "
            "identity (the node's peer id will change)",
            f"not a libp2p private key file ({len(data)} bytes)",
        ) from exc
    return KeyPair(private, private.get_public_key())


def load_or_create_key(key_file: str | Path) -> tuple[KeyPair, bool]:
    """The node's Ed25519 identity from ``key_file``; created (mode 0600) if absent.

    Returns ``(key_pair, created)``.

    A new key is made only when nothing is at ``key_file``. Anything else that stands in the way
    — a directory, a dangling symbolic link (the key's volume not mounted), a file that cannot be
    read or is not a key — raises :class:`KeyFileError`: a new key would silently give the node
    another peer id.
    """
    path = Path(key_file)
    try:
        return read_key_file(path), False
    except KeyFileError as exc:
        if exc.problem != "no such file":
            raise
    if path.is_symlink():
        target = os.readlink(path)
        raise KeyFileError(
            f"identity key {path} is a symbolic link to {target}, which does not exist; "
            "mount the volume that holds it, or remove the link to create a new identity "
            "(the node's peer id will change)"
        )
    return _create_key(path), True


def create_key_file(key_file: str | Path) -> KeyPair:
    """A new Ed25519 key written to ``key_file`` (mode 0600) — e.g. a DNS seed's signing key.

    Refuses (:class:`KeyFileError`) when anything is at ``key_file`` already: replacing a key
    changes the peer id or the seed URL of whoever uses it.
    """
    path = Path(key_file)
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"{path} exists; refusing to replace a key (a new key means a new seed URL)")
    return _create_key(path)


def _create_key(path: Path) -> KeyPair:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair = new_ed25519()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pair.private_key.serialize())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        where = exc.filename or path
        raise KeyFileError(f"cannot create identity key {path}: {where}: {exc.strerror or exc}") from None
    return pair
