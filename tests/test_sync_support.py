"""
Shared helpers for the tests.test_sync_* modules (no tests here): members
with real keys and cards (from L{tests.support}), a federation of sync
nodes over in-memory links or real loopback links, each on its own LMDB
store in a temporary directory, and waits for convergence.

Waits on in-process nodes (L{until}, L{wait_converged}) re-check their
condition after each change a node's sync service reports
(L{SyncService.add_change_observer}: its writes to the log completing, the
messages and batches it handles), not on a timer.  L{wait_until} polls, for
state in another process, which sends no event here.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from frostnode.broadcast.service import ReliableBroadcast
from frostnode.identity import MemberDirectory
from frostnode.net.memory import MemoryNetwork
from frostnode.net.peers import LinkConfig, PeerNetwork
from frostnode.store.db import Database
from frostnode.store.log import DataLog, RecordBody, Retention
from frostnode.sync.service import SyncConfig, SyncService
from tests.support import LogCapture, Member, make_member  # also imported from here

#: Fast timers for tests on the real reactor.
FAST = SyncConfig(
    summary_interval=0.05,
    request_timeout=1.0,
    retry_delay=0.1,
    penalty_time=30.0,
    catchup_grace=0.2,
    max_batch_records=64,
    page_records=128,
    max_page_bytes=256 * 1024,
)


def client_key(i: int) -> bytes:
    return bytes([0x40 + i % 64]) * 32


def record(i: int, client: int = 0, size: int = 64, topic: str = "t") -> RecordBody:
    payload = (b"record %d from client %d " % (i, client)).ljust(size, b".")
    return RecordBody(client_key(client), topic, payload, timestamp=i)


@dataclass
class Node:
    """One member's store, broadcast and sync service."""

    member: Member
    path: str
    db: Database
    log: DataLog
    broadcast: ReliableBroadcast
    sync: SyncService
    links: Any
    extra: list = field(default_factory=list)
    #: Called (without arguments) after each change the sync service reports.
    watchers: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sync.add_change_observer(self._changed)

    def _changed(self) -> None:
        for watcher in list(self.watchers):
            watcher()

    @property
    def key(self) -> bytes:
        return self.member.key

    @property
    def short(self) -> str:
        return self.key.hex()[:16]

    def digest(self) -> tuple[int, str]:
        d = self.log.digest()
        return d.count, d.hex()

    @inlineCallbacks
    def stop(self):
        if self.sync.running:
            yield self.sync.stopService()
        if self.broadcast.running:
            yield self.broadcast.stopService()
        for service in self.extra:
            if service.running:
                yield service.stopService()
        yield self.db.close()


def start_node(member: Member, members: Sequence[bytes], directory: MemberDirectory, links: Any, path: str,
               config: SyncConfig, retention: Optional[Retention] = None) -> Node:
    db = Database.open(path, reactor=reactor)
    log = DataLog(db, member.key, retention=retention)
    bc = ReliableBroadcast(links, list(members), reactor, sweep_interval=1.0)
    sync = SyncService(log, links, bc, member.host, directory, reactor, config)
    bc.startService()
    sync.startService()
    return Node(member, path, db, log, bc, sync, links)


class MemoryFederation:
    """C{n} nodes over one in-memory network (shuffled delivery) on the real reactor."""

    def __init__(self, test: Any, n: int = 5, config: SyncConfig = FAST, seed: int = 1,
                 retention: Optional[Retention] = None) -> None:
        self.members = [make_member() for _ in range(n)]
        self.directory = MemberDirectory(m.card for m in self.members)
        keys = [m.key for m in self.members]
        self.net = MemoryNetwork(reactor, keys, rng=random.Random(seed))
        self.nodes = [start_node(m, keys, self.directory, self.net.links(m.key), test.mktemp(), config, retention)
                      for m in self.members]
        test.addCleanup(self.stop)

    @inlineCallbacks
    def stop(self):
        # Crash everyone first, so nothing sent while stopping schedules more work.
        for m in self.members:
            self.net.silence(m.key)
        yield gatherResults([n.stop() for n in self.nodes])
        yield deferLater(reactor, 0, lambda: None)


