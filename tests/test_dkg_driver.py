# -*- test-case-name: tests.test_dkg_driver -*-
"""
The DKG service over in-memory links, the real reliable broadcast, the key
store and a C{task.Clock}: several members in one process, restarts included.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from frostnode.broadcast import bracha
from frostnode.broadcast.service import ReliableBroadcast
from frostnode.crypto.keygen import keygen_round1
from frostnode.crypto.bip340 import schnorr_verify, taproot_output_key
from frostnode.crypto.group import N
from frostnode.dkg import messages as m
from frostnode.dkg.driver import DkgResult, DkgService
from frostnode.dkg.messages import Kind, Reason
from frostnode.dkg.run import RunConfig
from frostnode.dkg.scheduler import DAY, DkgTooSoon, SchedulePolicy
from frostnode.dkg.session import Timeouts
from frostnode.dkg.storage import (
    DkgStorage,
    KeyStoreDkgStorage,
    MemoryDkgStorage,
    epoch_record,
    foreign_record,
    pending_from_record,
)
from frostnode.dkg.transcript import Certificate, SessionParams
from frostnode.net.interfaces import CHANNEL_BROADCAST, CHANNEL_DKG, ILinks
from frostnode.net.memory import MemoryNetwork
from frostnode.store.db import Database
from frostnode.store.keys import EpochStatus, KeyStore
from tests.test_dkg_session import bip445_sign, hosts

TIMEOUTS = Timeouts(round1=20.0, round2=20.0, reveal=10.0, agreement=20.0)
START = 1_700_000_000.0


@implementer(ILinks)
class RestartableLinks:
    """
    One member's links across "process restarts": L{reset} forgets every
    handler, as a new process would have none, while the network (and what
    peers queued for us) carries on.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.local = inner.local
        self._handlers: dict[int, Callable] = {}
        self._registered: set[int] = set()

    def reset(self) -> None:
        self._handlers.clear()

    def register(self, channel: int, handler) -> None:
        if channel in self._handlers:
            raise ValueError("channel taken")
        self._handlers[channel] = handler
        if channel not in self._registered:
            self._registered.add(channel)
            self.inner.register(channel, lambda s, p, c=channel: self._dispatch(c, s, p))

    def _dispatch(self, channel: int, sender: bytes, payload: bytes) -> None:
        h = self._handlers.get(channel)
        if h is not None:
            h(sender, payload)

    def send(self, peer: bytes, channel: int, payload: bytes) -> None:
        self.inner.send(peer, channel, payload)

    def peers(self) -> list[bytes]:
        return self.inner.peers()

    def connected(self) -> set[bytes]:
        return self.inner.connected()


