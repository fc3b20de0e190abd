# -*- test-case-name: tests.test_dkg_driver -*-
"""
What the DKG driver persists, behind one small interface.

The driver needs: the run's state (written before each round-1 broadcast),
each signed session's L{PendingKey} (written before the agreement signature
leaves), certified keys with their certificates and the time of the last
successful DKG, and certificates of epochs we hold no share of (we were
excluded) so that we still know the federation's key and keep the spacing.

L{KeyStoreDkgStorage} maps this onto L{frostnode.store.keys.KeyStore}:

  - certified keys are epoch records: C{put_pending} then C{certify}, both
    submitted in the same reactor turn, so one group commit writes them;
  - the run state, the signed sessions' keys and foreign certificates live
    in the key store's crash-recovery session table, under the keys
    C{dkg/run}, C{dkg/signed/<session id>} and C{dkg/foreign/<epoch>}.
    Those writes fire after fsync like every other;
  - a second certified session of an epoch (see L{frostnode.dkg.run}) keeps
    its key under C{dkg/signed/<session id>} for good, with its certificate
    under C{dkg/also/<session id>}: funds may have been sent to that key too,
    so its share is never dropped.

Why signed keys are not C{put_pending} epoch records: the key store holds
one record per epoch, while a run may sign several sessions (attempts) of
the same epoch, any of which may still be certified (see
L{frostnode.dkg.run}).  Only the certified one becomes the epoch's record.
A second certified session of the same epoch keeps its key in the session
table (the epoch record cannot hold two keys); see L{DkgStorage.also_certified}.

L{MemoryDkgStorage} is the same in a dict, for tests and benchmarks; its
Deferreds have already fired.
"""

from __future__ import annotations

from typing import Optional, Protocol

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed

from frostnode.crypto.bip340 import taproot_output_key
from frostnode.crypto.group import scalar_to_bytes
from frostnode.dkg.run import RunState
from frostnode.dkg.session import PendingKey
from frostnode.dkg.transcript import Certificate
from frostnode.store.keys import EpochRecord, EpochStatus, KeyStore
from frostnode.wire import Reader, Writer

_RUN = b"dkg/run"
_SIGNED = b"dkg/signed/"
_FOREIGN = b"dkg/foreign/"
_ALSO = b"dkg/also/"


class DkgStorage(Protocol):
    """The driver's persistence; every write's Deferred fires after it is durable."""

    def last_dkg(self) -> Optional[float]:
        """When the newest DKG we know of was certified (ours or foreign), or None."""

    def last_epoch(self) -> int:
        """The newest certified epoch we know of (0: none yet)."""

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        """The stored run and whether it was closed (failed), or None."""

    def load_signed(self) -> dict[bytes, PendingKey]:
        """Signed sessions' keys by session id."""

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        ...

    def save_signed(self, pending: PendingKey) -> Deferred:
        ...

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        """Our key of C{certificate}'s session is certified: the epoch's record; fires after fsync."""

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        """A certified epoch we hold no share of."""

    def certificates(self, epoch: int) -> list[Certificate]:
        """Certificates we hold for C{epoch} (to answer peers' status requests)."""

    def also_certified(self) -> dict[bytes, tuple[Certificate, Optional[PendingKey]]]:
        """Sessions certified after their epoch already had a key: certificate and our key, by session id."""

    def finish_epoch(self, epoch: int, keep: set[bytes]) -> Deferred:
        """Drop the run state and signed keys of epochs up to C{epoch}, except sessions in C{keep}."""


def _encode_run(state: RunState, closed: bool) -> bytes:
    return Writer().u8(1).flag(closed).raw(state.encode()).to_bytes()


def _decode_run(data: bytes) -> tuple[RunState, bool]:
    r = Reader(data, "stored DKG run")
    r.version(1)
    closed = r.flag()
    return RunState.decode(r.rest(1 << 24)), closed


def _encode_foreign(cert: Certificate, now: float) -> bytes:
    return Writer().u8(1).u64(round(now * 1_000_000)).raw(cert.encode()).to_bytes()


def _decode_foreign(data: bytes) -> tuple[Certificate, float]:
    r = Reader(data, "foreign certificate")
    r.version(1)
    when = r.u64() / 1_000_000
    return Certificate.decode(r.rest(1 << 24)), when


def epoch_record(pending: PendingKey, certificate: Certificate, now: float) -> EpochRecord:
    """The key store's PENDING record for our key of a certified session."""
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
    )


