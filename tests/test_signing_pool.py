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
        self.assertEqual(issuer.plan(A, EPOCH, 3, reset=False, now=0.0), ([], 3, False))
        issued = [(make_nonce_id(A), os.urandom(66)) for _ in range(3)]
        issuer.issued(A, EPOCH, issued)
        self.assertEqual(issuer.plan(A, EPOCH, 9, reset=True, now=0.0), (issued, 1, False))  # capped at max_batch
        issuer.not_issued(A, EPOCH, 1)
        self.assertEqual(issuer.plan(A, EPOCH, 2, reset=True, now=0.0), (issued[:2], 0, False))
        self.assertEqual(issuer.plan(B, EPOCH, 2, reset=True, now=0.0), ([], 2, False))
        issuer.used(EPOCH, issued[0][0])
        self.assertEqual(issuer.outstanding(A, EPOCH), 2)

    def test_at_the_cap_the_book_is_resent_in_turn_never_burned(self) -> None:
        issuer = NonceIssuer(max_outstanding=4, max_batch=4, refill_every=1.0)
        issued = [(make_nonce_id(A), os.urandom(66)) for _ in range(4)]
        issuer.issued(A, EPOCH, issued)
        self.assertEqual(issuer.plan(A, EPOCH, 3, reset=False, now=10.0), (issued[:3], 0, False))
        self.assertEqual(issuer.plan(A, EPOCH, 2, reset=False, now=20.0), ([issued[3], issued[0]], 0, False))
        self.assertEqual(issuer.outstanding(A, EPOCH), 4)
        issuer.used(EPOCH, issued[1][0])
        self.assertEqual(issuer.plan(A, EPOCH, 3, reset=False, now=30.0), (issued[2:4], 1, False))

    def test_generated_nonces_count_against_the_cap_before_they_are_persisted(self) -> None:
        issuer = NonceIssuer(max_outstanding=6, max_batch=4)
        self.assertEqual(issuer.plan(A, EPOCH, 4, reset=False, now=0.0).generate, 4)
        self.assertEqual(issuer.plan(A, EPOCH, 4, reset=False, now=100.0).generate, 2)  # 4 still in flight
        issuer.not_issued(A, EPOCH, 4)
        self.assertEqual(issuer.plan(A, EPOCH, 4, reset=False, now=200.0).generate, 4)

    def test_commitments_served_are_rate_limited_per_coordinator_and_epoch(self) -> None:
        """A burst of max_outstanding, then max_outstanding per refill_every seconds."""
        issuer = NonceIssuer(max_outstanding=8, max_batch=8, refill_every=4.0)
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=0.0), ([], 8, False))
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=0.0), ([], 0, True))
        self.assertEqual(issuer.plan(B, EPOCH, 2, reset=False, now=0.0), ([], 2, False))  # another coordinator
        self.assertEqual(issuer.plan(A, EPOCH + 1, 2, reset=False, now=0.0), ([], 2, False))  # another epoch
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=1.0), ([], 0, True))  # 2 due, but at the cap
        issuer.not_issued(A, EPOCH, 8)
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=1.0), ([], 2, True))
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=1.0).limited, True)
        issuer.drop_epoch(EPOCH)
        self.assertEqual(issuer.plan(A, EPOCH, 8, reset=False, now=1.0), ([], 8, False))


