"""Listen addresses: what this node can listen on, checked before and after the host starts."""

from __future__ import annotations

import socket

import pytest

from prozchain_discovery import listen
from prozchain_discovery.cli import main
from prozchain_discovery.listen import check_listen_addrs, listen_problem, not_listening


@pytest.mark.parametrize("addr", ["/ip4/127.0.0.1/tcp/0", "/ip4/0.0.0.0/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"])
def test_usable(addr):
    assert listen_problem(addr) is None


def test_ipv6_loopback_usable_when_the_machine_has_it():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert listen_problem("/ip6/::1/tcp/0") is None


@pytest.mark.parametrize(
    "addr, words",
    [
        ("/ip4/127.0.0.1/udp/4001", "not a transport"),
        ("/ip4/127.0.0.1/udp/4001/quic", "draft-29"),
        ("/ip4/127.0.0.1/udp/4001/quic-v1/webtransport", "not a transport"),
        ("/ip4/127.0.0.1/tcp/4001/ws", "not a transport"),
        ("/dns4/localhost/tcp/4001", "not a transport"),
        ("/ip4/127.0.0.1", "not a transport"),
        ("not an address", "not a valid multiaddr"),
        ("/ip4/203.0.113.9/tcp/4001", "not an address of this machine"),
    ],
)
def test_refused_with_a_reason(addr, words):
    problem = listen_problem(addr)
    assert problem is not None and words in problem and "\n" not in problem


def test_port_in_use_names_the_errno():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        problem = listen_problem(f"/ip4/127.0.0.1/tcp/{port}")
    assert problem is not None and "[Errno" in problem and "Address already in use" in problem and str(port) in problem


def test_check_splits_good_from_bad():
    ok, failed = check_listen_addrs(["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/1"])
    assert ok == ["/ip4/127.0.0.1/tcp/0"]
    assert [a for a, _ in failed] == ["/ip4/127.0.0.1/udp/1"]


class _Net:
    def __init__(self, listeners: dict[str, object]) -> None:
        self.listeners = listeners


class _Host:
    def __init__(self, listeners: dict[str, object]) -> None:
        self.net = _Net(listeners)

    def get_network(self) -> _Net:
        return self.net


def test_not_listening_compares_the_swarm_listeners():
    host = _Host({"/ip4/127.0.0.1/tcp/0": object()})
    assert not_listening(host, ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/9"]) == ["/ip4/127.0.0.1/tcp/9"]


@pytest.mark.network
def test_cli_exits_when_the_host_listens_nowhere(tmp_path, capsys, monkeypatch):
    # The check before the start passed, but the host came up without a listener (a port taken
    # in between): the node stops with one line rather than running unreachable.
    monkeypatch.setattr(listen, "not_listening", lambda host, addrs: list(addrs))
    assert main(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on /ip4/127.0.0.1/tcp/0"), captured.err
    assert captured.out == ""
