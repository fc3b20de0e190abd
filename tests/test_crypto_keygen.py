"""
Tests for L{frostnode.crypto.keygen}: ZF's DKG vector reproduced, then
property tests of whole DKGs (one key for everyone, every t-subset signs,
t-1 cannot, a cheat is named), the Taproot-safety tweak and the encodings.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import pickle
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.errors import InvalidCommitment, InvalidEncoding, InvalidProofOfKnowledge, InvalidSecretShare
from frostnode.crypto.group import N, G, Point, base_mul, point_sum
from frostnode.crypto.keygen import (
    KeyPackage,
    PublicKeyPackage,
    Round1Package,
    SecretShareMessage,
    keygen_finalize,
    keygen_round1,
    keygen_share,
    trusted_dealer_keygen,
    verify_proof_of_knowledge,
    verify_share,
)
from frostnode.crypto.rfc9591 import Signature, aggregate, commit, session_context, sign, verify
from tests.vectors import load_json

SETTINGS = settings(max_examples=15, deadline=None)


@st.composite
def threshold_params(draw, max_n: int) -> tuple[int, int]:
    """(t, n) with 1 <= t <= n <= max_n."""
    n = draw(st.integers(1, max_n))
    return draw(st.integers(1, n)), n


def bip341_taptweak(p: Point) -> int:
    """BIP341's hash_TapTweak(x(P)) with no merkle root, computed independently of the code under test."""
    tag = hashlib.sha256(b"TapTweak").digest()
    return int.from_bytes(hashlib.sha256(tag + tag + p.xbytes()).digest(), "big") % N


class DKG:
    """A complete honest DKG among identifiers 1..n, run the way the protocol will."""

    def __init__(self, t: int, n: int, seed: int, context: bytes = b"session", taproot_safe: bool = True) -> None:
        rng = random.Random(seed)
        self.t, self.n, self.context = t, n, context
        self.ids = list(range(1, n + 1))
        self.secrets, self.packages = {}, {}
        for i in self.ids:
            self.secrets[i], self.packages[i] = keygen_round1(i, t, n, context, rng.randbytes)
        for j in self.ids:
            verify_proof_of_knowledge(j, self.packages[j], context)
        # shares[i][j] = f_j(i), the share i received from j
        self.shares = {i: {j: keygen_share(self.secrets[j], i) for j in self.ids} for i in self.ids}
        for s in self.secrets.values():
            s.forget()
        self.key_packages = {
            i: keygen_finalize(i, t, self.shares[i], self.packages, taproot_safe=taproot_safe) for i in self.ids
        }
        self.group_key = self.key_packages[1].group_key

    def sign(self, signers, msg: bytes = b"msg") -> tuple[bool, Signature]:
        """Sign with C{signers}; return (aggregate raised nothing, plain sum of the shares)."""
        kps = self.key_packages
        nonces, comms = {}, []
        for i in signers:
            nonces[i], c = commit(i, kps[i].secret_share)
            comms.append(c)
        ctx = session_context(self.group_key, msg, comms)
        shares = [sign(i, kps[i].secret_share, nonces[i], ctx) for i in signers]
        plain = Signature(ctx.group_commitment, sum(s.share for s in shares) % N)
        try:
            aggregate(ctx, shares, kps[1].verification_shares)
        except ValueError:
            return False, plain
        return True, plain


