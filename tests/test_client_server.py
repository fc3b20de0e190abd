"""
Clients and a node's client port over real loopback TCP with Noise: the
library's round trips (submit, get, topic, status, pubkey), typed errors,
the command table a later layer plugs into, and hostile clients (garbage
after the handshake, the wrong node key, a 100 MB request, a burst of
10,000 requests, a flood of fresh keys or silent connections from one
address) that get typed errors or a closed connection while other clients
are served and nothing stored is lost.  The port's C{when_listening}
answers after a failed listen too.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs
from twisted.internet.interfaces import IPullProducer
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from frostnode.client.errors import BadResponse, ClientError, ConnectionFailed, WrongNodeKey
from frostnode.client.library import NodeTarget, connect
from frostnode.client.limits import ClientLimits
from frostnode.client.messages import Accepted, SubmitArgs, decode_response, decode_status, encode_request
from frostnode.crypto.bip340 import pubkey_xonly, taproot_output_key
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from frostnode.store.keys import EpochRecord
from frostnode.store.log import RecordBody

from frostnode.client.api import NodeAPI
from frostnode.client.server import ClientPortService

from tests.test_client_support import RawClient, TestNode, add_epoch, listening_socket
from tests.test_sync_support import MemoryFederation, wait_converged


class RoundTripTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> None:
        self.node = TestNode(self)
        yield self.node.service.when_listening()
        self.key = generate_noise_private_key()
        self.client = yield connect(reactor, self.node.target, self.key)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_submit_then_get_and_topic(self) -> None:
        """A record submitted is durable, filed under the client's own key, and readable by id and topic."""
        client = self.client
        self.assertEqual(client.node_host_key, self.node.host.public)
        first = yield client.submit("prices/btc", b"64000", timestamp=1, nonce=b"a")
        second = yield client.submit("prices/btc", b"\x00\xffbinary", timestamp=2, nonce=b"b")
        self.assertEqual((first.created, first.origin, first.seq), (True, self.node.host.public, 1))
        self.assertEqual(second.seq, 2)
        expected = RecordBody(noise_public_key(self.key), "prices/btc", b"64000", 1, b"a")
        self.assertEqual(first.record_id, expected.record_id)
        self.assertEqual(self.node.log.get(first.record_id).envelope.body, expected)  # on disk already

        record = yield client.get(first.record_id)
        self.assertEqual((record.payload, record.topic, record.client_key), (b"64000", "prices/btc", client.client_key))
        self.assertEqual((record.origin, record.seq, record.position), (self.node.host.public, 1, 1))

        page = yield client.topic("prices/btc", 1, 10)
        self.assertEqual([r.payload for r in page.records], [b"64000", b"\x00\xffbinary"])
        self.assertEqual((page.last, page.next), (2, 3))
        page = yield client.topic("prices/btc", 2, 10)
        self.assertEqual([r.record_id for r in page.records], [second.record_id])

    @inlineCallbacks
    def test_resubmitting_the_same_record_is_idempotent(self) -> None:
        a = yield self.client.submit("t", b"same", timestamp=5, nonce=b"n")
        b = yield self.client.submit("t", b"same", timestamp=5, nonce=b"n")
        c = yield self.client.submit("t", b"same")  # fresh timestamp and nonce: a second record on purpose
        self.assertEqual((b.record_id, b.created, b.seq), (a.record_id, False, a.seq))
        self.assertNotEqual(c.record_id, a.record_id)
        self.assertEqual(self.node.log.digest().count, 2)

    @inlineCallbacks
    def test_status(self) -> None:
        yield self.client.submit("t", b"x")
        status = yield self.client.status()
        digest = self.node.log.digest()
        self.assertEqual(status["node"], self.node.host.public.hex())
        self.assertEqual(status["members"], [self.node.host.public.hex()])
        self.assertEqual(status["log"]["count"], 1)
        self.assertEqual(status["log"]["digest"], digest.hex())
        self.assertEqual(status["log"]["origins"][self.node.host.public.hex()]["have"], 1)
        self.assertEqual(status["sync"]["lag"], 0)
        self.assertIsNone(status["epoch"])

    @inlineCallbacks
    def test_pubkey_unavailable_before_the_first_dkg(self) -> None:
        e = yield self.assertFailure(self.client.pubkey(), ClientError)
        self.assertEqual(e.code, "unavailable")
        self.assertIn("DKG", e.message)
        epoch = add_epoch(self.node.keystore, (self.node.host.public,), epoch=4)
        keys = yield self.client.pubkey()
        self.assertEqual((keys.epoch, keys.internal_key, keys.output_key), (4, epoch.internal_key, epoch.output_key))
        self.assertTrue(keys.address.startswith("bcrt1p"))
        status = yield self.client.status()
        self.assertEqual(status["epoch"], 4)

    @inlineCallbacks
    def test_pubkey_is_the_federations_current_key_even_without_our_share(self) -> None:
        """
        A member that the newest key generation left out answers with the
        federation's key of that epoch (and says it holds no share), not with
        the older key it can still sign with.
        """
        add_epoch(self.node.keystore, (self.node.host.public,), epoch=1)
        keys = yield self.client.pubkey()
        self.assertEqual((keys.epoch, keys.holds_share), (1, True))
        internal = pubkey_xonly((42).to_bytes(32, "big"))
        output, _ = taproot_output_key(internal)
        others = (b"\x05" * 32, b"\x06" * 32)
        self.node.keystore.put_foreign_sync(
            EpochRecord.foreign(2, b"s2", 0, others, 2, internal, output, b"certificate", 3.0), 3.0)
        keys = yield self.client.pubkey()
        self.assertEqual((keys.epoch, keys.internal_key, keys.output_key, keys.holds_share),
                         (2, internal, output, False))
        status = yield self.client.status()
        self.assertEqual(status["epoch"], 1)  # the newest epoch this node can sign in

    @inlineCallbacks
    def test_typed_errors(self) -> None:
        client = self.client
        e = yield self.assertFailure(client.get(b"\x42" * 32), ClientError)
        self.assertEqual(e.code, "not-found")
        e = yield self.assertFailure(client.topic("never/used"), ClientError)
        self.assertEqual(e.code, "unknown-topic")
        e = yield self.assertFailure(client.call("no-such-command"), ClientError)
        self.assertEqual(e.code, "invalid-request")
        e = yield self.assertFailure(client.call("status", b"extra"), ClientError)
        self.assertEqual(e.code, "invalid-request")
        e = yield self.assertFailure(client.call("submit", b"\x00\x00"), ClientError)
        self.assertEqual(e.code, "invalid-request")
        # Over the log's nonce limit: the node refuses it, nothing is stored.
        e = yield self.assertFailure(client.submit("t", b"x", nonce=b"n" * 100), ClientError)
        self.assertEqual(e.code, "too-large")
        # Over the request limit: refused by the library itself, the connection stays usable.
        e = yield self.assertFailure(client.submit("t", b"x" * (client.max_request_size + 1)), ClientError)
        self.assertEqual(e.code, "too-large")
        self.assertIn("not sent", e.message)
        status = yield client.status()
        self.assertEqual(status["log"]["count"], 0)

    @inlineCallbacks
    def test_a_later_layer_plugs_in_a_command(self) -> None:
        """The way the signing service adds `sign`: a named handler with its own codec."""
        seen = []

        def sign(context: Any, args: bytes) -> bytes:
            seen.append(context.client_key)
            if args == b"bad":
                raise ValueError("a bug in the handler")
            return b"signature over " + args

        self.node.api.register_command("sign", sign)
        self.assertRaises(ValueError, self.node.api.register_command, "sign", sign)
        result = yield self.client.call("sign", b"message")
        self.assertEqual(result, b"signature over message")
        self.assertEqual(seen, [self.client.client_key])
        e = yield self.assertFailure(self.client.call("sign", b"bad"), ClientError)
        self.assertEqual(e.code, "internal")
        self.assertNotIn("a bug", e.message)  # the details are in the node's log, not the answer
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @inlineCallbacks
    def test_many_concurrent_requests_are_queued_within_the_in_flight_limit(self) -> None:
        """Far more requests than max_in_flight at once: the library queues, none is rate-limited."""
        node = TestNode(self, ClientLimits(max_in_flight=4, rate=10000.0, burst=10000))
        yield node.service.when_listening()
        client = yield connect(reactor, node.target)
        self.addCleanup(client.close)
        results = yield gatherResults([client.submit("q", b"%d" % i) for i in range(200)])
        self.assertEqual(len({r.record_id for r in results}), 200)
        self.assertEqual(node.factory.counters.rate_limited, 0)
        self.assertEqual(node.log.digest().count, 200)


