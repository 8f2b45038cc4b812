"""What the commands share: the operator-error type, logging set-up, unwrapping trio's groups."""

from __future__ import annotations

import ipaddress
import logging

__all__ = ["CliError", "setup_logging", "sole", "parse_dns_server"]


class CliError(Exception):
    """An operator's problem, already worded as the one line to print after ``error:``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def setup_logging(level: str) -> None:
    from ..libp2p_logs import hold_noisy_loggers, limit_warnings, route_libp2p_logs

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # libp2p's own warnings and errors go to our log (rate-limited there); its debug chatter
    # only with --log-level DEBUG.
    route_libp2p_logs(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    # DEBUG is ours and libp2p's: not multiaddr's trace of every address it parses.
    hold_noisy_loggers()
    # Our own WARNING/ERROR records are rate-limited too (per logger and message template).
    limit_warnings(logging.getLogger().handlers)


def sole(exc: BaseException) -> BaseException:
    """The one exception inside ``exc`` when trio wrapped it in groups (raised in a nursery)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def parse_dns_server(text: str) -> tuple[str, int]:
    """``--dns-server``: ``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (a bare IPv6 address too) →
    (ip, port, 53 by default); ValueError says what is wrong. A resolver is given by its
    address: dnspython takes no name."""
    syntax = f"{text!r}: expected IP or IP:PORT ([IPv6]:PORT)"
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(syntax)
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None  # a name, an IPv4 or a bare IPv6 address
    if not host or (port_text is not None and not (port_text.isascii() and port_text.isdigit())):
        raise ValueError(syntax)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (a resolver is given by its address)") from None
    if port_text is None:
        return host, 53
    if not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: {port_text!r} is not a port (1-65535)")
    return host, int(port_text)
