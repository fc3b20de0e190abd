"""
Connection management with a fake reactor: who dials when, backoff with
jitter after failures, redial after a lost link, replaceable endpoints
(onion addresses), the tie-break rule, and configuration checks.
"""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from frostnode.identity import MemberDirectory
from frostnode.net.errors import UnsupportedAddress
from frostnode.net.noise import generate_noise_private_key
from frostnode.net.peers import (
    LinkConfig, LinkServerFactory, PeerNetwork, parse_tcp_address, prefer_new_link, tcp_endpoint,
)
from tests.test_net_support import fast_config, make_members

POLICY = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


class DialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.members = sorted(make_members(["tcp:127.0.0.1:7001", "tcp:127.0.0.1:7002"]), key=lambda m: m.key)
        self.directory = MemberDirectory(m.card for m in self.members)

    def network(self, i: int, **kw) -> PeerNetwork:
        m = self.members[i]
        kw.setdefault("retry_policy", lambda n: POLICY[n])
        net = PeerNetwork(self.reactor, m.host, m.noise_private, self.directory, None, fast_config(), **kw)
        self.addCleanup(lambda: net.running and net.stopService())
        return net

    def dial_times(self, until: float) -> list[float]:
        """Advance the clock, refusing every connection; return when each dial happened."""
        times = []
        while self.reactor.seconds() < until:
            before = len(self.reactor.tcpClients)
            self.reactor.advance(0.25)
            for host, port, factory, _, _ in self.reactor.tcpClients[before:]:
                times.append(self.reactor.seconds())
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return times

    def test_smaller_key_dials_at_once_then_backs_off(self) -> None:
        net = self.network(0)
        net.startService()
        self.assertEqual(self.dial_times(16), [0.25, 1.25, 3.25, 7.25, 15.25])
        self.assertEqual("tcp:%s:%d" % self.reactor.tcpClients[0][:2], self.members[1].card.addresses[0])

    def test_larger_key_waits_one_backoff_delay_first(self) -> None:
        net = self.network(1)
        net.startService()
        self.assertEqual(self.dial_times(8), [1.0, 3.0, 7.0])

    def test_stop_cancels_pending_dials(self) -> None:
        net = self.network(0)
        net.startService()
        self.dial_times(2)
        net.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.dial_times(30), [])

    def test_lost_link_is_redialled(self) -> None:
        a, b = self.network(0), self.network(1)
        a.startService(), b.startService()
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = LinkServerFactory(b).buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                             clock=self.reactor)
        self.assertEqual(a.connected(), {b.local})
        dials = len(self.reactor.tcpClients)
        self.reactor.advance(fast_config().stable_link_time)   # a stable link resets the backoff
        client.transport.abortConnection()
        pump.flush()
        self.assertEqual(a.connected(), set())
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), dials + 1)   # the smaller key redials at once

    def test_unstable_link_does_not_reset_the_backoff(self) -> None:
        """A peer that keeps breaking links right after the handshake is not redialled in a tight loop."""
        a, b = self.network(0), self.network(1)
        a.startService(), b.startService()
        delays = []
        for _ in range(3):
            start, dials = self.reactor.seconds(), len(self.reactor.tcpClients)
            self.reactor.advance(0)
            while len(self.reactor.tcpClients) == dials:
                self.reactor.advance(0.25)
            delays.append(self.reactor.seconds() - start)
            host, port, factory, _, _ = self.reactor.tcpClients[-1]
            client = factory.buildProtocol(IPv4Address("TCP", host, port))
            server = LinkServerFactory(b).buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
            pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                                 clock=self.reactor)
            client.transport.abortConnection()
            pump.flush()
        self.assertEqual(delays, [0.0, 1.0, 2.0])

    def test_endpoint_factory_is_replaceable_for_onion_addresses(self) -> None:
        """The default refuses .onion (logged, retried later); a SOCKS-capable factory gets the address."""
        onion = "tcp:" + "a" * 56 + ".onion:9735"
        self.members[1] = self.members[1].__class__(
            self.members[1].host, self.members[1].noise_private,
            self.members[1].card.create(self.members[1].host, self.members[1].card.noise_key, [onion]),
        )
        self.directory = MemberDirectory(m.card for m in self.members)
        with capturedLogs() as events:
            net = self.network(0)
            net.startService()
            self.reactor.advance(0)
        self.assertTrue(any("onion address" in formatEvent(e) for e in events))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)      # a retry is scheduled
        net.stopService()

        asked = []

        def socks_factory(reactor, address):
            asked.append(address)
            return TCP4ClientEndpoint(reactor, "127.0.0.1", 9050)  # stands in for a SOCKS endpoint
        net = self.network(0, endpoint_factory=socks_factory)
        net.startService()
        self.reactor.advance(0)
        self.assertEqual(asked, [onion])
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 9050))

    def test_default_policy_backs_off_with_jitter(self) -> None:
        config = fast_config(initial_reconnect_delay=0.5, reconnect_factor=2.0, max_reconnect_delay=10.0)
        m = self.members[0]
        net = PeerNetwork(self.reactor, m.host, m.noise_private, self.directory, None, config, rng=random.Random(1))
        for attempt, base in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 10.0)]:
            delays = {net.retry_policy(attempt) for _ in range(20)}
            self.assertTrue(all(base <= d < base + 0.5 for d in delays), delays)
            self.assertGreater(len(delays), 1)                          # jittered


