"""
kill -9 of a DKG member at each phase, with four real C{twistd -n frostnode}
processes (t = 3) set up as operators do (see L{tests.test_e2e_federation}),
over loopback TCP with Noise: no member ends with a key the others lack, and
after its restart on the same data directory the killed member's stored key
matches everyone else's (checked in every member's key store once all have
stopped, and through the client library before).

Phases: after the round-1 broadcast; in round 2 with shares sent; after the
key is stored and the agreement signature sent, with no certificate
anywhere; after the certified key is stored; and, between the last two, as
soon as every signature is in but before the certificate reaches the disk.

Holding a phase open
====================
On loopback a whole DKG takes a few milliseconds once the links are up, so a
kill cannot be aimed at a phase while it passes.  Each test holds the
victim in its phase with something the federation cannot get past until
the test allows it, so the kill lands inside the phase whenever it comes:

  - I{round 1}: the fourth member is not started; nobody can finish round 1
    without its package.
  - I{round 2}: the victim and one other member cannot reach each other
    (each lists the other's card with an address nobody listens on), so
    neither gets the other's share, which goes point to point.  Broadcasts
    still reach everyone through the other two (Bracha's payload
    retrieval).
  - I{signed, no certificate}: two I{other} members cannot reach each other,
    so they cannot sign; the victim gets every share, signs, and waits for
    their signatures.

A hold lasts until the round-2 timeout (15 s).  After the kill the test
opens the split link (a port forwarder on the unused address), so the
federation finishes at once.

Knowing that the victim is in its phase
=======================================
The node logs when a DKG starts, when it resumes after a restart, when a
session has every signature and when a key is certified, but nothing in
between: no event for the round-1 broadcast leaving, for entering round 2,
or for the agreement signature leaving.  Where no event exists the test
reads what the phase leaves on disk, through a read-only LMDB handle beside
the running node (LMDB serves readers in other processes; the node's own
lock only keeps out a second writer), every 20 ms:

  - round 1: the victim's run state (written before its round-1 broadcast);
  - round 2: a pending key on a member the victim is linked to, which it
    can only have signed with the victim's share in hand;
  - signed: the victim's own pending key (written before its signature
    leaves).

After the kill the victim's store is read again, to check that the kill did
land in the phase, and after the restart its log says what it found.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Optional

import lmdb
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory, ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase

from frostnode.client.library import connect
from frostnode.config import load_config
from frostnode.dkg.transcript import Certificate
from frostnode.identity import AddressCard
from frostnode.keys import load_node_keys
from frostnode.store.db import ENV_DIRNAME, MAX_DBS, Database
from frostnode.store.keys import EpochRecord, EpochStatus, KeyStore
from tests.test_e2e_federation import TWISTD, Federation, NodeProcess, free_ports, with_timeout
from tests.test_sync_support import wait_until

N, T = 4, 3
#: The member every test kills.
VICTIM = 0
#: The key store's sub-databases and the DKG driver's run-state key (the
#: layouts documented in L{frostnode.store.keys} and L{frostnode.dkg.storage}).
RECORDS_DB = b"keys.records"
SESSIONS_DB = b"keys.sessions"
RUN_KEY = b"dkg/run"
#: Seconds for one member to start, die, or finish its DKG.
WAIT = 30.0

DKG = "frostnode.dkg.driver.DkgService"


def _dkg_event(event: dict, text: str) -> bool:
    return event.get("namespace") == DKG and text in event.get("text", "")


def started(event: dict) -> bool:
    return _dkg_event(event, "DKG epoch 1: starting with")


def resumed(event: dict) -> bool:
    return _dkg_event(event, "resuming after a restart")


def certified(event: dict) -> bool:
    return _dkg_event(event, "new key certified")


def session_completed(event: dict) -> bool:
    return _dkg_event(event, "certified by all")


def aborted_by(host_key: bytes) -> Callable[[dict], bool]:
    """A member's event for a session that failed because C{host_key} restarted (logged by 16 hex digits)."""
    return lambda e: _dkg_event(e, "aborted (restart of") and e.get("culprit") == host_key.hex()[:16]


def finished(event: dict) -> bool:
    """A run's outcome for this member: a key, or a failed run."""
    return certified(event) or (event.get("namespace") == DKG and " failed: " in event.get("text", ""))