class ZFVectorTests(SynchronousTestCase):
    """zf-frost/frost-secp256k1/vectors_dkg.json: a 2-of-3 DKG with an empty context."""

    def setUp(self) -> None:
        self.v = load_json("zf-frost/frost-secp256k1/vectors_dkg.json")["inputs"]
        self.ids = (1, 2, 3)

    def round1(self, i: int):
        p = self.v[str(i)]
        draws = [bytes.fromhex(p["signing_key"]), bytes.fromhex(p["coefficient"]), b"\x42" * 32]
        return keygen_round1(i, 2, 3, b"", lambda n: draws.pop(0))

    def vector_package(self, i: int) -> Round1Package:
        p = self.v[str(i)]
        return Round1Package.decode(bytes.fromhex("".join(p["vss_commitments"]) + p["proof_of_knowledge"]), 2)

    def test_commitments_and_proofs(self) -> None:
        for i in self.ids:
            _, ours = self.round1(i)
            theirs = self.vector_package(i)
            self.assertEqual(ours.commitments, theirs.commitments)
            verify_proof_of_knowledge(i, theirs, b"")
            verify_proof_of_knowledge(i, ours, b"")
            # ZF's package bytes are exactly our encoding
            self.assertEqual(theirs.encode().hex(), "".join(self.v[str(i)]["vss_commitments"]) + self.v[str(i)]["proof_of_knowledge"])
            # the proof is bound to the identifier and to the context
            with self.assertRaises(InvalidProofOfKnowledge) as cm:
                verify_proof_of_knowledge(i % 3 + 1, theirs, b"")
            self.assertEqual(cm.exception.culprit, i % 3 + 1)
            self.assertRaises(InvalidProofOfKnowledge, verify_proof_of_knowledge, i, theirs, b"other session")

    def test_shares_and_outputs(self) -> None:
        secrets = {i: self.round1(i)[0] for i in self.ids}
        packages = {i: self.vector_package(i) for i in self.ids}
        for i in self.ids:
            received = {}
            for j, hexshare in self.v[str(i)]["signing_shares"].items():
                share = int(hexshare, 16)
                self.assertEqual(keygen_share(secrets[int(j)], i), share)
                verify_share(int(j), i, share, packages[int(j)])
                received[int(j)] = share
            received[i] = keygen_share(secrets[i], i)
            kp = keygen_finalize(i, 2, received, packages, taproot_safe=False)
            self.assertEqual(kp.secret_share, int(self.v[str(i)]["signing_share"], 16))
            self.assertEqual(kp.group_key.encode().hex(), self.v["verifying_key"])
            self.assertEqual(kp.untweaked_group_key, kp.group_key)
            for j in self.ids:
                self.assertEqual(kp.verification_shares[j].encode().hex(), self.v[str(j)]["verifying_share"])


class DKGPropertyTests(SynchronousTestCase):
    @SETTINGS
    @given(threshold_params(6), st.integers(0, 2**32))
    @example((14, 20), 7)
    def test_one_key_every_t_subset_signs(self, params: tuple[int, int], seed: int) -> None:
        t, n = params
        dkg = DKG(t, n, seed)
        kps = dkg.key_packages
        public = [kp.public_key_package() for kp in kps.values()]
        self.assertTrue(all(p == public[0] for p in public), "everyone must hold the same public output")
        P = point_sum(dkg.packages[i].commitments[0] for i in dkg.ids)
        self.assertEqual(public[0].untweaked_group_key, P)
        self.assertEqual(dkg.group_key, P + base_mul(bip341_taptweak(P)))
        for i, kp in kps.items():
            self.assertEqual(base_mul(kp.secret_share), kp.verification_shares[i])
        subsets = list(itertools.combinations(dkg.ids, t))
        if len(subsets) > 40:
            subsets = random.Random(seed).sample(subsets, 3)
        for signers in subsets:
            ok, sig = dkg.sign(signers)
            self.assertTrue(ok, f"signers {signers} of {t}-of-{n}")
            self.assertTrue(verify(dkg.group_key, b"msg", sig))
            self.assertFalse(verify(P, b"msg", sig))
        if t > 1:
            ok, sig = dkg.sign(random.Random(seed).sample(dkg.ids, t - 1))
            self.assertFalse(ok)
            self.assertFalse(verify(dkg.group_key, b"msg", sig))

    @SETTINGS
    @given(st.integers(2, 5), st.integers(0, 2**32), st.data())
    def test_corrupted_share_names_sender(self, n: int, seed: int, data) -> None:
        t = data.draw(st.integers(1, n))
        sender = data.draw(st.integers(1, n))
        recipient = data.draw(st.integers(1, n).filter(lambda r: r != sender))
        delta = data.draw(st.integers(1, N - 1))
        dkg = DKG(t, n, seed)
        received = dict(dkg.shares[recipient])
        received[sender] = (received[sender] + delta) % N
        with self.assertRaises(InvalidSecretShare) as cm:
            verify_share(sender, recipient, received[sender], dkg.packages[sender])
        self.assertEqual(cm.exception.culprits, [sender])
        with self.assertRaises(InvalidSecretShare) as cm:
            keygen_finalize(recipient, t, received, dkg.packages)
        self.assertEqual(cm.exception.culprits, [sender])
        for j in dkg.ids:
            if j != sender:
                verify_share(j, recipient, received[j], dkg.packages[j])

    @SETTINGS
    @given(st.integers(1, 5), st.integers(0, 2**32), st.data())
    def test_corrupted_proof_names_sender(self, n: int, seed: int, data) -> None:
        t = data.draw(st.integers(1, n))
        cheat = data.draw(st.integers(1, n))
        how = data.draw(st.sampled_from(["mu", "R", "phi0"]))
        dkg = DKG(t, n, seed)
        pkg = dkg.packages[cheat]
        if how == "mu":
            bad = pkg._replace(mu=(pkg.mu + 1) % N)
        elif how == "R":
            bad = pkg._replace(R=pkg.R + G)
        else:
            # a rogue phi0 (say, cancelling the others) without its discrete log
            bad = pkg._replace(commitments=(pkg.commitments[0] + G,) + pkg.commitments[1:])
        packages = {j: (bad if j == cheat else p) for j, p in dkg.packages.items()}
        for j, p in packages.items():
            if j == cheat:
                with self.assertRaises(InvalidProofOfKnowledge) as cm:
                    verify_proof_of_knowledge(j, p, dkg.context)
                self.assertEqual(cm.exception.culprits, [cheat])
            else:
                verify_proof_of_knowledge(j, p, dkg.context)