class ObservableLinks(RestartableLinks):
    """Links that report a peer's link coming up, as L{frostnode.net.peers.PeerNetwork} does."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.observers: list[Callable[[bytes, bool], None]] = []

    def reset(self) -> None:
        super().reset()
        self.observers.clear()

    def add_link_observer(self, observer: Callable[[bytes, bool], None]) -> None:
        self.observers.append(observer)

    def link_up(self, peer: bytes) -> None:
        for observer in list(self.observers):
            observer(peer, True)


class Node:
    def __init__(self, fed: "MemoryFederation", host) -> None:
        self.fed = fed
        self.host = host
        self.key = host.public
        self.links = (ObservableLinks if fed.observable else RestartableLinks)(fed.net.links(host.public))
        self.storage = fed.storage_factory(self)
        self.boot()

    def boot(self) -> None:
        fed = self.fed
        self.broadcast = ReliableBroadcast(self.links, fed.members, fed.clock)
        self.broadcast.startService()
        self.service = DkgService(self.host, lambda: fed.members, self.links, self.broadcast, self.storage,
                                  fed.clock, fed.policy, fed.config, rand=fed.rand, schedule=fed.schedule)
        self.results: list[DkgResult] = []
        self.service.startService()

    def crash(self) -> None:
        """Drop every in-memory object of this member; the store survives."""
        self.service.stopService()
        self.broadcast.stopService()
        self.links.reset()

    def restart(self) -> None:
        self.crash()
        if isinstance(self.storage, KeyStoreDkgStorage):
            self.storage = self.fed.storage_factory(self, reopen=True)
        self.boot()


class MemoryFederation:
    def __init__(self, test: SynchronousTestCase, n: int, seed: int = 1, schedule: bool = False,
                 policy: SchedulePolicy = SchedulePolicy(interval=None), keystore: bool = False,
                 delay: float = 0.0, observable: bool = False,
                 storage: Optional[Callable[["MemoryFederation"], DkgStorage]] = None) -> None:
        self.test = test
        self.observable = observable
        self.clock = Clock()
        self.clock.advance(START)
        hs = hosts(n, seed)
        self.members = [h.public for h in hs]
        self.net = MemoryNetwork(self.clock, self.members, rng=random.Random(seed), delay=delay)
        self.policy = policy
        self.config = RunConfig(TIMEOUTS)
        self.schedule = schedule
        rng = random.Random(seed * 7919)
        self.rand = lambda k: rng.randbytes(k)
        self.dbs: dict[bytes, Database] = {}
        self.dirs: dict[bytes, str] = {}
        if storage is not None:
            self.storage_factory = lambda node, reopen=False: storage(self)
        else:
            self.storage_factory = self._keystore if keystore else (lambda node, reopen=False: MemoryDkgStorage())
        self.nodes = [Node(self, h) for h in hs]
        self.by_key = {nd.key: nd for nd in self.nodes}

    def _keystore(self, node: Node, reopen: bool = False) -> KeyStoreDkgStorage:
        if node.key not in self.dirs:
            self.dirs[node.key] = self.test.mktemp()
        if reopen:
            self.dbs[node.key].close_sync()
        db = self.dbs[node.key] = Database.open(self.dirs[node.key])
        self.test.addCleanup(lambda: None if db._closed else db.close_sync())
        return KeyStoreDkgStorage(KeyStore(db), sync=True)

    def settle(self, until: Optional[Callable[[], bool]] = None, limit: float = 3600.0) -> None:
        """Run the clock: every due call, then jump to the next, up to C{limit} seconds ahead."""
        end = self.clock.seconds() + limit
        for _ in range(200000):
            if until is not None and until():
                return
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not calls:
                return
            nxt = min(calls)
            if nxt > end:
                return
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
        raise AssertionError("clock never settled")

    def request(self, node: Node):
        d = node.service.request_dkg()

        def keep(result):
            node.results.append(result)
            return result
        return d.addCallback(keep)

    def all_done(self, nodes=None) -> bool:
        return all(nd.service.last_result is not None for nd in (nodes or self.nodes))


class SlowDiskStorage(MemoryDkgStorage):
    """
    L{MemoryDkgStorage} on a disk that takes C{latency} seconds of the clock
    to make a write durable: the write lands, and its Deferred fires, only
    then.  L{lose_unflushed} is what a crash does to writes still in flight.
    """

    def __init__(self, clock: Clock, latency: float = 0.005) -> None:
        super().__init__()
        self.clock = clock
        self.latency = latency
        self._inflight: list = []

    def _later(self, write: Callable[..., Deferred], *args) -> Deferred:
        done: Deferred = Deferred()

        def land() -> None:
            self._inflight.remove(call)
            write(*args).chainDeferred(done)
        call = self.clock.callLater(self.latency, land)
        self._inflight.append(call)
        return done

    def lose_unflushed(self) -> None:
        for call in self._inflight:
            call.cancel()
        self._inflight.clear()

    def save_run(self, state, closed: bool = False) -> Deferred:
        return self._later(super().save_run, state, closed)

    def finish_run(self) -> Deferred:
        return self._later(super().finish_run)

    def save_signed(self, pending, now: float) -> Deferred:
        return self._later(super().save_signed, pending, now)

    def certify(self, pending, certificate, now: float) -> Deferred:
        return self._later(super().certify, pending, certificate, now)

    def record_foreign(self, certificate, now: float) -> Deferred:
        return self._later(super().record_foreign, certificate, now)


def rewrite_own_broadcasts(change: Callable[[bytes, bytes], Optional[bytes]]) -> Callable:
    """
    A byzantine rewrite of a member's own broadcasts: C{change(tag, payload)}
    returns the payload to send instead (the same one to every peer, so
    Bracha still delivers it) or None to withhold the broadcast from all.
    Point-to-point traffic and the member's part in others' broadcasts pass.
    """
    def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
        if channel != CHANNEL_BROADCAST:
            return [(peer, channel, payload)]
        records = []
        for kind, tag, body in bracha.decode_batch(payload, 255, 1 << 20):
            if kind == bracha.SEND:
                body = change(tag, body)
                if body is not None:
                    records.append(bracha.encode_send(tag, body))
            elif kind == bracha.RESPONSE:
                records.append(bracha.encode_response(tag, body))
            else:
                records.append(bytes((kind,)) + tag + body)
        return [(peer, channel, bracha.encode_batch(records))] if records else []
    return rewrite


def bad_share_to(victim: bytes, then: Optional[Callable] = None) -> Callable:
    """The issue-577 attack: a wrong share to C{victim} only; other traffic through C{then}."""
    def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
        if channel == CHANNEL_DKG and peer == victim:
            msg = m.decode_direct(payload)
            if isinstance(msg, m.Share):
                return [(peer, channel, m.encode_direct(m.Share(msg.session_id, (msg.share + 1) % N)))]
        return [(peer, channel, payload)] if then is None else then(peer, channel, payload)
    return rewrite


def kind_of(tag: bytes) -> Optional[Kind]:
    return m.parse_tag(tag)[1] if tag.startswith(m.TAG_PREFIX) else None


class DriverChecks:
    def check_agree(self, fed: MemoryFederation, nodes: list[Node]) -> DkgResult:
        results = [nd.service.last_result for nd in nodes]
        for nd, r in zip(nodes, results):
            self.assertIsNotNone(r, f"{nd.key.hex()[:8]} has no result")
            self.assertTrue(r.ok, r.reason)
            self.assertTrue(r.member)
        self.assertEqual(len({r.certificate.encode() for r in results}), 1)
        r0 = results[0]
        self.assertEqual(r0.output_key, taproot_output_key(r0.internal_key.xbytes())[0])
        t = r0.certificate.params.threshold
        kps = sorted((r.key_package for r in results), key=lambda kp: kp.identifier)
        sig, out_key = bip445_sign(kps[-t:], b"frostnode")
        self.assertEqual(out_key, r0.output_key)
        self.assertTrue(schnorr_verify(b"frostnode", out_key, sig))
        return r0


class MemoryDriverTests(DriverChecks, SynchronousTestCase):
    def test_request_on_one_member_others_join(self) -> None:
        fed = MemoryFederation(self, 4)
        d = fed.request(fed.nodes[0])
        fed.settle(fed.all_done)
        self.successResultOf(d)
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.epoch, 1)
        self.assertEqual(r.attempt, 0)
        self.assertEqual(r.excluded, {})
        for nd in fed.nodes:
            self.assertEqual(nd.storage.last_epoch(), 1)
            self.assertEqual(nd.storage.last_dkg(), fed.clock.seconds())
            self.assertEqual(nd.storage.signed, {})   # dropped once certified
            self.assertIsNone(nd.storage.run)

    def test_silent_member_excluded_and_named(self) -> None:
        fed = MemoryFederation(self, 7, seed=2)
        silent = fed.nodes[3]
        fed.net.silence(silent.key)
        with capturedLogs() as events:
            for nd in fed.nodes:
                if nd is not silent:
                    fed.request(nd)
            fed.settle(lambda: fed.all_done([n for n in fed.nodes if n is not silent]))
        honest = [n for n in fed.nodes if n is not silent]
        r = self.check_agree(fed, honest)
        self.assertEqual(r.excluded, {silent.key: Reason.SILENT_ROUND1})
        self.assertNotIn(silent.key, r.certificate.params.members)
        named = [e for e in events if e.get("culprit") == silent.key.hex() and e.get("reason") == "SILENT_ROUND1"]
        self.assertTrue(named)
        # The silent member comes back and learns the key it holds no share of.
        fed.net.unsilence(silent.key)
        silent.restart()
        fed.settle(lambda: silent.service.last_result is not None)
        late = silent.service.last_result
        self.assertTrue(late.ok)
        self.assertFalse(late.member)
        self.assertEqual(late.certificate, r.certificate)
        self.assertEqual(silent.storage.last_epoch(), 1)

    def test_result_names_exclusions_while_the_run_is_still_being_closed(self) -> None:
        """
        The result is published as soon as the certificate is stored, while
        the run's state is still being dropped (a second write): it must
        already name whom the run excluded.
        """
        fed = MemoryFederation(self, 4, seed=2, storage=lambda fed: SlowDiskStorage(fed.clock))
        silent = fed.nodes[1]
        fed.net.silence(silent.key)
        others = [nd for nd in fed.nodes if nd is not silent]
        fed.request(others[0])
        fed.settle(lambda: any(nd.service.last_result is not None for nd in others))
        first = next(nd for nd in others if nd.service.last_result is not None)
        self.assertIsNotNone(first.storage.run, "the run state is already gone: nothing in flight")
        self.assertEqual(first.service.last_result.excluded, {silent.key: Reason.SILENT_ROUND1})
        fed.settle(lambda: fed.all_done(others))
        for nd in others:
            self.assertEqual(nd.service.last_result.excluded, {silent.key: Reason.SILENT_ROUND1})

    def test_equivocating_round1_broadcast(self) -> None:
        """
        A member sends one valid round-1 package to half its peers and another
        valid one to the rest.  Bracha delivers neither, so every honest member
        sees it as silent in round 1: named, excluded, and the restart finishes.
        """
        fed = MemoryFederation(self, 7, seed=5)
        culprit = fed.nodes[6]
        params = SessionParams(1, 0, 5, fed.members)
        _, other = keygen_round1(params.identifier(culprit.key), 5, 7, params.session_id)
        second_half = set(fed.members[3:])

        def equivocate(peer, channel, payload):
            if channel != CHANNEL_BROADCAST or peer not in second_half:
                return [(peer, channel, payload)]
            records = []
            for kind, tag, body in bracha.decode_batch(payload, 255, 1 << 20):
                if kind == bracha.SEND and tag == m.tag(params.session_id, Kind.ROUND1):
                    records.append(bracha.encode_send(tag, m.encode_round1(other.encode())))
                elif kind == bracha.SEND:
                    records.append(bracha.encode_send(tag, body))
                elif kind == bracha.RESPONSE:
                    records.append(bracha.encode_response(tag, body))
                else:
                    records.append(bytes((kind,)) + tag + body)
            return [(peer, channel, bracha.encode_batch(records))]
        fed.net.set_byzantine(culprit.key, equivocate)
        honest = fed.nodes[:6]
        for nd in honest:
            fed.request(nd)
        fed.settle(lambda: fed.all_done(honest))
        r = self.check_agree(fed, honest)
        self.assertEqual(r.excluded, {culprit.key: Reason.SILENT_ROUND1})
        self.assertEqual(r.attempt, 1)

    def test_failed_run_then_retry_on_a_fresh_epoch(self) -> None:
        fed = MemoryFederation(self, 4, seed=6, keystore=True)
        down = fed.nodes[:2]
        for nd in down:
            fed.net.silence(nd.key)
        up = fed.nodes[2:]
        for nd in up:
            fed.request(nd)
        fed.settle(lambda: fed.all_done(up))
        for nd in up:
            r = nd.service.last_result
            self.assertFalse(r.ok)
            self.assertEqual(r.epoch, 1)
            # With half the members down, reliable broadcast delivers nothing
            # at all: each survivor sees everyone else silent (never itself).
            self.assertEqual(set(r.excluded), set(fed.members) - {nd.key})
            self.assertEqual(set(r.excluded.values()), {Reason.SILENT_ROUND1})
            self.assertIn("fewer than t", r.reason)
            self.assertIsNone(nd.storage.keys.newest_usable())
        for nd in down:
            fed.net.unsilence(nd.key)
        # A failed run does not count for the spacing, and its epoch number is
        # not reused: the retry is epoch 2 (one of the members restarts first).
        up[0].restart()
        d = fed.request(up[0])
        fed.settle(lambda: all(n.service.last_result is not None and n.service.last_result.ok for n in fed.nodes))
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.epoch, 2)
        self.assertEqual(self.successResultOf(d).epoch, 2)

    def test_minimum_spacing_across_restarts(self) -> None:
        fed = MemoryFederation(self, 4, keystore=True)
        fed.request(fed.nodes[0])
        fed.settle(fed.all_done)
        done_at = fed.clock.seconds()
        node = fed.nodes[2]
        for _ in range(2):
            f = self.failureResultOf(node.service.request_dkg(), DkgTooSoon)
            self.assertEqual(f.value.earliest, done_at + 14 * DAY)
            self.assertIn("14 days", str(f.value))
            node.restart()  # reopens the LMDB store
        fed.clock.advance(14 * DAY - 1)
        self.failureResultOf(node.service.request_dkg(), DkgTooSoon)
        fed.clock.advance(1)
        d = node.service.request_dkg()
        fed.settle(lambda: all(n.service.last_result.epoch == 2 for n in fed.nodes))
        self.assertEqual(self.successResultOf(d).epoch, 2)
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.epoch, 2)
        for nd in fed.nodes:
            keys = nd.storage.keys
            self.assertEqual([e.epoch for e in keys.usable()], [1, 2])  # old key stays usable
            self.assertEqual(keys.get(2).status, EpochStatus.CERTIFIED)

    def test_scheduled_runs(self) -> None:
        fed = MemoryFederation(self, 4, schedule=True, policy=SchedulePolicy(interval=20 * DAY))
        fed.settle(fed.all_done)   # no key yet: due at once
        self.assertEqual({n.service.last_result.epoch for n in fed.nodes}, {1})
        first = fed.clock.seconds()
        fed.settle(lambda: all(n.service.last_result.epoch == 2 for n in fed.nodes), limit=30 * DAY)
        self.assertEqual({n.service.last_result.epoch for n in fed.nodes}, {2})
        self.assertGreaterEqual(fed.clock.seconds(), first + 20 * DAY)
        self.assertLess(fed.clock.seconds(), first + 20 * DAY + 60)


class Issue577OverLinksTests(DriverChecks, SynchronousTestCase):
    """
    ZF frost #577 over memory links and the real reliable broadcast: a
    member sends one honest member a wrong share, then reveals nothing, a
    wrong share or the right one when accused.  The honest members end with
    one key among them: without the culprit, named in every result and log,
    or, when the reveal clears it, with everyone on the first attempt.
    """

    def attack(self, reveal: Callable[[bytes], Optional[bytes]]):
        """Run the attack with the culprit's reveal payloads passed through C{reveal}."""
        fed = MemoryFederation(self, 7, seed=3)
        culprit, victim = fed.nodes[1], fed.nodes[4]
        honest = [nd for nd in fed.nodes if nd is not culprit]
        reveals: list[bytes] = []

        def change(tag: bytes, payload: bytes) -> Optional[bytes]:
            if kind_of(tag) is not Kind.REVEAL:
                return payload
            reveals.append(payload)
            return reveal(payload)
        fed.net.set_byzantine(culprit.key, bad_share_to(victim.key, rewrite_own_broadcasts(change)))
        with capturedLogs() as events:
            fed.request(fed.nodes[0])
            fed.settle(lambda: fed.all_done(honest))
        self.assertTrue(reveals, "the culprit was never asked to reveal")
        # The victim caught the bad share and said who sent it.
        self.assertTrue([e for e in events if e.get("log_source") is victim.service
                         and e.get("culprit") == culprit.key.hex()[:16] and "does not match" in e.get("what", "")])
        return fed, culprit, honest, events

    def check_culprit_excluded(self, reason: Reason, reveal: Callable[[bytes], Optional[bytes]]) -> list:
        fed, culprit, honest, events = self.attack(reveal)
        r = self.check_agree(fed, honest)
        self.assertEqual(r.attempt, 1)
        self.assertNotIn(culprit.key, r.certificate.params.members)
        self.assertEqual(sorted(r.certificate.params.members), sorted(nd.key for nd in honest))
        for nd in honest:
            self.assertEqual(nd.service.last_result.excluded, {culprit.key: reason}, nd.key.hex()[:8])
            named = [e for e in events if e.get("log_source") is nd.service and e.get("culprit") == culprit.key.hex()
                     and e.get("reason") == reason.name]
            self.assertTrue(named, f"{nd.key.hex()[:8]} did not log the exclusion")
        # Nobody was excluded but the culprit.
        excluded = {e["culprit"] for e in events if "reason" in e and "culprit" in e}
        self.assertEqual(excluded, {culprit.key.hex()})
        return honest, [e for e in events if e.get("culprit") == culprit.key.hex()[:16]]

    def test_no_reveal(self) -> None:
        self.check_culprit_excluded(Reason.NO_REVEAL, lambda payload: None)

    def test_invalid_reveal(self) -> None:
        honest, blamed = self.check_culprit_excluded(
            Reason.INVALID_REVEAL, lambda payload: m.encode_reveal((m.decode_reveal(payload) + 1) % N))
        # Every honest member checked the revealed share itself and says why.
        judges = {e["log_source"] for e in blamed if "does not match its commitments" in e.get("what", "")}
        self.assertLessEqual({nd.service for nd in honest}, judges)

    def test_valid_reveal_keeps_one_key(self) -> None:
        fed, culprit, honest, events = self.attack(lambda payload: payload)
        # The reveal clears the complaint: everyone, the culprit too, on the first attempt.
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.attempt, 0)
        self.assertEqual(len(r.certificate.params.members), 7)
        for nd in fed.nodes:
            self.assertEqual(nd.service.last_result.excluded, {})
            self.assertEqual(nd.storage.certificates(1), [r.certificate], nd.key.hex()[:8])
            self.assertEqual(nd.storage.signed, {})
        self.assertEqual([e for e in events if "reason" in e and "culprit" in e], [])


