"""The signed TXT tree of a DNS seed (protocols/dns-seed.md §3-§5): build, encode, parse.

Three kinds of entry, each one TXT record whose strings are concatenated into the entry text:

* root, at ``<domain>``: ``pzseed-root:v1 h=<top> seq=<n> sig=<sig>``;
* branch, at ``<base32 hash>.<domain>``: ``pzseed-branch:<hash>,<hash>,...``;
* leaf, at ``<base32 hash>.<domain>``: ``pzseed-leaf:<base64url signed peer record envelope>``.

A child's hash is SHA-256 of its entry text, whole (32 bytes, no truncation: §5 says why);
in TXT data it is written base64url (43 characters), in a name base32 (52 characters, because
names are case-insensitive). Every parser checks sizes before decoding anything and raises
:class:`SeedError` with a :class:`SeedRejection` reason; nothing else escapes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import PrivateKey
from libp2p.peer.id import ID

from ..records import RecordError, RecordRejection, VerifiedRecord, verify_record
from .url import SeedUrl, b32encode, normalize_domain

__all__ = [
    "ROOT_PREFIX",
    "BRANCH_PREFIX",
    "LEAF_PREFIX",
    "HASH_BYTES",
    "MAX_STRING",
    "MAX_STRINGS",
    "MAX_ENTRY_TEXT",
    "MAX_CHILDREN",
    "SIGNING_DOMAIN",
    "SeedRejection",
    "SeedError",
    "Root",
    "Branch",
    "Leaf",
    "SeedTree",
    "entry_hash",
    "hash_name",
    "join_txt",
    "split_txt",
    "root_signing_bytes",
    "sign_root",
    "encode_root",
    "parse_root",
    "verify_root",
    "encode_branch",
    "encode_leaf",
    "parse_entry",
    "verify_leaf",
    "entry_budget",
    "children_per_branch",
    "answer_bytes",
    "build_tree",
]

ROOT_PREFIX = "pzseed-root:v1 "
BRANCH_PREFIX = "pzseed-branch:"
LEAF_PREFIX = "pzseed-leaf:"
HASH_BYTES = 32
HASH_TEXT = 43  # base64url of 32 bytes, unpadded
SIG_TEXT = 86  # base64url of a 64-byte Ed25519 signature
MAX_STRING = 255  # one TXT character-string
MAX_ENTRY_TEXT = 1000  # every entry; with a <=128-char domain the answer fits 1232 bytes (§4)
MAX_STRINGS = 8  # a builder cuts every 255 characters (4 strings); other tools may cut shorter
MAX_CHILDREN = (MAX_ENTRY_TEXT - len(BRANCH_PREFIX) + 1) // (HASH_TEXT + 1)  # 22
MAX_SEQ = 2**64 - 1
# RFC 0003's signing-buffer layout (uvarint-length-prefixed domain, type, payload) under a
# domain of our own: a root signature can never be an envelope signature in another domain.
SIGNING_DOMAIN = b"prozchain-dns-seed"
SIGNING_TYPE = b"pzseed-root:v1"

_ROOT_RE = re.compile(r"pzseed-root:v1 h=([A-Za-z0-9_-]{43}) seq=(0|[1-9][0-9]{0,19}) sig=([A-Za-z0-9_-]{86})")
_B64 = re.compile(r"[A-Za-z0-9_-]*")


class SeedRejection(enum.Enum):
    BAD_SIGNATURE = "bad_signature"  # root signature does not verify with the URL's key
    HASH_MISMATCH = "hash_mismatch"  # no TXT record at a hash name hashes to that name
    OVERSIZED = "oversized"  # a string > 255, an entry > 1000 characters, too many records
    BAD_ENCODING = "bad_encoding"  # not ASCII, unknown prefix, bad base64/base32, bad syntax
    TOO_DEEP = "too_deep"  # more hash links from the root than max_depth
    TOO_WIDE = "too_wide"  # a branch with more children than max_children
    LOOP = "loop"  # a hash met twice in one tree
    ROLLBACK = "rollback"  # root seq lower than the one remembered
    SEQ_REUSED = "seq_reused"  # root seq equal to the remembered one, another tree
    BAD_RECORD = "bad_record"  # a leaf whose signed peer record fails records.verify_record
    NO_ROOT = "no_root"  # no pzseed-root TXT record at the domain
    UNAVAILABLE = "unavailable"  # the lookup failed (NXDOMAIN, timeout...): withheld, not forged
    LIMIT = "limit"  # a per-sync bound (leaves, queries, bytes) was reached


class SeedError(ValueError):
    """An entry was refused; ``reason`` says why (for metrics and ``seed verify``)."""

    def __init__(self, reason: SeedRejection, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Root:
    top: bytes  # hash of the top entry
    seq: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Branch:
    children: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Leaf:
    envelope: bytes  # decoded, not verified yet: see verify_leaf


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """Strict unpadded base64url: alphabet checked, one encoding per value."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise SeedError(SeedRejection.BAD_ENCODING, "not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise SeedError(SeedRejection.BAD_ENCODING, "non-canonical base64url")
    return data


