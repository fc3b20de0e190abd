"""
Tests for L{frostnode.crypto.rfc9591} and L{frostnode.crypto.lagrange}:
the RFC 9591 Appendix E.5 vector and ZF's two secp256k1 vectors reproduced
value by value, then the checks a coordinator and a signer rely on (own
commitment, single-use nonce, identifiable abort, strict encodings).
"""

from __future__ import annotations

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.errors import InvalidEncoding, InvalidSignatureShare, NonceReuseError
from frostnode.crypto.group import INFINITY, N, G, base_mul, point_from_bytes
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.crypto.lagrange import lagrange_coefficient, lagrange_coefficients
from frostnode.crypto.nonces import SecretNonce
from frostnode.crypto import rfc9591
from frostnode.crypto.rfc9591 import (
    H1,
    Signature,
    SignatureShare,
    SigningCommitment,
    aggregate,
    aggregate_verified,
    binding_factor_inputs,
    commit,
    compute_binding_factors,
    compute_challenge,
    compute_group_commitment,
    encode_group_commitment_list,
    identifier_from_bytes,
    nonce_generate,
    session_context,
    sign,
    verify,
    verify_signature_share,
)
from tests.vectors import load_json

VECTOR_FILES = (
    "rfc9591/frost-secp256k1-sha256.json",
    "zf-frost/frost-secp256k1/vectors.json",
    "zf-frost/frost-secp256k1/vectors-big-identifier.json",
)


