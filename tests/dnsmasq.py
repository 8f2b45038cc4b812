"""A real dnsmasq on 127.0.0.1 at a free port, for DNS-seed tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.query
import pytest


def _free_port() -> int:
    # A port free for both UDP and TCP on loopback.
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def txt_line(name: str, strings: str | Sequence[str]) -> str:
    """A dnsmasq ``txt-record`` line: one TXT record of these character-strings."""
    if isinstance(strings, str):
        strings = [strings]
    return f"txt-record={name}," + ",".join(f'"{s}"' for s in strings)


@contextmanager
def dnsmasq(
    tmp: Path,
    txt: Sequence[tuple[str, str | Sequence[str]]] = (),
    hosts: Sequence[tuple[str, str]] = (),
    conf_files: Sequence[Path] = (),
    extra: Sequence[str] = (),
) -> Iterator[int]:
    """Serve ``txt`` (name, text or list of strings: one record each) and ``hosts`` (name, ip)
    records, plus the lines of ``conf_files`` (e.g. ``prozchain-discovery seed build --format
    dnsmasq`` output) and ``extra`` lines; yields the port."""
    binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if binary is None:
        pytest.skip("dnsmasq is not installed: apt-get install dnsmasq-base (make test does it as root)")
    port = _free_port()
    conf = tmp / "dnsmasq.conf"
    lines = [
        f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
        "no-poll", "user=root", f"pid-file={tmp / 'dnsmasq.pid'}", "log-facility=-",
        "local=/test/",  # authoritative for .test: unknown names get NXDOMAIN, not REFUSED
    ]
    for name, text in txt:
        lines.append(txt_line(name, text))
    lines += [f"conf-file={f}" for f in conf_files]
    lines += list(extra)
    by_name: dict[str, list[str]] = {}
    for name, ip in hosts:
        by_name.setdefault(name, []).append(ip)
    for name, ips in by_name.items():
        lines.append("host-record=" + ",".join([name, *ips]))
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "--keep-in-foreground", f"--conf-file={conf}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                q = dns.message.make_query("probe.invalid", "A")
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2)
                break
            except Exception:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"dnsmasq exited: {err}") from None
                if time.monotonic() > deadline:
                    raise
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
