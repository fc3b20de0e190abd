#!/usr/bin/env python3
"""
Benchmark of the replicated data log (frostnode.sync) in a 5-member
federation.

Transport: five separate processes (scripts/sync_node.py: LMDB store with
group commit and fsync, PeerNetwork over loopback TCP with Noise, Bracha
reliable broadcast, SyncService), configured as the node wires them
(broadcasts and batches up to 2 MiB).  All five share this machine's cores:
every figure is the whole federation's work on them, and the "cpu" line
says how much of it each record costs.

It prints:
  1. submissions per second acknowledged by one member (several concurrent
     submitters calling SyncService.submit() with 1 KiB records, each
     awaiting its acknowledgement = fsync before the next), p50/p99 submit
     latency, and records per second replicated to all 5 (until the last
     member holds the last record);
  2. catch-up: one member stops, the others take --catchup more records,
     the member restarts on its data directory; the time until its log
     holds everything (from process start, and from its "ready"), and how
     many records came through catch-up rather than broadcast.

The links' per-peer queue for an absent peer is capped (--queue-messages,
512 messages) so that most of the returning member's records come through
catch-up, as after any absence longer than the links' buffer; with
--queue-messages 32 nearly all of them do.  (The cap is
on messages, not bytes, because SendQueue.ack in frostnode/net/reliable.py
does not give back the bytes of cumulatively acknowledged messages, so a
byte cap ends up refusing every message to live peers too.)

Usage: bench_sync.py [--records N] [--submitters K] [--size BYTES]
                     [--catchup N] [--batch-records N] [--batch-delay S]
                     [--broadcast-bytes N] [--queue-messages N] [--keep]
                     [--show-logs]

Profile a member's reactor thread with SYNC_NODE_PROFILE=/some/dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, replace
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402

from frostnode.identity import AddressCard, HostKeypair  # noqa: E402
from frostnode.net.noise import generate_noise_private_key, noise_public_key  # noqa: E402
from frostnode.net.peers import LinkConfig  # noqa: E402
from frostnode.sync.service import SyncConfig  # noqa: E402

NODE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sync_node.py")


class Child(ProcessProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self._buffer = b""
        self._waiters: list[tuple[Callable[[dict], bool], defer.Deferred]] = []
        self.ended: defer.Deferred = defer.Deferred()
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            if event.get("event") == "error":
                print(f"  [{self.name}] error: {event}", file=sys.stderr)
            for waiter in list(self._waiters):
                if waiter[0](event):
                    self._waiters.remove(waiter)
                    waiter[1].callback(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-20000:]

    def processEnded(self, reason: Any) -> None:
        for _, d in self._waiters:
            d.errback(RuntimeError(f"{self.name} ended: {reason.value}\n{self.stderr.decode()[-3000:]}"))
        self._waiters = []
        self.ended.callback(None)

    def send(self, **cmd: Any) -> None:
        self.transport.write(json.dumps(cmd).encode() + b"\n")

    def when(self, event: str, **match: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((lambda e: e.get("event") == event and all(e.get(k) == v for k, v in match.items()), d))
        return d

    def ask(self, cmd: str, event: str, **args: Any) -> defer.Deferred:
        d = self.when(event)
        self.send(cmd=cmd, **args)
        return d


class Federation:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.root = tempfile.mkdtemp(prefix="bench-sync-")
        self.sockets = []
        members = []
        for _ in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            self.sockets.append(s)
            host, noise = HostKeypair.generate(), generate_noise_private_key()
            card = AddressCard.create(host, noise_public_key(noise), [f"tcp:127.0.0.1:{s.getsockname()[1]}"])
            members.append((host, noise, card))
        self.members = members
        links = LinkConfig(peer_queue_bytes=1 << 50, peer_queue_size=args.queue_messages)
        # As the node wires them (frostnode/tap.py): a batch may fill a whole
        # broadcast of [limits] max_broadcast_size (2 MiB by default).
        bracha = {"max_payload": args.broadcast_bytes}
        sync = SyncConfig(max_batch_records=args.batch_records, max_batch_bytes=args.broadcast_bytes,
                          summary_interval=1.0, catchup_grace=1.0)
        if args.batch_delay is not None:
            sync = replace(sync, batch_delay=args.batch_delay)
        self.configs = []
        for i, (host, noise, _) in enumerate(members):
            path = os.path.join(self.root, f"node{i}.json")
            with open(path, "w") as f:
                json.dump({
                    "data_dir": os.path.join(self.root, f"node{i}"),
                    "host_secret": host.secret.hex(),
                    "noise_secret": noise.hex(),
                    "cards": [c.to_dict() for _, _, c in members],
                    "listen_fd": 3,
                    "links": asdict(links),
                    "sync": asdict(sync),
                    "bracha": bracha,
                }, f)
            os.chmod(path, 0o600)
            self.configs.append(path)
        self.children: list[Any] = [None] * 5
        self.all_children: list[Child] = []

    def spawn(self, i: int) -> Child:
        child = Child(f"node{i}")
        self.reactor.spawnProcess(child, sys.executable, [sys.executable, NODE_SCRIPT, self.configs[i]],
                                  env=os.environ.copy(), childFDs={0: "w", 1: "r", 2: "r", 3: self.sockets[i].fileno()})
        self.children[i] = child
        self.all_children.append(child)
        return child

    @defer.inlineCallbacks
    def stop(self, i: int):
        child = self.children[i]
        child.send(cmd="stop")
        yield child.ended
        self.children[i] = None

    @defer.inlineCallbacks
    def close(self, keep: bool):
        for i, c in enumerate(self.children):
            if c is not None:
                yield self.stop(i)
        for s in self.sockets:
            s.close()
        if keep:
            print(f"data kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


@defer.inlineCallbacks
def wait_links(reactor: Any, children: list[Child], peers: int) -> Any:
    """Until every child reports links to C{peers} others."""
    while True:
        statuses = yield defer.gatherResults([c.ask("status", "status") for c in children])
        if all(s["status"]["links_up"] >= peers for s in statuses):
            return
        yield task.deferLater(reactor, 0.1, lambda: None)


@defer.inlineCallbacks
def watch(reactor: Any, children: list[Child], until: defer.Deferred, every: float = 5.0) -> Any:
    """Print each member's record count every C{every} seconds until C{until} fires; return its result."""
    done: list[Any] = []
    until.addBoth(lambda r: done.append(r) or r)
    t0 = time.time()
    last, since = None, t0
    while not done:
        yield task.deferLater(reactor, every, lambda: None)
        if done:
            break
        statuses = yield defer.gatherResults([c.ask("status", "status") for c in children])
        counts = " ".join(str(s["status"]["count"]) for s in statuses)
        print(f"    +{time.time() - t0:5.1f} s: {counts}", flush=True)
        if counts != last:
            last, since = counts, time.time()
        elif time.time() - since > 30:
            raise RuntimeError(f"no progress for 30 s: {json.dumps([s['status'] for s in statuses])[:3000]}")
    return (yield until)


