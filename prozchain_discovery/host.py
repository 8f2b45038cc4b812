"""Building a py-libp2p host with safe defaults, and keeping the node's identity key.

``make_host`` gives: Noise as the only security transport (no plaintext, no secio), Yamux,
one connection per peer (dials in ~5 ms instead of 250), py-libp2p's AutoConnector disabled
(our outbound policy decides whom to dial), and no ``0.0.0.0`` in advertised addresses.
A ``/udp/<port>/quic-v1`` listen address adds py-libp2p's QUIC transport (TLS 1.3 and QUIC's own
streams instead of Noise and Yamux); its dials leave from the QUIC listen socket (quic_reuse.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from . import libp2p_fixes
from .fsutil import default_data_dir

__all__ = ["make_host", "load_or_create_key", "KeyFileError", "default_data_dir"]

KEY_FILE_NAME = "identity.key"


class KeyFileError(RuntimeError):
    """The identity key file exists but cannot be used; the message says how to fix it."""


def load_or_create_key(key_file: str | Path) -> tuple[KeyPair, bool]:
    """The node's Ed25519 identity from ``key_file``; created (mode 0600) if absent.

    Returns ``(key_pair, created)``. The file holds the libp2p protobuf encoding of the private
    key, the same format go-libp2p and js-libp2p write.

    A new key is made only when nothing is at ``key_file``. Anything else that stands in the way
    — a directory, a dangling symbolic link (the key's volume not mounted), a file that cannot be
    read or is not a key — raises :class:`KeyFileError`: a new key would silently give the node
    another peer id.
    """
    path = Path(key_file)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise KeyFileError(f"identity key {path}: {path.parent} is not a directory") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read identity key {path}: {exc.strerror or exc}") from None
    if st is None:
        if path.is_symlink():
            target = os.readlink(path)
            raise KeyFileError(
                f"identity key {path} is a symbolic link to {target}, which does not exist; "
                "mount the volume that holds it, or remove the link to create a new identity "
                "(the node's peer id will change)"
            )
        return _create_key(path), True
    if stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"identity key {path} is a directory, not a key file")
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"identity key {path} is not a regular file")
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read identity key {path}: {exc.strerror or exc}; fix access to it "
            "(the node's peer id is in this file)"
        ) from None
    try:
        private = deserialize_private_key(data)
    except Exception as exc:
        raise KeyFileError(
            f"{path} is not a libp2p private key ({exc}); move it away to create a new "
            "identity (the node's peer id will change)"
        ) from exc
    return KeyPair(private, private.get_public_key()), False


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


def make_host(
    key_pair: KeyPair | None = None,
    *,
    listen_addrs: Sequence[str | multiaddr.Multiaddr] = ("/ip4/127.0.0.1/tcp/0",),
    dial_timeout: float = 10.0,
    extra_addrs: Callable[[], list[multiaddr.Multiaddr]] | None = None,
    enable_quic: bool = False,
) -> IHost:
    """A py-libp2p 0.8.1 host with the defaults this project relies on (module docstring).

    ``enable_quic`` gives a host that listens nowhere a QUIC transport beside TCP, to dial QUIC
    (AutoNAT's dial-back host); a QUIC listen address adds QUIC anyway.

    Raises :class:`~prozchain_discovery.libp2p_fixes.Libp2pPatchError` if the installed
    py-libp2p lacks something a workaround patches (another version than the pinned 0.8.1).
    """
    pair = key_pair or new_ed25519()
    noise = NoiseTransport(libp2p_keypair=pair, noise_privkey=new_x25519().private_key)
    host = new_host(
        key_pair=pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},  # type: ignore[dict-item]
        listen_addrs=[multiaddr.Multiaddr(str(a)) for a in listen_addrs],
        connection_config=libp2p_fixes.safe_connection_config(dial_timeout),
        addrs_factory=libp2p_fixes.expand_wildcard_addrs(extra=extra_addrs),
        enable_mDNS=False,  # ours runs off the trio loop (bootstrap/mdns.py)
        enable_upnp=False,
        # Only without listen addresses: with some, py-libp2p's enable_quic *replaces* the TCP
        # transport by QUIC when none of them is QUIC.
        enable_quic=enable_quic and not listen_addrs,
    )
    libp2p_fixes.disable_auto_connector(host)
    libp2p_fixes.no_swarm_retries(host)
    libp2p_fixes.defer_identify(host)
    libp2p_fixes.tolerate_handler_removal(host)
    libp2p_fixes.pipeline_multistream(host)
    libp2p_fixes.yamux_window_hysteresis(host)
    libp2p_fixes.whole_yamux_frames(host)
    libp2p_fixes.quic_dial_from_listen_socket(host)
    libp2p_fixes.quic_observed_addrs(host)
    return host