def entry_hash(text: str) -> bytes:
    """SHA-256 of the whole entry text (ASCII), untruncated."""
    return hashlib.sha256(text.encode("ascii")).digest()


def hash_name(digest: bytes, domain: str) -> str:
    """The name of the entry with this hash: ``<base32 hash>.<domain>`` (52-char label)."""
    return f"{b32encode(digest)}.{domain}"


def split_txt(text: str) -> list[str]:
    """An entry text as TXT character-strings of at most 255 characters."""
    if not text:
        return [""]
    return [text[i:i + MAX_STRING] for i in range(0, len(text), MAX_STRING)]


def join_txt(strings: Sequence[bytes | str], max_text: int = MAX_ENTRY_TEXT) -> str:
    """One TXT record's strings concatenated into the entry text, bounds checked first.

    The number of strings and each string's length are checked before anything is joined or
    decoded; the text must be printable ASCII.
    """
    if not isinstance(strings, (list, tuple)):
        raise SeedError(SeedRejection.BAD_ENCODING, "a TXT record is a sequence of strings")
    if len(strings) > MAX_STRINGS:
        raise SeedError(SeedRejection.OVERSIZED, f"{len(strings)} strings")
    total = 0
    for s in strings:
        if not isinstance(s, (bytes, str)):
            raise SeedError(SeedRejection.BAD_ENCODING, "a TXT string is bytes or str")
        if len(s) > MAX_STRING:
            raise SeedError(SeedRejection.OVERSIZED, f"a {len(s)}-character string")
        total += len(s)
    if total > max_text:
        raise SeedError(SeedRejection.OVERSIZED, f"{total} characters > {max_text}")
    parts: list[str] = []
    for s in strings:
        if isinstance(s, bytes):
            try:
                s = s.decode("ascii")
            except UnicodeDecodeError:
                raise SeedError(SeedRejection.BAD_ENCODING, "not ASCII") from None
        if not s.isascii() or not s.isprintable():
            raise SeedError(SeedRejection.BAD_ENCODING, "not printable ASCII")
        parts.append(s)
    return "".join(parts)


# ---- root -------------------------------------------------------------------------------------

def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def root_signing_bytes(domain: str, top: bytes, seq: int) -> bytes:
    """The exact bytes the operator signs (§3.1)::

        uvarint(18) "prozchain-dns-seed" uvarint(14) "pzseed-root:v1" uvarint(len(P)) P
        P = uvarint(len(domain)) domain top(32) seq(uint64 big-endian)

    ``domain`` lowercase ASCII without the trailing dot: a root signed for one domain does not
    verify at another domain served with the same key.
    """
    dom = normalize_domain(domain).encode("ascii")
    payload = _uvarint(len(dom)) + dom + top + seq.to_bytes(8, "big")
    return b"".join(_uvarint(len(p)) + p for p in (SIGNING_DOMAIN, SIGNING_TYPE, payload))


def sign_root(key: PrivateKey, domain: str, top: bytes, seq: int) -> Root:
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError("a seed is signed with an Ed25519 key")
    if len(top) != HASH_BYTES or not 0 <= seq <= MAX_SEQ:
        raise ValueError("bad top hash or seq")
    return Root(top, seq, key.sign(root_signing_bytes(domain, top, seq)))


