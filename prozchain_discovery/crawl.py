"""Collect a running network's signed peer records for a DNS seed (``seed crawl``, issue #17).

A throw-away host (a fresh identity, listening nowhere) dials each bootstrap node and asks it
``/prozchain/bootstrap/1.0`` for records, then walks the network breadth-first: each peer it
learns of is dialed at the addresses of the newest record known at that moment and asked
``/prozchain/pex/1.0`` for more (``/prozchain/bootstrap/1.0`` if PEX fails: every node serves
it); ``/ipfs/id/1.0.0`` brings the peer's own current record too. Every record is verified as PEX
verifies records (records.py) before it counts.

A record is kept only when its peer *answered*: a connection secured with Noise to the record's
peer id at one of the record's addresses, and an answer to one of our protocols on our network
(``OK`` or ``RATE_LIMITED``, which a responder sends only after the network id matched). A peer
that refuses the dial, says ``WRONG_NETWORK``, or answers neither protocol is not kept. Per peer
the highest ``seq`` is kept, unless a newer record arrived after the dial and does not list the
address that answered: then the record that was dialed (its addresses are the ones checked).

Bounded: at most ``parallel`` peers in flight, each dial and request within ``dial_timeout``,
the whole crawl within ``timeout``; it stops at ``max_peers`` kept records and tracks at most
``TRACK_FACTOR * max_peers`` peers.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from .bootstrap.protocol import read_bootstrap_answer
from .dialer.dialer import AddrFilter, loopback_only
from .host import make_host
from .libp2p_fixes import run_host
from .net import exchange
from .net.frames import read_frame
from .records import RecordError, RecordRejection, VerifiedRecord, verify_many, verify_record
from .service import LOOPBACK_ONLY_ENV
from .wire.messages import (
    BOOTSTRAP_PROTOCOL,
    PEX_PROTOCOL,
    BootstrapRequest,
    BootstrapResponse,
    DecodeError,
    PexRequest,
    PexResponse,
    PexStatus,
)

__all__ = ["CrawlReport", "Crawler", "crawl", "BOOTSTRAP_ASK", "PEX_ASK", "PARALLEL"]

log = logging.getLogger("prozchain_discovery.crawl")

BOOTSTRAP_ASK = 50  # records asked of a bootstrap node (every server answers at least 50)
PEX_ASK = 50  # a PEX responder's cap (max_peers_per_exchange's default)
PARALLEL = 16  # peers dialed and asked at once
TRACK_FACTOR = 4  # peers tracked at most: TRACK_FACTOR * max_peers
IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"

PEX_OK = PexStatus.Value("OK")
PEX_RATE_LIMITED = PexStatus.Value("RATE_LIMITED")
PEX_WRONG_NETWORK = PexStatus.Value("WRONG_NETWORK")


@dataclass
class CrawlReport:
    """What a crawl found; ``records`` are the ones to write (sorted by peer id)."""

    records: list[VerifiedRecord]
    asked: int = 0  # peers asked for records (each one that answered a dial)
    confirmed: int = 0  # of them, those that answered on our network
    seen: int = 0  # records received (every copy, before verification)
    verified: int = 0  # peers with a record that verified
    rejected: Counter[str] = field(default_factory=Counter)  # records refused, by reason
    answered: int = 0  # peers that answered a dial
    refused: list[ID] = field(default_factory=list)  # peers that did not answer a dial
    wrong_network: dict[ID, str] = field(default_factory=dict)  # peer -> its network ("?" if PEX)
    unconfirmed: list[ID] = field(default_factory=list)  # answered the dial, not our protocols
    stopped: str = "done"  # "done", "timeout" or "max-peers"
    seconds: float = 0.0


@dataclass
class _Peer:
    addrs: list[multiaddr.Multiaddr]  # to dial when no record is known (a bootstrap node)
    bootstrap: bool = False
    dial_ok: bool = False  # a Noise connection to the peer id stood
    dialed: VerifiedRecord | None = None  # the record whose addresses were dialed (None: ``addrs``)
    answered_at: multiaddr.Multiaddr | None = None
    confirmed: bool = False  # answered one of our protocols on our network


class Crawler:
    """One crawl on ``host`` (already running). :meth:`run` returns the :class:`CrawlReport`."""

    def __init__(
        self,
        host: IHost,
        network_id: str,
        *,
        max_peers: int = 1000,
        dial_timeout: float = 5.0,
        parallel: int = PARALLEL,
        addr_filter: AddrFilter | None = None,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.host = host
        self.local_id = host.get_id()
        self.network_id = network_id
        self.max_peers = max_peers
        self.dial_timeout = dial_timeout
        self.parallel = parallel
        self.addr_filter = addr_filter
        self.say = say
        self.best: dict[ID, VerifiedRecord] = {}
        self.peers: dict[ID, _Peer] = {}
        self.report = CrawlReport([])
        self._send, self._recv = trio.open_memory_channel[ID](math.inf)
        self._pending = 0  # peers queued or in flight
        self._kept: list[ID] = []  # peers whose record will be written, in the order they answered
        self._stop: trio.CancelScope | None = None

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _track(self, pid: ID, peer: _Peer) -> bool:
        if pid in self.peers or pid == self.local_id:
            return False
        if len(self.peers) >= TRACK_FACTOR * self.max_peers:
            return False
        self.peers[pid] = peer
        self._pending += 1
        self._send.send_nowait(pid)
        return True

    def _learn(self, records: Sequence[VerifiedRecord], rejected: dict[RecordRejection, int]) -> None:
        for reason, n in rejected.items():
            if reason is not RecordRejection.SELF:  # our own record, from a peer we asked: not bad
                self.report.rejected[reason.value] += n
        for rec in records:
            prev = self.best.get(rec.peer_id)
            if prev is None:
                if not self._track(rec.peer_id, _Peer(list(rec.addrs))) and rec.peer_id not in self.peers:
                    continue  # over the tracking bound
                self.best[rec.peer_id] = rec
            elif rec.seq > prev.seq:
                self.best[rec.peer_id] = rec

    # ---- the crawl -------------------------------------------------------------------------------
    async def run(self, bootstrap: Sequence[tuple[ID, multiaddr.Multiaddr]], timeout: float) -> CrawlReport:
        started = trio.current_time()
        for pid, addr in bootstrap:
            self._track(pid, _Peer([addr], bootstrap=True))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._progress, started)
            with trio.move_on_after(timeout) as scope:
                async with trio.open_nursery() as workers:
                    self._stop = workers.cancel_scope
                    for _ in range(self.parallel):
                        workers.start_soon(self._worker)
            if scope.cancelled_caught:
                self.report.stopped = "timeout"
            nursery.cancel_scope.cancel()
        self.report.seconds = trio.current_time() - started
        return self._finish()

    async def _worker(self) -> None:
        async for pid in self._recv:
            try:
                await self._visit(pid, self.peers[pid])
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._send.close()  # nothing queued, nothing in flight: the walk is done

    async def _visit(self, pid: ID, peer: _Peer) -> None:
        rec = self.best.get(pid)
        addrs = list(rec.addrs) if rec is not None else peer.addrs
        why = self.addr_filter(addrs) if self.addr_filter is not None else None
        if why is None:
            why = await self._dial(pid, addrs)
        if why is not None:
            self.report.refused.append(pid)
            if peer.bootstrap:  # the operator named it: say why it gave nothing
                self.say(f"bootstrap node {pid} at {', '.join(map(str, addrs))} did not answer a dial: {why}")
            log.debug("%s did not answer a dial: %s", pid, why)
            return
        peer.dial_ok, peer.dialed = True, rec
        self.report.answered += 1
        self.report.asked += 1
        try:
            stream = await self._ask(pid, peer)
            if stream is not None:
                peer.answered_at = exchange.observed_multiaddr(stream)
                await self._identify(pid)
                if pid in self.best and len(self._kept) < self.max_peers:
                    self._kept.append(pid)
        finally:
            with trio.move_on_after(2):
                try:
                    await self.host.disconnect(pid)
                except Exception:
                    pass
        if len(self._kept) >= self.max_peers and self._stop is not None:
            self.report.stopped = "max-peers"
            self._stop.cancel()

    async def _dial(self, pid: ID, addrs: list[multiaddr.Multiaddr]) -> str | None:
        """None when a Noise connection to ``pid`` at one of ``addrs`` stands, else why not."""
        if not addrs:
            return "no address"
        with trio.move_on_after(self.dial_timeout):
            try:
                await self.host.connect(PeerInfo(pid, addrs))
                return None
            except trio.Cancelled:
                raise
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"[:200]
        return f"no connection within {self.dial_timeout:g} s"

    async def _ask(self, pid: ID, peer: _Peer) -> INetStream | None:
        """Ask ``pid`` for records: a bootstrap node bootstrap then PEX, any other peer PEX (then
        bootstrap if PEX failed). Returns the stream of an answer on our network, if any."""
        order = (self._bootstrap, self._pex) if peer.bootstrap else (self._pex, self._bootstrap)
        answered: INetStream | None = None
        for ask in order:
            verdict, stream = await ask(pid)
            if verdict == "wrong_network":
                peer.confirmed = False
                return None
            if verdict == "ok":
                if not peer.confirmed:
                    self.report.confirmed += 1
                answered = answered or stream
                peer.confirmed = True
                if not peer.bootstrap:
                    break
        return answered

    async def _bootstrap(self, pid: ID) -> tuple[str, INetStream | None]:
        """("ok", stream), ("wrong_network", None) or ("failed", None)."""
        try:
            data, stream = await exchange.request(
                self.host, pid, BOOTSTRAP_PROTOCOL,
                BootstrapRequest(self.network_id, BOOTSTRAP_ASK).encode(), self.dial_timeout,
            )
            resp = BootstrapResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            log.debug("bootstrap request to %s failed: %s", pid, exc)
            return "failed", None
        answer = read_bootstrap_answer(resp, local_peer_id=self.local_id, responder=pid, max_records=BOOTSTRAP_ASK)
        if answer.wrong_network:
            self._wrong_network(pid, answer.network_id)
            return "wrong_network", None
        if not answer.ok:  # BUSY
            return "failed", None
        self.report.seen += len(resp.signed_records)
        self._learn(answer.records, answer.rejected)
        return "ok", stream

    async def _pex(self, pid: ID) -> tuple[str, INetStream | None]:
        """As :meth:`_bootstrap`; ``RATE_LIMITED`` is an answer on our network (no records)."""
        try:
            data, stream = await exchange.request(
                self.host, pid, PEX_PROTOCOL, PexRequest(self.network_id, PEX_ASK).encode(), self.dial_timeout
            )
            resp = PexResponse.decode(data)
        except (exchange.ExchangeError, DecodeError) as exc:
            log.debug("pex request to %s failed: %s", pid, exc)
            return "failed", None
        if resp.status == PEX_WRONG_NETWORK:
            self._wrong_network(pid, "?")
            return "wrong_network", None
        if resp.status not in (PEX_OK, PEX_RATE_LIMITED):
            return "failed", None
        self.report.seen += len(resp.signed_records)
        records, rejected = verify_many(resp.signed_records[:PEX_ASK], local_peer_id=self.local_id)
        self._learn(records, rejected)
        return "ok", stream

    async def _identify(self, pid: ID) -> None:
        """The peer's own current record, from its identify answer (best effort)."""
        from libp2p.identity.identify.pb.identify_pb2 import Identify

        with trio.move_on_after(self.dial_timeout):
            try:
                stream = await self.host.new_stream(pid, [IDENTIFY_PROTOCOL])  # type: ignore[list-item]
                data = await read_frame(stream)
                with trio.move_on_after(1):
                    await stream.close()
                msg = Identify()
                msg.ParseFromString(data)
            except trio.Cancelled:
                raise
            except Exception as exc:
                log.debug("identify of %s failed: %s", pid, exc)
                return
            if not msg.signedPeerRecord:
                return
            self.report.seen += 1
            try:
                rec = verify_record(msg.signedPeerRecord, local_peer_id=self.local_id)
            except RecordError as exc:
                self.report.rejected[exc.reason.value] += 1
                return
            if rec.peer_id != pid:  # a peer's identify speaks only for itself
                self.report.rejected["signer_mismatch"] += 1
                return
            self._learn([rec], {})

    def _wrong_network(self, pid: ID, network: str) -> None:
        self.report.wrong_network[pid] = network
        shown = "another network" if network == "?" else f"network {network!r}"
        self.say(f"skipped {pid}: it is on {shown}, not {self.network_id!r}")

    async def _progress(self, started: float) -> None:
        last = ""
        while True:
            await trio.sleep(1)
            r = self.report
            line = (f"crawl {trio.current_time() - started:4.0f} s: asked {r.asked}, records seen {r.seen}, "
                    f"peers verified {len(self.best)}, answered a dial {r.answered}, refused {len(r.refused)}, "
                    f"queued {self._pending}")
            if line != last:
                self.say(line)
                last = line

    def _finish(self) -> CrawlReport:
        report = self.report
        report.verified = len(self.best)
        kept: list[VerifiedRecord] = []
        for pid, peer in self.peers.items():
            if peer.dial_ok and not peer.confirmed and pid not in report.wrong_network:
                report.unconfirmed.append(pid)
        for pid in self._kept:
            peer, best = self.peers[pid], self.best[pid]
            dialed = peer.dialed
            if dialed is not None and best.seq != dialed.seq and peer.answered_at not in best.addrs:
                best = dialed  # the newer record does not list the address that answered
            kept.append(best)
        report.records = sorted(kept, key=lambda r: r.peer_id.to_base58())
        return report


def _addr_filter_from_env() -> AddrFilter | None:
    return loopback_only if os.environ.get(LOOPBACK_ONLY_ENV) == "1" else None


async def crawl(
    bootstrap: Sequence[tuple[ID, multiaddr.Multiaddr]],
    network_id: str,
    *,
    timeout: float = 30.0,
    max_peers: int = 1000,
    dial_timeout: float = 5.0,
    parallel: int = PARALLEL,
    say: Callable[[str], None] = lambda line: None,
) -> CrawlReport:
    """Crawl from ``bootstrap`` with a throw-away host; see the module docstring."""
    host = make_host(listen_addrs=(), dial_timeout=dial_timeout)
    async with run_host(host, []):
        crawler = Crawler(host, network_id, max_peers=max_peers, dial_timeout=dial_timeout, parallel=parallel,
                          addr_filter=_addr_filter_from_env(), say=say)
        return await crawler.run(bootstrap, timeout)
