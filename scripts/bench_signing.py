#!/usr/bin/env python3
"""
Benchmark of threshold signing (frostnode.signing) end to end.

For each t-of-n it prints:
  - latency of one signature at a time, from SigningService.sign() to the
    SignatureResult (p50/p99), with warm nonce pools (one round trip);
  - signatures per second with many concurrent requests, spread over every
    member as coordinator (clients asking different nodes);
  - the same two with f = n - t members silent (connected, never answering:
    ROAST gives up their sessions after the session timeout, then avoids
    them), and with f members crashed (links down: never picked).

What runs: every member is a full SigningService with its own LMDB store
(keys and nonce pool, fsync on every commit, group-committed per member) in
a temporary directory; the links are IN-MEMORY (frostnode.net.memory) on
the real reactor, all members in THIS ONE PROCESS.  So every figure is the
sum of all members' CPU on one core (a deployment spreads the signers'
work over n machines) with no network latency and no Noise encryption;
TCP loopback with Noise comes with frostnode.net.peers.  The validation
scheme is a trivial hash of the request, to measure signing, not a scheme.
BIP 445 (the default ciphersuite) unless --suite rfc9591.

Usage: bench_signing.py [--sizes 3-5,7-10,67-100] [--rounds N] [--requests N]
                        [--concurrency K] [--suite bip445|rfc9591]
                        [--no-faults] [--session-timeout S]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coincurve import PublicKeyXOnly  # noqa: E402

from frostnode.crypto import bip445  # noqa: E402
from frostnode.crypto.keygen import trusted_dealer_keygen  # noqa: E402
from frostnode.identity import HostKeypair  # noqa: E402
from frostnode.net.memory import MemoryNetwork  # noqa: E402
from frostnode.signing.service import SigningConfig, SigningService  # noqa: E402
from frostnode.store.db import Database  # noqa: E402
from frostnode.store.keys import EpochRecord, KeyStore  # noqa: E402
from frostnode.store.nonces import NonceStore  # noqa: E402

EPOCH = 1


class BenchScheme:
    """The message is a hash of the request: no data, no validation cost."""

    name = "bench"

    def message(self, request: bytes, view: Any) -> bytes:
        return hashlib.sha256(b"bench" + request).digest()


class Federation:
    def __init__(self, reactor: Any, t: int, n: int, config: SigningConfig, suite: str,
                 coordinators: list[int]) -> None:
        self.t, self.n = t, n
        self.suite = suite
        hosts = sorted((HostKeypair.generate() for _ in range(n)), key=lambda h: h.public)
        self.members = [h.public for h in hosts]
        group_key, packages = trusted_dealer_keygen(t, n)
        internal = group_key.encode()
        self.output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(internal))
        vshares = tuple(packages[i + 1].verification_share.encode() for i in range(n))
        self.tmp = tempfile.mkdtemp(prefix="bench-signing-")
        self.net = MemoryNetwork(reactor, self.members)
        self.dbs = []
        self.services = []
        for i, h in enumerate(hosts):
            db = Database.open(os.path.join(self.tmp, str(i)), reactor=reactor)
            keys = KeyStore(db)
            keys.put_pending_sync(EpochRecord(
                EPOCH, b"bench", tuple(self.members), t, i + 1, packages[i + 1].secret_share.to_bytes(32, "big"),
                b"", vshares, internal, self.output, 0.0))
            keys.certify_sync(EPOCH, b"bench", 0.0)
            # Only the benchmark's coordinators fill their pools at start: with
            # 100 members in one process, everyone filling a pool from everyone
            # would be 100x the start-up work of one real member.
            cfg = config if i in coordinators else replace(config, prefill=False)
            svc = SigningService(self.net.links(h.public), self.members, h, keys, NonceStore(db), None,
                                 {"bench": BenchScheme()}, reactor, cfg)
            svc.startService()
            self.dbs.append(db)
            self.services.append(svc)

    async def close(self) -> None:
        for svc in self.services:
            svc.stopService()
        for db in self.dbs:
            await db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def latency(reactor: Any, fed: Federation, rounds: int, coordinator: int = 0) -> tuple[list[float], int]:
    times = []
    sessions = 0
    for k in range(rounds):
        t0 = time.perf_counter()
        result = await fed.services[coordinator].sign("bench", b"latency %d" % k, fed.suite)
        times.append(time.perf_counter() - t0)
        sessions += result.sessions - 1
        if k == 0 and fed.suite == "bip445" and not PublicKeyXOnly(fed.output).verify(result.signature, result.message):
            raise AssertionError("signature does not verify")
    return times, sessions


async def throughput(reactor: Any, fed: Federation, requests: int, concurrency: int,
                     coordinators: list[int]) -> tuple[float, float, int]:
    done = 0
    failed = 0
    sem = defer.DeferredSemaphore(concurrency)
    t0, c0 = time.perf_counter(), cpu()

    async def one(k: int) -> None:
        nonlocal done, failed
        try:
            await fed.services[coordinators[k % len(coordinators)]].sign("bench", b"tput %d" % k, fed.suite)
            done += 1
        except Exception:
            failed += 1

    await defer.gatherResults([sem.run(lambda k=k: defer.ensureDeferred(one(k))) for k in range(requests)])
    elapsed = time.perf_counter() - t0
    return done / elapsed, (cpu() - c0) / max(done, 1) * 1e3, failed


async def warm(reactor: Any, fed: Federation, coordinators: list[int]) -> None:
    for c in coordinators:
        await fed.services[c].sign("bench", b"warm-up", fed.suite)
    await sleep(reactor, 0.2)


def row(label: str, times: list[float], extra: str = "") -> None:
    print(f"  {label:<30} p50 {pct(times, 50) * 1e3:8.2f} ms  p99 {pct(times, 99) * 1e3:8.2f} ms  "
          f"max {max(times) * 1e3:8.2f} ms{extra}", flush=True)


async def bench_size(reactor: Any, t: int, n: int, args: argparse.Namespace) -> None:
    batch = 256 if n <= 10 else 32
    config = SigningConfig(session_timeout=args.session_timeout, pool_batch=batch, pool_low_water=batch // 2,
                           max_outstanding=4 * batch)
    rounds = args.rounds if n <= 10 else max(10, args.rounds // 10)
    requests = args.requests if n <= 10 else max(20, args.requests // 20)
    print(f"\n{t}-of-{n} ({args.suite}; {n} members in one process, memory links, LMDB per member)", flush=True)
    coordinators = list(range(n)) if n <= 10 else [0, n - 3, n - 2, n - 1]
    fed = Federation(reactor, t, n, config, args.suite, coordinators)
    try:
        await warm(reactor, fed, coordinators)
        c0 = cpu()
        times, extra = await latency(reactor, fed, rounds)
        row("one at a time", times, f"   cpu {(cpu() - c0) / rounds * 1e3:6.2f} ms/sig")
        rate, cpu_ms, failed = await throughput(reactor, fed, requests, args.concurrency, coordinators)
        print(f"  {'concurrent (' + str(args.concurrency) + ' in flight)':<30} {rate:8.1f} sig/s   "
              f"cpu {cpu_ms:6.2f} ms/sig   failed {failed}", flush=True)
        if args.no_faults or n - t < 1:
            return
        f = n - t
        # Silent but connected: picked until their first session times out, then avoided.
        # Members 1..f are the first that coordinator 0 (and the others) would pick.
        silent = fed.members[1:1 + f]
        for s in silent:
            fed.net.set_byzantine(s, lambda peer, channel, payload: [])
        times, extra = await latency(reactor, fed, rounds)
        row(f"{f} silent, one at a time", times, f"   extra sessions {extra}")
        rate, cpu_ms, failed = await throughput(reactor, fed, requests, args.concurrency,
                                                [c for c in coordinators if not 1 <= c <= f])
        print(f"  {str(f) + ' silent, concurrent':<30} {rate:8.1f} sig/s   cpu {cpu_ms:6.2f} ms/sig   "
              f"failed {failed}", flush=True)
        for s in silent:
            fed.net.set_byzantine(s, None)
            fed.net.silence(s)
        times, _ = await latency(reactor, fed, rounds)
        row(f"{f} crashed (links down)", times)
    finally:
        await fed.close()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    print(f"frostnode signing benchmark: python {sys.version.split()[0]}, {os.cpu_count()} cores")
    for size in args.sizes.split(","):
        t, n = (int(x) for x in size.split("-"))
        await bench_size(reactor, t, n, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="3-5,7-10,67-100")
    p.add_argument("--rounds", type=int, default=200, help="sequential signatures per size (n > 10: a tenth)")
    p.add_argument("--requests", type=int, default=2000, help="requests in the concurrent run (n > 10: a twentieth)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--suite", default="bip445", choices=["bip445", "rfc9591"])
    p.add_argument("--session-timeout", type=float, default=1.0)
    p.add_argument("--no-faults", action="store_true")
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
