"""
Tests for what one member can make another's L{SigningService} do: the
limits on nonce batches, refills and session requests, and how honest
disagreement (another key for the epoch, garbage on a link) is told apart
from misbehaviour.  Five members over in-memory links, each with its own
LMDB store, as in L{tests.test_signing_service}; the hostile member speaks
through its own links, exactly as a peer would.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.trial.unittest import TestCase

from frostnode.crypto import bip445
from frostnode.crypto.group import base_mul
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.net.interfaces import CHANNEL_SIGN
from frostnode.signing import messages as m
from frostnode.signing.service import SigningConfig
from frostnode.store.keys import EpochRecord
from frostnode.store.log import RecordBody
from tests.test_signing_roast import EchoScheme
from tests.test_signing_service import EPOCH, N, T, Federation, asynctest, verify_bip340

#: A nonce commitment made of two valid points (what a batch must carry to be kept).
COMMITMENT = base_mul(5).encode() + base_mul(7).encode()
#: Two bytes strings that are not points.
NOT_POINTS = b"\x02" + bytes(65)


def spy(fed: Federation, member: bytes, kind: int, into: list) -> None:
    """Record (and pass on) C{member}'s outgoing signing messages of type C{kind}."""
    def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
        if channel == CHANNEL_SIGN and payload[1] == kind:
            into.append((peer, payload))
        return [(peer, channel, payload)]
    fed.net.set_byzantine(member, rewrite)


class CountingEcho(EchoScheme):
    """L{EchoScheme}, recording the view of every evaluation (one view per member)."""

    def __init__(self) -> None:
        self.views: list[Any] = []

    def message(self, request: bytes, view: Any) -> bytes:
        self.views.append(view)
        return super().message(request, view)


class LogDigestScheme:
    """Signs the request with the member's log digest: a scheme of the request and the whole view."""

    name = "digest"

    def __init__(self) -> None:
        self.views: list[Any] = []

    def message(self, request: bytes, view: Any) -> bytes:
        self.views.append(view)
        return hashlib.sha256(b"digest" + request + view.digest().digest).digest()


def evaluations(scheme: Any, fed: Federation, i: int) -> int:
    return sum(1 for v in scheme.views if v is fed.service(i).view)


