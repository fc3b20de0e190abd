# -*- test-case-name: tests.test_crypto_rfc9591 -*-
"""
RFC 9591 FROST(secp256k1, SHA-256), the ciphersuite available per request
beside the default BIP 445 one.  Its signatures are I{not} BIP340: R is a
33-byte compressed point, there is no even-y rule, and the challenge is
H2 = hash_to_field(..., "FROST-secp256k1-SHA256-v1chal").

One function per spec algorithm, in spec order, under spec names
(C{nonce_generate}, C{commit}, C{encode_group_commitment_list},
C{compute_binding_factors}, C{compute_group_commitment},
C{compute_challenge}, C{sign}, C{verify_signature_share}, C{aggregate},
C{verify}).  Two departures, both for speed:

 - The per-session values every party needs (binding factors, each rho_i*E_i,
   the group commitment R and the challenge c) are computed once by
   L{session_context} and passed to L{sign}, L{verify_signature_share} and
   L{aggregate}.  Computing R costs one variable-base multiplication per
   signer and a single L{point_sum}; that is the floor for FROST without a
   multi-scalar multiplication, so signing at t signers costs about t such
   multiplications.
 - L{aggregate} checks the final signature first (two multiplications) and
   looks at individual shares only when it fails (identifiable abort), so
   the honest path does not pay t share verifications nor the O(t^2)
   Lagrange denominators.  L{aggregate_verified} verifies every share first
   for callers that want each share checked regardless.

Identifiers are ints in 1..N-1, serialised as 32-byte big-endian scalars
(RFC 9591 SerializeScalar).  The C{SecretNonce} returned by L{commit} holds
(hiding d, binding e) and, as its commitment bytes, D || E (66 bytes);
L{sign} consumes it.

Errors follow L{frostnode.crypto.errors}: C{ValueError} when the caller
passed inconsistent inputs (missing commitment, duplicate identifier),
L{InvalidEncoding} for malformed bytes, L{InvalidSignatureShare} naming
every signer whose share fails.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Union

from frostnode.crypto.errors import InvalidEncoding, InvalidSignatureShare
from frostnode.crypto.group import (
    N,
    Point,
    base_mul,
    point_from_bytes,
    point_sum,
    scalar_from_bytes,
)
from frostnode.crypto.hashes import hash_to_field
from frostnode.crypto.lagrange import lagrange_coefficient, lagrange_coefficients
from frostnode.crypto.nonces import SecretNonce

CONTEXT_STRING = b"FROST-secp256k1-SHA256-v1"
_DST_RHO = CONTEXT_STRING + b"rho"
_DST_CHAL = CONTEXT_STRING + b"chal"
_DST_NONCE = CONTEXT_STRING + b"nonce"
_PREFIX_MSG = CONTEXT_STRING + b"msg"
_PREFIX_COM = CONTEXT_STRING + b"com"

#: Wire sizes.
IDENTIFIER_SIZE = 32
COMMITMENT_SIZE = IDENTIFIER_SIZE + 33 + 33
SIGNATURE_SHARE_SIZE = IDENTIFIER_SIZE + 32
SIGNATURE_SIZE = 33 + 32

Rand = Callable[[int], bytes]


# -- identifiers ------------------------------------------------------------

def check_identifier(identifier: int) -> int:
    """Return C{identifier} if it is a valid FROST identifier (an int in 1..N-1)."""
    if not isinstance(identifier, int) or isinstance(identifier, bool) or not 0 < identifier < N:
        raise ValueError(f"FROST identifiers are ints in 1..N-1, not {identifier!r}")
    return identifier


def identifier_to_bytes(identifier: int) -> bytes:
    return check_identifier(identifier).to_bytes(IDENTIFIER_SIZE, "big")


def identifier_from_bytes(data: bytes) -> int:
    """Parse a 32-byte identifier; zero and values >= N are malformed."""
    if len(data) != IDENTIFIER_SIZE:
        raise InvalidEncoding(f"expected a {IDENTIFIER_SIZE}-byte identifier, got {len(data)} bytes")
    x = int.from_bytes(data, "big")
    if not 0 < x < N:
        raise InvalidEncoding("identifier is not in 1..N-1")
    return x


# -- hash functions (RFC 9591 section 6.5) ------------------------------------

def H1(m: bytes) -> int:
    return hash_to_field(m, _DST_RHO)


#: expand_message_xmd constants for H1 with L = 48 (RFC 9380 section 5.3.1).
_RHO_DST_PRIME = _DST_RHO + bytes((len(_DST_RHO),))
_RHO_B0_TAIL = (48).to_bytes(2, "big") + b"\x00" + _RHO_DST_PRIME
_RHO_B1_TAIL = b"\x01" + _RHO_DST_PRIME
_RHO_B2_TAIL = b"\x02" + _RHO_DST_PRIME


def _H1_batch(prefix: bytes, identifiers: Iterable[int]) -> dict[int, int]:
    """
    H1(prefix || SerializeScalar(i)) for many i: the binding factors.

    Same function as L{H1}; it absorbs Z_pad || prefix into SHA-256 once and
    copies the state per signer, which halves the hashing cost of a session
    at t = 67 (about 8% of signing).  The vectors tests pin it to L{H1}.
    """
    base = hashlib.sha256(bytes(64) + prefix)
    sha256 = hashlib.sha256
    out = {}
    for i in identifiers:
        h = base.copy()
        h.update(i.to_bytes(32, "big") + _RHO_B0_TAIL)
        b0 = h.digest()
        b1 = sha256(b0 + _RHO_B1_TAIL).digest()
        b2 = sha256((int.from_bytes(b0, "big") ^ int.from_bytes(b1, "big")).to_bytes(32, "big") + _RHO_B2_TAIL).digest()
        out[i] = int.from_bytes(b1 + b2[:16], "big") % N
    return out


def H2(m: bytes) -> int:
    return hash_to_field(m, _DST_CHAL)


def H3(m: bytes) -> int:
    return hash_to_field(m, _DST_NONCE)


def H4(m: bytes) -> bytes:
    """A plain SHA-256 digest, not a scalar: it is only ever hashed again."""
    return hashlib.sha256(_PREFIX_MSG + m).digest()


def H5(m: bytes) -> bytes:
    return hashlib.sha256(_PREFIX_COM + m).digest()


# -- wire types ---------------------------------------------------------------

class SigningCommitment(NamedTuple):
    """A signer's round-one output: (identifier, hiding D = d*G, binding E = e*G)."""

    identifier: int
    hiding: Point
    binding: Point

    def nonce_bytes(self) -> bytes:
        """D || E, as bound into the matching L{SecretNonce}."""
        return self.hiding.encode() + self.binding.encode()

    def encode(self) -> bytes:
        return identifier_to_bytes(self.identifier) + self.hiding.encode() + self.binding.encode()

    @classmethod
    def decode(cls, data: bytes) -> "SigningCommitment":
        if len(data) != COMMITMENT_SIZE:
            raise InvalidEncoding(f"expected a {COMMITMENT_SIZE}-byte signing commitment, got {len(data)} bytes")
        return cls(identifier_from_bytes(data[:32]), point_from_bytes(data[32:65]), point_from_bytes(data[65:98]))


