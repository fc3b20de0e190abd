"""
Links driven synchronously: in-memory transports (iosim, StringTransport) and
a fake clock.  Handshake, delivery, batching, splitting, acknowledgements,
resends after a reconnect, tie-breaks, timeouts, keepalives, and every kind
of bad input closing only its own link with a log line.
"""

from __future__ import annotations

import itertools
import struct
from typing import Optional

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from frostnode.identity import MemberDirectory
from frostnode.net.errors import QueueFull
from frostnode.net.framing import DATA, encode_ack, encode_data
from frostnode.net.link import LinkProtocol
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from frostnode.net.peers import LinkServerFactory, PeerNetwork
from tests.test_net_support import Member, NoiseClient, fast_config, make_members

_ports = itertools.count(40000)


def address() -> IPv4Address:
    return IPv4Address("TCP", "127.0.0.1", next(_ports))


def texts(events) -> list[str]:
    return [formatEvent(e) for e in events]


class Harness:
    """Several members' networks on one fake reactor; links made by hand."""

    def __init__(self, test: SynchronousTestCase, n: int, running: Optional[int] = None, **config) -> None:
        self.reactor = MemoryReactorClock()
        self.members = sorted(make_members(["tcp:127.0.0.1:1"] * n), key=lambda m: m.key)
        self.directory = MemberDirectory(m.card for m in self.members)
        self.config = fast_config(**config)
        self.nets = [self.network(m) for m in self.members[: n if running is None else running]]
        self.received: dict[int, list[tuple[bytes, int, bytes]]] = {i: [] for i in range(len(self.nets))}
        for i, net in enumerate(self.nets):
            self.listen(i, net)
        test.addCleanup(self.stop)

    def network(self, member: Member, epoch: Optional[int] = None) -> PeerNetwork:
        # Retries far in the future: these tests make every connection themselves.
        net = PeerNetwork(self.reactor, member.host, member.noise_private, self.directory, None, self.config,
                          retry_policy=lambda n: 1000.0, epoch=epoch)
        net.startService()
        return net

    def listen(self, i: int, net: PeerNetwork) -> None:
        for channel in (2, 4):
            net.register(channel, lambda s, p, c=channel, i=i: self.received[i].append((s, c, p)))

    def stop(self) -> None:
        for net in self.nets:
            if net.running:
                net.stopService()

    def connect(self, a: PeerNetwork, b: PeerNetwork, greet: bool = True) -> tuple[iosim.IOPump, LinkProtocol, LinkProtocol]:
        """
        C{a} dials C{b} (through its real dialer and endpoint) over an
        in-memory transport; with C{greet}, pump until the handshake is done.
        """
        a.dial(b.local)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        client_addr, server_addr = address(), IPv4Address("TCP", host, port)
        client = factory.buildProtocol(server_addr)
        server = LinkServerFactory(b).buildProtocol(client_addr)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, server_addr, client_addr),
            client, iosim.FakeTransport(client, False, client_addr, server_addr),
            clock=self.reactor, greet=greet,
        )
        return pump, client._wrappedProtocol, server

    def attach(self, net: PeerNetwork, client) -> iosim.IOPump:
        """Connect a hand-made client to C{net}'s listener."""
        client_addr, server_addr = address(), address()
        server = LinkServerFactory(net).buildProtocol(client_addr)
        return iosim.connect(
            server, iosim.FakeTransport(server, True, server_addr, client_addr),
            client, iosim.FakeTransport(client, False, client_addr, server_addr),
            clock=self.reactor,
        )


class DeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, 2)
        self.a, self.b = self.h.nets
        self.pump, self.client, self.server = self.h.connect(self.a, self.b)

    def test_handshake_authenticates_both_members(self) -> None:
        self.assertEqual(self.a.connected(), {self.b.local})
        self.assertEqual(self.b.connected(), {self.a.local})
        self.assertEqual(self.client.peer_epoch, self.b.epoch)
        self.assertEqual(self.server.peer_epoch, self.a.epoch)
        self.assertTrue(self.a.when_connected(self.b.local).called)

    def test_sender_is_the_authenticated_member(self) -> None:
        self.a.send(self.b.local, 2, b"one")
        self.a.send(self.b.local, 4, b"two")
        self.b.send(self.a.local, 2, b"back")
        self.pump.flush()
        self.assertEqual(sorted(self.h.received[1]), [(self.a.local, 2, b"one"), (self.a.local, 4, b"two")])
        self.assertEqual(self.h.received[0], [(self.b.local, 2, b"back")])

    def test_small_messages_of_one_turn_share_one_frame(self) -> None:
        before = self.a.counters.frames_out
        for i in range(300):
            self.a.send(self.b.local, 2, b"echo %03d" % i + b"." * 40)
        self.pump.flush()
        self.assertEqual(len(self.h.received[1]), 300)
        self.assertEqual(self.a.counters.frames_out - before, 1)

    def test_large_message_split_and_reassembled(self) -> None:
        payload = bytes(range(256)) * 1200          # 300 KiB: five Noise messages
        before = self.a.counters.frames_out
        self.a.send(self.b.local, 4, payload)
        self.pump.flush()
        self.assertEqual(self.h.received[1], [(self.a.local, 4, payload)])
        self.assertEqual(self.a.counters.frames_out - before, 5)

    def test_send_preconditions(self) -> None:
        self.assertRaises(ValueError, self.a.send, self.b.local, 2, b"x" * (self.h.config.max_message_size + 1))
        self.assertRaises(ValueError, self.a.send, b"\x01" * 32, 2, b"x")
        self.assertRaises(ValueError, self.a.send, self.a.local, 2, b"x")
        self.assertRaises(ValueError, self.a.send, self.b.local, 70000, b"x")
        self.assertRaises(ValueError, self.a.register, 2, lambda s, p: None)

    def test_acknowledgements_drain_the_queue(self) -> None:
        for i in range(20):
            self.a.send(self.b.local, 2, b"%d" % i)
        drained = self.a.when_acked(self.b.local)
        self.pump.flush()
        self.assertEqual(self.a.unacked(self.b.local), 20)   # the ack waits for ack_delay ...
        self.h.reactor.advance(self.h.config.ack_delay)
        self.pump.flush()
        self.assertEqual(self.a.unacked(self.b.local), 0)     # ... and then goes out alone
        self.assertTrue(drained.called)

    def test_acks_ride_on_outgoing_data(self) -> None:
        self.b.register(9, lambda s, p: self.b.send(s, 2, b"re:" + p))
        self.a.send(self.b.local, 9, b"q")
        self.pump.flush()
        self.assertEqual(self.h.received[0], [(self.b.local, 2, b"re:q")])
        self.assertEqual(self.a.unacked(self.b.local), 0)     # no clock advance needed

    def test_resend_after_reconnect_exactly_once(self) -> None:
        for i in range(10):
            self.a.send(self.b.local, 2, b"first %d" % i)
        self.pump.flush()                                     # delivered, not yet acknowledged
        self.client.transport.abortConnection()
        self.pump.flush()
        self.assertEqual(self.a.connected(), set())
        for i in range(5):
            self.a.send(self.b.local, 2, b"while down %d" % i)  # queued, never raises
        self.h.connect(self.a, self.b)[0].flush()
        self.h.reactor.advance(self.h.config.ack_delay)
        self.h.reactor.advance(0)
        payloads = sorted(p for _, _, p in self.h.received[1])
        self.assertEqual(payloads, sorted([b"first %d" % i for i in range(10)] + [b"while down %d" % i for i in range(5)]))
        self.assertEqual(self.b.counters.duplicates_in, 10)
        self.assertEqual(self.a.counters.retransmits, 10)

    def test_failing_handler_is_logged_and_the_link_carries_on(self) -> None:
        def broken(sender: bytes, payload: bytes) -> None:
            raise ValueError("bug in a handler")
        self.b.register(7, broken)
        self.a.send(self.b.local, 7, b"boom")
        self.a.send(self.b.local, 2, b"after")
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.h.received[1], [(self.a.local, 2, b"after")])
        self.assertEqual(self.b.connected(), {self.a.local})

    def test_unknown_channel_is_acknowledged_and_dropped(self) -> None:
        """
        A message on a channel b has no handler for is acknowledged and
        dropped, with one warning naming the sender and channel: the link
        stays up, later messages arrive, and a reconnect resends nothing.
        """
        with capturedLogs() as events:
            self.a.send(self.b.local, 1234, b"?")
            self.a.send(self.b.local, 1234, b"??")
            self.a.send(self.b.local, 2, b"after")
            self.pump.flush()
            self.h.reactor.advance(self.h.config.ack_delay)
            self.pump.flush()
        self.assertEqual(self.h.received[1], [(self.a.local, 2, b"after")])
        self.assertEqual(self.a.unacked(self.b.local), 0)
        self.assertEqual(self.b.connected(), {self.a.local})
        self.assertEqual(self.b.counters.unknown_channel_dropped, 2)
        self.assertEqual(self.b.counters.messages_in, 1)
        [warning] = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual((warning["peer"], warning["channel"]), (self.h.members[0].card.short(), 1234))
        self.assertIn("unknown channel 1234", formatEvent(warning))

        self.client.transport.abortConnection()
        self.pump.flush()
        pump = self.h.connect(self.a, self.b)[0]
        self.a.send(self.b.local, 4, b"next link")
        pump.flush()
        self.assertEqual(self.h.received[1], [(self.a.local, 2, b"after"), (self.a.local, 4, b"next link")])
        self.assertEqual(self.a.counters.retransmits, 0)
        self.assertEqual(self.b.counters.unknown_channel_dropped, 2)

    def test_link_observers(self) -> None:
        events = []
        self.a.add_link_observer(lambda peer, up: events.append((peer, up)))
        self.client.transport.abortConnection()
        self.pump.flush()
        self.h.connect(self.a, self.b)
        self.assertEqual(events, [(self.b.local, False), (self.b.local, True)])


