# -*- test-case-name: tests.test_crypto_rfc9591 -*-
"""
Lagrange coefficients at zero over FROST identifiers, shared by both
ciphersuites.

Identifiers here are the I{x} coordinates of the shares (RFC 9591
identifiers; BIP 445 callers pass C{id + 1}).  For a signer set S and a
member i, lambda_i = prod_{j in S, j != i} x_j / (x_j - x_i) mod N.

Why two functions: a signer needs only its own coefficient (t
multiplications and one inversion, ~15 us at t = 67), while an aggregator
blaming shares or verifying them all needs every coefficient.  The batched
form shares the numerators through prefix/suffix products and pays one
inversion for all denominators (L{batch_inverse}); the denominators remain
O(t^2) multiplications, so the result is cached per signer set, which ROAST
and retries reuse.

Both raise C{ValueError} for an empty set, a duplicate, an identifier
outside 1..N-1, or C{my_id} not in C{ids}: those are the caller's
preconditions, not anyone's misbehaviour.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from frostnode.crypto.group import N, batch_inverse, scalar_inverse

#: Below this bound products of differences stay a few machine words long for
#: a whole signer set, so reducing once at the end beats reducing every step.
_SMALL = 1 << 32


def _check(ids: Sequence[int]) -> tuple[int, ...]:
    key = tuple(sorted(ids))
    if not key:
        raise ValueError("empty signer set")
    if key[0] < 1 or key[-1] >= N:
        raise ValueError("identifiers must be in 1..N-1")
    for a, b in zip(key, key[1:]):
        if a == b:
            raise ValueError(f"duplicate identifier {a}")
    return key


def _denominator(key: tuple[int, ...], xi: int, small: bool) -> int:
    d = 1
    if small:
        for xj in key:
            if xj != xi:
                d *= xj - xi
        return d % N
    for xj in key:
        if xj != xi:
            d = d * (xj - xi) % N
    return d


def lagrange_coefficient(ids: Sequence[int], my_id: int) -> int:
    """lambda_{my_id} at zero over the signer set C{ids} (RFC 9591 derive_interpolating_value)."""
    key = _check(ids)
    if my_id not in key:
        raise ValueError(f"identifier {my_id} is not in the signer set")
    small = key[-1] < _SMALL
    num = 1
    for xj in key:
        if xj != my_id:
            num *= xj
            if not small:
                num %= N
    return num % N * scalar_inverse(_denominator(key, my_id, small)) % N


@lru_cache(maxsize=256)
def _coefficients(key: tuple[int, ...]) -> tuple[int, ...]:
    t = len(key)
    # numerators prod_{j != i} x_j from prefix and suffix products: no inversion of x_i
    prefix = [1] * (t + 1)
    for i, x in enumerate(key):
        prefix[i + 1] = prefix[i] * x % N
    suffix = [1] * (t + 1)
    for i in range(t - 1, -1, -1):
        suffix[i] = suffix[i + 1] * key[i] % N
    small = key[-1] < _SMALL
    dens = [_denominator(key, x, small) for x in key]
    invs = batch_inverse(dens)
    return tuple(prefix[i] * suffix[i + 1] % N * invs[i] % N for i in range(t))


def lagrange_coefficients(ids: Sequence[int]) -> dict[int, int]:
    """Every member's lambda at zero over C{ids}, as a fresh dict (the result is cached per set)."""
    key = _check(ids)
    return dict(zip(key, _coefficients(key)))
