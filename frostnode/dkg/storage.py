# -*- test-case-name: tests.test_dkg_driver -*-
"""
What the DKG driver persists, behind one small interface.

The driver needs: the run's state (written before each round-1 broadcast),
our key of each session we sign (written before the agreement signature
leaves), the certificates we hold (sessions we are in, and sessions we are
not in, for example because we were excluded: we still know the
federation's key and keep the spacing), and the time of the last successful
DKG.

Several certified sessions per epoch
====================================
A run may sign several sessions (attempts) of one epoch, and more than one
may be certified (see L{frostnode.dkg.run}).  Every certificate is kept, and
the epoch's I{current} certificate is the one with the highest
C{(attempt, session id)} (L{rank}): the rule L{frostnode.store.keys}
documents, and why it is safe.  L{DkgStorage.current} answers with it; the
driver passes it on to peers whenever it changes, so members that saw the
certificates in different orders, or restarted in between, end with the
same one.

L{KeyStoreDkgStorage} maps this onto L{frostnode.store.keys.KeyStore}: a
signed session's key is a PENDING record (C{put_pending}, which fires after
fsync, so the signature leaves only afterwards), certifying it is
C{certify}, a certificate of a session we are not in is a foreign record
(C{put_foreign}).  Only the run's crash-recovery state lives in the key
store's session table, under C{dkg/run}.

L{MemoryDkgStorage} is the same in dicts, for tests and benchmarks; its
Deferreds have already fired.
"""

from __future__ import annotations

from typing import Optional, Protocol

from twisted.internet.defer import Deferred, DeferredList, succeed

from frostnode.crypto.bip340 import taproot_output_key
from frostnode.crypto.errors import InvalidEncoding
from frostnode.crypto.group import base_mul, point_from_bytes, point_sum, scalar_from_bytes, scalar_to_bytes
from frostnode.crypto.keygen import KeyPackage
from frostnode.dkg.run import RunState
from frostnode.dkg.session import PendingKey
from frostnode.dkg.transcript import Certificate, SessionParams, agreement_hash, commitments_hash
from frostnode.store.keys import EpochRecord, EpochStatus, KeyStore
from frostnode.wire import Reader, Writer

_RUN = b"dkg/run"
# The session-table keys of the layout before several records per epoch (see
# KeyStoreDkgStorage._upgrade).
_SIGNED = b"dkg/signed/"
_FOREIGN = b"dkg/foreign/"
_ALSO = b"dkg/also/"


def rank(cert: Certificate) -> tuple[int, bytes]:
    """The order of an epoch's certificates: the highest is current (as L{EpochRecord.rank})."""
    return (cert.params.attempt, cert.params.session_id)


class DkgStorage(Protocol):
    """The driver's persistence; every write's Deferred fires after it is durable."""

    def last_dkg(self) -> Optional[float]:
        """When we first held a certificate of the newest certified epoch (ours or foreign), or None."""

    def last_epoch(self) -> int:
        """The newest epoch we hold a certificate of (0: none yet)."""

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        """The stored run and whether it was closed (failed), or None."""

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        ...

    def finish_run(self) -> Deferred:
        """Drop the run state: its epoch has a certificate."""

    def load_signed(self, epoch: Optional[int] = None) -> dict[bytes, PendingKey]:
        """Our keys of signed, not yet certified sessions (of C{epoch}), by session id."""

    def signed_key(self, params: SessionParams) -> Optional[PendingKey]:
        """Our key of a session we signed, certified or not, or None."""

    def save_signed(self, pending: PendingKey, now: float) -> Deferred:
        """Our key of a session we are about to sign."""

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        """Our key of C{certificate}'s session is certified; fires after fsync."""

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        """A certified session we hold no share of."""

    def certificates(self, epoch: int) -> list[Certificate]:
        """Every certificate we hold for C{epoch}, lowest rank first."""

    def current(self, epoch: int) -> Optional[Certificate]:
        """C{epoch}'s current certificate: the highest-ranked one we hold, or None."""


def _encode_run(state: RunState, closed: bool) -> bytes:
    return Writer().u8(1).flag(closed).raw(state.encode()).to_bytes()


def _decode_run(data: bytes) -> tuple[RunState, bool]:
    r = Reader(data, "stored DKG run")
    r.version(1)
    closed = r.flag()
    return RunState.decode(r.rest(1 << 24)), closed


def _decode_legacy_foreign(data: bytes) -> tuple[Certificate, float]:
    r = Reader(data, "foreign certificate")
    r.version(1)
    when = r.u64() / 1_000_000
    return Certificate.decode(r.rest(1 << 24)), when


