# -*- test-case-name: tests.test_crypto_bip445 -*-
"""
BIP 445 (version 0.8.0): FROST signing that yields BIP340 signatures.

This is the federation's default ciphersuite.  One function per algorithm of
the BIP, with the BIP's names and argument order; NamedTuple contexts as in
the reference code.  BIP 445 is "FROST3": a MuSig2-style nonce aggregation
with one binding coefficient C{b} for the whole session, so a partial
signature is C{s_i = k1 + b*k2 + e*lambda_i*d_i}.

Conventions and decisions:

 - Participant ids are 0-based (0..n-1); Lagrange interpolation uses
   C{x = id + 1}.  In the federation, position i in the sorted host keys has
   BIP 445 id i (FROST identifier i + 1).
 - Two kinds of error, as the BIP states them.  C{ValueError} (messages as
   in the BIP's vectors): the caller broke a precondition.
   L{InvalidContributionError}C{(signer_index, contrib)}: a participant sent
   something bad.  C{signer_index} is a I{position in the input list}
   (not an id), or C{None} for the coordinator.
 - Secret nonces are L{SecretNonce} objects holding C{(k1, k2)} and the
   66-byte pubnonce; L{sign} consumes them, so a second L{sign} raises
   L{NonceReuseError}.  For the BIP's vectors L{sign} also takes a raw 64-byte
   C{k1 || k2}; a C{bytearray} is zeroed, as the reference does.  A nonce is
   only consumed once every check on the session, the secret share and the
   signer's membership has passed, so a request the signer refuses does not
   burn it.
 - L{sign} checks its own partial signature before returning it (the BIP
   recommends it; it costs about two variable-base multiplications).
 - The BIP says an implementation may validate a Signers Context once and
   skip repeated checks.  L{validate_signers_ctx} is memoised on the exact
   bytes of the context (a small LRU), which also keeps the Lagrange
   coefficients of the signer set: for 67 signers that check is 67
   multiplications, while signing needs only a handful.  Only successful
   validations are remembered.
 - L{partial_sig_agg} is the BIP's (no verification).  For the coordinator,
   L{partial_sig_agg_verified} checks the final signature once and, if it
   fails, runs L{partial_sig_verify} on every share and raises
   L{InvalidSignatureShare} naming I{every} failing signer by its
   participant id.
 - L{taproot_session_ctx} and friends sign under the BIP86-style output key
   of the DKG's Taproot-safe internal key (an x-only tweak
   C{hash_TapTweak(xbytes(internal))}).

Arithmetic is L{frostnode.crypto.group}: multiply, then one L{point_sum}.

Lagrange coefficients come from L{frostnode.crypto.lagrange}, which works on
x coordinates: BIP 445 id i is x = i + 1.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal, NamedTuple, NewType, Optional, Sequence, Union

from frostnode.crypto.bip340 import schnorr_verify, taptweak
from frostnode.crypto.errors import InvalidContributionError, InvalidEncoding, InvalidSignatureShare
from frostnode.crypto.group import (
    G,
    INFINITY,
    N,
    Point,
    base_mul,
    point_from_bytes,
    point_sum,
    scalar_from_bytes,
    scalar_from_bytes_nonzero,
    scalar_to_bytes,
)
from frostnode.crypto.hashes import tagged_hash
from frostnode.crypto.lagrange import lagrange_coefficient, lagrange_coefficients
from frostnode.crypto.nonces import SecretNonce

PlainPk = NewType("PlainPk", bytes)
XonlyPk = NewType("XonlyPk", bytes)
ContribKind = Literal["aggothernonce", "aggnonce", "psig", "pubnonce"]

TAG_AUX = "BIP0445/aux"
TAG_NONCE = "BIP0445/nonce"
TAG_NONCECOEF = "BIP0445/noncecoef"
TAG_DETERMINISTIC_NONCE = "BIP0445/deterministic/nonce"
TAG_CHALLENGE = "BIP0340/challenge"

#: Identifiers are serialised as 4 bytes.
MAX_PARTICIPANTS = 2**32 - 1

_ZERO33 = bytes(33)

SecNonceArg = Union[SecretNonce, bytearray]


# -- small helpers ----------------------------------------------------------

def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _cpoint_ext(data: bytes) -> Point:
    """cpoint_ext: 33 zero bytes are the identity, anything else a strict point."""
    if bytes(data) == _ZERO33:
        return INFINITY
    return point_from_bytes(data)


def _cbytes_ext(P: Point) -> bytes:
    return _ZERO33 if P.is_infinity else P.encode()


# -- Signers Context ---------------------------------------------------------

class SignersContext(NamedTuple):
    """Public data of one signing set: (n, t, ids, pubshares, thresh_pk)."""

    n: int
    t: int
    ids: Sequence[int]
    pubshares: Sequence[bytes]
    thresh_pk: bytes


class _ValidSigners(NamedTuple):
    """What validating a Signers Context yields; kept by the memo."""

    ids: tuple[int, ...]
    pubshares: tuple[bytes, ...]
    points: tuple[Point, ...]
    lambdas: dict[int, int]


def _interpolating_values(ids: Sequence[int]) -> dict[int, int]:
    """Every signer's DeriveInterpolatingValue at once (ids distinct, checked by the caller)."""
    by_x = lagrange_coefficients([i + 1 for i in ids])
    return {i: by_x[i + 1] for i in ids}


