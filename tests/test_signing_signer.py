"""
Tests for L{frostnode.signing.signer} and L{frostnode.signing.suites}: a
member decides on its own view, refuses with signed verdicts, and signs only
with a nonce the real L{NonceStore} released after marking it spent, which
no restart can undo.
"""

from __future__ import annotations

import pickle

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto import rfc9591
from frostnode.crypto.bip340 import schnorr_verify
from frostnode.crypto.errors import NonceReuseError
from frostnode.crypto.group import point_from_bytes
from frostnode.crypto.nonces import SecretNonce
from frostnode.signing import messages as m
from frostnode.signing.pool import NonceIssuer
from frostnode.signing.signer import Answer, NeedData, Ready, Signer, verify_verdict
from frostnode.signing.suites import EpochKey, SigningShare, get_suite
from frostnode.store.db import Database
from frostnode.store.errors import NonceSpent
from frostnode.store.nonces import NonceEntry, NonceStore
from tests.test_signing_roast import EchoScheme, epoch_key

EPOCH = 7
REQUEST = b"pay bob 5"


class CountingScheme(EchoScheme):
    def __init__(self) -> None:
        self.calls = 0

    def message(self, request, view):
        self.calls += 1
        return super().message(request, view)


class DigestView(dict):
    """An L{EchoScheme} view that can say which state it is in, as a log's digest does."""

    state = 0

    def digest(self) -> int:
        return self.state


class SignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key, self.shares, self.hosts = epoch_key(3, 5)
        self.coordinator = self.hosts[0].public
        self.scheme = CountingScheme()
        self.signers = [Signer(h, {"echo": self.scheme}) for h in self.hosts]
        self.issuer = NonceIssuer()
        self.secrets: dict[bytes, SecretNonce] = {}
        self.message = EchoScheme().message(REQUEST, {})

    def nonce(self, index: int, coordinator: bytes = b"") -> tuple[bytes, bytes]:
        nid, sec = self.issuer.generate(self.shares[index], coordinator or self.coordinator, 1)[0]
        self.secrets[nid] = sec
        return nid, sec.commitment

    def request(self, indices=(0, 1, 2), suite: str = "bip445", session: int = 1, **kw) -> m.SignRequest:
        entries = tuple(m.SignerEntry(i, *self.nonce(i)) for i in indices)
        s = get_suite(suite).coordinator_session(self.key, [(e.index, e.commitment) for e in entries], self.message)
        fields = dict(request_id=b"q" * 16, session=session, epoch=EPOCH, key=self.key.output_key, suite=suite,
                      scheme="echo",
                      request=REQUEST, digest=m.message_digest(self.message), aggnonce=s.aggnonce, signers=entries)
        fields.update(kw)
        self.session = s
        return m.SignRequest(**fields)

    def handle(self, index: int, req: m.SignRequest, view=None):
        return self.signers[index].handle(self.coordinator, req, self.shares[index], {} if view is None else view)

    def test_signs_what_its_own_view_gives(self) -> None:
        req = self.request()
        shares = {}
        for i in (0, 1, 2):
            ready = self.handle(i, req)
            self.assertIsInstance(ready, Ready)
            self.assertEqual(ready.message, self.message)
            share = ready.sign(self.secrets[ready.entry.nonce_id])
            self.assertEqual((share.request_id, share.session), (req.request_id, 1))
            self.assertTrue(self.session.verify_share(i, share.share))
            shares[i] = share.share
        self.assertTrue(schnorr_verify(self.message, self.key.output_key, self.session.aggregate(shares)))

    def test_rfc9591(self) -> None:
        req = self.request(suite="rfc9591")
        shares = {}
        for i in (0, 1, 2):
            ready = self.handle(i, req)
            shares[i] = ready.sign(self.secrets[ready.entry.nonce_id]).share
        sig = self.session.aggregate(shares)
        self.assertTrue(rfc9591.verify(point_from_bytes(self.key.internal_key), self.message, sig))

    def test_views_differ_refusal_is_signed_and_carries_its_digest(self) -> None:
        req = self.request()
        out = self.handle(1, req, {"data": b"altered"})
        self.assertIsInstance(out, Answer)
        v = out.verdict
        self.assertEqual(v.kind_name, "views-differ")
        self.assertEqual(v.digest, m.message_digest(EchoScheme().message(REQUEST, {"data": b"altered"})))
        commitment = req.request_commitment()
        self.assertTrue(verify_verdict(self.hosts[1].public, self.coordinator, commitment, v))
        self.assertFalse(verify_verdict(self.hosts[2].public, self.coordinator, commitment, v))
        self.assertFalse(verify_verdict(self.hosts[1].public, self.coordinator, commitment, v._replace(reason="ok")))
        self.assertFalse(verify_verdict(self.hosts[1].public, self.hosts[2].public, commitment, v))
        other = req._replace(request=b"pay bob 6").request_commitment()
        self.assertFalse(verify_verdict(self.hosts[1].public, self.coordinator, other, v))

    def test_rejection_is_validation_failed(self) -> None:
        out = self.handle(2, self.request(), {"reject": "overdraft on alice"})
        self.assertEqual((out.verdict.kind_name, out.verdict.reason, out.verdict.digest),
                         ("validation-failed", "test: overdraft on alice", b""))

    def test_missing_data(self) -> None:
        req = self.request()
        out = self.handle(1, req, {"missing": True})
        self.assertIsInstance(out, NeedData)
        v = self.signers[1].handle_missing(self.coordinator, req, out.error).verdict
        self.assertEqual(v.kind_name, "views-differ")
        self.assertTrue(v.reason.startswith("missing data: not held locally: records 0101"))

    def test_validate_only_agrees(self) -> None:
        req = self.request()
        out = self.handle(4, req._replace(session=0, signers=()))
        self.assertEqual((out.verdict.kind_name, out.verdict.digest), ("agree", req.digest))

    def test_unusable_requests_are_refused_before_touching_a_nonce(self) -> None:
        other_coordinator = self.hosts[3].public
        cases = {
            "nonce was not issued to this coordinator":
                self.request()._replace(signers=(m.SignerEntry(0, *self.nonce(0, other_coordinator)),
                                                 *self.request().signers[1:])),
            "2 signers where 3..5 are needed": self.request()._replace(signers=self.request().signers[:2]),
        }
        for reason, req in cases.items():
            out = self.handle(0, req)
            self.assertEqual((out.verdict.kind_name, out.verdict.reason), ("unavailable", reason))
        out = self.signers[0].handle(self.coordinator, self.request(), None, {})
        self.assertEqual(out.verdict.reason, f"no usable key for epoch {EPOCH}")
        out = self.handle(0, self.request(scheme="nope"))
        self.assertEqual(out.verdict.reason, "unknown scheme 'nope'")
        out = self.handle(0, self.request(aggnonce=b"\x05" * 66))
        self.assertEqual(out.verdict.kind_name, "unavailable")
        self.assertTrue(all(not s.spent for s in self.secrets.values()))

    def test_scheme_runs_once_per_request(self) -> None:
        """A view that cannot say its state: results are kept per request only."""
        for session in (1, 2, 3):
            self.assertIsInstance(self.handle(1, self.request(session=session)), Ready)
        self.assertEqual(self.scheme.calls, 1)
        # A new request (a client's retry) is evaluated afresh: the view may have changed.
        self.handle(1, self.request(request_id=b"Q" * 16))
        self.assertEqual(self.scheme.calls, 2)

    def test_scheme_runs_once_per_view_state(self) -> None:
        """
        A view with a digest: the same request from any coordinator, with
        any request id, is evaluated once per state of the view.
        """
        view = DigestView()
        for rid, coordinator in ((b"a" * 16, self.coordinator), (b"b" * 16, self.coordinator),
                                 (b"c" * 16, self.hosts[3].public)):
            out = self.signers[1].handle(coordinator, self.request(request_id=rid), self.shares[1], view)
            self.assertIsInstance(out, (Ready, Answer))
        self.assertEqual(self.scheme.calls, 1)
        self.handle(1, self.request(request=b"another request"), view)
        self.assertEqual(self.scheme.calls, 2)
        self.handle(1, self.request(key=b"\x01" * 32), view)  # refused before the scheme runs
        self.assertEqual(self.scheme.calls, 2)
        view.state = 1  # the log changed
        self.handle(1, self.request(request_id=b"d" * 16), view)
        self.assertEqual(self.scheme.calls, 3)
        self.signers[1].evaluate("echo", REQUEST, self.key.output_key, view, self.hosts[4].public, b"e" * 16)
        self.assertEqual(self.scheme.calls, 3)

    def test_another_key_for_the_epoch_is_refused_first(self) -> None:
        """A request naming another output key: key-mismatch, before the scheme or a nonce is touched."""
        req = self.request(key=b"\x01" * 32)
        out = self.handle(1, req)
        self.assertEqual((out.verdict.kind_name, out.verdict.digest), ("key-mismatch", b""))
        self.assertIn(f"epoch {EPOCH} is key {self.key.output_key.hex()[:16]} here", out.verdict.reason)
        self.assertTrue(verify_verdict(self.hosts[1].public, self.coordinator, req.request_commitment(), out.verdict))
        self.assertEqual(self.scheme.calls, 0)
        self.assertTrue(all(not sec.spent for sec in self.secrets.values()))

    def test_ready_refuses_a_nonce_that_does_not_match(self) -> None:
        req = self.request()
        ready = self.handle(0, req)
        nid, sec = self.issuer.generate(self.shares[0], self.coordinator, 1)[0]
        self.assertRaises(ValueError, ready.sign, sec)
        self.assertFalse(sec.spent)

    def test_secrets_are_not_printed_or_pickled(self) -> None:
        share = self.shares[0]
        self.assertNotIn(share.secret.hex(), repr(share))
        self.assertRaises(TypeError, pickle.dumps, share)

    def test_epoch_key_checks_its_output_key(self) -> None:
        self.assertRaises(ValueError, EpochKey, EPOCH, self.key.members, 3, self.key.internal_key,
                          b"\x01" * 32, self.key.verification_shares)
        self.assertRaises(ValueError, EpochKey, EPOCH, tuple(reversed(self.key.members)), 3, self.key.internal_key,
                          self.key.output_key, self.key.verification_shares)