def feeder(*chunks: bytes):
    """A C{rand} that returns the given byte strings in order and fails when asked for more."""
    queue = list(chunks)

    def rand(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, (len(chunk), n)
        return chunk

    return rand


def h(s: str) -> bytes:
    return bytes.fromhex(s)


class VectorTests(SynchronousTestCase):
    """Every intermediate value of the three RFC-9591-conformant transcripts."""

    def check_vector(self, rel: str) -> None:
        v = load_json(rel)
        inputs = v["inputs"]
        pk = point_from_bytes(h(inputs.get("group_public_key") or inputs["verifying_key_key"]))
        msg = h(inputs["message"])
        n = int(v["config"]["MAX_PARTICIPANTS"])
        t = int(v["config"]["MIN_PARTICIPANTS"])
        shares = {s["identifier"]: int(s["participant_share"], 16) for s in inputs["participant_shares"]}

        # key generation: the dealer's polynomial reproduces every share (RFC 9591 Appendix C)
        secret = int(inputs["group_secret_key"], 16)
        coefficients = [h(c) for c in inputs["share_polynomial_coefficients"]]
        group_key, packages = trusted_dealer_keygen(t, n, secret, feeder(*coefficients), taproot_safe=False)
        self.assertEqual(group_key, pk)
        self.assertEqual({i: p.secret_share for i, p in packages.items()}, shares)

        # round one: nonces from the given randomness, and their commitments
        outs = v["round_one_outputs"]["outputs"]
        self.assertEqual([o["identifier"] for o in outs], inputs["participant_list"])
        nonces, comms = {}, []
        for o in outs:
            i = o["identifier"]
            hr, br = h(o["hiding_nonce_randomness"]), h(o["binding_nonce_randomness"])
            self.assertEqual(nonce_generate(shares[i], hr), int(o["hiding_nonce"], 16))
            self.assertEqual(nonce_generate(shares[i], br), int(o["binding_nonce"], 16))
            nonce, comm = commit(i, shares[i], feeder(hr, br))
            self.assertEqual(comm.hiding.encode().hex(), o["hiding_nonce_commitment"])
            self.assertEqual(comm.binding.encode().hex(), o["binding_nonce_commitment"])
            self.assertEqual(nonce.commitment, comm.nonce_bytes())
            self.assertEqual(SigningCommitment.decode(comm.encode()), comm)
            nonces[i] = nonce
            comms.append(comm)

        # binding factors and the session values, both the spec functions and the shared context
        inps = binding_factor_inputs(pk, comms, msg)
        factors = compute_binding_factors(pk, comms, msg)
        ctx = session_context(pk, msg, comms)
        for o in outs:
            i = o["identifier"]
            self.assertEqual(inps[i].hex(), o["binding_factor_input"])
            self.assertEqual(factors[i], int(o["binding_factor"], 16))
            self.assertEqual(ctx.binding_factors[i], factors[i])
            self.assertEqual(H1(inps[i]), factors[i])
        R = compute_group_commitment(comms, factors)
        self.assertEqual(ctx.group_commitment, R)
        self.assertEqual(ctx.challenge, compute_challenge(R, pk, msg))

        # round two and aggregation
        sig_shares = [sign(i, shares[i], nonces[i], ctx) for i in ctx.participants]
        expected = {o["identifier"]: int(o["sig_share"], 16) for o in v["round_two_outputs"]["outputs"]}
        self.assertEqual({s.identifier: s.share for s in sig_shares}, expected)
        vshares = {i: p.verification_share for i, p in packages.items()}
        for s in sig_shares:
            self.assertTrue(verify_signature_share(s, vshares[s.identifier], ctx))
            self.assertEqual(SignatureShare.decode(s.encode()), s)
        sig = aggregate(ctx, sig_shares, vshares)
        self.assertEqual(sig.encode().hex(), v["final_output"]["sig"])
        self.assertEqual(aggregate_verified(ctx, sig_shares, vshares), sig)
        self.assertTrue(verify(pk, msg, h(v["final_output"]["sig"])))
        self.assertTrue(verify(pk, msg, sig))
        self.assertFalse(verify(pk, msg + b"!", sig))

    def test_rfc9591_appendix_e5(self) -> None:
        self.check_vector(VECTOR_FILES[0])

    def test_zf_vectors(self) -> None:
        self.check_vector(VECTOR_FILES[1])

    def test_zf_big_identifiers(self) -> None:
        """Identifiers 129, 256, 257 need more than one byte of SerializeScalar."""
        self.check_vector(VECTOR_FILES[2])


class Fixture:
    """A 3-of-5 dealer key and fresh round-one outputs for signers 1, 2, 4."""

    def __init__(self, signers=(1, 2, 4), t: int = 3, n: int = 5, msg: bytes = b"frostnode") -> None:
        self.group_key, self.packages = trusted_dealer_keygen(t, n, taproot_safe=False)
        self.vshares = dict(self.packages[1].verification_shares)
        self.msg = msg
        self.nonces, self.comms = {}, []
        for i in signers:
            nonce, comm = commit(i, self.packages[i].secret_share)
            self.nonces[i] = nonce
            self.comms.append(comm)
        self.ctx = session_context(self.group_key, msg, self.comms)

    def sign(self, i: int) -> SignatureShare:
        return sign(i, self.packages[i].secret_share, self.nonces[i], self.ctx)

    def sign_all(self) -> list[SignatureShare]:
        return [self.sign(i) for i in self.ctx.participants]


class SignTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        f = Fixture()
        sig = aggregate(f.ctx, f.sign_all(), f.vshares)
        self.assertTrue(verify(f.group_key, f.msg, sig))
        self.assertTrue(verify(f.group_key, f.msg, sig.encode()))
        self.assertEqual(Signature.decode(sig.encode()), sig)

    def test_commitment_order_does_not_matter(self) -> None:
        f = Fixture()
        shuffled = session_context(f.group_key, f.msg, list(reversed(f.comms)))
        self.assertEqual(shuffled, f.ctx)
        self.assertEqual(encode_group_commitment_list(reversed(f.comms)), encode_group_commitment_list(f.comms))
        self.assertEqual(shuffled.participants, (1, 2, 4))

    def test_nonce_single_use(self) -> None:
        f = Fixture()
        f.sign(1)
        self.assertTrue(f.nonces[1].spent)
        self.assertRaises(NonceReuseError, f.sign, 1)

    def test_missing_own_commitment(self) -> None:
        """Like ZF round2::sign: refuse before touching the nonce."""
        f = Fixture()
        nonce, _ = commit(3, f.packages[3].secret_share)
        self.assertRaises(ValueError, sign, 3, f.packages[3].secret_share, nonce, f.ctx)
        self.assertFalse(nonce.spent)

    def test_substituted_commitment(self) -> None:
        """A coordinator that swapped our commitment for another cannot get a share out of us."""
        f = Fixture()
        _, other = commit(1, f.packages[1].secret_share)
        comms = [other if c.identifier == 1 else c for c in f.comms]
        ctx = session_context(f.group_key, f.msg, comms)
        self.assertRaises(ValueError, sign, 1, f.packages[1].secret_share, f.nonces[1], ctx)
        self.assertFalse(f.nonces[1].spent)

    def test_nonce_not_matching_commitment(self) -> None:
        """A persisted nonce whose scalars were corrupted yields no share."""
        f = Fixture()
        d, e = f.nonces[1].consume()
        bad = SecretNonce.from_persisted(d, (e + 1) % N, f.nonces[1].commitment)
        self.assertRaises(ValueError, sign, 1, f.packages[1].secret_share, bad, f.ctx)
        self.assertTrue(bad.spent)

    def test_session_rejects_duplicates_and_empty(self) -> None:
        f = Fixture()
        self.assertRaises(ValueError, session_context, f.group_key, f.msg, f.comms + [f.comms[0]])
        self.assertRaises(ValueError, session_context, f.group_key, f.msg, [])
        self.assertRaises(ValueError, session_context, INFINITY, f.msg, f.comms)


class AggregateTests(SynchronousTestCase):
    def test_verify_signature_share(self) -> None:
        f = Fixture()
        s1, s2, s4 = f.sign_all()
        self.assertTrue(verify_signature_share(s1, f.vshares[1], f.ctx))
        self.assertFalse(verify_signature_share(SignatureShare(1, s1.share + 1), f.vshares[1], f.ctx))
        self.assertFalse(verify_signature_share(s1, f.vshares[2], f.ctx))
        self.assertFalse(verify_signature_share(SignatureShare(3, s1.share), f.vshares[3], f.ctx))
        self.assertFalse(verify_signature_share(s1, INFINITY, f.ctx))

    def test_identifiable_abort_names_every_culprit(self) -> None:
        f = Fixture()
        shares = f.sign_all()
        bad = [shares[0], SignatureShare(2, (shares[1].share + 5) % N), SignatureShare(4, 0)]
        for agg in (aggregate, aggregate_verified):
            with self.assertRaises(InvalidSignatureShare) as cm:
                agg(f.ctx, bad, f.vshares)
            self.assertEqual(cm.exception.culprits, [2, 4])

    def test_swapped_shares_blame_both(self) -> None:
        """Two shares exchanged sum to the right z only if they are equal; each is checked on its own."""
        f = Fixture()
        s1, s2, s4 = f.sign_all()
        swapped = [SignatureShare(1, s2.share), SignatureShare(2, s1.share), s4]
        with self.assertRaises(InvalidSignatureShare) as cm:
            aggregate_verified(f.ctx, swapped, f.vshares)
        self.assertEqual(cm.exception.culprits, [1, 2])

    def test_shares_must_match_signer_set(self) -> None:
        f = Fixture()
        s1, s2, s4 = f.sign_all()
        self.assertRaises(ValueError, aggregate, f.ctx, [s1, s2], f.vshares)
        self.assertRaises(ValueError, aggregate, f.ctx, [s1, s2, s4, SignatureShare(3, 1)], f.vshares)
        self.assertRaises(ValueError, aggregate, f.ctx, [s1, s2, s4, s4], f.vshares)

    def test_too_few_signers(self) -> None:
        """2 signers of a 3-of-5 key: each share is valid, the signature is not, and nobody is blamed."""
        f = Fixture(signers=(1, 5))
        shares = f.sign_all()
        for s in shares:
            self.assertTrue(verify_signature_share(s, f.vshares[s.identifier], f.ctx))
        self.assertRaises(ValueError, aggregate, f.ctx, shares, f.vshares)
        forged = Signature(f.ctx.group_commitment, sum(s.share for s in shares) % N)
        self.assertFalse(verify(f.group_key, f.msg, forged))

    def test_missing_verification_share_on_failure(self) -> None:
        f = Fixture()
        s1, s2, s4 = f.sign_all()
        self.assertRaises(ValueError, aggregate, f.ctx, [s1, s2, SignatureShare(4, 1)], {1: f.vshares[1]})


class VerifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.f = Fixture()
        self.sig = aggregate(self.f.ctx, self.f.sign_all(), self.f.vshares)

    def test_wrong_key_or_message(self) -> None:
        self.assertFalse(verify(G, self.f.msg, self.sig))
        self.assertFalse(verify(self.f.group_key, b"other", self.sig))
        self.assertFalse(verify(INFINITY, self.f.msg, self.sig))

    def test_malformed_bytes_are_invalid(self) -> None:
        enc = self.sig.encode()
        self.assertFalse(verify(self.f.group_key, self.f.msg, enc[:-1]))
        self.assertFalse(verify(self.f.group_key, self.f.msg, enc + b"\x00"))
        self.assertFalse(verify(self.f.group_key, self.f.msg, b"\x04" + enc[1:]))
        self.assertFalse(verify(self.f.group_key, self.f.msg, enc[:33] + N.to_bytes(32, "big")))
        self.assertFalse(verify(self.f.group_key, self.f.msg, Signature(self.sig.R, (self.sig.z + 1) % N)))
        self.assertFalse(verify(self.f.group_key, self.f.msg, Signature(-self.sig.R, self.sig.z)))


class EncodingTests(SynchronousTestCase):
    def test_identifier(self) -> None:
        self.assertEqual(identifier_from_bytes((257).to_bytes(32, "big")), 257)
        for bad in (bytes(32), N.to_bytes(32, "big"), (1).to_bytes(31, "big"), (1).to_bytes(33, "big")):
            self.assertRaises(InvalidEncoding, identifier_from_bytes, bad)
        for bad in (0, N, -1, True, 1.0, "1"):
            self.assertRaises(ValueError, rfc9591.check_identifier, bad)
        self.assertRaises(ValueError, commit, 0, 1)

    def test_signing_commitment(self) -> None:
        _, comm = commit(7, 12345)
        enc = comm.encode()
        self.assertEqual(len(enc), 98)
        self.assertEqual(enc[:32], (7).to_bytes(32, "big"))
        self.assertEqual(SigningCommitment.decode(enc), comm)
        for bad in (enc[:-1], enc + b"\x00", bytes(32) + enc[32:], enc[:32] + bytes(33) + enc[65:], enc[:65] + b"\x05" + enc[66:]):
            self.assertRaises(InvalidEncoding, SigningCommitment.decode, bad)

    def test_signature_share(self) -> None:
        share = SignatureShare(300, N - 1)
        enc = share.encode()
        self.assertEqual(len(enc), 64)
        self.assertEqual(SignatureShare.decode(enc), share)
        self.assertRaises(InvalidEncoding, SignatureShare.decode, enc[:32] + N.to_bytes(32, "big"))
        self.assertRaises(InvalidEncoding, SignatureShare.decode, bytes(32) + enc[32:])
        self.assertRaises(InvalidEncoding, SignatureShare.decode, enc[:-1])

    def test_signature(self) -> None:
        sig = Signature(base_mul(9), 5)
        enc = sig.encode()
        self.assertEqual(len(enc), 65)
        self.assertEqual(Signature.decode(enc), sig)
        self.assertRaises(InvalidEncoding, Signature.decode, enc[:-1])
        self.assertRaises(InvalidEncoding, Signature.decode, bytes(33) + enc[33:])
        self.assertRaises(InvalidEncoding, Signature.decode, enc[:33] + N.to_bytes(32, "big"))

    def test_nonce_generate_wants_32_bytes(self) -> None:
        self.assertRaises(ValueError, nonce_generate, 1, bytes(31))


class LagrangeTests(SynchronousTestCase):
    def interpolates(self, ids: list[int]) -> None:
        rng = random.Random(len(ids))
        coeffs = [rng.randrange(N) for _ in range(len(ids))]
        f = lambda x: sum(a * pow(x, k, N) for k, a in enumerate(coeffs)) % N  # noqa: E731
        lams = lagrange_coefficients(ids)
        self.assertEqual(sum(lams[i] * f(i) for i in ids) % N, coeffs[0])
        for i in ids:
            self.assertEqual(lagrange_coefficient(ids, i), lams[i])

    def test_small_identifiers(self) -> None:
        self.interpolates([1, 2, 4])
        self.interpolates(list(range(1, 68)))
        self.interpolates([5])
        self.assertEqual(lagrange_coefficient([5], 5), 1)

    def test_large_identifiers(self) -> None:
        """Identifiers above 2^32 take the reduce-every-step path."""
        self.interpolates([1, 2**40, N - 1, 2**255 + 3])
        self.interpolates([int.from_bytes(os.urandom(32), "big") % (N - 1) + 1 for _ in range(10)])

    def test_order_and_fresh_results(self) -> None:
        a = lagrange_coefficients([4, 1, 2])
        a[1] = 0
        self.assertEqual(lagrange_coefficients([1, 2, 4]), lagrange_coefficients([2, 4, 1]))
        self.assertNotEqual(lagrange_coefficients([1, 2, 4])[1], 0)

    def test_bad_sets(self) -> None:
        self.assertRaises(ValueError, lagrange_coefficients, [])
        self.assertRaises(ValueError, lagrange_coefficients, [1, 2, 2])
        self.assertRaises(ValueError, lagrange_coefficients, [0, 1])
        self.assertRaises(ValueError, lagrange_coefficients, [1, N])
        self.assertRaises(ValueError, lagrange_coefficient, [1, 2], 3)
