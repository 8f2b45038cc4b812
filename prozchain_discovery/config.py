"""Typed configuration, loadable from TOML, with one clear error per bad field.

The shape mirrors the seed (§3.1 ``BootstrapConfig``, §3.2 ``PeerExchangeConfig``); defaults are
what a node on the public network should run with. Every section is a frozen dataclass;
:func:`load_config` maps a TOML document onto them and raises :class:`ConfigError` naming the
dotted field (``bootstrap.min_peers_for_startup``) and what was wrong.

Example ``node.toml``::

    network_id = "prozchain-testnet"
    listen = ["/ip4/0.0.0.0/tcp/4001"]  # add "/ip4/0.0.0.0/udp/4001/quic-v1" for QUIC too

    [bootstrap]
    bootstrap_nodes = ["/ip4/198.51.100.7/tcp/4001/p2p/12D3KooW..."]
    dns_seeds = ["/dnsaddr/seed.prozchain.test", "seed2.prozchain.test:4001",
                 "pzseed://<52-char base32 key>@nodes.prozchain.test"]  # signed: protocols/dns-seed.md
    enable_local_discovery = true
    min_peers_for_startup = 8
    dns_lookup_interval = 300

    [bootstrap.dns]
    nameservers = ["127.0.0.1"]
    port = 5353
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .addrs import AddressError, parse_multiaddr
from .nat.stun import parse_stun_server

__all__ = [
    "SIGNED_SEED_SCHEME",
    "is_signed_seed",
    "ConfigError",
    "DnsConfig",
    "BackoffConfig",
    "BootstrapConfig",
    "PexConfig",
    "PeerDbSettings",
    "ServerConfig",
    "NatSettings",
    "RelaySettings",
    "HolepunchSettings",
    "parse_stun_server",
    "DiscoveryConfig",
    "load_config",
    "config_from_dict",
]

DEFAULT_NETWORK_ID = "prozchain-mainnet"


SIGNED_SEED_SCHEME = "pzseed://"  # a signed DNS seed: protocols/dns-seed.md


def is_signed_seed(seed: str) -> bool:
    """``pzseed://…`` (the scheme in any case): a signed DNS seed, not a /dnsaddr or host seed."""
    return seed[: len(SIGNED_SEED_SCHEME)].lower() == SIGNED_SEED_SCHEME


class ConfigError(ValueError):
    """A configuration value is wrong. ``field`` is the dotted name, e.g. ``bootstrap.dns.port``."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"config field '{field_name}': {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class DnsConfig:
    """Resolver used for DNS seeds. Empty ``nameservers`` means the system resolver."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0

    def validate(self, prefix: str) -> None:
        for i, server in enumerate(self.nameservers):
            # dnspython takes an address or a DNS-over-HTTPS URL, not a name: refuse a name now
            # rather than fail every DNS-seed lookup later.
            if not server.startswith("https://"):
                try:
                    ipaddress.ip_address(server)
                except ValueError:
                    raise ConfigError(
                        f"{prefix}.nameservers[{i}]",
                        f"{server!r} is not an IP address (a resolver is given by its address)",
                    ) from None
        if not 0 < self.port < 65536:
            raise ConfigError(f"{prefix}.port", f"{self.port} is not a port (1-65535)")
        _positive(f"{prefix}.timeout", self.timeout)


@dataclass(frozen=True)
class BackoffConfig:
    """Per-address dial backoff: ``base + step * tries**2`` seconds, capped (go-libp2p's rule)."""

    base: float = 5.0
    step: float = 1.0
    cap: float = 300.0
    jitter: float = 0.1  # +-10% so a fleet restarted together does not re-dial in lockstep
    give_up_after: int = 10  # consecutive failures before an address is dropped for this run

    def validate(self, prefix: str) -> None:
        for name in ("base", "step", "cap"):
            _non_negative(f"{prefix}.{name}", getattr(self, name))
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"{prefix}.jitter", "must be in [0, 1)")
        if self.give_up_after < 1:
            raise ConfigError(f"{prefix}.give_up_after", "must be at least 1")