class SignatureShare(NamedTuple):
    """A signer's round-two output z_i, with the identifier it claims."""

    identifier: int
    share: int

    def encode(self) -> bytes:
        return identifier_to_bytes(self.identifier) + (self.share % N).to_bytes(32, "big")

    @classmethod
    def decode(cls, data: bytes) -> "SignatureShare":
        if len(data) != SIGNATURE_SHARE_SIZE:
            raise InvalidEncoding(f"expected a {SIGNATURE_SHARE_SIZE}-byte signature share, got {len(data)} bytes")
        return cls(identifier_from_bytes(data[:32]), scalar_from_bytes(data[32:]))


class Signature(NamedTuple):
    """An RFC 9591 signature (R, z); 65 bytes on the wire: compressed R || z."""

    R: Point
    z: int

    def encode(self) -> bytes:
        return self.R.encode() + (self.z % N).to_bytes(32, "big")

    @classmethod
    def decode(cls, data: bytes) -> "Signature":
        if len(data) != SIGNATURE_SIZE:
            raise InvalidEncoding(f"expected a {SIGNATURE_SIZE}-byte signature, got {len(data)} bytes")
        return cls(point_from_bytes(data[:33]), scalar_from_bytes(data[33:]))


# -- round one ----------------------------------------------------------------

