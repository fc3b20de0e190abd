"""
Tests for L{frostnode.signing.roast}: the ROAST coordinator as a pure state
machine, driven by honest, silent, garbage-sending and divergent members
that run the real signer core (L{frostnode.signing.signer}) on their own
views.  No reactor, no store: nonces are generated in memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto import bip445
from frostnode.crypto.bip340 import schnorr_verify
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.crypto.nonces import SecretNonce
from frostnode.identity import HostKeypair
from frostnode.signing import roast
from frostnode.signing.messages import VERDICT_NAMES, AGREE, SignRequest, message_digest
from frostnode.signing.pool import make_nonce_id
from frostnode.signing.signer import Answer, NeedData, Ready, Signer
from frostnode.signing.suites import EpochKey, SigningShare, get_suite
from frostnode.validation.interface import MissingData, Rejection

EPOCH = 7


class EchoScheme:
    """
    An in-test scheme: the message is a hash of the request and the member's
    view (a dict), so members with different C{data} compute different
    messages; C{reject} and C{missing} in the view make it refuse.
    """

    name = "echo"

    def message(self, request: bytes, view: Any) -> bytes:
        if view.get("reject"):
            raise Rejection(view["reject"], code="test")
        if view.get("missing"):
            raise MissingData(record_ids=[b"\x01" * 32])
        return hashlib.sha256(b"echo" + request + view.get("data", b"")).digest()


def host_keys(n: int) -> list[HostKeypair]:
    """n host keypairs, sorted by public key (= member index order)."""
    keys = [HostKeypair(hashlib.sha256(b"host %d" % i).digest()) for i in range(n)]
    return sorted(keys, key=lambda k: k.public)


def epoch_key(t: int, n: int, epoch: int = EPOCH) -> tuple[EpochKey, list[SigningShare], list[HostKeypair]]:
    """A trusted-dealer key for n members, as the signing layer sees it."""
    hosts = host_keys(n)
    group_key, packages = trusted_dealer_keygen(t, n)
    internal = group_key.encode()
    output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(internal))
    vshares = tuple(packages[i + 1].verification_share.encode() for i in range(n))
    key = EpochKey(epoch, tuple(h.public for h in hosts), t, internal, output, vshares)
    shares = [SigningShare(key, i, packages[i + 1].secret_share.to_bytes(32, "big")) for i in range(n)]
    return key, shares, hosts


class MemoryNonces:
    """The coordinator's stock (L{roast.NonceSource}) plus each signer's secrets, in memory."""

    def __init__(self, key: EpochKey, shares: list[SigningShare], coordinator: bytes, per_member: int = 8) -> None:
        self.stock: dict[int, list[tuple[bytes, bytes]]] = {}
        self.secrets: dict[bytes, SecretNonce] = {}
        for s in shares:
            self.stock[s.index] = []
            for _ in range(per_member):
                nid = make_nonce_id(coordinator)
                sec, pub = bip445.nonce_gen(s.secret, key.verification_shares[s.index], key.output_key, None, nid)
                self.secrets[nid] = sec
                self.stock[s.index].append((nid, pub))
        self.taken: list[bytes] = []

    def available(self, index: int) -> int:
        return len(self.stock[index])

    def take(self, index: int) -> Optional[tuple[bytes, bytes]]:
        if not self.stock[index]:
            return None
        got = self.stock[index].pop(0)
        self.taken.append(got[0])
        return got

    def give_back(self, index: int, nonce_id: bytes, commitment: bytes) -> None:
        self.stock[index].insert(0, (nonce_id, commitment))


class Harness:
    """
    One request: a RoastCoordinator and n members answering its sessions.

    C{behaviour[i]} is "honest", "silent" (never answers), "garbage" (a
    share that is not valid), "wrong-message" (signs another message), or
    "other-key" (holds another key for the epoch).
    C{views[i]} is member i's view for the L{EchoScheme}.
    """

    def __init__(self, t: int, n: int, suite: str = "bip445", audit: bool = False, coordinator: int = 0,
                 per_member: int = 8, eager: bool = False) -> None:
        self.key, self.shares, self.hosts = epoch_key(t, n)
        self.suite = get_suite(suite)
        self.coordinator = self.hosts[coordinator].public
        self.nonces = MemoryNonces(self.key, self.shares, self.coordinator, per_member)
        self.signers = [Signer(h, {"echo": EchoScheme()}) for h in self.hosts]
        self.views: list[dict] = [{} for _ in range(n)]
        self.behaviour = ["honest"] * n
        self.request = b"pay 5 to bob"
        self.message = EchoScheme().message(self.request, self.views[coordinator])
        self.audit = audit
        self.eager = eager
        self.used_nonces: list[bytes] = []
        self.queue: list[tuple[int, str, tuple]] = []

    def run(self, candidates: Optional[list[int]] = None) -> roast.Action:
        self.roast = roast.RoastCoordinator(
            self.key, self.suite, self.message,
            list(range(self.key.n)) if candidates is None else candidates, self.nonces, audit=self.audit,
            eager=self.eager)
        self.started: list[roast.StartSession] = []
        self.expirations = 0
        self._apply(self.roast.start())
        while self.roast.result is None:
            if not self.queue:
                live = self.roast.live_sessions()
                if not live:
                    break
                for number in live:  # the driver's session timeout
                    self.expirations += 1
                    self._apply(self.roast.session_expired(number))
                continue
            index, kind, args = self.queue.pop(0)
            if kind == "share":
                self._apply(self.roast.on_share(index, *args))
            elif kind == "refusal":
                self._apply(self.roast.on_refusal(index, *args))
            elif kind == "agree":
                self._apply(self.roast.on_agreement(index, *args))
        if self.roast.result is None:
            self._apply(self.roast.expire())
        return self.roast.result

    def _apply(self, actions: list[roast.Action]) -> None:
        for a in actions:
            if isinstance(a, roast.StartSession):
                self.started.append(a)
                req = SignRequest(b"r" * 16, a.number, EPOCH, self.key.output_key, self.suite.name, "echo",
                                  self.request, message_digest(self.message), a.aggnonce, a.signers)
                for e in a.signers:
                    self._answer(e.index, req)
                if a.audit:
                    audit_req = req._replace(session=0, signers=())
                    for i in a.audit:
                        self._answer(i, audit_req)
            elif isinstance(a, roast.ReturnNonce):
                self.nonces.give_back(a.index, a.nonce_id, a.commitment)

    def _answer(self, index: int, req: SignRequest) -> None:
        b = self.behaviour[index]
        if b == "silent":
            return
        share = self.shares[index]
        if b == "other-key":
            share = epoch_key(self.key.threshold, self.key.n)[1][index]
        out = self.signers[index].handle(self.coordinator, req, share, self.views[index])
        if isinstance(out, Ready):
            self.used_nonces.append(out.entry.nonce_id)
            nonce = self.nonces.secrets[out.entry.nonce_id]
            if b == "wrong-message":
                other = self.suite.signer_session(
                    self.key, [(e.index, e.commitment) for e in req.signers], req.aggnonce, b"another message")
                payload = other.sign(self.shares[index], nonce)
            else:
                payload = out.sign(nonce).share
                if b == "garbage":
                    payload = os.urandom(32)
            self.queue.append((index, "share", (req.session, payload)))
        elif isinstance(out, Answer):
            v = out.verdict
            if v.kind == AGREE:
                self.queue.append((index, "agree", (req.session, v.digest)))
            else:
                self.queue.append((index, "refusal", (req.session, VERDICT_NAMES[v.kind], v.digest, v.reason)))
        else:
            assert isinstance(out, NeedData)
            v = self.signers[index].handle_missing(self.coordinator, req, out.error).verdict
            self.queue.append((index, "refusal", (req.session, VERDICT_NAMES[v.kind], v.digest, v.reason)))


class RoastTests(SynchronousTestCase):
    def assertSigned(self, h: Harness, result: roast.Action) -> roast.Finished:
        self.assertIsInstance(result, roast.Finished, getattr(result, "code", result))
        self.assertTrue(schnorr_verify(h.message, h.key.output_key, result.signature))
        self.assertEqual(len(result.signers), h.key.threshold)
        return result

    def test_all_honest_one_session(self) -> None:
        h = Harness(3, 5)
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.number, 1)
        self.assertEqual(result.report.sessions, 1)
        self.assertEqual(result.signers, (0, 1, 2))
        self.assertEqual(result.report.malicious, {})
        self.assertEqual(result.report.divergent, {})

    def test_rfc9591(self) -> None:
        h = Harness(3, 5, suite="rfc9591")
        result = h.run()
        self.assertIsInstance(result, roast.Finished)
        from frostnode.crypto import rfc9591
        from frostnode.crypto.group import point_from_bytes
        self.assertTrue(rfc9591.verify(point_from_bytes(h.key.internal_key), h.message, result.signature))

    def test_garbage_share_marks_culprit_and_still_signs(self) -> None:
        h = Harness(3, 5)
        h.behaviour[1] = "garbage"
        result = self.assertSigned(h, h.run())
        self.assertEqual(set(result.report.malicious), {1})
        self.assertIn("invalid signature share", result.report.malicious[1])
        self.assertNotIn(1, result.signers)
        self.assertLessEqual(result.report.sessions, 5 - 3 + 1)

    def test_unverified_share_is_checked_before_reuse(self) -> None:
        """
        Session 1 never completes (member 0 silent), so member 1's garbage
        share is not aggregated; member 1 is vetted when about to be picked
        again, found out, and never enters session 2.
        """
        h = Harness(3, 5)
        h.behaviour[0] = "silent"
        h.behaviour[1] = "garbage"
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.report.sessions, 2)
        self.assertEqual(set(result.report.malicious), {1})
        self.assertEqual([e.index for e in h.started[1].signers], [2, 3, 4])
        self.assertIn(2, result.report.agreeing)

    def test_share_for_another_message_names_the_member(self) -> None:
        h = Harness(3, 5)
        h.behaviour[2] = "wrong-message"
        result = self.assertSigned(h, h.run())
        self.assertEqual(set(result.report.malicious), {2})

    def test_silent_member_is_not_waited_for(self) -> None:
        """Session 1 stalls on the silent member; the two honest ones return and a second session finishes."""
        h = Harness(3, 5)
        h.behaviour[0] = "silent"
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.report.sessions, 2)
        self.assertNotIn(0, result.signers)
        self.assertEqual(result.report.unresponsive, [0])
        self.assertEqual(result.report.malicious, {})

    def test_worst_case_session_bound(self) -> None:
        """n - t silent or malicious members, picked first every time: at most n - t + 1 sessions."""
        for t, n in ((3, 5), (4, 7), (5, 9)):
            h = Harness(t, n)
            for i in range(n - t):
                h.behaviour[i] = "silent" if i % 2 else "garbage"
            result = self.assertSigned(h, h.run())
            self.assertLessEqual(result.report.sessions, n - t + 1)
            self.assertEqual(set(result.signers), set(range(n - t, n)))

    def test_eager_is_the_papers_rule(self) -> None:
        """eager=True: no patience, so a silent member costs no timeout at all; the bound still holds."""
        for t, n in ((3, 5), (4, 7)):
            h = Harness(t, n, eager=True)
            for i in range(n - t):
                h.behaviour[i] = "silent"
            result = self.assertSigned(h, h.run())
            self.assertEqual(h.expirations, 0)
            self.assertLessEqual(result.report.sessions, n - t + 1)

    def test_patience_waits_for_the_live_session(self) -> None:
        """Not eager: the silent member's session blocks a new one until the driver expires it."""
        h = Harness(3, 5)
        h.behaviour[1] = "silent"
        self.assertSigned(h, h.run())
        self.assertEqual(h.expirations, 1)

    def test_too_many_faulty_is_timeout_or_not_enough(self) -> None:
        h = Harness(3, 5)
        h.behaviour[0] = h.behaviour[1] = "silent"
        h.behaviour[2] = "garbage"
        result = h.run()
        self.assertIsInstance(result, roast.Failed)
        self.assertEqual(result.code, "timeout")
        self.assertEqual(result.report.unresponsive, [0, 1])
        h = Harness(3, 5)
        for i in range(3):
            h.behaviour[i] = "garbage"
        result = h.run()
        self.assertEqual((result.code, sorted(result.report.malicious)), ("not-enough-signers", [0, 1, 2]))

    def test_minority_divergent_succeeds_naming_them(self) -> None:
        h = Harness(3, 5)
        h.views[1] = {"data": b"altered"}
        result = self.assertSigned(h, h.run())
        self.assertEqual(set(result.report.divergent), {1})
        ref = result.report.divergent[1]
        self.assertEqual(ref.kind, "views-differ")
        self.assertEqual(ref.digest, message_digest(EchoScheme().message(h.request, {"data": b"altered"})))
        # Member 1 refused before reserving: its nonce went back to the pool, unused.
        self.assertNotIn(h.started[0].signers[1].nonce_id, h.used_nonces)
        self.assertIn(h.started[0].signers[1].nonce_id, [nid for nid, _ in h.nonces.stock[1]])

    def test_another_key_is_unavailable_and_returns_the_nonce(self) -> None:
        """Members holding another key for the epoch refuse before reserving: unavailable, not malicious."""
        h = Harness(3, 5)
        h.behaviour[1] = h.behaviour[2] = "other-key"
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.signers, (0, 3, 4))
        self.assertEqual(result.report.malicious, {})
        self.assertEqual({i: r.kind for i, r in result.report.unavailable.items()},
                         {1: "key-mismatch", 2: "key-mismatch"})
        for i in (1, 2):
            nid = h.started[0].signers[i].nonce_id
            self.assertNotIn(nid, h.used_nonces)
            self.assertIn(nid, [n for n, _ in h.nonces.stock[i]])

    def test_too_many_divergent_fails_naming_them(self) -> None:
        h = Harness(3, 5)
        for i in (1, 3, 4):
            h.views[i] = {"data": b"other %d" % i}
        result = h.run()
        self.assertIsInstance(result, roast.Failed)
        self.assertEqual(result.code, "views-differ")
        self.assertEqual(set(result.report.divergent), {1, 3, 4})

    def test_missing_data_counts_as_divergent(self) -> None:
        h = Harness(3, 5)
        h.views[2] = {"missing": True}
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.report.divergent[2].kind, "views-differ")
        self.assertIn("missing data", result.report.divergent[2].reason)

    def test_validation_failed_on_members(self) -> None:
        """Members whose scheme rejects while the coordinator's accepts: named; too many: validation-failed."""
        h = Harness(3, 5)
        for i in (1, 2, 3):
            h.views[i] = {"reject": "overdraft on alice"}
        result = h.run()
        self.assertEqual((result.code, result.detail), ("validation-failed", "test: overdraft on alice"))
        self.assertEqual(set(result.report.divergent), {1, 2, 3})

    def test_audit_names_divergent_members_never_picked(self) -> None:
        h = Harness(3, 5, audit=True)
        h.views[4] = {"data": b"altered"}
        result = self.assertSigned(h, h.run())
        self.assertEqual(result.signers, (0, 1, 2))
        self.assertEqual(set(result.report.divergent), {4})
        self.assertEqual(result.report.agreeing, {0, 1, 2, 3})
        self.assertEqual(result.report.sessions, 1)

    def test_audit_finds_divergence_before_picking(self) -> None:
        """With audit, a member refusing in the audit is never chosen for a later session."""
        h = Harness(3, 5, audit=True)
        h.behaviour[0] = "silent"
        h.views[3] = {"data": b"x"}
        result = self.assertSigned(h, h.run())
        self.assertEqual(set(result.signers), {1, 2, 4})
        self.assertEqual(set(result.report.divergent), {3})

    def test_audit_waits_until_deadline_for_silent(self) -> None:
        h = Harness(3, 5, audit=True)
        h.behaviour[4] = "silent"
        result = self.assertSigned(h, h.run())  # run() calls expire() once nothing else is queued
        self.assertEqual(result.report.unresponsive, [4])

    def test_nonce_starvation_asks_for_more(self) -> None:
        h = Harness(3, 5, per_member=0)
        r = roast.RoastCoordinator(h.key, h.suite, h.message, list(range(5)), h.nonces)
        actions = r.start()
        self.assertEqual(actions, [roast.NeedNonces((0, 1, 2, 3, 4))])
        h.nonces.stock[0].append(("x", "y"))  # type: ignore[arg-type]
        self.assertEqual(r.nonces_arrived(), [roast.NeedNonces((1, 2, 3, 4))])

    def test_timeout_names_members_without_nonces(self) -> None:
        h = Harness(3, 5, per_member=0)
        for i in (0, 1):
            h.nonces.stock[i] = MemoryNonces(h.key, h.shares, h.coordinator, 1).stock[i]
        r = roast.RoastCoordinator(h.key, h.suite, h.message, list(range(5)), h.nonces)
        r.start()
        (failed,) = r.expire()
        self.assertEqual((failed.code, failed.report.unresponsive), ("timeout", [2, 3, 4]))

    def test_too_few_candidates(self) -> None:
        h = Harness(3, 5)
        result = h.run(candidates=[0, 1])
        self.assertEqual(result.code, "not-enough-signers")

    def test_no_nonce_is_used_twice(self) -> None:
        h = Harness(3, 5)
        h.behaviour[0] = "silent"
        h.behaviour[2] = "garbage"
        h.run()
        self.assertEqual(len(h.nonces.taken), len(set(h.nonces.taken)))
        self.assertEqual(len(h.used_nonces), len(set(h.used_nonces)))