def epoch_record(pending: PendingKey, now: float) -> EpochRecord:
    """The key store's PENDING record of our key of a session, written before we sign it."""
    kp = pending.key_package
    p = pending.params
    internal = kp.group_key
    return EpochRecord(
        epoch=p.epoch,
        session_id=p.session_id,
        members=p.members,
        threshold=p.threshold,
        identifier=kp.identifier,
        secret_share=scalar_to_bytes(kp.secret_share),
        commitments=b"".join(c.encode() for cs in pending.commitments for c in cs),
        verification_shares=tuple(kp.verification_shares[j].encode() for j in p.identifiers()),
        internal_key=internal.encode(),
        output_key=taproot_output_key(internal.xbytes())[0],
        created=now,
        attempt=p.attempt,
        agreement_signature=pending.signature,
    )


def foreign_record(cert: Certificate, now: float) -> EpochRecord:
    """The key store's record of a certified session we are not in."""
    p = cert.params
    internal = cert.group_key
    return EpochRecord.foreign(p.epoch, p.session_id, p.attempt, p.members, p.threshold, internal.encode(),
                               taproot_output_key(internal.xbytes())[0], cert.encode(), now)


def pending_from_record(rec: EpochRecord) -> PendingKey:
    """
    Our key of a session, rebuilt from its member record (the inverse of L{epoch_record}).

    @raise InvalidEncoding: the record does not describe a session we signed
        (no share, or fields that contradict each other).
    """
    what = f"epoch {rec.epoch} session {rec.session_id.hex()[:16]}"
    if not rec.member or len(rec.secret_share) != 32 or len(rec.agreement_signature) != 64:
        raise InvalidEncoding(f"{what}: not a signed session's key of ours")
    params = SessionParams(rec.epoch, rec.attempt, rec.threshold, rec.members)
    if params.session_id != rec.session_id:
        raise InvalidEncoding(f"{what}: session id does not match its parameters")
    n, t = params.n, params.threshold
    if len(rec.commitments) != 33 * n * t:
        raise InvalidEncoding(f"{what}: {len(rec.commitments)} bytes of commitments for n={n}, t={t}")
    flat = [point_from_bytes(rec.commitments[33 * k:33 * (k + 1)]) for k in range(n * t)]
    comms = tuple(tuple(flat[t * j:t * (j + 1)]) for j in range(n))
    secret = scalar_from_bytes(rec.secret_share)
    vshares = {j: point_from_bytes(v) for j, v in zip(params.identifiers(), rec.verification_shares)}
    if rec.identifier not in vshares or base_mul(secret) != vshares[rec.identifier]:
        raise InvalidEncoding(f"{what}: secret share does not match our verification share")
    group_key = point_from_bytes(rec.internal_key)
    kp = KeyPackage(rec.identifier, t, secret, group_key, vshares, point_sum(cs[0] for cs in comms))
    ah = agreement_hash(params, group_key, commitments_hash(comms))
    return PendingKey(params, kp, comms, ah, rec.agreement_signature)