class KeyStoreDkgStorage:
    """
    L{DkgStorage} over a L{KeyStore}.

    @param sync: use the key store's synchronous writes (a L{Database}
        opened without a reactor: tools, and tests driven by C{task.Clock}).
    """

    def __init__(self, keys: KeyStore, sync: bool = False) -> None:
        self.keys = keys
        self.sync = sync

    def _save(self, key: bytes, value: bytes) -> Deferred:
        if self.sync:
            self.keys.save_session_sync(key, value)
            return succeed(None)
        return self.keys.save_session(key, value)

    def _drop(self, key: bytes) -> Deferred:
        if self.sync:
            self.keys.drop_session_sync(key)
            return succeed(None)
        return self.keys.drop_session(key)

    def _foreign(self) -> dict[int, tuple[Certificate, float]]:
        out = {}
        for k, v in self.keys.sessions().items():
            if k.startswith(_FOREIGN):
                cert, when = _decode_foreign(v)
                out[cert.params.epoch] = (cert, when)
        return out

    def last_dkg(self) -> Optional[float]:
        times = [w for _, w in self._foreign().values()]
        own = self.keys.last_dkg()
        if own is not None:
            times.append(own)
        return max(times) if times else None

    def last_epoch(self) -> int:
        certified = [r.epoch for r in self.keys.epochs() if r.status is not EpochStatus.PENDING and r.status is not EpochStatus.ABORTED]
        return max(certified + list(self._foreign()) + [0])

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        raw = self.keys.session(_RUN)
        return None if raw is None else _decode_run(raw)

    def load_signed(self) -> dict[bytes, PendingKey]:
        return {k[len(_SIGNED):]: PendingKey.decode(v) for k, v in self.keys.sessions().items() if k.startswith(_SIGNED)}

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        return self._save(_RUN, _encode_run(state, closed))

    def save_signed(self, pending: PendingKey) -> Deferred:
        return self._save(_SIGNED + pending.params.session_id, pending.encode())

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        epoch = pending.params.epoch
        existing = self.keys.get(epoch)
        if existing is not None and existing.session_id != pending.params.session_id:
            # A second certified session of this epoch: its key stays in the
            # session table for good (see the module docstring).
            return gatherResults([self.save_signed(pending),
                                  self._save(_ALSO + pending.params.session_id, certificate.encode())])
        if existing is not None and existing.certificate:
            return succeed(None)
        rec = epoch_record(pending, certificate, now)
        if self.sync:
            if existing is None:
                self.keys.put_pending_sync(rec)
            self.keys.certify_sync(epoch, certificate.encode(), now)
            return succeed(None)
        ds = [] if existing is not None else [self.keys.put_pending(rec)]
        ds.append(self.keys.certify(epoch, certificate.encode(), now))
        d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        d.addCallback(lambda _: None)
        d.addErrback(lambda f: f.value.subFailure)
        return d

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        return self._save(_FOREIGN + certificate.params.epoch.to_bytes(8, "big"), _encode_foreign(certificate, now))

    def certificates(self, epoch: int) -> list[Certificate]:
        out = []
        rec = self.keys.get(epoch)
        if rec is not None and rec.certificate:
            out.append(Certificate.decode(rec.certificate))
        f = self._foreign().get(epoch)
        if f is not None:
            out.append(f[0])
        out.extend(c for c, _ in self.also_certified().values() if c.params.epoch == epoch)
        return out

    def also_certified(self) -> dict[bytes, tuple[Certificate, Optional[PendingKey]]]:
        signed = self.load_signed()
        return {k[len(_ALSO):]: (Certificate.decode(v), signed.get(k[len(_ALSO):]))
                for k, v in self.keys.sessions().items() if k.startswith(_ALSO)}

    def finish_epoch(self, epoch: int, keep: set[bytes]) -> Deferred:
        ds = [self._drop(_RUN)]
        also = set(self.also_certified())
        for sid, pk in self.load_signed().items():
            if sid in also:
                continue
            if pk.params.epoch < epoch or (pk.params.epoch == epoch and sid not in keep):
                ds.append(self._drop(_SIGNED + sid))
        d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d


class MemoryDkgStorage:
    """L{DkgStorage} in memory: for tests, benchmarks and nodes without a data directory."""

    def __init__(self) -> None:
        self.run: Optional[tuple[RunState, bool]] = None
        self.signed: dict[bytes, PendingKey] = {}
        self.records: dict[int, tuple[PendingKey, Certificate, float]] = {}
        self.foreign: dict[int, tuple[Certificate, float]] = {}
        self.also: dict[bytes, tuple[Certificate, Optional[PendingKey]]] = {}
        self.writes = 0

    def last_dkg(self) -> Optional[float]:
        times = [w for _, _, w in self.records.values()] + [w for _, w in self.foreign.values()]
        return max(times) if times else None

    def last_epoch(self) -> int:
        return max(list(self.records) + list(self.foreign) + [0])

    def load_run(self) -> Optional[tuple[RunState, bool]]:
        return self.run

    def load_signed(self) -> dict[bytes, PendingKey]:
        return dict(self.signed)

    def save_run(self, state: RunState, closed: bool = False) -> Deferred:
        self.writes += 1
        self.run = (state, closed)
        return succeed(None)

    def save_signed(self, pending: PendingKey) -> Deferred:
        self.writes += 1
        self.signed[pending.params.session_id] = pending
        return succeed(None)

    def certify(self, pending: PendingKey, certificate: Certificate, now: float) -> Deferred:
        self.writes += 1
        epoch = pending.params.epoch
        if epoch in self.records and self.records[epoch][1].params != certificate.params:
            self.also[certificate.params.session_id] = (certificate, pending)
        else:
            self.records.setdefault(epoch, (pending, certificate, now))
        return succeed(None)

    def record_foreign(self, certificate: Certificate, now: float) -> Deferred:
        self.writes += 1
        self.foreign.setdefault(certificate.params.epoch, (certificate, now))
        return succeed(None)

    def certificates(self, epoch: int) -> list[Certificate]:
        out = [self.records[epoch][1]] if epoch in self.records else []
        if epoch in self.foreign:
            out.append(self.foreign[epoch][0])
        out.extend(c for c, _ in self.also.values() if c.params.epoch == epoch)
        return out

    def also_certified(self) -> dict[bytes, tuple[Certificate, Optional[PendingKey]]]:
        return dict(self.also)

    def finish_epoch(self, epoch: int, keep: set[bytes]) -> Deferred:
        self.writes += 1
        self.run = None
        for sid, pk in list(self.signed.items()):
            if sid in self.also:
                continue
            if pk.params.epoch < epoch or (pk.params.epoch == epoch and sid not in keep):
                del self.signed[sid]
        return succeed(None)
