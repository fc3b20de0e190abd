"""
The client port's pure pieces and its timers, reactor-free: frames and
command codecs (every length checked, records checked against their ids),
typed errors, token buckets and per-client state, the client handshake
(which a peer-link handshake cannot complete), and a server connection
driven over a StringTransport with a Clock: handshake and idle timeouts,
rate and in-flight limits.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from frostnode.client.api import NodeAPI, as_client_error
from frostnode.client.errors import ERROR_CODES, HTTP_STATUS, REMOTE_CODES, ClientError
from frostnode.client.handshake import ClientHandshake, NodeHello, encode_client_hello
from frostnode.client.limits import AddressCaps, ClientLimits, ClientRegistry, Source, TokenBucket, source_of
from frostnode.client.messages import (
    Accepted, Frame, FrameReader, Oversized, PublicKeys, Record, SubmitArgs, TopicArgs, TopicPage, decode_request,
    decode_response, decode_status, encode_error, encode_frame, encode_ok, encode_request, encode_status,
)
from frostnode.client.server import ClientServerFactory
from frostnode.crypto.bip340 import p2tr_address, pubkey_xonly, taproot_output_key
from frostnode.net.errors import HandshakeFailed
from frostnode.net.noise import NoiseHandshake, generate_noise_private_key, noise_public_key
from frostnode.store.errors import CorruptStore, InvalidRecord, RecordTooLarge, StoreFull
from frostnode.store.log import Envelope, LogEntry, RecordBody
from frostnode.sync.errors import SyncOverloaded, SyncUnavailable
from frostnode.wire import DecodeError

CLIENT = b"\x11" * 32
ORIGIN = b"\xa1" * 32


def record(payload: bytes = b"hello", position: int = 3) -> Record:
    body = RecordBody(CLIENT, "prices/btc", payload, 7, b"n")
    return Record.from_entry(LogEntry(body.record_id, Envelope(ORIGIN, 5, 1700000000.25, body), position))


class FrameTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 97), min_size=1, max_size=20))
    def test_frames_reassemble_whatever_the_chunking(self, bodies: list[bytes], cuts: list[int]) -> None:
        """Frames come out whole and in order however the stream is cut."""
        stream = b"".join(encode_frame(i, b) for i, b in enumerate(bodies))
        reader = FrameReader(300)
        out: list[Any] = []
        pos = 0
        for n in cuts * (len(stream) // max(sum(cuts), 1) + 1):
            out += reader.feed(stream[pos:pos + n])
            pos += n
            if pos >= len(stream):
                break
        self.assertEqual(out, [Frame(i, b) for i, b in enumerate(bodies)])
        self.assertEqual(reader.buffered, 0)

    def test_tiny_chunks_cost_no_memory_per_chunk(self) -> None:
        """A client sending 2-byte plaintexts: what is buffered costs about its own size."""
        reader = FrameReader(1 << 20)
        data = encode_frame(1, b"x" * 100_000)
        tracemalloc.start()
        try:
            for i in range(0, 60_000, 2):
                reader.feed(data[i:i + 2])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(reader.buffered, 60_000)
        self.assertLess(peak, 300_000)  # a list of 2-byte chunks would hold about 1.3 MB
        self.assertEqual(reader.feed(data[60_000:]), [Frame(1, b"x" * 100_000)])

    def test_oversized_frame_is_reported_from_its_head(self) -> None:
        """A 100 MB declaration is refused at its 8-byte head, naming the request; nothing more is read."""
        reader = FrameReader(1024)
        self.assertEqual(reader.feed(encode_frame(1, b"ok")), [Frame(1, b"ok")])
        self.assertEqual(reader.feed(struct.pack(">II", 9, 100 * 2**20)), [Oversized(9, 100 * 2**20, 1024)])
        self.assertEqual(reader.feed(b"x" * 5000), [])
        self.assertEqual(reader.buffered, 0)

    def test_request_encoding(self) -> None:
        body = encode_request("submit", b"args")
        self.assertEqual(decode_request(body), ("submit", b"args"))
        for bad in ("", "Submit", "a b", "x" * 33, "sign/v2"):
            self.assertRaises(ValueError, encode_request, bad, b"")
        self.assertRaises(DecodeError, decode_request, b"\x02" + body[1:])          # unknown version
        self.assertRaises(DecodeError, decode_request, body[:3])                     # truncated
        self.assertRaises(DecodeError, decode_request, b"\x01\x00\x00\x00\x02A!")    # bad command name

    def test_answers(self) -> None:
        self.assertEqual(decode_response(encode_ok(b"result")), b"result")
        e = self.assertRaises(ClientError, decode_response,
                              encode_error(ClientError("rate-limited", "slow down", 0.0101)))
        self.assertEqual((e.code, e.message, e.retry_after), ("rate-limited", "slow down", 0.011))
        e = self.assertRaises(ClientError, decode_response, encode_error(ClientError("not-found", "x" * 5000)))
        self.assertIsNone(e.retry_after)
        self.assertEqual(len(e.message), 1024)
        # Signing errors name members, in ascending key order, one reason each.
        named = ClientError("views-differ", "b, a", members={b"\xbb" * 32: "missing data", b"\xaa" * 32: "x" * 999})
        e = self.assertRaises(ClientError, decode_response, encode_error(named))
        self.assertEqual((e.code, list(e.members)), ("views-differ", [b"\xaa" * 32, b"\xbb" * 32]))
        self.assertEqual((e.members[b"\xbb" * 32], len(e.members[b"\xaa" * 32])), ("missing data", 256))
        swapped = encode_error(named).replace(b"\xaa" * 32, b"\xcc" * 32)
        self.assertRaises(DecodeError, decode_response, swapped)
        self.assertEqual(named.to_json()["members"], {"aa" * 32: "x" * 999, "bb" * 32: "missing data"})
        # A node cannot make the client raise a local-only code, or an unknown one.
        forged = encode_error(ClientError("timeout", "forged")).replace(b"timeout", b"made-up")
        self.assertRaises(DecodeError, decode_response, forged)
        self.assertRaises(DecodeError, decode_response, encode_ok(b"")[:1] + b"\x07")

    def test_failures_of_other_layers_become_typed_errors(self) -> None:
        class Busy(Exception):
            client_error_code = "rate-limited"
            retry_after = 2.0

        cases = [
            (SyncOverloaded("disk queue full"), "rate-limited"),
            (SyncUnavailable("stopping"), "unavailable"),
            (RecordTooLarge("payload"), "too-large"),
            (InvalidRecord("topic"), "invalid-request"),
            (StoreFull("map"), "unavailable"),
            (Busy("signing queue"), "rate-limited"),
        ]
        for error, code in cases:
            self.assertEqual(as_client_error(error).code, code, repr(error))
        self.assertEqual(as_client_error(Busy("x")).retry_after, 2.0)
        for bug in (CorruptStore("bad bytes"), ValueError("oops"), KeyError("k")):
            self.assertIsNone(as_client_error(bug))  # internal, logged by the API

    def test_every_remote_error_has_an_http_status(self) -> None:
        self.assertEqual(set(HTTP_STATUS), set(REMOTE_CODES))
        self.assertRaises(ValueError, ClientError, "no-such-code", "x")
        self.assertIn("invalid-request", ERROR_CODES)


class CommandCodecTests(SynchronousTestCase):
    def test_submit(self) -> None:
        args = SubmitArgs("prices/btc", b"\x00payload", 12345, b"nonce")
        self.assertEqual(SubmitArgs.decode(args.encode()), args)
        self.assertEqual(args.body(CLIENT), RecordBody(CLIENT, "prices/btc", b"\x00payload", 12345, b"nonce"))
        self.assertRaises(ValueError, SubmitArgs("", b"", 0, b"").encode)
        self.assertRaises(DecodeError, SubmitArgs.decode, b"\x00\x00\x00\x00" + bytes(12))   # empty topic
        self.assertRaises(DecodeError, SubmitArgs.decode, b"\x00\x00\x00\x02\xff\xfe" + bytes(12))  # not UTF-8
        accepted = Accepted(b"\x01" * 32, True, ORIGIN, 9)
        self.assertEqual(Accepted.decode(accepted.encode()), accepted)
        self.assertRaises(DecodeError, Accepted.decode, accepted.encode() + b"\x00")

    def test_record_must_hash_to_its_id(self) -> None:
        r = record()
        self.assertEqual(Record.decode(r.encode()), r)
        self.assertEqual(r.to_json()["payload"], "aGVsbG8=")
        forged = r.encode().replace(b"hello", b"jello")
        e = self.assertRaises(DecodeError, Record.decode, forged)
        self.assertIn(r.record_id.hex()[:16], str(e))

    def test_topic(self) -> None:
        args = TopicArgs("prices/btc", 4, 10)
        self.assertEqual(TopicArgs.decode(args.encode()), args)
        page = TopicPage("prices/btc", 9, 6, [record(b"a", 4), record(b"b", 5)])
        self.assertEqual(TopicPage.decode(page.encode()), page)
        # A count the remaining bytes cannot hold fails before any record is read.
        bad = page.encode()
        head = 4 + len("prices/btc") + 16
        self.assertRaises(DecodeError, TopicPage.decode, bad[:head] + struct.pack(">I", 10000) + bad[head + 4:])

    def test_pubkey_address_must_match_the_output_key(self) -> None:
        internal = pubkey_xonly((5).to_bytes(32, "big"))
        output, _ = taproot_output_key(internal)
        keys = PublicKeys(3, internal, output, p2tr_address(output, "regtest"), "regtest", True)
        self.assertEqual(PublicKeys.decode(keys.encode()), keys)
        excluded = keys._replace(holds_share=False)
        self.assertEqual(PublicKeys.decode(excluded.encode()), excluded)
        self.assertEqual(excluded.to_json()["holds_share"], False)
        self.assertRaises(DecodeError, PublicKeys.decode, keys.encode()[:-1] + b"\x02")
        wrong = keys._replace(address=p2tr_address(internal, "regtest"))
        self.assertRaises(DecodeError, PublicKeys.decode, wrong.encode())
        self.assertRaises(DecodeError, PublicKeys.decode, keys._replace(network="moonnet").encode())

    def test_status_is_json(self) -> None:
        status = {"node": b"\x01" * 2, "origins": {b"\x02": {"have": 1}}, "links": (1, 2)}
        self.assertEqual(decode_status(encode_status(status)),
                         {"node": "0101", "origins": {"02": {"have": 1}}, "links": [1, 2]})
        self.assertRaises(DecodeError, decode_status, b"\x00\x00\x00\x02[]")


class LimitTests(SynchronousTestCase):
    def test_token_bucket(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(bucket.take(100.0), 0.5)
        self.assertAlmostEqual(bucket.take(100.25), 0.25)
        self.assertEqual(bucket.take(100.5), 0.0)
        self.assertFalse(bucket.full(101.0))
        self.assertTrue(bucket.full(102.0))

    def test_a_client_is_its_key_not_its_connection(self) -> None:
        """Connections of one key share one bucket; reconnecting does not refill it."""
        reg = ClientRegistry(ClientLimits(rate=1.0, burst=2, max_in_flight=5))
        a1 = reg.attach(b"A", 0.0)
        a2 = reg.attach(b"A", 0.0)
        self.assertIs(a1, a2)
        self.assertIsNone(reg.admit(a1, 0.0))
        self.assertIsNone(reg.admit(a2, 0.0))
        refused = reg.admit(a1, 0.0)
        self.assertEqual((refused.code, refused.retry_after), ("rate-limited", 1.0))
        reg.done(a1, 0.0)
        reg.done(a2, 0.0)
        reg.detach(a1, 0.0)
        reg.detach(a2, 0.0)
        again = reg.attach(b"A", 0.5)
        self.assertEqual(again.bucket.take(0.5), 0.5)  # still empty-ish: remembered while not full
        reg.detach(again, 0.5)
        reg.attach(b"A", 10.0)
        reg.detach(reg.get(b"A", 10.0), 10.0)
        self.assertEqual(len(reg), 0)  # full bucket, no connection: forgotten

    def test_in_flight_limit(self) -> None:
        reg = ClientRegistry(ClientLimits(rate=100.0, burst=100, max_in_flight=2))
        s = reg.attach(b"B", 0.0)
        self.assertIsNone(reg.admit(s, 0.0))
        self.assertIsNone(reg.admit(s, 0.0))
        refused = reg.admit(s, 0.0)
        self.assertEqual((refused.code, refused.retry_after), ("rate-limited", 0.0))
        self.assertIn("in flight", refused.message)
        reg.done(s, 0.0)
        self.assertIsNone(reg.admit(s, 0.0))

    def test_forgotten_clients_are_bounded(self) -> None:
        reg = ClientRegistry(ClientLimits(rate=0.001, burst=1, max_tracked_clients=3))
        for i in range(10):
            s = reg.attach(i, 0.0)
            reg.admit(s, 0.0)
            reg.done(s, 0.0)
            reg.detach(s, 0.0)
        self.assertEqual(len(reg), 3)

    def test_limits_are_checked(self) -> None:
        self.assertRaises(ValueError, ClientLimits, rate=0)
        self.assertRaises(ValueError, ClientLimits, max_in_flight=True)
        self.assertRaises(ValueError, ClientLimits, max_request_size=2**32)
        self.assertRaises(ValueError, ClientLimits, max_connections_per_address=0)

    def test_default_caps_leave_room_for_other_sources(self) -> None:
        """One source, loopback included, can never take every connection or handshake slot of the port."""
        d = ClientLimits()
        self.assertLess(d.max_connections_per_address, d.max_connections_per_loopback)
        self.assertLess(d.max_connections_per_loopback, d.max_connections)
        self.assertLess(d.max_handshaking_per_address, d.max_handshaking_per_loopback)
        self.assertLess(d.max_handshaking_per_loopback, d.max_handshaking)

    def test_source_of(self) -> None:
        self.assertEqual(source_of(IPv4Address("TCP", "192.0.2.7", 1)), Source("192.0.2.7", False))
        self.assertEqual(source_of(IPv4Address("TCP", "127.0.0.2", 1)), Source("127.0.0.2", True))
        self.assertEqual(source_of(IPv6Address("TCP", "::1", 1)), Source("::1", True))
        self.assertEqual(source_of(IPv6Address("TCP", "::ffff:192.0.2.7", 1)), Source("192.0.2.7", False))
        # One host holds a whole IPv6 /64: its addresses are one source.
        a = source_of(IPv6Address("TCP", "2001:db8:1:2::5", 1))
        b = source_of(IPv6Address("TCP", "2001:db8:1:2:ffff:1:2:3%eth0", 1))
        self.assertEqual((a, b), (Source("2001:db8:1:2::/64", False),) * 2)
        self.assertNotEqual(source_of(IPv6Address("TCP", "2001:db8:1:3::5", 1)), a)
        self.assertEqual(source_of(UNIXAddress(b"/run/frostnode.sock")), Source("local", True))

    def test_address_caps(self) -> None:
        caps = AddressCaps(ClientLimits(max_connections_per_address=2, max_handshaking_per_address=1,
                                        max_connections_per_loopback=3, max_handshaking_per_loopback=3))
        far, near = Source("192.0.2.7", False), Source("127.0.0.1", True)
        caps.opened(far)
        self.assertIn("1 handshakes in progress from 192.0.2.7 (limit 1", caps.refusal(far))
        caps.authenticated(far)
        self.assertIsNone(caps.refusal(far))
        caps.opened(far)
        caps.authenticated(far)
        self.assertIn("2 connections open from 192.0.2.7 (limit 2", caps.refusal(far))
        self.assertTrue(caps.first_refusal(far))
        self.assertFalse(caps.first_refusal(far))  # logged once per flood
        for _ in range(3):
            self.assertIsNone(caps.refusal(near))  # loopback's own, higher caps
            caps.opened(near)
        self.assertIsNotNone(caps.refusal(near))
        caps.closed(far, handshaking=False)
        self.assertEqual(caps.open(far), (1, 0))
        caps.closed(far, handshaking=False)
        for _ in range(3):
            caps.closed(near, handshaking=True)
        self.assertEqual(len(caps), 0)  # nothing kept for a source with nothing open
        caps.opened(far)
        caps.opened(far)
        self.assertTrue(caps.first_refusal(far))  # a new flood is logged again


def run_handshake(initiator: Any, responder: Any) -> None:
    messages = initiator.start()
    sender, receiver = initiator, responder
    while messages:
        replies = []
        for m in messages:
            replies += receiver.receive(m)
        messages = replies
        sender, receiver = receiver, sender


class HandshakeTests(SynchronousTestCase):
    def test_client_and_node_authenticate_each_other(self) -> None:
        node_key, client_key = generate_noise_private_key(), generate_noise_private_key()
        hello = NodeHello(b"\x05" * 32, 1000, 4)
        seen: dict = {}
        node = ClientHandshake(node_key, False, hello.encode(), lambda k, p: seen.update(client=k))
        client = ClientHandshake(client_key, True, encode_client_hello(),
                                 lambda k, p: seen.update(node=k, hello=NodeHello.decode(p)))
        run_handshake(client, node)
        self.assertTrue(client.complete and node.complete)
        self.assertEqual(seen, {"client": noise_public_key(client_key), "node": noise_public_key(node_key),
                                "hello": hello})
        self.assertEqual(node.transport().decrypt(client.transport().encrypt(b"hi")), b"hi")

    def test_refusing_at_message_2_reveals_nothing(self) -> None:
        """A client that refuses the node's key never writes message 3 (its static key)."""
        node = ClientHandshake(generate_noise_private_key(), False, NodeHello(b"\x05" * 32, 1, 1).encode(),
                               lambda k, p: None)

        def refuse(key: bytes, payload: bytes) -> None:
            raise ClientError("wrong-node-key", "not the node we meant")

        client = ClientHandshake(generate_noise_private_key(), True, encode_client_hello(), refuse)
        message2 = node.receive(client.start()[0])
        self.assertRaises(ClientError, client.receive, message2[0])
        self.assertFalse(node.complete)

    def test_peer_link_handshakes_do_not_complete_on_the_client_port(self) -> None:
        """Different prologues: a member dialling the client port (or a client the peer port) fails at message 2."""
        node = ClientHandshake(generate_noise_private_key(), False, NodeHello(b"\x05" * 32, 1, 1).encode(),
                               lambda k, p: None)
        peer = NoiseHandshake(generate_noise_private_key(), True, b"\x01" + bytes(8), lambda k, p: None)
        message2 = node.receive(peer.start()[0])
        self.assertRaises(HandshakeFailed, peer.receive, message2[0])

        client = ClientHandshake(generate_noise_private_key(), True, encode_client_hello(), lambda k, p: None)
        link = NoiseHandshake(generate_noise_private_key(), False, b"\x01" + bytes(8), lambda k, p: None)
        self.assertRaises(HandshakeFailed, client.receive, link.receive(client.start()[0])[0])

    def test_hello_codec(self) -> None:
        self.assertRaises(HandshakeFailed, NodeHello.decode, NodeHello(b"\x05" * 32, 0, 1).encode())
        self.assertRaises(HandshakeFailed, NodeHello.decode, NodeHello(b"\x05" * 32, 1, 1).encode() + b"\x00")


