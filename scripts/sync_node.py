#!/usr/bin/env python3
"""
One member's store, peer links, reliable broadcast and sync service in a
process of its own, driven with JSON lines on stdin and answering with JSON
lines on stdout.  It serves the kill -9 test (tests/test_sync_process.py)
and the benchmark (scripts/bench_sync.py) until the full node
(C{twistd frostnode}) runs the sync layer; it builds the layers the way the
node does, from a JSON file instead of the node's TOML.

    sync_node.py CONFIG.json

CONFIG.json: C{data_dir}, C{host_secret} and C{noise_secret} (hex), C{cards}
(every member's address card, as in C{AddressCard.to_dict}), C{listen_fd}
(an inherited listening TCP socket, so a restarted member keeps its port
without a bind race) and optional C{sync}, C{links} and C{bracha} dicts of
L{SyncConfig}, L{LinkConfig} and L{BrachaConfig} fields.

Commands (one JSON object per line) and their answers:

  - C{{"cmd": "submit", "topic", "payload" (hex), "client" (hex), "timestamp"}}
    -> C{{"event": "ack", "id", "created", "origin", "seq"}} once durable,
    or C{{"event": "error", ...}};
  - C{{"cmd": "load", "count", "size", "submitters", "tag"}}: C{submitters}
    concurrent loops each awaiting C{submit()} of 1 record at a time
    (C{size}-byte payloads: the tag and record number, then random bytes)
    until C{count} are acknowledged
    -> C{{"event": "loaded", "acked", "start", "end", "p50_ms", "p99_ms"}}
    (wall-clock seconds);
  - C{{"cmd": "wait", "count"}} -> C{{"event": "reached", "count", "at"}} once
    the log holds C{count} records (checked every 5 ms);
  - C{{"cmd": "get", "id"}} -> C{{"event": "got", "id", "held"}};
  - C{{"cmd": "status"}} -> C{{"event": "status", "status": SyncService.status(), "counters"}}
    (the service's counters, and C{cpu}: the process's CPU seconds, all threads);
  - C{{"cmd": "stop"}}: stop every service, close the store, exit 0.

On start it prints C{{"event": "ready", "host_key"}}.  Log events at
warning level and above go to stderr.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, reactor, stdio, task  # noqa: E402
from twisted.internet.endpoints import AdoptedStreamServerEndpoint  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver  # noqa: E402

from frostnode.broadcast.bracha import BrachaConfig  # noqa: E402
from frostnode.broadcast.service import ReliableBroadcast  # noqa: E402
from frostnode.identity import AddressCard, HostKeypair, MemberDirectory  # noqa: E402
from frostnode.net.peers import LinkConfig, PeerNetwork  # noqa: E402
from frostnode.store.db import Database  # noqa: E402
from frostnode.store.log import DataLog, RecordBody  # noqa: E402
from frostnode.sync.service import SyncConfig, SyncService  # noqa: E402


class Node:
    def __init__(self, config: dict) -> None:
        self.host = HostKeypair(bytes.fromhex(config["host_secret"]))
        directory = MemberDirectory(AddressCard.from_dict(c) for c in config["cards"])
        self.db = Database.open(config["data_dir"], reactor=reactor)
        self.log = DataLog(self.db, self.host.public)
        endpoint = AdoptedStreamServerEndpoint(reactor, config["listen_fd"], socket.AF_INET)
        self.links = PeerNetwork(reactor, self.host, bytes.fromhex(config["noise_secret"]), directory, endpoint,
                                 LinkConfig(**config.get("links", {})))
        self.broadcast = ReliableBroadcast(self.links, directory.host_keys(), reactor,
                                           BrachaConfig(**config.get("bracha", {})))
        self.sync = SyncService(self.log, self.links, self.broadcast, self.host, directory, reactor,
                                SyncConfig(**config.get("sync", {})))
        for service in (self.links, self.broadcast, self.sync):
            service.startService()
        self._stopping: Any = None

    def stop(self) -> defer.Deferred:
        if self._stopping is None:
            self._stopping = self._stop()
        return self._stopping

    @defer.inlineCallbacks
    def _stop(self):
        for service in (self.sync, self.broadcast, self.links):
            yield service.stopService()
        yield self.db.close()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else 0.0


class Control(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, node: Node) -> None:
        self.node = node

    def emit(self, **event: Any) -> None:
        self.transport.write(json.dumps(event).encode() + b"\n")

    def connectionMade(self) -> None:
        self.emit(event="ready", host_key=self.node.host.public.hex())

    def lineReceived(self, line: bytes) -> None:
        try:
            cmd = json.loads(line)
            getattr(self, "do_" + cmd.pop("cmd"))(**cmd)
        except Exception as e:
            self.emit(event="error", error=repr(e), line=line.decode(errors="replace")[:200])

    def do_submit(self, topic: str, payload: str, client: str, timestamp: int = 0) -> None:
        body = RecordBody(bytes.fromhex(client), topic, bytes.fromhex(payload), timestamp)
        d = self.node.sync.submit(body)
        d.addCallbacks(
            lambda r: self.emit(event="ack", id=r.record_id.hex(), created=r.created, origin=r.origin.hex(), seq=r.seq),
            lambda f: self.emit(event="error", id=body.record_id.hex(), error=f.getErrorMessage()),
        )

    @defer.inlineCallbacks
    def do_load(self, count: int, size: int = 1024, submitters: int = 8, tag: str = "load"):
        sync = self.node.sync
        latencies: list[float] = []
        remaining = iter(range(count))
        block = os.urandom(size)
        errors = 0

        @defer.inlineCallbacks
        def submitter(k: int):
            nonlocal errors
            client = bytes([k % 256]) * 32
            for i in remaining:
                body = RecordBody(client, "bench", (tag.encode() + b"/%d/" % i + block)[:size], timestamp=i)
                t0 = time.perf_counter()
                try:
                    yield sync.submit(body)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.time()
        yield defer.gatherResults([submitter(k) for k in range(submitters)])
        self.emit(event="loaded", tag=tag, acked=len(latencies), errors=errors, start=start, end=time.time(),
                  p50_ms=1000 * percentile(latencies, 0.5), p99_ms=1000 * percentile(latencies, 0.99))

    def do_wait(self, count: int) -> None:
        log = self.node.log

        def check() -> None:
            if log.digest().count >= count:
                loop.stop()
                self.emit(event="reached", count=count, at=time.time())

        loop = task.LoopingCall(check)
        loop.start(0.005)

    def do_get(self, id: str) -> None:
        self.emit(event="got", id=id, held=bytes.fromhex(id) in self.node.log)

    def do_status(self) -> None:
        s = self.node.sync
        self.emit(event="status", status=s.status(), counters=dict(
            batches_broadcast=s.batches_broadcast, batches_received=s.batches_received,
            records_received=s.records_received, records_fetched=s.records_fetched,
            pages_served=s.pages_served, pages_fetched=s.pages_fetched, rejected=s.rejected,
            cpu=time.process_time()))

    def do_stop(self) -> None:
        self.node.stop().addBoth(lambda _: reactor.stop())

    def connectionLost(self, reason: Any = None) -> None:
        # The parent closed our stdin: stop cleanly.
        if self.node._stopping is None:
            self.do_stop()


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    node = Node(config)
    stdio.StandardIO(Control(node))
    profile = os.environ.get("SYNC_NODE_PROFILE")
    if profile:  # SYNC_NODE_PROFILE=/dir: cProfile of the reactor thread, to /dir/<host key>.prof
        import cProfile

        cProfile.runctx("reactor.run()", globals(), locals(),
                        os.path.join(profile, node.host.public.hex()[:8] + ".prof"))
    else:
        reactor.run()


if __name__ == "__main__":
    main()
