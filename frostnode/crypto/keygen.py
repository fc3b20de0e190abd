# -*- test-case-name: tests.test_crypto_keygen -*-
"""
FROST key generation: the Pedersen DKG with proofs of knowledge (FROST paper,
Fig. 1; ZF C{frost_core::keys::dkg}) as pure functions, plus a trusted
dealer for tests and the demo.

Protocol, for participants with FROST identifiers 1..n (the participant at
0-based position i in the sorted host-key list of the DKG session is
identifier i + 1):

 1. L{keygen_round1}: sample f_i of degree t-1, broadcast a
    L{Round1Package} (commitments phi_ik = a_ik*G and a Schnorr proof of
    knowledge of a_i0).
 2. Check every other package with L{verify_proof_of_knowledge}; send
    f_i(j) to each j over a private channel (L{keygen_share},
    L{SecretShareMessage}); keep f_i(i) for yourself; then call
    L{Round1Secret.forget}.
 3. L{keygen_finalize} with everyone's package and share (own included).  It
    checks the shares in one go: s_i*G must equal the verification share
    derived from the summed commitments.  Only if that fails does it check
    each sender's share (L{verify_share}) to name the culprit, so the honest
    path costs no per-sender check.  Callers that want to blame a sender as
    soon as its share arrives can call L{verify_share} themselves.

The PoK challenge is c = hash_to_field(context || SerializeScalar(id) ||
phi_i0 || R, "FROST-secp256k1-SHA256-v1dkg").  With an empty C{context} this
is exactly ZF's; the DKG protocol passes its session id so a proof cannot be
replayed in another session.

Taproot safety (C{taproot_safe=True}, the default, as ChillDKG and BIP 445
require): with P = sum of every phi_i0, tw = int(hash_TapTweak(x(P))) mod N
and the group key is P + tw*G, I{without} first making P's y even.  Every
secret share gains tw and every verification share tw*G, so the result is an
ordinary FROST key whose x-only form commits to an unspendable script path:
nobody can have hidden a script path in it.  P is kept as
C{untweaked_group_key}.

Errors: C{ValueError} for the caller's inconsistent inputs;
L{InvalidProofOfKnowledge}, L{InvalidSecretShare} and L{InvalidCommitment}
name the FROST identifier of the participant at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple, NoReturn, Optional

from frostnode.crypto.bip340 import taptweak
from frostnode.crypto.errors import (
    InvalidCommitment,
    InvalidEncoding,
    InvalidProofOfKnowledge,
    InvalidSecretShare,
)
from frostnode.crypto.group import N, Point, base_mul, point_from_bytes, point_sum, scalar_from_bytes
from frostnode.crypto.hashes import hash_to_field, tagged_hash
from frostnode.crypto.rfc9591 import CONTEXT_STRING, check_identifier, identifier_from_bytes, identifier_to_bytes

DKG_DST = CONTEXT_STRING + b"dkg"

Rand = Callable[[int], bytes]


def _random_scalar(rand: Rand) -> int:
    """A uniform nonzero scalar from 32-byte draws (rejection sampling; a retry has probability ~2^-128)."""
    while True:
        k = int.from_bytes(rand(32), "big")
        if 0 < k < N:
            return k


def _check_params(t: int, n: int) -> None:
    if not (isinstance(t, int) and isinstance(n, int) and 1 <= t <= n):
        raise ValueError(f"need 1 <= t <= n, got t={t!r}, n={n!r}")


def _evaluate(commitments: tuple[Point, ...] | list[Point], x: int) -> Point:
    """sum_k x^k * C_k: the public image of f(x); t-1 multiplications and one sum."""
    terms = [commitments[0]]
    xk = 1
    for c in commitments[1:]:
        xk = xk * x % N
        terms.append(c * xk)
    return point_sum(terms)


def taproot_tweak(untweaked: Point) -> int:
    """
    tw = int(hash_TapTweak(x(P))): BIP341's tweak committing P to an
    unspendable script path (L{bip340.taptweak}, which refuses a hash >= N).
    """
    return int.from_bytes(taptweak(untweaked.xbytes()), "big")


# -- round one ----------------------------------------------------------------

class Round1Secret:
    """
    A participant's secret polynomial f_i, for one DKG session.

    It exists to produce the shares f_i(j) of that session and nothing else:
    it cannot be pickled, copied or printed, and L{forget} drops the
    coefficients once the shares are out, after which L{keygen_share}
    raises.
    """

    __slots__ = ("identifier", "threshold", "max_signers", "_coefficients")

    def __init__(self, identifier: int, coefficients: list[int], max_signers: int) -> None:
        self.identifier = identifier
        self.threshold = len(coefficients)
        self.max_signers = max_signers
        self._coefficients: Optional[tuple[int, ...]] = tuple(coefficients)

    @property
    def forgotten(self) -> bool:
        return self._coefficients is None

    def forget(self) -> None:
        """Drop the polynomial: every share has been sent."""
        self._coefficients = None

    def _evaluate(self, x: int) -> int:
        if self._coefficients is None:
            raise ValueError(f"round-1 secret of participant {self.identifier} was already forgotten")
        acc = 0
        for a in reversed(self._coefficients):
            acc = (acc * x + a) % N
        return acc

    def __repr__(self) -> str:
        state = "forgotten" if self._coefficients is None else "<redacted>"
        return f"Round1Secret(identifier={self.identifier}, t={self.threshold}, {state})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Round1Secret is a single-session secret and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("Round1Secret is a single-session secret and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("Round1Secret is a single-session secret and cannot be copied")


class Round1Package(NamedTuple):
    """
    What a participant broadcasts in round one: commitments phi_0..phi_{t-1}
    and the proof of knowledge (R, mu) of phi_0's discrete log.

    Wire form: the t commitments (33 bytes each), R (33), mu (32): the same
    bytes as ZF's C{vss_commitments || proof_of_knowledge}.
    """

    commitments: tuple[Point, ...]
    R: Point
    mu: int

    @staticmethod
    def size(t: int) -> int:
        return 33 * t + 33 + 32

    def encode(self) -> bytes:
        return b"".join(c.encode() for c in self.commitments) + self.R.encode() + (self.mu % N).to_bytes(32, "big")

    @classmethod
    def decode(cls, data: bytes, t: int) -> "Round1Package":
        """Parse a package for threshold C{t}; the length must be exact."""
        if not isinstance(t, int) or t < 1:
            raise ValueError(f"threshold must be a positive int, not {t!r}")
        if len(data) != cls.size(t):
            raise InvalidEncoding(f"expected a {cls.size(t)}-byte round-1 package for t={t}, got {len(data)} bytes")
        commitments = tuple(point_from_bytes(data[33 * k : 33 * k + 33]) for k in range(t))
        return cls(commitments, point_from_bytes(data[33 * t : 33 * t + 33]), scalar_from_bytes(data[33 * t + 33 :]))


def _pok_challenge(identifier: int, phi0: Point, R: Point, context: bytes) -> int:
    return hash_to_field(bytes(context) + identifier_to_bytes(identifier) + phi0.encode() + R.encode(), DKG_DST)


def keygen_round1(
    identifier: int, t: int, n: int, context: bytes, rand: Rand = os.urandom
) -> tuple[Round1Secret, Round1Package]:
    """
    Sample f_i and prove knowledge of f_i(0).

    C{rand} is drawn for the t coefficients a_i0..a_i(t-1) in order, then for
    the proof nonce (32 bytes each, redrawn in the negligible case of a value
    outside 1..N-1).

    @param context: bytes that bind the proof to this DKG session (ZF: empty).
    """
    check_identifier(identifier)
    _check_params(t, n)
    coefficients = [_random_scalar(rand) for _ in range(t)]
    commitments = tuple(base_mul(a) for a in coefficients)
    k = _random_scalar(rand)
    R = base_mul(k)
    mu = (k + coefficients[0] * _pok_challenge(identifier, commitments[0], R, context)) % N
    return Round1Secret(identifier, coefficients, n), Round1Package(commitments, R, mu)


def verify_proof_of_knowledge(identifier: int, package: Round1Package, context: bytes) -> None:
    """
    Check mu*G == R + c*phi_0.

    @raise InvalidProofOfKnowledge: culprit C{identifier}.
    """
    check_identifier(identifier)
    if not package.commitments or package.commitments[0].is_infinity or package.R.is_infinity:
        raise InvalidProofOfKnowledge(identifier, "package has no usable commitment or proof")
    phi0 = package.commitments[0]
    c = _pok_challenge(identifier, phi0, package.R, context)
    if base_mul(package.mu) != point_sum((package.R, phi0 * c)):
        raise InvalidProofOfKnowledge(identifier, "proof of knowledge does not verify")


# -- round two ----------------------------------------------------------------

def keygen_share(secret: Round1Secret, recipient: int) -> int:
    """f_i(recipient), the share for participant C{recipient} (own identifier included)."""
    return secret._evaluate(check_identifier(recipient))


class SecretShareMessage(NamedTuple):
    """
    A round-two share f_sender(recipient), sent privately.  Wire form:
    sender (32) || recipient (32) || share (32); naming both ends binds the
    share to its route should a channel ever carry it for someone else.
    """

    sender: int
    recipient: int
    share: int

    SIZE = 96

    def encode(self) -> bytes:
        return identifier_to_bytes(self.sender) + identifier_to_bytes(self.recipient) + (self.share % N).to_bytes(32, "big")

    @classmethod
    def decode(cls, data: bytes) -> "SecretShareMessage":
        if len(data) != 96:
            raise InvalidEncoding(f"expected a 96-byte share message, got {len(data)} bytes")
        return cls(identifier_from_bytes(data[:32]), identifier_from_bytes(data[32:64]), scalar_from_bytes(data[64:]))

    def __repr__(self) -> str:
        return f"SecretShareMessage(sender={self.sender}, recipient={self.recipient}, share=<redacted>)"


def verify_share(sender: int, recipient: int, share: int, package: Round1Package) -> None:
    """
    Check share*G == sum_k recipient^k * phi_sender,k (t-1 multiplications).

    @raise InvalidSecretShare: culprit C{sender}.
    """
    check_identifier(recipient)
    if not package.commitments:
        raise InvalidSecretShare(sender, "sender has no commitments")
    if not isinstance(share, int) or not 0 <= share < N or base_mul(share) != _evaluate(package.commitments, recipient):
        raise InvalidSecretShare(sender, f"share for participant {recipient} does not match the sender's commitments")


# -- output -------------------------------------------------------------------

def _encode_u16(v: int) -> bytes:
    if not 0 <= v <= 0xFFFF:
        raise ValueError(f"{v} does not fit the 2-byte field")
    return v.to_bytes(2, "big")


def _frozen_shares(shares: Mapping[int, Point]) -> Mapping[int, Point]:
    """A read-only copy in ascending identifier order: key packages are shared and compared."""
    return MappingProxyType({i: shares[i] for i in sorted(shares)})


@dataclass(frozen=True)
class PublicKeyPackage:
    """
    The public output of a key generation, the same for every participant.

    @ivar group_key: the key signatures verify under (for BIP 445 / Taproot,
        the I{internal} key, as a 33-byte plain key).
    @ivar untweaked_group_key: P before the Taproot-safety tweak (equal to
        C{group_key} when no tweak was applied).
    @ivar verification_shares: Y_i = s_i*G by identifier, ascending.

    Wire form: t (2) || n (2) || group_key (33) || untweaked_group_key (33)
    || n * (identifier (32) || Y_i (33)), identifiers strictly ascending.
    """

    threshold: int
    group_key: Point
    verification_shares: Mapping[int, Point]
    untweaked_group_key: Point

    HEADER_SIZE = 2 + 2 + 33 + 33
    ENTRY_SIZE = 32 + 33

    def __post_init__(self) -> None:
        object.__setattr__(self, "verification_shares", _frozen_shares(self.verification_shares))

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.verification_shares)

    def encode(self) -> bytes:
        ids = sorted(self.verification_shares)
        return b"".join(
            [
                _encode_u16(self.threshold),
                _encode_u16(len(ids)),
                self.group_key.encode(),
                self.untweaked_group_key.encode(),
            ]
            + [identifier_to_bytes(i) + self.verification_shares[i].encode() for i in ids]
        )

    @classmethod
    def decode(cls, data: bytes) -> "PublicKeyPackage":
        if len(data) < cls.HEADER_SIZE:
            raise InvalidEncoding("public key package is truncated")
        t = int.from_bytes(data[0:2], "big")
        n = int.from_bytes(data[2:4], "big")
        if len(data) != cls.HEADER_SIZE + n * cls.ENTRY_SIZE:
            raise InvalidEncoding(f"public key package for {n} participants has the wrong length {len(data)}")
        if not 1 <= t <= n:
            raise InvalidEncoding(f"public key package has threshold {t} for {n} participants")
        group_key = point_from_bytes(data[4:37])
        untweaked = point_from_bytes(data[37:70])
        shares: dict[int, Point] = {}
        prev = 0
        for k in range(n):
            off = cls.HEADER_SIZE + k * cls.ENTRY_SIZE
            i = identifier_from_bytes(data[off : off + 32])
            if i <= prev:
                raise InvalidEncoding("public key package identifiers are not strictly ascending")
            shares[i] = point_from_bytes(data[off + 32 : off + 65])
            prev = i
        return cls(t, group_key, shares, untweaked)


@dataclass(frozen=True, repr=False)
class KeyPackage:
    """
    One participant's output: its secret share and the public key package.

    Wire/storage form: identifier (32) || secret_share (32) ||
    L{PublicKeyPackage} encoding.  Decoding checks that the secret share
    matches the participant's own verification share.
    """

    identifier: int
    threshold: int
    secret_share: int
    group_key: Point
    verification_shares: Mapping[int, Point]
    untweaked_group_key: Point

    def __post_init__(self) -> None:
        object.__setattr__(self, "verification_shares", _frozen_shares(self.verification_shares))

    @property
    def verification_share(self) -> Point:
        return self.verification_shares[self.identifier]

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.verification_shares)

    def public_key_package(self) -> PublicKeyPackage:
        return PublicKeyPackage(self.threshold, self.group_key, self.verification_shares, self.untweaked_group_key)

    def encode(self) -> bytes:
        return identifier_to_bytes(self.identifier) + (self.secret_share % N).to_bytes(32, "big") + self.public_key_package().encode()

    @classmethod
    def decode(cls, data: bytes) -> "KeyPackage":
        if len(data) < 64:
            raise InvalidEncoding("key package is truncated")
        identifier = identifier_from_bytes(data[:32])
        secret = scalar_from_bytes(data[32:64])
        public = PublicKeyPackage.decode(data[64:])
        own = public.verification_shares.get(identifier)
        if own is None:
            raise InvalidEncoding(f"key package for {identifier} lacks its own verification share")
        if base_mul(secret) != own:
            raise InvalidEncoding(f"key package for {identifier}: secret share does not match its verification share")
        return cls(identifier, public.threshold, secret, public.group_key, public.verification_shares, public.untweaked_group_key)

    def __repr__(self) -> str:
        return (
            f"KeyPackage(identifier={self.identifier}, threshold={self.threshold}, secret_share=<redacted>, "
            f"group_key={self.group_key!r}, participants={len(self.verification_shares)})"
        )


def keygen_finalize(
    identifier: int,
    t: int,
    received_shares: Mapping[int, int],
    packages: Mapping[int, Round1Package],
    taproot_safe: bool = True,
) -> KeyPackage:
    """
    Combine everyone's shares for us and everyone's commitments.

    Precondition: every package's proof of knowledge was checked with the
    session's context (L{verify_proof_of_knowledge}); without that a
    participant could choose its phi_0 to cancel the others' (rogue key).

    Cost: t point sums over n commitments, then n*(t-1) multiplications for
    the verification shares (about 130 ms at 67-of-100 on the reference
    machine; cheaper for small identifiers, whose powers are short scalars).

    @param received_shares: f_j(identifier) by sender j, including our own
        f_i(i); keys must be exactly those of C{packages}.
    @param packages: every participant's round-1 package, ours included.
    @raise InvalidCommitment: a package does not have t commitments.
    @raise InvalidSecretShare: the first sender (by identifier) whose share
        does not match its commitments.
    """
    check_identifier(identifier)
    _check_params(t, len(packages))
    ids = sorted(packages)
    for j in ids:
        check_identifier(j)
    if identifier not in packages:
        raise ValueError(f"no round-1 package for ourselves ({identifier})")
    if set(received_shares) != set(ids):
        raise ValueError(
            f"shares and packages disagree: no share from {sorted(set(ids) - set(received_shares))}, "
            f"no package from {sorted(set(received_shares) - set(ids))}"
        )
    for j in ids:
        if len(packages[j].commitments) != t:
            raise InvalidCommitment(j, f"{len(packages[j].commitments)} commitments where t={t}")
    summed = [point_sum([packages[j].commitments[k] for j in ids]) for k in range(t)]
    secret = sum(received_shares[j] for j in ids) % N
    vshares = {x: _evaluate(summed, x) for x in ids}
    if base_mul(secret) != vshares[identifier]:
        for j in ids:
            verify_share(j, identifier, received_shares[j], packages[j])
        raise AssertionError("shares sum inconsistently yet each verifies")  # a sum of valid shares is valid
    P = summed[0]
    if P.is_infinity:
        raise ValueError("group key is the identity")
    if taproot_safe:
        tw = taproot_tweak(P)
        twG = base_mul(tw)
        group_key = point_sum((P, twG))
        secret = (secret + tw) % N
        vshares = {x: point_sum((Y, twG)) for x, Y in vshares.items()}
    else:
        group_key = P
    return KeyPackage(identifier, t, secret, group_key, vshares, P)


def trusted_dealer_keygen(
    t: int, n: int, secret: Optional[int] = None, rand: Rand = os.urandom, *, taproot_safe: bool = True
) -> tuple[Point, dict[int, KeyPackage]]:
    """
    Shamir-share C{secret} (random if None) to identifiers 1..n, for tests
    and the demo.  C{rand} is drawn for a_0 (when C{secret} is None), then
    a_1..a_{t-1}, as in RFC 9591 Appendix C.

    @return: the group key and every participant's key package.
    """
    _check_params(t, n)
    if secret is None:
        secret = _random_scalar(rand)
    elif not (isinstance(secret, int) and 0 < secret < N):
        raise ValueError("the group secret must be an int in 1..N-1")
    coefficients = [secret] + [_random_scalar(rand) for _ in range(t - 1)]
    poly = Round1Secret(0, coefficients, n)
    shares = {i: poly._evaluate(i) for i in range(1, n + 1)}
    poly.forget()
    P = base_mul(secret)
    if taproot_safe:
        tw = taproot_tweak(P)
        shares = {i: (s + tw) % N for i, s in shares.items()}
        group_key = base_mul(secret + tw)
    else:
        group_key = P
    vshares = {i: base_mul(s) for i, s in shares.items()}
    return group_key, {i: KeyPackage(i, t, s, group_key, vshares, P) for i, s in shares.items()}