class ConstructionTests(SynchronousTestCase):
    def test_our_keys_must_match_our_card(self) -> None:
        members = make_members(["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"])
        directory = MemberDirectory(m.card for m in members)
        reactor = MemoryReactorClock()
        with self.assertRaises(ValueError) as cm:
            PeerNetwork(reactor, members[0].host, generate_noise_private_key(), directory)
        self.assertIn("Noise key does not match", str(cm.exception))
        outsider = make_members(["tcp:127.0.0.1:3"])[0]
        self.assertRaises(ValueError, PeerNetwork, reactor, outsider.host, outsider.noise_private, directory)
        net = PeerNetwork(reactor, members[0].host, members[0].noise_private, directory)
        self.assertEqual(net.peers(), [members[1].key])
        self.assertEqual(net.local, members[0].key)

    def test_config_validation_names_the_field(self) -> None:
        with self.assertRaises(ValueError) as cm:
            LinkConfig(idle_timeout=-1)
        self.assertIn("LinkConfig.idle_timeout", str(cm.exception))
        self.assertRaises(ValueError, LinkConfig, keepalive_interval=60, idle_timeout=30)
        self.assertRaises(ValueError, LinkConfig, peer_queue_size=10, receive_window=5)


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_tcp_address("tcp:127.0.0.1:9000"), ("127.0.0.1", 9000))
        self.assertEqual(parse_tcp_address("tcp:host=10.0.0.2:port=9735"), ("10.0.0.2", 9735))
        self.assertEqual(parse_tcp_address("tcp:[::1]:9000"), ("::1", 9000))
        self.assertEqual(parse_tcp_address("tcp:node.example:9000"), ("node.example", 9000))

    def test_refused(self) -> None:
        for bad in ["unix:/tmp/x", "tcp:127.0.0.1", "tcp:127.0.0.1:0", "tcp::9000", "tcp:host=a:port=1:x=2",
                    "tcp:127.0.0.1:http", "tcp:[::1]9000"]:
            self.assertRaises(UnsupportedAddress, parse_tcp_address, bad)

    def test_endpoints(self) -> None:
        reactor = MemoryReactorClock()
        self.assertIsInstance(tcp_endpoint(reactor, "tcp:127.0.0.1:1"), TCP4ClientEndpoint)
        self.assertIsInstance(tcp_endpoint(reactor, "tcp:[::1]:1"), TCP6ClientEndpoint)
        self.assertIsInstance(tcp_endpoint(reactor, "tcp:node.example:1"), HostnameEndpoint)
        self.assertRaises(UnsupportedAddress, tcp_endpoint, reactor, "tcp:abc.onion:1")


class TieBreakRuleTests(SynchronousTestCase):
    """prefer_new_link gives the same answer on both ends of the same pair of links."""

    def test_both_sides_agree(self) -> None:
        small, large = b"\x01" * 32, b"\x02" * 32
        for cur_out in (True, False):
            for new_out in (True, False):
                # Two links between the same two processes: the large side sees each mirrored.
                at_small = prefer_new_link(small, large, cur_out, 5, new_out, 5)
                at_large = prefer_new_link(large, small, not cur_out, 9, not new_out, 9)
                self.assertEqual(at_small, at_large, (cur_out, new_out))

    def test_smaller_initiator_wins_simultaneous_dials(self) -> None:
        small, large = b"\x01" * 32, b"\x02" * 32
        self.assertTrue(prefer_new_link(small, large, False, 5, True, 5))    # small dialled the new one
        self.assertFalse(prefer_new_link(small, large, True, 5, False, 5))   # large dialled the new one
        self.assertTrue(prefer_new_link(small, large, True, 5, False, 6))    # large restarted
