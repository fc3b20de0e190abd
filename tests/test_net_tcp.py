"""
Several PeerNetworks in one reactor over real loopback TCP with Noise: the
mesh forms and carries messages on several channels; links cut while
messages are in flight lose and duplicate nothing; bad peers are refused
with a log line while the node keeps serving; simultaneous dials settle on
one link; a restarted member is a new session.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from frostnode.identity import MemberDirectory
from frostnode.net.framing import DATA
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from frostnode.net.peers import LinkConfig, PeerNetwork
from tests.test_net_support import LogCapture, Member, NoiseClient, RawClient, fast_config, listening_socket, make_member

CHANNELS = (2, 4)


class Federation:
    """
    C{n} running members on loopback, plus C{extra} members in the directory
    that no PeerNetwork plays (the tests drive them by hand).
    """

    def __init__(self, test: TestCase, n: int, extra: int = 0, config: Optional[LinkConfig] = None) -> None:
        self.config = config or fast_config()
        sockets = [listening_socket(reactor) for _ in range(n)]
        self.ports = [port for _, port in sockets]
        self.members = [make_member(f"tcp:127.0.0.1:{port}") for port in self.ports]
        # Unplayed members: nothing listens at port 1, dials to them are refused at once.
        self.extra = [make_member("tcp:127.0.0.1:1") for _ in range(extra)]
        self.directory = MemberDirectory(m.card for m in self.members + self.extra)
        self.received: list[list[tuple[bytes, int, bytes]]] = []
        self.nets: list[PeerNetwork] = []
        self.waiters: list[tuple[int, int, Deferred]] = []
        #: Called as C{on_receive(node, sender, channel, payload)} after each delivery.
        self.on_receive: Optional[Any] = None
        for i, (endpoint, _) in enumerate(sockets):
            self.start(i, endpoint)
        test.addCleanup(self.stop)

    def start(self, i: int, endpoint: Any) -> PeerNetwork:
        m = self.members[i]
        net = PeerNetwork(reactor, m.host, m.noise_private, self.directory, endpoint, self.config)
        if i < len(self.nets):
            self.nets[i] = net
        else:
            self.nets.append(net)
            self.received.append([])
        for channel in CHANNELS:
            net.register(channel, lambda s, p, i=i, c=channel: self._got(i, s, c, p))
        net.startService()
        return net

    def _got(self, i: int, sender: bytes, channel: int, payload: bytes) -> None:
        self.received[i].append((sender, channel, payload))
        if self.on_receive is not None:
            self.on_receive(i, sender, channel, payload)
        for waiter in list(self.waiters):
            node, count, d = waiter
            if node == i and len(self.received[i]) >= count:
                self.waiters.remove(waiter)
                d.callback(None)

    def when_received(self, i: int, count: int) -> Deferred:
        d: Deferred = Deferred()
        if len(self.received[i]) >= count:
            d.callback(None)
        else:
            self.waiters.append((i, count, d))
        return d

    def members_up(self, nets: Optional[list[PeerNetwork]] = None) -> Deferred:
        nets = nets or self.nets
        keys = {n.local for n in nets}
        return gatherResults([n.when_connected(k) for n in nets for k in keys if k != n.local])

    def all_acked(self) -> Deferred:
        return gatherResults([n.when_acked(k) for n in self.nets for k in n.peers()
                              if k in {m.local for m in self.nets}])

    def stop(self) -> Deferred:
        return gatherResults([n.stopService() for n in self.nets if n.running])


def connect_client(port: int, protocol: Any) -> Deferred:
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)


class MeshTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_full_mesh_exchanges_messages_on_several_channels(self) -> None:
        fed = Federation(self, 4)
        yield fed.members_up()
        for net in fed.nets:
            self.assertEqual(net.connected(), set(net.peers()))
        expected: list[list[tuple[bytes, int, bytes]]] = [[] for _ in fed.nets]
        for i, net in enumerate(fed.nets):
            for j, peer in enumerate(fed.nets):
                if i == j:
                    continue
                for k in range(25):
                    channel = CHANNELS[k % 2]
                    payload = b"%d->%d #%d " % (i, j, k) + b"." * (k * 37)
                    net.send(peer.local, channel, payload)
                    expected[j].append((net.local, channel, payload))
        yield gatherResults([fed.when_received(j, len(expected[j])) for j in range(4)])
        for j in range(4):
            self.assertEqual(sorted(fed.received[j]), sorted(expected[j]))
        # One link per pair: each node holds exactly one connection to each peer.
        for net in fed.nets:
            self.assertEqual(len([link for link in net.open_links() if link.established]), 3)

    @inlineCallbacks
    def test_links_cut_while_messages_are_in_flight(self) -> None:
        """
        Every node streams to every other while receivers abort links
        mid-stream and senders abort links with records still unflushed:
        everything arrives exactly once.
        """
        fed = Federation(self, 4)
        yield fed.members_up()
        per_pair, bursts = 240, 12
        cuts = Counter()

        from_sender = Counter()

        def cut_on_receive(i: int, sender: bytes, channel: int, payload: bytes) -> None:
            # Receiver side: abort mid-stream, with acks pending and more
            # records behind this one in the same frame.
            from_sender[i, sender] += 1
            if from_sender[i, sender] % 70 == 0:
                link = fed.nets[i].current_link(sender)
                if link is not None:
                    cuts["receiver"] += 1
                    link.transport.abortConnection()

        fed.on_receive = cut_on_receive

        expected: list[list[tuple[bytes, int, bytes]]] = [[] for _ in fed.nets]

        def burst(b: int) -> None:
            for i, net in enumerate(fed.nets):
                for j, peer in enumerate(fed.nets):
                    if i != j:
                        for k in range(per_pair // bursts):
                            payload = b"%d->%d b%d k%d" % (i, j, b, k)
                            channel = CHANNELS[(b + k) % 2]
                            net.send(peer.local, channel, payload)
                            expected[j].append((net.local, channel, payload))
            if b % 4 == 1:
                # Sender side: abort with this burst's records queued but not yet written.
                link = fed.nets[b % 4].current_link(fed.nets[(b + 1) % 4].local)
                if link is not None:
                    cuts["sender"] += 1
                    link.transport.abortConnection()
            if b + 1 < bursts:
                reactor.callLater(0.01, burst, b + 1)

        burst(0)
        yield gatherResults([fed.when_received(j, 3 * per_pair) for j in range(4)])
        yield fed.all_acked()
        for j in range(4):
            self.assertEqual(len(fed.received[j]), 3 * per_pair)          # nothing twice
            self.assertEqual(sorted(fed.received[j]), sorted(expected[j]))  # nothing lost
        self.assertGreater(cuts["receiver"], 0)
        self.assertGreater(cuts["sender"], 0)
        self.assertGreater(sum(n.counters.retransmits for n in fed.nets), 0)
        self.assertGreater(sum(n.counters.duplicates_in for n in fed.nets), 0)

    @inlineCallbacks
    def test_simultaneous_dials_settle_on_one_link(self) -> None:
        config = fast_config(initial_reconnect_delay=30.0, max_reconnect_delay=30.0)
        fed = Federation(self, 2, config=config)
        small, large = sorted(fed.nets, key=lambda n: n.local)
        # small dials at start (this turn); large dials in the same turn.
        out_small, out_large = yield gatherResults([small.dial(large.local), large.dial(small.local)])
        self.assertIsNotNone(out_small)
        self.assertIsNotNone(out_large)
        loser_port = out_large.transport.getHost().port
        yield fed.members_up()
        yield out_large.when_closed()                       # large's dial loses the tie-break ...
        self.assertIs(small.current_link(large.local), out_small)  # ... small's wins on both sides
        winner = large.current_link(small.local)
        self.assertEqual(winner.transport.getPeer().port, out_small.transport.getHost().port)
        yield gatherResults([link.when_closed() for link in small.open_links()
                             if link.transport.getPeer().port == loser_port])
        self.assertEqual(small.open_links(), [out_small])
        self.assertEqual(large.open_links(), [winner])
        small.send(large.local, 2, b"over the winner")
        large.send(small.local, 4, b"and back")
        yield gatherResults([fed.when_received(0, 1), fed.when_received(1, 1)])

    @inlineCallbacks
    def test_restarted_member_is_a_new_session(self) -> None:
        fed = Federation(self, 3)
        yield fed.members_up()
        a, c = fed.nets[0], fed.nets[2]
        for k in range(5):
            c.send(a.local, 2, b"before restart %d" % k)
        yield fed.when_received(0, 5)
        yield c.stopService()
        for k in range(5):
            a.send(c.local, 4, b"while away %d" % k)
        endpoint, _ = listening_socket(reactor, fed.ports[2])
        c2 = fed.start(2, endpoint)
        self.assertNotEqual(c2.epoch, c.epoch)
        for k in range(5):
            c2.send(a.local, 2, b"after restart %d" % k)   # ids 1..5 again, new epoch
        yield gatherResults([fed.when_received(0, 10), fed.when_received(2, 5), fed.members_up()])
        self.assertEqual(sorted(p for _, _, p in fed.received[0]),
                         sorted([b"before restart %d" % k for k in range(5)]
                                + [b"after restart %d" % k for k in range(5)]))
        self.assertEqual(sorted(p for _, _, p in fed.received[2]), sorted(b"while away %d" % k for k in range(5)))


class RefusalTests(TestCase):
    """Bad peers against node 0 of a running 3-node federation."""

    timeout = 20

    @inlineCallbacks
    def setUp(self) -> None:
        self.fed = Federation(self, 3, extra=1)
        self.rogue: Member = self.fed.extra[0]
        self.logs = LogCapture()
        self.addCleanup(self.logs.stop)
        yield self.fed.members_up()
        self.node = self.fed.nets[0]
        self.port = self.fed.ports[0]

    def refusals(self, address: str) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.logs.events
                if e.get("address") == address and e["log_level"].name == "warn"]

    @inlineCallbacks
    def assertStillServing(self) -> Any:
        before = len(self.fed.received[1])
        self.node.send(self.fed.nets[1].local, 2, b"still serving")
        self.fed.nets[2].send(self.node.local, 4, b"still listening")
        yield gatherResults([self.fed.when_received(1, before + 1), self.fed.when_received(0, 1)])
        self.assertEqual(self.node.connected(), {self.fed.nets[1].local, self.fed.nets[2].local})

    @inlineCallbacks
    def test_unknown_static_key(self) -> None:
        key = generate_noise_private_key()
        client = NoiseClient(key)
        yield connect_client(self.port, client)
        address = f"127.0.0.1:{client.transport.getHost().port}"
        yield client.lost
        [line] = self.refusals(address)
        self.assertIn("static key is not a member's", line)
        self.assertIn(noise_public_key(key).hex(), line)
        yield self.assertStillServing()

    @inlineCallbacks
    def test_replayed_handshake(self) -> None:
        # A genuine handshake by member "rogue", recorded byte for byte ...
        genuine = NoiseClient(self.rogue.noise_private)
        yield connect_client(self.port, genuine)
        yield genuine.handshake_done
        genuine.transport.loseConnection()
        yield genuine.lost
        # ... replayed on a new connection: the responder's fresh ephemeral
        # key makes message 3 fail.
        replay = RawClient(genuine.written)
        yield connect_client(self.port, replay)
        address = f"127.0.0.1:{replay.transport.getHost().port}"
        yield replay.lost
        [line] = self.refusals(address)
        self.assertIn("handshake message 3 failed authentication", line)
        self.assertNotIn(self.rogue.key, self.node.connected())
        yield self.assertStillServing()

    @inlineCallbacks
    def test_garbage_bytes(self) -> None:
        client = RawClient(b"\x00\x20" + bytes(range(32)) + b"GET / HTTP/1.1\r\n\r\n")
        yield connect_client(self.port, client)
        address = f"127.0.0.1:{client.transport.getHost().port}"
        yield client.lost
        [line] = self.refusals(address)
        self.assertIn("refused link from " + address, line)
        yield self.assertStillServing()

    @inlineCallbacks
    def test_oversized_frame(self) -> None:
        client = RawClient(b"\xff\xff" + b"\x00" * 65535)
        yield connect_client(self.port, client)
        address = f"127.0.0.1:{client.transport.getHost().port}"
        yield client.lost
        [line] = self.refusals(address)
        self.assertIn("frame of 65535 bytes over the 1024-byte limit", line)
        yield self.assertStillServing()

    @inlineCallbacks
    def test_oversized_message_from_a_member(self) -> None:
        client = NoiseClient(self.rogue.noise_private)
        yield connect_client(self.port, client)
        yield client.handshake_done
        address = f"127.0.0.1:{client.transport.getHost().port}"
        client.send_plaintext(struct.pack(">BIQH", DATA, self.fed.config.max_message_size + 11, 1, 2))
        yield client.lost
        [line] = self.refusals(address)
        self.assertIn(f"closing link from {self.rogue.card.short()}", line)
        self.assertIn("exceeds the limit", line)
        yield self.assertStillServing()
