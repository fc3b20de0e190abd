# -*- test-case-name: tests.test_identity -*-
"""
Who the members are: host keys, Noise keys, address cards, the member directory.

A member I{is} its host key: a secp256k1 x-only (BIP340) public key.  Its Noise
static key (X25519) is bound to the host key by a BIP340 signature over the
tagged hash C{"frostnode/card"} of (noise key, addresses), so a peer that
completes a Noise handshake with key K is member M only if the directory holds
a card for M whose Noise key is K and whose signature verifies.  Nothing a peer
says about itself over the wire changes the directory.

The directory is the single object every layer asks for "the current members".
Today it is built from cards in the node's configuration; the Bitcoin
membership work will build it from the chain instead, behind the same methods.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from coincurve import PrivateKey, PublicKeyXOnly

from frostnode.crypto.bip340 import schnorr_verify
from frostnode.crypto.hashes import tagged_hash

CARD_TAG = "frostnode/card"
CARD_VERSION = 1
#: The signed encoding prefixes the address count and each address's UTF-8
#: length with 2 bytes: these are the limits, checked before encoding.
MAX_ADDRESSES = 0xFFFF
MAX_ADDRESS_BYTES = 0xFFFF


class InvalidCard(ValueError):
    """An address card that is malformed or whose binding signature fails."""


def _card_message(host_key: bytes, noise_key: bytes, addresses: tuple[str, ...]) -> bytes:
    """
    The tagged hash the host key signs.  Refuses, as L{InvalidCard}, what the
    encoding cannot represent (rather than letting C{int.to_bytes} raise
    C{OverflowError} or C{str.encode} a C{UnicodeEncodeError} from inside
    card verification).
    """
    if len(addresses) > MAX_ADDRESSES:
        raise InvalidCard(f"card lists {len(addresses)} addresses; at most {MAX_ADDRESSES} are allowed")
    enc = bytearray()
    enc += bytes((CARD_VERSION,)) + host_key + noise_key + len(addresses).to_bytes(2, "big")
    for i, a in enumerate(addresses):
        if not isinstance(a, str):
            raise InvalidCard(f"card address {i} is a {type(a).__name__}, not a string")
        try:
            ab = a.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidCard(f"card address {i} is not valid Unicode (a lone surrogate)") from None
        if len(ab) > MAX_ADDRESS_BYTES:
            raise InvalidCard(f"card address {i} is {len(ab)} bytes long; at most {MAX_ADDRESS_BYTES} are allowed")
        enc += len(ab).to_bytes(2, "big") + ab
    return tagged_hash(CARD_TAG, bytes(enc))


@dataclass(frozen=True)
class HostKeypair:
    """A member's long-term secp256k1 key.  Keep C{secret} in an owner-only file."""

    secret: bytes

    @classmethod
    def generate(cls) -> "HostKeypair":
        return cls(PrivateKey().secret)

    @property
    def public(self) -> bytes:
        """32-byte x-only public key: the member's identity."""
        return PublicKeyXOnly.from_secret(self.secret).format()

    def sign(self, msg32: bytes) -> bytes:
        return PrivateKey(self.secret).sign_schnorr(msg32, os.urandom(32))

    def __repr__(self) -> str:
        return f"HostKeypair(public={self.public.hex()}, secret=<redacted>)"


def verify_host_signature(host_key: bytes, msg32: bytes, sig: bytes) -> bool:
    """
    BIP340 verification of C{sig} by C{host_key}; malformed input is just
    False.  The name says what is being checked at call sites (a member's
    statement); the check is L{frostnode.crypto.bip340.schnorr_verify}.
    """
    return schnorr_verify(msg32, host_key, sig)