def nonce_generate(secret: int, random_bytes: bytes) -> int:
    """RFC 9591 section 4.1: H3(random_bytes || SerializeScalar(secret)), hedged against bad randomness."""
    if len(random_bytes) != 32:
        raise ValueError("nonce_generate needs 32 random bytes")
    return H3(bytes(random_bytes) + (secret % N).to_bytes(32, "big"))


def commit(identifier: int, signing_share: int, rand: Rand = os.urandom) -> tuple[SecretNonce, SigningCommitment]:
    """
    RFC 9591 section 5.1 round one.  C{rand} is called twice for 32 bytes,
    hiding first, then binding.

    @return: the single-use secret nonce (d, e) and the public commitment to
        publish.
    """
    check_identifier(identifier)
    d = nonce_generate(signing_share, rand(32))
    e = nonce_generate(signing_share, rand(32))
    comm = SigningCommitment(identifier, base_mul(d), base_mul(e))
    return SecretNonce(d, e, comm.nonce_bytes()), comm


# -- per-session values ---------------------------------------------------------

def _canonical(commitment_list: Iterable[SigningCommitment]) -> tuple[SigningCommitment, ...]:
    """The list sorted by identifier, as the RFC requires; duplicates are the caller's error."""
    comms = tuple(sorted(commitment_list, key=lambda c: c.identifier))
    if not comms:
        raise ValueError("empty commitment list")
    prev = 0
    for c in comms:
        check_identifier(c.identifier)
        if c.identifier == prev:
            raise ValueError(f"two commitments for identifier {prev}")
        prev = c.identifier
    return comms


def _encode_list(comms: tuple[SigningCommitment, ...]) -> bytes:
    return b"".join([c.identifier.to_bytes(32, "big") + c.hiding.encode() + c.binding.encode() for c in comms])


def encode_group_commitment_list(commitment_list: Iterable[SigningCommitment]) -> bytes:
    return _encode_list(_canonical(commitment_list))


def _rho_input_prefix(group_public_key: Point, comms: tuple[SigningCommitment, ...], msg: bytes) -> bytes:
    return group_public_key.encode() + H4(msg) + H5(_encode_list(comms))


def binding_factor_inputs(group_public_key: Point, commitment_list: Iterable[SigningCommitment], msg: bytes) -> dict[int, bytes]:
    """rho_input per signer: SerializeElement(PK) || H4(msg) || H5(encoded list) || SerializeScalar(id)."""
    comms = _canonical(commitment_list)
    prefix = _rho_input_prefix(group_public_key, comms, msg)
    return {c.identifier: prefix + c.identifier.to_bytes(32, "big") for c in comms}


def _binding_factors(group_public_key: Point, comms: tuple[SigningCommitment, ...], msg: bytes) -> dict[int, int]:
    return _H1_batch(_rho_input_prefix(group_public_key, comms, msg), (c.identifier for c in comms))


def compute_binding_factors(group_public_key: Point, commitment_list: Iterable[SigningCommitment], msg: bytes) -> dict[int, int]:
    """RFC 9591 section 4.4 (H1 of each binding_factor_input), as a dict ordered by identifier."""
    return _binding_factors(group_public_key, _canonical(commitment_list), msg)


def _binding_terms(comms: tuple[SigningCommitment, ...], binding_factors: Mapping[int, int]) -> dict[int, Point]:
    try:
        return {c.identifier: c.binding * binding_factors[c.identifier] for c in comms}
    except KeyError as e:
        raise ValueError(f"no binding factor for identifier {e.args[0]}") from None


def _group_commitment(comms: tuple[SigningCommitment, ...], terms: Mapping[int, Point]) -> Point:
    R = point_sum([c.hiding for c in comms] + list(terms.values()))
    if R.is_infinity:
        # RFC 9591 SerializeElement fails on the identity; honest nonces hit this with negligible probability
        raise ValueError("group commitment is the identity")
    return R