class TargetTests(TestCase):
    def test_target_from_card(self) -> None:
        node_card = {"version": 1, "host_key": "00"}
        self.assertRaises(ValueError, NodeTarget.from_card, node_card, "127.0.0.1:1")
        self.assertRaises(ValueError, NodeTarget.from_address, "127.0.0.1:9001", "zz")
        self.assertRaises(ValueError, NodeTarget.from_address, "127.0.0.1", "00" * 32)
        t = NodeTarget.from_address("[::1]:9001", "ab" * 32)
        self.assertEqual((t.host, t.port, t.noise_key), ("::1", 9001, b"\xab" * 32))

    @inlineCallbacks
    def test_card_names_the_node_and_its_client_address(self) -> None:
        node = TestNode(self)
        yield node.service.when_listening()
        card = node.card_json()
        target = NodeTarget.from_card(card)
        self.assertEqual((target.port, target.noise_key, target.host_key),
                         (node.port, node.card.noise_key, node.host.public))
        client = yield connect(reactor, target)
        self.assertEqual(client.node_host_key, node.host.public)
        yield client.close()
        del card["client_addresses"]
        e = self.assertRaises(ValueError, NodeTarget.from_card, card)
        self.assertIn("--node", str(e))
        card["signature"] = "00" * 64
        self.assertRaises(ValueError, NodeTarget.from_card, card, f"127.0.0.1:{node.port}")


