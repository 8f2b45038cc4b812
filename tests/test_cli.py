"""The command line: a real node process, its identity, status and a clean SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prozchain_discovery.cli import main

pytestmark = pytest.mark.network

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _start(data_dir, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    env = dict(os.environ, PROZCHAIN_DIAL_LOOPBACK_ONLY="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prozchain_discovery", "node", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--data-dir", str(data_dir), "--min-peers", "1", "--status-interval", "0.5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip()]
    return proc, lines


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_node_prints_p2p_addresses_keeps_identity_and_stops_cleanly(tmp_path):
    proc, lines = _start(tmp_path)
    try:
        first = lines[0]
        assert first.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in first
        key = tmp_path / "identity.key"
        deadline = time.monotonic() + 10
        while not (tmp_path / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "stopped cleanly" in err
    # Same data dir, same peer id.
    proc, lines = _start(tmp_path)
    try:
        assert lines[0].split("/p2p/")[1] == first.split("/p2p/")[1]
    finally:
        _stop(proc)


def test_status_command(tmp_path, capsys):
    proc, lines = _start(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert main(["status", "--data-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert lines[0].split("/p2p/")[1] in out and "network" in out
    finally:
        _stop(proc)


def test_bad_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[bootstrap]\nbootstrap_nodes = ["/ip4/1.2.3.4/tcp/1"]\n')
    assert main(["node", "--config", str(cfg), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bootstrap.bootstrap_nodes[0]" in err and "/p2p/" in err


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "node" in out and "demo" in out and "status" in out


# --- Bad input and bad state, tried from outside (issue #8 §3): one line, a non-zero exit. ---


def _run(*args: str, timeout: float = 8.0) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, expected to exit on its own."""
    env = dict(os.environ, PROZCHAIN_DIAL_LOOPBACK_ONLY="1")
    try:
        return subprocess.run([sys.executable, "-m", "prozchain_discovery", *args],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {timeout} s (stdout {exc.stdout!r}); it should have refused")


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _node(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("node", "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING", *args)


def test_listen_address_not_of_this_machine(tmp_path):
    out = _node(tmp_path, "--listen", "/ip4/203.0.113.9/tcp/4001")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "/ip4/203.0.113.9/tcp/4001" in line and "Cannot assign requested address" in line


def test_listen_port_in_use(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _node(tmp_path, "--listen", f"/ip4/127.0.0.1/tcp/{port}")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert f"/ip4/127.0.0.1/tcp/{port}" in line and "Address already in use" in line


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_listen_port_held_by_another_libp2p_listener(tmp_path):
    # py-libp2p listens with SO_REUSEPORT: a second node on the same port would silently share it.
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _node(tmp_path, "--listen", f"/ip4/127.0.0.1/tcp/{port}")
    assert out.returncode == 1 and "Address already in use" in _one_error(out.stderr)


def test_listen_transport_we_do_not_have(tmp_path):
    out = _node(tmp_path, "--listen", "/ip4/127.0.0.1/udp/4001")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "/ip4/127.0.0.1/udp/4001" in line and "/tcp/" in line


def test_listen_none_of_several_bound(tmp_path):
    out = _node(tmp_path, "--listen", "/ip4/127.0.0.1/udp/4001", "--listen", "/ip4/203.0.113.9/tcp/4001")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "/ip4/127.0.0.1/udp/4001" in line and "/ip4/203.0.113.9/tcp/4001" in line


def test_listen_one_bad_of_two_warns_and_goes_on(tmp_path):
    proc, lines = _start(tmp_path, "--listen", "/ip4/203.0.113.9/tcp/4001", "--log-level", "WARNING")
    try:
        assert lines[0].startswith("/ip4/127.0.0.1/tcp/")
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "/ip4/203.0.113.9/tcp/4001" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "Cannot assign requested address" in warnings[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "network_id, shown",
    [("", "''"), ("net\x1b[31mred", "\\x1b"), ("tab\there", "\\t"), ("x" * 65, "xxx")],
)
def test_bad_network_id_refused(tmp_path, network_id, shown):
    out = _node(tmp_path, "--listen", "/ip4/127.0.0.1/tcp/0", "--network-id", network_id)
    assert out.returncode == 2 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "--network-id" in line and "printable ASCII" in line and shown in line
    assert "\x1b" not in line and "\t" not in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["--status-interval", "-5"], "--status-interval"),
        (["--status-interval", "nan"], "--status-interval"),
        (["--status-interval", "inf"], "--status-interval"),
        (["--status-interval", "soon"], "--status-interval"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--min-peers", "0"], "--min-peers"),
        (["--metrics-listen", "9464"], "--metrics-listen"),
        (["--metrics-listen", "127.0.0.1:http"], "--metrics-listen"),
    ],
)
def test_bad_flag_is_a_usage_error(tmp_path, capsys, args, option):
    from prozchain_discovery.cli import build_parser

    with pytest.raises(SystemExit) as info:  # refused while parsing: nothing runs
        build_parser().parse_args(["node", "--data-dir", str(tmp_path), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"error: argument {option}: " in err
    assert not (tmp_path / "identity.key").exists()


def test_log_level_is_case_insensitive():
    from prozchain_discovery.cli import build_parser

    assert build_parser().parse_args(["node", "--log-level", "debug"]).log_level == "DEBUG"


@pytest.mark.parametrize("level, libp2p_level", [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)])
def test_libp2p_warnings_are_routed_not_hidden(monkeypatch, level, libp2p_level):
    from prozchain_discovery import libp2p_logs
    from prozchain_discovery.cli.common import setup_logging

    seen: list[int] = []
    monkeypatch.setattr(libp2p_logs, "route_libp2p_logs", lambda lvl, *a, **kw: seen.append(lvl))
    setup_logging(level)
    assert seen == [libp2p_level]


def test_dns_server_forms():
    from prozchain_discovery.cli import build_parser, node_config

    def dns(text: str) -> tuple[tuple[str, ...], int]:
        cfg = node_config(build_parser().parse_args(["node", "--dns-server", text]))
        return cfg.bootstrap.dns.nameservers, cfg.bootstrap.dns.port

    assert dns("127.0.0.1:5353") == (("127.0.0.1",), 5353)
    assert dns("127.0.0.1") == (("127.0.0.1",), 53)
    assert dns("[::1]:5353") == (("::1",), 5353)
    assert dns("::1") == (("::1",), 53)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("127.0.0.1:abc", "expected IP or IP:PORT"),
        ("127.0.0.1:", "expected IP or IP:PORT"),
        (":53", "expected IP or IP:PORT"),
        ("[::1]:x", "expected IP or IP:PORT"),
        ("", "expected IP or IP:PORT"),
        ("dns.google", "is not an IP address"),  # dnspython would refuse it at every lookup
        ("127.0.0.1:99999", "is not a port"),
    ],
)
def test_bad_dns_server_names_the_flag(tmp_path, value, problem):
    out = _node(tmp_path, "--listen", LOOPBACK, "--dns-server", value)
    assert out.returncode == 2 and out.stdout == ""
    line = _one_error(out.stderr)
    assert line.startswith("error: --dns-server: ") and problem in line, line
    assert "config field" not in line and "bootstrap.dns" not in line
    assert not (tmp_path / "data").exists()