@defer.inlineCallbacks
def main(reactor: Any):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=30000, help="records submitted in the throughput run")
    p.add_argument("--submitters", type=int, default=64, help="concurrent submitters on the receiving member")
    p.add_argument("--size", type=int, default=1024, help="payload bytes per record")
    p.add_argument("--catchup", type=int, default=100000, help="records the returning member catches up on")
    p.add_argument("--batch-records", type=int, default=512, help="SyncConfig.max_batch_records")
    p.add_argument("--broadcast-bytes", type=int, default=2 * 1024 * 1024,
                   help="largest broadcast payload (the node's [limits] max_broadcast_size)")
    p.add_argument("--batch-delay", type=float, default=None, help="SyncConfig.batch_delay (default: its default)")
    p.add_argument("--queue-messages", type=int, default=512, help="links' per-peer queue cap (messages)")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--show-logs", action="store_true", help="print the members' warnings at the end")
    args = p.parse_args()

    fed = Federation(reactor, args)
    try:
        t_spawn = time.time()
        children = [fed.spawn(i) for i in range(5)]
        yield defer.gatherResults([c.when("ready") for c in children])
        yield wait_links(reactor, children, 4)
        print(f"transport: 5 processes, loopback TCP + Noise (PeerNetwork), Bracha broadcast, LMDB with fsync; "
              f"5 members up in {time.time() - t_spawn:.1f} s")

        # 1. throughput, acknowledgement latency, replication to all 5
        n = args.records
        before = yield defer.gatherResults([c.ask("status", "status") for c in children])
        reached = [c.ask("wait", "reached", count=n) for c in children]
        loaded = yield watch(reactor, children, children[0].ask("load", "loaded", count=n, size=args.size,
                                                                 submitters=args.submitters, tag="run"))
        ends = yield watch(reactor, children, defer.gatherResults(reached))
        last = max(e["at"] for e in ends)
        start = loaded["start"]
        print(f"submissions : {loaded['acked']} records of {args.size} B by {args.submitters} concurrent "
              f"submitters to one member ({loaded['errors']} errors)")
        print(f"acknowledged: {loaded['acked'] / (loaded['end'] - start):8.0f} records/s (durable on the receiving member)")
        print(f"replicated  : {n / (last - start):8.0f} records/s (held by all 5 members; last at +{last - start:.2f} s)")
        print(f"latency     : p50 {loaded['p50_ms']:.1f} ms, p99 {loaded['p99_ms']:.1f} ms (submit() to acknowledgement)")
        statuses = yield defer.gatherResults([c.ask("status", "status") for c in children])
        cpu = [a["counters"]["cpu"] - b["counters"]["cpu"] for a, b in zip(statuses, before)]
        print(f"cpu         : {1e6 * sum(cpu) / n:.0f} us per record, all members (receiving member "
              f"{1e6 * cpu[0] / n:.0f} us, others {', '.join(f'{1e6 * c / n:.0f}' for c in cpu[1:])}); "
              f"{statuses[0]['counters']['batches_broadcast']} batches")
        digests = {s["status"]["digest"] for s in statuses}
        print(f"digests     : {'all equal' if len(digests) == 1 else 'DIFFER'} ({statuses[0]['status']['count']} records)")

        # 2. catch-up of a returning member
        m = args.catchup
        if m:
            yield fed.stop(4)
            up = children[:4]
            yield wait_links(reactor, up, 3)
            reached = [c.ask("wait", "reached", count=n + m) for c in up]
            t0 = time.time()
            loaded = yield watch(reactor, up, up[0].ask("load", "loaded", count=m, size=args.size,
                                                         submitters=args.submitters, tag="absent"))
            ends = yield watch(reactor, up, defer.gatherResults(reached))
            print(f"absence     : {m} more records while member 5 was stopped "
                  f"({m / (max(e['at'] for e in ends) - t0):.0f} records/s replicated to the 4 others)")
            t_start = time.time()
            back = fed.spawn(4)
            yield back.when("ready")
            t_ready = time.time()
            done = yield watch(reactor, [back], back.ask("wait", "reached", count=n + m), every=2.0)
            status = yield back.ask("status", "status")
            others = yield up[0].ask("status", "status")
            c = status["counters"]
            print(f"catch-up    : {m} records in {done['at'] - t_start:.2f} s from process start, "
                  f"{done['at'] - t_ready:.2f} s from ready ({c['records_fetched']} fetched by catch-up in "
                  f"{c['pages_fetched']} pages, {c['records_received']} by broadcast from the links' buffers)")
            print(f"digests     : {'equal' if status['status']['digest'] == others['status']['digest'] else 'DIFFER'}")
    finally:
        if args.show_logs:
            for c in fed.all_children:
                print(f"--- {c.name} stderr:\n{c.stderr.decode(errors='replace')[-4000:]}")
        yield fed.close(args.keep)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    task.react(main)
