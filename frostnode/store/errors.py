# -*- test-case-name: tests.test_store_db -*-
"""
Errors raised by the state layer, kept in one place so callers import them
without pulling in LMDB.

Three kinds, following the rest of frostnode:

- L{ValueError} subclasses (L{InvalidRecord}, L{InvalidTransition}, ...): the
  caller broke a precondition or handed us malformed bytes (L{InvalidRecord}
  is the wire codec's L{DecodeError}).  Nothing on disk changed.
- L{StoreError} subclasses: the store itself cannot do what was asked
  (closed, full, locked by another process, unsafe permissions, corrupt).
- L{SequenceConflict}, a L{ProtocolError}: a member's records contradict each
  other.  It is the only error here that names a culprit, and it reuses the
  crypto layer's error I{vocabulary} (not any crypto object) so that the
  network shells' single C{except ProtocolError} logs it like every other
  misbehaviour.
"""

from __future__ import annotations

from frostnode.crypto.errors import ProtocolError
from frostnode.wire import DecodeError


class StoreError(Exception):
    """The store cannot serve the request; the data already stored is intact."""


class StoreClosed(StoreError):
    """A write was requested after L{frostnode.store.db.Database.close}."""


class StoreFull(StoreError):
    """The LMDB map reached C{max_map_size}; raise it in the configuration."""


class DataDirLocked(StoreError):
    """Another process (or another open L{Database}) holds this data directory."""


class InsecurePermissions(StoreError):
    """A store file or directory is readable by someone other than its owner."""

    def __init__(self, path: str, mode: int, wanted: int) -> None:
        super().__init__(
            f"{path} has mode {mode:04o}; the store holds secret key shares and must be "
            f"owner-only ({wanted:04o}).  Fix it with: chmod {wanted:o} {path}"
        )
        self.path = path
        self.mode = mode


class CorruptStore(StoreError):
    """Bytes read back from LMDB do not decode: a bug or on-disk damage."""


class InvalidRecord(DecodeError):
    """
    Input bytes or fields that do not form a valid record of the expected
    kind.  A L{DecodeError}, so a shell that decodes a peer's message catches
    bad framing and bad contents with one clause.
    """


class RecordTooLarge(InvalidRecord):
    """A field is over its configured limit; checked before anything is allocated."""


class InvalidTransition(ValueError):
    """An epoch status change that the lifecycle does not allow."""


class EpochExists(ValueError):
    """A different record is already stored under this epoch number."""


class UnknownEpoch(KeyError):
    """No record is stored under this epoch number."""


class UnknownNonce(KeyError):
    """No nonce with this id is in the pool (never added, or pruned after use)."""


class NonceSpent(StoreError):
    """
    The nonce was already reserved.  Its secret scalars were erased when it was
    first reserved; nothing can bring them back.
    """


class DuplicateNonce(ValueError):
    """A batch repeats a nonce id, or reuses one already in the pool."""


class IncompleteView(StoreError):
    """
    The local log cannot produce the records a cut names: catch-up has not
    brought them yet (C{have < wanted}), or retention already pruned the
    start of that origin's sequence (C{floor > 0}).
    """

    def __init__(self, origin: bytes, wanted: int, have: int, floor: int) -> None:
        if floor:
            why = f"records 1..{floor} were pruned by retention"
        else:
            why = f"only records up to {have} are held"
        super().__init__(f"cut wants origin {origin.hex()[:16]} up to {wanted}; {why}")
        self.origin = origin
        self.wanted = wanted
        self.have = have
        self.floor = floor


class SequenceConflict(ProtocolError):
    """
    Two different records under the same (origin, sequence number): the origin
    equivocated, or a record was accepted without checking its proof.
    """

    def __init__(self, origin: bytes, seq: int, stored: bytes, offered: bytes) -> None:
        super().__init__(
            origin,
            f"sequence {seq} already holds record {stored.hex()[:16]}, offered {offered.hex()[:16]}",
        )
        self.seq = seq
        self.stored = stored
        self.offered = offered

    def __str__(self) -> str:
        return f"SequenceConflict: origin {self.culprit.hex()}: {self.message}"