def test_bad_config_file_names_the_flag(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    assert main(["node", "--config", str(missing), "--data-dir", str(tmp_path)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: --config: cannot read {missing}: "), line
    bad = tmp_path / "bad.toml"
    bad.write_text("[bootstrap.dns]\nport = 0\n")
    for extra in ([], ["--dns-server", "127.0.0.1:5353"]):  # the file's value, whatever the flags
        assert main(["node", "--config", str(bad), "--data-dir", str(tmp_path), *extra]) == 2
        line = _one_error(capsys.readouterr().err)
        assert line.startswith(f"error: --config {bad}: config field 'bootstrap.dns.port': "), line


def test_data_dir_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["node", "--listen", LOOPBACK, "--data-dir", str(f)]) == 2
    assert _one_error(capsys.readouterr().err) == f"error: --data-dir {f}: is a file, not a directory"


def test_data_dir_below_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["node", "--listen", LOOPBACK, "--data-dir", str(f / "sub")]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"--data-dir {f / 'sub'}" in line and f"{f} is a file" in line


def test_data_dir_dangling_symlink(tmp_path, capsys):
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "unmounted" / "data")
    assert main(["node", "--listen", LOOPBACK, "--data-dir", str(link)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "--data-dir" in line and "unmounted" in line and "mounted" in line
    assert link.is_symlink() and not link.exists()


def test_data_dir_cannot_be_created(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    target = parent / "data"
    if os.geteuid() == 0:  # root ignores the mode: use a place where nobody may make a directory
        target = Path("/sys/prozchain-discovery-test")
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs sysfs when run as root")
    try:
        assert main(["node", "--listen", LOOPBACK, "--data-dir", str(target)]) == 2
    finally:
        parent.chmod(0o700)
    line = _one_error(capsys.readouterr().err)
    assert f"--data-dir {target}: cannot create it: " in line


def test_key_file_is_a_directory(tmp_path, capsys):
    key = tmp_path / "key"
    key.mkdir()
    assert main(["node", "--listen", LOOPBACK, "--data-dir", str(tmp_path / "data"), "--key-file", str(key)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(key) in line and "is a directory" in line and "chmod" not in line


def test_dangling_key_symlink_is_not_replaced(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "identity.key").symlink_to(tmp_path / "vault" / "identity.key")
    out = _node(tmp_path, "--listen", "/ip4/127.0.0.1/tcp/0")
    assert out.returncode == 2 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "symbolic link" in line and "vault" in line
    assert (data / "identity.key").is_symlink() and not (tmp_path / "vault").exists()


GOOD_STATUS = {
    "peer_id": "12D3KooWx", "network_id": "n", "phase": "joined", "uptime": 3.0, "connected": 1,
    "outbound": 1, "min_peers": 1, "by_source": {"bootstrap": 1}, "peerdb": {"total": 1},
    "peers": [{"peer_id": "12D3KooWy", "source": "bootstrap", "direction": "out", "for": 2, "addr": "/ip4/1"}],
}


def test_status_text_shows_the_nat_and_hole_punching(tmp_path, capsys):
    st = {**GOOD_STATUS,
          "nat": {"nat_type": "port_restricted", "mapping": "endpoint_independent",
                  "filtering": "address_and_port_dependent", "reachability": "public",
                  "external_addrs": ["/ip4/198.51.100.100/tcp/4001"],
                  "evidence": ["port mapping pcp: /ip4/198.51.100.100/tcp/4001"], "port_mappings": []},
          "holepunch": {"peers": {
              "12D3KooWa": {"state": "start", "result": "direct", "attempts": 1, "time_to_direct_s": 0.36,
                            "remote_addr": "/ip4/203.0.113.120/tcp/4001"},
              "12D3KooWb": {"state": "not_supported", "result": "HolepunchNotSupported",
                            "reason": "our NAT is symmetric"}}}}
    (tmp_path / "status.json").write_text(json.dumps(st))
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nat        port_restricted (mapping endpoint_independent, filtering address_and_port_dependent)" in out
    assert "reachability public" in out and "external   /ip4/198.51.100.100/tcp/4001" in out
    assert "evidence   port mapping pcp" in out
    assert "12D3KooWa" in out and "direct after 1 attempt(s), 0.36 s, via /ip4/203.0.113.120/tcp/4001" in out
    assert "HolepunchNotSupported (our NAT is symmetric)" in out
    (tmp_path / "status.json").write_text(json.dumps({**GOOD_STATUS, "nat": 3}))
    assert main(["status", "--data-dir", str(tmp_path)]) == 1  # a damaged part is named, not a traceback
    assert "wrong type" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, what",
    [
        ('{"peer_id": "12D3KooWx", "netw', "not valid JSON"),
        ("", "not valid JSON"),
        ("\x00\xff garbage", "not valid JSON"),
        ("[1, 2]", "not a status object"),
        ('{"peer_id": "12D3KooWx"}', "no 'network_id' field"),
        (json.dumps({**GOOD_STATUS, "uptime": "long"}), "wrong type"),
        (json.dumps({**GOOD_STATUS, "by_source": [1]}), "wrong type"),
        (json.dumps({**GOOD_STATUS, "peers": 3}), "wrong type"),
        (json.dumps({**GOOD_STATUS, "peers": [{"peer_id": "x"}]}), "no 'source' field"),
    ],
)
def test_status_of_a_damaged_file(tmp_path, capsys, content, what):
    (tmp_path / "status.json").write_text(content, encoding="latin-1")
    assert main(["status", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    line = _one_error(captured.err)
    assert str(tmp_path / "status.json") in line and what in line and "another version" in line
    assert captured.out == ""


def test_status_json_of_a_garbled_file(tmp_path, capsys):
    (tmp_path / "status.json").write_text('{"peer_id": ')
    assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 1
    assert "not valid JSON" in _one_error(capsys.readouterr().err)


def test_status_of_a_good_file(tmp_path, capsys):
    (tmp_path / "status.json").write_text(json.dumps(GOOD_STATUS))
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    assert "12D3KooWy" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_listen_serves_prometheus(tmp_path):
    port = _free_port()
    proc, lines = _start(tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        assert "/p2p/" in lines[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert resp.status == 200 and "prozchain_discovery_" in body
    finally:
        code, err = _stop(proc)
    assert code == 0, err


def test_metrics_listen_bind_failure(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _node(tmp_path, "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics-listen", f"127.0.0.1:{port}")
    assert out.returncode == 1 and out.stdout == ""
    line = _one_error(out.stderr)
    assert "--metrics-listen" in line and f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize(
    "value, problem",
    [
        ("pzseed://abc@seed.test", "key: not 32 bytes"),
        ("pzseed://" + "a" * 52 + "@seed.test", "key: not an Ed25519 public key"),
        ("pzseed://" + "a" * 52, "expected pzseed://<key>@<domain>"),
    ],
)
def test_bad_signed_dns_seed_names_the_flag_and_the_part(tmp_path, value, problem):
    out = _node(tmp_path, "--listen", LOOPBACK, "--dns-seed", value)
    assert out.returncode == 2 and out.stdout == ""
    line = _one_error(out.stderr)
    assert line.startswith("error: --dns-seed: ") and problem in line, line
    assert not (tmp_path / "data").exists()


def test_bad_signed_dns_seed_in_the_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[bootstrap]\ndns_seeds = ["/dnsaddr/ok.test", "pzseed://xyz@seed.test"]\n')
    assert main(["node", "--config", str(bad), "--data-dir", str(tmp_path)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith(f"error: --config {bad}: config field 'bootstrap.dns_seeds[1]': "), line