class QueueLimitTests(SynchronousTestCase):
    def test_peer_away_too_long(self) -> None:
        """Sends to a peer that is down queue up to the limit, then raise QueueFull naming it."""
        h = Harness(self, 2, peer_queue_size=50, receive_window=50)
        a, b = h.nets
        for i in range(50):
            a.send(b.local, 2, b"%d" % i)
        with self.assertRaises(QueueFull) as cm:
            a.send(b.local, 2, b"one too many")
        self.assertEqual(cm.exception.peer, b.local)
        pump, _, _ = h.connect(a, b)
        h.reactor.advance(h.config.ack_delay)
        pump.flush()
        self.assertEqual(len(h.received[1]), 50)
        a.send(b.local, 2, b"room again")


class RestartTests(SynchronousTestCase):
    def test_restarted_peer_gets_a_new_epoch_and_the_queue(self) -> None:
        """
        Ids from a restarted peer's new epoch are new messages, not duplicates,
        and what was queued for it while it was down reaches the new process.
        """
        h = Harness(self, 2)
        a, b = h.nets
        pump, _, _ = h.connect(a, b)
        for i in range(3):
            b.send(a.local, 2, b"old %d" % i)
        pump.flush()
        b.stopService()
        pump.flush()
        a.send(b.local, 4, b"for the next b")
        b2 = h.network(h.members[1])
        h.nets.append(b2)
        h.received[2] = []
        h.listen(2, b2)
        self.assertNotEqual(b2.epoch, b.epoch)
        pump, _, _ = h.connect(a, b2)
        for i in range(3):
            b2.send(a.local, 2, b"new %d" % i)
        pump.flush()
        self.assertEqual(sorted(p for _, _, p in h.received[0]),
                         sorted([b"old %d" % i for i in range(3)] + [b"new %d" % i for i in range(3)]))
        self.assertEqual(h.received[2], [(a.local, 4, b"for the next b")])


