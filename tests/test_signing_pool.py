"""
Tests for L{frostnode.signing.pool}: which coordinator owns which nonce,
what a signer sends, how a coordinator hands out and refills commitments.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.errors import InvalidCommitment
from frostnode.signing.pool import CoordinatorPool, NonceIssuer, Refill, coordinator_of, make_nonce_id
from tests.test_signing_roast import epoch_key

A = b"\xaa" * 32
B = b"\xbb" * 32
M = b"\x11" * 32
EPOCH = 2


class IssuerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key, self.shares, _ = epoch_key(2, 3)

    def test_generated_nonces_belong_to_their_coordinator_and_differ(self) -> None:
        fresh = NonceIssuer().generate(self.shares[0], A, 4)
        self.assertEqual({coordinator_of(nid) for nid, _ in fresh}, {A})
        self.assertEqual(len({sec.commitment for _, sec in fresh}), 4)
        self.assertEqual(len({nid for nid, _ in fresh}), 4)
        self.assertTrue(all(len(sec.commitment) == 66 and not sec.spent for _, sec in fresh))

    def test_plan_new_and_reset(self) -> None:
        issuer = NonceIssuer(max_outstanding=10, max_batch=4)
        self.assertEqual(issuer.plan(A, EPOCH, 3, reset=False), ([], 3, []))
        issued = [(make_nonce_id(A), os.urandom(66)) for _ in range(3)]
        issuer.issued(A, EPOCH, issued)
        self.assertEqual(issuer.plan(A, EPOCH, 9, reset=True), (issued, 1, []))  # capped at max_batch
        self.assertEqual(issuer.plan(A, EPOCH, 2, reset=True), (issued[:2], 0, []))
        self.assertEqual(issuer.plan(B, EPOCH, 2, reset=True), ([], 2, []))
        issuer.used(EPOCH, issued[0][0])
        self.assertEqual(issuer.outstanding(A, EPOCH), 2)

    def test_outstanding_cap_burns_the_oldest(self) -> None:
        issuer = NonceIssuer(max_outstanding=4, max_batch=4)
        issued = [(make_nonce_id(A), os.urandom(66)) for _ in range(4)]
        issuer.issued(A, EPOCH, issued)
        plan = issuer.plan(A, EPOCH, 3, reset=False)
        self.assertEqual(plan.generate, 3)
        self.assertEqual(plan.burn, [nid for nid, _ in issued[:3]])
        self.assertEqual(issuer.plan(A, EPOCH, 3, reset=True).burn, [])  # re-sent ones are not burned


class CoordinatorPoolTests(SynchronousTestCase):
    def batch(self, n: int, owner: bytes = A) -> list[tuple[bytes, bytes]]:
        _, shares, _ = epoch_key(2, 3)
        return [(nid, sec.commitment) for nid, sec in NonceIssuer().generate(shares[0], owner, n)]

    def test_hands_out_each_commitment_once_in_order(self) -> None:
        pool = CoordinatorPool(A, low_water=2, batch=4)
        nonces = self.batch(3)
        self.assertEqual(pool.add(M, EPOCH, nonces), 3)
        self.assertEqual(pool.add(M, EPOCH, nonces), 0)  # duplicates ignored
        got = [pool.take(M, EPOCH) for _ in range(4)]
        self.assertEqual(got, nonces + [None])
        self.assertEqual(pool.add(M, EPOCH, nonces), 0)  # used ones never come back
        pool.give_back(M, EPOCH, *nonces[1])
        self.assertEqual(pool.take(M, EPOCH), nonces[1])

    def test_bad_batches_blame_the_signer(self) -> None:
        pool = CoordinatorPool(A)
        with self.assertRaises(InvalidCommitment) as cm:
            pool.add(M, EPOCH, self.batch(2, owner=B))
        self.assertEqual(cm.exception.culprit, M)
        good = self.batch(1)
        with self.assertRaises(InvalidCommitment):
            pool.add(M, EPOCH, good + [(make_nonce_id(A), b"\x02" + b"\x00" * 65)])
        self.assertEqual(pool.available(M, EPOCH), 0)  # all or nothing

    def test_refills(self) -> None:
        pool = CoordinatorPool(A, low_water=2, batch=4, retry_after=5.0)
        self.assertEqual(pool.refills(EPOCH, [M, B], 0.0), [Refill(M, EPOCH, 4, True), Refill(B, EPOCH, 4, True)])
        self.assertEqual(pool.refills(EPOCH, [M], 1.0), [])  # in flight
        self.assertEqual(pool.refills(EPOCH, [M], 5.0), [Refill(M, EPOCH, 4, True)])  # retried, still a reset
        pool.add(M, EPOCH, self.batch(2))
        self.assertEqual(pool.refills(EPOCH, [M], 6.0), [])  # at low water
        pool.take(M, EPOCH)
        self.assertEqual(pool.refills(EPOCH, [M], 6.0), [Refill(M, EPOCH, 4, False)])
        self.assertEqual(sorted(pool.members(EPOCH)), sorted([M, B]))
        pool.drop_epoch(EPOCH)
        self.assertEqual(pool.members(EPOCH), [])
