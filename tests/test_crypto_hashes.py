"""
Tests for L{frostnode.crypto.hashes} against published vectors: RFC 9380
Appendix K.1 for expand_message_xmd and BIP 341's wallet vectors for the
tagged hash.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.group import N, base_mul, lift_x
from frostnode.crypto.hashes import expand_message_xmd, hash_to_field, tagged_hash
from tests.vectors import load_json

XMD_FILES = (
    "rfc9380-expand-message-xmd/ietf_h2c_rfc9380_expand_message_xmd_SHA256_38.json",
    "rfc9380-expand-message-xmd/ietf_h2c_rfc9380_expand_message_xmd_SHA256_256.json",
)


class ExpandMessageXmdTests(SynchronousTestCase):
    def test_rfc9380_vectors(self) -> None:
        """All 20 Appendix K.1 cases, including the oversized (>255 byte) DST file."""
        count = 0
        for rel in XMD_FILES:
            suite = load_json(rel)
            dst = suite["DST"].encode()
            for case in suite["tests"]:
                out = expand_message_xmd(case["msg"].encode(), dst, int(case["len_in_bytes"], 16))
                self.assertEqual(out.hex(), case["uniform_bytes"], f"{rel}: msg {case['msg'][:16]!r}")
                count += 1
        self.assertEqual(count, 20)

    def test_long_dst_is_hashed(self) -> None:
        """RFC 9380 5.3.3: a DST over 255 bytes is replaced by H("H2C-OVERSIZE-DST-" || DST)."""
        import hashlib

        dst = b"D" * 256
        short = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
        self.assertEqual(expand_message_xmd(b"m", dst, 48), expand_message_xmd(b"m", short, 48))
        self.assertNotEqual(expand_message_xmd(b"m", dst, 48), expand_message_xmd(b"m", dst[:255], 48))

    def test_too_long_output_rejected(self) -> None:
        self.assertRaises(ValueError, expand_message_xmd, b"", b"DST", 255 * 32 + 1)
        self.assertEqual(len(expand_message_xmd(b"", b"DST", 255 * 32)), 255 * 32)

    def test_hash_to_field_uses_48_bytes(self) -> None:
        """L = ceil((256 + 128) / 8) = 48 uniform bytes, reduced mod N."""
        dst = b"QUUX-V01-CS02-with-expander-SHA256-128"
        expected = int.from_bytes(expand_message_xmd(b"abc", dst, 48), "big") % N
        self.assertEqual(hash_to_field(b"abc", dst), expected)
        self.assertLess(hash_to_field(b"abc", dst), N)


class TaggedHashTests(SynchronousTestCase):
    def test_bip341_taptweak_vectors(self) -> None:
        """t = hash_TapTweak(internal key || merkle root) and Q = lift_x(P) + t*G."""
        vectors = load_json("bip341/wallet-test-vectors.json")["scriptPubKey"]
        self.assertEqual(len(vectors), 7)
        for case in vectors:
            internal = bytes.fromhex(case["given"]["internalPubkey"])
            root = case["intermediary"]["merkleRoot"]
            tweak = tagged_hash("TapTweak", internal + (bytes.fromhex(root) if root else b""))
            self.assertEqual(tweak.hex(), case["intermediary"]["tweak"])
            q = lift_x(internal) + base_mul(int.from_bytes(tweak, "big"))
            self.assertEqual(q.xbytes().hex(), case["intermediary"]["tweakedPubkey"])

    def test_tags_are_separated(self) -> None:
        """The cached prefix for one tag must not leak into another tag's hash."""
        a = tagged_hash("TapTweak", b"x")
        self.assertNotEqual(tagged_hash("TapLeaf", b"x"), a)
        self.assertEqual(tagged_hash("TapTweak", b"x"), a)