class AbortDurabilityTests(DriverChecks, SynchronousTestCase):
    """
    A session fails before we signed it and we crash just after our abort of
    it has left.  After the restart we must neither abort that session again
    (a second payload under one broadcast tag: equivocation) nor forget the
    exclusions the failure drew (our next session would not be our peers').
    """

    def test_crash_right_after_our_abort(self) -> None:
        fed = MemoryFederation(self, 7, seed=41, storage=lambda fed: SlowDiskStorage(fed.clock))
        silent, victim = fed.nodes[5], fed.nodes[2]
        honest = [nd for nd in fed.nodes if nd is not silent]
        fed.net.silence(silent.key)
        abort0 = m.tag(SessionParams(1, 0, 5, fed.members).session_id, Kind.ABORT)
        aborts: list[bytes] = []

        def watch(tag: bytes, payload: bytes) -> bytes:
            if tag == abort0:
                aborts.append(payload)
            return payload
        fed.net.set_byzantine(victim.key, rewrite_own_broadcasts(watch))
        fed.request(fed.nodes[0])
        fed.settle(lambda: bool(aborts))
        self.assertTrue(aborts, "attempt 0 never failed")
        victim.storage.lose_unflushed()
        victim.restart()
        fed.settle(lambda: fed.all_done(honest))
        self.assertEqual(len(set(aborts)), 1, "two different aborts of one session")
        self.assertEqual(m.decode_abort(aborts[0]), (False, {6: Reason.SILENT_ROUND1}))
        r = self.check_agree(fed, honest)
        self.assertEqual(r.excluded, {silent.key: Reason.SILENT_ROUND1})
        self.assertIn(victim.key, r.certificate.params.members)
        # Attempt 1 (without the silent member) was lost with the victim's
        # polynomial; everyone restarted it once with the same members.
        self.assertEqual(r.attempt, 2)
        for nd in honest:
            self.assertEqual(nd.service.run.restarts, {victim.key: 1}, nd.key.hex()[:8])


