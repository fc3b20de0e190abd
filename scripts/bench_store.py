#!/usr/bin/env python
"""
Throughput of the data log's durable appends (1 KiB records) with group
commit, against one fsync per record, on this machine's disk.

    .venv/bin/python scripts/bench_store.py [--records N] [--clients C] [--window W]

C clients each keep W appends in flight (a new one as soon as one is
acknowledged), which is how the client port drives the log.  Every
acknowledged record is fsync'd.  Results go to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task

from frostnode.store.db import Database
from frostnode.store.log import DataLog, RecordBody

ORIGIN = b"\xa1" * 32


def body(i: int, client: int) -> RecordBody:
    return RecordBody(bytes([client % 256]) * 32, "bench", os.urandom(1024), timestamp=i)


@defer.inlineCallbacks
def grouped(path: str, records: int, clients: int, window: int):
    db = Database.open(path, reactor=reactor)
    log = DataLog(db, ORIGIN)
    counter = iter(range(records))
    latencies: list[float] = []

    @defer.inlineCallbacks
    def client(c: int):
        @defer.inlineCallbacks
        def lane():
            for i in counter:
                t0 = time.perf_counter()
                yield log.append_local(body(i, c), reactor.seconds())
                latencies.append(time.perf_counter() - t0)

        yield defer.gatherResults([lane() for _ in range(window)])

    t0 = time.perf_counter()
    yield defer.gatherResults([client(c) for c in range(clients)])
    elapsed = time.perf_counter() - t0
    stats = db.stats
    t1 = time.perf_counter()
    digest = log.digest()
    digest_ms = (time.perf_counter() - t1) * 1e3
    yield db.close()
    latencies.sort()
    return dict(
        rate=records / elapsed, elapsed=elapsed, transactions=stats.transactions,
        per_txn=stats.operations / max(stats.transactions, 1), p50=latencies[len(latencies) // 2] * 1e3,
        p99=latencies[int(len(latencies) * 0.99)] * 1e3, count=digest.count, digest_ms=digest_ms,
    )


def one_fsync_each(path: str, records: int) -> float:
    db = Database.open(path)
    log = DataLog(db, ORIGIN)
    t0 = time.perf_counter()
    for i in range(records):
        log.append_local_sync(body(i, 0), 0.0)
    elapsed = time.perf_counter() - t0
    db.close_sync()
    return records / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--sync-records", type=int, default=2_000)
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="bench-store-")
    try:
        rate = one_fsync_each(os.path.join(base, "sync"), args.sync_records)
        print(f"one fsync per record : {rate:9.0f} records/s ({args.sync_records} records)")

        def run():
            d = grouped(os.path.join(base, "grouped"), args.records, args.clients, args.window)
            d.addCallback(report)
            d.addErrback(lambda f: print(f.getTraceback()))
            d.addBoth(lambda _: reactor.stop())

        def report(r):
            print(f"group commit         : {r['rate']:9.0f} records/s ({args.records} records, "
                  f"{args.clients} clients x {args.window} in flight, {r['elapsed']:.2f} s)")
            print(f"  transactions/fsyncs: {r['transactions']} ({r['per_txn']:.0f} records each)")
            print(f"  append latency     : p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms")
            print(f"  digest of {r['count']} records: {r['digest_ms']:.1f} ms")

        task.deferLater(reactor, 0, run)
        reactor.run()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