def derive_interpolating_value(ids: Sequence[int], my_id: int) -> int:
    """DeriveInterpolatingValue(id_1..u, my_id): Lagrange at 0 with x = id + 1."""
    if my_id not in ids:
        raise ValueError("The signer's id must be present in the participant identifier list.")
    if len(set(ids)) != len(ids):
        raise ValueError("The participant identifier list contains duplicate elements.")
    return lagrange_coefficient([i + 1 for i in ids], my_id + 1)


def derive_thresh_pubkey(ids: Sequence[int], points: Sequence[Point], lambdas: Optional[dict[int, int]] = None) -> Point:
    """DeriveThreshPubkey: sum of lambda_i * P_i (one combine); may be the identity."""
    if lambdas is None:
        lambdas = _interpolating_values(ids)
    return point_sum([P * lambdas[i] for i, P in zip(ids, points)])


@lru_cache(maxsize=32)
def _validate(n: int, t: int, ids: tuple[int, ...], pubshares: tuple[bytes, ...], thresh_pk: bytes) -> _ValidSigners:
    if not 1 <= t <= n:
        raise ValueError("The threshold must be 1 <= t <= n.")
    if n > MAX_PARTICIPANTS:
        raise ValueError("The number of participants must be below 2^32.")
    if not t <= len(ids) <= n:
        raise ValueError("The number of signers must be between t and n.")
    if len(pubshares) != len(ids):
        raise ValueError("The pubshares and ids arrays must have the same length.")
    points = []
    for idx, (i, pubshare) in enumerate(zip(ids, pubshares)):
        if not isinstance(i, int) or not 0 <= i <= n - 1:
            raise ValueError(f"The participant identifier at index {idx} is out of range.")
        try:
            points.append(point_from_bytes(pubshare))
        except InvalidEncoding:
            raise ValueError(f"Invalid pubshare at index {idx}.") from None
    if len(set(ids)) != len(ids):
        raise ValueError("The participant identifier list contains duplicate elements.")
    lambdas = _interpolating_values(ids)
    Q = derive_thresh_pubkey(ids, points, lambdas)
    if Q.is_infinity:
        raise ValueError("The threshold pubkey must not be the point at infinity.")
    if Q.encode() != thresh_pk:
        raise ValueError("The provided key material is incorrect.")
    return _ValidSigners(ids, pubshares, tuple(points), lambdas)


def _valid_signers(signers_ctx: SignersContext) -> _ValidSigners:
    n, t, ids, pubshares, thresh_pk = signers_ctx
    return _validate(int(n), int(t), tuple(ids), tuple(bytes(p) for p in pubshares), bytes(thresh_pk))


def validate_signers_ctx(signers_ctx: SignersContext) -> None:
    """
    ValidateSignersCtx: ids distinct and in range, pubshares valid points,
    and the pubshares interpolate to C{thresh_pk}.

    @raise ValueError: with the BIP's message for the first failed check.
    """
    _valid_signers(signers_ctx)


# -- Tweak Context -------------------------------------------------------------

class TweakContext(NamedTuple):
    """(Q, gacc, tacc), BIP327's KeyAgg context: the possibly tweaked key."""

    Q: Point
    gacc: int
    tacc: int


