# -*- test-case-name: tests.test_store_log -*-
"""
An incremental, order-independent hash of a set of 32-byte ids: LtHash.

The log's digest must not depend on the order records arrived in, must be
cheap to update on every insert and removal, and must stay collision
resistant when clients choose record contents.  Candidates:

- XOR of SHA-256(id): linear over GF(2).  From about 257 chosen records,
  Gaussian elimination finds a subset with any target digest, so a client
  could make two nodes holding different sets report the same digest.
- Sum of SHA-256(id) modulo 2^256 (AdHash): Wagner's generalised birthday
  attack finds collisions far below 2^128 work.
- MuHash over a 3072-bit prime (Bitcoin Core's UTXO set hash): sound, but a
  3072-bit modular multiplication costs ~20 us in Python per record, the
  largest single cost of an insert.
- B{LtHash} (Bellare and Micciancio 1997, with the parameters of Lewi et al.,
  "Securing Update Propagation with Homomorphic Hashing", 2019, used by
  Facebook's folly and Solana's account set hash): each id expands (SHAKE-256,
  domain-separated) to 1024 lanes of 16 bits; the set's hash is the lane-wise
  sum modulo 2^16.  Collision resistance reduces to the short integer
  solution problem, about 200 bits of security for these parameters, and an
  update is an addition.

LtHash, like the others, hashes a I{multiset}.  That is fine here: the log
adds an id at most once while it holds it (inserts are idempotent) and
subtracts it exactly when it lets the record go, so the multiset is the set
of held ids.

Representation: the 1024 lanes are kept in 32-bit slots of one Python int
(lane i in bits 32i..32i+15), so summing up to 65535 elements needs no
carry handling and one C{&} reduces every lane at once.  The state is stored
as those 4096 bytes, little-endian.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

LANES = 1024
_LANE_BYTES = 2
_SLOT_BYTES = 4
STATE_BYTES = LANES * _SLOT_BYTES
_TAG = b"frostnode/log-set-hash/v1"
_MASK = int.from_bytes(b"\xff\xff\x00\x00" * LANES, "little")
_BORROW = int.from_bytes(b"\x00\x00\x01\x00" * LANES, "little")  # 2^16 in every slot
#: The hash of the empty set (all lanes zero).
EMPTY = bytes(STATE_BYTES)
_MAX_TERMS = 65535


def element(item: bytes) -> int:
    """The lanes of one id, in slot form."""
    lanes = hashlib.shake_256(_TAG + item).digest(LANES * _LANE_BYTES)
    slots = bytearray(STATE_BYTES)
    slots[0::4] = lanes[0::2]
    slots[1::4] = lanes[1::2]
    return int.from_bytes(slots, "little")


def _sum(items: list[bytes]) -> int:
    total = 0
    for i in range(0, len(items), _MAX_TERMS):
        part = 0
        for item in items[i:i + _MAX_TERMS]:
            part += element(item)
        total = (total + (part & _MASK)) & _MASK
    return total


def update(state: bytes, added: Iterable[bytes] = (), removed: Iterable[bytes] = ()) -> bytes:
    """C{state} with the ids in C{added} put in and those in C{removed} taken out."""
    if len(state) != STATE_BYTES:
        raise ValueError(f"set hash state must be {STATE_BYTES} bytes, not {len(state)}")
    value = int.from_bytes(state, "little")
    if value & ~_MASK:
        raise ValueError("set hash state has bits outside its lanes")
    value = (value + _sum(list(added))) & _MASK
    minus = _sum(list(removed))
    if minus:
        # every lane of value + 2^16 - minus lies in (0, 2^17): no borrow crosses a slot
        value = (value + _BORROW - minus) & _MASK
    return value.to_bytes(STATE_BYTES, "little")


def digest(state: bytes) -> bytes:
    """A 32-byte commitment to the state, for reports and comparisons."""
    return hashlib.sha256(_TAG + state).digest()
