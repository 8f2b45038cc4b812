from __future__ import annotations

import pytest

from prozchain_discovery.config import ConfigError, DiscoveryConfig, config_from_dict, load_config

PID = "12D3KooWNrEDrVTS69UooPtdbnC6ewWMFhvwa3Eo8tVyYt3yN2Xj"


def test_defaults_are_valid():
    cfg = DiscoveryConfig().validate()
    assert cfg.bootstrap.min_peers_for_startup == 8
    assert cfg.pex.max_peers_per_exchange == 50


def test_toml(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text(f'''
network_id = "testnet"
[bootstrap]
bootstrap_nodes = ["/ip4/127.0.0.1/tcp/4001/p2p/{PID}"]
dns_seeds = ["/dnsaddr/seed.test"]
min_peers_for_startup = 3
dns_lookup_interval = 60
[bootstrap.dns]
nameservers = ["127.0.0.1"]
port = 5353
[pex]
exchange_interval = 30
''')
    cfg = load_config(p)
    assert cfg.network_id == "testnet"
    assert cfg.bootstrap.dns.port == 5353
    assert cfg.bootstrap.dns_lookup_interval == 60.0
    assert cfg.pex.exchange_interval == 30.0


@pytest.mark.parametrize(
    "data, field",
    [
        ({"bootstrap": {"min_peers_for_startup": "eight"}}, "bootstrap.min_peers_for_startup"),
        ({"bootstrap": {"min_peers_for_startup": 0}}, "bootstrap.min_peers_for_startup"),
        ({"bootstrap": {"bootstrap_nodes": ["/ip4/1.2.3.4/tcp/1"]}}, "bootstrap.bootstrap_nodes[0]"),
        ({"bootstrap": {"bootstrap_nodes": ["not an addr"]}}, "bootstrap.bootstrap_nodes[0]"),
        ({"bootstrap": {"dns": {"port": 70000}}}, "bootstrap.dns.port"),
        ({"bootstrap": {"dns": {"nameservers": ["127.0.0.1", "dns.google"]}}}, "bootstrap.dns.nameservers[1]"),
        ({"bootstrap": {"enable_local_discovery": "yes"}}, "bootstrap.enable_local_discovery"),
        ({"pex": {"max_peers_per_exchange": 0}}, "pex.max_peers_per_exchange"),
        ({"pex": {"colour": 1}}, "pex.colour"),
        ({"listen": "/ip4/0.0.0.0/tcp/1"}, "listen"),
        ({"network_id": ""}, "network_id"),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_nameservers_are_addresses_or_doh_urls():
    dns = {"nameservers": ["127.0.0.1", "::1", "https://dns.example/dns-query"]}
    assert config_from_dict({"bootstrap": {"dns": dns}}).bootstrap.dns.nameservers[2].startswith("https://")


def test_bad_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


@pytest.mark.parametrize(
    "network_id",
    ["", "x" * 65, "net\x1b[31mred", "tab\there", "with space", "nul\x00", "caf\u00e9", "bidi\u202egnp", "new\nline"],
)
def test_network_id_must_be_printable_ascii(network_id):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"network_id": network_id})
    assert info.value.field == "network_id"
    assert "printable ASCII" in info.value.problem
    assert all(0x20 <= ord(c) < 0x7F for c in str(info.value)), "the message itself must be safe to log"


@pytest.mark.parametrize("network_id", ["a", "prozchain-testnet", "x" * 64, "!~{}[]:/.@"])
def test_network_id_accepted(network_id):
    assert config_from_dict({"network_id": network_id}).network_id == network_id


def test_network_id_checked_on_replace():
    with pytest.raises(ConfigError, match="network_id"):
        DiscoveryConfig().replace(network_id="")
    with pytest.raises(ConfigError, match="network_id"):
        DiscoveryConfig(network_id="a\tb").validate()


@pytest.mark.parametrize("value", [-5.0, float("nan"), float("inf"), float("-inf")])
def test_status_interval_finite_and_not_negative(value):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"status_interval": value})
    assert info.value.field == "status_interval"


def test_status_interval_zero_is_off_and_allowed():
    assert config_from_dict({"status_interval": 0}).status_interval == 0.0


@pytest.mark.parametrize(
    "data, field",
    [
        ({"bootstrap": {"dial_timeout": float("inf")}}, "bootstrap.dial_timeout"),
        ({"bootstrap": {"dns_lookup_interval": float("nan")}}, "bootstrap.dns_lookup_interval"),
        ({"bootstrap": {"dns_lookup_interval": float("inf")}}, "bootstrap.dns_lookup_interval"),
        ({"bootstrap": {"check_interval": float("nan")}}, "bootstrap.check_interval"),
        ({"bootstrap": {"dns_default_port": 0}}, "bootstrap.dns_default_port"),
        ({"bootstrap": {"request_max_peers": 0}}, "bootstrap.request_max_peers"),
        ({"bootstrap": {"dns": {"timeout": float("inf")}}}, "bootstrap.dns.timeout"),
        ({"bootstrap": {"backoff": {"base": float("nan")}}}, "bootstrap.backoff.base"),
        ({"bootstrap": {"backoff": {"cap": float("inf")}}}, "bootstrap.backoff.cap"),
        ({"bootstrap": {"backoff": {"jitter": float("nan")}}}, "bootstrap.backoff.jitter"),
        ({"pex": {"min_peer_age": float("nan")}}, "pex.min_peer_age"),
        ({"pex": {"exchange_interval": float("-inf")}}, "pex.exchange_interval"),
        ({"pex": {"addr_fetch_window": float("nan")}}, "pex.addr_fetch_window"),
        ({"pex": {"request_timeout": float("inf")}}, "pex.request_timeout"),
        ({"peerdb": {"flush_interval": float("nan")}}, "peerdb.flush_interval"),
        ({"peerdb": {"feeler_interval": 0}}, "peerdb.feeler_interval"),
        ({"server": {"request_timeout": float("nan")}}, "server.request_timeout"),
    ],
)
def test_non_finite_numbers_are_refused(data, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == field


def test_toml_nan_and_inf_are_refused(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text("status_interval = nan\n")
    with pytest.raises(ConfigError, match="status_interval"):
        load_config(p)
    p.write_text("[pex]\nexchange_interval = inf\n")
    with pytest.raises(ConfigError, match="pex.exchange_interval"):
        load_config(p)
    p.write_text('network_id = "a\\u001b[2Jb"\n')
    with pytest.raises(ConfigError, match="network_id"):
        load_config(p)
