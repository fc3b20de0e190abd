# -*- test-case-name: tests.test_store_checkpoints -*-
"""
The federation's signed checkpoints, kept on this node's disk.

A checkpoint is what the federation signed about itself (see
L{frostnode.signing.checkpoint}); clients fetch them from any node
(C{frostnode-client checkpoint}).  Holding them in memory only would make a
node forget every checkpoint on restart and answer "none yet" to a client
that was shown one a minute earlier, so the signing service appends each one
here before it reports it.

Decisions:

  - B{Append-only, numbered.}  Each checkpoint gets the next sequence number
    of I{this node's} history (1, 2, ...), assigned inside the write
    transaction, so numbers are dense and never reused, even across
    restarts.  Numbers differ between nodes (each keeps what it coordinated);
    the signature, not the number, is what a client checks.
  - B{Durable before answered.}  L{CheckpointStore.append} fires with the
    number only after the fsync (the store's rule).
  - B{No retention yet.}  A checkpoint is a few KiB (the statement lists the
    members and a cut); one per hour is some 30 MiB a year at 100 members.
  - B{Plain data.}  The store imports nothing from C{signing/}: it keeps a
    L{CheckpointRecord} of bytes and numbers, encoded with the strict codec
    and a version byte; the signing layer converts.

Sub-database C{checkpoints.signed}: key C{seq (u64)}, value the encoded
record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred

from frostnode.store.codec import check_time, micros, seconds, stored, u64
from frostnode.store.db import Database
from frostnode.store.errors import CorruptStore, InvalidRecord
from frostnode.wire import MAX_U64, Reader, Writer

VERSION = 1
MAX_STATEMENT = 1 << 20
MAX_SIGNERS = 1024
MAX_ORIGINS = 4096
MAX_CIPHERSUITE = 32
MAX_KEY = 33
MAX_SIGNATURE = 65
MAX_MESSAGE = 1024
#: Most checkpoints one L{CheckpointStore.list} returns.
MAX_LIST = 1000


@dataclass(frozen=True)
class CheckpointRecord:
    """
    One signed checkpoint as stored; fields as in
    L{frostnode.signing.checkpoint.Checkpoint}.

    @ivar cut: origin host key -> sequence number covered.
    @ivar created: the coordinating node's clock when it was signed (seconds).
    """

    epoch: int
    cut: Mapping[bytes, int]
    statement: bytes
    message: bytes
    signature: bytes
    key: bytes
    ciphersuite: str
    signers: tuple[bytes, ...]
    created: float
    divergent: tuple[bytes, ...] = ()
    #: Set on records read back (or returned by append): the record's number.
    seq: int = field(default=0, compare=False)

    def encode(self) -> bytes:
        """@raise InvalidRecord: a field out of range."""
        try:
            if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or not 0 <= self.epoch <= MAX_U64:
                raise ValueError(f"epoch {self.epoch!r} is not a u64")
            created = micros(check_time(self.created, "created"))
            w = Writer().u8(VERSION).u64(self.epoch).count(len(self.cut), MAX_ORIGINS)
            for origin, n in sorted(self.cut.items()):
                w.fixed(origin, 32).u64(n)
            w.var_bytes(self.statement, MAX_STATEMENT).var_bytes(self.message, MAX_MESSAGE)
            w.var_bytes(self.signature, MAX_SIGNATURE).var_bytes(self.key, MAX_KEY)
            w.var_bytes(self.ciphersuite.encode("ascii"), MAX_CIPHERSUITE)
            w.count(len(self.signers), MAX_SIGNERS)
            for s in self.signers:
                w.fixed(s, 32)
            w.count(len(self.divergent), MAX_SIGNERS)
            for d in self.divergent:
                w.fixed(d, 32)
            return w.u64(created).to_bytes()
        except (ValueError, UnicodeEncodeError, AttributeError, TypeError) as e:
            raise InvalidRecord(f"checkpoint of epoch {self.epoch!r}: {e}") from None

    @classmethod
    def decode(cls, data: bytes, seq: int = 0) -> "CheckpointRecord":
        r = Reader(data, f"checkpoint {seq}")
        r.version(VERSION)
        epoch = r.u64()
        cut = {}
        for _ in range(r.count(MAX_ORIGINS, 40)):
            origin = r.fixed(32)
            cut[origin] = r.u64()
        statement = r.var_bytes(MAX_STATEMENT)
        message = r.var_bytes(MAX_MESSAGE)
        signature = r.var_bytes(MAX_SIGNATURE)
        key = r.var_bytes(MAX_KEY)
        ciphersuite = r.var_bytes(MAX_CIPHERSUITE).decode("ascii", "replace")
        signers = tuple(r.fixed(32) for _ in range(r.count(MAX_SIGNERS, 32)))
        divergent = tuple(r.fixed(32) for _ in range(r.count(MAX_SIGNERS, 32)))
        created = seconds(r.u64())
        r.finish()
        return cls(epoch, cut, statement, message, signature, key, ciphersuite, signers, created, divergent, seq)


class CheckpointStore:
    """
    This node's signed checkpoints, oldest first, in sub-database
    C{checkpoints.signed}.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._table = db.subdb("checkpoints.signed")

    # -- writes ----------------------------------------------------------------------

    def _append(self, txn: Any, value: bytes) -> int:
        cur = txn.cursor(db=self._table)
        seq = self._seq_of(cur.key()) + 1 if cur.last() else 1
        if not txn.put(u64(seq), value, db=self._table, overwrite=False):
            raise CorruptStore(f"checkpoint {seq} exists past the last one")
        return seq

    def append(self, record: CheckpointRecord) -> Deferred:
        """
        Store C{record} as the newest checkpoint; fires with its number once
        it is on disk.

        @raise InvalidRecord: at once, for a record that cannot be encoded.
        """
        return self._db.write(self._append, record.encode())

    def append_sync(self, record: CheckpointRecord) -> int:
        return self._db.write_sync(self._append, record.encode())

    # -- reads -----------------------------------------------------------------------

    @staticmethod
    def _seq_of(key: bytes) -> int:
        if len(key) != 8:
            raise CorruptStore(f"checkpoint key of {len(key)} bytes")
        return int.from_bytes(key, "big")

    def _decode(self, key: bytes, value: bytes) -> CheckpointRecord:
        seq = self._seq_of(key)
        with stored(f"checkpoint {seq}"):
            return CheckpointRecord.decode(bytes(value), seq)

    def last_seq(self) -> int:
        """The newest checkpoint's number; 0 before the first."""
        with self._db.read() as txn:
            cur = txn.cursor(db=self._table)
            return self._seq_of(cur.key()) if cur.last() else 0

    def latest(self) -> Optional[CheckpointRecord]:
        with self._db.read() as txn:
            cur = txn.cursor(db=self._table)
            if not cur.last():
                return None
            return self._decode(cur.key(), cur.value())

    def get(self, seq: int) -> Optional[CheckpointRecord]:
        if not 0 <= seq <= MAX_U64:
            return None
        with self._db.read() as txn:
            raw = txn.get(u64(seq), db=self._table)
        return None if raw is None else self._decode(u64(seq), raw)

    def list(self, from_seq: int = 1, limit: int = 100) -> list[CheckpointRecord]:
        """
        Up to C{limit} (at most L{MAX_LIST}) checkpoints numbered
        C{from_seq} and up, oldest first.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        limit = min(limit, MAX_LIST)
        out: list[CheckpointRecord] = []
        if from_seq > MAX_U64:
            return out
        with self._db.read() as txn:
            cur = txn.cursor(db=self._table)
            if cur.set_range(u64(max(from_seq, 0))):
                for key, value in cur:
                    out.append(self._decode(key, value))
                    if len(out) >= limit:
                        break
        return out