class StoredNonceTests(SynchronousTestCase):
    """The path the driver takes: persist, publish, reserve (spent on disk), then sign; never twice."""

    def setUp(self) -> None:
        self.key, self.shares, self.hosts = epoch_key(3, 5)
        self.coordinator = self.hosts[0].public
        self.dir = self.mktemp()
        self.open()
        self.addCleanup(lambda: self.db.close_sync())

    def open(self) -> None:
        self.db = Database.open(self.dir)
        self.store = NonceStore(self.db)

    def persist(self, index: int, count: int) -> list[tuple[bytes, bytes]]:
        fresh = NonceIssuer().generate(self.shares[index], self.coordinator, count)
        entries = []
        for nid, sec in fresh:
            k1, k2 = sec.peek_for_persistence()
            entries.append(NonceEntry(nid, k1.to_bytes(32, "big"), k2.to_bytes(32, "big"), sec.commitment))
        self.store.add_batch_sync(EPOCH, entries)
        return [(e.nonce_id, e.commitment) for e in entries]

    def reserve(self, nid: bytes) -> SecretNonce:
        e = self.store.reserve_sync(EPOCH, nid)
        return SecretNonce.from_persisted(int.from_bytes(e.k1, "big"), int.from_bytes(e.k2, "big"), e.commitment)

    def test_reserve_before_release_and_never_again_after_restart(self) -> None:
        pubs = {i: self.persist(i, 2) for i in (0, 1, 2)}
        message = EchoScheme().message(REQUEST, {})
        entries = tuple(m.SignerEntry(i, *pubs[i][0]) for i in (0, 1, 2))
        suite = get_suite("bip445")
        coord = suite.coordinator_session(self.key, [(e.index, e.commitment) for e in entries], message)
        req = m.SignRequest(b"q" * 16, 1, EPOCH, self.key.output_key, "bip445", "echo", REQUEST,
                            m.message_digest(message), coord.aggnonce, entries)
        signer = Signer(self.hosts[1], {"echo": EchoScheme()})
        ready = signer.handle(self.coordinator, req, self.shares[1], {})
        nid = ready.entry.nonce_id
        self.assertIs(self.store.status(EPOCH, nid), False)
        nonce = self.reserve(nid)
        # The scalars came out only after the spent mark was committed.
        self.assertIs(self.store.status(EPOCH, nid), True)
        share = ready.sign(nonce)
        self.assertTrue(coord.verify_share(1, share.share))
        self.assertRaises(NonceReuseError, ready.sign, nonce)
        self.assertRaises(NonceSpent, self.store.reserve_sync, EPOCH, nid)
        self.db.close_sync()
        self.open()
        self.assertIs(self.store.status(EPOCH, nid), True)
        self.assertRaises(NonceSpent, self.store.reserve_sync, EPOCH, nid)
        # The other nonce of the batch is intact and usable.
        self.assertIs(self.store.status(EPOCH, pubs[1][1][0]), False)
        self.reserve(pubs[1][1][0])

    def test_issuer_reloads_outstanding_nonces_after_restart(self) -> None:
        pubs = self.persist(1, 3)
        self.reserve(pubs[0][0])
        self.db.close_sync()
        self.open()
        issuer = NonceIssuer()
        issuer.load(EPOCH, self.store.unspent(EPOCH))
        self.assertEqual(issuer.outstanding(self.coordinator, EPOCH), 2)
        plan = issuer.plan(self.coordinator, EPOCH, want=5, reset=True, now=0.0)
        self.assertEqual(sorted(plan.resend), sorted(pubs[1:]))
        self.assertEqual(plan.generate, 3)
