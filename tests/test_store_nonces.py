"""
The nonce pool: a nonce's secret scalars come out exactly once, only after
the spent mark is on disk, and never again, not even after a restart.
"""

from __future__ import annotations

import os
import pickle

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.store.db import Database
from frostnode.store.errors import DuplicateNonce, InvalidRecord, NonceSpent, UnknownNonce
from frostnode.store.nonces import NonceEntry, NonceStore


def entry(i: int) -> NonceEntry:
    return NonceEntry(b"n%03d" % i, os.urandom(32), os.urandom(32), b"\x02" + os.urandom(65))


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.open()

    def open(self) -> None:
        self.db = Database.open(self.dir)
        self.pool = NonceStore(self.db)

    def reopen(self) -> None:
        self.db.close_sync()
        self.open()

    def tearDown(self) -> None:
        self.db.close_sync()

    def test_reserve_returns_the_scalars_once_even_across_restart(self) -> None:
        batch = [entry(i) for i in range(5)]
        self.assertEqual(self.pool.add_batch_sync(1, batch), 5)
        got = self.pool.reserve_sync(1, b"n002")
        self.assertEqual(got, batch[2])
        self.assertRaises(NonceSpent, self.pool.reserve_sync, 1, b"n002")
        self.reopen()
        self.assertRaises(NonceSpent, self.pool.reserve_sync, 1, b"n002")
        self.assertTrue(self.pool.status(1, b"n002"))
        self.assertEqual(self.pool.commitment(1, b"n002"), batch[2].commitment)  # public part kept
        self.assertEqual(self.pool.reserve_sync(1, b"n003"), batch[3])

    def test_counts_and_listing(self) -> None:
        self.pool.add_batch_sync(1, [entry(i) for i in range(4)])
        self.pool.add_batch_sync(2, [entry(i) for i in range(3)])
        self.pool.reserve_sync(1, b"n000")
        self.assertEqual(self.pool.counts(), {1: 3, 2: 3})
        self.assertEqual(self.pool.unspent_count(1), 3)
        self.assertEqual([nid for nid, _ in self.pool.unspent(1)], [b"n001", b"n002", b"n003"])
        self.assertEqual(len(self.pool.unspent(2, limit=2)), 2)
        self.assertEqual(self.pool.unspent_count(9), 0)

    def test_prune_spent_then_unknown(self) -> None:
        self.pool.add_batch_sync(1, [entry(i) for i in range(4)])
        self.pool.reserve_sync(1, b"n000")
        self.pool.reserve_sync(1, b"n001")
        self.assertEqual(self.pool.prune_spent_sync(), 2)
        self.assertIsNone(self.pool.status(1, b"n000"))
        self.assertRaises(UnknownNonce, self.pool.reserve_sync, 1, b"n000")
        self.assertEqual(self.pool.unspent_count(1), 2)

    def test_drop_retired_epoch(self) -> None:
        self.pool.add_batch_sync(1, [entry(i) for i in range(4)])
        self.pool.add_batch_sync(2, [entry(i) for i in range(2)])
        self.pool.reserve_sync(1, b"n000")
        self.assertEqual(self.pool.drop_epoch_sync(1), 4)
        self.assertEqual(self.pool.counts(), {2: 2})
        self.assertRaises(UnknownNonce, self.pool.reserve_sync, 1, b"n001")

    def test_duplicate_ids_reject_the_whole_batch(self) -> None:
        self.pool.add_batch_sync(1, [entry(0)])
        self.assertRaises(DuplicateNonce, self.pool.add_batch_sync, 1, [entry(5), entry(0)])
        self.assertIsNone(self.pool.status(1, b"n005"))  # nothing of it was stored
        self.assertRaises(DuplicateNonce, self.pool.add_batch_sync, 1, [entry(6), entry(6)])
        self.assertEqual(self.pool.unspent_count(1), 1)
        self.pool.add_batch_sync(2, [entry(0)])  # another epoch is another pool

    def test_malformed_input(self) -> None:
        self.assertRaises(InvalidRecord, NonceEntry, b"id", b"\x01" * 31, b"\x01" * 32, b"c")
        self.assertRaises(InvalidRecord, NonceEntry, b"id", b"\x00" * 32, b"\x01" * 32, b"c")
        self.assertRaises(InvalidRecord, NonceEntry, b"", b"\x01" * 32, b"\x01" * 32, b"c")
        self.assertRaises(InvalidRecord, NonceEntry, b"id", b"\x01" * 32, b"\x01" * 32, b"")
        self.assertRaises(ValueError, self.pool.add_batch_sync, 1, [])
        self.assertRaises(ValueError, self.pool.add_batch_sync, -1, [entry(0)])
        self.assertRaises(ValueError, self.pool.reserve_sync, 1, b"x" * 65)

    def test_secrets_are_not_printed_or_pickled(self) -> None:
        e = NonceEntry(b"id", b"\xaa" * 32, b"\xbb" * 32, b"\x02" * 66)
        self.assertNotIn("\\xaa", repr(e))
        self.assertNotIn("\\xbb", repr(e))
        self.assertRaises(TypeError, pickle.dumps, e)


class ReserveRaceTests(TestCase):
    @inlineCallbacks
    def test_concurrent_reserves_of_one_nonce(self):
        """Ten reservations in one group commit: exactly one gets the scalars."""
        path = self.mktemp()
        db = Database.open(path, reactor=reactor)
        pool = NonceStore(db)
        e = entry(1)
        yield pool.add_batch(3, [e])
        results = yield DeferredList([pool.reserve(3, e.nonce_id) for _ in range(10)], consumeErrors=True)
        won = [r for ok, r in results if ok]
        lost = [r for ok, r in results if not ok]
        self.assertEqual(won, [e])
        self.assertEqual({f.type for f in lost}, {NonceSpent})
        self.assertEqual(db.stats.largest_batch, 10)
        yield db.close()
        db = Database.open(path)
        try:
            self.assertRaises(NonceSpent, NonceStore(db).reserve_sync, 3, e.nonce_id)
        finally:
            db.close_sync()
