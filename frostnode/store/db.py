# -*- test-case-name: tests.test_store_db -*-
"""
One LMDB environment per node, and the single writer thread in front of it.

Layout
======
C{<data_dir>/state.lmdb/} holds C{data.mdb}, C{lock.mdb} and
C{frostnode.lock}.  The directory is created C{0700} and the files C{0600}; on
every open all four are checked (owner is us, no group/other bits) and a
looser mode is refused with L{InsecurePermissions} naming the path, because
the environment holds secret key shares and secret nonces.  C{frostnode.lock}
is held with C{flock} while the environment is open, so a second node (or a
second L{Database} in the same process) pointed at the same directory fails
with L{DataDirLocked} instead of running two writers.  The kernel drops the
lock when the process dies, so C{kill -9} never leaves it stale.

Each store (keys, nonces, log) opens its own named sub-databases through
L{Database.subdb}; their names are prefixed with the store's name.

Map size
========
LMDB reserves address space, not disk, for the map: C{map_size} (default
1 GiB) costs nothing until used.  When a write finds the map full the writer
aborts its transaction, doubles the map (up to C{max_map_size}, default
64 GiB) and retries; the resize runs in the reactor thread while the writer
thread waits, because LMDB requires that no transaction of this process is
open during a resize and reads only happen, synchronously, in the reactor
thread.  At C{max_map_size} writes fail with L{StoreFull}, naming the limit.

Durability rule
===============
The environment is opened with C{sync=True, metasync=True}: a write
transaction's commit returns only after C{fdatasync}.  Every asynchronous
write returns a Deferred that fires I{after} that commit, never before; a
caller that acts on the result (acknowledges a client, sends an agreement
signature, releases a signature share) therefore acts only on data that is
on disk.  If the commit fails, the Deferred fails and nothing of the batch is
visible.

Group commit
============
An fsync costs milliseconds; one per record would cap the log at a few
hundred records per second.  L{Writer} queues the write functions submitted
during one reactor turn (and all those submitted while a commit is running),
and runs them as I{one} transaction with I{one} fsync on a single dedicated
thread, so the reactor never blocks on the disk.  Each function runs in its
own nested transaction: one that raises is rolled back alone and only its
Deferred fails; the rest of the batch commits.  Functions run in submission
order, so each sees the effects of those submitted before it.  C{stats}
counts transactions (= fsyncs) and operations, which is how tests check the
batching.

Write functions run on the writer thread: they receive the LMDB transaction
and their arguments, must only touch the database through that transaction,
and must not touch reactor-thread state.  Their return value is what the
Deferred fires with.

Some values are aggregates over many writes (the log's set hash and record
count).  Updating them in every write would read, change and rewrite the
same key hundreds of times per batch, so a write function may instead
L{Database.stage} a contribution; the store's registered flush function
(L{Database.aggregate}) folds all of a batch's contributions into the
database once, inside the same transaction, just before the commit.  A
contribution from a write that fails is dropped with that write.

Reads run synchronously in the caller's thread through L{Database.read}: LMDB
reads are MVCC snapshots and cost microseconds.  A read sees only committed
data, so it never sees a write whose Deferred has not fired yet.  Do not hold
a read transaction or cursor across reactor turns.

A fully synchronous API (L{Database.write_sync}) serves tests, tools and
start-up code: it commits (and fsyncs) before returning.  Do not mix it with
asynchronous writes in flight.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import lmdb
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from frostnode.store.errors import (
    DataDirLocked,
    InsecurePermissions,
    StoreClosed,
    StoreError,
    StoreFull,
)

ENV_DIRNAME = "state.lmdb"
LOCK_FILENAME = "frostnode.lock"
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 36
#: Writes per transaction.  Also bounds LMDB's per-transaction dirty-page
#: limit (512 MiB); a batch that hits it anyway is split and retried.
DEFAULT_MAX_BATCH = 1024
MAX_DBS = 32
_PAGE = 4096

#: C{fn(txn, *args) -> result}, run on the writer thread inside a nested write transaction.
WriteFn = Callable[..., Any]
_Op = tuple[WriteFn, tuple]
_Result = tuple[bool, Any]


@dataclass
class StoreStats:
    """
    Counters for tests and C{status}.

    @ivar transactions: committed write transactions; each is exactly one
        fsync (C{sync=True}).
    @ivar operations: write functions applied (successful or not).
    @ivar largest_batch: most operations committed in one transaction.
    @ivar growths: times the map was enlarged.
    """

    transactions: int = 0
    operations: int = 0
    largest_batch: int = 0
    growths: int = 0


class _MapFull(Exception):
    pass


class _Split(Exception):
    def __init__(self, at: int) -> None:
        self.at = at


def _check_private(path: Path, wanted: int) -> None:
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise InsecurePermissions(str(path), stat.S_IMODE(st.st_mode), wanted)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InsecurePermissions(str(path), stat.S_IMODE(st.st_mode), wanted)


class Writer:
    """
    Group commit onto one dedicated thread.

    @param run_batch: runs a list of C{(fn, args)} as one transaction on the
        writer thread and returns one C{(ok, value_or_failure)} per op.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        run_batch: Callable[[list[_Op]], list[_Result]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        name: str = "frostnode-store-writer",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._reactor = reactor
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.start()
        self._queue: deque[tuple[WriteFn, tuple, Deferred]] = deque()
        self._scheduled = False
        self._inflight = False
        self._closing = False
        self._stopped = False
        self._idle_waiters: list[Deferred] = []

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queue

    def submit(self, fn: WriteFn, *args: Any) -> Deferred:
        """
        Queue C{fn(txn, *args)}; the Deferred fires with its result once the
        transaction holding it is committed and fsync'd.
        """
        if self._closing:
            return fail(StoreClosed("store is closing; write refused"))
        d: Deferred = Deferred()
        self._queue.append((fn, args, d))
        if not self._inflight and not self._scheduled:
            # Let the rest of this reactor turn add to the same batch.
            self._scheduled = True
            self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._scheduled = False
        if self._inflight or not self._queue:
            return
        n = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(n)]
        self._inflight = True
        d = deferToThreadPool(self._reactor, self._pool, self._run_batch, [(fn, args) for fn, args, _ in batch])
        d.addCallbacks(self._committed, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _committed(self, results: list[_Result], batch: list) -> None:
        self._inflight = False
        for (_, _, d), (ok, value) in zip(batch, results):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        self._next()

    def _batch_failed(self, f: Failure, batch: list) -> None:
        self._inflight = False
        self.log.failure("store write batch of {n} failed", f, n=len(batch))
        for _, _, d in batch:
            d.errback(f)
        self._next()

    def _next(self) -> None:
        # Writes queued while the commit ran (or by the callbacks just fired)
        # form the next batch straight away.
        if self._queue:
            self._flush()
        elif self._closing:
            self._stop()

    def _stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._pool.stop()
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> Deferred:
        """
        Refuse new writes, let queued and in-flight ones commit, stop the
        thread.  The Deferred fires when the last commit is done.
        """
        self._closing = True
        if self.idle:
            self._stop()
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d


class Database:
    """
    A node's LMDB environment: sub-databases, reads, and the two write paths.

    Use L{Database.open}.  C{stats} counts transactions and operations.
    """

    log = Logger()

    def __init__(
        self,
        env: lmdb.Environment,
        path: Path,
        lock_fd: int,
        *,
        max_map_size: int,
        reactor: Any = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.env = env
        self.path = path
        self._lock_fd: Optional[int] = lock_fd
        self._max_map_size = max_map_size
        self._reactor = reactor
        self._dbs: dict[str, Any] = {}
        self._aggregates: dict[str, Callable[[Any, list], None]] = {}
        self._tls = threading.local()
        self._closed = False
        self.stats = StoreStats()
        self._writer: Optional[Writer] = None
        self._trigger: Any = None
        if reactor is not None:
            self._writer = Writer(reactor, self._run_batch_on_writer, max_batch=max_batch)
            self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._before_shutdown)

    @classmethod
    def open(
        cls,
        data_dir: Union[str, os.PathLike],
        *,
        reactor: Any = None,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> "Database":
        """
        Open (creating if needed) C{<data_dir>/state.lmdb}.

        @param reactor: needed for L{write}; without it only L{write_sync}
            works (tools, tests).  The database closes itself before reactor
            shutdown, letting in-flight writes commit.
        @param map_size: initial map size in bytes (rounded up to a page).
        @param max_map_size: the map never grows past this.
        @raise InsecurePermissions: a store path is group/other accessible.
        @raise DataDirLocked: the environment is open elsewhere.
        """
        if map_size < _PAGE * 16:
            raise ValueError(f"map_size {map_size} is too small (at least {_PAGE * 16} bytes)")
        map_size = -(-map_size // _PAGE) * _PAGE
        if max_map_size < map_size:
            raise ValueError(f"max_map_size {max_map_size} is below map_size {map_size}")
        data_dir = Path(data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / ENV_DIRNAME
        if not path.exists():
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # in case the umask removed owner bits
        _check_private(path, 0o700)
        lock_path = path / LOCK_FILENAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _check_private(lock_path, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataDirLocked(f"{path} is in use by another frostnode process or open store") from None
            for name in ("data.mdb", "lock.mdb"):
                if (path / name).exists():
                    _check_private(path / name, 0o600)
            env = lmdb.open(
                str(path),
                map_size=map_size,
                subdir=True,
                max_dbs=MAX_DBS,
                mode=0o700,  # files get this minus the execute bits: 0600
                sync=True,
                metasync=True,
                writemap=False,
                create=True,
            )
            try:
                for name in ("data.mdb", "lock.mdb"):
                    _check_private(path / name, 0o600)
            except BaseException:
                env.close()
                raise
        except BaseException:
            os.close(fd)
            raise
        return cls(env, path, fd, max_map_size=max_map_size, reactor=reactor, max_batch=max_batch)

    # -- sub-databases and reads -------------------------------------------

    def subdb(self, name: str) -> Any:
        """
        The named sub-database handle, created on first use.  Creating one is
        a write of its own: stores call this from their constructors, at
        start-up, never inside a read.
        """
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name.encode("ascii"), create=True)
        return self._dbs[name]

    def aggregate(self, name: str, flush: Callable[[Any, list], None]) -> None:
        """
        Register C{flush(txn, items)}, called once per batch that staged
        anything under C{name}, with the staged items in write order.
        """
        if name in self._aggregates:
            raise ValueError(f"aggregate {name!r} is already registered")
        self._aggregates[name] = flush

    def stage(self, name: str, item: Any) -> None:
        """From inside a write function: contribute C{item} to this batch's aggregate C{name}."""
        if name not in self._aggregates:
            raise ValueError(f"no aggregate {name!r} is registered")
        op = getattr(self._tls, "op", None)
        if op is None:
            raise RuntimeError("stage() is only valid inside a write function")
        op.append((name, item))

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read-only snapshot; close it before returning to the reactor."""
        self._check_open()
        with self.env.begin(write=False) as txn:
            yield txn

    @property
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    # -- writes --------------------------------------------------------------

    def write(self, fn: WriteFn, *args: Any) -> Deferred:
        """
        Group-committed write: C{fn(txn, *args)} on the writer thread; the
        Deferred fires with its result after the fsync.
        """
        if self._writer is None:
            raise ValueError("this Database was opened without a reactor; use write_sync")
        if self._closed:
            return fail(StoreClosed("store is closed; write refused"))
        return self._writer.submit(fn, *args)

    def write_sync(self, fn: WriteFn, *args: Any) -> Any:
        """Run C{fn(txn, *args)} in its own transaction, commit and fsync, return its result."""
        self._check_open()
        ok, value = self._run_batch([(fn, args)])[0]
        if not ok:
            value.raiseException()
        return value

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    def _run_batch_on_writer(self, ops: list[_Op]) -> list[_Result]:
        self._tls.on_writer = True
        return self._run_batch(ops)

    def _run_batch(self, ops: list[_Op]) -> list[_Result]:
        out: list[_Result] = []
        start, limit = 0, len(ops)
        while start < len(ops):
            chunk = ops[start:start + limit]
            try:
                results = self._apply(chunk)
            except _MapFull:
                if not self._call_unlocked(self._grow):
                    full = Failure(StoreFull(
                        f"LMDB map of {self.map_size} bytes is full and max_map_size "
                        f"({self._max_map_size}) is reached; raise it in the configuration"))
                    out.extend((False, full) for _ in ops[start:])
                    return out
                continue
            except _Split as s:
                limit = s.at
                continue
            except Exception:
                # Earlier chunks are committed: report their results as they
                # are and fail only the operations that did not commit.
                failed = Failure()
                out.extend((False, failed) for _ in ops[start:])
                return out
            out.extend(results)
            start += len(chunk)
            limit = len(ops)
        return out

    def _apply(self, ops: list[_Op]) -> list[_Result]:
        results: list[_Result] = []
        staged: dict[str, list] = {}
        try:
            with self.env.begin(write=True) as txn:
                for i, (fn, args) in enumerate(ops):
                    self._tls.op = op_staged = []
                    try:
                        with self.env.begin(write=True, parent=txn) as child:
                            value = fn(child, *args)
                    except lmdb.MapFullError:
                        raise _MapFull() from None
                    except lmdb.TxnFullError:
                        if i:
                            raise _Split(i) from None
                        results.append((False, Failure(StoreFull("a single write exceeds LMDB's transaction size limit"))))
                    except Exception:
                        results.append((False, Failure()))
                    else:
                        results.append((True, value))
                        for name, item in op_staged:
                            staged.setdefault(name, []).append(item)
                    finally:
                        self._tls.op = None
                for name, items in staged.items():
                    self._aggregates[name](txn, items)
        except lmdb.MapFullError:
            raise _MapFull() from None
        self.stats.transactions += 1
        self.stats.operations += len(ops)
        self.stats.largest_batch = max(self.stats.largest_batch, len(ops))
        return results

    def _call_unlocked(self, fn: Callable[[], bool]) -> bool:
        # A resize needs every transaction of this process closed; reads only
        # happen in the reactor thread, so the writer thread runs it there
        # (while it waits, holding no transaction).  Synchronous writers are
        # the reading thread themselves.
        if getattr(self._tls, "on_writer", False):
            return blockingCallFromThread(self._reactor, fn)
        return fn()

    def _grow(self) -> bool:
        old = self.map_size
        if old >= self._max_map_size:
            return False
        new = min(old * 2, self._max_map_size)
        self.env.set_mapsize(new)
        self.stats.growths += 1
        self.log.warn("store map grown from {old} to {new} bytes at {path}", old=old, new=new, path=str(self.path))
        return True

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> Deferred:
        """Refuse new writes, let in-flight ones commit, then close LMDB and release the lock."""
        if self._closed:
            return succeed(None)
        self._closed = True
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        d = self._writer.close() if self._writer is not None else succeed(None)
        d.addCallback(lambda _: self._close_env())
        return d

    def _before_shutdown(self) -> Deferred:
        self._trigger = None  # firing now; removing it would warn
        return self.close()

    def close_sync(self) -> None:
        """Close now; for tools and tests with no asynchronous write in flight."""
        if self._writer is not None and not self._writer.idle:
            raise StoreError("asynchronous writes are in flight; use close()")
        self.close()

    def _close_env(self) -> None:
        self.env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class StoreService(Service):
    """Closes the database when the application stops, after in-flight writes commit."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return self.db.close()
