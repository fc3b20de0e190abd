"""
DKG epochs: the status lifecycle, durability before the caller proceeds,
session state for crash recovery, and the persisted last-DKG time.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.store.db import Database
from frostnode.store.errors import EpochExists, InvalidRecord, InvalidTransition, UnknownEpoch
from frostnode.store.keys import EpochRecord, EpochStatus, KeyStore

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
        ]
        for kw in bad:
            self.assertRaises(InvalidRecord, record, 1, **kw)
        self.assertRaises(InvalidRecord, replace, record(1), epoch=-1)
        self.assertRaises(InvalidRecord, replace, record(1), epoch=1 << 64)


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
