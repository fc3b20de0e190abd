"""
The sync service end to end over in-memory links (shuffled delivery, faults
on demand), each node on its own LMDB store, on the real reactor: records
submitted to different nodes reach every node and digests converge; a member
down during 1,000 submissions and a partitioned member converge after they
return; forged records are refused with the culprit logged; hostile sync
messages are logged and ignored; submission errors are typed.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from frostnode.net.interfaces import CHANNEL_SYNC
from frostnode.store.errors import RecordTooLarge
from frostnode.store.log import Envelope, Retention
from frostnode.sync.errors import SyncOverloaded, SyncUnavailable
from frostnode.sync.messages import (
    Page,
    batch_statement,
    decode_message,
    encode_batch,
    encode_page,
    encode_request,
)
from frostnode.sync.service import SubmitResult, SyncConfig
from tests.test_sync_support import (
    FAST,
    LogCapture,
    MemoryFederation,
    converged,
    record,
    submit_all,
    until,
    wait_converged,
)
from tests.support import with_timeout


class ReplicationTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_records_from_several_clients_reach_every_node(self):
        """Five clients on five nodes: every record on every node, one digest; resubmitting changes nothing."""
        fed = MemoryFederation(self)
        nodes = fed.nodes
        bodies = [record(i, client=i % 5) for i in range(250)]
        results = yield submit_all(nodes, bodies, lambda i: (i % 5 + i // 50) % 5)
        self.assertTrue(all(isinstance(r, SubmitResult) and r.created for r in results))
        self.assertEqual([r.record_id for r in results], [b.record_id for b in bodies])
        # each node numbered its own records 1, 2, 3, ...
        for node in nodes:
            seqs = sorted(r.seq for r in results if r.origin == node.key)
            self.assertEqual(seqs, list(range(1, 51)))
        yield wait_converged(nodes, 250)
        for node in nodes:
            for b, r in zip(bodies, results):
                entry = node.sync.get(b.record_id)
                self.assertEqual((entry.envelope.body, entry.envelope.origin, entry.envelope.seq), (b, r.origin, r.seq))
        before = nodes[0].digest()
        again = yield gatherResults([nodes[(i + 1) % 5].sync.submit(bodies[i]) for i in range(0, 250, 25)])
        self.assertEqual([(a.record_id, a.created) for a in again], [(bodies[i].record_id, False) for i in range(0, 250, 25)])
        self.assertEqual([(a.origin, a.seq) for a in again], [(results[i].origin, results[i].seq) for i in range(0, 250, 25)])
        self.assertEqual(nodes[0].digest(), before)
        # every node's topic view holds all records, in its own local order
        self.assertEqual({e.record_id for e in nodes[3].sync.topic_range("t", 1, 1000)}, {b.record_id for b in bodies})
        self.assertEqual(nodes[3].sync.topic_last("t"), 250)

    @inlineCallbacks
    def test_status_reports_digest_positions_and_lag(self):
        fed = MemoryFederation(self)
        nodes = fed.nodes
        yield submit_all(nodes, [record(i) for i in range(30)], lambda i: i % 2)
        yield wait_converged(nodes, 30)
        count, digest = nodes[0].digest()

        def settled() -> bool:
            peers = nodes[4].sync.status()["peers"]
            return all(p["digest"] == digest and p["lag"] == 0 and p["missing"] == 0 for p in peers.values())

        yield until([nodes[4]], settled, 10)
        status = nodes[4].sync.status()
        self.assertEqual((status["count"], status["digest"]), (30, digest))
        self.assertEqual(status["links_up"], 4)
        self.assertEqual(status["origins"], {nodes[0].key.hex(): {"have": 15, "max": 15},
                                             nodes[1].key.hex(): {"have": 15, "max": 15}})
        self.assertTrue(all(p["up"] for p in status["peers"].values()))
        # a silenced peer shows as down, and its lag grows with what it misses
        fed.net.silence(nodes[1].key)
        yield submit_all(nodes, [record(100 + i) for i in range(7)], lambda i: 0)
        yield until([nodes[0]], lambda: nodes[0].sync.status()["peers"][nodes[2].key.hex()]["lag"] == 0, 10)
        peer1 = nodes[0].sync.status()["peers"][nodes[1].key.hex()]
        self.assertFalse(peer1["up"])
        self.assertEqual(peer1["lag"], 7)

    @inlineCallbacks
    def test_batches_are_large_under_load_and_a_lone_record_does_not_wait(self):
        """batch_delay only holds a batch open while more submissions are on their way to the disk."""
        fed = MemoryFederation(self, config=replace(FAST, batch_delay=30.0, max_batch_records=100))
        node = fed.nodes[0]
        yield node.sync.submit(record(0))
        yield wait_converged(fed.nodes, 1, timeout=5)      # well before batch_delay
        self.assertEqual(node.sync.batches_broadcast, 1)
        yield submit_all(fed.nodes, [record(i) for i in range(1, 301)], lambda i: 0)
        yield wait_converged(fed.nodes, 301, timeout=10)
        self.assertLessEqual(node.sync.batches_broadcast, 1 + 4)  # 100 records per batch, one partial

    @inlineCallbacks
    def test_retention_prunes_every_member_alike(self):
        fed = MemoryFederation(self, config=replace(FAST, prune_interval=0.05), retention=Retention(max_per_origin=10))
        yield submit_all(fed.nodes, [record(i) for i in range(60)], lambda i: i % 2)
        # each member keeps the newest 10 slots of each of the two origins
        yield wait_converged(fed.nodes, 20)
        for node in fed.nodes:
            self.assertEqual({st.floor for st in node.log.origins().values()}, {20})

    @inlineCallbacks
    def test_a_record_too_large_to_broadcast_spreads_by_catch_up(self):
        fed = MemoryFederation(self)
        big = record(1, size=100 * 1024)
        result = yield fed.nodes[2].sync.submit(big)
        self.assertTrue(result.created)
        yield wait_converged(fed.nodes, 1)
        self.assertEqual(fed.nodes[2].sync.batches_broadcast, 0)
        # (the counter moves when the write's Deferred fires, just after the commit is visible)
        yield until(fed.nodes, lambda: sum(n.sync.records_fetched for n in fed.nodes) == 4, 5)


class FaultTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_member_down_during_1000_submissions_rejoins_and_converges(self):
        fed = MemoryFederation(self)
        nodes = fed.nodes
        down = nodes[4]
        fed.net.silence(down.key)
        yield submit_all(nodes, [record(i, client=i % 7, size=256) for i in range(1000)], lambda i: i % 4)
        yield wait_converged(nodes[:4], 1000)
        self.assertEqual(down.digest()[0], 0)
        fed.net.unsilence(down.key)
        yield wait_converged(nodes, 1000, timeout=60)
        yield until([down], lambda: down.sync.records_fetched == 1000, 5, lambda: f"{down.sync.records_fetched} fetched")

    @inlineCallbacks
    def test_partition_cut_and_healed_converges(self):
        """{0, 1} cut from {2, 3, 4}, both sides take records, then heal."""
        fed = MemoryFederation(self)
        nodes = fed.nodes
        minority, majority = nodes[:2], nodes[2:]
        for a in minority:
            for b in majority:
                fed.net.cut(a.key, b.key)
        yield submit_all(nodes, [record(i, client=1) for i in range(100)], lambda i: 0)
        yield submit_all(nodes, [record(i, client=2) for i in range(100)], lambda i: 3)
        # each side agrees within itself (the minority through catch-up: it cannot complete a broadcast)
        yield wait_converged(minority, 100)
        yield wait_converged(majority, 100)
        self.assertNotEqual(minority[0].digest(), majority[0].digest())
        for a in minority:
            for b in majority:
                fed.net.heal(a.key, b.key)
        yield wait_converged(nodes, 200, timeout=60)

    @inlineCallbacks
    def test_forged_records_in_catch_up_are_refused_and_the_culprit_logged(self):
        fed = MemoryFederation(self)
        nodes = fed.nodes
        victim, liar = nodes[4], nodes[1]
        forged_ids = []

        def forge(peer: bytes, channel: int, payload: bytes):
            if channel == CHANNEL_SYNC and peer == victim.key:
                msg = decode_message(payload, max_origins=100, max_page_records=10_000, max_envelope=1 << 20)
                if isinstance(msg, Page) and msg.envelopes:
                    envs = [Envelope.decode(e) for e in msg.envelopes]
                    fake = replace(envs[0].body, payload=b"forged by the liar")
                    forged_ids.append(fake.record_id)
                    envs[0] = replace(envs[0], body=fake)
                    payload = encode_page(msg.origin, msg.from_seq, msg.have, [e.encode() for e in envs], 10_000)
            return [(peer, channel, payload)]

        fed.net.set_byzantine(liar.key, forge)
        for other in (nodes[0], nodes[2], nodes[3]):
            fed.net.cut(victim.key, other.key)
        capture = LogCapture()
        self.addCleanup(capture.stop)
        yield submit_all(nodes, [record(i) for i in range(100)], lambda i: 0)
        yield wait_converged(nodes[:4], 100)
        # the victim can only ask the liar, which serves altered records
        yield with_timeout(capture.when("rejected", culprit=liar.short), 10, "the victim to reject the liar's page")
        self.assertEqual(victim.digest()[0], 0)
        self.assertIn("does not verify", capture.matching("rejected", culprit=liar.short)[0]["reason"])
        fed.net.heal(victim.key, nodes[2].key)
        yield wait_converged(nodes, 100)
        self.assertTrue(forged_ids)
        self.assertFalse(any(rid in victim.log for rid in forged_ids))

    @inlineCallbacks
    def test_forged_broadcast_batch_is_refused_by_everyone(self):
        fed = MemoryFederation(self)
        nodes = fed.nodes
        liar, framed = nodes[2], nodes[3]
        capture = LogCapture()
        self.addCleanup(capture.stop)
        body = record(1)
        # a batch in the liar's name, signed with another member's key
        sig = framed.member.host.sign(batch_statement(liar.key, 1, [(body.record_id, 5_000_000)]))
        liar.broadcast.broadcast(b"sync/1-1", encode_batch(1, sig, [(5_000_000, body)]))
        yield with_timeout(capture.when("sync batch", 4, culprit=liar.short), 10, "4 members to reject the batch")
        # a good batch afterwards still flows
        yield liar.sync.submit(record(2))
        yield wait_converged(nodes, 1)
        self.assertFalse(any(body.record_id in n.log for n in nodes))

    @inlineCallbacks
    def test_malformed_and_flooding_sync_messages_are_logged_and_ignored(self):
        fed = MemoryFederation(self, config=replace(FAST, serve_burst=8, serve_rate=1.0))
        nodes = fed.nodes
        server, hostile = nodes[0], nodes[1]
        yield submit_all(nodes, [record(i) for i in range(20)], lambda i: 0)
        yield wait_converged(nodes, 20)
        capture = LogCapture()
        self.addCleanup(capture.stop)
        hostile.links.send(server.key, CHANNEL_SYNC, b"\x01\x07garbage")
        served = server.sync.pages_served
        for _ in range(200):
            hostile.links.send(server.key, CHANNEL_SYNC, encode_request(server.key, 1, 10))
        yield with_timeout(capture.when("over the rate limit", culprit=hostile.short), 10, "the rate limit to bite")
        self.assertTrue(capture.matching("malformed sync message", culprit=hostile.short))
        self.assertLessEqual(server.sync.pages_served - served, 9)
        # the server keeps serving everyone else
        yield submit_all(nodes, [record(100 + i) for i in range(20)], lambda i: 0)
        yield wait_converged(nodes, 40)


class ObserverTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_change_observers_hear_of_stored_records_and_one_that_raises_is_logged(self):
        fed = MemoryFederation(self, n=3)
        origin, other = fed.nodes[0], fed.nodes[1]
        capture = LogCapture()
        self.addCleanup(capture.stop)
        seen: dict[bytes, list[int]] = {origin.key: [], other.key: []}

        def broken() -> None:
            raise RuntimeError("observer bug")

        for node in (origin, other):
            node.sync.add_change_observer(broken)
            node.sync.add_change_observer(lambda node=node: seen[node.key].append(node.digest()[0]))
        yield origin.sync.submit(record(1))
        # told once the record is stored, before the submitter hears of it
        self.assertEqual(seen[origin.key][-1], 1)
        yield wait_converged(fed.nodes, 1)
        self.assertIn(1, seen[other.key])
        # the broken observer is logged each time, and did not stop the one after it
        self.assertTrue(capture.matching("sync change observer"))
        self.assertTrue(self.flushLoggedErrors(RuntimeError))


class SubmitTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_errors_are_typed(self):
        fed = MemoryFederation(self, config=replace(FAST, max_pending_submissions=2))
        node = fed.nodes[0]
        f = yield self.assertFailure(node.sync.submit(record(1, size=2 * 1024 * 1024)), RecordTooLarge)
        self.assertIn("limit", str(f))
        a, b = node.sync.submit(record(1)), node.sync.submit(record(2))
        yield self.assertFailure(node.sync.submit(record(3)), SyncOverloaded)
        yield gatherResults([a, b])
        yield node.sync.submit(record(3))
        yield node.sync.stopService()
        yield self.assertFailure(node.sync.submit(record(4)), SyncUnavailable)

    def test_config_is_checked(self) -> None:
        for bad in (dict(summary_interval=0), dict(page_records=-1), dict(page_records=10, max_batch_records=20),
                    dict(serve_rate=True)):
            self.assertRaises(ValueError, SyncConfig, **bad)
        self.assertFalse(converged([]))  # sanity of the helper: no nodes, nothing converged