@dataclass(frozen=True)
class BootstrapConfig:
    """Seed §3.1. Addresses are multiaddr strings; bootstrap and static ones need ``/p2p/<id>``."""

    bootstrap_nodes: tuple[str, ...] = ()
    dns_seeds: tuple[str, ...] = ()
    enable_local_discovery: bool = False
    static_peers: tuple[str, ...] = ()
    min_peers_for_startup: int = 8
    dns_lookup_interval: float = 300.0
    dial_timeout: float = 5.0
    max_parallel_dials: int = 16
    request_max_peers: int = 50  # asked of a bootstrap responder
    dns_default_port: int = 4001
    check_interval: float = 5.0  # how often the cascade checks the peer count
    dns: DnsConfig = field(default_factory=DnsConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)

    def validate(self, prefix: str) -> None:
        for name in ("bootstrap_nodes", "static_peers"):
            for i, text in enumerate(getattr(self, name)):
                _full_multiaddr(f"{prefix}.{name}[{i}]", text)
        for i, seed in enumerate(self.dns_seeds):
            if not seed or " " in seed:
                raise ConfigError(f"{prefix}.dns_seeds[{i}]", f"{seed!r} is not a DNS seed")
        if self.min_peers_for_startup < 1:
            raise ConfigError(f"{prefix}.min_peers_for_startup", "must be at least 1")
        _positive(f"{prefix}.dial_timeout", self.dial_timeout)
        _positive(f"{prefix}.check_interval", self.check_interval)
        _non_negative(f"{prefix}.dns_lookup_interval", self.dns_lookup_interval)
        if not 0 < self.dns_default_port < 65536:
            raise ConfigError(f"{prefix}.dns_default_port", f"{self.dns_default_port} is not a port (1-65535)")
        if self.request_max_peers < 1:
            raise ConfigError(f"{prefix}.request_max_peers", "must be at least 1")
        if self.max_parallel_dials < 1:
            raise ConfigError(f"{prefix}.max_parallel_dials", "must be at least 1")
        self.dns.validate(f"{prefix}.dns")
        self.backoff.validate(f"{prefix}.backoff")


@dataclass(frozen=True)
class PexConfig:
    """Seed §3.2 ``PeerExchangeConfig``."""

    enabled: bool = True
    max_peers_per_exchange: int = 50  # BEP 11 sends at most 50 added peers per message
    min_peer_age: float = 60.0
    exchange_interval: float = 60.0  # BEP 11: at most one message per minute
    request_timeout: float = 10.0
    first_request_delay: float = 0.5  # after identify, before the first request to a new peer
    ignored_limit: int = 3  # RATE_LIMITED answers ignored before the requester is dropped
    # Address fetch (Bitcoin's ADDR_FETCH): while the book is thin and the node young, each round
    # also asks a few extra known peers over one-shot connections, so a joiner learns
    # ~1,000 addresses in a few rounds instead of being limited to its 8 outbound peers.
    addr_fetch_below: int = 1000
    addr_fetch_per_round: int = 12
    addr_fetch_window: float = 600.0

    def validate(self, prefix: str) -> None:
        if self.addr_fetch_per_round < 0 or self.addr_fetch_below < 0:
            raise ConfigError(f"{prefix}.addr_fetch_per_round", "must not be negative")
        if not 1 <= self.max_peers_per_exchange <= 500:
            raise ConfigError(f"{prefix}.max_peers_per_exchange", "must be 1..500")
        for name in ("min_peer_age", "exchange_interval", "first_request_delay", "addr_fetch_window"):
            _non_negative(f"{prefix}.{name}", getattr(self, name))
        _positive(f"{prefix}.request_timeout", self.request_timeout)


@dataclass(frozen=True)
class PeerDbSettings:
    """Where and how the peer database is kept, and the outbound policy built on it."""

    path: str = ""  # empty: <data_dir>/peers.sqlite; ":memory:" keeps nothing on disk
    target_outbound: int = 8
    feeler_interval: float = 120.0  # Bitcoin Core: a feeler about every 2 minutes
    flush_interval: float = 5.0
    debug_checks: bool = False

    def validate(self, prefix: str) -> None:
        if self.target_outbound < 0:
            raise ConfigError(f"{prefix}.target_outbound", "must not be negative")
        _positive(f"{prefix}.flush_interval", self.flush_interval)
        _positive(f"{prefix}.feeler_interval", self.feeler_interval)


