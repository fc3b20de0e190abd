"""
Tests for L{frostnode.signing.service}: five members (t = 3), each with its
own LMDB store (keys, nonces, log) in a temporary directory, talking over
in-memory links (L{frostnode.net.memory}) on the reactor; every signing
timer runs on a L{task.Clock} the test advances.  Keys come from the
trusted dealer (the DKG driver is tested elsewhere).  Signatures are
checked with coincurve's BIP340 verification against the Taproot output
key, as a user would.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Optional

from coincurve import PublicKeyXOnly
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from frostnode.crypto import bip445, rfc9591
from frostnode.crypto.group import point_from_bytes
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.net.interfaces import CHANNEL_SIGN
from frostnode.net.memory import MemoryNetwork
from frostnode.signing import messages as m
from frostnode.signing.checkpoint import CheckpointRequest, encode_statement
from frostnode.signing.errors import SigningFailed
from frostnode.signing.service import SignatureResult, SigningConfig, SigningService
from frostnode.store.db import Database
from frostnode.store.keys import EpochRecord, KeyStore
from frostnode.store.log import DataLog, RecordBody
from frostnode.store.nonces import NonceStore
from frostnode.validation.interface import DataLogView, scheme_message
from frostnode.validation.record import encode_request
from frostnode.validation.registry import load_schemes
from tests.test_signing_roast import EchoScheme, host_keys

EPOCH = 3
T, N = 3, 5


def asynctest(f: Callable) -> Callable:
    def run(self: Any) -> Any:
        return ensureDeferred(f(self))
    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run


async def settle(services: list[SigningService], net: MemoryNetwork) -> None:
    """
    Let every message and store write in flight run to completion, without
    moving the signing clock: wait for the running services' store writes
    (and what their completion sends), then for the network's delivery
    turn, until neither is pending.
    """
    for _ in range(100_000):
        busy = [s for s in services if s.running and s.busy]
        if busy:
            await gatherResults([s.when_idle() for s in busy])
        elif net._call is not None:
            await deferLater(reactor, 0, lambda: None)  # the turn the network's delivery is due in
        else:
            return
    raise AssertionError("the federation did not settle")


class Node:
    """One member: its store, views and signing service."""

    def __init__(self, fed: "Federation", index: int, directory: str) -> None:
        self.fed = fed
        self.index = index
        self.host = fed.hosts[index]
        self.directory = directory
        self.view: dict = {}
        self.open()

    def open(self) -> None:
        fed = self.fed
        self.db = Database.open(self.directory, reactor=reactor)
        self.keys = KeyStore(self.db)
        self.nonces = NonceStore(self.db)
        self.log = DataLog(self.db, self.host.public) if fed.with_log else None
        if self.keys.get(EPOCH) is None:
            self.keys.put_pending_sync(fed.record(self.index))
            self.keys.certify_sync(EPOCH, b"test certificate", 0.0)
        view: Any = DataLogView(self.log) if self.log is not None else self.view
        self.service = SigningService(
            fed.net.links(self.host.public), fed.members, self.host, self.keys, self.nonces, view,
            fed.schemes, fed.clock, fed.config)
        self.service.startService()

    async def close(self) -> None:
        if self.service.running:
            self.service.stopService()
        await self.db.close()

    async def restart(self) -> None:
        """Stop, close the store, reopen it and start a fresh service (memory lost, disk kept)."""
        await self.close()
        links = self.fed.net.links(self.host.public)
        links._handlers.pop(CHANNEL_SIGN, None)
        self.open()


class Federation:
    def __init__(self, test: TestCase, n: int = N, t: int = T, config: Optional[SigningConfig] = None,
                 with_log: bool = False, schemes: Optional[dict] = None) -> None:
        self.clock = Clock()
        self.hosts = host_keys(n)
        self.members = [h.public for h in self.hosts]
        self.t = t
        group_key, self.packages = trusted_dealer_keygen(t, n)
        self.internal = group_key.encode()
        self.output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(self.internal))
        self.net = MemoryNetwork(reactor, self.members)
        self.config = config or SigningConfig()
        self.with_log = with_log
        self.schemes = {"echo": EchoScheme()} if schemes is None else schemes
        self.nodes = [Node(self, i, test.mktemp()) for i in range(n)]
        test.addCleanup(self.close)

    def record(self, i: int) -> EpochRecord:
        pk = self.packages[i + 1]
        return EpochRecord(
            EPOCH, b"test-dkg", tuple(self.members), self.t, i + 1, pk.secret_share.to_bytes(32, "big"), b"",
            tuple(self.packages[j + 1].verification_share.encode() for j in range(len(self.members))),
            self.internal, self.output, 0.0)

    async def close(self) -> None:
        await self.settle()
        for node in self.nodes:
            await node.close()

    async def settle(self) -> None:
        """Let every message and store write in flight run to completion (the clock is not advanced)."""
        await settle([n.service for n in self.nodes], self.net)

    async def warm(self) -> None:
        """Wait for the start-up nonce refills."""
        await self.settle()

    def service(self, i: int) -> SigningService:
        return self.nodes[i].service


def verify_bip340(result: SignatureResult) -> bool:
    return PublicKeyXOnly(result.key).verify(result.signature, result.message)


class SigningServiceTests(TestCase):
    timeout = 60

    @asynctest
    async def test_signature_verifies_under_the_output_key(self) -> None:
        fed = Federation(self)
        await fed.warm()
        result = await fed.service(2).sign("echo", b"pay bob 5")
        self.assertEqual(result.key, fed.output)
        self.assertTrue(verify_bip340(result))
        self.assertEqual(result.message, EchoScheme().message(b"pay bob 5", {}))
        self.assertEqual((result.scheme, result.request, result.ciphersuite, result.epoch),
                         ("echo", b"pay bob 5", "bip445", EPOCH))
        self.assertEqual(len(set(result.signers)), T)
        self.assertIn(fed.members[2], result.signers)
        self.assertEqual((dict(result.divergent), dict(result.malicious), result.sessions), ({}, {}, 1))

    @asynctest
    async def test_rfc9591_per_request(self) -> None:
        fed = Federation(self)
        await fed.warm()
        result = await fed.service(0).sign("echo", b"x", ciphersuite="rfc9591")
        self.assertEqual(result.key, fed.internal)
        self.assertEqual(len(result.signature), 65)
        self.assertTrue(rfc9591.verify(point_from_bytes(fed.internal), result.message, result.signature))

    @asynctest
    async def test_concurrent_requests_never_share_a_nonce(self) -> None:
        fed = Federation(self, config=SigningConfig(pool_batch=8, pool_low_water=4))
        await fed.warm()
        sent: set[bytes] = set()
        for node in fed.nodes:
            def spy(peer: bytes, channel: int, payload: bytes) -> list:
                if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_REQUEST:
                    sent.add(payload)
                return [(peer, channel, payload)]
            fed.net.set_byzantine(node.host.public, spy)
        ds = [fed.service(i % N).sign("echo", b"req %d" % i) for i in range(30)]
        results = await gatherResults(ds)
        self.assertTrue(all(verify_bip340(r) for r in results))
        used = [(e.index, e.nonce_id) for p in sent for e in m.decode(p).signers]
        self.assertGreaterEqual(len(used), 30 * T)
        self.assertEqual(len(used), len(set(nid for _, nid in used)))
        # Every nonce a share was made with is spent on its signer's disk.
        for node in fed.nodes:
            for i, nid in used:
                if i == node.index:
                    self.assertIn(node.nonces.status(EPOCH, nid), (True, None))

    @asynctest
    async def test_minority_divergent_is_named(self) -> None:
        """One member's data differs: the signature succeeds and (with audit) names it."""
        fed = Federation(self)
        fed.nodes[4].view["data"] = b"altered"
        await fed.warm()
        result = await fed.service(1).sign("echo", b"pay bob 5", audit=True)
        self.assertTrue(verify_bip340(result))
        self.assertEqual(list(result.divergent), [fed.members[4]])
        ref = result.divergent[fed.members[4]]
        self.assertEqual(ref.kind, "views-differ")
        self.assertEqual(ref.digest, hashlib.sha256(EchoScheme().message(b"pay bob 5", {"data": b"altered"})).digest())
        self.assertNotIn(fed.members[4], result.signers)

    @asynctest
    async def test_too_many_divergent_fails_naming_them(self) -> None:
        fed = Federation(self)
        for i in (0, 2, 3):
            fed.nodes[i].view["data"] = b"other %d" % i
        await fed.warm()
        with self.assertRaises(SigningFailed) as cm:
            await fed.service(1).sign("echo", b"pay bob 5")
        e = cm.exception
        self.assertEqual(e.code, "views-differ")
        self.assertEqual(set(e.divergent), {fed.members[i] for i in (0, 2, 3)})
        for i in (0, 2, 3):
            self.assertIn(fed.members[i].hex()[:16], str(e))
        self.assertTrue(str(e).startswith("views-differ: "))

    @asynctest
    async def test_coordinator_rejection_is_validation_failed(self) -> None:
        fed = Federation(self)
        fed.nodes[0].view["reject"] = "overdraft on alice"
        await fed.warm()
        with self.assertRaises(SigningFailed) as cm:
            await fed.service(0).sign("echo", b"pay bob 500")
        self.assertEqual(str(cm.exception), "validation-failed: test: overdraft on alice")

    @asynctest
    async def test_garbage_shares(self) -> None:
        """
        A member replacing its shares (valid encoding, wrong value): named,
        excluded, signature valid.  (Undecodable shares: see
        L{tests.test_signing_limits}.)
        """
        fed = Federation(self)
        await fed.warm()
        bad = fed.members[1]  # coordinator 0 picks members 0, 1, 2 first

        def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_SHARE:
                payload = payload[:-32] + os.urandom(32)
            return [(peer, channel, payload)]
        fed.net.set_byzantine(bad, rewrite)
        results = []
        for k in range(3):
            results.append(await fed.service(0).sign("echo", b"r%d" % k))
        self.assertTrue(all(verify_bip340(r) for r in results))
        named = [r for r in results if bad in r.malicious]
        self.assertEqual(len(named), 1)
        self.assertTrue(all(bad not in r.signers for r in results))
        self.assertEqual(fed.service(0).status()[bad].state, "misbehaving")

    @asynctest
    async def test_members_going_silent_mid_session(self) -> None:
        """
        Two of five members (f = n - t) stay connected but stop answering:
        sessions that picked them are given up after the session timeout and
        the others finish; they are reported unresponsive, not misbehaving.
        """
        fed = Federation(self)
        await fed.warm()
        silent = {fed.members[1], fed.members[3]}
        for s in silent:
            fed.net.set_byzantine(s, lambda peer, channel, payload: [])
        waited = 0
        for k in range(4):
            d = fed.service(0).sign("echo", b"r%d" % k)
            await fed.settle()
            while not d.called:
                waited += 1
                self.assertLessEqual(waited, 20)
                fed.clock.advance(fed.config.session_timeout)
                await fed.settle()
            result = await d
            self.assertTrue(verify_bip340(result))
            self.assertFalse(silent & set(result.signers))
        self.assertGreater(waited, 0)
        status = fed.service(0).status()
        self.assertTrue({mem for mem in silent if status[mem].state == "unresponsive"})
        self.assertEqual({mem for mem, st in status.items() if st.state == "misbehaving"}, set())

    @asynctest
    async def test_crashed_members_are_not_picked(self) -> None:
        """Members whose links are down go to the back of the queue: no timeout is needed."""
        fed = Federation(self)
        await fed.warm()
        for i in (1, 3):
            fed.net.silence(fed.members[i])
        for k in range(3):
            result = await fed.service(0).sign("echo", b"r%d" % k)
            self.assertTrue(verify_bip340(result))
            self.assertEqual(result.sessions, 1)

    @asynctest
    async def test_timeout_names_the_silent(self) -> None:
        fed = Federation(self)
        await fed.warm()
        for i in (1, 2, 4):
            fed.net.silence(fed.members[i])
        d = fed.service(0).sign("echo", b"r")
        await fed.settle()
        fed.clock.advance(fed.config.session_timeout)
        await fed.settle()
        self.assertNoResult(d)
        fed.clock.advance(fed.config.request_timeout)
        with self.assertRaises(SigningFailed) as cm:
            await d
        self.assertEqual(cm.exception.code, "timeout")
        self.assertTrue(set(cm.exception.unresponsive) <= {fed.members[i] for i in (1, 2, 4)})
        self.assertTrue(cm.exception.unresponsive)

    @asynctest
    async def test_share_leaves_only_after_the_nonce_is_spent_on_disk(self) -> None:
        fed = Federation(self)
        await fed.warm()
        seen_requests: dict[bytes, m.SignRequest] = {}
        checked = []
        coordinator = fed.members[0]

        def coord_spy(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_REQUEST:
                req = m.decode(payload)
                seen_requests[req.request_id + req.session.to_bytes(4, "big")] = req
            return [(peer, channel, payload)]

        for node in fed.nodes[1:]:
            def share_spy(peer: bytes, channel: int, payload: bytes, node: Node = node) -> list:
                if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_SHARE:
                    share = m.decode(payload)
                    req = seen_requests[share.request_id + share.session.to_bytes(4, "big")]
                    entry = req.entry_for(node.index)
                    checked.append(node.nonces.status(EPOCH, entry.nonce_id))
                return [(peer, channel, payload)]
            fed.net.set_byzantine(node.host.public, share_spy)
        fed.net.set_byzantine(coordinator, coord_spy)
        for k in range(3):
            await fed.service(0).sign("echo", b"r%d" % k)
        self.assertEqual(len(checked), 3 * (T - 1))
        self.assertEqual(set(checked), {True})

    @asynctest
    async def test_restarted_signer_never_reuses_a_nonce(self) -> None:
        """Replay a session request to a signer after a restart: it refuses; the nonce stays spent."""
        fed = Federation(self)
        await fed.warm()
        captured: list[tuple[bytes, bytes]] = []

        def spy(peer: bytes, channel: int, payload: bytes) -> list:
            if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_REQUEST:
                captured.append((peer, payload))
            return [(peer, channel, payload)]
        fed.net.set_byzantine(fed.members[0], spy)
        result = await fed.service(0).sign("echo", b"first")
        self.assertTrue(verify_bip340(result))
        peer, payload = next((p, x) for p, x in captured if p != fed.members[0])
        victim = fed.nodes[fed.members.index(peer)]
        entry = m.decode(payload).entry_for(victim.index)
        self.assertTrue(victim.nonces.status(EPOCH, entry.nonce_id))
        await victim.restart()
        self.assertTrue(victim.nonces.status(EPOCH, entry.nonce_id))
        answers: list[bytes] = []
        fed.net.set_byzantine(victim.host.public, lambda p, c, x: answers.append(x) or [])
        fed.net.set_byzantine(fed.members[0], None)
        fed.net.links(fed.members[0]).send(peer, CHANNEL_SIGN, payload)
        await fed.settle()
        replies = [m.decode(x) for x in answers if x[1] in (m.T_SIGN_SHARE, m.T_VERDICT)]
        self.assertEqual(len(replies), 1)
        self.assertIsInstance(replies[0], m.Verdict)
        self.assertEqual((replies[0].kind_name, replies[0].reason), ("unavailable", "nonce already used"))
        # And the federation still signs, the restarted member included.
        fed.net.set_byzantine(victim.host.public, None)
        for k in range(3):
            self.assertTrue(verify_bip340(await fed.service(0).sign("echo", b"after %d" % k)))

    @asynctest
    async def test_restarted_coordinator_recovers_its_pool(self) -> None:
        fed = Federation(self, config=SigningConfig(pool_batch=6, pool_low_water=2))
        await fed.warm()
        await fed.service(0).sign("echo", b"before")
        await fed.settle()
        outstanding = fed.service(1).issuer.outstanding(fed.members[0], EPOCH)
        self.assertGreater(outstanding, 0)
        await fed.nodes[0].restart()
        await fed.settle()
        # The reset refill re-sent the unspent commitments and minted only the rest of a batch.
        self.assertEqual(fed.service(1).issuer.outstanding(fed.members[0], EPOCH), max(outstanding, 6))
        self.assertEqual(fed.service(0).pool.available(fed.members[1], EPOCH), max(outstanding, 6))
        for k in range(4):
            self.assertTrue(verify_bip340(await fed.service(0).sign("echo", b"after %d" % k)))

    @asynctest
    async def test_new_epoch_signs_once_certified(self) -> None:
        """A DKG certifies epoch 4 on every member: after epochs_changed() signatures use its key."""
        fed = Federation(self)
        await fed.warm()
        group_key, packages = trusted_dealer_keygen(T, N)
        internal = group_key.encode()
        output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(internal))
        for node in fed.nodes:
            i = node.index
            node.keys.put_pending_sync(EpochRecord(
                EPOCH + 1, b"dkg-2", tuple(fed.members), T, i + 1, packages[i + 1].secret_share.to_bytes(32, "big"),
                b"", tuple(packages[j + 1].verification_share.encode() for j in range(N)), internal, output, 1.0))
            node.keys.certify_sync(EPOCH + 1, b"test certificate", 1.0)
            node.service.epochs_changed()
        result = await fed.service(3).sign("echo", b"new key")
        self.assertEqual((result.epoch, result.key), (EPOCH + 1, output))
        self.assertTrue(verify_bip340(result))

    @asynctest
    async def test_unknown_scheme_and_suite_are_caller_errors(self) -> None:
        fed = Federation(self)
        with self.assertRaises(ValueError):
            await fed.service(0).sign("nope", b"")
        with self.assertRaises(ValueError):
            await fed.service(0).sign("echo", b"", ciphersuite="ed25519")