def tweak_ctx_init(thresh_pk: bytes) -> TweakContext:
    """TweakCtxInit(thresh_pk)."""
    try:
        Q = point_from_bytes(thresh_pk)
    except InvalidEncoding:
        raise ValueError("The threshold public key is not a valid point.") from None
    return TweakContext(Q, 1, 0)


def get_xonly_pk(tweak_ctx: TweakContext) -> XonlyPk:
    """GetXonlyPubkey: the key BIP340 signatures verify under."""
    return XonlyPk(tweak_ctx.Q.xbytes())


def get_plain_pk(tweak_ctx: TweakContext) -> PlainPk:
    """GetPlainPubkey; C{[0] & 1} is a Taproot control block's parity bit."""
    return PlainPk(tweak_ctx.Q.encode())


def apply_tweak(tweak_ctx: TweakContext, tweak: bytes, is_xonly: bool) -> TweakContext:
    """
    ApplyTweak: Q' = g*Q + t*G with g = -1 only for an x-only tweak of an
    odd-y key; gacc and tacc track what signers must compensate.
    """
    if len(tweak) != 32:
        raise ValueError("The tweak must be a 32-byte array.")
    Q, gacc, tacc = tweak_ctx
    g = N - 1 if is_xonly and not Q.has_even_y() else 1
    try:
        t = scalar_from_bytes(bytes(tweak))
    except InvalidEncoding:
        raise ValueError("The tweak value is out of range.") from None
    Q_ = point_sum((-Q if g != 1 else Q, base_mul(t)))
    if Q_.is_infinity:
        raise ValueError("The result of tweaking cannot be infinity.")
    return TweakContext(Q_, g * gacc % N, (t + g * tacc) % N)


def thresh_pubkey_and_tweak(thresh_pk: bytes, tweaks: Sequence[bytes], is_xonly: Sequence[bool]) -> TweakContext:
    """TweakCtxInit followed by ApplyTweak for each (tweak, mode)."""
    if len(tweaks) != len(is_xonly):
        raise ValueError("The tweaks and is_xonly arrays must have the same length.")
    ctx = tweak_ctx_init(thresh_pk)
    for tweak, xonly in zip(tweaks, is_xonly):
        ctx = apply_tweak(ctx, tweak, xonly)
    return ctx


# -- Nonce generation and aggregation -------------------------------------------

def nonce_hash(rand: bytes, pubshare: bytes, thresh_pk: bytes, i: int, msg_prefixed: bytes, extra_in: bytes) -> bytes:
    buf = b"".join((
        rand,
        len(pubshare).to_bytes(1, "big"), pubshare,
        len(thresh_pk).to_bytes(1, "big"), thresh_pk,
        msg_prefixed,
        len(extra_in).to_bytes(4, "big"), extra_in,
        i.to_bytes(1, "big"),
    ))
    return tagged_hash(TAG_NONCE, buf)


def nonce_gen_internal(
    rand_: bytes,
    secshare: Optional[bytes],
    pubshare: Optional[bytes],
    thresh_pk: Optional[bytes],
    msg: Optional[bytes],
    extra_in: Optional[bytes],
) -> tuple[SecretNonce, bytes]:
    """
    NonceGen with the randomness C{rand_} supplied.  Absent (C{None}) and
    empty optional inputs hash differently, as the BIP requires.

    @return: (secret nonce, 66-byte pubnonce).
    """
    rand = _xor(bytes(secshare), tagged_hash(TAG_AUX, rand_)) if secshare is not None else bytes(rand_)
    pubshare_b = b"" if pubshare is None else bytes(pubshare)
    thresh_b = b"" if thresh_pk is None else bytes(thresh_pk)
    if msg is None:
        msg_prefixed = b"\x00"
    else:
        msg_prefixed = b"\x01" + len(msg).to_bytes(8, "big") + bytes(msg)
    extra_b = b"" if extra_in is None else bytes(extra_in)
    k1 = int.from_bytes(nonce_hash(rand, pubshare_b, thresh_b, 0, msg_prefixed, extra_b), "big") % N
    k2 = int.from_bytes(nonce_hash(rand, pubshare_b, thresh_b, 1, msg_prefixed, extra_b), "big") % N
    assert k1 != 0 and k2 != 0  # negligible probability
    pubnonce = base_mul(k1).encode() + base_mul(k2).encode()
    return SecretNonce(k1, k2, pubnonce), pubnonce