class KeyStoreDkgStorage:
    """
    L{DkgStorage} over a L{KeyStore}.

    @param sync: use the key store's synchronous writes (a L{Database}
        opened without a reactor: tools, and tests driven by C{task.Clock}).
    """

    def __init__(self, keys: KeyStore, sync: bool = False) -> None:
        self.keys = keys
        self.sync = sync
        self._upgrade()

    def _upgrade(self) -> None:
        """
        Move what the previous layout kept in the session table into records,
        once, at start-up: signed sessions' keys (C{dkg/signed/}), late
        second certificates of an epoch (C{dkg/also/}) and foreign
        certificates (C{dkg/foreign/}).  Synchronous writes: nothing else is
        in flight yet.
        """
        old = {k: v for k, v in self.keys.sessions().items() if k.startswith((_SIGNED, _FOREIGN, _ALSO))}
        if not old:
            return
        also = {k[len(_ALSO):]: Certificate.decode(v) for k, v in old.items() if k.startswith(_ALSO)}
        when = self.keys.last_dkg() or 0.0
        for k, v in old.items():
            if k.startswith(_SIGNED):
                pk = PendingKey.decode(v)
                p = pk.params
                if self.keys.record(p.epoch, p.session_id) is None:
                    self.keys.put_pending_sync(epoch_record(pk, when))
                cert = also.get(p.session_id)
                if cert is not None:
                    self.keys.certify_sync(p.epoch, cert.encode(), when, session_id=p.session_id)
            elif k.startswith(_FOREIGN):
                cert, at = _decode_legacy_foreign(v)
                if self.keys.record(cert.params.epoch, cert.params.session_id) is None:
                    self.keys.put_foreign_sync(foreign_record(cert, at), at)
        for k in old:
            self.keys.drop_session_sync(k)

    def _save(self, key: bytes, value: bytes) -> Deferred:
        if self.sync:
            self.keys.save_session_sync(key, value)
            return succeed(None)
        return self.keys.save_session(key, value)

    def last_dkg(self) -> Optional[float]:
        return self.keys.last_dkg()

    def last_epoch(self) -> int:
        rec = self.keys.newest_certified()
        return 0 if rec is None else rec.epoch

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        raw = self.keys.session(_RUN)
        return None if raw is None else _decode_run(raw)

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        return self._save(_RUN, _encode_run(state, closed))

    def finish_run(self) -> Deferred:
        if self.sync:
            self.keys.drop_session_sync(_RUN)
            return succeed(None)
        d = self.keys.drop_session(_RUN)
        d.addCallback(lambda _: None)
        return d

    def load_signed(self, epoch: Optional[int] = None) -> dict[bytes, PendingKey]:
        return {r.session_id: pending_from_record(r) for r in self.keys.records(epoch)
                if r.status is EpochStatus.PENDING}

    def signed_key(self, params: SessionParams) -> Optional[PendingKey]:
        rec = self.keys.record(params.epoch, params.session_id)
        if rec is None or not rec.member or rec.status is EpochStatus.ABORTED:
            return None
        return pending_from_record(rec)

    def save_signed(self, pending: PendingKey, now: float) -> Deferred:
        rec = epoch_record(pending, now)
        if self.sync:
            self.keys.put_pending_sync(rec)
            return succeed(None)
        return self.keys.put_pending(rec)

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        p = pending.params
        rec = self.keys.record(p.epoch, p.session_id)
        if rec is not None and rec.certified:
            return succeed(None)
        if self.sync:
            if rec is None:
                self.keys.put_pending_sync(epoch_record(pending, now))
            self.keys.certify_sync(p.epoch, certificate.encode(), now, session_id=p.session_id)
            return succeed(None)
        # Both submitted in this reactor turn: one group commit writes them.
        ds = [] if rec is not None else [self.keys.put_pending(epoch_record(pending, now))]
        ds.append(self.keys.certify(p.epoch, certificate.encode(), now, session_id=p.session_id))
        d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        d.addCallback(lambda _: None)
        d.addErrback(lambda f: f.value.subFailure)
        return d

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        p = certificate.params
        if self.keys.record(p.epoch, p.session_id) is not None:
            return succeed(None)
        rec = foreign_record(certificate, now)
        if self.sync:
            self.keys.put_foreign_sync(rec, now)
            return succeed(None)
        d = self.keys.put_foreign(rec, now)
        d.addCallback(lambda _: None)
        return d

    def certificates(self, epoch: int) -> list[Certificate]:
        certs = [Certificate.decode(r.certificate) for r in self.keys.records(epoch) if r.certified]
        return sorted(certs, key=rank)

    def current(self, epoch: int) -> Optional[Certificate]:
        rec = self.keys.current(epoch)
        return None if rec is None else Certificate.decode(rec.certificate)


class MemoryDkgStorage:
    """
    L{DkgStorage} in memory: for tests, benchmarks and nodes without a data directory.

    @ivar signed: our keys of signed sessions not certified yet, by session id.
    @ivar records: every certificate we hold by session id, with our key
        (None for a session we are not in) and when we stored it.
    """

    def __init__(self) -> None:
        self.run: Optional[tuple[RunState, bool]] = None
        self.signed: dict[bytes, PendingKey] = {}
        self.records: dict[bytes, tuple[Optional[PendingKey], Certificate, float]] = {}
        self.last: Optional[float] = None
        self.writes = 0

    def last_dkg(self) -> Optional[float]:
        return self.last

    def last_epoch(self) -> int:
        return max([c.params.epoch for _, c, _ in self.records.values()] + [0])

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        return self.run

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        self.writes += 1
        self.run = (state, closed)
        return succeed(None)

    def finish_run(self) -> Deferred:
        self.writes += 1
        self.run = None
        return succeed(None)

    def load_signed(self, epoch: Optional[int] = None) -> dict[bytes, PendingKey]:
        return {sid: pk for sid, pk in self.signed.items() if epoch is None or pk.params.epoch == epoch}

    def signed_key(self, params: SessionParams) -> Optional[PendingKey]:
        pk = self.signed.get(params.session_id)
        if pk is None and params.session_id in self.records:
            pk = self.records[params.session_id][0]
        return pk

    def save_signed(self, pending: PendingKey, now: float) -> Deferred:
        self.writes += 1
        self.signed[pending.params.session_id] = pending
        return succeed(None)

    def _add(self, pending: Optional[PendingKey], cert: Certificate, now: float) -> Deferred:
        sid = cert.params.session_id
        if sid in self.records:
            return succeed(None)
        self.writes += 1
        epoch = cert.params.epoch
        first = self.current(epoch) is None and epoch >= self.last_epoch()
        self.records[sid] = (pending, cert, now)
        self.signed.pop(sid, None)
        if first and (self.last is None or self.last < now):
            self.last = now
        return succeed(None)

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        return self._add(pending, certificate, now)

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        return self._add(None, certificate, now)

    def certificates(self, epoch: int) -> list[Certificate]:
        return sorted((c for _, c, _ in self.records.values() if c.params.epoch == epoch), key=rank)

    def current(self, epoch: int) -> Optional[Certificate]:
        certs = self.certificates(epoch)
        return certs[-1] if certs else None