class TaprootSafetyTests(SynchronousTestCase):
    def test_tweak_without_even_y_normalisation(self) -> None:
        """ChillDKG: group key = P + tw*G with P as is; find a DKG whose P has odd y to tell the two apart."""
        for seed in range(40):
            dkg = DKG(2, 3, seed)
            P = dkg.key_packages[1].untweaked_group_key
            if not P.has_even_y():
                break
        else:
            self.fail("no odd-y P in 40 DKGs")
        tw = bip341_taptweak(P)
        self.assertEqual(P, point_sum(dkg.packages[i].commitments[0] for i in dkg.ids))
        self.assertEqual(dkg.group_key, P + base_mul(tw))
        self.assertNotEqual(dkg.group_key, -P + base_mul(tw))
        untweaked = keygen_finalize(1, 2, dkg.shares[1], dkg.packages, taproot_safe=False)
        self.assertEqual(untweaked.group_key, P)
        kp = dkg.key_packages[1]
        self.assertEqual(kp.secret_share, (untweaked.secret_share + tw) % N)
        for i in dkg.ids:
            self.assertEqual(kp.verification_shares[i], untweaked.verification_shares[i] + base_mul(tw))
        ok, sig = dkg.sign([1, 3])
        self.assertTrue(ok)
        self.assertTrue(verify(dkg.group_key, b"msg", sig))

    def test_trusted_dealer(self) -> None:
        group_key, kps = trusted_dealer_keygen(2, 4, secret=12345)
        self.assertEqual(kps[1].untweaked_group_key, base_mul(12345))
        self.assertEqual(group_key, base_mul(12345 + bip341_taptweak(base_mul(12345))))
        plain_key, plain = trusted_dealer_keygen(2, 4, secret=12345, taproot_safe=False)
        self.assertEqual(plain_key, base_mul(12345))
        for kp in kps.values():
            self.assertEqual(kp.group_key, group_key)
            self.assertEqual(base_mul(kp.secret_share), kp.verification_share)
        self.assertRaises(ValueError, trusted_dealer_keygen, 3, 2)
        self.assertRaises(ValueError, trusted_dealer_keygen, 0, 2)
        self.assertRaises(ValueError, trusted_dealer_keygen, 2, 3, N)


class FinalizeInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dkg = DKG(2, 3, 1)

    def test_wrong_commitment_count_names_sender(self) -> None:
        packages = dict(self.dkg.packages)
        packages[2] = packages[2]._replace(commitments=packages[2].commitments + (G,))
        with self.assertRaises(InvalidCommitment) as cm:
            keygen_finalize(1, 2, self.dkg.shares[1], packages)
        self.assertEqual(cm.exception.culprit, 2)

    def test_shares_and_packages_must_agree(self) -> None:
        shares = dict(self.dkg.shares[1])
        del shares[3]
        self.assertRaises(ValueError, keygen_finalize, 1, 2, shares, self.dkg.packages)
        packages = dict(self.dkg.packages)
        del packages[1]
        self.assertRaises(ValueError, keygen_finalize, 1, 2, {2: 1, 3: 1}, packages)
        self.assertRaises(ValueError, keygen_finalize, 1, 4, self.dkg.shares[1], self.dkg.packages)

    def test_round1_parameters(self) -> None:
        self.assertRaises(ValueError, keygen_round1, 0, 2, 3, b"")
        self.assertRaises(ValueError, keygen_round1, 1, 4, 3, b"")
        self.assertRaises(ValueError, keygen_round1, 1, 0, 3, b"")


