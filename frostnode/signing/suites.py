# -*- test-case-name: tests.test_signing_signer -*-
"""
The two ciphersuites behind one small interface, and an epoch's key as the
signing layer sees it.

Why an adapter: the ROAST coordinator and the signer only need "open a
session over these signers, nonces and message", "sign", "verify a share",
"aggregate" and "verify the signature".  BIP 445 (the default) and RFC 9591
differ in everything else (identifiers, nonce aggregation, tweaks,
signature format), so each gets a class here and the protocol code above
never branches on the suite.

Conventions (the DKG driver writes L{frostnode.store.keys.EpochRecord}s that
follow them; L{EpochKey.from_record} checks them):

 - A member's I{index} is its position in the epoch's sorted host keys.
   Its FROST identifier (RFC 9591, and C{EpochRecord.identifier}) is
   C{index + 1}; its BIP 445 participant id is C{index}.
 - C{internal_key} is the 33-byte plain (compressed) Taproot-safe group
   key; C{output_key} the 32-byte x-only BIP341 output key of it (no script
   path); C{verification_shares[i]} the 33-byte share of member C{i}.
 - One preprocessed nonce serves either suite.  Both sign with a pair of
   uniformly random scalars (k1, k2) committed to as C{k1*G || k2*G}
   (BIP 445 calls it the pubnonce, RFC 9591 hiding/binding commitments
   D || E), and single use is a property of the pair, enforced by the
   nonce store, not of the suite.
 - BIP 445 signs under the Taproot output key (L{bip445.taproot_session_ctx})
   and its signatures are 64-byte BIP340; RFC 9591 signs under the internal
   key and its signatures are 65 bytes (compressed R || z).  A signature
   share is a 32-byte scalar in both.
 - For BIP 445 the coordinator sends the aggregate nonce with the request and
   signers use it as given: BIP 445, like MuSig2, lets an untrusted
   coordinator aggregate nonces (a wrong aggnonce only yields an invalid
   signature), and it spares each of 67 signers parsing 134 points.  RFC
   9591 signers need every commitment (the binding factors hash the list)
   and compute the group commitment themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from frostnode.crypto import bip445, rfc9591
from frostnode.crypto.bip340 import schnorr_verify
from frostnode.crypto.errors import InvalidEncoding, InvalidSignatureShare
from frostnode.crypto.group import Point, point_from_bytes, scalar_from_bytes, scalar_to_bytes
from frostnode.crypto.lagrange import lagrange_coefficients
from frostnode.crypto.nonces import SecretNonce

#: A nonce commitment: two compressed points.
COMMITMENT_SIZE = 66
SHARE_SIZE = 32
AGGNONCE_SIZE = 66

BIP445 = "bip445"
RFC9591 = "rfc9591"
#: Wire codes of the suites (L{frostnode.signing.messages}).
SUITE_CODES = {BIP445: 1, RFC9591: 2}
SUITE_NAMES = {v: k for k, v in SUITE_CODES.items()}


def parse_commitment(data: bytes) -> tuple[Point, Point]:
    """
    Both points of a 66-byte nonce commitment.

    @raise InvalidEncoding: wrong size or not two valid points.
    """
    if len(data) != COMMITMENT_SIZE:
        raise InvalidEncoding(f"a nonce commitment is {COMMITMENT_SIZE} bytes, not {len(data)}")
    return point_from_bytes(data[:33]), point_from_bytes(data[33:])


@dataclass(frozen=True)
class EpochKey:
    """
    The public key material of one epoch, shared by every member.

    @ivar members: host keys, sorted; a member's index is its position.
    """

    epoch: int
    members: tuple[bytes, ...]
    threshold: int
    internal_key: bytes
    output_key: bytes
    verification_shares: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        n = len(self.members)
        if list(self.members) != sorted(set(self.members)):
            raise ValueError(f"epoch {self.epoch}: members must be sorted and unique")
        if not 1 <= self.threshold <= n:
            raise ValueError(f"epoch {self.epoch}: threshold {self.threshold} not in 1..{n}")
        if len(self.verification_shares) != n or any(len(v) != 33 for v in self.verification_shares):
            raise ValueError(f"epoch {self.epoch}: need {n} verification shares of 33 bytes")
        if len(self.internal_key) != 33:
            raise ValueError(f"epoch {self.epoch}: the internal key must be a 33-byte plain key")
        output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(self.internal_key))
        if output != self.output_key:
            raise ValueError(f"epoch {self.epoch}: output key is not the Taproot output key of the internal key")
        object.__setattr__(self, "_index", {m: i for i, m in enumerate(self.members)})

    @classmethod
    def from_record(cls, rec) -> "EpochKey":
        """From a L{frostnode.store.keys.EpochRecord} (public fields only)."""
        return cls(rec.epoch, tuple(rec.members), rec.threshold, bytes(rec.internal_key), bytes(rec.output_key),
                   tuple(bytes(v) for v in rec.verification_shares))

    @property
    def n(self) -> int:
        return len(self.members)

    def index_of(self, host_key: bytes) -> Optional[int]:
        return self._index.get(host_key)  # type: ignore[attr-defined]


class SigningShare:
    """
    A member's secret signing share for one epoch; never printed or pickled.
    """

    __slots__ = ("key", "index", "_secret")

    def __init__(self, key: EpochKey, index: int, secret: bytes) -> None:
        if not 0 <= index < key.n:
            raise ValueError(f"index {index} out of range for {key.n} members")
        self.key = key
        self.index = index
        self._secret = bytes(secret)

    @classmethod
    def from_record(cls, rec, host_key: bytes) -> "SigningShare":
        """
        From a L{frostnode.store.keys.EpochRecord} of this member.

        @raise ValueError: C{host_key} is not a member, or the record's
            FROST identifier is not its index + 1.
        """
        key = EpochKey.from_record(rec)
        index = key.index_of(host_key)
        if index is None:
            raise ValueError(f"epoch {rec.epoch}: {host_key.hex()[:16]} is not a member")
        if rec.identifier != index + 1:
            raise ValueError(f"epoch {rec.epoch}: identifier {rec.identifier} is not index {index} + 1")
        return cls(key, index, rec.secret_share)

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"SigningShare(epoch={self.key.epoch}, index={self.index}, <redacted>)"

    def __reduce__(self):
        raise TypeError("SigningShare holds a secret and cannot be pickled")


# -- sessions -----------------------------------------------------------------

class Session:
    """
    One signing session: signer set (indices, ascending), their commitments,
    the message.  Built by L{Suite.coordinator_session} (which checks every
    share) or L{Suite.signer_session} (which signs).
    """

    suite: "Suite"
    indices: tuple[int, ...]
    #: What the coordinator sends as the aggregate nonce (zeros if the suite has none).
    aggnonce: bytes

    def verify_share(self, index: int, share: bytes) -> bool:
        raise NotImplementedError

    def aggregate(self, shares: dict[int, bytes]) -> bytes:
        """
        The signature from every signer's share.

        @raise InvalidSignatureShare: culprits are member I{indices}.
        """
        raise NotImplementedError

    def sign(self, signing: SigningShare, nonce: SecretNonce) -> bytes:
        raise NotImplementedError


class Suite:
    """A ciphersuite: how to open sessions and what the signature verifies under."""

    name: str

    def signing_key(self, key: EpochKey) -> bytes:
        raise NotImplementedError

    def verify(self, key: EpochKey, msg: bytes, sig: bytes) -> bool:
        raise NotImplementedError

    def coordinator_session(self, key: EpochKey, signers: Sequence[tuple[int, bytes]], msg: bytes) -> Session:
        raise NotImplementedError

    def signer_session(
        self, key: EpochKey, signers: Sequence[tuple[int, bytes]], aggnonce: bytes, msg: bytes
    ) -> Session:
        raise NotImplementedError


def _check_signers(key: EpochKey, signers: Sequence[tuple[int, bytes]]) -> tuple[int, ...]:
    indices = tuple(i for i, _ in signers)
    if list(indices) != sorted(set(indices)):
        raise ValueError("signer indices must be strictly ascending")
    if not key.threshold <= len(indices) <= key.n or indices[0] < 0 or indices[-1] >= key.n:
        raise ValueError(f"a signer set is {key.threshold}..{key.n} member indices in range")
    return indices


def _check_aggnonce(aggnonce: bytes) -> bytes:
    """
    Parse an aggregate nonce as BIP 445 will (each half a point, or 33 zero
    bytes for the identity), so a signer refuses a bad one I{before} it
    reserves a nonce.

    @raise InvalidEncoding: not a valid aggnonce.
    """
    aggnonce = bytes(aggnonce)
    if len(aggnonce) != AGGNONCE_SIZE:
        raise InvalidEncoding(f"an aggregate nonce is {AGGNONCE_SIZE} bytes")
    for half in (aggnonce[:33], aggnonce[33:]):
        if half != bytes(33):
            point_from_bytes(half)
    return aggnonce


class _Bip445Session(Session):
    def __init__(self, suite: "Bip445", key: EpochKey, signers: Sequence[tuple[int, bytes]], aggnonce: bytes, msg: bytes) -> None:
        self.suite = suite
        self.key = key
        self.indices = _check_signers(key, signers)
        self.pubnonces = {i: c for i, c in signers}
        self.aggnonce = _check_aggnonce(aggnonce)
        self.msg = msg
        ctx = bip445.SignersContext(key.n, key.threshold, list(self.indices),
                                    [key.verification_shares[i] for i in self.indices], key.internal_key)
        self.ctx = bip445.taproot_session_ctx(ctx, aggnonce, msg)

    def verify_share(self, index: int, share: bytes) -> bool:
        if index not in self.pubnonces or len(share) != SHARE_SIZE:
            return False
        return bip445.partial_sig_verify_internal(
            share, index, self.pubnonces[index], self.key.verification_shares[index], self.ctx)

    def aggregate(self, shares: dict[int, bytes]) -> bytes:
        psigs = [shares[i] for i in self.indices]
        return bip445.partial_sig_agg_verified(psigs, [self.pubnonces[i] for i in self.indices], self.ctx)

    def sign(self, signing: SigningShare, nonce: SecretNonce) -> bytes:
        if self.pubnonces.get(signing.index) != nonce.commitment:
            raise ValueError("the session holds a different commitment for this signer")
        return bip445.sign(nonce, signing.secret, signing.index, self.ctx)


class Bip445(Suite):
    """BIP 445 FROST under the Taproot output key: BIP340 signatures."""

    name = BIP445

    def signing_key(self, key: EpochKey) -> bytes:
        return key.output_key

    def verify(self, key: EpochKey, msg: bytes, sig: bytes) -> bool:
        return schnorr_verify(msg, key.output_key, sig)

    def coordinator_session(self, key: EpochKey, signers: Sequence[tuple[int, bytes]], msg: bytes) -> Session:
        return _Bip445Session(self, key, signers, bip445.nonce_agg([c for _, c in signers]), msg)

    def signer_session(self, key: EpochKey, signers: Sequence[tuple[int, bytes]], aggnonce: bytes, msg: bytes) -> Session:
        return _Bip445Session(self, key, signers, aggnonce, msg)


class _Rfc9591Session(Session):
    def __init__(self, suite: "Rfc9591", key: EpochKey, signers: Sequence[tuple[int, bytes]], msg: bytes) -> None:
        self.suite = suite
        self.key = key
        self.indices = _check_signers(key, signers)
        self.aggnonce = bytes(AGGNONCE_SIZE)
        comms = []
        for i, c in signers:
            D, E = parse_commitment(c)
            comms.append(rfc9591.SigningCommitment(i + 1, D, E))
        self.ctx = rfc9591.session_context(point_from_bytes(key.internal_key), msg, comms)
        self._lams: Optional[dict[int, int]] = None
        self._vshares: dict[int, Point] = {}

    def _vshare(self, index: int) -> Point:
        Y = self._vshares.get(index)
        if Y is None:
            Y = self._vshares[index] = point_from_bytes(self.key.verification_shares[index])
        return Y

    def verify_share(self, index: int, share: bytes) -> bool:
        if index not in self.indices or len(share) != SHARE_SIZE:
            return False
        try:
            z = scalar_from_bytes(share)
        except InvalidEncoding:
            return False
        if self._lams is None:
            self._lams = lagrange_coefficients(self.ctx.participants)
        return rfc9591.verify_signature_share(
            rfc9591.SignatureShare(index + 1, z), self._vshare(index), self.ctx, self._lams[index + 1])

    def aggregate(self, shares: dict[int, bytes]) -> bytes:
        parsed = []
        bad = []
        for i in self.indices:
            try:
                parsed.append(rfc9591.SignatureShare(i + 1, scalar_from_bytes(shares[i])))
            except InvalidEncoding:
                bad.append(i)
        if bad:
            raise InvalidSignatureShare(bad, "share is not a scalar")
        vshares = {i + 1: self._vshare(i) for i in self.indices}
        try:
            return rfc9591.aggregate(self.ctx, parsed, vshares).encode()
        except InvalidSignatureShare as e:
            raise InvalidSignatureShare([c - 1 for c in e.culprits], e.message) from None

    def sign(self, signing: SigningShare, nonce: SecretNonce) -> bytes:
        share = rfc9591.sign(signing.index + 1, scalar_from_bytes(signing.secret), nonce, self.ctx)
        return scalar_to_bytes(share.share)


class Rfc9591(Suite):
    """RFC 9591 FROST(secp256k1, SHA-256) under the internal key."""

    name = RFC9591

    def signing_key(self, key: EpochKey) -> bytes:
        return key.internal_key

    def verify(self, key: EpochKey, msg: bytes, sig: bytes) -> bool:
        return rfc9591.verify(point_from_bytes(key.internal_key), msg, sig)

    def coordinator_session(self, key: EpochKey, signers: Sequence[tuple[int, bytes]], msg: bytes) -> Session:
        return _Rfc9591Session(self, key, signers, msg)

    def signer_session(self, key: EpochKey, signers: Sequence[tuple[int, bytes]], aggnonce: bytes, msg: bytes) -> Session:
        return _Rfc9591Session(self, key, signers, msg)


SUITES: dict[str, Suite] = {BIP445: Bip445(), RFC9591: Rfc9591()}


def get_suite(name: str) -> Suite:
    """The suite called C{name}; C{ValueError} names the known ones otherwise."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown ciphersuite {name!r} (known: {', '.join(sorted(SUITES))})") from None


def verify_signature(ciphersuite: str, key: bytes, msg: bytes, sig: bytes) -> bool:
    """
    Check a signature the federation returned, from public bytes only (what
    a client holds): BIP340 under the 32-byte output key for BIP 445, RFC
    9591 under the 33-byte internal key otherwise.  Malformed keys and
    signatures, and unknown ciphersuites, are just invalid.
    """
    if ciphersuite == BIP445:
        return schnorr_verify(msg, key, sig)
    if ciphersuite == RFC9591:
        try:
            return rfc9591.verify(point_from_bytes(key), msg, sig)
        except (InvalidEncoding, ValueError):
            return False
    return False
