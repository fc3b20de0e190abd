"""
Tests for L{frostnode.net.memory}: the in-memory links used by broadcast tests
and large-n benchmarks must keep the L{ILinks} promises (exactly once, on a
later turn, no order) and inject the faults they advertise.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from frostnode.net.interfaces import ILinks
from frostnode.net.memory import MemoryNetwork

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


class MemoryNetworkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.received: dict[bytes, list[tuple[bytes, bytes]]] = {A: [], B: [], C: []}

    def network(self, **kw) -> MemoryNetwork:
        net = MemoryNetwork(self.clock, [A, B, C], **kw)
        for m in (A, B, C):
            net.links(m).register(7, lambda sender, payload, m=m: self.received[m].append((sender, payload)))
        return net

    def test_provides_ilinks(self) -> None:
        net = self.network()
        self.assertTrue(verifyObject(ILinks, net.links(A)))
        self.assertEqual(net.links(A).local, A)
        self.assertEqual(net.links(A).peers(), [B, C])
        self.assertEqual(net.links(A).connected(), {B, C})

    def test_delivered_on_a_later_turn(self) -> None:
        """Nothing is delivered inside send(); the next turn delivers, with the sender's key."""
        net = self.network()
        net.links(A).send(B, 7, b"hello")
        self.assertEqual(self.received[B], [])
        self.clock.advance(0)
        self.assertEqual(self.received[B], [(A, b"hello")])
        self.assertEqual(net.payloads_sent[7], 1)
        self.assertEqual(net.bytes_sent[7], 5)

    def test_delay(self) -> None:
        net = self.network(delay=0.5)
        net.links(A).send(B, 7, b"x")
        self.clock.advance(0.4)
        self.assertEqual(self.received[B], [])
        self.clock.advance(0.1)
        self.assertEqual(self.received[B], [(A, b"x")])

    def test_shuffled_exactly_once(self) -> None:
        """With an rng, order is lost but every payload arrives once."""
        net = self.network(rng=random.Random(5))
        sent = [b"%d" % i for i in range(50)]
        for p in sent:
            net.links(A).send(C, 7, p)
        self.clock.advance(0)
        got = [p for _, p in self.received[C]]
        self.assertNotEqual(got, sent)
        self.assertEqual(sorted(got), sorted(sent))

    def test_cut_holds_heal_delivers_once(self) -> None:
        net = self.network()
        net.cut(A, B)
        self.assertEqual(net.links(A).connected(), {C})
        net.links(A).send(B, 7, b"1")
        net.links(B).send(A, 7, b"2")
        net.links(A).send(C, 7, b"3")
        self.clock.advance(0)
        self.assertEqual((self.received[A], self.received[B], self.received[C]), ([], [], [(A, b"3")]))
        net.heal(A, B)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual((self.received[A], self.received[B]), ([(B, b"2")], [(A, b"1")]))
        self.assertEqual(net.links(A).connected(), {B, C})

    def test_silence(self) -> None:
        """A silenced member neither sends nor receives."""
        net = self.network()
        net.silence(C)
        net.links(C).send(A, 7, b"from c")
        net.links(A).send(C, 7, b"to c")
        net.links(A).send(B, 7, b"to b")
        self.clock.advance(0)
        self.assertEqual(self.received, {A: [], B: [(A, b"to b")], C: []})
        self.assertEqual(net.links(C).connected(), set())
        self.assertEqual(net.links(A).connected(), {B})

    def test_byzantine_rewrite(self) -> None:
        """The rewrite hook can replace, multiply and drop a member's payloads."""
        net = self.network()
        net.set_byzantine(A, lambda peer, ch, p: [] if peer == C else [(peer, ch, b"forged"), (peer, ch, p)])
        net.links(A).send(B, 7, b"real")
        net.links(A).send(C, 7, b"real")
        self.clock.advance(0)
        self.assertEqual(self.received[B], [(A, b"forged"), (A, b"real")])
        self.assertEqual(self.received[C], [])
        net.set_byzantine(A, None)
        net.links(A).send(C, 7, b"honest")
        self.clock.advance(0)
        self.assertEqual(self.received[C], [(A, b"honest")])

    def test_refusals(self) -> None:
        net = self.network(max_payload=4)
        self.assertRaises(ValueError, net.links(A).send, b"z" * 32, 7, b"x")
        self.assertRaises(ValueError, net.links(A).send, A, 7, b"x")
        self.assertRaises(ValueError, net.links(A).send, B, 7, b"12345")
        self.assertRaises(ValueError, net.links(A).register, 7, lambda s, p: None)
        self.assertRaises(ValueError, MemoryNetwork, self.clock, [A, A])

    def test_failing_handler_logged(self) -> None:
        """A handler that raises is logged; later payloads are still delivered."""
        net = self.network()
        net.links(B).register(8, lambda s, p: 1 / 0)
        net.links(A).send(B, 8, b"boom")
        net.links(A).send(B, 7, b"fine")
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.received[B], [(A, b"fine")])
