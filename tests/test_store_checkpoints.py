"""
Tests for L{frostnode.store.checkpoints}: numbered, append-only, durable
across a reopen of the LMDB environment, strict about what it reads back.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from frostnode.store.checkpoints import MAX_LIST, CheckpointRecord, CheckpointStore
from frostnode.store.db import Database
from frostnode.store.errors import CorruptStore, InvalidRecord


def record(i: int, epoch: int = 1) -> CheckpointRecord:
    return CheckpointRecord(
        epoch=epoch, cut={b"\x02" * 32: i, b"\x01" * 32: 2 * i}, statement=b"statement %d" % i,
        message=bytes([i]) * 32, signature=bytes([i]) * 64, key=b"\x07" * 32, ciphersuite="bip445",
        signers=(b"\x0a" * 32, b"\x0b" * 32, b"\x0c" * 32), created=1700000000.25 + i, divergent=(b"\x0d" * 32,))


class CheckpointStoreTests(TestCase):
    def open(self, path: str) -> tuple[Database, CheckpointStore]:
        db = Database.open(path, reactor=reactor)
        return db, CheckpointStore(db)

    @inlineCallbacks
    def test_append_list_latest_and_reopen(self) -> None:
        path = self.mktemp()
        db, store = self.open(path)
        self.assertEqual((store.latest(), store.last_seq(), store.list()), (None, 0, []))
        seqs = []
        for i in range(1, 4):
            seqs.append((yield store.append(record(i))))
        self.assertEqual(seqs, [1, 2, 3])
        latest = store.latest()
        self.assertEqual((latest, latest.seq), (record(3), 3))
        self.assertEqual(dict(latest.cut), {b"\x01" * 32: 6, b"\x02" * 32: 3})
        self.assertEqual([r.seq for r in store.list(2)], [2, 3])
        self.assertEqual([r.seq for r in store.list(1, limit=2)], [1, 2])
        self.assertEqual(store.list(4), [])
        yield db.close()

        db, store = self.open(path)
        self.addCleanup(db.close)
        self.assertEqual(store.list(), [record(1), record(2), record(3)])
        self.assertEqual(store.get(2), record(2))
        self.assertIsNone(store.get(9))
        # Numbers go on from the last one after a reopen: never reused.
        self.assertEqual(store.append_sync(record(4, epoch=2)), 4)
        self.assertEqual((store.latest().seq, store.latest().epoch), (4, 2))

    @inlineCallbacks
    def test_concurrent_appends_get_distinct_numbers(self) -> None:
        db, store = self.open(self.mktemp())
        self.addCleanup(db.close)
        ds = [store.append(record(i)) for i in range(1, 21)]
        seqs = []
        for d in ds:
            seqs.append((yield d))
        self.assertEqual(seqs, list(range(1, 21)))
        self.assertEqual(len(store.list(limit=MAX_LIST + 5)), 20)

    def test_bad_input_and_damaged_bytes(self) -> None:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        store = CheckpointStore(db)
        self.assertRaises(InvalidRecord, store.append_sync, replace(record(1), signers=(b"short",)))
        self.assertRaises(ValueError, store.list, 1, 0)
        store.append_sync(record(1))
        table = db.subdb("checkpoints.signed")
        db.write_sync(lambda txn: txn.put((1).to_bytes(8, "big"), b"\x01garbage", db=table))
        self.assertRaises(CorruptStore, store.latest)