def compute_group_commitment(commitment_list: Iterable[SigningCommitment], binding_factors: Mapping[int, int]) -> Point:
    """RFC 9591 section 4.5: sum of D_i + rho_i*E_i, in one L{point_sum}."""
    comms = _canonical(commitment_list)
    return _group_commitment(comms, _binding_terms(comms, binding_factors))


def compute_challenge(group_commitment: Point, group_public_key: Point, msg: bytes) -> int:
    """RFC 9591 section 4.6: H2(SerializeElement(R) || SerializeElement(PK) || msg)."""
    return H2(group_commitment.encode() + group_public_key.encode() + msg)


class SessionContext(NamedTuple):
    """
    What every party derives from (group key, message, commitment list),
    computed once by L{session_context}.

    @ivar commitments: the signers' commitments keyed by identifier, ascending.
    @ivar binding_terms: rho_i * E_i per signer, kept so that verifying a
        share does not repeat the multiplication R already paid for.
    """

    group_public_key: Point
    msg: bytes
    commitments: Mapping[int, SigningCommitment]
    binding_factors: Mapping[int, int]
    binding_terms: Mapping[int, Point]
    group_commitment: Point
    challenge: int

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.commitments)

    def commitment_share(self, identifier: int) -> Point:
        """R_i = D_i + rho_i*E_i, the part of R that signer C{identifier} committed to."""
        return point_sum((self.commitments[identifier].hiding, self.binding_terms[identifier]))


def session_context(group_public_key: Point, msg: bytes, commitment_list: Iterable[SigningCommitment]) -> SessionContext:
    """Binding factors, R and c for one signing session; t multiplications and one point sum."""
    if group_public_key.is_infinity:
        raise ValueError("the group public key is the identity")
    msg = bytes(msg)
    comms = _canonical(commitment_list)
    factors = _binding_factors(group_public_key, comms, msg)
    terms = _binding_terms(comms, factors)
    R = _group_commitment(comms, terms)
    return SessionContext(
        group_public_key, msg, {c.identifier: c for c in comms}, factors, terms, R, compute_challenge(R, group_public_key, msg)
    )


# -- round two ----------------------------------------------------------------

def sign(identifier: int, signing_share: int, nonce: SecretNonce, session: SessionContext) -> SignatureShare:
    """
    RFC 9591 section 5.2 round two: z_i = d + e*rho_i + lambda_i*s_i*c.

    As ZF's C{round2::sign} does, first check that the session holds I{our}
    commitment, matching the nonce, so that a coordinator cannot have us sign
    with a commitment it substituted.  Only then is the nonce consumed (a
    rejected session does not burn a pooled nonce; nothing was revealed).
    The share is checked against the commitment before it is returned: a
    persisted nonce whose scalars do not match its commitment bytes raises
    instead of producing a share that would fail for everyone else.

    @raise ValueError: the session has no or another commitment for us.
    @raise NonceReuseError: the nonce was already used.
    """
    comm = session.commitments.get(identifier)
    if comm is None:
        raise ValueError(f"the commitment list has no commitment for identifier {identifier}")
    if comm.nonce_bytes() != nonce.commitment:
        raise ValueError(f"the commitment list holds a different commitment for identifier {identifier}")
    d, e = nonce.consume()
    rho = session.binding_factors[identifier]
    lam = lagrange_coefficient(session.participants, identifier)
    k = (d + e * rho) % N
    if base_mul(k) != point_sum((comm.hiding, session.binding_terms[identifier])):
        raise ValueError("secret nonce does not match its commitment; no share produced")
    return SignatureShare(identifier, (k + lam * signing_share % N * session.challenge) % N)