class NonceBatchLimitTests(TestCase):
    timeout = 60

    @asynctest
    async def test_unsolicited_batches_are_dropped_unread(self) -> None:
        """
        Batches nobody asked for (the epoch, or made-up epochs) add nothing,
        whatever their size; their points are not even parsed, so junk in
        them blames nobody.
        """
        fed = Federation(self)
        await fed.warm()
        coordinator, member = fed.members[0], fed.members[1]
        pool = fed.service(0).pool
        before = pool.available(member, EPOCH)
        links = fed.net.links(member)
        for i in range(10):
            for epoch in (EPOCH, 1000 + i):
                batch = m.NonceBatch(epoch, tuple((coordinator + os.urandom(16), COMMITMENT) for _ in range(1024)))
                links.send(coordinator, CHANNEL_SIGN, batch.encode())
        junk = m.NonceBatch(EPOCH, tuple((coordinator + os.urandom(16), NOT_POINTS) for _ in range(1024)))
        links.send(coordinator, CHANNEL_SIGN, junk.encode())
        await fed.settle()
        self.assertEqual(pool.available(member, EPOCH), before)
        self.assertEqual([pool.available(member, 1000 + i) for i in range(10)], [0] * 10)
        self.assertEqual(pool.epochs(), {EPOCH})
        self.assertEqual(fed.service(0).status()[member].state, "ok")
        self.assertTrue(verify_bip340(await fed.service(0).sign("echo", b"still signs")))

    @asynctest
    async def test_an_answer_is_cut_to_what_was_asked(self) -> None:
        """A member answering a refill with 1024 commitments gets only the batch asked for kept."""
        fed = Federation(self)
        greedy, coordinator = fed.members[1], fed.members[0]

        def pad(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_NONCE_BATCH and peer == coordinator:
                batch = m.decode(payload)
                extra = tuple((coordinator + os.urandom(16), COMMITMENT) for _ in range(1024 - len(batch.nonces)))
                payload = batch._replace(nonces=batch.nonces + extra).encode()
            return [(peer, channel, payload)]
        fed.net.set_byzantine(greedy, pad)
        await fed.warm()
        self.assertEqual(fed.service(0).pool.available(greedy, EPOCH), fed.config.pool_batch)
        self.assertEqual(fed.service(0).pool.available(fed.members[2], EPOCH), fed.config.pool_batch)


class RefillLimitTests(TestCase):
    timeout = 60

    @asynctest
    async def test_a_refill_flood_burns_and_generates_nothing_past_the_cap(self) -> None:
        """
        100 refills of 1024 from one coordinator: the signer generates at
        most up to its outstanding cap, burns no issued nonce, and sends at
        most one cap's worth of commitments until the clock moves on; then
        it answers again, from what it already issued.
        """
        fed = Federation(self)
        coordinator, signer = fed.members[0], fed.nodes[1]
        replies: list = []
        spy(fed, signer.host.public, m.T_NONCE_BATCH, replies)
        await fed.warm()
        issued_before = {nid for peer, p in replies if peer == coordinator for nid, _ in m.decode(p).nonces}
        self.assertEqual(len(issued_before), fed.config.pool_batch)
        replies.clear()
        flood = m.NonceRequest(EPOCH, 1024, False).encode()
        for _ in range(100):
            fed.net.links(coordinator).send(signer.host.public, CHANNEL_SIGN, flood)
        await fed.settle()
        sent = [nid for _, p in replies for nid, _ in m.decode(p).nonces]
        cap = fed.config.max_outstanding
        self.assertLessEqual(len(sent), cap)
        self.assertLessEqual(signer.service.issuer.outstanding(coordinator, EPOCH), cap)
        self.assertLessEqual(signer.nonces.unspent_count(EPOCH), cap * N)
        everything = issued_before | set(sent)
        self.assertEqual({signer.nonces.status(EPOCH, nid) for nid in everything}, {False})  # nothing burned

        replies.clear()
        fed.clock.advance(fed.config.refill_retry)
        await fed.settle()
        replies.clear()
        fed.net.links(coordinator).send(signer.host.public, CHANNEL_SIGN, m.NonceRequest(EPOCH, 64, False).encode())
        await fed.settle()
        again = [nid for _, p in replies for nid, _ in m.decode(p).nonces]
        self.assertEqual(len(again), 64)
        self.assertLessEqual(set(again), everything)  # at the cap: re-sent, not new
        self.assertTrue(verify_bip340(await fed.service(0).sign("echo", b"after the flood")))


class KeyMismatchTests(TestCase):
    timeout = 60

    @asynctest
    async def test_members_holding_another_key_are_unavailable_not_malicious(self) -> None:
        """
        Members 1 and 2 hold another certified session of the epoch (a
        higher attempt) while the others still sign with the first: they
        refuse with key-mismatch before reserving, are not blamed, and the
        others sign.
        """
        fed = Federation(self)
        group_key, packages = trusted_dealer_keygen(T, N)
        internal = group_key.encode()
        output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(internal))
        for i in (1, 2):
            node = fed.nodes[i]
            node.keys.put_pending_sync(EpochRecord(
                EPOCH, b"other-dkg", tuple(fed.members), T, i + 1, packages[i + 1].secret_share.to_bytes(32, "big"),
                b"", tuple(packages[j + 1].verification_share.encode() for j in range(N)), internal, output, 0.0,
                attempt=1))
            node.keys.certify_sync(EPOCH, b"test certificate", 0.0, session_id=b"other-dkg")
            node.service.epochs_changed()
        await fed.warm()
        requests: list = []
        spy(fed, fed.members[0], m.T_SIGN_REQUEST, requests)
        result = await fed.service(0).sign("echo", b"pay bob 5")
        self.assertTrue(verify_bip340(result))
        self.assertEqual(result.key, fed.output)
        self.assertEqual(dict(result.malicious), {})
        self.assertEqual(set(result.unavailable), {fed.members[1], fed.members[2]})
        self.assertEqual({r.kind for r in result.unavailable.values()}, {"key-mismatch"})
        self.assertEqual(set(result.signers), {fed.members[i] for i in (0, 3, 4)})
        status = fed.service(0).status()
        self.assertEqual({mem for mem, st in status.items() if st.state == "misbehaving"}, set())
        # They refused before reserving the nonces of the session they were in.
        first = m.decode(next(p for peer, p in requests if peer == fed.members[1]))
        for i in (1, 2):
            self.assertIs(fed.nodes[i].nonces.status(EPOCH, first.entry_for(i).nonce_id), False)


