"""
Tests for L{frostnode.crypto.bip445}: every case of the BIP 445 (0.8.0)
vectors, single-use nonces, identifiable abort, and Taproot key-path signing
end to end with a trusted-dealer key.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from coincurve import PublicKeyXOnly
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto import bip340
from frostnode.crypto.bip445 import (
    SessionContext,
    SignersContext,
    deterministic_sign,
    derive_interpolating_value,
    get_plain_pk,
    get_xonly_pk,
    invalid_psig_signers,
    nonce_agg,
    nonce_gen,
    nonce_gen_internal,
    partial_sig_agg,
    partial_sig_agg_verified,
    partial_sig_verify,
    partial_sig_verify_internal,
    sign,
    taproot_session_ctx,
    taproot_tweak_ctx,
    thresh_pubkey_and_tweak,
    validate_signers_ctx,
)
from frostnode.crypto.errors import InvalidContributionError, InvalidSignatureShare, NonceReuseError
from frostnode.crypto.group import N, base_mul, scalar_to_bytes
from frostnode.crypto.nonces import SecretNonce
from tests.vectors import load_json

h = bytes.fromhex


def _opt(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else h(value)


def _signers(group: dict, case: dict) -> SignersContext:
    return SignersContext(
        group["n"], group["t"], case["ids"], [h(group["pubshares"][i]) for i in case["pubshare_indices"]], h(group["thresh_pk"])
    )


def _secnonce(hex64: str) -> SecretNonce:
    raw = h(hex64)
    k1, k2 = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    return SecretNonce(k1, k2, base_mul(k1).encode() + base_mul(k2).encode())


class VectorMixin:
    """Helpers shared by the vector test cases."""

    def cases(self, data: dict, key: str, expected: int) -> list[tuple[dict, dict]]:
        """(group, case) for every case under C{key}; the count guards against silently skipping any."""
        found = [(g, c) for g in data["test_groups"] for c in g.get(key, [])]
        self.assertEqual(len(found), expected, key)
        return found

    def assertVectorError(self, error: dict, fn: Callable[[], object]) -> None:
        """C{fn} raises exactly the error the vector names (type, message or culprit and contribution)."""
        if error["type"] == "ValueError":
            exc = self.assertRaises(ValueError, fn)
            self.assertEqual(str(exc), error["message"])
        elif error["type"] == "InvalidContributionError":
            exc = self.assertRaises(InvalidContributionError, fn)
            self.assertEqual((exc.signer_index, exc.contrib), (error["signer_index"], error["contrib"]))
            self.assertEqual(exc.culprit, error["signer_index"])
        else:  # pragma: no cover - a vector type we do not know
            self.fail(f"unknown error type {error['type']}")


# -- vectors ---------------------------------------------------------------------------

class NonceGenTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """NonceGen with explicit randomness reproduces every secnonce and pubnonce."""
        data = load_json("bip445-frost-signing/nonce_gen_vectors.json")
        self.assertEqual(len(data["valid_tests"]), 5)
        for case in data["valid_tests"]:
            secnonce, pubnonce = nonce_gen_internal(
                h(case["rand"]), _opt(case["secshare"]), _opt(case["pubshare"]),
                _opt(case["thresh_pk_xonly"]), _opt(case["msg"]), _opt(case["extra_in"]),
            )
            k1, k2 = secnonce.peek_for_persistence()
            with self.subTest(tc_id=case["tc_id"]):
                self.assertEqual(scalar_to_bytes(k1) + scalar_to_bytes(k2), h(case["expected"][0]))
                self.assertEqual(pubnonce, h(case["expected"][1]))
                self.assertEqual(secnonce.commitment, pubnonce)

    def test_fresh_randomness(self) -> None:
        """Without explicit randomness two calls with identical inputs give different nonces."""
        a = nonce_gen(None, None, None, b"m", None)
        b = nonce_gen(None, None, None, b"m", None)
        self.assertNotEqual(a[1], b[1])
        self.assertEqual(len(a[1]), 66)

    def test_bad_lengths(self) -> None:
        for kwargs in ({"secshare": bytes(31)}, {"pubshare": bytes(32)}, {"thresh_pk": bytes(33)}):
            args = {"secshare": None, "pubshare": None, "thresh_pk": None, "msg": None, "extra_in": None}
            args.update(kwargs)
            self.assertRaises(ValueError, nonce_gen, **args)


class NonceAggTests(VectorMixin, SynchronousTestCase):
    def test_vectors(self) -> None:
        data = load_json("bip445-frost-signing/nonce_agg_vectors.json")
        pool = [h(p) for p in data["pubnonces"]]
        self.assertEqual(len(data["valid_tests"]), 2)
        for case in data["valid_tests"]:
            self.assertEqual(nonce_agg([pool[i] for i in case["pubnonce_indices"]]), h(case["expected"]))
        self.assertEqual(len(data["error_tests"]), 3)
        for case in data["error_tests"]:
            with self.subTest(tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: nonce_agg([pool[i] for i in case["pubnonce_indices"]]))


class SignVerifyTests(VectorMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load_json("bip445-frost-signing/sign_verify_vectors.json")
        group = self.data["test_groups"][0]
        case = group["valid_tests"][0]
        self.first = (group, case, SessionContext(_signers(group, case), h(case["aggnonce"]), [], [], h(case["msg"])))

    def test_valid(self) -> None:
        """
        Sign reproduces each expected psig, zeroes a bytearray secnonce so it
        cannot sign again, and the psig passes PartialSigVerify.
        """
        for group, case in self.cases(self.data, "valid_tests", 25):
            signers = _signers(group, case)
            msg = h(case["msg"])
            session = SessionContext(signers, h(case["aggnonce"]), [], [], msg)
            secnonce = bytearray(h(group["secnonces"][case["secnonce_index"]]))
            secshare = h(group["secshares"][case["secshare_index"]])
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                psig = sign(secnonce, secshare, case["my_id"], session)
                self.assertEqual(psig, h(case["expected"]))
                self.assertEqual(secnonce, bytearray(64))
                self.assertRaises(ValueError, sign, secnonce, secshare, case["my_id"], session)
                pubnonces = [h(group["pubnonces"][i]) for i in case["pubnonce_indices"]]
                self.assertEqual(nonce_agg(pubnonces), h(case["aggnonce"]))
                i = case["ids"].index(case["my_id"])
                self.assertTrue(partial_sig_verify(psig, pubnonces, signers, [], [], msg, i))

    def test_secret_nonce_object(self) -> None:
        """A SecretNonce signs the same psig as its raw bytes, then refuses to sign again."""
        group, case, session = self.first
        nonce = _secnonce(group["secnonces"][case["secnonce_index"]])
        secshare = h(group["secshares"][case["secshare_index"]])
        self.assertEqual(sign(nonce, secshare, case["my_id"], session), h(case["expected"]))
        self.assertTrue(nonce.spent)
        self.assertRaises(NonceReuseError, sign, nonce, secshare, case["my_id"], session)

    def test_refused_request_keeps_nonce(self) -> None:
        """A sign request the signer refuses (its id is not in the set) does not burn the nonce."""
        group, case, session = self.first
        nonce = _secnonce(group["secnonces"][case["secnonce_index"]])
        secshare = h(group["secshares"][case["secshare_index"]])
        self.assertRaises(ValueError, sign, nonce, secshare, 2, session)
        self.assertFalse(nonce.spent)
        self.assertEqual(sign(nonce, secshare, case["my_id"], session), h(case["expected"]))

    def test_mismatched_pubnonce_refused(self) -> None:
        """A SecretNonce whose commitment is not k1*G || k2*G fails the self-check: no psig leaves."""
        group, case, session = self.first
        k1, k2 = _secnonce(group["secnonces"][case["secnonce_index"]]).peek_for_persistence()
        wrong = SecretNonce(k1, k2, h(group["pubnonces"][1]))
        secshare = h(group["secshares"][case["secshare_index"]])
        self.assertRaises(ValueError, sign, wrong, secshare, case["my_id"], session)

    def test_sign_errors(self) -> None:
        for group, case in self.cases(self.data, "sign_error_tests", 52):
            session = SessionContext(_signers(group, case), h(case["aggnonce"]), [], [], h(case["msg"]))
            secnonce = bytearray(h(group["secnonces"][case["secnonce_index"]]))
            secshare = h(group["secshares"][case["secshare_index"]])
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: sign(secnonce, secshare, case["my_id"], session))

    def test_verify_fail(self) -> None:
        for group, case in self.cases(self.data, "verify_fail_tests", 12):
            pubnonces = [h(group["pubnonces"][i]) for i in case["pubnonce_indices"]]
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertFalse(partial_sig_verify(
                    h(case["psig"]), pubnonces, _signers(group, case), [], [], h(case["msg"]), case["signer_index"]
                ))

    def test_verify_errors(self) -> None:
        for group, case in self.cases(self.data, "verify_error_tests", 8):
            pubnonces = [h(group["pubnonces"][i]) for i in case["pubnonce_indices"]]
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: partial_sig_verify(
                    h(case["psig"]), pubnonces, _signers(group, case), [], [], h(case["msg"]), case["signer_index"]
                ))


class TweakTests(VectorMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load_json("bip445-frost-signing/tweak_vectors.json")

    def test_valid(self) -> None:
        for group, case in self.cases(self.data, "valid_tests", 28):
            signers = _signers(group, case)
            tweaks = [h(group["tweaks"][i]) for i in case["tweak_indices"]]
            msg = h(case["msg"])
            session = SessionContext(signers, h(case["aggnonce"]), tweaks, case["is_xonly"], msg)
            secnonce = bytearray(h(group["secnonces"][case["secnonce_index"]]))
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                psig = sign(secnonce, h(group["secshares"][case["secshare_index"]]), case["my_id"], session)
                self.assertEqual(psig, h(case["expected"]))
                pubnonces = [h(group["pubnonces"][i]) for i in case["pubnonce_indices"]]
                i = case["ids"].index(case["my_id"])
                self.assertTrue(partial_sig_verify(psig, pubnonces, signers, tweaks, case["is_xonly"], msg, i))

    def test_errors(self) -> None:
        for group, case in self.cases(self.data, "error_tests", 16):
            tweaks = [h(group["tweaks"][i]) for i in case["tweak_indices"]]
            session = SessionContext(_signers(group, case), h(case["aggnonce"]), tweaks, case["is_xonly"], h(case["msg"]))
            secnonce = bytearray(h(group["secnonces"][case["secnonce_index"]]))
            secshare = h(group["secshares"][case["secshare_index"]])
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: sign(secnonce, secshare, case["my_id"], session))

    def test_plain_pk_parity(self) -> None:
        """GetPlainPubkey's first byte carries the parity that GetXonlyPubkey drops."""
        group = self.data["test_groups"][0]
        ctx = thresh_pubkey_and_tweak(h(group["thresh_pk"]), [h(group["tweaks"][0])], [True])
        plain = get_plain_pk(ctx)
        self.assertEqual(plain[1:], get_xonly_pk(ctx))
        self.assertIn(plain[0], (2, 3))


