"""What the commands share: the operator-error type, logging set-up, unwrapping trio's groups."""

from __future__ import annotations

import logging

__all__ = ["CliError", "setup_logging", "sole"]


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
