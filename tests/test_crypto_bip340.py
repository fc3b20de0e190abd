"""
Tests for L{frostnode.crypto.bip340}: the BIP340 vectors through our
wrappers, the BIP341 wallet vectors (output keys, scriptPubKeys, bech32m
addresses, key-path secret tweaks) and the BIP350 bech32m test strings.
"""

from __future__ import annotations

import csv

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto import bip340
from frostnode.crypto.bip340 import Encoding
from tests.vectors import load_json, vector_path

h = bytes.fromhex


class SchnorrTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(vector_path("bip340/test-vectors.csv"), newline="") as f:
            self.rows = list(csv.DictReader(f))
        self.assertEqual(len(self.rows), 19)

    def test_verify_vectors(self) -> None:
        """schnorr_verify agrees with every row's verification result, invalid keys included."""
        for row in self.rows:
            with self.subTest(index=row["index"], comment=row["comment"]):
                got = bip340.schnorr_verify(h(row["message"]), h(row["public key"]), h(row["signature"]))
                self.assertEqual(got, row["verification result"] == "TRUE")

    def test_sign_vectors(self) -> None:
        """Rows with a secret key: the key's x-only pubkey and the exact signature (any message length)."""
        signing = [r for r in self.rows if r["secret key"]]
        self.assertEqual(len(signing), 8)
        self.assertEqual({len(r["message"]) // 2 for r in signing}, {0, 1, 17, 32, 100})
        for row in signing:
            seckey = h(row["secret key"])
            with self.subTest(index=row["index"]):
                self.assertEqual(bip340.pubkey_xonly(seckey), h(row["public key"]))
                self.assertEqual(bip340.schnorr_sign(h(row["message"]), seckey, h(row["aux_rand"])), h(row["signature"]))

    def test_malformed_is_false(self) -> None:
        row = self.rows[0]
        msg, pk, sig = h(row["message"]), h(row["public key"]), h(row["signature"])
        self.assertTrue(bip340.schnorr_verify(msg, pk, sig))
        self.assertFalse(bip340.schnorr_verify(msg, pk[:31], sig))
        self.assertFalse(bip340.schnorr_verify(msg, pk, sig[:63]))
        self.assertFalse(bip340.schnorr_verify(msg, b"\xff" * 32, sig))

    def test_sign_rejects_bad_inputs(self) -> None:
        self.assertRaises(ValueError, bip340.schnorr_sign, bytes(32), bytes(32), bytes(32))
        self.assertRaises(ValueError, bip340.schnorr_sign, bytes(32), b"\x01" * 32, bytes(31))


class TaprootTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load_json("bip341/wallet-test-vectors.json")

    def test_script_pubkey_vectors(self) -> None:
        """tweak, output key, scriptPubKey and mainnet bech32m address of all seven outputs."""
        self.assertEqual(len(self.data["scriptPubKey"]), 7)
        for n, case in enumerate(self.data["scriptPubKey"]):
            internal = h(case["given"]["internalPubkey"])
            inter = case["intermediary"]
            root = None if inter["merkleRoot"] is None else h(inter["merkleRoot"])
            with self.subTest(case=n):
                self.assertEqual(bip340.taptweak(internal, root), h(inter["tweak"]))
                output_key, _parity = bip340.taproot_output_key(internal, root)
                self.assertEqual(output_key, h(inter["tweakedPubkey"]))
                spk = bip340.p2tr_script_pubkey(output_key)
                self.assertEqual(spk, h(case["expected"]["scriptPubKey"]))
                address = bip340.p2tr_address(output_key)
                self.assertEqual(address, case["expected"]["bip350Address"])
                self.assertEqual(bip340.segwit_address_decode("bc", address), (1, output_key))

    def test_control_block_parity(self) -> None:
        """The parity bit of the output key matches the control blocks' leaf-version byte."""
        checked = 0
        for case in self.data["scriptPubKey"]:
            blocks = case["expected"].get("scriptPathControlBlocks")
            if not blocks:
                continue
            inter = case["intermediary"]
            _key, parity = bip340.taproot_output_key(h(case["given"]["internalPubkey"]), h(inter["merkleRoot"]))
            for block in blocks:
                self.assertEqual(h(block)[0] & 1, parity)
                checked += 1
        self.assertGreater(checked, 0)

    def test_key_path_spending_tweaks(self) -> None:
        """internalPrivkey -> internalPubkey, tweak and tweakedPrivkey for every key-path input."""
        inputs = self.data["keyPathSpending"][0]["inputSpending"]
        self.assertEqual(len(inputs), 7)
        for case in inputs:
            given, inter = case["given"], case["intermediary"]
            seckey = h(given["internalPrivkey"])
            root = None if given["merkleRoot"] is None else h(given["merkleRoot"])
            with self.subTest(txin=given["txinIndex"]):
                internal = bip340.pubkey_xonly(seckey)
                self.assertEqual(internal, h(inter["internalPubkey"]))
                self.assertEqual(bip340.taptweak(internal, root), h(inter["tweak"]))
                tweaked = bip340.taproot_tweak_seckey(seckey, root)
                self.assertEqual(tweaked, h(inter["tweakedPrivkey"]))
                self.assertEqual(bip340.pubkey_xonly(tweaked), bip340.taproot_output_key(internal, root)[0])

    def test_networks(self) -> None:
        key = h(self.data["scriptPubKey"][0]["intermediary"]["tweakedPubkey"])
        self.assertTrue(bip340.p2tr_address(key, "mainnet").startswith("bc1p"))
        self.assertEqual(bip340.p2tr_address(key, "testnet"), bip340.p2tr_address(key, "signet"))
        self.assertTrue(bip340.p2tr_address(key, "testnet").startswith("tb1p"))
        self.assertTrue(bip340.p2tr_address(key, "regtest").startswith("bcrt1p"))
        self.assertRaises(ValueError, bip340.p2tr_address, key, "litecoin")
        self.assertRaises(ValueError, bip340.p2tr_address, key[:31])

    def test_bad_tweak_inputs(self) -> None:
        self.assertRaises(ValueError, bip340.taptweak, bytes(33))
        self.assertRaises(ValueError, bip340.taptweak, bytes(32), bytes(31))
        # an x coordinate with no curve point
        self.assertRaises(ValueError, bip340.taproot_output_key, b"\xff" * 32)


# BIP350 "Test vectors" section.
VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]

INVALID_BECH32M = [
    "\x201xj0phk",
    "\x7f1g6xzxy",
    "\x801vctc34",
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
    "qyrz8wqd2c9m",
    "1qyrz8wqd2c9m",
    "y1b0jsk6g",
    "lt1igcx5c0",
    "in1muywd",
    "mm1crxm3i",
    "au1s5cgom",
    "M1VUXWEZ",
    "16plkw9",
    "1p2gdwpf",
]

VALID_ADDRESSES = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
]

