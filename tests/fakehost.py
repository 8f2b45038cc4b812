"""A py-libp2p host stand-in for component tests on trio's MockClock.

Real hosts use real sockets, whose timeouts an autojumping clock would fire at once; these
tests drive the components (dialer, cascade, static peers, PEX) through the same calls they
make on a real host, with reachability decided by the test.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.peer.id import ID

from tests.conftest import identity


class FakeConn:
    def __init__(self, peer_id: ID, outbound: bool) -> None:
        self.muxed_conn = type("M", (), {"peer_id": peer_id, "is_initiator": outbound})()

    def get_transport_addresses(self) -> list[Any]:
        return []


class FakeNetwork:
    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.notifees: list[Any] = []

    def register_notifee(self, n: Any) -> None:
        self.notifees.append(n)

    def remove_notifee(self, n: Any) -> None:
        self.notifees.remove(n)

    def unblock_peer(self, peer_id: ID) -> None:
        """py-libp2p's negative dial cache: the stand-in has none (the dialer clears it)."""
        self.unblocked = getattr(self, "unblocked", 0) + 1

    def get_connections(self, peer_id: ID) -> list[Any]:
        return [self.host.conns[peer_id]] if peer_id in self.host.conns else []

    def get_connections_map(self) -> dict[ID, list[Any]]:
        return {pid: [c] for pid, c in self.host.conns.items()}

    async def new_stream(self, peer_id: ID) -> FakeStream:
        return FakeStream(self.host, peer_id)


class FakeStream:
    """A stream opened with our pipelined select (net/exchange.request): its first write says
    which protocol it asks for; the stand-in records that and fails, as ``new_stream`` does."""

    def __init__(self, host: FakeHost, peer_id: ID) -> None:
        self.host, self.peer_id = host, peer_id

    async def write(self, data: bytes) -> None:
        header_len = data[0]  # select_message: two varint-delimited lines, both short
        protocol = data[header_len + 2 : header_len + 2 + data[header_len + 1] - 1].decode()
        self.host.streams.append((trio.current_time(), self.peer_id, protocol))
        raise ConnectionResetError("fake host: no streams")

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


class FakePeerstore:
    def add_addrs(self, *a: Any) -> None:
        pass

    def get_peer_record(self, peer_id: ID) -> None:
        return None

    def consume_peer_record(self, *a: Any) -> bool:
        return True

    def set_local_record(self, *a: Any) -> None:
        pass


class FakeMultiselect:
    """What the handler-removal workaround checks for on a real host (libp2p_fixes.py)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    async def negotiate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the stand-in host negotiates nothing")


class FakeHost:
    """``reachable(peer_id, now)`` says whether a dial succeeds; a dial takes ``dial_time``."""

    def __init__(self, n: int = 0, reachable: Any = None, dial_time: float = 0.01) -> None:
        self.key, self.peer_id = identity(10_000 + n)
        self.reachable = reachable or (lambda pid, now: True)
        self.dial_time = dial_time
        self.conns: dict[ID, FakeConn] = {}
        self.network = FakeNetwork(self)
        self.peerstore = FakePeerstore()
        self.dials: list[tuple[float, ID]] = []
        self.streams: list[tuple[float, ID, str]] = []
        self.handlers: dict[str, Any] = {}
        self.multiselect = FakeMultiselect()

    def get_id(self) -> ID:
        return self.peer_id

    def get_private_key(self) -> Any:
        return self.key.private_key

    def get_public_key(self) -> Any:
        return self.key.public_key

    def get_addrs(self) -> list[Any]:
        return []

    def get_network(self) -> FakeNetwork:
        return self.network

    def get_peerstore(self) -> FakePeerstore:
        return self.peerstore

    def get_connected_peers(self) -> list[ID]:
        return list(self.conns)

    def set_stream_handler(self, proto: str, handler: Any) -> None:
        self.handlers[proto] = handler

    def remove_stream_handler(self, proto: str) -> None:
        self.handlers.pop(proto, None)

    async def connect(self, info: Any) -> None:
        now = trio.current_time()
        self.dials.append((now, info.peer_id))
        await trio.sleep(self.dial_time)
        if not self.reachable(info.peer_id, now):
            raise ConnectionRefusedError(f"{info.peer_id} unreachable at t={now:.1f}")
        await self.open(info.peer_id, outbound=True)

    async def open(self, peer_id: ID, outbound: bool = False) -> None:
        if peer_id in self.conns:
            return
        conn = self.conns[peer_id] = FakeConn(peer_id, outbound)
        for n in self.network.notifees:
            await n.connected(self.network, conn)

    async def disconnect(self, peer_id: ID) -> None:
        conn = self.conns.pop(peer_id, None)
        if conn is not None:
            for n in self.network.notifees:
                await n.disconnected(self.network, conn)

    async def new_stream(self, peer_id: ID, protocols: list[str]) -> Any:
        self.streams.append((trio.current_time(), peer_id, protocols[0]))
        raise ConnectionResetError("fake host: no streams")