def encode_root(root: Root) -> str:
    return f"{ROOT_PREFIX}h={_b64encode(root.top)} seq={root.seq} sig={_b64encode(root.signature)}"


def parse_root(text: str) -> Root:
    """Syntax only (the signature is checked by :func:`verify_root`)."""
    if len(text) > MAX_STRING:
        raise SeedError(SeedRejection.OVERSIZED, f"root of {len(text)} characters")
    m = _ROOT_RE.fullmatch(text)
    if m is None:
        raise SeedError(SeedRejection.BAD_ENCODING, "not a pzseed-root:v1 record")
    seq = int(m.group(2))
    if seq > MAX_SEQ:
        raise SeedError(SeedRejection.BAD_ENCODING, "seq beyond 64 bits")
    return Root(_b64decode(m.group(1)), seq, _b64decode(m.group(3)))


def verify_root(root: Root, url: SeedUrl) -> None:
    key: Ed25519PublicKey = url.verifier()
    if not key.verify(root_signing_bytes(url.domain, root.top, root.seq), root.signature):
        raise SeedError(SeedRejection.BAD_SIGNATURE, f"root seq {root.seq}")


# ---- branches and leaves ----------------------------------------------------------------------

def encode_branch(children: Sequence[bytes]) -> str:
    return BRANCH_PREFIX + ",".join(_b64encode(c) for c in children)


def encode_leaf(envelope: bytes) -> str:
    return LEAF_PREFIX + _b64encode(envelope)


def parse_entry(text: str, *, max_children: int = MAX_CHILDREN) -> Branch | Leaf:
    """A branch or a leaf entry's syntax; leaves are verified by :func:`verify_leaf`."""
    if len(text) > MAX_ENTRY_TEXT:
        raise SeedError(SeedRejection.OVERSIZED, f"{len(text)} characters")
    if text.startswith(BRANCH_PREFIX):
        body = text[len(BRANCH_PREFIX):]
        if not body:
            return Branch(())
        # Count before decoding: a branch too wide is refused without building its list.
        if body.count(",") + 1 > max_children:
            raise SeedError(SeedRejection.TOO_WIDE, f"{body.count(',') + 1} children > {max_children}")
        parts = body.split(",")
        if any(len(p) != HASH_TEXT for p in parts):
            raise SeedError(SeedRejection.BAD_ENCODING, "a child hash is not 43 characters")
        children = tuple(_b64decode(p) for p in parts)
        if len(set(children)) != len(children):
            raise SeedError(SeedRejection.LOOP, "a child listed twice")
        return Branch(children)
    if text.startswith(LEAF_PREFIX):
        data = _b64decode(text[len(LEAF_PREFIX):])
        if not data:
            raise SeedError(SeedRejection.BAD_ENCODING, "empty leaf")
        return Leaf(data)
    raise SeedError(SeedRejection.BAD_ENCODING, "neither pzseed-branch: nor pzseed-leaf:")


def verify_leaf(leaf: Leaf, *, local_peer_id: ID | None = None) -> VerifiedRecord:
    """The leaf's envelope verified exactly as PEX verifies records (records.verify_record).

    Raises :class:`SeedError` ``bad_record`` whose ``detail`` is the record's own rejection
    reason; ``self`` (our own record) is passed through as :class:`RecordError` so the caller
    can skip it without counting it as an attack.
    """
    try:
        return verify_record(leaf.envelope, local_peer_id=local_peer_id)
    except RecordError as exc:
        if exc.reason is RecordRejection.SELF:
            raise
        raise SeedError(SeedRejection.BAD_RECORD, exc.reason.value) from None


# ---- sizes (§4) -------------------------------------------------------------------------------

HEADER = 12
QUESTION_TAIL = 4  # QTYPE, QCLASS
RR_FIXED = 12  # compressed owner name (2) + TYPE, CLASS, TTL, RDLENGTH
OPT_RR = 11
COOKIE_MARGIN = 44  # a DNS COOKIE option in the answer's OPT (RFC 7873: 4 + 8 + up to 32)


def _qname_wire(domain: str) -> int:
    return 1 + 52 + len(domain) + 2  # hash label, the domain's labels, the root label