@dataclass(frozen=True)
class AddressCard:
    """
    What operators exchange: host key, Noise key, where to reach the member,
    and the host key's signature binding the rest.
    """

    host_key: bytes
    noise_key: bytes
    addresses: tuple[str, ...]
    signature: bytes

    @classmethod
    def create(cls, host: HostKeypair, noise_key: bytes, addresses: Iterable[str]) -> "AddressCard":
        """
        Sign a card for C{host}.

        @raise InvalidCard: a Noise key that is not 32 bytes, or addresses
            the card encoding cannot hold.
        """
        addrs = tuple(addresses)
        if len(noise_key) != 32:
            raise InvalidCard(f"a Noise key is 32 bytes, not {len(noise_key)}")
        return cls(host.public, noise_key, addrs, host.sign(_card_message(host.public, noise_key, addrs)))

    def verify(self) -> None:
        """@raise InvalidCard: a malformed field or a binding signature that fails."""
        if len(self.host_key) != 32 or len(self.noise_key) != 32 or len(self.signature) != 64:
            raise InvalidCard(
                f"card fields have the wrong length (host key {len(self.host_key)}, Noise key "
                f"{len(self.noise_key)}, signature {len(self.signature)} bytes; expected 32, 32, 64)"
            )
        if not verify_host_signature(self.host_key, _card_message(self.host_key, self.noise_key, self.addresses), self.signature):
            raise InvalidCard(f"card for host key {self.host_key.hex()} has an invalid binding signature")

    def to_dict(self) -> dict:
        return {
            "version": CARD_VERSION,
            "host_key": self.host_key.hex(),
            "noise_key": self.noise_key.hex(),
            "addresses": list(self.addresses),
            "signature": self.signature.hex(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AddressCard":
        if not isinstance(d, dict):
            raise InvalidCard(f"a card is a table of fields, not a {type(d).__name__}")
        try:
            version = d.get("version", CARD_VERSION)
            if type(version) is not int or version != CARD_VERSION:
                raise InvalidCard(f"unsupported card version {version!r}")
            addrs = d["addresses"]
            if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
                raise InvalidCard("card addresses must be a list of strings")
            card = cls(bytes.fromhex(d["host_key"]), bytes.fromhex(d["noise_key"]), tuple(addrs), bytes.fromhex(d["signature"]))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, InvalidCard):
                raise
            raise InvalidCard(f"malformed card: {e}") from None
        card.verify()
        return card

    @classmethod
    def from_json(cls, text: str) -> "AddressCard":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise InvalidCard(f"card is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise InvalidCard("card must be a JSON object")
        return cls.from_dict(d)

    def short(self) -> str:
        """A short, log-friendly name for the member."""
        return self.host_key.hex()[:12]


class MemberDirectory:
    """
    The current members, sorted by host key, with lookups by either key.

    Cards are verified on the way in; a directory never holds a card whose
    binding signature fails, nor two cards with the same host or Noise key.
    """

    def __init__(self, cards: Iterable[AddressCard]) -> None:
        by_host: dict[bytes, AddressCard] = {}
        by_noise: dict[bytes, AddressCard] = {}
        for c in cards:
            c.verify()
            if c.host_key in by_host:
                raise InvalidCard(f"two cards for host key {c.host_key.hex()}")
            if c.noise_key in by_noise:
                raise InvalidCard(f"two cards share noise key {c.noise_key.hex()}")
            by_host[c.host_key] = c
            by_noise[c.noise_key] = c
        self._by_host = dict(sorted(by_host.items()))
        self._by_noise = by_noise

    def __len__(self) -> int:
        return len(self._by_host)

    def __iter__(self) -> Iterator[AddressCard]:
        return iter(self._by_host.values())

    def __contains__(self, host_key: object) -> bool:
        return host_key in self._by_host

    def host_keys(self) -> list[bytes]:
        return list(self._by_host)

    def by_host_key(self, host_key: bytes) -> Optional[AddressCard]:
        return self._by_host.get(host_key)

    def by_noise_key(self, noise_key: bytes) -> Optional[AddressCard]:
        return self._by_noise.get(noise_key)

    def max_faulty(self) -> int:
        """f, the most byzantine members reliable broadcast tolerates: n >= 3f + 1."""
        return (len(self) - 1) // 3
