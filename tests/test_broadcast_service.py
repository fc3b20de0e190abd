"""
Tests for L{frostnode.broadcast.service}: the Twisted driver over in-memory
links, with C{task.Clock} driving every turn.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from frostnode.broadcast.bracha import SEND, BrachaConfig, decode_batch, encode_batch, encode_send
from frostnode.broadcast.service import ReliableBroadcast
from frostnode.net.interfaces import CHANNEL_BROADCAST, IBroadcast
from frostnode.net.memory import MemoryNetwork
from tests.test_broadcast_bracha import member_keys


class Federation:
    """n members, each a ReliableBroadcast over one shuffled MemoryNetwork."""

    def __init__(self, n: int, seed: Optional[int] = 0, start: bool = True, **kw) -> None:
        self.clock = Clock()
        self.members = member_keys(n)
        self.net = MemoryNetwork(self.clock, self.members, rng=None if seed is None else random.Random(seed))
        self.nodes = [ReliableBroadcast(self.net.links(m), self.members, self.clock, **kw) for m in self.members]
        self.seen: dict[bytes, list[tuple[bytes, bytes, bytes]]] = {m: [] for m in self.members}
        for node in self.nodes:
            node.subscribe(b"", lambda s, t, p, me=node.links.local: self.seen[me].append((s, t, p)))
            if start:
                node.startService()

    def pump(self) -> None:
        """Run every turn that is due now (sends, flushes, deliveries)."""
        while any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
            self.clock.advance(0)

    def open_instances(self) -> int:
        return sum(node.core.open_instances for node in self.nodes)


class ReliableBroadcastTests(SynchronousTestCase):
    def test_provides_ibroadcast(self) -> None:
        self.assertTrue(verifyObject(IBroadcast, Federation(4).nodes[0]))

    def test_everyone_delivers_identically(self) -> None:
        """n = 4, 7, 10, all broadcasting at once over shuffled links: identical deliveries, state collected."""
        for n in (4, 7, 10):
            fed = Federation(n, seed=n)
            waits = [fed.nodes[-1].delivered(m, b"dkg/1") for m in fed.members]
            for i, node in enumerate(fed.nodes):
                node.broadcast(b"dkg/1", b"package %d" % i)
            for d in waits:
                self.assertNoResult(d)
            fed.pump()
            expected = sorted((m, b"dkg/1", b"package %d" % i) for i, m in enumerate(fed.members))
            for m in fed.members:
                self.assertEqual(sorted(fed.seen[m]), expected)
            self.assertEqual([self.successResultOf(d) for d in waits], [b"package %d" % i for i in range(n)])
            self.assertEqual(fed.open_instances(), 0)

    def test_f_silent_members(self) -> None:
        """f crashed members: the others deliver; lingering state is swept on the clock."""
        fed = Federation(7, sweep_interval=10.0)
        fed.net.silence(fed.members[2])
        fed.net.silence(fed.members[5])
        honest = [i for i in range(7) if i not in (2, 5)]
        for i in honest:
            fed.nodes[i].broadcast(b"t", b"p%d" % i)
        fed.pump()
        for i in honest:
            self.assertEqual(len(fed.seen[fed.members[i]]), 5)
        self.assertGreater(fed.open_instances(), 0)
        fed.clock.advance(10.0)
        fed.clock.advance(10.0)
        self.assertEqual(sum(fed.nodes[i].core.open_instances for i in honest), 0)

    def test_records_are_batched(self) -> None:
        """
        Ten members broadcasting at once: each protocol step (SEND, ECHO,
        READY) costs one links payload per peer, not one per record.
        """
        n = 10
        fed = Federation(n)
        for i, node in enumerate(fed.nodes):
            node.broadcast(b"t", b"x" * 1024)
        fed.pump()
        records = sum(node.records_sent for node in fed.nodes)
        payloads = fed.net.payloads_sent[CHANNEL_BROADCAST]
        # Per broadcast: n-1 SENDs, (n-1)^2 ECHOs (the SEND is the originator's), n(n-1) READYs.
        self.assertEqual(records, n * (n - 1) * 2 * n)
        self.assertEqual(payloads, sum(node.batches_sent for node in fed.nodes))
        self.assertEqual(payloads, 3 * n * (n - 1))

    def test_delivered_deferred(self) -> None:
        """delivered() fires on delivery, fires at once afterwards, and can be cancelled."""
        fed = Federation(4)
        origin = fed.members[1]
        d = fed.nodes[0].delivered(origin, b"t")
        cancelled = fed.nodes[0].delivered(origin, b"t")
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        fed.nodes[1].broadcast(b"t", b"payload")
        self.assertNoResult(d)
        fed.pump()
        self.assertEqual(self.successResultOf(d), b"payload")
        self.assertEqual(self.successResultOf(fed.nodes[0].delivered(origin, b"t")), b"payload")
        self.assertEqual(fed.nodes[0]._waiting, {})

    def test_handled_deferred(self) -> None:
        """
        handled(count) fires once the core has handled that many records from
        peers (the way to wait for quiescence when nothing is delivered), at
        once if it already has; cancelling it forgets the wait.
        """
        fed = Federation(4)
        node = fed.nodes[0]
        # Another member's broadcast reaches us as its SEND, two ECHOs and three READYs.
        six = node.handled(6)
        seven = node.handled(7)
        cancelled = node.handled(7)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        fed.nodes[1].broadcast(b"t", b"payload")
        self.assertNoResult(six)
        fed.pump()
        self.assertEqual(self.successResultOf(six), 6)
        self.assertNoResult(seven)
        self.assertEqual(self.successResultOf(node.handled(1)), 6)

    def test_sweep_actions_are_sent(self) -> None:
        """
        A SEND that waited for room in its originator's quota is ECHOed when
        a sweep makes room: what the core decides at sweep time reaches the
        links.
        """
        fed = Federation(4, config=BrachaConfig(max_open_per_origin=1, abandon_sweeps=2), sweep_interval=10.0)
        node, bad = fed.nodes[0], fed.nodes[3].links
        # A SEND only we get fills the originator's quota at us; it never delivers.
        bad.send(node.links.local, CHANNEL_BROADCAST, encode_batch([encode_send(b"junk", b"j")]))
        fed.pump()
        self.assertEqual(node.records_sent, 3)
        fed.clock.advance(10.0)
        bad.send(node.links.local, CHANNEL_BROADCAST, encode_batch([encode_send(b"x", b"x")]))
        fed.pump()
        self.assertEqual(node.records_sent, 3)
        fed.clock.advance(10.0)
        fed.pump()
        self.assertEqual(node.records_sent, 6)

    def test_subscribe_by_prefix(self) -> None:
        fed = Federation(4)
        dkg: list[bytes] = []
        fed.nodes[2].subscribe(b"dkg/", lambda s, t, p: dkg.append(t))
        fed.nodes[0].broadcast(b"dkg/round1", b"a")
        fed.nodes[0].broadcast(b"sign/x", b"b")
        fed.pump()
        self.assertEqual(dkg, [b"dkg/round1"])

    def test_failing_subscriber_logged(self) -> None:
        """A subscriber that raises is logged; other subscribers, Deferreds and the protocol carry on."""
        fed = Federation(4)
        fed.nodes[3].subscribe(b"", lambda s, t, p: 1 / 0)
        after: list[bytes] = []
        fed.nodes[3].subscribe(b"", lambda s, t, p: after.append(p))
        d = fed.nodes[3].delivered(fed.members[0], b"t")
        fed.nodes[0].broadcast(b"t", b"one")
        fed.nodes[0].broadcast(b"u", b"two")
        fed.pump()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual(sorted(after), [b"one", b"two"])
        self.assertEqual(self.successResultOf(d), b"one")
        for m in fed.members:
            self.assertEqual(len(fed.seen[m]), 2)

    def test_misbehaviour_logged_with_culprit(self) -> None:
        fed = Federation(4)
        bad = fed.members[3]
        with capturedLogs() as events:
            fed.net.links(bad).send(fed.members[0], CHANNEL_BROADCAST, b"\x01garbage")
            fed.pump()
        warnings = [e for e in events if "misbehaviour" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["culprit"], bad.hex()[:16])
        self.assertIn("malformed", warnings[0]["reason"])

    def test_cut_and_heal_in_flight(self) -> None:
        """Links cut while broadcasts are in flight, then healed: everything delivered exactly once."""
        fed = Federation(7, seed=11)
        fed.net.cut(fed.members[0], fed.members[1])
        fed.net.cut(fed.members[2], fed.members[6])
        for i, node in enumerate(fed.nodes):
            node.broadcast(b"a", b"A%d" % i)
        fed.clock.advance(0)
        fed.net.cut(fed.members[3], fed.members[4])
        fed.pump()
        for i, node in enumerate(fed.nodes):
            node.broadcast(b"b", b"B%d" % i)
        fed.pump()
        fed.net.heal(fed.members[0], fed.members[1])
        fed.net.heal(fed.members[2], fed.members[6])
        fed.net.heal(fed.members[3], fed.members[4])
        fed.pump()
        expected = sorted([(m, b"a", b"A%d" % i) for i, m in enumerate(fed.members)] +
                          [(m, b"b", b"B%d" % i) for i, m in enumerate(fed.members)])
        for m in fed.members:
            self.assertEqual(sorted(fed.seen[m]), expected)

    def test_equivocating_originator(self) -> None:
        """
        A byzantine originator whose links rewrite its SEND into a different
        payload for some peers: no two honest members deliver differently.
        Split 3/3 (n = 7) nobody reaches an ECHO quorum; with one victim,
        everyone delivers the majority payload, the victim by pulling it.
        """
        for victims, outcome in ((3, ()), (1, ((b"t", b"good twin"),))):
            for seed in range(3):
                fed = Federation(7, seed=seed)
                bad = fed.members[0]
                fooled = set(fed.members[1:1 + victims])

                def rewrite(peer: bytes, channel: int, payload: bytes):
                    if peer not in fooled:
                        return [(peer, channel, payload)]
                    records = [encode_send(k, b"evil twin")
                               for kind, k, x in decode_batch(payload, 255, 1 << 20) if kind == SEND]
                    return [(peer, channel, encode_batch(records))] if records else []

                fed.net.set_byzantine(bad, rewrite)
                fed.nodes[0].broadcast(b"t", b"good twin")
                fed.pump()
                for m in fed.members[1:]:
                    self.assertEqual(tuple((t, p) for s, t, p in fed.seen[m]), outcome, f"seed {seed}")

    def test_stop_flushes_and_stops_sweeping(self) -> None:
        fed = Federation(4)
        fed.nodes[0].broadcast(b"t", b"x")
        for node in fed.nodes:
            node.stopService()
        self.assertEqual(fed.net.payloads_sent[CHANNEL_BROADCAST], 3)
        fed.pump()
        self.assertEqual(fed.clock.getDelayedCalls(), [])

    def test_unsendable_batch_logged(self) -> None:
        """
        A batch the links refuse is logged; records batched apart from it
        (the batch cap is below the links' limit) still go, and the node
        carries on.
        """
        fed = Federation(4, config=BrachaConfig(max_payload=4096), start=False, max_batch_bytes=900)
        fed.net.max_payload = 1000
        with capturedLogs() as events:
            fed.nodes[0].broadcast(b"big", b"x" * 2000)
            fed.nodes[0].broadcast(b"small", b"x" * 10)
            fed.pump()
        errors = [e for e in events if "not queued" in e.get("log_format", "")]
        self.assertEqual(len(errors), 3)
        for m in fed.members:
            self.assertEqual(fed.seen[m], [(fed.members[0], b"small", b"x" * 10)])


class LatencyObserverTests(SynchronousTestCase):
    def test_own_broadcast_latency_is_the_protocol_round(self) -> None:
        """
        With 5 ms links, SEND, ECHO and READY take three link delays before
        2f+1 READYs deliver here: the observer sees 15 ms, once, and only for
        our own broadcasts.
        """
        clock = Clock()
        members = member_keys(4)
        net = MemoryNetwork(clock, members, delay=0.005)
        nodes = [ReliableBroadcast(net.links(m), members, clock) for m in members]
        seen: list[float] = []
        nodes[0].observe_latency(seen.append)
        for node in nodes:
            node.startService()
        nodes[0].broadcast(b"t/1", b"mine")
        nodes[1].broadcast(b"t/1", b"theirs")
        for _ in range(6):
            while any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
                clock.advance(0)  # this instant's turns (flushes) first
            clock.advance(0.005)
        self.assertEqual(len(seen), 1)
        self.assertAlmostEqual(seen[0], 0.015, places=6)