@implementer(IPullProducer)
class _Flood:
    """Streams one huge declared request, 64 KiB of ciphertext at a time, while the server reads."""

    def __init__(self, client: RawClient, total: int) -> None:
        self.client = client
        self.left = total
        self.sent = 0
        self.chunk = b"\x00" * 65000

    def resumeProducing(self) -> None:
        if self.left <= 0 or self.client.transport is None:
            self.client.transport.unregisterProducer()
            return
        n = min(len(self.chunk), self.left)
        self.client.sendString(self.client.cipher.encrypt(self.chunk[:n]))
        self.left -= n
        self.sent += n

    def stopProducing(self) -> None:
        self.left = 0


class HostileClientTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> None:
        self.node = TestNode(self, ClientLimits(rate=500.0, burst=200, max_in_flight=16))
        yield self.node.service.when_listening()
        self.good = yield connect(reactor, self.node.target)
        self.addCleanup(self.good.close)
        self.before = yield self.good.submit("good", b"kept")

    @inlineCallbacks
    def raw(self) -> Any:
        client = RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port), client)
        yield client.ready
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
        return client

    @inlineCallbacks
    def assert_node_serves_others(self) -> Any:
        status = yield self.good.status()
        self.assertEqual(status["node"], self.node.host.public.hex())
        again = yield self.good.get(self.before.record_id)
        self.assertEqual(again.payload, b"kept")
        late = yield connect(reactor, self.node.target)
        yield late.submit("good", b"after")
        yield late.close()

    @inlineCallbacks
    def test_garbage_after_the_handshake(self) -> None:
        """Bytes that are not Noise close that connection only, with a log line naming why."""
        client = yield self.raw()
        client.transport.write(b"\x00\x20" + os.urandom(32) + b"GET / HTTP/1.1\r\n\r\n")
        yield client.lost
        self.assertEqual(self.node.factory.counters.violations, 1)
        yield self.assert_node_serves_others()

    @inlineCallbacks
    def test_garbage_before_the_handshake(self) -> None:
        from tests.test_net_support import RawClient as Bytes

        for data in (b"\xff\xff" + b"x" * 2000, b"\x00\x05hello", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            client = Bytes(data)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port), client)
            yield client.lost
        self.assertEqual(self.node.factory.counters.handshakes_failed, 3)
        self.assertEqual(len(self.node.factory.registry), 1)  # only the good client ever authenticated
        yield self.assert_node_serves_others()

    @inlineCallbacks
    def test_wrong_node_key(self) -> None:
        """The client refuses a node whose key is not the card's, before sending its own static key."""
        wrong = NodeTarget("127.0.0.1", self.node.port, noise_public_key(generate_noise_private_key()))
        e = yield self.assertFailure(connect(reactor, wrong), WrongNodeKey)
        self.assertEqual(e.code, "wrong-node-key")
        self.assertEqual(e.got, self.node.target.noise_key)
        impostor = NodeTarget("127.0.0.1", self.node.port, self.node.target.noise_key, b"\x09" * 32)
        e = yield self.assertFailure(connect(reactor, impostor), ClientError)
        self.assertEqual(e.code, "wrong-node-key")
        self.assertEqual(len(self.node.factory.registry), 1)  # neither handshake reached the node's message 3
        closed = NodeTarget("127.0.0.1", 1, self.node.target.noise_key)
        yield self.assertFailure(connect(reactor, closed), ConnectionFailed)

    @inlineCallbacks
    def test_100_megabyte_request(self) -> None:
        """Refused at its head with too-large, and closed without the node reading (or buffering) 100 MB."""
        client = yield self.raw()
        head = struct.pack(">II", 77, 100 * 2**20)
        client.sendString(client.cipher.encrypt(head + encode_request("submit", b"")))
        flood = _Flood(client, 100 * 2**20)
        client.transport.registerProducer(flood, False)
        yield client.lost
        if client.answers:  # the answer usually arrives before the close; a reset may eat it
            request_id, body = client.answers[0]
            self.assertEqual(request_id, 77)
            e = self.assertRaises(ClientError, decode_response, body)
            self.assertEqual(e.code, "too-large")
        self.assertEqual(self.node.factory.counters.too_large, 1)
        self.assertLess(self.node.factory.counters.bytes_in, 8 * 2**20)
        self.assertLess(flood.sent, 50 * 2**20)
        yield self.assert_node_serves_others()

    @inlineCallbacks
    def test_burst_of_10000_requests(self) -> None:
        """Every request answered (accepted or rate-limited), others served, every accepted record stored."""
        client = yield self.raw()
        frames = []
        for i in range(10_000):
            args = SubmitArgs("burst", b"%d" % i, i, b"").encode()
            body = encode_request("submit", args)
            frames.append(struct.pack(">II", i, len(body)) + body)
        client.send_plaintext(b"".join(frames))
        other = self.good.status()  # served while the burst is processed
        answers = yield client.when_answers(10_000)
        yield other
        accepted, limited = [], 0
        for request_id, body in answers:
            try:
                accepted.append(Accepted.decode(decode_response(body)))
            except ClientError as e:
                self.assertEqual(e.code, "rate-limited")
                limited += 1
        self.assertEqual(len({rid for rid, _ in answers}), 10_000)
        self.assertEqual(len(accepted) + limited, 10_000)
        self.assertGreater(limited, 9_000)
        self.assertGreaterEqual(len(accepted), 1)
        self.assertLessEqual(len(accepted), 200 + 16)
        for a in accepted:
            self.assertIsNotNone(self.node.log.get(a.record_id))
        self.assertEqual(self.node.log.digest().count, 1 + len(accepted))
        yield self.assert_node_serves_others()

    @inlineCallbacks
    def test_node_answering_out_of_turn_is_dropped(self) -> None:
        """The library checks answers too: an id it never asked about ends the connection."""
        client = yield connect(reactor, self.node.target)
        d = client.call("status")
        client._answer(999_999, b"")
        yield self.assertFailure(d, BadResponse)
        self.assertFalse(client.connected)


