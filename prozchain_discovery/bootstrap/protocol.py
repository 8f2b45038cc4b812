"""``/prozchain/bootstrap/1.0`` — what to answer and how to read an answer (sans-IO).

See protocols/bootstrap.md. The trio side is net/exchange.py; the bootstrap server component
(bootstrap/server.py) supplies the candidate records (its verified peers' own signed records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import multiaddr
from libp2p.peer.id import ID

from ..addrs import AddressError, parse_multiaddr
from ..records import RecordBatch, RecordRejection, VerifiedRecord, VerifiedRecordCache
from ..wire.messages import BootstrapRequest, BootstrapResponse, BootstrapStatus, fit_records

__all__ = ["BootstrapResponder", "BootstrapAnswer", "read_bootstrap_answer"]

OK = BootstrapStatus.Value("OK")
WRONG_NETWORK = BootstrapStatus.Value("WRONG_NETWORK")
BUSY = BootstrapStatus.Value("BUSY")


class BootstrapResponder:
    """Decides a bootstrap answer. ``max_answer`` caps ``max_peers`` (default 50)."""

    def __init__(self, network_id: str, max_answer: int = 50) -> None:
        self.network_id = network_id
        self.max_answer = max_answer

    def respond(
        self,
        request: BootstrapRequest,
        caller: ID,
        observed: multiaddr.Multiaddr | None,
        candidates: Iterable[tuple[ID, bytes]],
        busy: bool = False,
    ) -> BootstrapResponse:
        observed_bytes = observed.to_bytes() if observed is not None else b""
        if request.network_id != self.network_id:
            return BootstrapResponse(WRONG_NETWORK, self.network_id, observed_bytes, [])
        if busy:
            return BootstrapResponse(BUSY, self.network_id, observed_bytes, [])
        limit = min(request.max_peers or self.max_answer, self.max_answer)
        picked: list[bytes] = []
        for peer_id, envelope in candidates:
            if len(picked) >= limit:
                break
            if peer_id == caller:
                continue  # never the caller itself
            picked.append(envelope)
        return BootstrapResponse(OK, self.network_id, observed_bytes, fit_records(picked))


@dataclass
class BootstrapAnswer:
    status: int
    network_id: str
    observed_addr: multiaddr.Multiaddr | None
    records: list[VerifiedRecord]
    rejected: dict[RecordRejection, int] = field(default_factory=dict)
    # With ``lazy=True`` the records are not checked yet: they wait here (see RecordBatch).
    batch: RecordBatch | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def wrong_network(self) -> bool:
        return self.status == WRONG_NETWORK


def read_bootstrap_answer(
    response: BootstrapResponse,
    *,
    local_peer_id: ID,
    responder: ID,
    cache: VerifiedRecordCache | None = None,
    lazy: bool = False,
    max_records: int | None = None,
) -> BootstrapAnswer:
    """Verify every record on its own; bad ones are dropped and counted, the rest kept.

    With ``lazy`` nothing is verified yet: ``answer.batch`` hands records out one at a time,
    each checked as it is taken (a joiner dials the first few while the rest wait).
    The responder's own record is dropped (we know it already: identify brought it).
    ``max_records`` (the ``max_peers`` we asked for) caps the answer before anything is
    verified: a responder that sends 512 records costs us no more than the 50 we wanted.
    """
    observed: multiaddr.Multiaddr | None = None
    if response.observed_addr:
        try:
            observed = parse_multiaddr(response.observed_addr)
        except AddressError:
            observed = None
    blobs = list(response.signed_records)
    if max_records is not None and len(blobs) > max_records:
        blobs = blobs[:max_records]
    batch = RecordBatch(
        blobs, local_peer_id=local_peer_id, cache=cache, skip=responder
    )
    if lazy:
        return BootstrapAnswer(response.status, response.network_id, observed, [], {}, batch)
    records = batch.finish()
    return BootstrapAnswer(response.status, response.network_id, observed, records, batch.rejected)