class TieBreakTests(SynchronousTestCase):
    def test_simultaneous_dials_keep_the_smaller_keys_link(self) -> None:
        h = Harness(self, 2)
        small, large = h.nets                       # members are sorted by host key
        with capturedLogs() as events:
            pump1, out_small, in_large = h.connect(small, large, greet=False)
            pump2, out_large, in_small = h.connect(large, small, greet=False)
            pump1.flush()
            pump2.flush()
            pump1.flush()
        self.assertIs(small.current_link(large.local), out_small)
        self.assertIs(large.current_link(small.local), in_large)
        self.assertTrue(out_large.closing and in_small.closing)
        self.assertEqual(len(small.open_links()), 1)
        self.assertEqual(len(large.open_links()), 1)
        self.assertTrue(any("duplicate link" in t for t in texts(events)))
        small.send(large.local, 2, b"still fine")
        pump1.flush()
        self.assertEqual(h.received[1], [(small.local, 2, b"still fine")])

    def test_redial_in_same_direction_replaces_the_old_link(self) -> None:
        """A peer dialling again gave up on its old connection: the new one wins on both sides."""
        h = Harness(self, 2)
        a, b = h.nets
        pump1, old_client, old_server = h.connect(b, a)
        # b believes the old link dead (say it timed out locally) and dials again.
        old_client.close("test: pretend it died", abort=False)
        pump2, new_client, new_server = h.connect(b, a)
        self.assertIs(a.current_link(b.local), new_server)
        self.assertTrue(old_server.closing)


class TimerTests(SynchronousTestCase):
    def test_handshake_timeout(self) -> None:
        h = Harness(self, 2)
        b = h.nets[1]
        proto = LinkServerFactory(b).buildProtocol(address())
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        with capturedLogs() as events:
            proto.makeConnection(transport)
            h.reactor.advance(h.config.handshake_timeout - 0.5)
            self.assertFalse(transport.disconnecting)
            h.reactor.advance(0.5)
        self.assertTrue(transport.disconnecting)
        [event] = [e for e in events if e.get("address") == "127.0.0.1:5555"]
        self.assertIn("handshake not complete after 5s", formatEvent(event))

    def test_keepalive_keeps_an_idle_link_up(self) -> None:
        h = Harness(self, 2)
        a, b = h.nets
        pump, client, server = h.connect(a, b)
        frames = a.counters.frames_out
        for _ in range(8):                          # 80 s of silence, idle_timeout is 30 s
            h.reactor.advance(h.config.keepalive_interval)
            pump.flush()
        self.assertEqual(a.connected(), {b.local})
        self.assertGreaterEqual(a.counters.frames_out - frames, 8)

    def test_idle_timeout_closes_a_dead_link(self) -> None:
        h = Harness(self, 2)
        a, b = h.nets
        pump, client, server = h.connect(a, b)
        with capturedLogs() as events:
            h.reactor.advance(h.config.keepalive_interval)   # pings written but never delivered
            h.reactor.advance(h.config.idle_timeout)
        self.assertTrue(client.closing and server.closing)
        self.assertEqual(a.connected(), set())
        idle = [formatEvent(e) for e in events if e["log_level"].name == "warn" and "idle timeout" in formatEvent(e)]
        self.assertEqual(len(idle), 2)