def _second_loopback_address() -> str:
    """127.0.0.2 if this host lets a socket bind there (Linux routes all of 127/8 to loopback)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.2", 0))
    except OSError:
        return ""
    finally:
        probe.close()
    return "127.0.0.2"


class AddressCapTests(TestCase):
    """
    Fresh static keys cost nothing: one address opening connections with new
    keys, or leaving handshakes unfinished, fills its own share of the port,
    and a client from another address (127.0.0.2 here) still gets in.  The
    caps below would let the flood fill the whole port without the
    per-address ones.
    """

    LIMITS = ClientLimits(max_connections=6, max_handshaking=4, max_connections_per_loopback=3,
                          max_handshaking_per_loopback=2)

    @inlineCallbacks
    def setUp(self) -> None:
        self.other = _second_loopback_address()
        if not self.other:
            raise self.skipTest("cannot bind to 127.0.0.2 here (the policy is tested with StringTransport peers "
                                "in tests.test_client_messages.AddressCapServerTests)")
        self.node = TestNode(self, self.LIMITS)
        yield self.node.service.when_listening()

    @inlineCallbacks
    def dial(self, source: str, client: Any) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port, bindAddress=(source, 0))
        yield connectProtocol(endpoint, client)

        def hang_up() -> Deferred:
            if client.transport.connected:
                client.transport.abortConnection()
            return client.lost

        self.addCleanup(hang_up)
        return client

    @inlineCallbacks
    def handshake(self, source: str) -> Any:
        """A fresh key's handshake from C{source}: the client, or None if the node closed the connection."""
        client = yield self.dial(source, RawClient())
        try:
            yield client.ready
        except Exception:
            return None
        return client

    @inlineCallbacks
    def assert_served_from_the_other_address(self) -> Any:
        client = yield self.handshake(self.other)
        self.assertIsNotNone(client, f"a client from {self.other} was refused")
        client.request(1, "status")
        (request_id, body), = yield client.when_answers(1)
        self.assertEqual(status_of(body)["node"], self.node.host.public.hex())

    @inlineCallbacks
    def test_fresh_keys_from_one_address(self) -> None:
        with capturedLogs() as events:
            flood = []
            for _ in range(self.LIMITS.max_connections):
                flood.append((yield self.handshake("127.0.0.1")))
        self.assertEqual([c is not None for c in flood], [True] * 3 + [False] * 3)
        self.assertEqual(self.node.factory.counters.refused_by_address, 3)
        self.assertEqual(len([e for e in events if e.get("source") == "127.0.0.1"]), 1)
        yield self.assert_served_from_the_other_address()

    @inlineCallbacks
    def test_silent_connections_from_one_address(self) -> None:
        from tests.test_net_support import RawClient as Silent

        silent = []
        for _ in range(self.LIMITS.max_handshaking):
            silent.append((yield self.dial("127.0.0.1", Silent(b""))))
        yield gatherResults([c.lost for c in silent[2:]])  # over the address's 2 handshakes: closed at accept
        self.assertFalse(silent[0].lost.called or silent[1].lost.called)
        yield self.assert_served_from_the_other_address()