INVALID_ADDRESSES = [
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",
    "bc1pw5dgrnzv",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",
    "bc1gmk9yu",
]


def _script_pubkey(witver: int, prog: bytes) -> bytes:
    return bytes((witver + 0x50 if witver else 0, len(prog))) + prog


class Bech32mTests(SynchronousTestCase):
    def test_valid_strings(self) -> None:
        """Each BIP350 string decodes as bech32m and re-encodes to its lower-case form."""
        for s in VALID_BECH32M:
            with self.subTest(s=s):
                hrp, data, spec = bip340.bech32_decode(s)
                self.assertIs(spec, Encoding.BECH32M)
                self.assertEqual(bip340.bech32_encode(hrp, data, Encoding.BECH32M), s.lower())

    def test_invalid_strings(self) -> None:
        for s in INVALID_BECH32M:
            with self.subTest(s=s):
                self.assertRaises(ValueError, bip340.bech32_decode, s)

    def test_valid_addresses(self) -> None:
        """Each address decodes to its scriptPubKey and encodes back (lower case)."""
        for addr, spk_hex in VALID_ADDRESSES:
            hrp = "tb" if addr.lower().startswith("tb") else "bc"
            with self.subTest(addr=addr):
                witver, prog = bip340.segwit_address_decode(hrp, addr)
                self.assertEqual(_script_pubkey(witver, prog), h(spk_hex))
                self.assertEqual(bip340.segwit_address_encode(hrp, witver, prog), addr.lower())

    def test_invalid_addresses(self) -> None:
        for addr in INVALID_ADDRESSES:
            for hrp in ("bc", "tb"):
                with self.subTest(addr=addr, hrp=hrp):
                    self.assertRaises(ValueError, bip340.segwit_address_decode, hrp, addr)

    def test_encode_rejects_bad_programs(self) -> None:
        self.assertRaises(ValueError, bip340.segwit_address_encode, "bc", 17, bytes(32))
        self.assertRaises(ValueError, bip340.segwit_address_encode, "bc", 0, bytes(21))
        self.assertRaises(ValueError, bip340.segwit_address_encode, "bc", 1, bytes(41))
