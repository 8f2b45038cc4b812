"""A py peer that answers ``/prozchain/bootstrap/1.0`` and ``/prozchain/pex/1.0`` with forged
records — the py half of issue #11's cross check "forged records are rejected by the other
implementation".

``python -m interop.forger --network-id ID`` listens on 127.0.0.1, prints one JSON line
``{"event": "listening", "peer_id": …, "addrs": […]}``, and answers every request on the right
network with records that must fail verification:

* ``signer_mismatch``: a record about a random peer, signed with the forger's own key;
* ``bad_signature``: a genuine record of a random peer whose payload was changed after signing.

A request on another network id gets ``WRONG_NETWORK`` like any honest node. Served requests are
printed as ``{"event": "served", …}`` lines. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.envelope import Envelope, seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord

from prozchain_discovery.host import make_host
from prozchain_discovery.libp2p_fixes import run_host
from prozchain_discovery.net.exchange import observed_multiaddr
from prozchain_discovery.net.frames import read_frame
from prozchain_discovery.wire.framing import MAX_FRAME, encode_frame
from prozchain_discovery.wire.messages import (
    BOOTSTRAP_PROTOCOL,
    PEX_PROTOCOL,
    BootstrapRequest,
    BootstrapResponse,
    PexRequest,
    PexResponse,
)

__all__ = ["forged_records", "main"]


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def forged_records(own_key: object) -> list[bytes]:
    """Two records that fail verification, for different reasons (see the module docstring)."""
    fake = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9")]
    other = create_new_key_pair()
    mismatch = seal_record(PeerRecord(ID.from_pubkey(other.public_key), fake), own_key)  # type: ignore[arg-type]
    victim = create_new_key_pair()
    genuine = seal_record(PeerRecord(ID.from_pubkey(victim.public_key), fake), victim.private_key)
    moved = PeerRecord(ID.from_pubkey(victim.public_key), [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/10")])
    tampered = Envelope(genuine.public_key, genuine.payload_type, moved.marshal_record(), genuine.signature)
    return [mismatch.marshal_envelope(), tampered.marshal_envelope()]


async def _serve(network_id: str) -> None:
    key_pair = create_new_key_pair()
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = make_host(key_pair, listen_addrs=listen)

    async def bootstrap(stream: object) -> None:
        try:
            req = BootstrapRequest.decode(await read_frame(stream, MAX_FRAME))  # type: ignore[arg-type]
            ok = req.network_id == network_id
            observed = observed_multiaddr(stream)  # type: ignore[arg-type]
            resp = BootstrapResponse(
                0 if ok else 1, network_id, observed.to_bytes() if observed else b"",
                forged_records(key_pair.private_key) if ok else [],
            )
            await stream.write(encode_frame(resp.encode()))  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]
            _emit("served", protocol="bootstrap", records=len(resp.signed_records), network_id=req.network_id)
        except Exception as exc:  # a bad request must not end the helper
            _emit("error", where="bootstrap", error=str(exc)[:200])

    async def pex(stream: object) -> None:
        try:
            req = PexRequest.decode(await read_frame(stream, MAX_FRAME))  # type: ignore[arg-type]
            ok = req.network_id == network_id
            resp = PexResponse(0 if ok else 1, forged_records(key_pair.private_key) if ok else [])
            await stream.write(encode_frame(resp.encode()))  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]
            _emit("served", protocol="pex", records=len(resp.signed_records), network_id=req.network_id)
        except Exception as exc:
            _emit("error", where="pex", error=str(exc)[:200])

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with run_host(host, listen):
            host.set_stream_handler(BOOTSTRAP_PROTOCOL, bootstrap)  # type: ignore[arg-type]
            host.set_stream_handler(PEX_PROTOCOL, pex)  # type: ignore[arg-type]
            _emit("listening", peer_id=str(host.get_id()), addrs=[str(a) for a in host.get_addrs()])
            async for _ in signals:
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.forger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network-id", default="prozchain-interop")
    args = parser.parse_args(argv)
    trio.run(_serve, args.network_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
