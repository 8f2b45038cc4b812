"""``pzseed://<base32 Ed25519 public key>@<domain>`` (protocols/dns-seed.md §2).

The key is the *raw* 32-byte Ed25519 public key, base32 (RFC 4648 alphabet, lowercase, no
padding: 52 characters). Parsing is strict: one encoding per key (the four unused bits of the
last character must be zero), the key must be a valid curve point, the domain a plain DNS name.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import PublicKey
from nacl.bindings import crypto_core_ed25519_is_valid_point

from ..config import SIGNED_SEED_SCHEME, is_signed_seed

__all__ = [
    "SCHEME",
    "KEY_BYTES",
    "MAX_DOMAIN_CHARS",
    "SeedUrl",
    "SeedUrlError",
    "UrlProblem",
    "parse_url",
    "b32encode",
    "b32decode",
    "normalize_domain",
]

SCHEME = SIGNED_SEED_SCHEME
KEY_BYTES = 32
MAX_DOMAIN_CHARS = 128  # keeps every tree name (52-char label + domain) far below 253
_B32 = re.compile(r"[a-z2-7]+")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class UrlProblem(enum.Enum):
    SCHEME = "scheme"
    KEY = "key"
    DOMAIN = "domain"


class SeedUrlError(ValueError):
    """A ``pzseed://`` URL that cannot be used; ``problem`` says which part."""

    def __init__(self, problem: UrlProblem, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem


def b32encode(data: bytes) -> str:
    """Lowercase RFC 4648 base32 without padding (DNS names are case-insensitive)."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str, length: int) -> bytes:
    """Strict inverse of :func:`b32encode` for exactly ``length`` bytes; ValueError if not."""
    if len(text) != (length * 8 + 4) // 5 or not _B32.fullmatch(text):
        raise ValueError(f"not {length} bytes of lowercase unpadded base32")
    data = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    if len(data) != length or b32encode(data) != text:
        raise ValueError("non-canonical base32")
    return data


def normalize_domain(domain: str) -> str:
    """Lowercase, no trailing dot, 1..128 characters of LDH/underscore labels; else ValueError."""
    name = domain.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_DOMAIN_CHARS:
        raise ValueError(f"a domain of 1..{MAX_DOMAIN_CHARS} characters is needed")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"not a DNS name: {domain!r}")
    return name


@dataclass(frozen=True, slots=True)
class SeedUrl:
    """A seed: the operator's raw Ed25519 public key and the domain of the tree's root."""

    public_key: bytes
    domain: str

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_BYTES or not crypto_core_ed25519_is_valid_point(self.public_key):
            raise SeedUrlError(UrlProblem.KEY, "not an Ed25519 public key")
        try:
            normalize_domain(self.domain)
        except ValueError as exc:
            raise SeedUrlError(UrlProblem.DOMAIN, str(exc)) from None
        if normalize_domain(self.domain) != self.domain:
            object.__setattr__(self, "domain", normalize_domain(self.domain))

    @classmethod
    def for_key(cls, key: PublicKey, domain: str) -> SeedUrl:
        """The URL of a tree signed by a libp2p Ed25519 key (e.g. a node's identity key)."""
        if not isinstance(key, Ed25519PublicKey):
            raise SeedUrlError(UrlProblem.KEY, f"an Ed25519 key is needed, not {key.get_type().name}")
        return cls(key.to_bytes(), domain)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_bytes(self.public_key)

    def __str__(self) -> str:
        return f"{SCHEME}{b32encode(self.public_key)}@{self.domain}"


def parse_url(text: str) -> SeedUrl:
    """Parse ``pzseed://<key>@<domain>``; :class:`SeedUrlError` names the part that is wrong.

    The scheme and the key are matched case-insensitively (an operator may paste the key in
    upper case); the canonical form, :func:`str`, is lowercase.
    """
    if not isinstance(text, str) or not is_signed_seed(text):
        raise SeedUrlError(UrlProblem.SCHEME, f"expected {SCHEME}<key>@<domain>")
    rest = text[len(SCHEME):]
    key_text, at, domain = rest.partition("@")
    if not at:
        raise SeedUrlError(UrlProblem.SCHEME, f"expected {SCHEME}<key>@<domain>")
    try:
        key = b32decode(key_text.lower(), KEY_BYTES)
    except ValueError as exc:
        raise SeedUrlError(UrlProblem.KEY, str(exc)) from None
    return SeedUrl(key, domain)
