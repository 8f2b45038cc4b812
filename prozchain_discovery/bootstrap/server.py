"""Serving ``/prozchain/bootstrap/1.0`` (protocols/bootstrap.md): the bootstrap server component.

The answer is decided by :class:`~.protocol.BootstrapResponder`; this component supplies the
candidates — connected peers' own signed records first (memoised per peer: parsing and
re-encoding ~50 envelopes per answer cost 2.5 ms), then proven (tried) entries of the book —
and refuses banned callers before reading a byte.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from ..addrs import AddrScope, is_shareable_to, scope_of, strip_p2p
from ..config import DiscoveryConfig
from ..events import EventBus, PeerDisconnected
from ..metrics import Metrics
from ..net import exchange
from ..ports import Connections, PeerBookView
from ..records import peerstore_record
from ..wire.messages import BootstrapRequest
from .protocol import BootstrapResponder

__all__ = ["BootstrapServer"]

log = logging.getLogger("prozchain_discovery.bootstrap")

_Memo = tuple[Any, bytes, tuple[multiaddr.Multiaddr, ...], dict[AddrScope, bool]]


class BootstrapServer:
    def __init__(
        self,
        host: IHost,
        config: DiscoveryConfig,
        *,
        connections: Connections,
        book: PeerBookView,
        bus: EventBus,
        metrics: Metrics,
        rng: random.Random,
        refuses: Callable[[INetStream], bool],
    ) -> None:
        self.host = host
        self.config = config
        self.connections = connections
        self.book = book
        self.metrics = metrics
        self.rng = rng
        self.refuses = refuses
        server = config.server
        max_answer = server.max_bootstrap_answer_as_bootstrap_node if server.bootstrap_node else server.max_bootstrap_answer
        self.responder = BootstrapResponder(config.network_id, max_answer)
        # Per connected peer: the peerstore's envelope object (to notice a newer one), its
        # bytes, its addresses, and per requester scope whether it may be shared.
        self._memo: dict[ID, _Memo] = {}
        bus.subscribe(PeerDisconnected, lambda ev: self._memo.pop(ev.peer_id, None))

    def candidates(self, caller: ID, scope: AddrScope) -> Iterable[tuple[ID, bytes]]:
        """Verified peers: connected ones first (their own signed records), then tried entries."""
        peerstore = self.host.get_peerstore()
        ids = [cp.peer_id for cp in self.connections.peers() if cp.peer_id != caller]
        self.rng.shuffle(ids)
        seen = set()
        for pid in ids:
            env = peerstore_record(peerstore, pid)
            if env is None:
                continue
            memo = self._memo.get(pid)
            if memo is None or memo[0] is not env:
                try:
                    addrs = tuple(strip_p2p(a) for a in env.record().addrs)
                    memo = (env, env.marshal_envelope(), addrs, {})
                except Exception as exc:  # a record the peerstore accepted but we cannot re-encode
                    self.metrics.inc("share_errors")
                    log.debug("cannot share the record of %s: %s", pid, exc)
                    continue
                self._memo[pid] = memo
            shareable = memo[3].get(scope)
            if shareable is None:
                shareable = memo[3][scope] = any(is_shareable_to(a, scope) for a in memo[2])
            if not shareable:
                continue
            seen.add(pid)
            yield pid, memo[1]
        for entry in self.book.db.get_peers_for_sharing(
            200, trio.current_time(), requester=caller, requester_scope=scope, min_peer_age=0.0
        ):
            if entry.peer_id not in seen and entry.envelope and entry.in_tried:
                yield entry.peer_id, entry.envelope

    async def handle(self, stream: INetStream) -> None:
        caller = stream.muxed_conn.peer_id
        if self.refuses(stream):
            await exchange.refuse(stream, close_connection=True)
            return

        async def answer(data: bytes, s: INetStream) -> bytes:
            req = BootstrapRequest.decode(data)
            observed = exchange.observed_multiaddr(s)
            scope = scope_of(observed) if observed is not None else AddrScope.PUBLIC
            candidates = self.candidates(caller, scope)
            if exchange.is_relayed_stream(s):  # a limited connection: a small answer
                self.metrics.inc("answers_over_relay", protocol="bootstrap")
                candidates = itertools.islice(candidates, self.config.server.max_answer_over_relay)
            resp = self.responder.respond(req, caller, observed, candidates)
            self.metrics.inc("bootstrap_requests_served", status=str(resp.status))
            if resp.status == 1:
                log.info("%s asked to bootstrap into network %r: refused", caller, req.network_id[:64])
            return resp.encode()

        await exchange.serve(
            stream, self.config.server.request_timeout, answer,
            lambda kind, _exc: self.metrics.inc("bad_requests", kind=kind),
        )
