"""multistream-select in fewer round trips (py-libp2p 0.8.1 waits for every echo).

py-libp2p's client writes ``/multistream/1.0.0``, waits for the echo, proposes a protocol and
waits again: two round trips before the first byte of the protocol itself, for Noise, for Yamux
and for every stream. The listener side does not care when the dialer's messages arrive, so the
dialer may send them together, as go-libp2p does:

* :class:`PipelinedMultiselectClient` — header and first proposal in one write, then both
  echoes: one round trip (installed on every host by ``libp2p_fixes.pipeline_multistream``).
* :class:`LazySelect` — a raw-stream wrapper for the security select of a punched connection:
  the echoes are handed to the local client at once and checked when the peer's first bytes
  arrive, so Noise's first message follows without waiting (go-libp2p's lazy select).
* :func:`select_message` / :func:`read_selected` — open a stream with the header, the proposal
  and the first message in one write, and check the echoes when the answer comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from libp2p.abc import IMultiselectCommunicator, INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IncompleteReadError, IOException
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect_client import (
    DEFAULT_NEGOTIATE_TIMEOUT,
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    MultiselectClient,
    is_valid_handshake,
)
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils import encode_delim

__all__ = [
    "MultistreamError",
    "PipelinedMultiselectClient",
    "LazySelect",
    "delimited_count",
    "select_message",
    "read_selected",
]


class MultistreamError(Exception):
    """The peer did not answer with multistream-select."""


class PipelinedMultiselectClient(MultiselectClient):
    """multistream-select with the header and the first proposal in one write (1 RTT, not 2)."""

    async def select_one_of(
        self,
        protocols: Sequence[TProtocol],
        communicator: IMultiselectCommunicator,
        negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT,
    ) -> TProtocol:
        writer = getattr(communicator, "read_writer", None)
        if not protocols or writer is None or not isinstance(communicator, MultiselectCommunicator):
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        first = protocols[0]
        first_text = first if first is not None else ""
        with trio.move_on_after(negotiate_timeout):
            try:
                await writer.write(encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(first_text.encode()))
            except (IOException, AssertionError, ValueError) as error:
                raise MultiselectClientError(f"handshake write failed: {error}") from error
            try:
                header = await communicator.read()
                if not is_valid_handshake(header):
                    raise MultiselectClientError(
                        f"multiselect protocol ID mismatch: expected {MULTISELECT_PROTOCOL_ID}, got {header!r}")
                response = await communicator.read()
            except MultiselectCommunicatorError as error:
                raise MultiselectClientError(f"handshake read failed: {error}") from error
            if response == first_text:
                return first
            if response != PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(f"unrecognized response: {response!r}, expected {first_text!r}")
            errors = [f"protocol not supported: {first}"]
            for protocol in protocols[1:]:  # the rest one at a time, as the stock client does
                try:
                    return await self.try_select(communicator, protocol)
                except ProtocolNotSupportedError as error:
                    errors.append(str(error))
            # The stock wording: callers (net/exchange.py) recognise "not supported".
            raise MultiselectClientError(
                f"protocols not supported: tried {list(protocols)}, timeout={negotiate_timeout}s. "
                f"Last error: {errors[-1]}")
        raise MultiselectClientError(
            f"response timed out after {negotiate_timeout}s, protocols tried: {list(protocols)}")


class LazySelect:
    """The dialing side's multistream-select for the security protocol, without waiting.

    py-libp2p's upgrader sends ``/multistream/1.0.0`` and ``/noise`` and waits for both echoes
    before Noise starts: a round trip. Here, as go-libp2p's lazy client does, the two messages go
    out and are echoed back locally at once, so Noise's first message follows without waiting;
    the real echoes are checked (and dropped) when the peer's first bytes arrive — an ``na``
    fails the connection there. Saves a direct round trip on every punched connection. Wraps
    the raw connection's stream (``RawConnection.stream``); pass-through after the handshake.
    (The muxer's select needs no such help: the peer that measures the punch, the driver, is
    done as soon as the Yamux proposal arrives, and that follows Noise's last message anyway.)"""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._pending = b""  # the client's select messages until both are complete
        self._sent = False
        self._fake = bytearray()  # echoes handed to the local client before the peer sent them
        self._expect = b""  # what the peer must send first (the real echoes)
        self._checked = False

    async def write(self, data: bytes) -> None:
        if self._sent:
            await self.inner.write(data)
            return
        self._pending += data
        if delimited_count(self._pending) < 2:  # header alone: answer it, wait for the protocol
            self._fake += data
            return
        self._sent = True
        out, self._pending = self._pending, b""
        self._fake += data
        self._expect = out
        await self.inner.write(out)

    async def read(self, n: int | None = None) -> bytes:
        if self._fake:
            k = len(self._fake) if n is None else min(n, len(self._fake))
            out = bytes(self._fake[:k])
            del self._fake[:k]
            return out
        if not self._checked and self._expect:
            got = b""
            while len(got) < len(self._expect):
                chunk = await self.inner.read(len(self._expect) - len(got))
                if not chunk:
                    raise IncompleteReadError("connection closed during multistream-select")
                got += chunk
            if got != self._expect:
                raise IOException("the peer refused the security protocol (multistream-select)")
            self._checked = True
        return bytes(await self.inner.read(n))

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # get_remote_address, get_local_address, ...
        return getattr(self.inner, name)


def delimited_count(buf: bytes) -> int:
    """How many complete varint-length-prefixed messages ``buf`` holds (at most 3 looked at)."""
    count, i = 0, 0
    while i < len(buf) and count < 3:
        n, shift = 0, 0
        while True:
            if i >= len(buf) or shift > 28:
                return count
            byte = buf[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if i + n > len(buf):
            return count
        i += n
        count += 1
    return count


def select_message(protocol: str) -> bytes:
    """The dialer's whole select for ``protocol``: header and proposal, ready to go in front of
    the protocol's first message."""
    return encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(protocol.encode())


async def read_selected(stream: INetStream, protocol: str) -> bool:
    """Read the listener's echoes of :func:`select_message`: True if it took ``protocol``,
    False if it said ``na``; :class:`MultistreamError` if it did not speak multistream-select.
    The stream is then tagged with the protocol, as py-libp2p's ``new_stream`` would."""
    comm = MultiselectCommunicator(stream)
    if await comm.read() != MULTISELECT_PROTOCOL_ID:
        raise MultistreamError("not multistream-select")
    if await comm.read() != protocol:
        return False
    stream.set_protocol(TProtocol(protocol))
    return True