# -- one server connection on a StringTransport, with a Clock ------------------------------------

_PREFIX = struct.Struct(">H")


def _frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = _PREFIX.unpack_from(data)
        out.append(data[2:2 + n])
        data = data[2 + n:]
    return out


class Wire:
    """A server connection and a hand-driven client, over a StringTransport."""

    def __init__(self, factory: ClientServerFactory, client_key: bytes = b"", host: str = "127.0.0.1") -> None:
        address = IPv4Address("TCP", host, 40000)
        self.server = factory.buildProtocol(address)
        assert self.server is not None, f"the factory refused a connection from {host}"
        self.transport = StringTransport(peerAddress=address)
        self.server.makeConnection(self.transport)
        self.hs = ClientHandshake(client_key or generate_noise_private_key(), True, encode_client_hello(),
                                  lambda k, p: None)
        self.cipher: Any = None
        self.reader = FrameReader(1 << 24)

    def handshake(self) -> "Wire":
        for m in self.hs.start():
            self.server.dataReceived(_PREFIX.pack(len(m)) + m)
        for frame in _frames(self._take()):
            for m in self.hs.receive(frame):
                self.server.dataReceived(_PREFIX.pack(len(m)) + m)
        self.cipher = self.hs.transport()
        return self

    def _take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, plaintext: bytes) -> None:
        c = self.cipher.encrypt(plaintext)
        self.server.dataReceived(_PREFIX.pack(len(c)) + c)

    def request(self, request_id: int, command: str, args: bytes = b"") -> None:
        self.send(encode_frame(request_id, encode_request(command, args)))

    def answers(self, clock: Clock) -> dict[int, Any]:
        clock.advance(0)  # answers leave at the end of the turn
        out: dict[int, Any] = {}
        for frame in _frames(self._take()):
            for item in self.reader.feed(self.cipher.decrypt(frame)):
                try:
                    out[item.request_id] = decode_response(item.body)
                except ClientError as e:
                    out[item.request_id] = e
        return out


class ServerTimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sync = SimpleNamespace(log=SimpleNamespace(local=b"\x07" * 32))
        self.limits = ClientLimits(rate=2.0, burst=3, max_in_flight=2, handshake_timeout=5.0, idle_timeout=60.0)
        self.api = NodeAPI(self.sync, self.clock, limits=self.limits)
        self.api.register_command("ping", lambda ctx, args: b"pong:" + args)
        self.waiting: list[Deferred] = []

        def wait(ctx: Any, args: bytes) -> Deferred:
            d: Deferred = Deferred()
            self.waiting.append(d)
            return d

        self.api.register_command("wait", wait)
        self.factory = ClientServerFactory(self.api, generate_noise_private_key(), self.clock, self.limits)

    def test_handshake_timeout(self) -> None:
        wire = Wire(self.factory)
        self.clock.advance(4.9)
        self.assertFalse(wire.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(wire.server.closing)
        self.assertEqual(self.factory.counters.handshakes_failed, 1)

    def test_rate_limit_on_the_injected_clock(self) -> None:
        """Over the burst: rate-limited with the wait; after that wait on the clock, served again."""
        wire = Wire(self.factory).handshake()
        for i in range(1, 6):
            wire.request(i, "ping", b"%d" % i)
        got = wire.answers(self.clock)
        self.assertEqual([got[i] for i in (1, 2, 3)], [b"pong:1", b"pong:2", b"pong:3"])
        for i in (4, 5):
            self.assertEqual((got[i].code, got[i].retry_after), ("rate-limited", 0.5))
        self.clock.advance(0.5)
        wire.request(6, "ping")
        self.assertEqual(wire.answers(self.clock), {6: b"pong:"})
        self.assertFalse(wire.server.closing)

    def test_in_flight_limit_and_any_order_answers(self) -> None:
        wire = Wire(self.factory).handshake()
        wire.request(1, "wait")
        wire.request(2, "wait")
        wire.request(3, "wait")
        got = wire.answers(self.clock)
        self.assertEqual(list(got), [3])
        self.assertIn("in flight", got[3].message)
        self.waiting[1].callback(b"second")
        self.assertEqual(wire.answers(self.clock), {2: b"second"})
        self.waiting[0].callback(b"first")
        self.assertEqual(wire.answers(self.clock), {1: b"first"})

    def test_malformed_request_keeps_the_connection(self) -> None:
        wire = Wire(self.factory).handshake()
        wire.send(encode_frame(1, b"\x01\x00"))
        wire.request(2, "nope")
        wire.request(3, "ping")
        got = wire.answers(self.clock)
        self.assertEqual(got[1].code, "invalid-request")
        self.assertEqual(got[2].code, "invalid-request")
        self.assertIn("unknown command 'nope'", got[2].message)
        self.assertEqual(got[3], b"pong:")

    def test_undecryptable_frame_closes_only_this_connection(self) -> None:
        wire = Wire(self.factory).handshake()
        other = Wire(self.factory).handshake()
        wire.server.dataReceived(_PREFIX.pack(40) + os.urandom(40))
        self.assertTrue(wire.server.closing)
        self.assertEqual(self.factory.counters.violations, 1)
        other.request(1, "ping")
        self.assertEqual(other.answers(self.clock), {1: b"pong:"})

    def test_idle_timeout_waits_for_answers_in_flight(self) -> None:
        wire = Wire(self.factory).handshake()
        wire.request(1, "wait")
        self.clock.advance(61)
        self.assertFalse(wire.server.closing)
        self.waiting[0].callback(b"done")
        self.clock.advance(60)
        self.assertTrue(wire.server.closing)
        self.assertEqual(wire.server.close_reason, "idle")


class AddressCapServerTests(SynchronousTestCase):
    """
    The per-address caps in the server's accept path (StringTransport peers):
    fresh keys from one address fill that address's share, not the port.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limits = ClientLimits(max_connections=6, max_handshaking=4, max_connections_per_address=3,
                                   max_handshaking_per_address=2, max_connections_per_loopback=5,
                                   max_handshaking_per_loopback=3)
        self.api = NodeAPI(SimpleNamespace(log=SimpleNamespace(local=b"\x07" * 32)), self.clock, limits=self.limits)
        self.api.register_command("ping", lambda ctx, args: b"pong")
        self.factory = ClientServerFactory(self.api, generate_noise_private_key(), self.clock, self.limits)

    def refused(self, host: str) -> bool:
        return self.factory.buildProtocol(IPv4Address("TCP", host, 40001)) is None

    def test_fresh_keys_from_one_address_do_not_lock_out_another(self) -> None:
        with capturedLogs() as events:
            flood = [Wire(self.factory, host="198.51.100.9").handshake() for _ in range(3)]
            for _ in range(20):
                self.assertTrue(self.refused("198.51.100.9"))
        self.assertEqual((self.factory.counters.refused, self.factory.counters.refused_by_address), (20, 20))
        warnings = [e for e in events if e.get("source") == "198.51.100.9"]
        self.assertEqual(len(warnings), 1)  # a flood is one log line
        self.assertIn("3 connections open from 198.51.100.9", warnings[0]["reason"])
        other = Wire(self.factory, host="203.0.113.5").handshake()
        other.request(1, "ping")
        self.assertEqual(other.answers(self.clock), {1: b"pong"})
        flood[0].server.connectionLost(None)  # one closes: that address may open one more
        Wire(self.factory, host="198.51.100.9")

    def test_unfinished_handshakes_from_one_address_do_not_lock_out_another(self) -> None:
        stalled = [Wire(self.factory, host="198.51.100.9") for _ in range(2)]
        self.assertTrue(self.refused("198.51.100.9"))
        self.assertEqual(len(self.factory.handshaking), 2)  # under the port's 4
        other = Wire(self.factory, host="203.0.113.5").handshake()
        other.request(1, "ping")
        self.assertEqual(other.answers(self.clock), {1: b"pong"})
        self.clock.advance(self.limits.handshake_timeout)  # the stalled ones time out and free their slots
        for wire in stalled:
            self.assertTrue(wire.transport.disconnecting)
            wire.server.connectionLost(None)  # what the reactor does once the socket is closed
        self.assertEqual(self.factory.address_caps.open(source_of(IPv4Address("TCP", "198.51.100.9", 1))), (0, 0))
        self.assertFalse(self.refused("198.51.100.9"))

    def test_loopback_has_higher_caps_and_each_address_its_own(self) -> None:
        for _ in range(5):
            Wire(self.factory, host="127.0.0.1").handshake()
        self.assertTrue(self.refused("127.0.0.1"))
        Wire(self.factory, host="127.0.0.2").handshake()
        self.assertTrue(self.refused("203.0.113.5"))  # now the port's own cap of 6 applies to everyone