def nonce_gen(
    secshare: Optional[bytes],
    pubshare: Optional[bytes],
    thresh_pk: Optional[bytes],
    msg: Optional[bytes],
    extra_in: Optional[bytes],
    rand_: Optional[bytes] = None,
) -> tuple[SecretNonce, bytes]:
    """
    NonceGen: fresh (secnonce, pubnonce) for one signing session.

    The optional inputs are defence in depth against a broken random
    generator; pass the ones already known.  C{thresh_pk} is the x-only
    (ideally tweaked) key.  C{rand_} defaults to C{os.urandom(32)}; tests
    inject it.
    """
    if secshare is not None and len(secshare) != 32:
        raise ValueError("The optional byte array secshare must have length 32.")
    if pubshare is not None and len(pubshare) != 33:
        raise ValueError("The optional byte array pubshare must have length 33.")
    if thresh_pk is not None and len(thresh_pk) != 32:
        raise ValueError("The optional byte array thresh_pk must have length 32.")
    if extra_in is not None and len(extra_in) > 2**32 - 1:
        raise ValueError("The optional byte array extra_in is too long.")
    if rand_ is None:
        rand_ = os.urandom(32)
    elif len(rand_) != 32:
        raise ValueError("rand_ must be 32 bytes.")
    return nonce_gen_internal(rand_, secshare, pubshare, thresh_pk, msg, extra_in)


def _parse_pubnonces(pubnonces: Sequence[bytes]) -> list[tuple[Point, Point]]:
    """cpoint both halves of every pubnonce, blaming the first bad one by position."""
    out = []
    for idx, pubnonce in enumerate(pubnonces):
        try:
            if len(pubnonce) != 66:
                raise InvalidEncoding("a pubnonce is 66 bytes")
            out.append((point_from_bytes(pubnonce[0:33]), point_from_bytes(pubnonce[33:66])))
        except InvalidEncoding:
            raise InvalidContributionError(idx, "pubnonce") from None
    return out


def _agg_parsed(parsed: Sequence[tuple[Point, Point]]) -> bytes:
    R1 = point_sum(r1 for r1, _ in parsed)
    R2 = point_sum(r2 for _, r2 in parsed)
    return _cbytes_ext(R1) + _cbytes_ext(R2)


def nonce_agg(pubnonces: Sequence[bytes]) -> bytes:
    """
    NonceAgg: the 66-byte aggregate nonce; either half may be 33 zero bytes
    (the identity), which signing tolerates so that the culprit shows up in
    partial signature verification.

    @raise InvalidContributionError: C{(i, "pubnonce")} for the first
        unparseable pubnonce, C{i} its position in C{pubnonces}.
    """
    return _agg_parsed(_parse_pubnonces(pubnonces))


# -- Session Context --------------------------------------------------------------

class SessionContext(NamedTuple):
    """(signers_ctx, aggnonce, tweaks, is_xonly, msg); C{v} is C{len(tweaks)}."""

    signers_ctx: SignersContext
    aggnonce: bytes
    tweaks: Sequence[bytes]
    is_xonly: Sequence[bool]
    msg: bytes


class SessionValues(NamedTuple):
    """GetSessionValues' output, plus the validated signer set."""

    Q: Point
    gacc: int
    tacc: int
    ids: tuple[int, ...]
    pubshares: tuple[bytes, ...]
    b: int
    R: Point
    e: int
    signers: _ValidSigners


def serialize_ids(ids: Sequence[int]) -> bytes:
    """SerializeIds: sorted, 4 bytes each, so C{b} commits to the set, not its order."""
    return b"".join(i.to_bytes(4, "big") for i in sorted(ids))


