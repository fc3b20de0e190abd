"""
The LMDB environment: owner-only files, the data-directory lock, map growth,
and the group-committing writer (one transaction and one fsync per batch,
Deferreds that fire only after the commit, clean close).
"""

from __future__ import annotations

import os
import stat
import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.store.db import ENV_DIRNAME, Database, StoreService
from frostnode.store.errors import DataDirLocked, InsecurePermissions, StoreClosed, StoreFull


def _put(txn, db, key: bytes, value: bytes) -> bytes:
    txn.put(key, value, db=db)
    return key


def _get(db: Database, name: str, key: bytes):
    handle = db.subdb(name)  # opening a sub-database is a write: do it outside the read
    with db.read() as txn:
        return txn.get(key, db=handle)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class LayoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()

    def open(self, **kw) -> Database:
        db = Database.open(self.dir, **kw)
        self.addCleanup(db.close_sync)
        return db

    def test_owner_only_permissions(self) -> None:
        """The environment directory is 0700 and every file in it 0600, even under a lax umask."""
        old = os.umask(0o022)
        try:
            db = self.open()
        finally:
            os.umask(old)
        db.write_sync(_put, db.subdb("t"), b"k", b"v")
        env = os.path.join(self.dir, ENV_DIRNAME)
        self.assertEqual(_mode(env), 0o700)
        names = sorted(os.listdir(env))
        self.assertEqual(names, ["data.mdb", "frostnode.lock", "lock.mdb"])
        for name in names:
            self.assertEqual(_mode(os.path.join(env, name)), 0o600, name)

    def test_refuses_group_readable_directory(self) -> None:
        Database.open(self.dir).close_sync()
        env = os.path.join(self.dir, ENV_DIRNAME)
        os.chmod(env, 0o750)
        e = self.assertRaises(InsecurePermissions, Database.open, self.dir)
        self.assertEqual(e.path, env)
        self.assertIn("chmod 700", str(e))

    def test_refuses_world_readable_data_file(self) -> None:
        Database.open(self.dir).close_sync()
        data = os.path.join(self.dir, ENV_DIRNAME, "data.mdb")
        os.chmod(data, 0o644)
        e = self.assertRaises(InsecurePermissions, Database.open, self.dir)
        self.assertEqual(e.path, data)
        # and the refused open did not keep the lock
        os.chmod(data, 0o600)
        self.open()

    def test_environment_fsyncs_every_commit(self) -> None:
        """
        Acknowledgements rest on LMDB's sync and metasync (the kill -9 test
        cannot tell, since the page cache outlives the process): both must be on.
        """
        flags = self.open().env.flags()
        self.assertTrue(flags["sync"])
        self.assertTrue(flags["metasync"])
        self.assertFalse(flags.get("map_async", False))

    def test_second_open_is_locked_out(self) -> None:
        """Two writers on one environment are refused; closing releases the lock."""
        db = Database.open(self.dir)
        self.assertRaises(DataDirLocked, Database.open, self.dir)
        db.close_sync()
        self.open()

    def test_sync_write_and_read_survive_reopen(self) -> None:
        db = Database.open(self.dir)
        self.assertEqual(db.write_sync(_put, db.subdb("t"), b"k", b"v"), b"k")
        db.close_sync()
        db = self.open()
        self.assertEqual(_get(db, "t", b"k"), b"v")

    def test_failing_write_changes_nothing(self) -> None:
        db = self.open()
        t = db.subdb("t")

        def half(txn):
            txn.put(b"a", b"1", db=t)
            raise ValueError("boom")

        self.assertRaises(ValueError, db.write_sync, half)
        self.assertIsNone(_get(db, "t", b"a"))

    def test_staged_aggregate_folds_once_per_batch_without_failed_writes(self) -> None:
        db = self.open()
        t = db.subdb("t")
        flushed = []

        def flush(txn, items):
            flushed.append(list(items))
            txn.put(b"sum", b"%d" % sum(items), db=t)

        db.aggregate("sum", flush)

        def add(txn, n):
            db.stage("sum", n)
            if n == 2:
                raise ValueError("no twos")

        results = db._run_batch([(add, (1,)), (add, (2,)), (add, (3,))])
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        self.assertEqual(flushed, [[1, 3]])
        self.assertEqual(_get(db, "t", b"sum"), b"4")
        self.assertRaises(RuntimeError, db.stage, "sum", 5)
        self.assertRaises(ValueError, db.aggregate, "sum", flush)

    def test_async_write_needs_a_reactor(self) -> None:
        db = self.open()
        self.assertRaises(ValueError, db.write, _put, db.subdb("t"), b"k", b"v")

    def test_map_grows_when_full(self) -> None:
        db = self.open(map_size=64 * 1024, max_map_size=16 << 20)
        t = db.subdb("t")
        for i in range(40):
            db.write_sync(_put, t, b"%04d" % i, os.urandom(8 * 1024))
        self.assertGreater(db.stats.growths, 0)
        self.assertGreater(db.map_size, 64 * 1024)
        self.assertEqual(len(_get(db, "t", b"0039")), 8 * 1024)

    def test_full_at_max_map_size_is_a_clear_error(self) -> None:
        db = self.open(map_size=64 * 1024, max_map_size=64 * 1024)
        t = db.subdb("t")
        with self.assertRaises(StoreFull) as cm:
            for i in range(40):
                db.write_sync(_put, t, b"%04d" % i, os.urandom(8 * 1024))
        self.assertIn("max_map_size", str(cm.exception))

    def test_bad_sizes(self) -> None:
        self.assertRaises(ValueError, Database.open, self.dir, map_size=100)
        self.assertRaises(ValueError, Database.open, self.dir, map_size=1 << 20, max_map_size=1 << 19)

    def test_closed_store_refuses_work(self) -> None:
        db = Database.open(self.dir)
        t = db.subdb("t")
        db.close_sync()
        self.assertRaises(StoreClosed, db.write_sync, _put, t, b"k", b"v")
        with self.assertRaises(StoreClosed):
            with db.read():
                pass