@dataclass(frozen=True)
class NatSettings:
    """Seed §3.3: NAT classification (STUN, RFC 5780) and port mapping (NAT-PMP, UPnP IGD).

    ``stun_servers`` are ``host:port`` or ``/ip4/<ip>/udp/<port>``; none means no STUN
    classification. ``port_mapping`` asks the home gateway to forward our TCP listen port.
    """

    stun_servers: tuple[str, ...] = ()
    port_mapping: bool = False
    classify_interval: float = 1800.0  # and whenever our addresses change
    # Serve STUN binding (RFC 5389; RFC 5780 with two addresses) on this UDP port and the next,
    # so a ProzChain network needs no third-party STUN servers. 0 = off.
    serve_stun_port: int = 0
    # With no ``stun_servers``, classify with peers that serve STUN (/prozchain/stun/1.0).
    stun_from_peers: bool = True
    # AutoNAT v2 (nat/autonat.py): serve dial-backs to peers, ask peers to dial us back. An
    # address flips after ``autonat_confirmations`` distinct servers agree; confirmed ones are
    # asked again every ``autonat_reprobe_interval``. ``autonat_allow_private`` lets the server
    # dial (and the client offer) private and loopback addresses: for a network that lives on
    # one (labs, tests), never on the internet.
    autonat_server: bool = True
    autonat_client: bool = True
    autonat_confirmations: int = 3
    autonat_reprobe_interval: float = 3600.0
    autonat_dial_back_timeout: float = 10.0
    autonat_allow_private: bool = False

    def validate(self, prefix: str) -> None:
        if self.autonat_confirmations < 1:
            raise ConfigError(f"{prefix}.autonat_confirmations", "must be at least 1")
        _positive(f"{prefix}.autonat_reprobe_interval", self.autonat_reprobe_interval)
        _positive(f"{prefix}.autonat_dial_back_timeout", self.autonat_dial_back_timeout)
        for i, text in enumerate(self.stun_servers):
            try:
                parse_stun_server(text)
            except ValueError as exc:
                raise ConfigError(f"{prefix}.stun_servers[{i}]", str(exc)) from None
        _positive(f"{prefix}.classify_interval", self.classify_interval)
        if not 0 <= self.serve_stun_port < 65535:
            raise ConfigError(f"{prefix}.serve_stun_port", "must be 0 (off) or a UDP port below 65535")