def get_session_values(session_ctx: SessionContext) -> SessionValues:
    """
    GetSessionValues.  b = H_noncecoef(bytes(4, len(ser_ids)) || ser_ids ||
    aggnonce || xbytes(Q) || m); R = R1 + b*R2, or G if that is the
    identity; e = H_BIP0340/challenge(xbytes(R) || xbytes(Q) || m).

    The length prefix is new in 0.8.0.  The 0.8.0 reference code (and so
    its vectors) prefixes the I{byte} length of ser_ids, 4*u, not u itself
    as some other implementations read the BIP text; we follow the vectors.

    @raise InvalidContributionError: C{(None, "aggnonce")} if the
        coordinator's aggregate nonce does not parse.
    """
    signers_ctx, aggnonce, tweaks, is_xonly, msg = session_ctx
    signers = _valid_signers(signers_ctx)
    Q, gacc, tacc = thresh_pubkey_and_tweak(signers_ctx.thresh_pk, tweaks, is_xonly)
    ids = signers.ids
    xQ = Q.xbytes()
    aggnonce = bytes(aggnonce)
    ser_ids = serialize_ids(ids)
    b = int.from_bytes(
        tagged_hash(TAG_NONCECOEF, len(ser_ids).to_bytes(4, "big") + ser_ids + aggnonce + xQ + msg), "big"
    ) % N
    assert b != 0  # negligible probability
    try:
        if len(aggnonce) != 66:
            raise InvalidEncoding("an aggnonce is 66 bytes")
        R1 = _cpoint_ext(aggnonce[0:33])
        R2 = _cpoint_ext(aggnonce[33:66])
    except InvalidEncoding:
        raise InvalidContributionError(None, "aggnonce") from None
    R = point_sum((R1, R2 * b))
    if R.is_infinity:
        R = G
    e = int.from_bytes(tagged_hash(TAG_CHALLENGE, R.xbytes() + xQ + msg), "big") % N
    assert e != 0  # negligible probability
    return SessionValues(Q, gacc, tacc, ids, signers.pubshares, b, R, e, signers)


# -- Signing ---------------------------------------------------------------------------

def _take_secnonce(secnonce: SecNonceArg) -> tuple[int, int, Optional[bytes]]:
    """
    (k1', k2', pubnonce or None) from whatever form the nonce came in,
    making it unusable afterwards where the form allows.
    """
    if isinstance(secnonce, SecretNonce):
        commitment = secnonce.commitment
        k1, k2 = secnonce.consume()
        if not 0 < k1 < N:
            raise ValueError("first secnonce value is out of range.")
        if not 0 < k2 < N:
            raise ValueError("second secnonce value is out of range.")
        return k1, k2, commitment
    if not isinstance(secnonce, bytearray):
        # Immutable bytes cannot be wiped, so the same raw nonce could sign
        # twice; only the forms that can be spent are accepted.
        raise TypeError("secnonce must be a SecretNonce or a bytearray (which is zeroed)")
    if len(secnonce) != 64:
        raise ValueError("The secnonce must be 64 bytes.")
    try:
        k1 = scalar_from_bytes_nonzero(bytes(secnonce[0:32]))
    except InvalidEncoding:
        raise ValueError("first secnonce value is out of range.") from None
    try:
        k2 = scalar_from_bytes_nonzero(bytes(secnonce[32:64]))
    except InvalidEncoding:
        raise ValueError("second secnonce value is out of range.") from None
    if isinstance(secnonce, bytearray):
        secnonce[:] = bytes(64)
    return k1, k2, None


def _sign_with_values(sv: SessionValues, secnonce: SecNonceArg, secshare: bytes, my_id: int) -> tuple[bytes, bytes, bytes]:
    """Sign given session values; returns (psig, pubnonce, pubshare)."""
    try:
        d_ = scalar_from_bytes_nonzero(bytes(secshare))
    except InvalidEncoding:
        raise ValueError("The signer's secret share value is out of range.") from None
    pubshare = base_mul(d_).encode()
    if pubshare not in sv.pubshares:
        raise ValueError("The signer's pubshare must be included in the list of pubshares.")
    if my_id not in sv.ids:
        raise ValueError("The signer's id must be present in the participant identifier list.")
    k1_, k2_, pubnonce = _take_secnonce(secnonce)
    if pubnonce is None:
        pubnonce = base_mul(k1_).encode() + base_mul(k2_).encode()
    if sv.R.has_even_y():
        k1, k2 = k1_, k2_
    else:
        k1, k2 = N - k1_, N - k2_
    lam = sv.signers.lambdas[my_id]
    g = 1 if sv.Q.has_even_y() else N - 1
    d = g * sv.gacc * d_ % N
    s = (k1 + sv.b * k2 + sv.e * lam * d) % N
    psig = scalar_to_bytes(s)
    if not _verify_with_values(sv, psig, my_id, pubnonce, pubshare):
        raise ValueError("The partial signature failed self-verification (secnonce does not match its pubnonce?).")
    return psig, pubnonce, pubshare