class LinkUpTests(DriverChecks, SynchronousTestCase):
    def test_link_up_brings_the_current_key_to_a_member_that_missed_it(self) -> None:
        fed = MemoryFederation(self, 4, seed=4, observable=True)
        away = fed.nodes[3]
        others = fed.nodes[:3]
        fed.net.silence(away.key)
        for nd in others:
            fed.request(nd)
        fed.settle(lambda: fed.all_done(others))
        r = self.check_agree(fed, others)
        self.assertEqual(r.excluded, {away.key: Reason.SILENT_ROUND1})
        fed.net.unsilence(away.key)
        fed.settle()
        self.assertIsNone(away.service.last_result)   # nobody told it anything
        offers: list[bytes] = []

        def count(peer, channel, payload):
            if channel == CHANNEL_DKG and isinstance(m.decode_direct(payload), m.CertificateMessage):
                offers.append(peer)
            return [(peer, channel, payload)]
        fed.net.set_byzantine(others[0].key, count)
        # A flapping link: one offer per offer_spacing.
        others[0].links.link_up(away.key)
        others[0].links.link_up(away.key)
        fed.settle()
        late = away.service.last_result
        self.assertEqual(late.certificate, r.certificate)
        self.assertFalse(late.member)
        self.assertEqual(away.storage.current(1), r.certificate)
        self.assertEqual(offers, [away.key])
        fed.clock.advance(others[0].service.offer_spacing)
        others[0].links.link_up(away.key)
        fed.settle()
        self.assertEqual(offers, [away.key, away.key])
        self.assertEqual(away.storage.certificates(1), [r.certificate])   # the repeat changed nothing


