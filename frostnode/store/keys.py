# -*- test-case-name: tests.test_store_keys -*-
"""
DKG results per epoch and session, in-progress DKG sessions, and the time of
the last successful DKG.

Several records per epoch
=========================
Every successful DKG starts a new epoch, but one epoch's run may sign, and
see certified, more than one session (attempt): a member judged silent in an
attempt's agreement round can send its signature late and certify that
attempt after a restart without it was certified too (see
L{frostnode.dkg.run}).  So records are keyed by I{(epoch, session id)}, and
each goes through::

    PENDING --certify--> CERTIFIED --confirm--> CONFIRMED
       |                     |                      |
       +--abort--> ABORTED   +---(superseded)---> RETIRED

A record either holds our share of the session's key (a I{member} record,
written by C{put_pending} before we sign the session's transcript) or only
the federation's key and its certificate (a I{foreign} record, C{put_foreign}:
a session we are not in, for example because we were excluded).

The current key of an epoch
===========================
Of an epoch's records that carry a certificate (certified, confirmed,
retired, member or foreign), the one with the highest C{(attempt, session
id)} is the epoch's I{current} record (L{KeyStore.current}); L{KeyStore.get},
L{KeyStore.usable} and L{KeyStore.newest_usable} answer with it.  The rule
reads only certificates, never arrival order or local status, so two members
holding the same certificates choose the same key; the DKG layer passes the
winning certificate on to peers until they do (see L{frostnode.dkg.driver}).

Why it is safe: a certificate carries the signature of every member of its
session, and a member signs only after storing its share (C{put_pending}
fires after fsync), so every member of every certified session holds its
share, whichever one wins, and losing certified keys keep their shares
(L{KeyStore.record}), in case funds were sent to one before its member
learned of a better one.  Why the I{highest} attempt: attempt k+1 exists only
because members judged attempt k failed, so in the case that actually
happens (a slow member's signature certifies attempt k late) the members
that finished the run keep the key they reported, and only the late member
moves; and the rule is a maximum over a growing set of certificates, so it
only ever moves up and settles once everyone holds the same certificates.
The session id breaks ties between sessions of one attempt (which need
members with different exclusions; honest members sign one per attempt).

Writes
======
- C{put_pending} stores our key package for one session I{before} we sign
  its transcript; its Deferred fires after the fsync.
- C{certify} adds the success certificate.  The first certificate of the
  newest epoch records the time of the last successful DKG in the same
  transaction, so the minimum-spacing rule survives restarts; a late
  certificate of an epoch we already had one for does not move it.
- C{put_foreign} stores a certified session we hold no share of (same
  last-DKG rule).
- C{confirm} marks an epoch's current record confirmed and retires every
  other usable record up to that epoch (older epochs and this epoch's
  losing sessions).  Until then older epochs stay usable, as the
  architecture requires.  Pending records of older epochs are aborted then:
  a newer key is confirmed, so nobody will ever use them.
- C{abort} ends a pending session the federation gave up; its secret share
  is erased because nobody else holds the matching key.

Retired records keep their share: a confirmation may later be undone (a
chain reorganisation, once confirmation comes from Bitcoin), and a retired
share is no riskier than the history it belongs to.

Crash recovery state for an unfinished DKG run is opaque bytes keyed by
name; the DKG driver writes it before every message it sends that it must
remember, and drops it when the run ends.

The store does not interpret keys, shares or certificates: it checks sizes
and shapes, never the maths (that is the crypto layer's job).

Layout: sub-database C{keys.records} maps C{epoch:u64 || session id} to a
record (LMDB's byte order is epoch order).  Stores written before several
records per epoch existed kept one record per epoch in C{keys.epochs}; those
are moved over, as attempt 0, the first time the store is opened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

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
MAX_AGREEMENT_SIGNATURE = 128
_VERSION = 2
_LAST_DKG = b"last_dkg"
_RECORDS = "keys.records"
_LEGACY = "keys.epochs"


class EpochStatus(enum.IntEnum):
    PENDING = 1
    CERTIFIED = 2
    CONFIRMED = 3
    RETIRED = 4
    ABORTED = 5


_USABLE = (EpochStatus.CERTIFIED, EpochStatus.CONFIRMED)
_UNCERTIFIED = (EpochStatus.PENDING, EpochStatus.ABORTED)


@dataclass(frozen=True)
class EpochRecord:
    """
    One DKG session's outcome as this member holds it.

    @ivar members: the session's host keys (32 bytes each), sorted, unique.
    @ivar identifier: this member's FROST identifier (nonzero, < 2^256), or
        0 in a foreign record (we are not in the session).
    @ivar secret_share: this member's 32-byte signing share (empty once
        aborted, and in a foreign record).  Never printed.
    @ivar commitments: every member's round-1 commitments, encoded by the DKG
        layer (may be empty in a foreign record).
    @ivar verification_shares: one public verification share per member, in
        C{members} order (may be empty in a foreign record).
    @ivar internal_key: the Taproot-safe group key before the BIP341 tweak.
    @ivar output_key: the tweaked Taproot output key.
    @ivar certificate: the n agreement signatures (empty while pending).
    @ivar created: when the record was first stored (caller's clock).
    @ivar attempt: the session's attempt number in its epoch's run; with the
        session id, it ranks the epoch's certified sessions.
    @ivar agreement_signature: our own agreement signature as we sent it
        (opaque to the store), so a restart re-sends the same bytes.
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
    attempt: int = 0
    agreement_signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        what = f"epoch {self.epoch!r}"
        if not isinstance(self.epoch, int) or not 0 <= self.epoch < 1 << 64:
            raise InvalidRecord(f"{what}: epoch number must be an int in [0, 2^64)")
        if not isinstance(self.session_id, bytes) or not 1 <= len(self.session_id) <= MAX_SESSION_ID:
            raise InvalidRecord(f"{what}: session id must be 1..{MAX_SESSION_ID} bytes")
        what = f"epoch {self.epoch} session {self.session_id.hex()[:16]}"
        if not isinstance(self.attempt, int) or not 0 <= self.attempt < 1 << 32:
            raise InvalidRecord(f"{what}: attempt must be an int in [0, 2^32)")
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
        if not isinstance(self.identifier, int) or not 0 <= self.identifier < 1 << 256:
            raise InvalidRecord(f"{what}: identifier must be in [1, 2^256), or 0 in a foreign record")
        if len(self.commitments) > MAX_U32:
            raise InvalidRecord(f"{what}: commitments too large")
        if any(not 1 <= len(v) <= 65 for v in self.verification_shares):
            raise InvalidRecord(f"{what}: verification shares must be 1..65 bytes")
        if self.member:
            share_sizes = (0, 32) if self.status is EpochStatus.ABORTED else (32,)
            if len(self.secret_share) not in share_sizes:
                raise InvalidRecord(f"{what}: secret share must be 32 bytes")
            if len(self.verification_shares) != n:
                raise InvalidRecord(f"{what}: {len(self.verification_shares)} verification shares for {n} members")
        else:
            if self.status in _UNCERTIFIED:
                raise InvalidRecord(f"{what}: a record without our share (identifier 0) must be certified")
            if self.secret_share or self.agreement_signature:
                raise InvalidRecord(f"{what}: a foreign record holds no share and no signature of ours")
            if len(self.verification_shares) not in (0, n):
                raise InvalidRecord(f"{what}: {len(self.verification_shares)} verification shares for {n} members")
        for name in ("internal_key", "output_key"):
            if len(getattr(self, name)) not in (32, 33):
                raise InvalidRecord(f"{what}: {name} must be 32 (x-only) or 33 bytes")
        if len(self.certificate) > MAX_U32:
            raise InvalidRecord(f"{what}: certificate too large")
        if len(self.agreement_signature) > MAX_AGREEMENT_SIGNATURE:
            raise InvalidRecord(f"{what}: agreement signature over {MAX_AGREEMENT_SIGNATURE} bytes")
        if self.status not in _UNCERTIFIED and not self.certificate:
            raise InvalidRecord(f"{what}: status {self.status.name} needs a certificate")
        object.__setattr__(self, "created", check_time(self.created, f"{what}: created", InvalidRecord))

    @classmethod
    def foreign(cls, epoch: int, session_id: bytes, attempt: int, members: tuple[bytes, ...], threshold: int,
                internal_key: bytes, output_key: bytes, certificate: bytes, created: float) -> "EpochRecord":
        """A certified session we hold no share of: the federation's key and its certificate only."""
        return cls(epoch, session_id, tuple(members), threshold, 0, b"", b"", (), internal_key, output_key,
                   created, certificate, EpochStatus.CERTIFIED, attempt)

    @property
    def member(self) -> bool:
        """We are in this session (we hold, or held, a share of its key)."""
        return self.identifier != 0

    @property
    def certified(self) -> bool:
        """Carries a certificate (certified, confirmed or retired): a candidate for the epoch's current key."""
        return self.status not in _UNCERTIFIED

    @property
    def usable(self) -> bool:
        """Certified or confirmed, not yet retired, and we hold a share: may sign."""
        return self.status in _USABLE and self.member

    @property
    def rank(self) -> tuple[int, bytes]:
        """Among an epoch's certified records, the highest rank is the current one."""
        return (self.attempt, self.session_id)

    def encode(self) -> bytes:
        w = (Writer().u8(_VERSION).u8(int(self.status)).u64(self.epoch).u32(self.attempt)
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
        w.var_bytes(self.agreement_signature, MAX_AGREEMENT_SIGNATURE)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes, what: str = "epoch record") -> "EpochRecord":
        """Version 2, or a version-1 record (one per epoch, before attempts were kept), read as attempt 0."""
        with stored(what):
            r = Reader(data, what)
            version = r.version(1, 2)
            try:
                status = EpochStatus(r.u8())
            except ValueError:
                raise CorruptStore(f"{what}: unknown status") from None
            epoch = r.u64()
            attempt = r.u32() if version >= 2 else 0
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
            signature = r.var_bytes(MAX_AGREEMENT_SIGNATURE) if version >= 2 else b""
            r.finish()
            return cls(epoch, session_id, members, threshold, identifier, share, commitments, vshares,
                       internal_key, output_key, created, certificate, status, attempt, signature)


def _epoch_prefix(epoch: int) -> bytes:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 1 << 64:
        raise ValueError(f"epoch number must be an int in [0, 2^64), not {epoch!r}")
    return u64(epoch)


def _check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes) or not 1 <= len(session_id) <= MAX_SESSION_ID:
        raise ValueError(f"session id must be 1..{MAX_SESSION_ID} bytes")
    return session_id


