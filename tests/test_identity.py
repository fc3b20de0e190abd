"""
Address cards and the member directory: a card binds a Noise key and
addresses to a host key, any change to a signed field breaks it, malformed
cards (including ones the encoding cannot hold) fail as L{InvalidCard}, and
the directory holds only verified, distinct members in host-key order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from frostnode.identity import (
    MAX_ADDRESS_BYTES, MAX_ADDRESSES, AddressCard, HostKeypair, InvalidCard, MemberDirectory,
    verify_host_signature,
)
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from tests.vectors import vector_path

ADDRESSES = ("tcp:10.0.0.1:9735", "tcp:[2001:db8::1]:9735", "tcp:host=n\u00f6de.example:port=9735")


def make_card(addresses=ADDRESSES, host: HostKeypair | None = None, noise_key: bytes | None = None) -> AddressCard:
    host = host if host is not None else HostKeypair.generate()
    noise_key = noise_key if noise_key is not None else noise_public_key(generate_noise_private_key())
    return AddressCard.create(host, noise_key, addresses)


class HostKeyTests(SynchronousTestCase):
    def test_public_key_and_redacted_repr(self) -> None:
        host = HostKeypair.generate()
        self.assertEqual(len(host.public), 32)
        self.assertIn(host.public.hex(), repr(host))
        self.assertNotIn(host.secret.hex(), repr(host))

    def test_sign_and_verify(self) -> None:
        host = HostKeypair.generate()
        msg = b"\x42" * 32
        sig = host.sign(msg)
        self.assertTrue(verify_host_signature(host.public, msg, sig))
        self.assertFalse(verify_host_signature(host.public, b"\x43" * 32, sig))
        self.assertFalse(verify_host_signature(HostKeypair.generate().public, msg, sig))
        self.assertFalse(verify_host_signature(host.public, msg, sig[:63]))
        self.assertFalse(verify_host_signature(host.public[:31], msg, sig))

    def test_verification_follows_bip340_vectors(self) -> None:
        """Every 32-byte-message row of the BIP340 vectors, invalid keys and signatures included."""
        with open(vector_path("bip340/test-vectors.csv"), newline="") as f:
            rows = [r for r in csv.DictReader(f) if len(r["message"]) == 64]
        self.assertGreater(len(rows), 10)
        for r in rows:
            got = verify_host_signature(bytes.fromhex(r["public key"]), bytes.fromhex(r["message"]),
                                        bytes.fromhex(r["signature"]))
            self.assertEqual(got, r["verification result"] == "TRUE", f"vector {r['index']}")


class CardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.host = HostKeypair.generate()
        self.noise_key = noise_public_key(generate_noise_private_key())
        self.card = AddressCard.create(self.host, self.noise_key, ADDRESSES)

    def test_create_and_verify(self) -> None:
        self.card.verify()
        self.assertEqual(self.card.host_key, self.host.public)
        self.assertEqual(self.card.noise_key, self.noise_key)
        self.assertEqual(self.card.addresses, ADDRESSES)
        self.assertEqual(self.card.short(), self.host.public.hex()[:12])

    def test_json_round_trip(self) -> None:
        text = self.card.to_json()
        self.assertEqual(AddressCard.from_json(text), self.card)
        self.assertEqual(AddressCard.from_dict(json.loads(text)), self.card)
        self.assertEqual(json.loads(text), {
            "version": 1, "host_key": self.host.public.hex(), "noise_key": self.noise_key.hex(),
            "addresses": list(ADDRESSES), "signature": self.card.signature.hex(),
        })

    def test_unknown_fields_are_ignored(self) -> None:
        """Other tools add their own fields (the client library reads C{client_addresses})."""
        d = dict(self.card.to_dict(), client_addresses=["tcp:10.0.0.1:9800"])
        self.assertEqual(AddressCard.from_dict(d), self.card)

    def test_no_addresses(self) -> None:
        card = AddressCard.create(self.host, self.noise_key, [])
        self.assertEqual(AddressCard.from_json(card.to_json()), card)

    def assertInvalid(self, card: AddressCard, *expected: str) -> None:
        with self.assertRaises(InvalidCard) as cm:
            card.verify()
        for text in expected:
            self.assertIn(text, str(cm.exception))
        # The same card arriving as JSON is refused too.
        with self.assertRaises(InvalidCard):
            AddressCard.from_json(json.dumps(card.to_dict()))

    def test_tampered_fields_fail(self) -> None:
        bad_signature = f"card for host key {self.host.public.hex()} has an invalid binding signature"
        other_noise = noise_public_key(generate_noise_private_key())
        flipped = bytes([self.card.signature[0] ^ 1]) + self.card.signature[1:]
        for tampered in [
            replace(self.card, noise_key=other_noise),
            replace(self.card, addresses=ADDRESSES[:2]),
            replace(self.card, addresses=ADDRESSES + ("tcp:evil.example:1",)),
            replace(self.card, addresses=(ADDRESSES[1], ADDRESSES[0], ADDRESSES[2])),
            replace(self.card, addresses=("tcp:10.0.0.2:9735",) + ADDRESSES[1:]),
            replace(self.card, signature=flipped),
        ]:
            self.assertInvalid(tampered, bad_signature)

    def test_another_host_key_fails(self) -> None:
        """A valid card's fields under someone else's host key: the signature is not theirs."""
        other = HostKeypair.generate().public
        self.assertInvalid(replace(self.card, host_key=other), f"card for host key {other.hex()}")

    def test_host_key_not_on_the_curve(self) -> None:
        # BIP340 vector 5's public key: no point has this x coordinate.
        off_curve = bytes.fromhex("EEFDEA4CDB677750A420FEE807EACF21EB9898AE79B9768766E4FAA04A2D4A34")
        self.assertInvalid(replace(self.card, host_key=off_curve), "invalid binding signature")

    def test_wrong_field_lengths(self) -> None:
        self.assertInvalid(replace(self.card, noise_key=self.noise_key[:31]), "Noise key 31")
        self.assertInvalid(replace(self.card, host_key=self.card.host_key + b"\x00"), "host key 33")
        self.assertInvalid(replace(self.card, signature=self.card.signature[:63]), "signature 63")
        self.assertRaises(InvalidCard, AddressCard.create, self.host, self.noise_key[:31], ADDRESSES)

    def test_malformed_json(self) -> None:
        good = self.card.to_dict()
        cases = {
            "not json": "card is not JSON",
            "[]": "card must be a JSON object",
            json.dumps(dict(good, version=2)): "unsupported card version 2",
            json.dumps(dict(good, version=True)): "unsupported card version True",
            json.dumps(dict(good, addresses="tcp:10.0.0.1:1")): "addresses must be a list of strings",
            json.dumps(dict(good, addresses=[1])): "addresses must be a list of strings",
            json.dumps(dict(good, host_key="zz")): "malformed card",
            json.dumps(dict(good, signature=None)): "malformed card",
            json.dumps({k: v for k, v in good.items() if k != "noise_key"}): "malformed card",
        }
        for text, expected in cases.items():
            with self.assertRaises(InvalidCard, msg=text) as cm:
                AddressCard.from_json(text)
            self.assertIn(expected, str(cm.exception))
        with self.assertRaises(InvalidCard) as cm:
            AddressCard.from_dict(["not", "a", "table"])  # type: ignore[arg-type]
        self.assertIn("not a list", str(cm.exception))

    def test_address_count_over_the_encoding_limit(self) -> None:
        """65,536 addresses do not fit the 2-byte count: InvalidCard, not OverflowError."""
        many = ("",) * (MAX_ADDRESSES + 1)
        with self.assertRaises(InvalidCard) as cm:
            AddressCard.create(self.host, self.noise_key, many)
        self.assertIn(f"card lists {MAX_ADDRESSES + 1} addresses; at most {MAX_ADDRESSES}", str(cm.exception))
        self.assertInvalid(replace(self.card, addresses=many), "at most 65535")

    def test_address_length_over_the_encoding_limit(self) -> None:
        """An address of 65,536 UTF-8 bytes does not fit its 2-byte length: InvalidCard."""
        long = "tcp:" + "\u00e9" * ((MAX_ADDRESS_BYTES - 4) // 2) + "ab"   # 65,536 bytes, 32,768 characters
        self.assertEqual(len(long.encode("utf-8")), MAX_ADDRESS_BYTES + 1)
        with self.assertRaises(InvalidCard) as cm:
            AddressCard.create(self.host, self.noise_key, ["tcp:10.0.0.1:1", long])
        self.assertIn("card address 1 is 65536 bytes long", str(cm.exception))
        self.assertInvalid(replace(self.card, addresses=(long,)), "card address 0 is 65536 bytes long")

    def test_encoding_limits_themselves_are_accepted(self) -> None:
        card = AddressCard.create(self.host, self.noise_key, ("",) * MAX_ADDRESSES)
        card.verify()
        longest = "x" * MAX_ADDRESS_BYTES
        card = AddressCard.create(self.host, self.noise_key, [longest])
        self.assertEqual(AddressCard.from_json(card.to_json()).addresses, (longest,))

    def test_unencodable_address(self) -> None:
        """JSON can carry a lone surrogate, which has no UTF-8 encoding: InvalidCard, not UnicodeEncodeError."""
        text = self.card.to_json().replace('"tcp:10.0.0.1:9735"', '"tcp:\\ud800:1"')
        with self.assertRaises(InvalidCard) as cm:
            AddressCard.from_json(text)
        self.assertIn("card address 0 is not valid Unicode", str(cm.exception))
        self.assertRaises(InvalidCard, AddressCard.create, self.host, self.noise_key, ["\ud800"])


class DirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cards = [make_card() for _ in range(5)]

    def test_sorted_by_host_key_with_lookups(self) -> None:
        directory = MemberDirectory(reversed(self.cards))
        keys = sorted(c.host_key for c in self.cards)
        self.assertEqual(directory.host_keys(), keys)
        self.assertEqual([c.host_key for c in directory], keys)
        self.assertEqual(len(directory), 5)
        for c in self.cards:
            self.assertIn(c.host_key, directory)
            self.assertIs(directory.by_host_key(c.host_key), c)
            self.assertIs(directory.by_noise_key(c.noise_key), c)
        stranger = make_card()
        self.assertNotIn(stranger.host_key, directory)
        self.assertIsNone(directory.by_host_key(stranger.host_key))
        self.assertIsNone(directory.by_noise_key(stranger.noise_key))
        self.assertIsNone(directory.by_noise_key(self.cards[0].host_key))   # keys are not interchangeable

    def test_duplicate_host_key_refused(self) -> None:
        """Two valid cards for one host (say, an old and a new Noise key): ambiguous, refused."""
        host = HostKeypair.generate()
        first, second = make_card(host=host), make_card(host=host)
        with self.assertRaises(InvalidCard) as cm:
            MemberDirectory(self.cards + [first, second])
        self.assertIn(f"two cards for host key {host.public.hex()}", str(cm.exception))

    def test_duplicate_noise_key_refused(self) -> None:
        """A member cannot claim another's Noise key, even with a valid card of its own."""
        copycat = make_card(noise_key=self.cards[2].noise_key)
        with self.assertRaises(InvalidCard) as cm:
            MemberDirectory(self.cards + [copycat])
        self.assertIn(f"two cards share noise key {self.cards[2].noise_key.hex()}", str(cm.exception))

    def test_forged_card_refused(self) -> None:
        """A card naming a member's host key with the forger's own Noise key and addresses."""
        victim = self.cards[1]
        forged = replace(make_card(), host_key=victim.host_key)
        with self.assertRaises(InvalidCard) as cm:
            MemberDirectory(self.cards[:1] + self.cards[2:] + [forged])
        self.assertIn(f"card for host key {victim.host_key.hex()} has an invalid binding signature", str(cm.exception))

    def test_max_faulty(self) -> None:
        """f = floor((n - 1) / 3): the largest f with n >= 3f + 1."""
        expected = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 2, 9: 2, 10: 3}
        cards = [make_card(addresses=()) for _ in range(10)]
        for n, f in expected.items():
            directory = MemberDirectory(cards[:n])
            self.assertEqual(directory.max_faulty(), f, f"n={n}")
            self.assertGreaterEqual(n, 3 * f + 1)
            self.assertLess(n, 3 * (f + 1) + 1)
        self.assertEqual(len(MemberDirectory([])), 0)