def status_of(body: bytes) -> dict:
    return decode_status(decode_response(body))


class ListenTests(TestCase):
    """C{when_listening} answers whether the port was bound or not, whenever it is asked."""

    def test_a_failed_listen_is_remembered(self) -> None:
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        node = TestNode(self)
        service = ClientPortService(node.api, node.noise_private,
                                    TCP4ServerEndpoint(reactor, busy.getsockname()[1], interface="127.0.0.1"),
                                    reactor)
        early = service.when_listening()
        with capturedLogs() as events:
            service.startService()
        self.addCleanup(service.stopService)
        self.failureResultOf(early, CannotListenError)
        self.failureResultOf(service.when_listening(), CannotListenError)  # asked after the failure: no hang
        self.assertEqual([e["log_level"].name for e in events if "cannot listen" in e["log_format"]], ["error"])

    def test_stopped_before_the_port_is_bound(self) -> None:
        class Slow:
            def listen(self, factory: Any) -> Deferred:
                return Deferred()

        node = TestNode(self)
        service = ClientPortService(node.api, node.noise_private, Slow(), reactor)
        service.startService()
        waiting = service.when_listening()
        self.assertNoResult(waiting)
        with capturedLogs() as events:
            service.stopService()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual([e for e in events if "cannot listen" in e.get("log_format", "")], [])


class RealSyncTests(TestCase):
    """The client port in front of the real sync service of a small federation (in-memory links)."""

    @inlineCallbacks
    def test_records_submitted_to_different_nodes_reach_every_node(self) -> None:
        fed = MemoryFederation(self, n=3)
        targets = []
        for node in fed.nodes:
            api = NodeAPI(node.sync, reactor, directory=fed.directory, threshold=2, links=node.links)
            endpoint, port = listening_socket()
            service = ClientPortService(api, node.member.noise_private, endpoint, reactor)
            service.startService()
            self.addCleanup(service.stopService)
            yield service.when_listening()
            targets.append(NodeTarget("127.0.0.1", port, noise_public_key(node.member.noise_private), node.key))
        clients = []
        for target in targets:
            client = yield connect(reactor, target)
            self.addCleanup(client.close)
            clients.append(client)
        a = yield clients[0].submit("shared", b"from a")
        b = yield clients[1].submit("shared", b"from b")
        self.assertEqual((a.origin, b.origin), (fed.nodes[0].key, fed.nodes[1].key))
        yield wait_converged(fed.nodes, 2, timeout=10)

        record = yield clients[2].get(a.record_id)
        self.assertEqual((record.payload, record.origin, record.client_key), (b"from a", a.origin, clients[0].client_key))
        page = yield clients[2].topic("shared")
        self.assertEqual({r.record_id for r in page.records}, {a.record_id, b.record_id})
        statuses = yield gatherResults([c.status() for c in clients])
        self.assertEqual(len({s["log"]["digest"] for s in statuses}), 1)
        self.assertEqual(statuses[2]["sync"]["count"], 2)
        self.assertEqual(len(statuses[0]["links_up"]), 2)

        yield fed.nodes[2].sync.stopService()
        e = yield self.assertFailure(clients[2].submit("shared", b"while stopped"), ClientError)
        self.assertEqual(e.code, "unavailable")