class TcpFederation:
    """
    C{n} members over real loopback TCP with Noise (L{PeerNetwork}), each
    listening on its own socket; C{play} says which of them run in this
    process (the others are left to the test, e.g. a child process).
    """

    def __init__(self, test: Any, n: int = 5, config: SyncConfig = FAST, play: Optional[Sequence[int]] = None,
                 link_config: Optional[LinkConfig] = None) -> None:
        from tests.test_net_support import fast_config, listening_socket

        self.config = config
        self.link_config = link_config or fast_config()
        self._listening_socket = listening_socket
        sockets = [listening_socket(reactor) for _ in range(n)]
        self.ports = [port for _, port in sockets]
        self.members = [make_member(f"tcp:127.0.0.1:{port}") for port in self.ports]
        self.directory = MemberDirectory(m.card for m in self.members)
        self.keys = [m.key for m in self.members]
        self.paths = [temp_path(test) for _ in range(n)]
        self.nodes: list[Optional[Node]] = [None] * n
        self.endpoints = [endpoint for endpoint, _ in sockets]
        for i in range(n) if play is None else play:
            self.start(i)
        test.addCleanup(self.stop)

    def start(self, i: int) -> Node:
        endpoint = self.endpoints[i]
        if endpoint is None:  # restarting: bind the member's port again
            endpoint, _ = self._listening_socket(reactor, self.ports[i])
        self.endpoints[i] = None
        m = self.members[i]
        links = PeerNetwork(reactor, m.host, m.noise_private, self.directory, endpoint, self.link_config)
        links.startService()
        node = start_node(m, self.keys, self.directory, links, self.paths[i], self.config)
        node.extra.append(links)
        self.nodes[i] = node
        return node

    @inlineCallbacks
    def stop_node(self, i: int):
        node, self.nodes[i] = self.nodes[i], None
        yield node.stop()

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n is not None]

    def when_connected(self) -> Deferred:
        """Fires once every running node has had a link to every other running node."""
        running = self.running()
        return gatherResults([n.links.when_connected(o.key) for n in running for o in running if o is not n])

    def stop(self) -> Deferred:
        return gatherResults([n.stop() for n in self.running()])


def submit_all(nodes: Sequence[Node], bodies: Sequence[RecordBody], assign: Callable[[int], int]) -> Deferred:
    """Submit C{bodies[i]} to C{nodes[assign(i)]}, all at once; fires with the results in order."""
    return gatherResults([nodes[assign(i)].sync.submit(b) for i, b in enumerate(bodies)])


def until(nodes: Sequence[Node], predicate: Callable[[], bool], timeout: float,
          describe: Callable[[], str] = lambda: "") -> Deferred:
    """
    Fires once C{predicate()} holds: checked now, then in the reactor turn
    after each change one of C{nodes} reports (so never inside a service's
    callback); fails after C{timeout} seconds.
    """
    if predicate():
        return succeed(None)
    done: Deferred = Deferred()
    check: list[Any] = []   # the scheduled check, if any

    def finish(result: Any) -> None:
        for n in nodes:
            n.watchers.remove(changed)
        for call in check + [timer]:
            if call.active():
                call.cancel()
        done.callback(result)

    def recheck() -> None:
        check.clear()
        try:
            holds = predicate()
        except Exception:
            finish(Failure())
            return
        if holds:
            finish(None)

    def changed() -> None:
        if not check:
            check.append(reactor.callLater(0, recheck))

    def expired() -> None:
        finish(Failure(AssertionError(f"condition not met within {timeout} s. {describe()}")))

    timer = reactor.callLater(timeout, expired)
    for n in nodes:
        n.watchers.append(changed)
    return done


@inlineCallbacks
def wait_until(predicate: Callable[[], bool], timeout: float, describe: Callable[[], str] = lambda: "") -> Any:
    """
    Poll C{predicate} every 20 ms on the real reactor until true; fail after
    C{timeout} seconds.  Only for state in another process: a condition on
    nodes in this one is awaited with L{until}.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s. {describe()}")
        yield deferLater(reactor, 0.02, lambda: None)


def converged(nodes: Sequence[Node], count: Optional[int] = None) -> bool:
    digests = {n.digest() for n in nodes}
    return len(digests) == 1 and (count is None or next(iter(digests))[0] == count)


def describe(nodes: Sequence[Node]) -> Callable[[], str]:
    return lambda: "; ".join(f"{n.short}: {n.digest()[0]} records, {n.digest()[1][:12]}" for n in nodes)


def wait_converged(nodes: Sequence[Node], count: Optional[int] = None, timeout: float = 20.0) -> Deferred:
    return until(nodes, lambda: converged(nodes, count), timeout, describe(nodes))


def temp_path(test: Any) -> str:
    return os.path.abspath(test.mktemp())
