# -*- test-case-name: tests.test_store_keys -*-
"""
DKG results per epoch, in-progress DKG sessions, and the time of the last
successful DKG.

Every successful DKG starts a new epoch.  An epoch's record goes through::

    PENDING --certify--> CERTIFIED --confirm--> CONFIRMED
       |                     |                      |
       +--abort--> ABORTED   +----(newer epoch confirmed)----> RETIRED

- C{put_pending} stores the whole key package (secret share, every member's
  commitments, verification shares, internal and output keys) I{before} the
  member signs and sends its agreement signature.  Its Deferred fires after
  the fsync, so "I signed the transcript" implies "I can still use the key
  after a crash".
- C{certify} adds the success certificate (the n agreement signatures, as the
  DKG layer encodes them) and records the certification time as the time of
  the last successful DKG, in the same transaction, so the minimum-spacing
  rule survives restarts.
- C{confirm} marks an epoch confirmed and retires every older certified or
  confirmed epoch in the same transaction.  Older epochs stay usable
  (L{KeyStore.usable}) until then, as the architecture requires.
- C{abort} ends a pending epoch that the federation gave up; its secret share
  is erased because nobody else holds the matching key.

Retired records keep their share: a confirmation may later be undone (a
chain reorganisation, once confirmation comes from Bitcoin), and a retired
share is no riskier than the history it belongs to.

Crash recovery state for an unfinished DKG session is opaque bytes keyed by
session id; the DKG driver writes it before every message it sends that it
must remember, and drops it when the session ends.

The store does not interpret keys, shares or certificates: it checks sizes
and shapes, never the maths (that is the crypto layer's job).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from twisted.internet.defer import Deferred

from frostnode.store.codec import check_time, micros, seconds, stored, u64
from frostnode.store.db import Database
from frostnode.store.errors import (
    CorruptStore,
    EpochExists,
    InvalidRecord,
    InvalidTransition,
    UnknownEpoch,
)
from frostnode.wire import MAX_U32, Reader, Writer

MAX_MEMBERS = 1024
MAX_SESSION_ID = 64
MAX_SESSION_STATE = 64 << 20
_VERSION = 1
_LAST_DKG = b"last_dkg"


class EpochStatus(enum.IntEnum):
    PENDING = 1
    CERTIFIED = 2
    CONFIRMED = 3
    RETIRED = 4
    ABORTED = 5


_USABLE = (EpochStatus.CERTIFIED, EpochStatus.CONFIRMED)


@dataclass(frozen=True)
class EpochRecord:
    """
    One DKG outcome as this member holds it.

    @ivar members: the session's host keys (32 bytes each), sorted, unique.
    @ivar identifier: this member's FROST identifier (nonzero, < 2^256).
    @ivar secret_share: this member's 32-byte signing share (empty once
        aborted).  Never printed.
    @ivar commitments: every member's round-1 commitments, encoded by the DKG layer.
    @ivar verification_shares: one public verification share per member, in
        C{members} order.
    @ivar internal_key: the Taproot-safe group key before the BIP341 tweak.
    @ivar output_key: the tweaked Taproot output key.
    @ivar certificate: the n agreement signatures (empty while pending).
    @ivar created: when the record was first stored (caller's clock).
    """

    epoch: int
    session_id: bytes
    members: tuple[bytes, ...]
    threshold: int
    identifier: int
    secret_share: bytes = field(repr=False)
    commitments: bytes = field(repr=False)
    verification_shares: tuple[bytes, ...] = field(repr=False)
    internal_key: bytes
    output_key: bytes
    created: float
    certificate: bytes = field(default=b"", repr=False)
    status: EpochStatus = EpochStatus.PENDING

    def __post_init__(self) -> None:
        what = f"epoch {self.epoch!r}"
        if not isinstance(self.epoch, int) or not 0 <= self.epoch < 1 << 64:
            raise InvalidRecord(f"{what}: epoch number must be an int in [0, 2^64)")
        if not 1 <= len(self.session_id) <= MAX_SESSION_ID:
            raise InvalidRecord(f"{what}: session id must be 1..{MAX_SESSION_ID} bytes")
        n = len(self.members)
        if not 1 <= n <= MAX_MEMBERS:
            raise InvalidRecord(f"{what}: {n} members, must be 1..{MAX_MEMBERS}")
        for m in self.members:
            if not isinstance(m, bytes) or len(m) != 32:
                raise InvalidRecord(f"{what}: member host keys must be 32 bytes")
        if any(a >= b for a, b in zip(self.members, self.members[1:])):
            raise InvalidRecord(f"{what}: members must be sorted and unique")
        if not 1 <= self.threshold <= n:
            raise InvalidRecord(f"{what}: threshold {self.threshold} not in 1..{n}")
        if not 0 < self.identifier < 1 << 256:
            raise InvalidRecord(f"{what}: identifier must be in [1, 2^256)")
        share_sizes = (0, 32) if self.status is EpochStatus.ABORTED else (32,)
        if len(self.secret_share) not in share_sizes:
            raise InvalidRecord(f"{what}: secret share must be 32 bytes")
        if len(self.commitments) > MAX_U32:
            raise InvalidRecord(f"{what}: commitments too large")
        if len(self.verification_shares) != n:
            raise InvalidRecord(f"{what}: {len(self.verification_shares)} verification shares for {n} members")
        if any(not 1 <= len(v) <= 65 for v in self.verification_shares):
            raise InvalidRecord(f"{what}: verification shares must be 1..65 bytes")
        for name in ("internal_key", "output_key"):
            if len(getattr(self, name)) not in (32, 33):
                raise InvalidRecord(f"{what}: {name} must be 32 (x-only) or 33 bytes")
        if len(self.certificate) > MAX_U32:
            raise InvalidRecord(f"{what}: certificate too large")
        if self.status not in (EpochStatus.PENDING, EpochStatus.ABORTED) and not self.certificate:
            raise InvalidRecord(f"{what}: status {self.status.name} needs a certificate")
        object.__setattr__(self, "created", check_time(self.created, f"{what}: created", InvalidRecord))

    @property
    def usable(self) -> bool:
        """Certified or confirmed, and not yet retired: may sign."""
        return self.status in _USABLE

    def encode(self) -> bytes:
        w = (Writer().u8(_VERSION).u8(int(self.status)).u64(self.epoch)
             .var_bytes(self.session_id, MAX_SESSION_ID).count(len(self.members), MAX_MEMBERS))
        for m in self.members:
            w.fixed(m, 32)
        w.u16(self.threshold).fixed(self.identifier.to_bytes(32, "big"), 32)
        w.var_bytes(self.secret_share, 32).var_bytes(self.commitments, MAX_U32)
        w.count(len(self.verification_shares), MAX_MEMBERS)
        for v in self.verification_shares:
            w.var_bytes(v, 65)
        w.var_bytes(self.internal_key, 33).var_bytes(self.output_key, 33)
        w.u64(micros(self.created)).var_bytes(self.certificate, MAX_U32)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes, what: str = "epoch record") -> "EpochRecord":
        with stored(what):
            r = Reader(data, what)
            r.version(_VERSION)
            try:
                status = EpochStatus(r.u8())
            except ValueError:
                raise CorruptStore(f"{what}: unknown status") from None
            epoch = r.u64()
            session_id = r.var_bytes(MAX_SESSION_ID)
            members = tuple(r.fixed(32) for _ in range(r.count(MAX_MEMBERS, 32)))
            threshold = r.u16()
            identifier = int.from_bytes(r.fixed(32), "big")
            share = r.var_bytes(32)
            commitments = r.var_bytes(MAX_U32)
            vshares = tuple(r.var_bytes(65) for _ in range(r.count(MAX_MEMBERS, 4)))
            internal_key = r.var_bytes(33)
            output_key = r.var_bytes(33)
            created = seconds(r.u64())
            certificate = r.var_bytes(MAX_U32)
            r.finish()
            return cls(epoch, session_id, members, threshold, identifier, share, commitments, vshares,
                       internal_key, output_key, created, certificate, status)


def _epoch_key(epoch: int) -> bytes:
    if not isinstance(epoch, int) or not 0 <= epoch < 1 << 64:
        raise ValueError(f"epoch number must be an int in [0, 2^64), not {epoch!r}")
    return u64(epoch)


def _check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes) or not 1 <= len(session_id) <= MAX_SESSION_ID:
        raise ValueError(f"session id must be 1..{MAX_SESSION_ID} bytes")
    return session_id


class KeyStore:
    """
    Epoch records, DKG session state and the last-DKG time, in sub-databases
    C{keys.epochs}, C{keys.sessions}, C{keys.meta}.

    Each write has a group-committed form returning a Deferred that fires
    after the fsync, and a C{_sync} form for tools and tests.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._epochs = db.subdb("keys.epochs")
        self._sessions = db.subdb("keys.sessions")
        self._meta = db.subdb("keys.meta")

    # -- transaction bodies (writer thread) ------------------------------------

    def _get(self, txn: Any, epoch: int) -> Optional[EpochRecord]:
        raw = txn.get(_epoch_key(epoch), db=self._epochs)
        return None if raw is None else EpochRecord.decode(raw, f"epoch {epoch}")

    def _require(self, txn: Any, epoch: int) -> EpochRecord:
        rec = self._get(txn, epoch)
        if rec is None:
            raise UnknownEpoch(epoch)
        return rec

    def _put(self, txn: Any, rec: EpochRecord) -> None:
        txn.put(_epoch_key(rec.epoch), rec.encode(), db=self._epochs)

    def _put_pending(self, txn: Any, rec: EpochRecord) -> None:
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"epoch {rec.epoch}: new records must be PENDING, not {rec.status.name}")
        old = self._get(txn, rec.epoch)
        if old is not None:
            if old == rec:
                return  # a DKG driver replaying its last step after a restart
            raise EpochExists(f"epoch {rec.epoch} already holds a different {old.status.name} record")
        self._put(txn, rec)

    def _certify(self, txn: Any, epoch: int, certificate: bytes, now: float) -> EpochRecord:
        if not certificate:
            raise ValueError(f"epoch {epoch}: empty certificate")
        rec = self._require(txn, epoch)
        if rec.status in _USABLE and rec.certificate == certificate:
            return rec
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"epoch {epoch}: cannot certify a {rec.status.name} epoch")
        rec = replace(rec, status=EpochStatus.CERTIFIED, certificate=certificate)
        self._put(txn, rec)
        if self._last_dkg(txn) is None or self._last_dkg(txn) < now:
            txn.put(_LAST_DKG, u64(micros(now)), db=self._meta)
        return rec

    def _last_dkg(self, txn: Any) -> Optional[float]:
        raw = txn.get(_LAST_DKG, db=self._meta)
        if raw is None:
            return None
        with stored("last DKG time"):
            r = Reader(raw, "last DKG time")
            us = r.u64()
            r.finish()
        return seconds(us)

    def _confirm(self, txn: Any, epoch: int) -> list[int]:
        rec = self._require(txn, epoch)
        if rec.status is EpochStatus.CONFIRMED:
            return []
        if rec.status is not EpochStatus.CERTIFIED:
            raise InvalidTransition(f"epoch {epoch}: cannot confirm a {rec.status.name} epoch")
        self._put(txn, replace(rec, status=EpochStatus.CONFIRMED))
        older = []
        for _, raw in txn.cursor(db=self._epochs):
            old = EpochRecord.decode(raw)
            if old.epoch >= epoch:
                break
            if old.status in _USABLE:
                older.append(old)
        for old in older:
            self._put(txn, replace(old, status=EpochStatus.RETIRED))
        return [old.epoch for old in older]

    def _abort(self, txn: Any, epoch: int) -> None:
        rec = self._require(txn, epoch)
        if rec.status is EpochStatus.ABORTED:
            return
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"epoch {epoch}: cannot abort a {rec.status.name} epoch")
        self._put(txn, replace(rec, status=EpochStatus.ABORTED, secret_share=b""))

    def _save_session(self, txn: Any, session_id: bytes, state: bytes) -> None:
        txn.put(session_id, state, db=self._sessions)

    def _drop_session(self, txn: Any, session_id: bytes) -> bool:
        return bool(txn.delete(session_id, db=self._sessions))

    @staticmethod
    def _check_state(state: bytes) -> bytes:
        if not isinstance(state, (bytes, bytearray)):
            raise TypeError("session state must be bytes")
        if len(state) > MAX_SESSION_STATE:
            raise ValueError(f"session state of {len(state)} bytes is over {MAX_SESSION_STATE}")
        return bytes(state)

    # -- group-committed writes --------------------------------------------------

    def put_pending(self, rec: EpochRecord) -> Deferred:
        """
        Store a new epoch's key package as PENDING; fires (None) after fsync.
        Re-storing an identical record is a no-op; a different one under the
        same epoch fails with L{EpochExists}.
        """
        return self._db.write(self._put_pending, rec)

    def certify(self, epoch: int, certificate: bytes, now: float) -> Deferred:
        """PENDING -> CERTIFIED with C{certificate}; C{now} becomes the last-DKG time.  Fires with the record."""
        return self._db.write(self._certify, epoch, bytes(certificate), check_time(now, "now"))

    def confirm(self, epoch: int) -> Deferred:
        """CERTIFIED -> CONFIRMED, retiring all older usable epochs; fires with their numbers."""
        return self._db.write(self._confirm, epoch)

    def abort(self, epoch: int) -> Deferred:
        """PENDING -> ABORTED, erasing the secret share."""
        return self._db.write(self._abort, epoch)

    def save_session(self, session_id: bytes, state: bytes) -> Deferred:
        """Replace the crash-recovery state of an unfinished DKG session; fires after fsync."""
        return self._db.write(self._save_session, _check_session_id(session_id), self._check_state(state))

    def drop_session(self, session_id: bytes) -> Deferred:
        """Forget a finished session's state; fires with whether there was any."""
        return self._db.write(self._drop_session, _check_session_id(session_id))

    # -- synchronous writes ---------------------------------------------------------

    def put_pending_sync(self, rec: EpochRecord) -> None:
        self._db.write_sync(self._put_pending, rec)

    def certify_sync(self, epoch: int, certificate: bytes, now: float) -> EpochRecord:
        return self._db.write_sync(self._certify, epoch, bytes(certificate), check_time(now, "now"))

    def confirm_sync(self, epoch: int) -> list[int]:
        return self._db.write_sync(self._confirm, epoch)

    def abort_sync(self, epoch: int) -> None:
        self._db.write_sync(self._abort, epoch)

    def save_session_sync(self, session_id: bytes, state: bytes) -> None:
        self._db.write_sync(self._save_session, _check_session_id(session_id), self._check_state(state))

    def drop_session_sync(self, session_id: bytes) -> bool:
        return self._db.write_sync(self._drop_session, _check_session_id(session_id))

    # -- reads -------------------------------------------------------------------------

    def get(self, epoch: int) -> Optional[EpochRecord]:
        with self._db.read() as txn:
            return self._get(txn, epoch)

    def epochs(self) -> list[EpochRecord]:
        """Every stored epoch, oldest first."""
        with self._db.read() as txn:
            return [EpochRecord.decode(raw) for _, raw in txn.cursor(db=self._epochs)]

    def usable(self) -> list[EpochRecord]:
        """Epochs that may sign (certified or confirmed, not retired), oldest first."""
        return [r for r in self.epochs() if r.usable]

    def newest_usable(self) -> Optional[EpochRecord]:
        u = self.usable()
        return u[-1] if u else None

    def last_epoch_number(self) -> Optional[int]:
        """The highest epoch number ever stored (any status), to number the next DKG."""
        with self._db.read() as txn:
            cur = txn.cursor(db=self._epochs)
            if not cur.last():
                return None
            return int.from_bytes(cur.key(), "big")

    def last_dkg(self) -> Optional[float]:
        """When the newest successful (certified) DKG finished, or None if never."""
        with self._db.read() as txn:
            return self._last_dkg(txn)

    def session(self, session_id: bytes) -> Optional[bytes]:
        with self._db.read() as txn:
            return txn.get(_check_session_id(session_id), db=self._sessions)

    def sessions(self) -> dict[bytes, bytes]:
        """All unfinished sessions' state, to resume or abort after a restart."""
        with self._db.read() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=self._sessions)}
