"""
The Noise XX wrapper: mutual authentication, the remote key read despite
noiseprotocol dropping its handshake state, replayed handshakes failing,
prologues keeping protocols apart, the 65,519-byte plaintext cap, and
tampering detected.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.net.errors import DecryptionFailed, HandshakeFailed, PeerRefused
from frostnode.net.noise import (
    MAX_NOISE_MESSAGE, MAX_PLAINTEXT, PROLOGUE, NoiseHandshake, generate_noise_private_key, noise_public_key,
)


def run(initiator: NoiseHandshake, responder: NoiseHandshake) -> list[bytes]:
    """Drive a handshake to completion; return the initiator's messages."""
    sent = []
    messages = initiator.start()
    for_responder = True
    while messages:
        nxt = []
        for m in messages:
            if for_responder:
                sent.append(m)
            nxt += (responder if for_responder else initiator).receive(m)
        messages = nxt
        for_responder = not for_responder
    return sent


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ikey, self.rkey = generate_noise_private_key(), generate_noise_private_key()
        self.seen: dict[str, tuple[bytes, bytes]] = {}

    def pair(self) -> tuple[NoiseHandshake, NoiseHandshake]:
        i = NoiseHandshake(self.ikey, True, b"hello-i", lambda k, p: self.seen.__setitem__("i", (k, p)))
        r = NoiseHandshake(self.rkey, False, b"hello-r", lambda k, p: self.seen.__setitem__("r", (k, p)))
        return i, r

    def test_mutual_authentication_and_payloads(self) -> None:
        i, r = self.pair()
        run(i, r)
        self.assertTrue(i.complete and r.complete)
        self.assertEqual(self.seen["i"], (noise_public_key(self.rkey), b"hello-r"))
        self.assertEqual(self.seen["r"], (noise_public_key(self.ikey), b"hello-i"))
        self.assertEqual(r.remote_static, noise_public_key(self.ikey))
        ti, tr = i.transport(), r.transport()
        self.assertEqual(tr.decrypt(ti.encrypt(b"ping")), b"ping")
        self.assertEqual(ti.decrypt(tr.encrypt(b"pong")), b"pong")

    def test_replayed_handshake_fails(self) -> None:
        """Messages 1 and 3 captured from a good session do not complete a new one."""
        i, r = self.pair()
        captured = run(i, r)
        self.assertEqual(len(captured), 2)
        _, fresh = self.pair()
        fresh.receive(captured[0])
        with self.assertRaises(HandshakeFailed) as cm:
            fresh.receive(captured[1])
        self.assertIn("message 3 failed authentication", str(cm.exception))
        self.assertFalse(fresh.complete)

    def test_initiator_refuses_before_revealing_itself(self) -> None:
        """An initiator that rejects the responder's key sends no message 3."""
        def refuse(key: bytes, payload: bytes) -> None:
            raise PeerRefused("not who we dialled", key)
        i = NoiseHandshake(self.ikey, True, b"", refuse)
        _, r = self.pair()
        msg2 = r.receive(i.start()[0])[0]
        self.assertRaises(PeerRefused, i.receive, msg2)
        self.assertFalse(i.complete)

    def test_prologue(self) -> None:
        """
        Another protocol reuses the handshake with its own prologue: equal
        prologues complete, and a mismatch (a client dialling a peer port)
        fails at message 2, before the initiator reveals its static key.
        """
        other = b"frostnode client v1"
        i = NoiseHandshake(self.ikey, True, b"hello-i", lambda k, p: None, prologue=other)
        r = NoiseHandshake(self.rkey, False, b"hello-r", lambda k, p: None, prologue=other)
        run(i, r)
        self.assertTrue(i.complete and r.complete)
        self.assertEqual(r.transport().decrypt(i.transport().encrypt(b"over the other port")), b"over the other port")

        i = NoiseHandshake(self.ikey, True, b"", lambda k, p: self.fail("authenticated across prologues"),
                           prologue=other)
        _, r = self.pair()
        self.assertEqual(r.prologue, PROLOGUE)
        message2 = r.receive(i.start()[0])[0]
        with self.assertRaises(HandshakeFailed) as cm:
            i.receive(message2)
        self.assertIn("handshake message 2 failed authentication", str(cm.exception))
        self.assertIn("'frostnode client v1'", str(cm.exception))
        self.assertFalse(i.complete)

        for bad in (b"", "frostnode client v1"):
            self.assertRaises(ValueError, NoiseHandshake, self.ikey, True, b"", lambda k, p: None, prologue=bad)

    def test_garbage_and_unexpected_payload(self) -> None:
        _, r = self.pair()
        self.assertRaises(HandshakeFailed, r.receive, b"short")
        _, r = self.pair()
        i, _ = self.pair()
        with self.assertRaises(HandshakeFailed) as cm:
            r.receive(i.start()[0] + b"extra")
        self.assertIn("5 unexpected payload bytes", str(cm.exception))
        _, r = self.pair()
        self.assertRaises(HandshakeFailed, r.receive, b"x" * 2000)


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        i = NoiseHandshake(generate_noise_private_key(), True, b"", lambda k, p: None)
        r = NoiseHandshake(generate_noise_private_key(), False, b"", lambda k, p: None)
        run(i, r)
        self.a, self.b = i.transport(), r.transport()

    def test_plaintext_cap_keeps_messages_under_the_noise_limit(self) -> None:
        ct = self.a.encrypt(b"x" * MAX_PLAINTEXT)
        self.assertEqual(len(ct), MAX_NOISE_MESSAGE)
        self.assertEqual(self.b.decrypt(ct), b"x" * MAX_PLAINTEXT)
        self.assertRaises(ValueError, self.a.encrypt, b"x" * (MAX_PLAINTEXT + 1))

    def test_tampered_frame(self) -> None:
        ct = bytearray(self.a.encrypt(b"secret"))
        ct[0] ^= 1
        self.assertRaises(DecryptionFailed, self.b.decrypt, bytes(ct))

    def test_replayed_transport_frame(self) -> None:
        ct = self.a.encrypt(b"once")
        self.assertEqual(self.b.decrypt(ct), b"once")
        self.assertRaises(DecryptionFailed, self.b.decrypt, ct)