class GroupCommitTests(TestCase):
    """Against the real reactor and the real writer thread."""

    def setUp(self) -> None:
        self.db = Database.open(self.mktemp(), reactor=reactor)
        self.addCleanup(self.db.close)
        self.t = self.db.subdb("t")

    def txnid(self) -> int:
        return self.db.env.info()["last_txnid"]

    @inlineCallbacks
    def test_one_turn_is_one_transaction(self):
        """500 writes requested in one reactor turn commit as one transaction: one fsync."""
        before, txn_before = self.db.stats.transactions, self.txnid()
        ds = [self.db.write(_put, self.t, b"%04d" % i, b"v") for i in range(500)]
        for d in ds:
            self.assertNoResult(d)
        keys = yield gatherResults(ds)
        self.assertEqual(keys, [b"%04d" % i for i in range(500)])
        self.assertEqual(self.db.stats.transactions - before, 1)
        self.assertEqual(self.txnid() - txn_before, 1)  # LMDB's own count agrees
        self.assertEqual(self.db.stats.largest_batch, 500)

    @inlineCallbacks
    def test_writes_during_a_commit_share_the_next(self):
        """Everything requested while a commit runs goes into the next transaction together."""
        gate = threading.Event()

        def slow(txn):
            gate.wait(10)
            txn.put(b"slow", b"1", db=self.t)

        before = self.db.stats.transactions
        first = self.db.write(slow)
        later = []
        for turn in range(5):
            yield deferLater(reactor, 0, lambda: None)
            later += [self.db.write(_put, self.t, b"%d-%d" % (turn, i), b"v") for i in range(20)]
        self.assertNoResult(first)
        gate.set()
        yield gatherResults([first] + later)
        self.assertEqual(self.db.stats.transactions - before, 2)

    @inlineCallbacks
    def test_result_is_committed_when_the_deferred_fires(self):
        """A fresh read in the callback sees the write; before the callback there is none."""
        seen = []
        d = self.db.write(_put, self.t, b"k", b"v")
        self.assertIsNone(_get(self.db, "t", b"k"))
        d.addCallback(lambda _: seen.append(_get(self.db, "t", b"k")))
        yield d
        self.assertEqual(seen, [b"v"])

    @inlineCallbacks
    def test_one_failing_write_does_not_spoil_the_batch(self):
        def bad(txn):
            txn.put(b"bad", b"1", db=self.t)
            raise KeyError("nope")

        ds = [self.db.write(_put, self.t, b"a", b"1"), self.db.write(bad), self.db.write(_put, self.t, b"b", b"2")]
        yield self.assertFailure(ds[1], KeyError)
        yield gatherResults([ds[0], ds[2]])
        self.assertEqual((_get(self.db, "t", b"a"), _get(self.db, "t", b"bad"), _get(self.db, "t", b"b")), (b"1", None, b"2"))

    @inlineCallbacks
    def test_writes_apply_in_submission_order(self):
        order = []

        def step(txn, n):
            order.append(n)
            prev = txn.get(b"n", db=self.t)
            txn.put(b"n", b"%d" % (int(prev or b"0") * 10 + n), db=self.t)

        yield gatherResults([self.db.write(step, n) for n in (1, 2, 3)])
        self.assertEqual(order, [1, 2, 3])
        self.assertEqual(_get(self.db, "t", b"n"), b"123")

    @inlineCallbacks
    def test_close_lets_queued_writes_commit(self):
        path = self.db.path.parent
        ds = [self.db.write(_put, self.t, b"%03d" % i, b"v") for i in range(50)]
        yield self.db.close()
        yield gatherResults(ds)
        yield self.assertFailure(self.db.write(_put, self.t, b"x", b"y"), StoreClosed)
        db = Database.open(path)
        try:
            self.assertEqual(_get(db, "t", b"049"), b"v")
        finally:
            db.close_sync()

    @inlineCallbacks
    def test_map_grows_from_the_writer_thread(self):
        db = Database.open(self.mktemp(), reactor=reactor, map_size=64 * 1024)
        self.addCleanup(db.close)
        t = db.subdb("t")
        yield gatherResults([db.write(_put, t, b"%04d" % i, os.urandom(4096)) for i in range(100)])
        self.assertGreater(db.stats.growths, 0)
        with db.read() as txn:
            self.assertEqual(txn.stat(t)["entries"], 100)

    @inlineCallbacks
    def test_service_stop_closes(self):
        svc = StoreService(self.db)
        svc.startService()
        d = self.db.write(_put, self.t, b"k", b"v")
        yield svc.stopService()
        self.assertEqual((yield d), b"k")
        self.assertRaises(StoreClosed, self.db.write_sync, _put, self.t, b"k", b"v")