@dataclass(frozen=True)
class Snapshot:
    """What a member's key store held at one moment."""

    records: tuple[EpochRecord, ...]
    run_state: Optional[bytes]

    def pending(self, epoch: int = 1) -> list[EpochRecord]:
        return [r for r in self.records if r.epoch == epoch and r.status is EpochStatus.PENDING]


def peek(data_dir: Path) -> Snapshot:
    """
    The key store in C{data_dir}, read through a read-only LMDB handle: works
    while the node runs (see the module docstring), and changes nothing.
    """
    env = lmdb.open(str(data_dir / ENV_DIRNAME), readonly=True, create=False, max_dbs=MAX_DBS, lock=True)
    try:
        with env.begin() as txn:
            def items(name: bytes) -> list[tuple[bytes, bytes]]:
                try:
                    db = env.open_db(name, txn=txn, create=False)
                except lmdb.NotFoundError:
                    return []
                return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]

            records = tuple(EpochRecord.decode(v) for _, v in items(RECORDS_DB))
            run_state = dict(items(SESSIONS_DB)).get(RUN_KEY)
    finally:
        env.close()
    return Snapshot(records, run_state)


# -- opening a split link --------------------------------------------------------------------------


class _Tracked:
    """Mixin: a forwarded connection that reports when it is gone, so cleanup can wait for it."""

    def connectionMade(self) -> None:
        self.lost: Deferred = Deferred()
        self.gate.connections.add(self)
        super().connectionMade()  # type: ignore[misc]

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)  # type: ignore[misc]
        self.gate.connections.discard(self)
        self.lost.callback(None)


class Gate:
    """
    Ports that members dial to reach each other across a split link: nothing
    listens on them until L{open}, which forwards each to its member's real
    peer port (L{twisted.protocols.portforward}).
    """

    def __init__(self) -> None:
        self.routes: list[tuple[int, int]] = []
        self.ports: list[Any] = []
        self.connections: set[Any] = set()

    def route(self, port: int, target: int) -> None:
        self.routes.append((port, target))

    def open(self) -> None:
        gate = self

        class Client(_Tracked, ProxyClient):
            noisy = False

        class ClientFactory(ProxyClientFactory):
            noisy = False
            protocol = Client

        class Server(_Tracked, ProxyServer):
            noisy = False
            clientProtocolFactory = ClientFactory

        Client.gate = Server.gate = gate  # type: ignore[attr-defined]
        for port, target in self.routes:
            factory = ProxyFactory("127.0.0.1", target)
            factory.protocol = Server
            factory.noisy = False
            self.ports.append(reactor.listenTCP(port, factory, interface="127.0.0.1"))

    def close(self) -> Deferred:
        """Stop listening and drop every forwarded connection; fires when all are gone."""
        ds = [port.stopListening() for port in self.ports]
        self.ports = []
        for conn in list(self.connections):
            ds.append(conn.lost)
            conn.transport.abortConnection()
        return gatherResults([d for d in ds if d is not None])


# -- the federation ------------------------------------------------------------------------------