class RefusalTests(SynchronousTestCase):
    """
    Bad peers are refused with a log line naming address, key and reason;
    the node's other link (a <-> b) carries on.
    """

    def setUp(self) -> None:
        # Three members; the third ("rogue") is a member we play by hand.
        self.h = Harness(self, 3, running=2)
        self.a, self.b = self.h.nets
        self.rogue = self.h.members[2]
        self.pump, _, _ = self.h.connect(self.a, self.b)

    def assertStillServing(self) -> None:
        self.a.send(self.b.local, 2, b"still here")
        self.pump.flush()
        self.assertIn((self.a.local, 2, b"still here"), self.h.received[1])
        self.assertIn(self.a.local, self.b.connected())

    def refused(self, client, *texts_expected: str, after=None) -> list:
        """Connect C{client} to b (then run C{after(client)}); exactly one warning, b still serving."""
        with capturedLogs() as events:
            pump = self.h.attach(self.b, client)
            pump.flush()
            if after is not None:
                after(client)
                pump.flush()
        warnings = [e for e in events if e.get("log_level").name == "warn"]
        self.assertEqual(len(warnings), 1, texts(events))
        text = formatEvent(warnings[0])
        for t in texts_expected:
            self.assertIn(t, text)
        self.assertEqual(warnings[0]["address"], describe(client))
        self.assertTrue(client.transport.disconnecting or client.transport.disconnected)
        self.assertStillServing()
        return warnings

    def test_unknown_static_key(self) -> None:
        key = generate_noise_private_key()
        client = NoiseClient(key)
        [event] = self.refused(client, "static key is not a member's")
        self.assertEqual(event["key"], noise_public_key(key).hex())
        self.assertEqual(self.b.counters.links_refused, 1)

    def test_own_static_key(self) -> None:
        self.refused(NoiseClient(self.h.members[1].noise_private), "our own")

    def test_wrong_member_at_the_dialled_address(self) -> None:
        """a dials b's address but c answers: a refuses before sending message 3."""
        h = Harness(self, 3)
        a, b, c = h.nets
        a.dial(b.local)
        host, port, factory, _, _ = h.reactor.tcpClients[-1]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = LinkServerFactory(c).buildProtocol(address())
        with capturedLogs() as events:
            iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                          clock=h.reactor).flush()
        self.assertIn(f"dialled member {b.local.hex()[:12]} but reached {h.members[2].card.short()}",
                      "\n".join(texts(events)))
        self.assertEqual(a.connected(), set())
        self.assertEqual(c.connected(), set())

    def test_garbage(self) -> None:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 6001))
        proto = LinkServerFactory(self.b).buildProtocol(address())
        with capturedLogs() as events:
            proto.makeConnection(transport)
            proto.dataReceived(b"\x00\x05hello" + b"\x17" * 100)
        self.assertTrue(transport.disconnected)
        [text] = [t for t in texts(events) if "127.0.0.1:6001" in t]
        self.assertIn("handshake message 1 rejected", text)
        self.assertStillServing()

    def test_oversized_handshake_frame(self) -> None:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 6002))
        proto = LinkServerFactory(self.b).buildProtocol(address())
        with capturedLogs() as events:
            proto.makeConnection(transport)
            proto.dataReceived(b"\xff\xff")            # refused at the prefix, nothing buffered
        self.assertTrue(transport.disconnected)
        [text] = [t for t in texts(events) if "127.0.0.1:6002" in t]
        self.assertIn("frame of 65535 bytes over the 1024-byte limit", text)
        self.assertStillServing()

    def after_handshake(self, plaintext: bytes, *expected: str) -> None:
        client = NoiseClient(self.rogue.noise_private, epoch=99)
        [event] = self.refused(client, *expected, after=lambda c: c.send_plaintext(plaintext))
        self.assertEqual(event["peer"], self.rogue.card.short())

    def test_oversized_message(self) -> None:
        self.after_handshake(struct.pack(">BIQH", DATA, 2**31, 1, 2),
                             "DATA record of 2147483648 bytes exceeds the limit")

    def test_unknown_record_type(self) -> None:
        self.after_handshake(struct.pack(">BI", 77, 0), "unknown record type 77")

    def test_acknowledging_what_was_never_sent(self) -> None:
        self.after_handshake(encode_ack(5, []), "only 0 were ever sent")

    def test_message_id_beyond_the_window(self) -> None:
        self.after_handshake(encode_data(self.h.config.receive_window + 1, 2, b"x"), "above the low watermark")

    def test_failed_decryption(self) -> None:
        client = NoiseClient(self.rogue.noise_private)
        def tamper(c: NoiseClient) -> None:
            c.transport_cipher.encrypt(b"skipped")     # desynchronise the nonce
            c.send_plaintext(encode_data(1, 2, b"x"))
        self.refused(client, "failed decryption", after=tamper)


def describe(client) -> str:
    host = client.transport.getHost()
    return f"{host.host}:{host.port}"
