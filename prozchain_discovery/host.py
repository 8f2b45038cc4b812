"""Building a py-libp2p host with safe defaults (the identity key file: ``keyfile.py``).

``make_host`` gives: Noise as the only security transport (no plaintext, no secio), Yamux,
one connection per peer (dials in ~5 ms instead of 250), py-libp2p's AutoConnector disabled
(our outbound policy decides whom to dial), and no ``0.0.0.0`` in advertised addresses.
A ``/udp/<port>/quic-v1`` listen address adds py-libp2p's QUIC transport (TLS 1.3 and QUIC's own
streams instead of Noise and Yamux); its dials leave from the QUIC listen socket (quic_reuse.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from . import libp2p_fixes
from .fsutil import default_data_dir
from .keyfile import KeyFileError, create_key_file, load_or_create_key

__all__ = ["make_host", "load_or_create_key", "create_key_file", "KeyFileError", "default_data_dir"]


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