class DeterministicSignTests(VectorMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load_json("bip445-frost-signing/det_sign_vectors.json")

    def test_valid(self) -> None:
        """DeterministicSign reproduces (pubnonce, psig), and the psig verifies."""
        for group, case in self.cases(self.data, "valid_tests", 33):
            signers = _signers(group, case)
            tweaks = [h(t) for t in case["tweaks"]]
            msg = h(case["msg"])
            other = _opt(case["aggothernonce"])
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                pubnonce, psig = deterministic_sign(
                    h(group["secshares"][case["secshare_index"]]), case["my_id"], other, signers,
                    tweaks, case["is_xonly"], msg, _opt(case["aux_rand"]),
                )
                self.assertEqual([pubnonce, psig], [h(x) for x in case["expected"]])
                aggnonce = pubnonce if other is None else nonce_agg([pubnonce, other])
                session = SessionContext(signers, aggnonce, tweaks, case["is_xonly"], msg)
                pubshare = signers.pubshares[case["ids"].index(case["my_id"])]
                self.assertTrue(partial_sig_verify_internal(psig, case["my_id"], pubnonce, pubshare, session))

    def test_errors(self) -> None:
        for group, case in self.cases(self.data, "error_tests", 48):
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: deterministic_sign(
                    h(group["secshares"][case["secshare_index"]]), case["my_id"], _opt(case["aggothernonce"]),
                    _signers(group, case), [h(t) for t in case["tweaks"]], case["is_xonly"], h(case["msg"]),
                    _opt(case["aux_rand"]),
                ))