class KillableFederation:
    """
    A L{Federation} of N members whose processes the test starts, kills and
    restarts one by one, with some member pairs split (see L{Gate}).  Every
    child is killed, and the forwarder closed, in the test's cleanup.
    """

    def __init__(self, test: TestCase, split: Iterable[tuple[int, int]] = ()) -> None:
        self.test = test
        self.fed = Federation(Path(test.mktemp()), N, T)
        self.configs = self.fed.configs
        self.data_dirs = [load_config(c).node.data_dir for c in self.configs]
        self.host_keys = [card.host_key for card in self.fed.cards]
        self.processes: list[Optional[NodeProcess]] = [None] * N
        self.transports: list[Any] = [None] * N
        self.gate = Gate()
        test.addCleanup(self.gate.close)
        for a, b in split:
            self._split(a, b)

    def _split(self, a: int, b: int) -> None:
        """Members C{a} and C{b} list each other at unused ports (routed to the real ones by the gate)."""
        for me, other in ((a, b), (b, a)):
            (port,) = free_ports(1)
            config = load_config(self.configs[other])
            card = AddressCard.create(load_node_keys(config).host, self.fed.cards[other].noise_key,
                                      [f"tcp:host=127.0.0.1:port={port}"])
            path = self.fed.base / f"m{other}.seen-by-m{me}.card.json"
            path.write_text(card.to_json())
            own = self.configs[me]
            text = own.read_text()
            original = str(self.fed.base / f"m{other}.card.json")
            assert original in text, own
            own.write_text(text.replace(original, str(path)))
            self.gate.route(port, self.fed.peer_ports[other])

    def spawn(self, i: int) -> NodeProcess:
        """Start member C{i}'s twistd on its data directory (again, after a kill)."""
        proto = NodeProcess(f"m{i}")
        config = self.configs[i]
        argv = TWISTD + ["-n", "--pidfile=", "frostnode", "--config", str(config)]
        transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ), path=str(config.parent))
        self.processes[i], self.transports[i] = proto, transport
        self.test.addCleanup(Federation._kill, proto, transport)
        return proto

    def event(self, i: int, predicate: Callable[[dict], bool], what: str) -> Deferred:
        """The first log event of member C{i}'s current process that satisfies C{predicate}."""
        proto = self.processes[i]
        assert proto is not None
        return with_timeout(proto.when(predicate), WAIT, f"m{i} to log {what}")

    def running(self, i: int) -> Deferred:
        """Member C{i}'s current process has opened its store and bound its ports."""
        return self.event(i, lambda e: " running, peer port " in e.get("text", ""), "that it runs")

    def link_up(self, i: int, j: int) -> Deferred:
        peer = self.host_keys[j].hex()
        return self.event(i, lambda e: e.get("peer") == peer and e.get("text", "").startswith(f"peer {peer} up"),
                          f"its link to m{j} up")

    @inlineCallbacks
    def kill(self, i: int) -> Generator[Deferred, Any, None]:
        """SIGKILL member C{i} and wait until it is gone."""
        proto = self.processes[i]
        assert proto is not None and proto.running, f"m{i} is not running"
        self.transports[i].signalProcess("KILL")
        reason = yield with_timeout(proto.ended, WAIT, f"m{i} to die")
        self.test.assertIsInstance(reason, ProcessTerminated)
        self.test.assertEqual(reason.signal, signal.SIGKILL)

    def peek(self, i: int) -> Snapshot:
        return peek(self.data_dirs[i])

    def until(self, predicate: Callable[[], bool], what: str) -> Deferred:
        """Read the stores every 20 ms until C{predicate()} (no event says so; see the module docstring)."""
        return wait_until(predicate, WAIT, lambda: what)

    @inlineCallbacks
    def settle(self, keyed_before: Iterable[int] = ()) -> Generator[Deferred, Any, list[Any]]:
        """
        Wait until every member's current process has a DKG outcome (members
        in C{keyed_before} held their key when they started), then ask each,
        through the client library, for the federation key.
        """
        keyed = set(keyed_before)
        outcomes = yield gatherResults([self.event(i, finished, "the outcome of its DKG")
                                        for i in range(N) if i not in keyed])
        failed = [e["text"] for e in outcomes if not certified(e)]
        self.test.assertEqual(failed, [], "a member's DKG failed")
        yield gatherResults([self.running(i) for i in keyed])
        keys = []
        for i in range(N):
            client = yield connect(reactor, self.fed.target(i), connect_timeout=10.0, timeout=10.0)
            try:
                keys.append((yield client.pubkey()))
            finally:
                client.close()
        return keys

    @inlineCallbacks
    def stop(self) -> Generator[Deferred, Any, None]:
        """SIGTERM every running member; fires once all have exited."""
        running = [(p, t) for p, t in zip(self.processes, self.transports) if p is not None and p.running]
        for _, transport in running:
            transport.signalProcess("TERM")
        yield with_timeout(gatherResults([p.ended for p, _ in running]), WAIT, "the members to exit on SIGTERM")

    @contextmanager
    def key_stores(self) -> Iterator[list[KeyStore]]:
        """Every member's key store, opened as the node opens it (all must be stopped: one writer per store)."""
        dbs = []
        try:
            for data_dir in self.data_dirs:
                dbs.append(Database.open(data_dir))
            yield [KeyStore(db) for db in dbs]
        finally:
            for db in dbs:
                db.close_sync()


# -- the tests -------------------------------------------------------------------------------------