def sign(secnonce: SecNonceArg, secshare: bytes, my_id: int, session_ctx: SessionContext) -> bytes:
    """
    Sign: this signer's 32-byte partial signature.

    @param secnonce: a L{SecretNonce} (consumed), or for test vectors a raw
        64-byte C{k1 || k2} (a C{bytearray} is zeroed).
    @raise NonceReuseError: the L{SecretNonce} was already used.
    @raise ValueError: bad session, secret share, id or nonce.
    @raise InvalidContributionError: C{(None, "aggnonce")}.
    """
    sv = get_session_values(session_ctx)
    return _sign_with_values(sv, secnonce, secshare, my_id)[0]


def det_nonce_hash(
    secshare_: bytes, my_id: int, ids: Sequence[int], aggothernonce: bytes, tweaked_tpk: bytes, msg: bytes, i: int
) -> bytes:
    buf = b"".join((
        secshare_,
        my_id.to_bytes(4, "big"),
        len(ids).to_bytes(4, "big"),
        serialize_ids(ids),
        aggothernonce,
        tweaked_tpk,
        len(msg).to_bytes(8, "big"),
        msg,
        i.to_bytes(1, "big"),
    ))
    return tagged_hash(TAG_DETERMINISTIC_NONCE, buf)


def deterministic_sign(
    secshare: bytes,
    my_id: int,
    aggothernonce: Optional[bytes],
    signers_ctx: SignersContext,
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    rand: Optional[bytes],
) -> tuple[bytes, bytes]:
    """
    DeterministicSign: a stateless signer that is the last to pick its nonce.

    Only safe for the one signer that sees the aggregate of all other
    nonces first; C{aggothernonce} may come from an untrusted coordinator.
    The nonce binds the signer set, so replays with other sets give other
    nonces.

    @return: (pubnonce, psig).
    @raise InvalidContributionError: C{(None, "aggothernonce")}.
    """
    if rand is not None:
        if len(rand) != 32:
            raise ValueError("rand must be 32 bytes.")
        secshare_ = _xor(bytes(secshare), tagged_hash(TAG_AUX, bytes(rand)))
    else:
        secshare_ = bytes(secshare)
    signers = _valid_signers(signers_ctx)
    tweaked_tpk = get_xonly_pk(thresh_pubkey_and_tweak(signers_ctx.thresh_pk, tweaks, is_xonly))
    other = b"" if aggothernonce is None else bytes(aggothernonce)
    k1 = int.from_bytes(det_nonce_hash(secshare_, my_id, signers.ids, other, tweaked_tpk, msg, 0), "big") % N
    k2 = int.from_bytes(det_nonce_hash(secshare_, my_id, signers.ids, other, tweaked_tpk, msg, 1), "big") % N
    assert k1 != 0 and k2 != 0  # negligible probability
    pubnonce = base_mul(k1).encode() + base_mul(k2).encode()
    if aggothernonce is not None:
        try:
            aggnonce = nonce_agg([pubnonce, other])
        except InvalidContributionError:
            # Our own pubnonce is always valid.
            raise InvalidContributionError(None, "aggothernonce") from None
    else:
        aggnonce = pubnonce
    session_ctx = SessionContext(signers_ctx, aggnonce, tweaks, is_xonly, msg)
    psig = sign(SecretNonce(k1, k2, pubnonce), secshare, my_id, session_ctx)
    return pubnonce, psig


# -- Partial signature verification and aggregation ------------------------------------

def _verify_parsed(sv: SessionValues, s: int, my_id: int, R1: Point, R2: Point, P: Point) -> bool:
    """
    s*G == Re* + e*lambda*g'*P, written with the sign sigma of R folded to
    one side: sigma*s*G == R1 + b*R2 + sigma*e*lambda*g'*P (one combine).
    """
    lam = sv.signers.lambdas[my_id]
    g = 1 if sv.Q.has_even_y() else N - 1
    sigma = 1 if sv.R.has_even_y() else N - 1
    c = sigma * sv.e * lam % N * g % N * sv.gacc % N
    lhs = point_sum((R1, R2 * sv.b, P * c))
    rhs = base_mul(sigma * s % N)
    return lhs == rhs


def _verify_with_values(sv: SessionValues, psig: bytes, my_id: int, pubnonce: bytes, pubshare: bytes) -> bool:
    try:
        s = scalar_from_bytes(bytes(psig))
    except InvalidEncoding:
        return False
    if pubshare not in sv.pubshares or my_id not in sv.ids:
        return False
    try:
        if len(pubnonce) != 66:
            return False
        R1 = point_from_bytes(pubnonce[0:33])
        R2 = point_from_bytes(pubnonce[33:66])
        P = point_from_bytes(pubshare)
    except InvalidEncoding:
        return False
    return _verify_parsed(sv, s, my_id, R1, R2, P)