def verify_signature_share(
    share: SignatureShare, verification_share: Point, session: SessionContext, lam: Optional[int] = None
) -> bool:
    """
    RFC 9591 section 5.4: z_i*G == R_i + (c*lambda_i)*Y_i.

    @param lam: lambda_i if the caller already has it (batched over the
        signer set); computed otherwise.
    @return: False for a bad share, a share from someone outside the session,
        or a verification share at infinity.
    """
    i = share.identifier
    comm = session.commitments.get(i)
    if comm is None or verification_share.is_infinity:
        return False
    if lam is None:
        lam = lagrange_coefficient(session.participants, i)
    rhs = point_sum((comm.hiding, session.binding_terms[i], verification_share * (session.challenge * lam)))
    return base_mul(share.share) == rhs


# -- aggregation ----------------------------------------------------------------

def _shares_by_id(session: SessionContext, sig_shares: Iterable[SignatureShare]) -> dict[int, int]:
    shares: dict[int, int] = {}
    for s in sig_shares:
        if s.identifier in shares:
            raise ValueError(f"two signature shares for identifier {s.identifier}")
        shares[s.identifier] = s.share
    if shares.keys() != session.commitments.keys():
        missing = sorted(session.commitments.keys() - shares.keys())
        extra = sorted(shares.keys() - session.commitments.keys())
        raise ValueError(f"signature shares do not match the signer set: missing {missing}, unexpected {extra}")
    return shares


def _culprits(session: SessionContext, shares: Mapping[int, int], verification_shares: Mapping[int, Point]) -> list[int]:
    missing = [i for i in shares if i not in verification_shares]
    if missing:
        raise ValueError(f"no verification share for identifiers {missing}")
    lams = lagrange_coefficients(session.participants)
    return [
        i
        for i, z in shares.items()
        if not verify_signature_share(SignatureShare(i, z), verification_shares[i], session, lams[i])
    ]


def _check(group_public_key: Point, R: Point, challenge: int, z: int) -> bool:
    return base_mul(z) == point_sum((R, group_public_key * challenge))


def aggregate(
    session: SessionContext, sig_shares: Iterable[SignatureShare], verification_shares: Mapping[int, Point]
) -> Signature:
    """
    RFC 9591 section 5.3, with identifiable abort: if (R, sum z_i) does not
    verify, every share is checked and all failing signers are named.

    @param verification_shares: Y_i by identifier (a superset is fine);
        consulted only when the signature fails.
    @raise InvalidSignatureShare: naming every signer whose share fails.
    @raise ValueError: shares do not match the session's signers, or every
        share is valid yet the signature is not (fewer than t signers, or
        verification shares that do not belong to this group key).
    """
    shares = _shares_by_id(session, sig_shares)
    z = sum(shares.values()) % N
    if _check(session.group_public_key, session.group_commitment, session.challenge, z):
        return Signature(session.group_commitment, z)
    culprits = _culprits(session, shares, verification_shares)
    if culprits:
        raise InvalidSignatureShare(culprits, "signature share does not verify")
    raise ValueError("every signature share verifies but the signature does not: too few signers or a foreign key")


def aggregate_verified(
    session: SessionContext, sig_shares: Iterable[SignatureShare], verification_shares: Mapping[int, Point]
) -> Signature:
    """Like L{aggregate}, but verify every share before summing (t extra share checks)."""
    shares = _shares_by_id(session, sig_shares)
    culprits = _culprits(session, shares, verification_shares)
    if culprits:
        raise InvalidSignatureShare(culprits, "signature share does not verify")
    z = sum(shares.values()) % N
    if not _check(session.group_public_key, session.group_commitment, session.challenge, z):
        raise ValueError("every signature share verifies but the signature does not: too few signers or a foreign key")
    return Signature(session.group_commitment, z)


def verify(group_public_key: Point, msg: bytes, signature: Union[Signature, bytes]) -> bool:
    """
    RFC 9591 signature verification (prime-order group, so no cofactor):
    z*G == R + H2(R || PK || msg)*PK.  Malformed signature bytes are just
    invalid.
    """
    if not isinstance(signature, Signature):
        try:
            signature = Signature.decode(bytes(signature))
        except InvalidEncoding:
            return False
    R, z = signature
    if R.is_infinity or group_public_key.is_infinity or not 0 <= z < N:
        return False
    return _check(group_public_key, R, compute_challenge(R, group_public_key, bytes(msg)), z)
