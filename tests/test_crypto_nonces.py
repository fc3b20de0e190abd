"""
Tests for L{frostnode.crypto.nonces.SecretNonce}: a nonce is handed out once
and cannot escape through copies, pickles or reprs.
"""

from __future__ import annotations

import copy
import pickle

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.errors import NonceReuseError
from frostnode.crypto.nonces import SecretNonce

K1 = 0x1111111111111111111111111111111111111111111111111111111111111111
K2 = 0x2222222222222222222222222222222222222222222222222222222222222222
COMMITMENT = bytes(range(66))


class SecretNonceTests(SynchronousTestCase):
    def test_consume_once(self) -> None:
        nonce = SecretNonce(K1, K2, COMMITMENT)
        self.assertFalse(nonce.spent)
        self.assertEqual(nonce.consume(), (K1, K2))
        self.assertTrue(nonce.spent)
        self.assertRaises(NonceReuseError, nonce.consume)
        self.assertRaises(NonceReuseError, nonce.peek_for_persistence)

    def test_peek_does_not_consume(self) -> None:
        nonce = SecretNonce(K1, K2, COMMITMENT)
        self.assertEqual(nonce.peek_for_persistence(), (K1, K2))
        self.assertEqual(nonce.consume(), (K1, K2))

    def test_from_persisted_is_a_fresh_single_use_nonce(self) -> None:
        nonce = SecretNonce.from_persisted(K1, K2, COMMITMENT)
        self.assertEqual(nonce.commitment, COMMITMENT)
        nonce.consume()
        self.assertRaises(NonceReuseError, nonce.consume)

    def test_not_picklable(self) -> None:
        nonce = SecretNonce(K1, K2, COMMITMENT)
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            self.assertRaises(TypeError, pickle.dumps, nonce, protocol)
        self.assertFalse(nonce.spent)

    def test_not_copyable(self) -> None:
        nonce = SecretNonce(K1, K2, COMMITMENT)
        self.assertRaises(TypeError, copy.copy, nonce)
        self.assertRaises(TypeError, copy.deepcopy, nonce)
        self.assertRaises(TypeError, copy.deepcopy, {"nonces": [nonce]})

    def test_no_attribute_smuggling(self) -> None:
        """__slots__: no __dict__ for vars() or a debugger-friendly dump to expose."""
        nonce = SecretNonce(K1, K2, COMMITMENT)
        self.assertRaises(TypeError, vars, nonce)
        self.assertRaises(AttributeError, setattr, nonce, "backup", (K1, K2))

    def test_repr_redacted(self) -> None:
        nonce = SecretNonce(K1, K2, COMMITMENT)
        for text in (repr(nonce), str(nonce), f"{nonce}", repr([nonce])):
            self.assertNotIn("1111", text)
            self.assertNotIn("2222", text)
            self.assertNotIn(str(K1), text)
            self.assertIn("redacted", text)
        nonce.consume()
        self.assertIn("spent", repr(nonce))


class PersistenceHandOffTests(SynchronousTestCase):
    def test_take_for_persistence_leaves_no_live_copy(self):
        from frostnode.crypto.nonces import SecretNonce

        nonce = SecretNonce(5, 7, b"\x02" * 66)
        self.assertEqual(nonce.take_for_persistence(), (5, 7))
        self.assertTrue(nonce.spent)
        self.assertRaises(NonceReuseError, nonce.consume)