def partial_sig_verify_internal(
    psig: bytes, my_id: int, pubnonce: bytes, pubshare: bytes, session_ctx: SessionContext
) -> bool:
    """PartialSigVerifyInternal: False for any failure of the signer's data."""
    return _verify_with_values(get_session_values(session_ctx), psig, my_id, pubnonce, pubshare)


def partial_sig_verify(
    psig: bytes,
    pubnonces: Sequence[bytes],
    signers_ctx: SignersContext,
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    i: int,
) -> bool:
    """
    PartialSigVerify: does signer at position C{i} deserve blame for C{psig}?

    Partial signatures are not signatures (they can be forged for a
    pubshare); this exists only to identify who made a session abort.

    @raise InvalidContributionError: C{(j, "pubnonce")} if pubnonce C{j}
        does not parse.
    """
    validate_signers_ctx(signers_ctx)
    ids, pubshares = signers_ctx.ids, signers_ctx.pubshares
    if len(pubnonces) != len(ids):
        raise ValueError("The pubnonces and ids arrays must have the same length.")
    if len(tweaks) != len(is_xonly):
        raise ValueError("The tweaks and is_xonly arrays must have the same length.")
    if not 0 <= i < len(ids):
        raise ValueError("The signer index is out of range.")
    aggnonce = nonce_agg(pubnonces)
    session_ctx = SessionContext(signers_ctx, aggnonce, tweaks, is_xonly, msg)
    return partial_sig_verify_internal(psig, ids[i], pubnonces[i], pubshares[i], session_ctx)


def _sig_from_scalars(sv: SessionValues, scalars: Sequence[int]) -> bytes:
    g = 1 if sv.Q.has_even_y() else N - 1
    s = (sum(scalars) + sv.e * g * sv.tacc) % N
    return sv.R.xbytes() + scalar_to_bytes(s)


def partial_sig_agg(psigs: Sequence[bytes], session_ctx: SessionContext) -> bytes:
    """
    PartialSigAgg: the 64-byte BIP340 signature, psigs in signer order.

    Does not verify anything; see L{partial_sig_agg_verified}.

    @raise InvalidContributionError: C{(i, "psig")} for the first psig that
        is not a scalar below the group order.
    """
    sv = get_session_values(session_ctx)
    if len(psigs) != len(sv.ids):
        raise ValueError("The psigs and ids arrays must have the same length.")
    scalars = []
    for idx, psig in enumerate(psigs):
        try:
            scalars.append(scalar_from_bytes(bytes(psig)))
        except InvalidEncoding:
            raise InvalidContributionError(idx, "psig") from None
    return _sig_from_scalars(sv, scalars)


def _invalid_positions(sv: SessionValues, aggnonce: bytes, psigs: Sequence[bytes], pubnonces: Sequence[bytes]) -> list[int]:
    """
    Positions whose psig fails PartialSigVerify against the session.

    Every pubnonce is parsed once and their aggregate must be the session's
    aggnonce: otherwise honest signers would fail too, and the fault is the
    coordinator's own (C{ValueError}).
    """
    if len(pubnonces) != len(sv.ids):
        raise ValueError("The pubnonces and ids arrays must have the same length.")
    parsed = _parse_pubnonces(pubnonces)
    if _agg_parsed(parsed) != bytes(aggnonce):
        raise ValueError("The aggregate nonce is not the aggregate of the given pubnonces.")
    bad = []
    for idx, (psig, (R1, R2)) in enumerate(zip(psigs, parsed)):
        try:
            s = scalar_from_bytes(bytes(psig))
        except InvalidEncoding:
            bad.append(idx)
            continue
        if not _verify_parsed(sv, s, sv.ids[idx], R1, R2, sv.signers.points[idx]):
            bad.append(idx)
    return bad


