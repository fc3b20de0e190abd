# -*- test-case-name: tests.test_crypto_hashes -*-
"""
Hash primitives shared by both ciphersuites.

- L{tagged_hash}: BIP340's C{SHA256(SHA256(tag) || SHA256(tag) || msg)}, with
  the tag prefix cached because BIP 445 and BIP341 hash with a handful of fixed
  tags on every operation.
- L{expand_message_xmd} / L{hash_to_field}: RFC 9380 section 5, the building
  blocks of RFC 9591's H1, H3, H4 and H5 for secp256k1 (L = 48, one element).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from frostnode.crypto.group import N

_B_IN_BYTES = 32   # SHA-256 output
_S_IN_BYTES = 64   # SHA-256 block


@lru_cache(maxsize=64)
def _tag_prefix(tag: str) -> "hashlib._Hash":
    h = hashlib.sha256(tag.encode())
    digest = h.digest()
    ctx = hashlib.sha256()
    ctx.update(digest + digest)
    return ctx


def tagged_hash(tag: str, msg: bytes) -> bytes:
    ctx = _tag_prefix(tag).copy()
    ctx.update(msg)
    return ctx.digest()


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-256 (long DSTs hashed per 5.3.3)."""
    if len(dst) > 255:
        dst = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-len_in_bytes // _B_IN_BYTES)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError("expand_message_xmd: requested length too large")
    dst_prime = dst + bytes((len(dst),))
    z_pad = bytes(_S_IN_BYTES)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    b_0 = hashlib.sha256(z_pad + msg + l_i_b_str + b"\x00" + dst_prime).digest()
    b_i = hashlib.sha256(b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    b0_int = int.from_bytes(b_0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(b_i, "big")).to_bytes(_B_IN_BYTES, "big")
        b_i = hashlib.sha256(mixed + bytes((i,)) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:len_in_bytes]


def hash_to_field(msg: bytes, dst: bytes) -> int:
    """One scalar mod N from 48 uniform bytes (RFC 9380 hash_to_field, m=1, L=48)."""
    return int.from_bytes(expand_message_xmd(msg, dst, 48), "big") % N