def _record_key(epoch: int, session_id: bytes) -> bytes:
    return _epoch_prefix(epoch) + _check_session_id(session_id)


def _name(epoch: int, session_id: Optional[bytes]) -> str:
    return f"epoch {epoch}" if session_id is None else f"epoch {epoch} session {session_id.hex()[:16]}"


def _current_of(records: list[EpochRecord]) -> Optional[EpochRecord]:
    certified = [r for r in records if r.certified]
    return max(certified, key=lambda r: r.rank) if certified else None


def _by_epoch(records: list[EpochRecord]) -> Iterator[list[EpochRecord]]:
    """Group records already in key order (epoch, then session id) by epoch."""
    group: list[EpochRecord] = []
    for rec in records:
        if group and group[0].epoch != rec.epoch:
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


class KeyStore:
    """
    DKG records, DKG run state and the last-DKG time, in sub-databases
    C{keys.records}, C{keys.sessions}, C{keys.meta}.

    Each write has a group-committed form returning a Deferred that fires
    after the fsync, and a C{_sync} form for tools and tests.  Writes that
    name one record take C{(epoch, ..., session_id)}; C{session_id} may be
    left out when the epoch holds exactly one record (callers from before
    several records per epoch existed).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._records = db.subdb(_RECORDS)
        self._sessions = db.subdb("keys.sessions")
        self._meta = db.subdb("keys.meta")
        self._upgrade()

    def _upgrade(self) -> None:
        """Move one-record-per-epoch stores' records to C{keys.records}, once, at start-up."""
        with self._db.read() as txn:
            if txn.get(_LEGACY.encode("ascii")) is None:
                return
        self._db.write_sync(self._move_legacy, self._db.subdb(_LEGACY))

    def _move_legacy(self, txn: Any, legacy: Any) -> None:
        for key, raw in txn.cursor(db=legacy):
            rec = EpochRecord.decode(raw, f"epoch {int.from_bytes(key, 'big')} (old layout)")
            txn.put(_record_key(rec.epoch, rec.session_id), rec.encode(), db=self._records)
        txn.drop(legacy, delete=True)

    # -- transaction bodies (writer thread) ------------------------------------

    def _get_record(self, txn: Any, epoch: int, session_id: bytes) -> Optional[EpochRecord]:
        raw = txn.get(_record_key(epoch, session_id), db=self._records)
        return None if raw is None else EpochRecord.decode(raw, _name(epoch, session_id))

    def _of_epoch(self, txn: Any, epoch: int) -> list[EpochRecord]:
        prefix = _epoch_prefix(epoch)
        cur = txn.cursor(db=self._records)
        out = []
        if cur.set_range(prefix):
            for key, raw in cur:
                if key[:8] != prefix:
                    break
                out.append(EpochRecord.decode(raw, _name(epoch, key[8:])))
        return out

    def _all(self, txn: Any) -> list[EpochRecord]:
        return [EpochRecord.decode(raw, _name(int.from_bytes(k[:8], "big"), k[8:]))
                for k, raw in txn.cursor(db=self._records)]

    def _newest_certified(self, txn: Any) -> Optional[EpochRecord]:
        cur = txn.cursor(db=self._records)
        if not cur.last():
            return None
        epoch = int.from_bytes(cur.key()[:8], "big")
        while True:
            best = _current_of(self._of_epoch(txn, epoch))
            if best is not None:
                return best
            if not cur.set_range(u64(epoch)) or not cur.prev():
                return None
            epoch = int.from_bytes(cur.key()[:8], "big")

    def _resolve(self, txn: Any, epoch: int, session_id: Optional[bytes]) -> EpochRecord:
        if session_id is not None:
            rec = self._get_record(txn, epoch, session_id)
            if rec is None:
                raise UnknownEpoch(f"{_name(epoch, session_id)}: no such record")
            return rec
        recs = self._of_epoch(txn, epoch)
        if not recs:
            raise UnknownEpoch(f"epoch {epoch}: no record")
        if len(recs) > 1:
            raise ValueError(f"epoch {epoch} holds {len(recs)} sessions: name the session")
        return recs[0]

    def _put(self, txn: Any, rec: EpochRecord) -> None:
        txn.put(_record_key(rec.epoch, rec.session_id), rec.encode(), db=self._records)

    def _put_pending(self, txn: Any, rec: EpochRecord) -> None:
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"{_name(rec.epoch, rec.session_id)}: new records must be PENDING, not {rec.status.name}")
        old = self._get_record(txn, rec.epoch, rec.session_id)
        if old is not None:
            if old == rec:
                return  # a DKG driver replaying its last step after a restart
            raise EpochExists(f"{_name(rec.epoch, rec.session_id)} already holds a different {old.status.name} record")
        self._put(txn, rec)

    def _note_certified(self, txn: Any, epoch: int, had_certificate: bool, now: float) -> None:
        """The first certificate of the newest epoch is the time of the last successful DKG."""
        if had_certificate:
            return
        newest = self._newest_certified(txn)
        if newest is not None and newest.epoch > epoch:
            return
        last = self._last_dkg(txn)
        if last is None or last < now:
            txn.put(_LAST_DKG, u64(micros(now)), db=self._meta)

    def _certify(self, txn: Any, epoch: int, session_id: Optional[bytes], certificate: bytes,
                 now: float) -> EpochRecord:
        if not certificate:
            raise ValueError(f"{_name(epoch, session_id)}: empty certificate")
        rec = self._resolve(txn, epoch, session_id)
        if rec.certified and rec.certificate == certificate:
            return rec
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"{_name(epoch, rec.session_id)}: cannot certify a {rec.status.name} record")
        had = _current_of(self._of_epoch(txn, epoch)) is not None
        rec = replace(rec, status=EpochStatus.CERTIFIED, certificate=certificate)
        self._put(txn, rec)
        self._note_certified(txn, epoch, had, now)
        return rec

    def _put_foreign(self, txn: Any, rec: EpochRecord, now: float) -> EpochRecord:
        name = _name(rec.epoch, rec.session_id)
        if rec.member or rec.status is not EpochStatus.CERTIFIED:
            raise InvalidTransition(f"{name}: a foreign record is CERTIFIED and has identifier 0")
        old = self._get_record(txn, rec.epoch, rec.session_id)
        if old is not None:
            if not old.member and old.certificate == rec.certificate:
                return old
            raise EpochExists(f"{name} already holds a {'member' if old.member else 'different foreign'} record")
        had = _current_of(self._of_epoch(txn, rec.epoch)) is not None
        self._put(txn, rec)
        self._note_certified(txn, rec.epoch, had, now)
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
        recs = self._of_epoch(txn, epoch)
        if not recs:
            raise UnknownEpoch(f"epoch {epoch}: no record")
        cur = _current_of(recs)
        if cur is None:
            raise InvalidTransition(f"epoch {epoch}: cannot confirm an epoch with no certified session")
        if cur.status is EpochStatus.RETIRED:
            raise InvalidTransition(f"{_name(epoch, cur.session_id)}: cannot confirm a RETIRED record")
        if cur.status is not EpochStatus.CONFIRMED:
            self._put(txn, replace(cur, status=EpochStatus.CONFIRMED))
        retired = set()
        for rec in self._all(txn):
            if rec.epoch > epoch:
                break
            if rec.epoch == epoch and rec.session_id == cur.session_id:
                continue
            if rec.status in _USABLE:
                self._put(txn, replace(rec, status=EpochStatus.RETIRED))
                retired.add(rec.epoch)
            elif rec.status is EpochStatus.PENDING and rec.epoch < epoch:
                self._put(txn, replace(rec, status=EpochStatus.ABORTED, secret_share=b""))
        return sorted(retired)

    def _abort(self, txn: Any, epoch: int, session_id: Optional[bytes]) -> None:
        rec = self._resolve(txn, epoch, session_id)
        if rec.status is EpochStatus.ABORTED:
            return
        if rec.status is not EpochStatus.PENDING:
            raise InvalidTransition(f"{_name(epoch, rec.session_id)}: cannot abort a {rec.status.name} record")
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
        Store our key package of one session as PENDING; fires (None) after
        fsync.  Re-storing an identical record is a no-op; a different one
        under the same (epoch, session id) fails with L{EpochExists}.  Other
        sessions of the same epoch are independent records.
        """
        _record_key(rec.epoch, rec.session_id)
        return self._db.write(self._put_pending, rec)

    def certify(self, epoch: int, certificate: bytes, now: float, session_id: Optional[bytes] = None) -> Deferred:
        """
        PENDING -> CERTIFIED with C{certificate}; fires with the record.  If
        this is the first certificate of the newest epoch, C{now} becomes
        the last-DKG time.  Certifying again with the same certificate is a
        no-op.
        """
        return self._db.write(self._certify, epoch, session_id, bytes(certificate), check_time(now, "now"))

    def put_foreign(self, rec: EpochRecord, now: float) -> Deferred:
        """
        Store a certified session we hold no share of (L{EpochRecord.foreign});
        fires with the record.  Same last-DKG rule as L{certify}; storing
        the same certificate again is a no-op.
        """
        return self._db.write(self._put_foreign, rec, check_time(now, "now"))

    def confirm(self, epoch: int) -> Deferred:
        """
        The epoch's current record -> CONFIRMED; every other usable record of
        this and older epochs -> RETIRED, pending ones of older epochs ->
        ABORTED.  Fires with the epoch numbers of the retired records.
        """
        _epoch_prefix(epoch)
        return self._db.write(self._confirm, epoch)

    def abort(self, epoch: int, session_id: Optional[bytes] = None) -> Deferred:
        """PENDING -> ABORTED, erasing the secret share."""
        return self._db.write(self._abort, epoch, session_id)

    def save_session(self, session_id: bytes, state: bytes) -> Deferred:
        """Replace the crash-recovery state of an unfinished DKG session; fires after fsync."""
        return self._db.write(self._save_session, _check_session_id(session_id), self._check_state(state))

    def drop_session(self, session_id: bytes) -> Deferred:
        """Forget a finished session's state; fires with whether there was any."""
        return self._db.write(self._drop_session, _check_session_id(session_id))

    # -- synchronous writes ---------------------------------------------------------

    def put_pending_sync(self, rec: EpochRecord) -> None:
        _record_key(rec.epoch, rec.session_id)
        self._db.write_sync(self._put_pending, rec)

    def certify_sync(self, epoch: int, certificate: bytes, now: float, session_id: Optional[bytes] = None) -> EpochRecord:
        return self._db.write_sync(self._certify, epoch, session_id, bytes(certificate), check_time(now, "now"))

    def put_foreign_sync(self, rec: EpochRecord, now: float) -> EpochRecord:
        return self._db.write_sync(self._put_foreign, rec, check_time(now, "now"))

    def confirm_sync(self, epoch: int) -> list[int]:
        _epoch_prefix(epoch)
        return self._db.write_sync(self._confirm, epoch)

    def abort_sync(self, epoch: int, session_id: Optional[bytes] = None) -> None:
        self._db.write_sync(self._abort, epoch, session_id)

    def save_session_sync(self, session_id: bytes, state: bytes) -> None:
        self._db.write_sync(self._save_session, _check_session_id(session_id), self._check_state(state))

    def drop_session_sync(self, session_id: bytes) -> bool:
        return self._db.write_sync(self._drop_session, _check_session_id(session_id))

    # -- reads -------------------------------------------------------------------------

    def current(self, epoch: int) -> Optional[EpochRecord]:
        """The epoch's current record: its certified session with the highest rank, or None."""
        with self._db.read() as txn:
            return _current_of(self._of_epoch(txn, epoch))

    def get(self, epoch: int) -> Optional[EpochRecord]:
        """
        The epoch's current record; for an epoch with no certificate yet, its
        highest-ranked (pending or aborted) record; None for an unknown epoch.
        """
        with self._db.read() as txn:
            recs = self._of_epoch(txn, epoch)
        return _current_of(recs) or (max(recs, key=lambda r: r.rank) if recs else None)

    def record(self, epoch: int, session_id: bytes) -> Optional[EpochRecord]:
        """One session's record, winning or not."""
        with self._db.read() as txn:
            return self._get_record(txn, epoch, session_id)

    def records(self, epoch: Optional[int] = None) -> list[EpochRecord]:
        """Every record (of one epoch), by epoch then session id."""
        with self._db.read() as txn:
            return self._all(txn) if epoch is None else self._of_epoch(txn, epoch)

    def epochs(self) -> list[EpochRecord]:
        """One record per stored epoch (as L{get} chooses it), oldest first."""
        return [_current_of(g) or max(g, key=lambda r: r.rank) for g in _by_epoch(self.records())]

    def usable(self) -> list[EpochRecord]:
        """
        Epochs whose current record may sign (certified or confirmed, not
        retired, and ours), one record per epoch, oldest first.
        """
        out = []
        for group in _by_epoch(self.records()):
            cur = _current_of(group)
            if cur is not None and cur.usable:
                out.append(cur)
        return out

    def newest_usable(self) -> Optional[EpochRecord]:
        """The current record of the newest epoch whose current record we can sign with, or None."""
        u = self.usable()
        return u[-1] if u else None

    def newest_certified(self) -> Optional[EpochRecord]:
        """The current record of the newest epoch that has one, ours or foreign: the federation's key."""
        with self._db.read() as txn:
            return self._newest_certified(txn)

    def last_epoch_number(self) -> Optional[int]:
        """The highest epoch number ever stored (any status), to number the next DKG."""
        with self._db.read() as txn:
            cur = txn.cursor(db=self._records)
            if not cur.last():
                return None
            return int.from_bytes(cur.key()[:8], "big")

    def last_dkg(self) -> Optional[float]:
        """When we first held a certificate of the newest certified epoch (ours or foreign), or None if never."""
        with self._db.read() as txn:
            return self._last_dkg(txn)

    def session(self, session_id: bytes) -> Optional[bytes]:
        with self._db.read() as txn:
            return txn.get(_check_session_id(session_id), db=self._sessions)

    def sessions(self) -> dict[bytes, bytes]:
        """All unfinished sessions' state, to resume or abort after a restart."""
        with self._db.read() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=self._sessions)}