RELAY_SERVE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class RelaySettings:
    """Circuit relay v2: serving as a relay (hop) and keeping reservations (autorelay).

    ``serve``: ``auto`` serves hop while the NAT component says we are publicly reachable,
    ``on`` always, ``off`` never. ``autorelay`` keeps ``reservations`` relays while we are not
    publicly reachable and advertises our ``/p2p-circuit`` addresses. The limits are
    go-libp2p's defaults (``relay.DefaultResources``): a reservation lives an hour, a relayed
    connection two minutes and 128 KiB, so a relay carries handshakes and small exchanges,
    not bulk traffic.
    """

    serve: str = "auto"
    autorelay: bool = True
    reservations: int = 2
    reservation_ttl: int = 3600
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    max_circuits_per_peer: int = 16
    circuit_duration: int = 120
    circuit_data: int = 1 << 17

    def validate(self, prefix: str) -> None:
        if self.serve not in RELAY_SERVE_MODES:
            raise ConfigError(f"{prefix}.serve", f"{self.serve!r} is not one of {', '.join(RELAY_SERVE_MODES)}")
        if not 0 <= self.reservations <= 8:
            raise ConfigError(f"{prefix}.reservations", "must be 0..8")
        for name in ("reservation_ttl", "max_reservations", "max_reservations_per_ip", "max_circuits_per_peer",
                     "circuit_duration", "circuit_data"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", "must be at least 1")


@dataclass(frozen=True)
class HolepunchSettings:
    """DCUtR hole punching over relayed connections (holepunch/): ``attempts`` CONNECT/SYNC
    rounds per relayed connection (the spec's and go-libp2p's 3)."""

    enabled: bool = True
    attempts: int = 3

    def validate(self, prefix: str) -> None:
        if not 1 <= self.attempts <= 10:
            raise ConfigError(f"{prefix}.attempts", "must be 1..10")


@dataclass(frozen=True)
class ServerConfig:
    """How this node answers others."""

    bootstrap_node: bool = False  # serve larger bootstrap answers
    max_bootstrap_answer: int = 50
    max_bootstrap_answer_as_bootstrap_node: int = 200
    request_timeout: float = 10.0  # a silent caller is dropped after this
    # Bootstrap and PEX answers over a relayed connection carry at most this many records: a
    # relay gives a connection 128 KiB and 2 minutes (go-libp2p's limits), and one record is
    # ~230 bytes, so 10 leave room for the handshakes and identify that share the budget.
    max_answer_over_relay: int = 10

    def validate(self, prefix: str) -> None:
        if self.max_bootstrap_answer < 0:
            raise ConfigError(f"{prefix}.max_bootstrap_answer", "must not be negative")
        if not 0 <= self.max_answer_over_relay <= 50:
            raise ConfigError(f"{prefix}.max_answer_over_relay", "must be 0..50")
        _positive(f"{prefix}.request_timeout", self.request_timeout)


@dataclass(frozen=True)
class DiscoveryConfig:
    network_id: str = DEFAULT_NETWORK_ID
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    data_dir: str = ""  # empty: $XDG_DATA_HOME/prozchain-discovery or ~/.local/share/...
    status_interval: float = 0.0  # seconds between status log lines; 0 = off
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    pex: PexConfig = field(default_factory=PexConfig)
    peerdb: PeerDbSettings = field(default_factory=PeerDbSettings)
    server: ServerConfig = field(default_factory=ServerConfig)
    nat: NatSettings = field(default_factory=NatSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    holepunch: HolepunchSettings = field(default_factory=HolepunchSettings)

    def validate(self) -> DiscoveryConfig:
        check_network_id(self.network_id)
        for i, text in enumerate(self.listen):
            try:
                parse_multiaddr(text)
            except AddressError as exc:
                raise ConfigError(f"listen[{i}]", str(exc)) from None
        _non_negative("status_interval", self.status_interval)
        self.bootstrap.validate("bootstrap")
        self.pex.validate("pex")
        self.peerdb.validate("peerdb")
        self.server.validate("server")
        self.nat.validate("nat")
        self.relay.validate("relay")
        self.holepunch.validate("holepunch")
        return self

    def replace(self, **changes: Any) -> DiscoveryConfig:
        return dataclasses.replace(self, **changes).validate()


NETWORK_ID_RULE = "1-64 printable ASCII characters (letters, digits, punctuation; no spaces or control characters)"


def check_network_id(network_id: str) -> None:
    """Refuse a network id that is empty, long, or not printable ASCII (it goes into logs)."""
    if not isinstance(network_id, str):
        raise ConfigError("network_id", f"expected a string, got {network_id!r}")
    if not 1 <= len(network_id) <= 64 or not all("!" <= c <= "~" for c in network_id):
        shown = ascii(network_id) if len(network_id) <= 80 else ascii(network_id[:80]) + "..."
        raise ConfigError("network_id", f"{shown} is not a network id: use {NETWORK_ID_RULE}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive number, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(name, f"must be a finite number, 0 or more, got {value}")


def _full_multiaddr(name: str, text: str) -> None:
    try:
        ma = parse_multiaddr(text)
    except AddressError as exc:
        raise ConfigError(name, str(exc)) from None
    if "/p2p/" not in str(ma):
        raise ConfigError(name, f"{text!r} has no /p2p/<peer id>; add the peer id of that node")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(name, f"expected a table, got {type(value).__name__}")
        return _build(tp, value, name)  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(name, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(name, "unsupported type")  # not used by our dataclasses
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    raise ConfigError(name, f"unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(name, f"unknown field (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(name, hints[key], value)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> DiscoveryConfig:
    cfg: DiscoveryConfig = _build(DiscoveryConfig, data)
    return cfg.validate()


def load_config(path: str | Path) -> DiscoveryConfig:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("<file>", f"{p} is not valid TOML: {exc}") from None
    return config_from_dict(data)