class SigAggTests(VectorMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.data = load_json("bip445-frost-signing/sig_agg_vectors.json")

    def test_valid(self) -> None:
        """PartialSigAgg reproduces each signature, which verifies (BIP340) under the tweaked key."""
        for group, case in self.cases(self.data, "valid_tests", 14):
            signers = _signers(group, case)
            tweaks = [h(group["tweaks"][i]) for i in case["tweak_indices"]]
            msg = h(case["msg"])
            session = SessionContext(signers, h(case["aggnonce"]), tweaks, case["is_xonly"], msg)
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                sig = partial_sig_agg([h(p) for p in case["psigs"]], session)
                self.assertEqual(sig, h(case["expected"]))
                key = get_xonly_pk(thresh_pubkey_and_tweak(signers.thresh_pk, tweaks, case["is_xonly"]))
                self.assertTrue(PublicKeyXOnly(key).verify(sig, msg))

    def test_errors(self) -> None:
        for group, case in self.cases(self.data, "error_tests", 8):
            tweaks = [h(group["tweaks"][i]) for i in case["tweak_indices"]]
            session = SessionContext(_signers(group, case), h(case["aggnonce"]), tweaks, case["is_xonly"], h(case["msg"]))
            with self.subTest(tg=group["tg_id"], tc_id=case["tc_id"]):
                self.assertVectorError(case["error"], lambda: partial_sig_agg([h(p) for p in case["psigs"]], session))


# -- a trusted dealer, for sessions the vectors do not cover --------------------------------

class Dealer:
    """
    Shamir shares of a Taproot-safe key, as the federation's DKG outputs:
    internal secret x' = x + hash_TapTweak(xbytes(xG)) (a plain tweak, no
    even-y normalisation, as ChillDKG does), shared with f(id + 1).
    """

    def __init__(self, t: int, n: int, rng: random.Random, want_odd: Optional[bool] = None) -> None:
        while True:
            x = rng.randrange(1, N)
            P = base_mul(x)
            secret = (x + int.from_bytes(bip340.taptweak(P.xbytes()), "big")) % N
            thresh = base_mul(secret)
            if want_odd is None or (not thresh.has_even_y()) == want_odd:
                break
        self.t, self.n = t, n
        self.thresh_pk = thresh.encode()
        self.assert_safe = (P, thresh)
        coeffs = [secret] + [rng.randrange(N) for _ in range(t - 1)]
        self.secshares = []
        for i in range(n):
            xi, acc = i + 1, 0
            for c in reversed(coeffs):
                acc = (acc * xi + c) % N
            self.secshares.append(scalar_to_bytes(acc))
        self.pubshares = [base_mul(int.from_bytes(s, "big")).encode() for s in self.secshares]

    def signers(self, ids: list[int]) -> SignersContext:
        return SignersContext(self.n, self.t, ids, [self.pubshares[i] for i in ids], self.thresh_pk)


def _round1(dealer: Dealer, ids: list[int], msg: bytes) -> tuple[list[SecretNonce], list[bytes]]:
    secnonces, pubnonces = [], []
    for i in ids:
        sn, pn = nonce_gen(dealer.secshares[i], dealer.pubshares[i], None, msg, None)
        secnonces.append(sn)
        pubnonces.append(pn)
    return secnonces, pubnonces


class TaprootEndToEndTests(SynchronousTestCase):
    """
    The federation's path: the DKG's Taproot-safe internal key, signing for
    its BIP86-style output key, checked by coincurve's BIP340 verification.
    """

    def _spend(self, dealer: Dealer, ids: list[int], msg: bytes) -> tuple[bytes, bytes]:
        signers = dealer.signers(ids)
        secnonces, pubnonces = _round1(dealer, ids, msg)
        session = taproot_session_ctx(signers, nonce_agg(pubnonces), msg)
        psigs = [sign(sn, dealer.secshares[i], i, session) for sn, i in zip(secnonces, ids)]
        self.assertTrue(all(sn.spent for sn in secnonces))
        return partial_sig_agg_verified(psigs, pubnonces, session), get_xonly_pk(taproot_tweak_ctx(dealer.thresh_pk))

    def test_output_key_spend(self) -> None:
        """For internal keys of both parities the signature verifies under the P2TR output key."""
        rng = random.Random(445)
        for odd in (False, True):
            dealer = Dealer(3, 5, rng, want_odd=odd)
            P, thresh = dealer.assert_safe
            self.assertEqual(thresh, P + base_mul(int.from_bytes(bip340.taptweak(P.xbytes()), "big")))
            msg = bytes(range(32))
            sig, output_key = self._spend(dealer, [4, 0, 2], msg)
            expected_key, _parity = bip340.taproot_output_key(dealer.thresh_pk[1:])
            self.assertEqual(output_key, expected_key)
            self.assertTrue(PublicKeyXOnly(output_key).verify(sig, msg))
            # ... and not under the internal key
            self.assertFalse(PublicKeyXOnly(dealer.thresh_pk[1:]).verify(sig, msg))
            address = bip340.p2tr_address(output_key, "regtest")
            self.assertEqual(bip340.segwit_address_decode("bcrt", address), (1, output_key))

    def test_every_share_needed_subset(self) -> None:
        """Any t-subset signs; fewer than t is refused before anyone signs."""
        dealer = Dealer(2, 4, random.Random(7))
        for ids in ([0, 1], [3, 1], [0, 1, 2, 3]):
            sig, key = self._spend(dealer, ids, b"any length message")
            self.assertTrue(bip340.schnorr_verify(b"any length message", key, sig))
        exc = self.assertRaises(ValueError, validate_signers_ctx, dealer.signers([2]))
        self.assertEqual(str(exc), "The number of signers must be between t and n.")


class IdentifiableAbortTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dealer = Dealer(3, 5, random.Random(2070))
        self.ids = [1, 2, 3, 4]
        self.msg = b"\x07" * 32
        secnonces, self.pubnonces = _round1(self.dealer, self.ids, self.msg)
        self.session = taproot_session_ctx(self.dealer.signers(self.ids), nonce_agg(self.pubnonces), self.msg)
        self.psigs = [sign(sn, self.dealer.secshares[i], i, self.session) for sn, i in zip(secnonces, self.ids)]
        self.key = get_xonly_pk(taproot_tweak_ctx(self.dealer.thresh_pk))

    def test_honest(self) -> None:
        for verify_each in (False, True):
            sig = partial_sig_agg_verified(self.psigs, self.pubnonces, self.session, verify_each=verify_each)
            self.assertEqual(sig, partial_sig_agg(self.psigs, self.session))
            self.assertTrue(bip340.schnorr_verify(self.msg, self.key, sig))
        self.assertEqual(invalid_psig_signers(self.psigs, self.pubnonces, self.session), [])

    def test_names_every_culprit(self) -> None:
        """Two bad shares (one wrong, one not even a scalar): both signers are named, by id."""
        psigs = list(self.psigs)
        psigs[1] = scalar_to_bytes(int.from_bytes(psigs[1], "big") + 1)
        psigs[3] = b"\xff" * 32
        for verify_each in (False, True):
            exc = self.assertRaises(
                InvalidSignatureShare, partial_sig_agg_verified, psigs, self.pubnonces, self.session, verify_each=verify_each
            )
            self.assertEqual(exc.culprits, [self.ids[1], self.ids[3]])
        self.assertEqual(invalid_psig_signers(psigs, self.pubnonces, self.session), [2, 4])
        # each culprit is exactly what PartialSigVerify rejects
        signers = self.session.signers_ctx
        verdicts = [
            partial_sig_verify(p, self.pubnonces, signers, self.session.tweaks, self.session.is_xonly, self.msg, i)
            for i, p in enumerate(psigs)
        ]
        self.assertEqual(verdicts, [True, False, True, False])

    def test_swapped_shares(self) -> None:
        """
        Shares sent under each other's name fail for both senders when each
        share is verified; their sum is unchanged, so the default path (one
        check of the final signature) accepts the valid signature.
        """
        psigs = list(self.psigs)
        psigs[0], psigs[2] = psigs[2], psigs[0]
        exc = self.assertRaises(
            InvalidSignatureShare, partial_sig_agg_verified, psigs, self.pubnonces, self.session, verify_each=True
        )
        self.assertEqual(exc.culprits, [1, 3])
        sig = partial_sig_agg_verified(psigs, self.pubnonces, self.session)
        self.assertTrue(bip340.schnorr_verify(self.msg, self.key, sig))

    def test_inconsistent_aggnonce(self) -> None:
        """If the coordinator's aggnonce is not the pubnonces' aggregate, no signer is blamed."""
        psigs = list(self.psigs)
        psigs[0] = scalar_to_bytes(1)
        pubnonces = list(self.pubnonces)
        pubnonces[0] = nonce_gen(None, None, None, None, None)[1]
        exc = self.assertRaises(ValueError, partial_sig_agg_verified, psigs, pubnonces, self.session)
        self.assertIn("aggregate nonce", str(exc))

    def test_bad_pubnonce_named(self) -> None:
        pubnonces = list(self.pubnonces)
        pubnonces[2] = b"\x04" + pubnonces[2][1:]
        exc = self.assertRaises(InvalidContributionError, invalid_psig_signers, self.psigs, pubnonces, self.session)
        self.assertEqual((exc.signer_index, exc.contrib), (2, "pubnonce"))


class InterpolationTests(SynchronousTestCase):
    def test_lagrange_reconstructs(self) -> None:
        """Interpolating shares f(id + 1) at zero with the BIP's coefficients gives f(0)."""
        coeffs = [12345, 678, 91011]
        f = lambda x: sum(c * x**k for k, c in enumerate(coeffs)) % N  # noqa: E731
        ids = [4, 0, 7]
        self.assertEqual(sum(derive_interpolating_value(ids, i) * f(i + 1) for i in ids) % N, coeffs[0])
        self.assertRaises(ValueError, derive_interpolating_value, ids, 5)


class RandomSessionTests(SynchronousTestCase):
    @settings(max_examples=8, deadline=None)
    @given(
        st.integers(min_value=1, max_value=4).flatmap(
            lambda t: st.tuples(st.just(t), st.integers(min_value=max(t, 2), max_value=6))
        ),
        st.randoms(use_true_random=False),
        st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.booleans()), max_size=3),
        st.binary(max_size=40),
    )
    def test_any_session_yields_valid_signature(self, tn, rng, tweaks, msg) -> None:
        """Random t-of-n, signer subset, tweak chain and message: the result verifies under the tweaked key."""
        t, n = tn
        dealer = Dealer(t, n, rng)
        ids = rng.sample(range(n), rng.randint(t, n))
        twk = [scalar_to_bytes(int.from_bytes(tw, "big") % N) for tw, _ in tweaks]
        modes = [m for _, m in tweaks]
        secnonces, pubnonces = _round1(dealer, ids, msg)
        session = SessionContext(dealer.signers(ids), nonce_agg(pubnonces), twk, modes, msg)
        psigs = [sign(sn, dealer.secshares[i], i, session) for sn, i in zip(secnonces, ids)]
        sig = partial_sig_agg_verified(psigs, pubnonces, session, verify_each=True)
        key = get_xonly_pk(thresh_pubkey_and_tweak(dealer.thresh_pk, twk, modes))
        self.assertTrue(bip340.schnorr_verify(msg, key, sig))


class RawNonceFormTests(SynchronousTestCase):
    def test_immutable_raw_secnonce_is_refused(self):
        """Raw bytes cannot be wiped, so accepting them would allow a second signature."""
        from frostnode.crypto import bip445, keygen
        from frostnode.crypto.group import scalar_to_bytes

        group_key, pkgs = keygen.trusted_dealer_keygen(1, 1)
        share = scalar_to_bytes(pkgs[1].secret_share)
        pubshare = pkgs[1].verification_shares[1].encode()
        secnonce, pubnonce = bip445.nonce_gen(share, pubshare, None, None, None)
        k1, k2 = secnonce.consume()
        raw = scalar_to_bytes(k1) + scalar_to_bytes(k2)
        signers = bip445.SignersContext(1, 1, [0], [pubshare], group_key.encode())
        ctx = bip445.SessionContext(signers, bip445.nonce_agg([pubnonce]), [], [], b"m")
        self.assertRaises(TypeError, bip445.sign, raw, share, 0, ctx)
        mutable = bytearray(raw)
        bip445.sign(mutable, share, 0, ctx)
        self.assertEqual(mutable, bytearray(64))
        self.assertRaises(ValueError, bip445.sign, mutable, share, 0, ctx)
