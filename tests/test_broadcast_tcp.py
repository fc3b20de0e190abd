"""
Reliable broadcast end to end: L{ReliableBroadcast} over real
L{PeerNetwork}s on loopback TCP with Noise, all in this test's reactor.

The issue's "must show" for broadcast: 4, 7 and 10 nodes deliver every
broadcast identically, f silent members do not stop delivery, an
equivocating originator cannot make two honest members deliver differently,
and links cut while broadcasts are in flight lose and duplicate nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from frostnode.broadcast.bracha import encode_batch, encode_send
from frostnode.broadcast.service import ReliableBroadcast
from frostnode.identity import MemberDirectory
from frostnode.net.interfaces import CHANNEL_BROADCAST
from frostnode.net.peers import PeerNetwork
from tests.test_net_support import fast_config, listening_socket, make_member


class Federation:
    """
    C{n} members on loopback, each a PeerNetwork; C{silent} more are in the
    directory but never run (nothing listens where their cards point).
    Members in C{byzantine} run links but no broadcast layer: the test
    speaks for them, and what they receive is kept in C{to_byzantine}.
    """

    def __init__(self, test: TestCase, n: int, silent: int = 0, byzantine: tuple[int, ...] = ()) -> None:
        sockets = [listening_socket(reactor) for _ in range(n)]
        self.members = [make_member(f"tcp:127.0.0.1:{port}") for _, port in sockets]
        self.members += [make_member("tcp:127.0.0.1:1") for _ in range(silent)]
        directory = MemberDirectory(m.card for m in self.members)
        keys = directory.host_keys()
        self.nets: list[PeerNetwork] = []
        self.nodes: dict[int, ReliableBroadcast] = {}
        self.seen: dict[int, list[tuple[bytes, bytes, bytes]]] = {}
        self.to_byzantine: list[tuple[int, bytes, bytes]] = []
        for i, (endpoint, _) in enumerate(sockets):
            m = self.members[i]
            net = PeerNetwork(reactor, m.host, m.noise_private, directory, endpoint, fast_config())
            self.nets.append(net)
            if i not in byzantine:
                node = ReliableBroadcast(net, keys, reactor)
                self.nodes[i] = node
                self.seen[i] = []
                node.subscribe(b"", lambda s, t, p, i=i: self.seen[i].append((s, t, p)))
                node.startService()
            else:
                net.register(CHANNEL_BROADCAST, lambda s, p, i=i: self.to_byzantine.append((i, s, p)))
            net.startService()
        test.addCleanup(self.stop)

    def key(self, i: int) -> bytes:
        return self.members[i].key

    def up(self) -> Deferred:
        running = [n.local for n in self.nets]
        return gatherResults([n.when_connected(k) for n in self.nets for k in running if k != n.local])

    def delivered_everywhere(self, origins: list[int], tag: bytes) -> Deferred:
        return gatherResults([node.delivered(self.key(o), tag) for node in self.nodes.values() for o in origins])

    def stop(self) -> Deferred:
        for node in self.nodes.values():
            if node.running:
                node.stopService()
        return gatherResults([n.stopService() for n in self.nets if n.running])


class BroadcastOverNoiseTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_everyone_delivers_identically(self) -> None:
        """4, 7 and 10 nodes, all broadcasting at once: identical deliveries everywhere."""
        for n in (4, 7, 10):
            fed = Federation(self, n)
            yield fed.up()
            for i, node in fed.nodes.items():
                node.broadcast(b"dkg/round1", b"package from %d " % i * 30)
            yield fed.delivered_everywhere(list(range(n)), b"dkg/round1")
            expected = sorted((fed.key(i), b"dkg/round1", b"package from %d " % i * 30) for i in range(n))
            for i in range(n):
                self.assertEqual(sorted(fed.seen[i]), expected, f"n={n} node {i}")
            yield fed.stop()

    @inlineCallbacks
    def test_f_silent_members(self) -> None:
        """n = 7 with f = 2 members that never come up: the other five deliver."""
        fed = Federation(self, 5, silent=2)
        yield fed.up()
        for i, node in fed.nodes.items():
            node.broadcast(b"t", b"from %d" % i)
        yield fed.delivered_everywhere(list(range(5)), b"t")
        for i in range(5):
            self.assertEqual(len(fed.seen[i]), 5)

    @inlineCallbacks
    def test_equivocating_originator(self) -> None:
        """
        n = 7: a byzantine originator sends one payload to three honest
        members and another to the other three.  Nobody reaches an ECHO
        quorum, so nobody delivers; in particular no two deliver differently.
        """
        fed = Federation(self, 7, byzantine=(0,))
        yield fed.up()
        bad = fed.nets[0]
        for i in range(1, 7):
            bad.send(fed.key(i), CHANNEL_BROADCAST, encode_batch([encode_send(b"t", b"left" if i <= 3 else b"right")]))
        # Quiescence, without sleeping on a guess: each honest member handles
        # the SEND and the five other honest ECHOs, then everything is acked.
        yield gatherResults([node.handled(6) for node in fed.nodes.values()])
        yield gatherResults([n.when_acked(k) for n in fed.nets for k in n.peers()])
        for i, node in fed.nodes.items():
            self.assertEqual(fed.seen[i], [])
            self.assertEqual(node.records_sent, 6, "an ECHO to each peer and no READY")

    @inlineCallbacks
    def test_equivocation_against_a_minority(self) -> None:
        """
        n = 7: the byzantine originator fools one member only.  Everyone
        delivers the majority's payload, the fooled member too (it pulls it).
        """
        fed = Federation(self, 7, byzantine=(0,))
        yield fed.up()
        for i in range(1, 7):
            fed.nets[0].send(fed.key(i), CHANNEL_BROADCAST,
                             encode_batch([encode_send(b"t", b"evil" if i == 1 else b"good")]))
        payloads = yield fed.delivered_everywhere([0], b"t")
        self.assertEqual(set(payloads), {b"good"})

    @inlineCallbacks
    def test_links_cut_while_broadcasting(self) -> None:
        """
        Links are aborted on both sides while every member runs several
        broadcasts: every broadcast is delivered everywhere exactly once.
        """
        fed = Federation(self, 4)
        yield fed.up()
        cuts = []

        def cutter(i: int) -> Any:
            def on_delivery(sender: bytes, tag: bytes, payload: bytes) -> None:
                if len(fed.seen[i]) % 5 == 2:
                    for peer in fed.nets[i].peers():
                        link = fed.nets[i].current_link(peer)
                        if link is not None:
                            cuts.append(i)
                            link.transport.abortConnection()
            return on_delivery

        for i in (0, 2):
            fed.nodes[i].subscribe(b"", cutter(i))
        rounds = 12

        def burst(r: int) -> None:
            for i, node in fed.nodes.items():
                node.broadcast(b"r%d" % r, b"round %d from %d" % (r, i))
            if r + 1 < rounds:
                reactor.callLater(0.005, burst, r + 1)

        burst(0)
        yield gatherResults([fed.delivered_everywhere(list(range(4)), b"r%d" % r) for r in range(rounds)])
        self.assertTrue(cuts)
        expected = sorted((fed.key(i), b"r%d" % r, b"round %d from %d" % (r, i)) for r in range(rounds) for i in range(4))
        for i in range(4):
            self.assertEqual(sorted(fed.seen[i]), expected)
        self.assertGreater(sum(n.counters.retransmits for n in fed.nets), 0)