class RealLogTests(TestCase):
    """Real data logs, the built-in C{record} scheme and the federation's checkpoints."""

    timeout = 60

    @asynctest
    async def test_record_scheme_submit_to_a_sign_at_c(self) -> None:
        """
        A client's record reaches member A and (by replication) all but
        member E; the client asks member C.  The signature verifies under the
        output key, and with audit E is named: it lacked the record after
        catching up for the configured time.
        """
        fed = Federation(self, with_log=True, schemes=load_schemes())
        a, c, e = fed.nodes[0], fed.nodes[2], fed.nodes[4]
        body = RecordBody(b"\x09" * 32, "invoices", b"invoice 17: 250 sat")
        rid = a.log.append_local_sync(body, 1.0).record_id
        for node in fed.nodes[1:4]:
            for env in a.log.range(a.host.public, 1, 10):
                node.log.insert_remote_sync(env)
        await fed.warm()
        d = c.service.sign("record", encode_request([rid], "invoices"), audit=True)
        await fed.settle()
        fed.clock.advance(fed.config.catchup_timeout)
        result = await d
        self.assertTrue(PublicKeyXOnly(fed.output).verify(result.signature, result.message))
        self.assertEqual(result.key, fed.output)
        self.assertEqual(result.message, scheme_message("record", encode_request([rid], "invoices")))
        self.assertEqual(list(result.divergent), [e.host.public])
        self.assertIn("missing data", result.divergent[e.host.public].reason)

    @asynctest
    async def test_checkpoint_over_real_logs(self) -> None:
        fed = Federation(self, with_log=True, schemes={})
        bodies = [RecordBody(b"\x07" * 32, "t", b"payload %d" % i, i) for i in range(3)]
        origin = fed.nodes[0]
        envelopes = []
        for b in bodies:
            origin.log.append_local_sync(b, 1.0)
        envelopes = origin.log.range(origin.host.public, 1, 10)
        for node in fed.nodes[1:]:
            for env in envelopes:
                node.log.insert_remote_sync(env)
        await fed.warm()
        cp = await fed.service(2).checkpoint()
        self.assertTrue(PublicKeyXOnly(cp.key).verify(cp.signature, cp.message))
        self.assertEqual(cp.message, scheme_message("checkpoint", cp.statement))
        digest = hashlib.sha256(b"".join(b.record_id for b in bodies)).digest()
        self.assertEqual(cp.statement, encode_statement(EPOCH, fed.members, {origin.host.public: 3}, 3, digest))
        self.assertEqual(fed.service(2).latest_checkpoint(), cp)
        self.assertEqual(CheckpointRequest.decode(CheckpointRequest(EPOCH, cp.cut).encode()).cut, cp.cut)

    @asynctest
    async def test_checkpoint_names_a_member_missing_records(self) -> None:
        """A member lacking part of the cut catches up for a bounded time, then refuses; it is named."""
        fed = Federation(self, with_log=True, schemes={})
        origin = fed.nodes[0]
        origin.log.append_local_sync(RecordBody(b"\x07" * 32, "t", b"p"), 1.0)
        envelopes = origin.log.range(origin.host.public, 1, 10)
        for node in fed.nodes[1:4]:  # member 4 never gets it
            for env in envelopes:
                node.log.insert_remote_sync(env)
        await fed.warm()
        d = fed.service(1).checkpoint()
        await fed.settle()
        self.assertNoResult(d)
        fed.clock.advance(fed.config.catchup_timeout)
        await fed.settle()
        fed.clock.advance(fed.config.catchup_timeout)
        cp = await d
        self.assertTrue(PublicKeyXOnly(cp.key).verify(cp.signature, cp.message))
        self.assertNotIn(fed.members[4], cp.signers)
        self.assertEqual(list(cp.divergent), [fed.members[4]])
