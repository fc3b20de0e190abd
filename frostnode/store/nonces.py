# -*- test-case-name: tests.test_store_nonces -*-
"""
The preprocessed nonce pool: secret nonce pairs per epoch, each usable once.

Reusing a FROST nonce pair for two messages reveals the signing share, and a
crash must not change that.  The rules the signing layer relies on:

- L{NonceStore.add_batch} fires only after the batch is on disk, so a
  commitment published afterwards always has its secret behind it.
- L{NonceStore.reserve} marks the nonce spent and I{overwrites} its two
  scalars in the same transaction, and fires with the scalars only after
  that transaction is fsync'd.  The share computed with them therefore
  leaves the node only after the spent mark is durable; after any crash the
  nonce is spent or was never handed out.  A second reserve, before or after
  a restart, fails with L{NonceSpent}.  (A crash between the commit and the
  use only wastes the nonce.)  LMDB is copy-on-write: the page that held the
  scalars is freed, not zeroed, and lingers in the file until LMDB reuses
  it; the store never reads it again, but the file stays owner-only for
  that reason too.
- Spent entries keep their commitment (public) so a late request for them is
  answered "spent", not "unknown".  L{NonceStore.prune_spent} removes them;
  afterwards they are L{UnknownNonce}, which is just as safe: the scalars
  were erased at reservation.

Entries are keyed C{epoch (u64) || nonce id}; the store does not interpret
scalars or commitments beyond their sizes.  Turn reserved scalars back into a
single-use object with C{frostnode.crypto.nonces.SecretNonce.from_persisted}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from twisted.internet.defer import Deferred

from frostnode.store.codec import stored, u64
from frostnode.store.db import Database
from frostnode.store.errors import (
    CorruptStore,
    DuplicateNonce,
    InvalidRecord,
    NonceSpent,
    UnknownNonce,
)
from frostnode.wire import Reader, Writer

MAX_NONCE_ID = 64
MAX_COMMITMENT = 1024
MAX_BATCH = 100_000
_UNSPENT = 1
_SPENT = 2


@dataclass(frozen=True)
class NonceEntry:
    """
    One preprocessed nonce: id, the two 32-byte secret scalars, and the public
    commitment bytes.  C{repr} never shows the scalars.
    """

    nonce_id: bytes
    k1: bytes = field(repr=False)
    k2: bytes = field(repr=False)
    commitment: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.nonce_id, bytes) or not 1 <= len(self.nonce_id) <= MAX_NONCE_ID:
            raise InvalidRecord(f"nonce id must be 1..{MAX_NONCE_ID} bytes")
        for name in ("k1", "k2"):
            k = getattr(self, name)
            if not isinstance(k, bytes) or len(k) != 32:
                raise InvalidRecord(f"nonce {self.nonce_id.hex()}: {name} must be 32 bytes")
            if not any(k):
                raise InvalidRecord(f"nonce {self.nonce_id.hex()}: {name} is zero")
        if not isinstance(self.commitment, bytes) or not 1 <= len(self.commitment) <= MAX_COMMITMENT:
            raise InvalidRecord(f"nonce {self.nonce_id.hex()}: commitment must be 1..{MAX_COMMITMENT} bytes")

    def __reduce__(self) -> Any:
        raise TypeError("NonceEntry holds secret nonces and cannot be pickled")


def _prefix(epoch: int) -> bytes:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 1 << 64:
        raise ValueError(f"epoch number must be an int in [0, 2^64), not {epoch!r}")
    return u64(epoch)


def _key(epoch: int, nonce_id: bytes) -> bytes:
    prefix = _prefix(epoch)
    if not isinstance(nonce_id, bytes) or not 1 <= len(nonce_id) <= MAX_NONCE_ID:
        raise ValueError(f"nonce id must be 1..{MAX_NONCE_ID} bytes")
    return prefix + nonce_id


def _encode(state: int, k1: bytes, k2: bytes, commitment: bytes) -> bytes:
    w = Writer().u8(state)
    if state == _UNSPENT:
        w.fixed(k1, 32).fixed(k2, 32)
    return w.var_bytes(commitment, MAX_COMMITMENT).to_bytes()


def _decode(raw: bytes, what: str) -> tuple[int, bytes, bytes, bytes]:
    """(state, k1, k2, commitment); k1/k2 empty once spent."""
    with stored(what):
        r = Reader(raw, what)
        state = r.u8()
        if state == _UNSPENT:
            k1, k2 = r.fixed(32), r.fixed(32)
        elif state == _SPENT:
            k1 = k2 = b""
        else:
            raise CorruptStore(f"{what}: unknown state {state}")
        commitment = r.var_bytes(MAX_COMMITMENT)
        r.finish()
    return state, k1, k2, commitment


class NonceStore:
    """
    Nonce pools in sub-databases C{nonces.pool} (entries) and C{nonces.count}
    (unspent count per epoch, kept in the same transactions as the entries).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pool = db.subdb("nonces.pool")
        self._count = db.subdb("nonces.count")

    # -- transaction bodies --------------------------------------------------------

    def _bump(self, txn: Any, epoch: int, delta: int) -> None:
        n = self._get_count(txn, epoch) + delta
        if n < 0:
            raise CorruptStore(f"epoch {epoch}: unspent nonce count below zero")
        if n:
            txn.put(u64(epoch), u64(n), db=self._count)
        else:
            txn.delete(u64(epoch), db=self._count)

    def _add_batch(self, txn: Any, epoch: int, entries: list[NonceEntry]) -> int:
        for e in entries:
            key = _key(epoch, e.nonce_id)
            value = _encode(_UNSPENT, e.k1, e.k2, e.commitment)
            if not txn.put(key, value, db=self._pool, overwrite=False):
                raise DuplicateNonce(f"epoch {epoch}: nonce id {e.nonce_id.hex()} is already in the pool")
        self._bump(txn, epoch, len(entries))
        return len(entries)

    def _reserve(self, txn: Any, epoch: int, nonce_id: bytes) -> NonceEntry:
        key = _key(epoch, nonce_id)
        raw = txn.get(key, db=self._pool)
        what = f"epoch {epoch} nonce {nonce_id.hex()}"
        if raw is None:
            raise UnknownNonce(what)
        state, k1, k2, commitment = _decode(raw, what)
        if state == _SPENT:
            raise NonceSpent(f"{what} was already used")
        txn.put(key, _encode(_SPENT, b"", b"", commitment), db=self._pool)
        self._bump(txn, epoch, -1)
        return NonceEntry(nonce_id, k1, k2, commitment)

    def _prune(self, txn: Any, epoch: Optional[int], spent_only: bool) -> int:
        prefix = b"" if epoch is None else _prefix(epoch)
        doomed = []
        cur = txn.cursor(db=self._pool)
        if cur.set_range(prefix):
            for key, raw in cur:
                if not key.startswith(prefix):
                    break
                if not spent_only or raw[0] == _SPENT:
                    doomed.append((key, raw[0]))
        for key, state in doomed:
            txn.delete(key, db=self._pool)
        if not spent_only:
            unspent: dict[int, int] = {}
            for key, state in doomed:
                if state == _UNSPENT:
                    ep = int.from_bytes(key[:8], "big")
                    unspent[ep] = unspent.get(ep, 0) + 1
            for ep, n in unspent.items():
                self._bump(txn, ep, -n)
        return len(doomed)

    # -- writes --------------------------------------------------------------------

    def _check_batch(self, epoch: int, entries: Iterable[NonceEntry]) -> list[NonceEntry]:
        batch = list(entries)
        if not 1 <= len(batch) <= MAX_BATCH:
            raise ValueError(f"a nonce batch holds 1..{MAX_BATCH} entries, not {len(batch)}")
        seen = set()
        for e in batch:
            if not isinstance(e, NonceEntry):
                raise TypeError(f"expected NonceEntry, got {type(e).__name__}")
            if e.nonce_id in seen:
                raise DuplicateNonce(f"epoch {epoch}: nonce id {e.nonce_id.hex()} repeats within the batch")
            seen.add(e.nonce_id)
        _key(epoch, batch[0].nonce_id)
        return batch

    def add_batch(self, epoch: int, entries: Iterable[NonceEntry]) -> Deferred:
        """
        Add fresh nonces to C{epoch}'s pool, all or none; fires with the count
        after fsync.  Publish the commitments only after that.
        """
        return self._db.write(self._add_batch, epoch, self._check_batch(epoch, entries))

    def reserve(self, epoch: int, nonce_id: bytes) -> Deferred:
        """
        Mark the nonce spent, erase its scalars on disk, and fire with the
        L{NonceEntry} only after that is fsync'd.  Fails with L{NonceSpent} or
        L{UnknownNonce}; either way nothing secret is returned.
        """
        _key(epoch, nonce_id)
        return self._db.write(self._reserve, epoch, nonce_id)

    def prune_spent(self, epoch: Optional[int] = None) -> Deferred:
        """Delete spent entries (of one epoch, or all); fires with how many."""
        return self._db.write(self._prune, epoch, True)

    def drop_epoch(self, epoch: int) -> Deferred:
        """Delete an epoch's whole pool, unspent nonces included (for retired epochs)."""
        _prefix(epoch)
        return self._db.write(self._prune, epoch, False)

    def add_batch_sync(self, epoch: int, entries: Iterable[NonceEntry]) -> int:
        return self._db.write_sync(self._add_batch, epoch, self._check_batch(epoch, entries))

    def reserve_sync(self, epoch: int, nonce_id: bytes) -> NonceEntry:
        _key(epoch, nonce_id)
        return self._db.write_sync(self._reserve, epoch, nonce_id)

    def prune_spent_sync(self, epoch: Optional[int] = None) -> int:
        return self._db.write_sync(self._prune, epoch, True)

    def drop_epoch_sync(self, epoch: int) -> int:
        _prefix(epoch)
        return self._db.write_sync(self._prune, epoch, False)

    # -- reads -----------------------------------------------------------------------

    def _get_count(self, txn: Any, epoch: int) -> int:
        raw = txn.get(_prefix(epoch), db=self._count)
        if raw is None:
            return 0
        if len(raw) != 8:
            raise CorruptStore(f"epoch {epoch}: nonce count is {len(raw)} bytes")
        return int.from_bytes(raw, "big")

    def unspent_count(self, epoch: int) -> int:
        with self._db.read() as txn:
            return self._get_count(txn, epoch)

    def counts(self) -> dict[int, int]:
        """Unspent nonces per epoch that has any."""
        with self._db.read() as txn:
            return {int.from_bytes(k, "big"): int.from_bytes(v, "big") for k, v in txn.cursor(db=self._count)}

    def status(self, epoch: int, nonce_id: bytes) -> Optional[bool]:
        """True if spent, False if available, None if unknown (never added, or pruned)."""
        with self._db.read() as txn:
            raw = txn.get(_key(epoch, nonce_id), db=self._pool)
        return None if raw is None else raw[0] == _SPENT

    def commitment(self, epoch: int, nonce_id: bytes) -> Optional[bytes]:
        with self._db.read() as txn:
            raw = txn.get(_key(epoch, nonce_id), db=self._pool)
        return None if raw is None else _decode(raw, f"epoch {epoch} nonce {nonce_id.hex()}")[3]

    def unspent(self, epoch: int, limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """Up to C{limit} available C{(nonce id, commitment)} pairs, in id order.  Public data only."""
        prefix = _prefix(epoch)
        out: list[tuple[bytes, bytes]] = []
        with self._db.read() as txn:
            cur = txn.cursor(db=self._pool)
            if cur.set_range(prefix):
                for key, raw in cur:
                    if not key.startswith(prefix) or len(out) >= limit:
                        break
                    if raw[0] == _UNSPENT:
                        out.append((key[8:], _decode(raw, "nonce")[3]))
        return out