class DkgKillTests(TestCase):
    """SIGKILL of one member in each phase of the first DKG, then a restart on the same data directory."""

    timeout = 90

    @inlineCallbacks
    def agreed(self, fed: KillableFederation, keys: list[Any], attempt: int) -> Generator[Deferred, Any, EpochRecord]:
        """
        What issue 4 asks after a kill and restart, checked on every member's
        key store once all have stopped: the same certified key everywhere,
        the restarted member's included, each with its own share, no run left
        open, and no pending key of a session that was certified.

        @param keys: each member's answer to C{pubkey} before they stopped.
        @param attempt: the attempt the federation should have settled on.
        @return: the restarted member's current record.
        """
        self.assertEqual({(k.epoch, k.internal_key, k.output_key) for k in keys},
                         {(1, keys[0].internal_key, keys[0].output_key)}, "the members report different keys")
        yield fed.stop()
        with fed.key_stores() as stores:
            # Nobody holds a certified key of an epoch that another member lacks.
            self.assertEqual([{r.epoch for r in ks.records() if r.certified} for ks in stores], [{1}] * N)
            current = [ks.current(1) for ks in stores]
            ours = current[VICTIM]

            def held(r: EpochRecord) -> dict[str, Any]:
                """What must be the same everywhere (bytes shortened to a digest, so a failure reads)."""
                return {name: sha256(repr(getattr(r, name)).encode()).hexdigest()[:16]
                        for name in ("epoch", "session_id", "attempt", "members", "threshold", "internal_key",
                                     "output_key", "certificate", "commitments", "verification_shares")}

            for i, record in enumerate(current):
                self.assertEqual(held(record), held(ours), f"m{i}'s current key differs from the restarted member's")
            self.assertEqual((ours.attempt, list(ours.members), ours.threshold), (attempt, sorted(fed.host_keys), T))
            cert = Certificate.decode(ours.certificate)
            cert.verify()
            self.assertEqual((cert.params.session_id, cert.group_key.encode()), (ours.session_id, ours.internal_key))
            self.assertEqual(len({r.identifier for r in current}), N, "members share an identifier")
            certified_sessions = {r.session_id for ks in stores for r in ks.records() if r.certified}
            for i, (ks, record) in enumerate(zip(stores, current)):
                # Its own share of that key, which is the key it would sign with.
                self.assertEqual((record.status, record.member, len(record.secret_share)),
                                 (EpochStatus.CERTIFIED, True, 32), f"m{i}")
                self.assertEqual(ks.newest_usable(), record, f"m{i}")
                self.assertIsNone(ks.session(RUN_KEY), f"m{i} still has a DKG run open")
                for r in ks.records():
                    if r.status is EpochStatus.PENDING:
                        self.assertNotIn(r.session_id, certified_sessions,
                                         f"m{i} holds only a pending key of a certified session")
        return ours

    def assertAbortedTogether(self, fed: KillableFederation, session_id: Optional[bytes] = None) -> None:
        """Every other member dropped attempt 0 because the victim restarted (and named it)."""
        for i in range(1, N):
            events = [e for e in fed.processes[i].events if aborted_by(fed.host_keys[VICTIM])(e)]
            self.assertEqual([(e["epoch"], e["attempt"]) for e in events], [(1, 0)], f"m{i}")
            if session_id is not None:
                self.assertEqual(events[0]["session"], session_id.hex()[:16], f"m{i}")

    @inlineCallbacks
    def test_kill_in_round_1(self) -> Generator[Deferred, Any, None]:
        """
        Killed after its round-1 broadcast, before round 2 (the fourth member
        is not running yet): on restart it aborts the session it lost, and
        all four finish the next attempt together.
        """
        fed = KillableFederation(self)
        for i in (VICTIM, 1, 2):
            fed.spawn(i)
        yield gatherResults([fed.running(i) for i in (VICTIM, 1, 2)])
        yield fed.event(VICTIM, started, "the start of the DKG")
        yield gatherResults([fed.link_up(VICTIM, 1), fed.link_up(VICTIM, 2)])
        yield fed.until(lambda: fed.peek(VICTIM).run_state is not None, "the victim's run state on disk")
        yield fed.kill(VICTIM)
        before = fed.peek(VICTIM)
        self.assertIsNotNone(before.run_state)
        self.assertEqual(before.records, ())
        self.assertEqual([fed.peek(i).records for i in (1, 2)], [(), ()], "round 1 cannot have ended")

        fed.spawn(VICTIM)
        event = yield fed.event(VICTIM, resumed, "that it resumes")
        # It lost attempt 0's secrets: it aborts that attempt and resumes at the next, with nothing signed.
        self.assertEqual((event["epoch"], event["attempt"], event["sessions"]), (1, 1, 0))
        fed.spawn(3)
        keys = yield fed.settle()
        self.assertAbortedTogether(fed)
        yield self.agreed(fed, keys, attempt=1)

    @inlineCallbacks
    def test_kill_in_round_2(self) -> Generator[Deferred, Any, None]:
        """
        Killed in round 2, its shares sent but one share missing: on restart
        it aborts the session (others had signed it, but it can never be
        certified without the victim) and all finish the next attempt.
        """
        fed = KillableFederation(self, split=[(VICTIM, 3)])
        for i in range(N):
            fed.spawn(i)
        yield gatherResults([fed.running(i) for i in range(N)])
        yield fed.until(lambda: fed.peek(1).pending(), "m1 to sign, with the victim's share in hand")
        yield fed.kill(VICTIM)
        before = fed.peek(VICTIM)
        self.assertIsNotNone(before.run_state)
        self.assertEqual(before.records, (), "the victim cannot have signed without m3's share")
        signed_by_m1 = fed.peek(1).pending()[0]

        fed.gate.open()
        fed.spawn(VICTIM)
        event = yield fed.event(VICTIM, resumed, "that it resumes")
        # It lost attempt 0's secrets: it aborts that attempt and resumes at the next, with nothing signed.
        self.assertEqual((event["epoch"], event["attempt"], event["sessions"]), (1, 1, 0))
        keys = yield fed.settle()
        self.assertAbortedTogether(fed, signed_by_m1.session_id)
        ours = yield self.agreed(fed, keys, attempt=1)
        self.assertNotEqual(ours.session_id, signed_by_m1.session_id)

    @inlineCallbacks
    def test_kill_after_signing(self) -> Generator[Deferred, Any, None]:
        """
        Killed after storing its key and sending its agreement signature,
        before the certificate exists (two others cannot sign yet): after
        the restart it completes that same session with the others.
        """
        fed = KillableFederation(self, split=[(2, 3)])
        for i in range(N):
            fed.spawn(i)
        yield gatherResults([fed.running(i) for i in range(N)])
        yield fed.until(lambda: fed.peek(VICTIM).pending(), "the victim's pending key on disk")
        yield fed.kill(VICTIM)
        before = fed.peek(VICTIM)
        self.assertEqual([r.status for r in before.records], [EpochStatus.PENDING])
        signed = before.records[0]

        fed.gate.open()
        fed.spawn(VICTIM)
        event = yield fed.event(VICTIM, resumed, "that it resumes")
        # It resumes the attempt it signed, from its stored key.
        self.assertEqual((event["epoch"], event["attempt"], event["sessions"]), (1, 0, 1))
        keys = yield fed.settle()
        ours = yield self.agreed(fed, keys, attempt=0)
        self.assertEqual((ours.session_id, ours.secret_share, ours.agreement_signature),
                         (signed.session_id, signed.secret_share, signed.agreement_signature))

    @inlineCallbacks
    def test_kill_after_certification(self) -> Generator[Deferred, Any, None]:
        """Killed once its certified key is stored: it restarts with that key and nothing to redo."""
        fed = KillableFederation(self)
        for i in range(N):
            fed.spawn(i)
        yield fed.event(VICTIM, certified, "its certified key")
        yield fed.kill(VICTIM)
        before = fed.peek(VICTIM)
        self.assertEqual([r.status for r in before.records], [EpochStatus.CERTIFIED])
        self.assertIsNone(before.run_state)

        fed.spawn(VICTIM)
        keys = yield fed.settle(keyed_before=[VICTIM])
        ours = yield self.agreed(fed, keys, attempt=0)
        self.assertEqual(ours, before.records[0])
        self.assertFalse(any(resumed(e) for e in fed.processes[VICTIM].events))

    @inlineCallbacks
    def test_kill_while_storing_certificate(self) -> Generator[Deferred, Any, None]:
        """
        Killed as soon as it holds every signature, while its certificate is
        being written: whether or not the write made it to disk, it restarts
        with the key the others hold.
        """
        fed = KillableFederation(self)
        for i in range(N):
            fed.spawn(i)
        yield fed.event(VICTIM, session_completed, "that every member signed")
        yield fed.kill(VICTIM)
        before = fed.peek(VICTIM)
        self.assertEqual(len(before.records), 1)
        self.assertIn(before.records[0].status, (EpochStatus.PENDING, EpochStatus.CERTIFIED))

        fed.spawn(VICTIM)
        keys = yield fed.settle(keyed_before=[VICTIM] if before.records[0].certified else [])
        ours = yield self.agreed(fed, keys, attempt=0)
        self.assertEqual(ours.session_id, before.records[0].session_id)