class MisbehaviourMarkTests(TestCase):
    timeout = 60

    def garble(self, fed: Federation, member: bytes) -> None:
        def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_SHARE:
                payload = payload[:-32] + os.urandom(32)
            return [(peer, channel, payload)]
        fed.net.set_byzantine(member, rewrite)

    @asynctest
    async def test_a_misbehaving_mark_expires(self) -> None:
        fed = Federation(self, config=SigningConfig(misbehaving_for=60.0))
        await fed.warm()
        bad = fed.members[1]
        self.garble(fed, bad)
        result = await fed.service(0).sign("echo", b"one")
        self.assertIn(bad, result.malicious)
        self.assertEqual(fed.service(0).status()[bad].state, "misbehaving")
        fed.net.set_byzantine(bad, None)
        fed.clock.advance(59.0)
        self.assertEqual(fed.service(0).status()[bad].state, "misbehaving")
        self.assertNotIn(bad, (await fed.service(0).sign("echo", b"two")).signers)
        fed.clock.advance(1.0)
        await fed.settle()
        self.assertEqual(fed.service(0).status()[bad].state, "ok")
        self.assertIn(bad, (await fed.service(0).sign("echo", b"three")).signers)

    @asynctest
    async def test_new_epochs_clear_misbehaving_marks(self) -> None:
        fed = Federation(self)
        await fed.warm()
        bad = fed.members[1]
        self.garble(fed, bad)
        await fed.service(0).sign("echo", b"one")
        self.assertEqual(fed.service(0).status()[bad].state, "misbehaving")
        fed.service(0).epochs_changed()
        self.assertEqual(fed.service(0).status()[bad].state, "ok")

    @asynctest
    async def test_garbage_excludes_from_the_request_only(self) -> None:
        """An undecodable share: its sender is named in that request's result, not marked for later ones."""
        fed = Federation(self)
        await fed.warm()
        bad = fed.members[1]

        def cut(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_SHARE:
                payload = payload[:-5]
            return [(peer, channel, payload)]
        fed.net.set_byzantine(bad, cut)
        result = await fed.service(0).sign("echo", b"one")
        self.assertTrue(verify_bip340(result))
        self.assertIn("undecodable", result.malicious[bad])
        self.assertNotEqual(fed.service(0).status()[bad].state, "misbehaving")
        fed.net.set_byzantine(bad, None)
        self.assertIn(bad, (await fed.service(0).sign("echo", b"two")).signers)


class EvaluationLimitTests(TestCase):
    timeout = 60

    @asynctest
    async def test_fresh_ids_do_not_force_a_new_evaluation(self) -> None:
        """
        The same audit request twice (fresh request ids): every member runs
        the scheme once; after its log changes, once more.
        """
        scheme = LogDigestScheme()
        fed = Federation(self, with_log=True, schemes={"digest": scheme})
        await fed.warm()
        for k in range(2):
            self.assertTrue(verify_bip340(await fed.service(0).sign("digest", b"state", audit=True)))
        self.assertEqual([evaluations(scheme, fed, i) for i in range(N)], [1] * N)
        for node in fed.nodes:
            node.log.append_local_sync(RecordBody(b"\x07" * 32, "t", b"news"), 1.0)
            for other in fed.nodes:
                if other is not node:
                    for env in node.log.range(node.host.public, 1, 10):
                        other.log.insert_remote_sync(env)
        result = await fed.service(0).sign("digest", b"state", audit=True)
        self.assertTrue(verify_bip340(result))
        self.assertEqual([evaluations(scheme, fed, i) for i in range(N)], [2] * N)

    @asynctest
    async def test_session_requests_per_coordinator_are_rate_limited(self) -> None:
        """1000 validate-only requests with fresh contents from one coordinator: at most a burst is evaluated."""
        scheme = CountingEcho()
        config = SigningConfig(sign_request_rate=10.0, sign_request_burst=20)
        fed = Federation(self, config=config, schemes={"echo": scheme})
        await fed.warm()
        captured: list = []
        spy(fed, fed.members[0], m.T_SIGN_REQUEST, captured)
        await fed.service(0).sign("echo", b"template", audit=True)
        before = evaluations(scheme, fed, 1)
        template = m.decode(captured[0][1])._replace(session=0, signers=())
        links = fed.net.links(fed.members[0])
        for i in range(1000):
            flood = template._replace(request_id=os.urandom(16), request=b"flood %d" % i)
            links.send(fed.members[1], CHANNEL_SIGN, flood.encode())
        await fed.settle()
        self.assertLessEqual(evaluations(scheme, fed, 1) - before, config.sign_request_burst)
        # Time refills the bucket: the coordinator is served again.
        fed.clock.advance(config.sign_request_burst / config.sign_request_rate)
        self.assertTrue(verify_bip340(await fed.service(0).sign("echo", b"served again")))


class ReservationInFlightTests(TestCase):
    timeout = 60

    @asynctest
    async def test_a_reset_refill_never_offers_a_nonce_being_reserved(self) -> None:
        """
        A session request and a reset refill reach a signer in the same
        turn: the reservation's fsync is still running when the refill is
        answered, and its nonce is not among the re-sent commitments.
        """
        fed = Federation(self)
        await fed.warm()
        coordinator, signer = fed.members[0], fed.members[1]
        held: list = []

        def hold(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_REQUEST and peer == signer:
                held.append(payload)
                return []
            return [(peer, channel, payload)]
        fed.net.set_byzantine(coordinator, hold)
        d = fed.service(0).sign("echo", b"pay bob 5")
        await fed.settle()
        self.assertEqual(len(held), 1)
        nonce_id = m.decode(held[0]).entry_for(1).nonce_id
        fed.net.set_byzantine(coordinator, None)
        batches: list = []
        spy(fed, signer, m.T_NONCE_BATCH, batches)
        links = fed.net.links(coordinator)
        links.send(signer, CHANNEL_SIGN, held[0])
        links.send(signer, CHANNEL_SIGN, m.NonceRequest(EPOCH, 1024, True).encode())
        await fed.settle()
        resent = {nid for _, p in batches for nid, _ in m.decode(p).nonces}
        self.assertTrue(resent)
        self.assertFalse(nonce_id in resent, "the nonce being reserved was offered again")
        self.assertIs(fed.nodes[1].nonces.status(EPOCH, nonce_id), True)
        self.assertTrue(verify_bip340(await d))
