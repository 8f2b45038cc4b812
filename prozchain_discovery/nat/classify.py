"""NAT behaviour discovery (RFC 5780 §4), sans-IO, on top of :class:`~.stun.StunClient`.

Tests, with the primary server at P1 = IP1:port1 and its OTHER-ADDRESS A2 = IP2:port2:

* test I — Binding to IP1:port1: the mapped address, the RTT ``r`` and OTHER-ADDRESS;
* filtering test II — to IP1:port1 with CHANGE-REQUEST change-IP+port (answered from A2);
* filtering test III — to IP1:port1 with change-port (answered from IP1:port2);
* mapping test II — to IP2:port1; mapping test III — to IP2:port2.

Mapping: test II mapped as test I → endpoint-independent; else test III mapped as test II →
address-dependent; else address-and-port-dependent. Filtering: an answer to filtering test II →
endpoint-independent; else an answer to test III → address-dependent; else
address-and-port-dependent.

Timing (coturn's ``turnutils_natdiscovery`` runs its tests one after the other with fixed 3 s
timeouts, ~6 s behind a NAT; this takes about one RTO):

* Test I and both filtering requests leave at once.
* A filtering verdict of "no answer" is a timeout, and the full RFC 5389 schedule (39.5 s) is
  no use for it: once test I has answered in ``r``, both filtering requests retransmit on an RTO
  from that RTT (3 r, at least 100 ms, at most ``rto``: one loss does not turn into a wrong
  verdict) and are given ``max(filter_rtt_factor × r, filter_floor)`` = max(4 r, 300 ms) from
  their first send. An answer slower than four round trips of the same server counts as
  filtered.
* The mapping tests send to IP2, and under address-dependent filtering that would open the NAT
  to filtering test II's answer (from IP2): they leave only when filtering test II has its
  verdict, both at once, on the same RTO, and give up after max(8 r, 1 s).

So a NAT that lets filtering test II in is classified in two round trips; one that filters,
in max(4 r, 300 ms) and one round trip. Without a NAT (test I's mapped address is the socket's
own) nothing translates: the mapping is endpoint-independent with no mapping tests, and an open
host is classified in one round trip (a filtering firewall: max(4 r, 300 ms)).

A server without RFC 5780 (no OTHER-ADDRESS, or one that is not another IP *and* port): test I
goes to the other servers at once. The first to answer with a usable OTHER-ADDRESS becomes the
primary and the tests above run against it (if nothing this socket sent to could spoil them);
otherwise the mapped addresses of two servers (different IPs preferred) are compared — mapping
only; filtering stays unknown, and the NAT type then assumes the strictest cone
(port-restricted) for an endpoint-independent mapping. ``note`` says so. A server that does not
answer test I at all is replaced by the next one.

Seed ``NatType``: mapped address = local address → OPEN (whatever a firewall filters; ``note``
says if it does); EIM + EIF → FULL_CONE; EIM + ADF → RESTRICTED_CONE; EIM + APDF →
PORT_RESTRICTED; ADM or APDM (or mappings that differ by destination) → SYMMETRIC; else UNKNOWN.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .stun import (
    Addr,
    BindingError,
    BindingResponse,
    BindingTimeout,
    SockAddr,
    StunClient,
    StunEvent,
    format_addr,
    norm_addr,
)

__all__ = [
    "NatType",
    "MappingBehavior",
    "FilteringBehavior",
    "NatClassification",
    "NatClassifier",
    "nat_type_of",
]


class NatType(enum.Enum):
    OPEN = "open"
    FULL_CONE = "full_cone"
    RESTRICTED_CONE = "restricted_cone"
    PORT_RESTRICTED = "port_restricted"
    SYMMETRIC = "symmetric"
    UNKNOWN = "unknown"


class MappingBehavior(enum.Enum):
    ENDPOINT_INDEPENDENT = "endpoint_independent"
    ADDRESS_DEPENDENT = "address_dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address_and_port_dependent"
    UNKNOWN = "unknown"


class FilteringBehavior(enum.Enum):
    ENDPOINT_INDEPENDENT = "endpoint_independent"
    ADDRESS_DEPENDENT = "address_dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address_and_port_dependent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NatClassification:
    """One classification. ``mapped_addr`` is test I's mapped (server-reflexive) address,
    ``local_addr`` the socket's, ``servers_used`` the servers asked, in order; ``took`` seconds
    from start to verdict; ``rtt`` test I's round trip; ``stats`` the STUN client's counters."""

    nat_type: NatType
    mapping: MappingBehavior
    filtering: FilteringBehavior
    mapped_addr: Addr | None
    local_addr: Addr
    rfc5780: bool
    servers_used: tuple[Addr, ...]
    note: str
    took: float
    rtt: float | None = None
    stats: dict[str, int] = field(default_factory=dict, compare=False)


def nat_type_of(
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
    *,
    no_nat: bool = False,
    destination_dependent: bool = False,
) -> NatType:
    """The seed's NAT type from RFC 4787 behaviours (unknown filtering with an
    endpoint-independent mapping counts as the strictest cone, port-restricted)."""
    if no_nat:
        return NatType.OPEN
    if destination_dependent or mapping in (
        MappingBehavior.ADDRESS_DEPENDENT,
        MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    ):
        return NatType.SYMMETRIC
    if mapping != MappingBehavior.ENDPOINT_INDEPENDENT:
        return NatType.UNKNOWN
    return {
        FilteringBehavior.ENDPOINT_INDEPENDENT: NatType.FULL_CONE,
        FilteringBehavior.ADDRESS_DEPENDENT: NatType.RESTRICTED_CONE,
        FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT: NatType.PORT_RESTRICTED,
        FilteringBehavior.UNKNOWN: NatType.PORT_RESTRICTED,
    }[filtering]


def _mapped(ev: StunEvent | None) -> Addr | None:
    return ev.mapped if isinstance(ev, BindingResponse) else None


class NatClassifier:
    """One classification over one socket. ``servers`` are (IP literal, port), tried in order
    (at most ``max_servers``); ``local_addr`` is the socket's address (a concrete IP, so that
    "mapped = local" means no NAT). Call :meth:`start`, then drive it like the client:
    :meth:`datagrams_to_send`, :meth:`receive_datagram`, :meth:`next_deadline`,
    :meth:`on_timer`, until :attr:`done`; :meth:`result` is the verdict.

    ``server_timeout`` bounds test I per server (default: the full retransmission schedule).
    """

    MAPPING_TIMEOUT_FLOOR = 1.0
    MAPPING_TIMEOUT_RTT_FACTOR = 8.0
    FOLLOWUP_RTO_FLOOR = 0.1

    def __init__(
        self,
        servers: Sequence[Addr],
        local_addr: Addr,
        *,
        rto: float = 0.5,
        max_sends: int = 7,
        final_wait: float = 16.0,
        filter_floor: float = 0.3,
        filter_rtt_factor: float = 4.0,
        server_timeout: float | None = None,
        max_servers: int = 4,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not 0 < filter_floor < 60 or not 1 <= filter_rtt_factor <= 100:
            raise ValueError("filter_floor must be in (0, 60) s, filter_rtt_factor in [1, 100]")
        unique: list[Addr] = []
        for s in servers:
            a = norm_addr(s)
            if a not in unique:
                unique.append(a)
        self.servers = unique[: max(1, max_servers)]
        self.local_addr = norm_addr(local_addr)
        self.rto = rto
        self.filter_floor = filter_floor
        self.filter_rtt_factor = filter_rtt_factor
        self.server_timeout = server_timeout
        self.client = StunClient(
            rto=rto, max_sends=max_sends, final_wait=final_wait, urandom=urandom
        )
        self._started_at: float | None = None
        self._primary = 0
        self._tried: set[int] = set()  # servers that were primary or answered without RFC 5780
        self._contacted: set[Addr] = set()  # every destination this socket sent to
        self._phase = "idle"  # idle | probe | mapping | fallback | done
        self._tids: dict[str, bytes] = {}
        self._got: dict[str, StunEvent] = {}
        self._mapped: Addr | None = None
        self._other: Addr | None = None
        self._rtt: float | None = None
        self._used: list[Addr] = []
        self._notes: list[str] = []
        self._result: NatClassification | None = None

    # ---- driving ---------------------------------------------------------------------------
    def start(self, now: float) -> None:
        if self._phase != "idle":
            raise RuntimeError("a NatClassifier runs once")
        self._started_at = now
        if not self.servers:
            self._notes.append("no STUN servers")
            self._finish(now)
            return
        self._start_primary(0, now)

    @property
    def done(self) -> bool:
        return self._result is not None

    def result(self) -> NatClassification | None:
        return self._result

    @property
    def stats(self) -> dict[str, int]:
        return self.client.stats

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        return self.client.datagrams_to_send(now)

    def next_deadline(self) -> float | None:
        return None if self.done else self.client.next_deadline()

    def on_timer(self, now: float) -> None:
        if not self.done:
            self.client.on_timer(now)
            self._process(now)

    def receive_datagram(self, data: bytes, addr: SockAddr, now: float) -> None:
        self.client.receive_datagram(data, addr, now)  # never raises on the contents
        if not self.done:
            self._process(now)

    # ---- the state machine -------------------------------------------------------------------
    def _send(
        self,
        tag: str,
        server: Addr,
        now: float,
        *,
        change_ip: bool = False,
        change_port: bool = False,
        rto: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._contacted.add(server)
        self._tids[tag] = self.client.send_binding(
            server,
            now,
            tag=tag,
            change_ip=change_ip,
            change_port=change_port,
            rto=rto,
            timeout=timeout,
        )

    def _cancel(self, *tags: str) -> None:
        for tag in tags:
            tid = self._tids.get(tag)
            if tid is not None and tag not in self._got:
                self.client.cancel(tid)

    def _cancel_all(self) -> None:
        self._cancel(*self._tids)

    def _followup_rto(self) -> float:
        """The RTO once test I measured the RTT: 3 r (RFC 6298's first RTO, R + 4 × R/2),
        at least ``FOLLOWUP_RTO_FLOOR``, at most the configured RTO."""
        return min(self.rto, max(3 * (self._rtt or 0.0), self.FOLLOWUP_RTO_FLOOR))

    def _usable_other(self, server: Addr, other: Addr | None) -> bool:
        """Whether OTHER-ADDRESS allows the RFC 5780 tests from this socket: another IP *and*
        port, of the server's family, and nothing this socket sent to yet at the IP of
        filtering test II's answer or at the endpoint of test III's (else a filter opened by
        that send would let the answer in)."""
        if other is None or other[0] == server[0] or other[1] == server[1]:
            return False
        if (":" in other[0]) != (":" in server[0]):
            return False
        contacted_ips = {ip for ip, _ in self._contacted}
        return other[0] not in contacted_ips and (server[0], other[1]) not in self._contacted

    def _start_primary(self, index: int, now: float) -> None:
        self._primary = index
        self._tried.add(index)
        server = self.servers[index]
        self._used.append(server)
        self._tids, self._got, self._other = {}, {}, None
        self._phase = "probe"
        self._send("I", server, now, timeout=self.server_timeout)
        self._send("F2", server, now, change_ip=True, change_port=True, timeout=self.server_timeout)
        self._send("F3", server, now, change_port=True, timeout=self.server_timeout)

    def _next_primary(self, now: float) -> bool:
        for i in range(len(self.servers)):
            if i not in self._tried:
                self._start_primary(i, now)
                return True
        return False

    def _process(self, now: float) -> None:
        for ev in self.client.events():
            if self._tids.get(ev.tag) != ev.transaction_id:
                continue  # a transaction of a server given up on
            self._got[ev.tag] = ev
            if ev.tag == "I":
                self._on_test_one(ev, now)
            if self.done:
                return
        self._advance(now)
        if not self.done and not self.client.busy:  # never wait for nothing
            self._notes.append("classification ended early")
            self._finish(now)

    def _on_test_one(self, ev: StunEvent, now: float) -> None:
        server = self.servers[self._primary]
        if not isinstance(ev, BindingResponse) or ev.mapped is None:
            why = {BindingTimeout: "no answer", BindingError: "an error answer"}.get(
                type(ev), "no mapped address"
            )
            self._notes.append(f"{format_addr(server)}: {why}")
            self._cancel_all()
            if not self._next_primary(now):
                self._finish(now)
            return
        self._mapped, self._rtt = ev.mapped, ev.rtt
        other = ev.other_address
        if self._usable_other(server, other):
            self._other = other
            rto = self._followup_rto()
            window = max(self.filter_rtt_factor * ev.rtt, self.filter_floor)
            for tag in ("F2", "F3"):
                if tag not in self._got:
                    self.client.reschedule(self._tids[tag], rto=rto, timeout=window)
            return
        self._cancel("F2", "F3")
        lacks = (
            "no OTHER-ADDRESS" if other is None else f"OTHER-ADDRESS {format_addr(other)} unusable"
        )
        self._notes.append(f"server {format_addr(server)} lacks RFC 5780 ({lacks})")
        if self._mapped == self.local_addr:  # no NAT: no mapping to compare across servers
            self._finish(now, mapping=MappingBehavior.ENDPOINT_INDEPENDENT)
            return
        self._phase = "fallback"
        for i, s in enumerate(self.servers):
            if i not in self._tried:
                self._send(f"FB{i}", s, now, timeout=self.server_timeout)
                self._used.append(s)

    def _advance(self, now: float) -> None:
        if self._phase == "probe" and self._other is not None and self._mapped == self.local_addr:
            # no NAT: nothing translates, so the mapping is endpoint-independent without
            # mapping tests II/III; the filtering tests (sent with test I) are the verdict
            filtering = self._filtering()
            if filtering is not None:
                self._finish(now, mapping=MappingBehavior.ENDPOINT_INDEPENDENT, filtering=filtering)
            return
        if self._phase == "probe" and self._other is not None and "F2" in self._got:
            if isinstance(self._got["F2"], BindingResponse):
                self._cancel("F3")  # endpoint-independent filtering: test III says nothing more
            server, other = self.servers[self._primary], self._other
            rto = self._followup_rto()
            timeout = max(
                self.MAPPING_TIMEOUT_RTT_FACTOR * (self._rtt or 0.0), self.MAPPING_TIMEOUT_FLOOR
            )
            self._send("M2", (other[0], server[1]), now, rto=rto, timeout=timeout)
            self._send("M3", other, now, rto=rto, timeout=timeout)
            self._phase = "mapping"
        if self._phase == "mapping":
            filtering = self._filtering()
            mapping = self._mapping()
            if mapping is not None and filtering is not None:
                self._finish(
                    now, mapping=mapping[0], filtering=filtering, dest_dependent=mapping[1]
                )
        elif self._phase == "fallback":
            self._advance_fallback(now)

    def _filtering(self) -> FilteringBehavior | None:
        """The verdict of the filtering tests, None while it is not in."""
        f2, f3 = self._got.get("F2"), self._got.get("F3")
        if f2 is None:
            return None
        if isinstance(f2, BindingResponse):
            return FilteringBehavior.ENDPOINT_INDEPENDENT
        if not self._supports_change(f2, "change IP and port"):
            return FilteringBehavior.UNKNOWN
        if f3 is None:
            return None
        if isinstance(f3, BindingResponse):
            return FilteringBehavior.ADDRESS_DEPENDENT
        if not self._supports_change(f3, "change port"):
            return FilteringBehavior.UNKNOWN
        return FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT

    def _supports_change(self, ev: StunEvent, what: str) -> bool:
        if isinstance(ev, BindingError):
            self._notes.append(
                f"CHANGE-REQUEST ({what}) refused with {ev.code} {ev.reason}: filtering unknown"
            )
            return False
        if isinstance(ev, BindingTimeout) and ev.rejected:
            self._notes.append(
                f"the server answered CHANGE-REQUEST ({what}) from the wrong address: "
                "filtering unknown"
            )
            return False
        return True

    def _mapping(self) -> tuple[MappingBehavior, bool] | None:
        """(verdict, destination-dependent), None while it is not in."""
        m2, m3 = self._got.get("M2"), self._got.get("M3")
        i, m2m, m3m = self._mapped, _mapped(m2), _mapped(m3)
        if i is not None and i in (m2m, m3m):
            self._cancel("M2", "M3")
            if m2m is None:
                self._notes.append("mapping test II unanswered; test III mapped as test I")
            return MappingBehavior.ENDPOINT_INDEPENDENT, False
        if m2 is None or m3 is None:
            return None
        if m2m is not None and m3m is not None:
            if m2m == m3m:
                return MappingBehavior.ADDRESS_DEPENDENT, True
            return MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, True
        if m2m is not None or m3m is not None:
            self._notes.append(
                "one of mapping tests II/III unanswered: the mapping depends on the destination"
            )
            return MappingBehavior.UNKNOWN, True
        self._notes.append(
            f"the alternate address {format_addr(self._other or ('?', 0))} did not answer"
        )
        return MappingBehavior.UNKNOWN, False

    def _advance_fallback(self, now: float) -> None:
        primary = self.servers[self._primary]
        answers: list[BindingResponse] = []
        for tag, ev in self._got.items():
            if tag.startswith("FB") and isinstance(ev, BindingResponse) and ev.mapped is not None:
                index = int(tag[2:])
                self._tried.add(index)
                if self._usable_other(ev.server, ev.other_address):
                    # another server does RFC 5780 (and nothing sent yet spoils its tests)
                    self._notes.append(f"RFC 5780 tests against {format_addr(ev.server)}")
                    self._cancel_all()
                    self._start_primary(index, now)
                    return
                answers.append(ev)
        other_ip = [ev for ev in answers if ev.server[0] != primary[0]]
        pending = [t for t in self._tids if t.startswith("FB") and t not in self._got]
        if not other_ip and pending:
            return
        self._cancel(*pending)
        best = (other_ip or answers)[0] if answers else None
        mapped = best.mapped if best is not None else None
        if mapped is None:
            alone = "only one server" if len(self.servers) == 1 else "no second server answered"
            self._notes.append(f"{alone}: mapping and filtering unknown")
            self._finish(now)
            return
        where = "two servers" if other_ip else "two ports of one server"
        self._notes.append(f"mapping compared across {where}, filtering unknown")
        if mapped == self._mapped:
            self._finish(now, mapping=MappingBehavior.ENDPOINT_INDEPENDENT)
        else:
            self._notes.append(
                f"mapped {format_addr(self._mapped or ('?', 0))} vs {format_addr(mapped)}: the "
                "mapping depends on the destination (address or address and port, not told apart)"
            )
            self._finish(now, dest_dependent=True)

    def _finish(
        self,
        now: float,
        *,
        mapping: MappingBehavior = MappingBehavior.UNKNOWN,
        filtering: FilteringBehavior = FilteringBehavior.UNKNOWN,
        dest_dependent: bool = False,
    ) -> None:
        self._cancel_all()
        self._phase = "done"
        no_nat = self._mapped is not None and self._mapped == self.local_addr
        nat_type = NatType.UNKNOWN
        if self._mapped is None:
            if self.servers:
                self._notes.append("no STUN server answered")
        else:
            nat_type = nat_type_of(
                mapping, filtering, no_nat=no_nat, destination_dependent=dest_dependent
            )
            if no_nat and filtering not in (
                FilteringBehavior.ENDPOINT_INDEPENDENT,
                FilteringBehavior.UNKNOWN,
            ):
                self._notes.append(
                    f"no NAT, but a firewall filters unsolicited traffic ({filtering.value})"
                )
            elif (
                not no_nat
                and mapping == MappingBehavior.ENDPOINT_INDEPENDENT
                and filtering == FilteringBehavior.UNKNOWN
            ):
                self._notes.append("filtering unknown: port-restricted assumed")
            elif not no_nat and mapping == MappingBehavior.UNKNOWN and not dest_dependent:
                self._notes.append(
                    f"behind a NAT (mapped {format_addr(self._mapped)}), behaviour unknown"
                )
        started = self._started_at if self._started_at is not None else now
        self._result = NatClassification(
            nat_type=nat_type,
            mapping=mapping,
            filtering=filtering,
            mapped_addr=self._mapped,
            local_addr=self.local_addr,
            rfc5780=self._other is not None,
            servers_used=tuple(dict.fromkeys(self._used)),
            note="; ".join(dict.fromkeys(self._notes)),
            took=now - started,
            rtt=self._rtt,
            stats=dict(self.client.stats),
        )