class KeyStoreRestartTests(DriverChecks, SynchronousTestCase):
    """
    A member's process "dies" (all its objects dropped) and restarts from its
    LMDB store at each phase; nobody ends with a key the others lack, and its
    stored state matches theirs.
    """

    def crash_at(self, phase: Callable[[Node], bool], seed: int) -> tuple[MemoryFederation, Node]:
        fed = MemoryFederation(self, 4, seed=seed, keystore=True, delay=0.01)
        victim = fed.nodes[2]
        fed.request(fed.nodes[0])
        fed.settle(lambda: phase(victim))
        self.assertTrue(phase(victim), "phase never reached")
        victim.restart()
        fed.settle(fed.all_done)
        return fed, victim

    def check_stores_match(self, fed: MemoryFederation) -> None:
        recs = [nd.storage.keys.get(1) for nd in fed.nodes]
        for rec in recs:
            self.assertIsNotNone(rec)
            self.assertEqual(rec.status, EpochStatus.CERTIFIED)
        self.assertEqual(len({(r.session_id, r.internal_key, r.output_key, r.certificate) for r in recs}), 1)
        for nd in fed.nodes:
            self.assertIsNone(nd.storage.load_run())
            # Keys of other attempts it signed are kept until the next epoch,
            # in case one is certified late; the certified one is a record now.
            self.assertNotIn(recs[0].session_id, nd.storage.load_signed())

    def test_restart_before_round1(self) -> None:
        # Crashed right after writing the run state, before anything else.
        fed, victim = self.crash_at(lambda v: v.storage.load_run() is not None, seed=21)
        self.check_agree(fed, fed.nodes)
        self.check_stores_match(fed)

    def test_restart_in_round2(self) -> None:
        def in_round2(v: Node) -> bool:
            run = v.service.run
            return run is not None and run.current is not None and run.current.phase.value == "round2"
        fed, victim = self.crash_at(in_round2, seed=22)
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.attempt, 1)   # restarted with the same members
        self.assertEqual(r.excluded, {})
        self.check_stores_match(fed)

    def test_restart_after_signing(self) -> None:
        fed, victim = self.crash_at(lambda v: v.storage.load_signed() != {}, seed=23)
        r = self.check_agree(fed, fed.nodes)
        self.assertEqual(r.attempt, 0)
        self.check_stores_match(fed)

    def test_restart_after_certificate(self) -> None:
        fed, victim = self.crash_at(lambda v: v.service.last_result is not None, seed=24)
        self.check_agree(fed, fed.nodes[:2] + fed.nodes[3:])
        self.check_stores_match(fed)
        # After the restart the victim's store still has the key.
        rec = victim.storage.keys.get(1)
        self.assertEqual(Certificate.decode(rec.certificate), fed.nodes[0].service.last_result.certificate)


    def test_killed_between_certificate_and_dropping_the_run(self) -> None:
        """
        The certificate and the end of the run are two writes; a member killed
        between them restarts with its run state still on disk.  It must drop
        it (its store then matches the others') and not resume the run.
        """
        fed = MemoryFederation(self, 4, seed=25, keystore=True, delay=0.01)
        victim = fed.nodes[2]
        fed.request(fed.nodes[0])
        fed.settle(lambda: victim.storage.load_run() is not None)
        state, closed = victim.storage.load_run()
        fed.settle(fed.all_done)
        victim.storage.save_run(state, closed)  # as if the drop never reached the disk
        with capturedLogs() as events:
            victim.restart()
            fed.settle(lambda: victim.storage.load_run() is None, limit=60)
        self.assertIsNone(victim.storage.load_run())
        self.assertTrue(any("dropping the state of a run already certified" in formatEvent(e) for e in events))
        self.assertFalse(any("resuming after a restart" in formatEvent(e) for e in events))
        self.check_stores_match(fed)