def answer_bytes(domain: str, text_len: int, *, edns: bool = True) -> int:
    """Size of the DNS answer carrying one entry of ``text_len`` characters at a hash name."""
    strings = max(1, math.ceil(text_len / MAX_STRING))
    extra = OPT_RR + COOKIE_MARGIN if edns else 0
    return HEADER + _qname_wire(domain) + QUESTION_TAIL + RR_FIXED + text_len + strings + extra


def entry_budget(domain: str, udp_size: int = 1232) -> int:
    """The longest entry text whose answer fits ``udp_size`` (512: no EDNS), capped at 1000."""
    edns = udp_size > 512
    text = MAX_ENTRY_TEXT
    while text > 0 and answer_bytes(domain, text, edns=edns) > udp_size:
        text -= 1
    return text


def children_per_branch(budget: int) -> int:
    return max(0, min(MAX_CHILDREN, (budget - len(BRANCH_PREFIX) + 1) // (HASH_TEXT + 1)))


# ---- building ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedTree:
    """A built tree: ``zone`` maps each name to its TXT record's strings."""

    url: SeedUrl
    root: Root
    zone: dict[str, list[str]]
    leaves: tuple[VerifiedRecord, ...]
    depth: int  # hash links from the root to the deepest leaf
    fanout: int


def _chunks(items: list[bytes], groups: int) -> Iterable[list[bytes]]:
    """``items`` in ``groups`` consecutive chunks whose sizes differ by at most one."""
    q, r = divmod(len(items), groups)
    start = 0
    for i in range(groups):
        end = start + q + (1 if i < r else 0)
        yield items[start:end]
        start = end


def build_tree(
    envelopes: Iterable[bytes],
    key: PrivateKey,
    domain: str,
    seq: int,
    *,
    udp_size: int = 1232,
    fanout: int | None = None,
    max_entry_text: int | None = None,
) -> SeedTree:
    """A seed tree of these signed peer records, signed with ``key`` at sequence ``seq``.

    Every record is verified first (``bad_record``: an operator does not publish what a client
    would refuse); one record per peer, the highest seq; leaves whose answer would not fit
    ``udp_size`` are refused (``oversized``). The tree is balanced: each level split into
    groups whose sizes differ by at most one, so a random walk meets no thin subtree; leaves
    in peer-id order, so a peer's new record changes its path only. ``max_entry_text`` caps
    an entry below what ``udp_size`` allows (a zone format with short lines: dnsmasq).
    """
    domain = normalize_domain(domain)
    url = SeedUrl.for_key(key.get_public_key(), domain)
    budget = entry_budget(domain, udp_size)
    if max_entry_text is not None:
        budget = min(budget, max_entry_text)
    width = fanout if fanout is not None else children_per_branch(budget)
    if width < 2:
        raise ValueError(f"a {udp_size}-byte answer at {domain} leaves room for {width} children")
    best: dict[object, VerifiedRecord] = {}
    for env in envelopes:
        try:
            rec = verify_record(env)
        except RecordError as exc:
            raise SeedError(SeedRejection.BAD_RECORD, exc.reason.value) from None
        prev = best.get(rec.peer_id)
        if prev is None or rec.seq > prev.seq:
            best[rec.peer_id] = rec
    zone: dict[str, list[str]] = {}

    def put(text: str) -> bytes:
        if len(text) > budget:
            raise SeedError(SeedRejection.OVERSIZED, f"an entry of {len(text)} characters > {budget}")
        digest = entry_hash(text)
        zone[hash_name(digest, domain)] = split_txt(text)
        return digest

    # Leaves in peer-id order, branches in the order of their children: a listed peer's new
    # record changes only its own path, so a client re-syncing asks depth + 1 names.
    ordered = sorted(best.values(), key=lambda r: r.peer_id.to_bytes())
    level = [put(encode_leaf(r.envelope_bytes)) for r in ordered]
    depth = 1
    if not level:
        level = [put(encode_branch([]))]
    while len(level) > 1:
        groups = math.ceil(len(level) / width)
        level = [put(encode_branch(chunk)) for chunk in _chunks(level, groups)]
        depth += 1
    root = sign_root(key, domain, level[0], seq)
    zone[domain] = split_txt(encode_root(root))
    return SeedTree(url, root, zone, tuple(best.values()), depth, width)