def invalid_psig_signers(psigs: Sequence[bytes], pubnonces: Sequence[bytes], session_ctx: SessionContext) -> list[int]:
    """
    The participant ids of every signer whose psig fails L{partial_sig_verify}.

    C{psigs[i]} and C{pubnonces[i]} belong to C{session_ctx.signers_ctx.ids[i]}.
    Shares the session values across all signers: per signer this costs two
    variable-base and one fixed-base multiplication.

    @raise InvalidContributionError: C{(i, "pubnonce")}, as L{nonce_agg}.
    @raise ValueError: mismatched lengths, or C{pubnonces} do not aggregate
        to the session's aggnonce.
    """
    sv = get_session_values(session_ctx)
    if len(psigs) != len(sv.ids):
        raise ValueError("The psigs and ids arrays must have the same length.")
    return [sv.ids[i] for i in _invalid_positions(sv, session_ctx.aggnonce, psigs, pubnonces)]


def partial_sig_agg_verified(
    psigs: Sequence[bytes],
    pubnonces: Sequence[bytes],
    session_ctx: SessionContext,
    verify_each: bool = False,
) -> bytes:
    """
    The coordinator's PartialSigAgg with identifiable abort.

    By default the shares are summed and the result checked once as a
    BIP340 signature under the (tweaked) x-only key; only if that fails is
    every share verified, so the honest case costs one verification instead
    of u.  With C{verify_each} every share is verified up front.  (Shares
    that are individually wrong but cancel out give a valid signature and
    pass the default path; nobody is harmed by that.)

    @raise InvalidSignatureShare: C{culprits} lists the participant id of
        every signer whose psig fails L{partial_sig_verify}.
    @raise InvalidContributionError: C{(i, "pubnonce")} for an unparseable
        pubnonce (checked only when verifying shares).
    @raise ValueError: mismatched lengths, or an aggnonce that is not the
        aggregate of C{pubnonces}.
    """
    sv = get_session_values(session_ctx)
    if len(psigs) != len(sv.ids):
        raise ValueError("The psigs and ids arrays must have the same length.")
    if len(pubnonces) != len(sv.ids):
        raise ValueError("The pubnonces and ids arrays must have the same length.")
    scalars: list[int] = []
    unparseable = False
    for psig in psigs:
        try:
            scalars.append(scalar_from_bytes(bytes(psig)))
        except InvalidEncoding:
            unparseable = True
    if not verify_each and not unparseable:
        sig = _sig_from_scalars(sv, scalars)
        if schnorr_verify(session_ctx.msg, sv.Q.xbytes(), sig):
            return sig
    bad = _invalid_positions(sv, session_ctx.aggnonce, psigs, pubnonces)
    if bad:
        culprits = [sv.ids[i] for i in bad]
        raise InvalidSignatureShare(culprits, f"{len(culprits)} of {len(sv.ids)} partial signatures are invalid")
    # Every share verifies, so by BIP 445 the aggregate is a valid signature.
    return _sig_from_scalars(sv, scalars)


# -- Taproot (BIP341) convenience ---------------------------------------------------------

def taproot_tweaks(internal_key: bytes, merkle_root: Optional[bytes] = None) -> tuple[list[bytes], list[bool]]:
    """
    (tweaks, is_xonly) that sign for the Taproot output key of C{internal_key}.

    The federation's DKG outputs a Taproot-safe plain key (committed to an
    unspendable script path); that is the I{internal} key, and spends use
    its BIP86-style output key: the x-only tweak C{hash_TapTweak(xbytes(internal))}
    (C{merkle_root} for an output that also has scripts).
    """
    try:
        P = point_from_bytes(internal_key)
    except InvalidEncoding:
        raise ValueError("The internal key is not a valid point.") from None
    return [taptweak(P.xbytes(), merkle_root)], [True]


def taproot_tweak_ctx(internal_key: bytes, merkle_root: Optional[bytes] = None) -> TweakContext:
    """Tweak context of the Taproot output key; L{get_xonly_pk} is the output key."""
    tweaks, is_xonly = taproot_tweaks(internal_key, merkle_root)
    return thresh_pubkey_and_tweak(internal_key, tweaks, is_xonly)


def taproot_session_ctx(
    signers_ctx: SignersContext, aggnonce: bytes, msg: bytes, merkle_root: Optional[bytes] = None
) -> SessionContext:
    """
    A session whose final signature verifies (BIP340) under the Taproot
    output key of C{signers_ctx.thresh_pk}, i.e. a key-path spend.
    """
    tweaks, is_xonly = taproot_tweaks(signers_ctx.thresh_pk, merkle_root)
    return SessionContext(signers_ctx, aggnonce, tweaks, is_xonly, msg)