class StorageTests(SynchronousTestCase):
    """What both storages keep of an epoch with two certified sessions, whatever the order they come in."""

    def two_certificates(self):
        """A run whose attempt 0 is certified late: (attempt 1's outcome, attempt 0's), as one honest member saw them."""
        from frostnode.dkg.run import AlsoCertified, RunCompleted
        from tests.test_dkg_session import late_agreement_signature
        fed, culprit, held = late_agreement_signature()
        fed.rewrite.pop(culprit)
        fed.apply(culprit, held)
        fed.settle()
        h = fed.members[0]
        first = next(o for o in fed.outcomes[h] if isinstance(o, RunCompleted))
        also = next(o for o in fed.outcomes[h] if isinstance(o, AlsoCertified))
        self.assertEqual((first.certificate.params.attempt, also.certificate.params.attempt), (1, 0))
        return first, also

    def keystore(self, path: Optional[str] = None) -> KeyStoreDkgStorage:
        db = Database.open(path or self.mktemp())
        self.addCleanup(lambda: None if db._closed else db.close_sync())
        return KeyStoreDkgStorage(KeyStore(db), sync=True)

    def check_both_kept(self, st, first, also) -> None:
        a1, a0 = first.certificate, also.certificate
        self.assertEqual(st.current(1), a1)
        self.assertEqual(st.certificates(1), [a0, a1])
        self.assertEqual(st.last_epoch(), 1)
        self.assertEqual(st.load_signed(), {})
        for outcome in (first, also):
            self.assertEqual(st.signed_key(outcome.certificate.params).key_package, outcome.pending.key_package)

    def test_keystore_keeps_both_and_picks_the_higher_attempt_in_either_order(self) -> None:
        first, also = self.two_certificates()
        path = self.mktemp()
        stores = []
        for order, where in (((first, also), path), ((also, first), None)):
            st = self.keystore(where)
            stores.append(st)
            for o in order:
                self.successResultOf(st.save_signed(o.pending, START))
            self.assertEqual(set(st.load_signed(1)), {o.certificate.params.session_id for o in order})
            for i, o in enumerate(order):
                self.successResultOf(st.certify(o.pending, o.certificate, START + i))
            self.successResultOf(st.certify(order[0].pending, order[0].certificate, START + 9))   # again: no-op
            self.check_both_kept(st, first, also)
            self.assertEqual(st.last_dkg(), START)
            rec = st.keys.current(1)
            self.assertEqual((rec.session_id, rec.attempt), (first.certificate.params.session_id, 1))
            self.assertEqual(st.keys.newest_usable(), rec)
        # And after a restart.
        stores[0].keys._db.close_sync()
        self.check_both_kept(self.keystore(path), first, also)

    def test_memory_storage_agrees(self) -> None:
        first, also = self.two_certificates()
        for order in ((first, also), (also, first)):
            st = MemoryDkgStorage()
            for o in order:
                st.save_signed(o.pending, START)
            for i, o in enumerate(order):
                st.certify(o.pending, o.certificate, START + i)
            self.check_both_kept(st, first, also)
            self.assertEqual(st.last_dkg(), START)

    def test_record_round_trip(self) -> None:
        """A signed session's key comes back from its key-store record byte for byte (signature included)."""
        first, _ = self.two_certificates()
        back = pending_from_record(epoch_record(first.pending, START))
        self.assertEqual(back.encode(), first.pending.encode())
        rec = foreign_record(first.certificate, START)
        self.assertFalse(rec.member)
        self.assertEqual(rec.output_key, taproot_output_key(first.certificate.group_key.xbytes())[0])
        self.assertRaises(ValueError, pending_from_record, rec)

    def test_previous_layout_is_moved_into_records(self) -> None:
        """Signed keys, late second certificates and foreign certificates the session table held before."""
        first, also = self.two_certificates()
        path = self.mktemp()
        db = Database.open(path)
        keys = KeyStore(db)
        # The old layout: the epoch's record was the first certified session
        # (read back as attempt 0), the other in the session table.
        keys.put_pending_sync(replace(epoch_record(first.pending, START), attempt=0, agreement_signature=b""))
        keys.certify_sync(1, first.certificate.encode(), START)
        sid = also.certificate.params.session_id
        keys.save_session_sync(b"dkg/signed/" + sid, also.pending.encode())
        keys.save_session_sync(b"dkg/also/" + sid, also.certificate.encode())
        foreign = self.two_certificates_of_epoch2()
        keys.save_session_sync(b"dkg/foreign/" + (2).to_bytes(8, "big"),
                               b"\x01" + round((START + 7) * 1e6).to_bytes(8, "big") + foreign.encode())
        db.close_sync()
        st = self.keystore(path)
        self.assertEqual(st.keys.sessions(), {})
        self.assertEqual(set(st.certificates(1)), {first.certificate, also.certificate})
        self.assertEqual(st.signed_key(also.certificate.params).encode(), also.pending.encode())
        self.assertEqual(st.current(2), foreign)
        self.assertEqual(st.last_epoch(), 2)
        self.assertEqual(st.last_dkg(), START + 7)

    def two_certificates_of_epoch2(self) -> Certificate:
        from tests.test_dkg_session import Federation
        fed = Federation(4, seed=9, epoch=2)
        fed.start()
        fed.settle()
        return fed.completed(fed.members[0]).certificate