class CoordinatorPoolTests(SynchronousTestCase):
    def batch(self, n: int, owner: bytes = A) -> list[tuple[bytes, bytes]]:
        _, shares, _ = epoch_key(2, 3)
        return [(nid, sec.commitment) for nid, sec in NonceIssuer().generate(shares[0], owner, n)]

    def answer(self, pool: CoordinatorPool, nonces: list, member: bytes = M, now: float = 0.0) -> int:
        """Ask C{member} for a refill and take C{nonces} as its answer."""
        self.assertTrue(pool.refills(EPOCH, [member], now))
        return pool.add(member, EPOCH, nonces, now)

    def test_hands_out_each_commitment_once_in_order(self) -> None:
        pool = CoordinatorPool(A, low_water=4, batch=4, retry_after=0.0, reuse_after=100.0)
        nonces = self.batch(3)
        self.assertEqual(self.answer(pool, nonces), 3)
        got = [pool.take(M, EPOCH, 1.0) for _ in range(4)]
        self.assertEqual(got, nonces + [None])
        self.assertEqual(self.answer(pool, nonces, now=2.0), 0)  # used ones do not come back...
        self.assertEqual(self.answer(pool, nonces[:1], now=101.0), 1)  # ...until their session is long gone
        self.assertEqual(self.answer(pool, nonces[:1], now=102.0), 0)  # duplicates ignored
        pool.give_back(M, EPOCH, *nonces[1])
        self.assertEqual(pool.take(M, EPOCH, 103.0), nonces[1])

    def test_only_answers_to_our_refills_are_taken(self) -> None:
        pool = CoordinatorPool(A, low_water=2, batch=4)
        junk = [(make_nonce_id(A), b"\x02" + b"\x00" * 65)] * 3
        self.assertEqual(pool.add(M, EPOCH, junk, 0.0), 0)  # unsolicited: not even parsed
        self.assertEqual(pool.add(M, EPOCH, self.batch(2), 0.0), 0)
        self.assertEqual(pool.epochs(), set())
        self.assertFalse(pool.expecting(M, EPOCH))
        pool.refills(EPOCH, [M], 0.0)
        self.assertTrue(pool.expecting(M, EPOCH))
        self.assertFalse(pool.expecting(M, EPOCH + 1))
        self.assertEqual(pool.add(M, EPOCH, self.batch(2), 0.0), 2)
        self.assertEqual(pool.add(M, EPOCH, self.batch(2), 0.0), 0)  # a second answer to one refill
        self.assertEqual(pool.available(M, EPOCH), 2)

    def test_an_answer_is_cut_to_what_was_asked_and_to_capacity(self) -> None:
        pool = CoordinatorPool(A, low_water=3, batch=4, retry_after=0.0)
        self.assertEqual(pool.capacity, 7)
        self.assertEqual(self.answer(pool, self.batch(9)), 4)  # asked for 4
        taken = [pool.take(M, EPOCH, 0.0) for _ in range(2)]
        self.assertEqual(self.answer(pool, self.batch(2)), 2)
        self.assertEqual(pool.available(M, EPOCH), 4)
        taken += [pool.take(M, EPOCH, 0.0) for _ in range(2)]
        self.assertTrue(pool.refills(EPOCH, [M], 0.0))
        for nonce in taken:  # refused sessions: back in the pool while the refill travels
            pool.give_back(M, EPOCH, *nonce)
        self.assertEqual(pool.add(M, EPOCH, self.batch(4), 0.0), 1)
        self.assertEqual(pool.available(M, EPOCH), 7)
        extra = pool.take(M, EPOCH, 0.0)
        self.assertEqual(pool.refills(EPOCH, [M], 0.0), [])  # 6 left: nothing asked
        self.assertEqual(pool.add(M, EPOCH, self.batch(4), 0.0), 0)
        pool.give_back(M, EPOCH, *extra)
        pool.give_back(M, EPOCH, *self.batch(1)[0])  # full: not kept
        self.assertEqual(pool.available(M, EPOCH), 7)

    def test_bad_batches_blame_the_signer(self) -> None:
        pool = CoordinatorPool(A, retry_after=0.0)
        with self.assertRaises(InvalidCommitment) as cm:
            self.answer(pool, self.batch(2, owner=B))
        self.assertEqual(cm.exception.culprit, M)
        good = self.batch(1)
        with self.assertRaises(InvalidCommitment):
            self.answer(pool, good + [(make_nonce_id(A), b"\x02" + b"\x00" * 65)])
        self.assertEqual(pool.available(M, EPOCH), 0)  # all or nothing

    def test_refills(self) -> None:
        pool = CoordinatorPool(A, low_water=2, batch=4, retry_after=5.0)
        self.assertEqual(pool.refills(EPOCH, [M, B], 0.0), [Refill(M, EPOCH, 4, True), Refill(B, EPOCH, 4, True)])
        self.assertEqual(pool.refills(EPOCH, [M], 1.0), [])  # in flight
        self.assertEqual(pool.refills(EPOCH, [M], 5.0), [Refill(M, EPOCH, 4, True)])  # retried, still a reset
        pool.add(M, EPOCH, self.batch(2), 5.0)
        self.assertEqual(pool.refills(EPOCH, [M], 6.0), [])  # at low water
        pool.take(M, EPOCH, 6.0)
        self.assertEqual(pool.refills(EPOCH, [M], 6.0), [Refill(M, EPOCH, 4, False)])
        self.assertEqual(sorted(pool.members(EPOCH)), sorted([M, B]))
        self.assertEqual(pool.epochs(), {EPOCH})
        pool.drop_epoch(EPOCH)
        self.assertEqual(pool.members(EPOCH), [])
        self.assertFalse(pool.expecting(M, EPOCH))
