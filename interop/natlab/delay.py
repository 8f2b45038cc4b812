"""Hold every packet of an NFQUEUE queue for a fixed time, then accept it.

The kernel here has no ``netem``; this gives the NAT lab's core a one-way delay instead::

    iptables -A FORWARD -j NFQUEUE --queue-num 0 --queue-bypass
    python delay.py --queue 0 --delay-ms 25

Standard library only (it runs inside a network namespace with whatever Python is at hand): it
speaks the nfnetlink_queue protocol on a raw netlink socket, asks for metadata only (no payload
copy), and, as the delay is the same for every packet, releases them in arrival order with one
batch verdict ("accept every id up to N") per wake-up. The queue is set to fail open, so a burst
that overflows it is let through rather than dropped; ``--queue-bypass`` lets traffic through
when this program is not running.
"""

from __future__ import annotations

import argparse
import collections
import errno
import math
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT_BATCH = 3
NFQNL_MSG_CONFIG = 2

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs  # nfgenmsg: res_id is big endian
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_QUEUE << 8 | msg, flags, seq, 0) + body


class DelayQueue:
    """One bound NFQUEUE queue whose packets are accepted ``delay`` seconds after arrival."""

    def __init__(self, queue: int, delay: float, maxlen: int = 16384) -> None:
        self.queue = queue
        self.delay = delay
        self.held: collections.deque[tuple[float, int]] = collections.deque()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._seq = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)), check=False)
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        self._config(_attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
                     + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)), check=False)

    def _config(self, attrs: bytes, check: bool = True) -> None:
        self._seq += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK, self._seq))
        while True:
            data = self.sock.recv(65536)
            length, kind, _, seq, _ = struct.unpack_from("=IHHII", data)
            if kind == NLMSG_ERROR and seq == self._seq:
                err = -struct.unpack_from("=i", data, 16)[0]
                if err and check:
                    raise OSError(err, f"nfqueue config: {errno.errorcode.get(err, err)}")
                return

    def _receive(self, now: float) -> None:
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # ENOBUFS: the kernel dropped messages; go on
            if e.errno != errno.ENOBUFS:
                raise
            return
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET:
                a = off + 20  # nlmsghdr + nfgenmsg
                end = off + length
                while a + 4 <= end:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        self.held.append((now + self.delay, struct.unpack_from("!I", data, a + 4)[0]))
                        break
                    a += alen + (-alen % 4)
            off += length + (-length % 4)

    def _release(self, now: float) -> None:
        last = None
        while self.held and self.held[0][0] <= now:
            last = self.held.popleft()[1]
        if last is not None:
            hdr = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
            self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, self.queue, hdr))

    def run(self) -> None:
        poll = select.poll()
        poll.register(self.sock.fileno(), select.POLLIN)
        while True:
            now = time.monotonic()
            self._release(now)
            timeout = None if not self.held else max(0.0, self.held[0][0] - now) * 1000
            for _ in poll.poll(None if timeout is None else math.ceil(timeout)):
                now = time.monotonic()
                for _ in range(64):  # drain what is there, then release what is due
                    before = len(self.held)
                    self._receive(now)
                    if len(self.held) == before:
                        break

    def close(self) -> None:
        try:
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)), check=False)
        finally:
            self.sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--delay-ms", type=float, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    q = DelayQueue(args.queue, args.delay_ms / 1000)
    print(f"delay: queue {args.queue}, {args.delay_ms} ms", flush=True)
    try:
        q.run()
    except KeyboardInterrupt:
        pass
    finally:
        q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
