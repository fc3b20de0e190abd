"""
DKG epochs: the status lifecycle, several sessions per epoch and the rule
that picks the current one, foreign records, durability before the caller
proceeds, session state for crash recovery, the persisted last-DKG time, and
the move from the one-record-per-epoch layout.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.store.db import Database
from frostnode.store.errors import EpochExists, InvalidRecord, InvalidTransition, UnknownEpoch
from frostnode.store.codec import micros
from frostnode.store.keys import EpochRecord, EpochStatus, KeyStore
from frostnode.wire import MAX_U32, Writer

MEMBERS = tuple(sorted(bytes([i]) * 32 for i in range(1, 5)))


def record(epoch: int, **kw) -> EpochRecord:
    fields = dict(
        epoch=epoch,
        session_id=b"session-%d" % epoch,
        members=MEMBERS,
        threshold=3,
        identifier=2,
        secret_share=bytes([epoch + 1]) * 32,
        commitments=os.urandom(4 * 3 * 33),
        verification_shares=tuple(bytes([2]) + bytes([i]) * 32 for i in range(4)),
        internal_key=bytes([epoch + 7]) * 32,
        output_key=bytes([epoch + 9]) * 32,
        created=1000.0 + epoch,
    )
    fields.update(kw)
    return EpochRecord(**fields)


class LifecycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.open()

    def open(self) -> None:
        self.db = Database.open(self.dir)
        self.keys = KeyStore(self.db)

    def reopen(self) -> None:
        self.db.close_sync()
        self.open()

    def tearDown(self) -> None:
        self.db.close_sync()

    def test_pending_record_round_trips_across_restart(self) -> None:
        rec = record(1)
        self.keys.put_pending_sync(rec)
        self.reopen()
        got = self.keys.get(1)
        self.assertEqual(got, rec)
        self.assertEqual(got.status, EpochStatus.PENDING)
        self.assertFalse(got.usable)
        self.assertEqual(self.keys.usable(), [])

    def test_put_pending_is_idempotent_but_not_overwritable(self) -> None:
        rec = record(1)
        self.keys.put_pending_sync(rec)
        self.keys.put_pending_sync(rec)
        self.assertRaises(EpochExists, self.keys.put_pending_sync, replace(rec, secret_share=b"\x55" * 32))
        self.assertEqual(self.keys.get(1).secret_share, rec.secret_share)

    def test_certify_records_last_dkg_time_durably(self) -> None:
        self.assertIsNone(self.keys.last_dkg())
        self.keys.put_pending_sync(record(1))
        cert = os.urandom(4 * 64)
        got = self.keys.certify_sync(1, cert, now=5000.0)
        self.assertEqual((got.status, got.certificate), (EpochStatus.CERTIFIED, cert))
        self.reopen()
        self.assertEqual(self.keys.last_dkg(), 5000.0)
        self.assertEqual(self.keys.get(1).certificate, cert)
        self.assertEqual([r.epoch for r in self.keys.usable()], [1])
        # certifying again with the same certificate is harmless; another one is not
        self.keys.certify_sync(1, cert, now=6000.0)
        self.assertEqual(self.keys.last_dkg(), 5000.0)
        self.assertRaises(InvalidTransition, self.keys.certify_sync, 1, b"other", 6000.0)

    def test_old_epochs_usable_until_a_newer_one_is_confirmed(self) -> None:
        for e in (1, 2, 3):
            self.keys.put_pending_sync(record(e))
        self.keys.certify_sync(1, b"c1", 1.0)
        self.keys.confirm_sync(1)
        self.keys.certify_sync(2, b"c2", 2.0)
        self.keys.certify_sync(3, b"c3", 3.0)
        self.assertEqual([r.epoch for r in self.keys.usable()], [1, 2, 3])
        self.assertEqual(self.keys.confirm_sync(3), [1, 2])
        self.reopen()
        self.assertEqual([r.epoch for r in self.keys.usable()], [3])
        self.assertEqual(self.keys.newest_usable().status, EpochStatus.CONFIRMED)
        self.assertEqual([r.status for r in self.keys.epochs()],
                         [EpochStatus.RETIRED, EpochStatus.RETIRED, EpochStatus.CONFIRMED])
        self.assertEqual(self.keys.get(1).secret_share, record(1).secret_share)  # history kept
        self.assertEqual(self.keys.confirm_sync(3), [])

    def test_abort_erases_the_share(self) -> None:
        self.keys.put_pending_sync(record(4))
        self.keys.abort_sync(4)
        self.reopen()
        got = self.keys.get(4)
        self.assertEqual((got.status, got.secret_share), (EpochStatus.ABORTED, b""))
        self.assertEqual(self.keys.last_epoch_number(), 4)
        self.assertRaises(InvalidTransition, self.keys.certify_sync, 4, b"c", 1.0)

    def test_forbidden_transitions_name_the_epoch(self) -> None:
        self.keys.put_pending_sync(record(1))
        e = self.assertRaises(InvalidTransition, self.keys.confirm_sync, 1)
        self.assertIn("epoch 1", str(e))
        self.keys.certify_sync(1, b"c", 1.0)
        self.assertRaises(InvalidTransition, self.keys.abort_sync, 1)
        self.assertRaises(UnknownEpoch, self.keys.certify_sync, 9, b"c", 1.0)
        self.assertRaises(ValueError, self.keys.certify_sync, 1, b"", 1.0)
        self.assertRaises(InvalidTransition, self.keys.put_pending_sync, replace(record(2), status=EpochStatus.CERTIFIED, certificate=b"c"))

    def test_sessions_survive_restart_until_dropped(self) -> None:
        self.keys.save_session_sync(b"s1", b"state-a")
        self.keys.save_session_sync(b"s2", b"state-b")
        self.keys.save_session_sync(b"s1", b"state-a2")
        self.reopen()
        self.assertEqual(self.keys.sessions(), {b"s1": b"state-a2", b"s2": b"state-b"})
        self.assertTrue(self.keys.drop_session_sync(b"s1"))
        self.assertFalse(self.keys.drop_session_sync(b"s1"))
        self.assertIsNone(self.keys.session(b"s1"))
        self.assertRaises(ValueError, self.keys.save_session_sync, b"", b"x")
        self.assertRaises(ValueError, self.keys.save_session_sync, b"x" * 65, b"x")

    def test_repr_hides_the_share(self) -> None:
        rec = record(1, secret_share=b"\xab" * 32)
        self.assertNotIn("ab" * 8, repr(rec))
        self.assertNotIn(repr(b"\xab" * 4)[2:-1], repr(rec))
        self.assertIn("epoch=1", repr(rec))


def attempt(epoch: int, k: int, **kw) -> EpochRecord:
    """Our record of attempt C{k} of C{epoch}: its own session id, share and keys."""
    fields = dict(session_id=b"e%d-attempt-%d" % (epoch, k), attempt=k, secret_share=bytes([16 + k]) * 32,
                  internal_key=bytes([32 + k]) * 33, output_key=bytes([48 + k]) * 32,
                  agreement_signature=bytes([k]) * 64)
    fields.update(kw)
    return record(epoch, **fields)


def foreign(epoch: int, k: int, cert: bytes = b"foreign-cert") -> EpochRecord:
    return EpochRecord.foreign(epoch, b"e%d-attempt-%d" % (epoch, k), k, MEMBERS[1:], 3,
                               bytes([64 + k]) * 33, bytes([80 + k]) * 32, cert, 1000.0)


class SeveralSessionsTests(SynchronousTestCase):
    """One epoch, several signed and certified sessions: every member picks the same current one."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.db = Database.open(self.dir)
        self.keys = KeyStore(self.db)

    def tearDown(self) -> None:
        self.db.close_sync()

    def reopen(self) -> None:
        self.db.close_sync()
        self.db = Database.open(self.dir)
        self.keys = KeyStore(self.db)

    def other_store(self) -> KeyStore:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        return KeyStore(db)

    def test_highest_certified_attempt_is_current_whatever_the_order(self) -> None:
        a0, a1 = attempt(1, 0), attempt(1, 1)
        late = self.other_store()
        for keys, order in ((self.keys, (a0, a1)), (late, (a1, a0))):
            keys.put_pending_sync(a0)
            keys.put_pending_sync(a1)
            self.assertEqual(keys.current(1), None)
            for i, rec in enumerate(order):
                keys.certify_sync(1, b"cert-%d" % rec.attempt, 10.0 + i, session_id=rec.session_id)
        self.reopen()
        for keys in (self.keys, late):
            cur = keys.current(1)
            self.assertEqual((cur.session_id, cur.certificate, cur.status), (a1.session_id, b"cert-1", EpochStatus.CERTIFIED))
            self.assertEqual(keys.get(1), cur)
            self.assertEqual(keys.newest_usable(), cur)
            self.assertEqual(keys.usable(), [cur])      # one record per epoch for the signing layer
            self.assertEqual(keys.epochs(), [cur])
            # The losing session keeps its share and certificate: funds may have gone to it.
            lost = keys.record(1, a0.session_id)
            self.assertEqual((lost.status, lost.secret_share, lost.certificate),
                             (EpochStatus.CERTIFIED, a0.secret_share, b"cert-0"))
            self.assertEqual(lost.agreement_signature, a0.agreement_signature)
            self.assertEqual([r.attempt for r in keys.records(1)], [0, 1])
            # The first certificate of the epoch set the last-DKG time; the second did not move it.
            self.assertEqual(keys.last_dkg(), 10.0)

    def test_session_id_breaks_a_tie_between_attempts(self) -> None:
        x, y = attempt(1, 2, session_id=b"x" * 32), attempt(1, 2, session_id=b"y" * 32)
        for rec in (y, x):
            self.keys.put_pending_sync(rec)
            self.keys.certify_sync(1, b"c", 1.0, session_id=rec.session_id)
        self.assertEqual(self.keys.current(1).session_id, b"y" * 32)

    def test_pending_sessions_are_not_current(self) -> None:
        self.keys.put_pending_sync(attempt(1, 0))
        self.keys.put_pending_sync(attempt(1, 1))
        self.keys.certify_sync(1, b"c0", 1.0, session_id=attempt(1, 0).session_id)
        self.assertEqual(self.keys.current(1).attempt, 0)
        # Without a certificate, get() shows the newest attempt; current() nothing.
        self.keys.put_pending_sync(attempt(2, 0))
        self.keys.put_pending_sync(attempt(2, 3))
        self.assertIsNone(self.keys.current(2))
        self.assertEqual(self.keys.get(2).attempt, 3)
        self.assertEqual([r.epoch for r in self.keys.usable()], [1])
        self.assertEqual(self.keys.last_epoch_number(), 2)
        self.assertEqual(self.keys.newest_certified().session_id, attempt(1, 0).session_id)

    def test_writes_naming_no_session_need_a_single_record(self) -> None:
        self.keys.put_pending_sync(attempt(1, 0))
        self.keys.put_pending_sync(attempt(1, 1))
        e = self.assertRaises(ValueError, self.keys.certify_sync, 1, b"c", 1.0)
        self.assertIn("name the session", str(e))
        self.assertRaises(ValueError, self.keys.abort_sync, 1)
        self.assertRaises(UnknownEpoch, self.keys.certify_sync, 1, b"c", 1.0, session_id=b"nope")
        self.keys.abort_sync(1, attempt(1, 0).session_id)
        self.assertEqual(self.keys.record(1, attempt(1, 0).session_id).secret_share, b"")
        self.assertEqual(self.keys.record(1, attempt(1, 1).session_id).status, EpochStatus.PENDING)

    def test_late_certificate_of_an_older_epoch_keeps_the_last_dkg_time(self) -> None:
        self.keys.put_pending_sync(attempt(1, 0))
        self.keys.put_pending_sync(attempt(2, 0))
        self.keys.certify_sync(2, b"c2", 500.0)
        self.keys.certify_sync(1, b"c1", 900.0)
        self.assertEqual(self.keys.last_dkg(), 500.0)
        self.keys.put_foreign_sync(foreign(3, 0), 700.0)
        self.assertEqual(self.keys.last_dkg(), 700.0)

    def test_foreign_record_is_the_federations_key_but_not_ours_to_sign(self) -> None:
        self.keys.put_pending_sync(attempt(1, 0))
        self.keys.certify_sync(1, b"c1", 1.0)
        self.keys.put_pending_sync(attempt(2, 0))
        self.keys.certify_sync(2, b"c2-0", 2.0)
        # We were excluded from attempt 1 of epoch 2, which was certified too and outranks ours.
        f = self.keys.put_foreign_sync(foreign(2, 1), 3.0)
        self.assertEqual(self.keys.put_foreign_sync(foreign(2, 1), 4.0), f)   # idempotent
        self.reopen()
        cur = self.keys.current(2)
        self.assertEqual(cur, f)
        self.assertFalse(cur.member)
        self.assertFalse(cur.usable)
        self.assertEqual(self.keys.newest_certified(), cur)
        # Nothing to sign with in epoch 2: the signing layer falls back to epoch 1.
        self.assertEqual(self.keys.newest_usable().epoch, 1)
        self.assertEqual([r.epoch for r in self.keys.usable()], [1])
        self.assertEqual(self.keys.last_dkg(), 2.0)
        self.assertRaises(EpochExists, self.keys.put_foreign_sync, foreign(2, 1, cert=b"other"), 5.0)
        clash = EpochRecord.foreign(2, attempt(2, 0).session_id, 0, MEMBERS, 3, b"\x02" * 33, b"\x03" * 32, b"c", 1.0)
        self.assertRaises(EpochExists, self.keys.put_foreign_sync, clash, 5.0)
        self.assertRaises(InvalidTransition, self.keys.put_foreign_sync, attempt(3, 0), 5.0)

    def test_confirm_settles_the_epoch(self) -> None:
        a0, a1 = attempt(2, 0), attempt(2, 1)
        old_pending = attempt(1, 4)
        self.keys.put_pending_sync(attempt(1, 0))
        self.keys.certify_sync(1, b"c1", 1.0)
        self.keys.put_pending_sync(old_pending)
        for rec in (a0, a1):
            self.keys.put_pending_sync(rec)
        self.assertRaises(InvalidTransition, self.keys.confirm_sync, 2)   # nothing certified yet
        for rec in (a0, a1):
            self.keys.certify_sync(2, b"c-%d" % rec.attempt, 2.0, session_id=rec.session_id)
        self.assertEqual(self.keys.confirm_sync(2), [1, 2])
        self.reopen()
        status = {(r.epoch, r.attempt): r.status for r in self.keys.records()}
        self.assertEqual(status, {(1, 0): EpochStatus.RETIRED, (1, 4): EpochStatus.ABORTED,
                                  (2, 0): EpochStatus.RETIRED, (2, 1): EpochStatus.CONFIRMED})
        self.assertEqual(self.keys.record(1, old_pending.session_id).secret_share, b"")
        self.assertEqual(self.keys.record(2, a0.session_id).secret_share, a0.secret_share)  # history kept
        self.assertEqual(self.keys.newest_usable().session_id, a1.session_id)
        self.assertEqual(self.keys.confirm_sync(2), [])

    def test_new_fields_round_trip(self) -> None:
        rec = replace(attempt(7, 5), status=EpochStatus.CERTIFIED, certificate=b"c")
        self.assertEqual(EpochRecord.decode(rec.encode()), rec)
        f = foreign(7, 6)
        self.assertEqual(EpochRecord.decode(f.encode()), f)

    def test_old_layout_is_moved_on_open(self) -> None:
        """A store from before several sessions per epoch: one version-1 record per epoch in keys.epochs."""
        self.db.close_sync()
        db = Database.open(self.dir)
        recs = [record(1), replace(record(2), status=EpochStatus.CERTIFIED, certificate=b"c2")]

        old = db.subdb("keys.epochs")

        def write_old(txn):
            for r in recs:
                txn.put(r.epoch.to_bytes(8, "big"), encode_v1(r), db=old)
        db.write_sync(write_old)
        self.keys = KeyStore(db)
        self.db = db
        self.reopen()
        self.assertEqual(self.keys.records(), recs)
        self.assertEqual(self.keys.current(2), recs[1])
        with self.db.read() as txn:
            self.assertIsNone(txn.get(b"keys.epochs"))


