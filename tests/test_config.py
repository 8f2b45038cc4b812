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


def test_bad_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