class DoubleCertificationTests(DriverChecks, SynchronousTestCase):
    """
    A member judged silent in attempt 0's agreement round sends its signature
    after attempt 1 (without it) was certified: both attempts are certified.
    Every member, including the late one restarted from its store, ends with
    attempt 1 as the epoch's key.
    """

    def hold_agreement(self, fed: MemoryFederation, slow: Node, sid: bytes) -> list:
        """Hold back C{slow}'s broadcast of its agreement signature of session C{sid}; return the held payloads."""
        agree = m.tag(sid, Kind.AGREE)
        key = bracha.instance_key(slow.key, agree)
        held: list = []

        def rewrite(peer, channel, payload):
            if channel != CHANNEL_BROADCAST:
                return [(peer, channel, payload)]
            keep = []
            for kind, tag, body in bracha.decode_batch(payload, 255, 1 << 20):
                if kind == bracha.SEND and tag == agree:
                    held.append((peer, bracha.encode_batch([bracha.encode_send(tag, body)])))
                elif kind == bracha.SEND:
                    keep.append(bracha.encode_send(tag, body))
                elif kind == bracha.RESPONSE:
                    if tag != key:
                        keep.append(bracha.encode_response(tag, body))
                else:
                    keep.append(bytes((kind,)) + tag + body)
            return [(peer, channel, bracha.encode_batch(keep))] if keep else []
        fed.net.set_byzantine(slow.key, rewrite)
        return held

    def run_scenario(self, keystore: bool) -> None:
        fed = MemoryFederation(self, 4, seed=31, keystore=keystore, delay=0.01)
        slow = fed.nodes[3]
        others = fed.nodes[:3]
        sid0 = SessionParams(1, 0, 3, fed.members).session_id
        held = self.hold_agreement(fed, slow, sid0)
        fed.request(fed.nodes[0])
        # The slow member holds every signature of attempt 0 (its own is local): it certifies it.
        fed.settle(lambda: slow.storage.last_epoch() == 1)
        self.assertEqual(slow.service.last_result.attempt, 0)
        self.assertTrue(held, "the agreement signature was never sent")
        # Then its process dies; the others time it out and certify attempt 1 without it.
        fed.net.silence(slow.key)
        fed.settle(lambda: fed.all_done(others))
        a1 = self.check_agree(fed, others)
        self.assertEqual(a1.attempt, 1)
        self.assertEqual(a1.excluded, {slow.key: Reason.SILENT_AGREEMENT})
        fed.settle(limit=60.0)   # what the others send it meanwhile is lost
        self.assertEqual(slow.storage.certificates(1), [slow.service.last_result.certificate])
        # It restarts from its store, and its signature of attempt 0 finally goes out.
        fed.net.unsilence(slow.key)
        slow.restart()
        fed.net.set_byzantine(slow.key, None)
        for peer, payload in held:
            slow.links.send(peer, CHANNEL_BROADCAST, payload)
        fed.settle(lambda: all(len(nd.storage.certificates(1)) == 2 for nd in fed.nodes))
        fed.settle(limit=600.0)
        for nd in fed.nodes:
            certs = nd.storage.certificates(1)
            self.assertEqual([c.params.attempt for c in certs], [0, 1], nd.key.hex()[:8])
            self.assertEqual(nd.storage.current(1), a1.certificate, nd.key.hex()[:8])
            self.assertEqual(nd.service.last_result.certificate, a1.certificate, nd.key.hex()[:8])
        self.assertFalse(slow.service.last_result.member)    # excluded from attempt 1: no share of it
        if keystore:
            for nd in fed.nodes:
                nd.restart()   # everyone's stores agree after a restart too
            for nd in fed.nodes:
                keys = nd.storage.keys
                cur = keys.current(1)
                self.assertEqual((cur.session_id, cur.certificate), (a1.session_id, a1.certificate.encode()))
                # Both attempts' shares are kept: funds sent to either key are safe.
                self.assertEqual(keys.record(1, sid0).status, EpochStatus.CERTIFIED)
                self.assertTrue(keys.record(1, sid0).member)
            for nd in others:
                self.assertEqual(nd.storage.keys.newest_usable().session_id, a1.session_id)
            self.assertIsNone(slow.storage.keys.newest_usable())
            self.assertEqual(len({nd.storage.keys.get(1).output_key for nd in fed.nodes}), 1)

    def test_late_signature_keystore(self) -> None:
        self.run_scenario(keystore=True)

    def test_late_signature_memory(self) -> None:
        self.run_scenario(keystore=False)