class SecretHandlingTests(SynchronousTestCase):
    def test_round1_secret(self) -> None:
        secret, package = keygen_round1(1, 2, 3, b"ctx")
        share = keygen_share(secret, 2)
        self.assertNotIn(str(share), repr(secret))
        self.assertIn("redacted", repr(secret))
        self.assertRaises(TypeError, pickle.dumps, secret)
        self.assertRaises(TypeError, copy.copy, secret)
        self.assertRaises(TypeError, copy.deepcopy, secret)
        secret.forget()
        self.assertTrue(secret.forgotten)
        self.assertRaises(ValueError, keygen_share, secret, 2)
        self.assertIn("forgotten", repr(secret))

    def test_key_package_repr(self) -> None:
        _, kps = trusted_dealer_keygen(2, 3)
        kp = kps[1]
        self.assertNotIn(str(kp.secret_share), repr(kp))
        self.assertNotIn(kp.secret_share.to_bytes(32, "big").hex(), repr(kp))
        self.assertIn("redacted", repr(kp))


class EncodingTests(SynchronousTestCase):
    def test_round1_package(self) -> None:
        _, pkg = keygen_round1(5, 3, 5, b"ctx")
        enc = pkg.encode()
        self.assertEqual(len(enc), Round1Package.size(3))
        self.assertEqual(len(enc), 3 * 33 + 65)
        self.assertEqual(Round1Package.decode(enc, 3), pkg)
        self.assertRaises(InvalidEncoding, Round1Package.decode, enc, 2)
        self.assertRaises(InvalidEncoding, Round1Package.decode, enc, 4)
        self.assertRaises(InvalidEncoding, Round1Package.decode, enc[:-1], 3)
        self.assertRaises(InvalidEncoding, Round1Package.decode, enc[:-32] + N.to_bytes(32, "big"), 3)
        self.assertRaises(InvalidEncoding, Round1Package.decode, bytes(33) + enc[33:], 3)
        self.assertRaises(InvalidEncoding, Round1Package.decode, enc[:99] + b"\x05" + enc[100:], 3)
        self.assertRaises(ValueError, Round1Package.decode, enc, 0)

    def test_share_message(self) -> None:
        msg = SecretShareMessage(2, 300, N - 1)
        enc = msg.encode()
        self.assertEqual(len(enc), 96)
        self.assertEqual(SecretShareMessage.decode(enc), msg)
        self.assertNotIn(str(N - 1), repr(msg))
        self.assertRaises(InvalidEncoding, SecretShareMessage.decode, enc[:-1])
        self.assertRaises(InvalidEncoding, SecretShareMessage.decode, enc[:64] + N.to_bytes(32, "big"))
        self.assertRaises(InvalidEncoding, SecretShareMessage.decode, bytes(32) + enc[32:])

    def test_key_packages(self) -> None:
        _, kps = trusted_dealer_keygen(3, 5)
        kp = kps[4]
        enc = kp.encode()
        self.assertEqual(len(enc), 64 + 70 + 5 * 65)
        self.assertEqual(KeyPackage.decode(enc), kp)
        pub = kp.public_key_package()
        self.assertEqual(PublicKeyPackage.decode(pub.encode()), pub)
        self.assertEqual(enc[64:], pub.encode())
        self.assertEqual(kps[1].public_key_package(), pub)

    def test_key_package_rejects(self) -> None:
        _, kps = trusted_dealer_keygen(3, 5)
        enc = kps[4].encode()
        pub = enc[64:]
        bad = [
            enc[:-1],
            enc + b"\x00",
            enc[:63],
            enc[:32] + ((kps[4].secret_share + 1) % N).to_bytes(32, "big") + pub,  # secret does not match Y_4
            (9).to_bytes(32, "big") + enc[32:],  # no verification share for 9
            enc[:64] + (6).to_bytes(2, "big") + pub[2:],  # t > n
            enc[:64] + (0).to_bytes(2, "big") + pub[2:],  # t = 0
            enc[:64] + pub[:2] + (4).to_bytes(2, "big") + pub[4:],  # count disagrees with length
        ]
        # identifiers out of order
        entries = [pub[70 + 65 * k : 70 + 65 * (k + 1)] for k in range(5)]
        bad.append(enc[:64] + pub[:70] + b"".join([entries[1], entries[0]] + entries[2:]))
        for data in bad:
            self.assertRaises(InvalidEncoding, KeyPackage.decode, data)
        self.assertRaises(InvalidEncoding, PublicKeyPackage.decode, pub[:69])