def encode_v1(rec: EpochRecord) -> bytes:
    """A record as the one-record-per-epoch layout encoded it (no attempt, no agreement signature)."""
    w = (Writer().u8(1).u8(int(rec.status)).u64(rec.epoch).var_bytes(rec.session_id, 64)
         .count(len(rec.members), 1024))
    for m in rec.members:
        w.fixed(m, 32)
    w.u16(rec.threshold).fixed(rec.identifier.to_bytes(32, "big"), 32)
    w.var_bytes(rec.secret_share, 32).var_bytes(rec.commitments, MAX_U32).count(len(rec.verification_shares), 1024)
    for v in rec.verification_shares:
        w.var_bytes(v, 65)
    w.var_bytes(rec.internal_key, 33).var_bytes(rec.output_key, 33)
    return w.u64(micros(rec.created)).var_bytes(rec.certificate, MAX_U32).to_bytes()


class ValidationTests(SynchronousTestCase):
    def test_malformed_records(self) -> None:
        bad = [
            dict(members=tuple(reversed(MEMBERS))),
            dict(members=MEMBERS[:1] + MEMBERS[:1]),
            dict(members=(b"\x01" * 31,)),
            dict(threshold=5),
            dict(threshold=0),
            dict(identifier=0),
            dict(secret_share=b"\x01" * 31),
            dict(verification_shares=(b"\x02" * 33,)),
            dict(internal_key=b"\x01" * 31),
            dict(session_id=b""),
            dict(status=EpochStatus.CERTIFIED),  # certified without a certificate
            dict(attempt=-1),
            dict(attempt=1 << 32),
            dict(agreement_signature=b"s" * 129),
        ]
        for kw in bad:
            self.assertRaises(InvalidRecord, record, 1, **kw)
        self.assertRaises(InvalidRecord, replace, record(1), epoch=-1)
        self.assertRaises(InvalidRecord, replace, record(1), epoch=1 << 64)
        # A record without our share (identifier 0) is a certified foreign one, nothing else.
        f = foreign(1, 0)
        self.assertRaises(InvalidRecord, replace, f, status=EpochStatus.PENDING, certificate=b"")
        self.assertRaises(InvalidRecord, replace, f, secret_share=b"\x01" * 32)
        self.assertRaises(InvalidRecord, replace, f, agreement_signature=b"\x01" * 64)
        self.assertRaises(InvalidRecord, replace, f, verification_shares=(b"\x02" * 33,))


class DurabilityTests(TestCase):
    @inlineCallbacks
    def test_key_material_is_on_disk_when_put_pending_fires(self):
        """The Deferred fires after the commit: a second environment handle opened then sees it."""
        path = self.mktemp()
        db = Database.open(path, reactor=reactor)
        keys = KeyStore(db)
        rec = record(7)
        yield keys.put_pending(rec)
        yield keys.certify(7, b"cert", 42.0)
        yield keys.save_session(b"s", b"resume-here")
        yield db.close()
        db2 = Database.open(path)
        try:
            again = KeyStore(db2)
            self.assertEqual(again.get(7), replace(rec, status=EpochStatus.CERTIFIED, certificate=b"cert"))
            self.assertEqual(again.last_dkg(), 42.0)
            self.assertEqual(again.session(b"s"), b"resume-here")
        finally:
            db2.close_sync()

    @inlineCallbacks
    def test_errors_arrive_through_the_deferred(self):
        db = Database.open(self.mktemp(), reactor=reactor)
        self.addCleanup(db.close)
        keys = KeyStore(db)
        yield self.assertFailure(keys.confirm(3), UnknownEpoch)
