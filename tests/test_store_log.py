"""
The replicated data log: content addressing, idempotency, per-origin catch-up
positions, the order-independent digest, retention, cuts, group commit, and
survival of kill -9 with every acknowledged record intact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.crypto.errors import ProtocolError
from frostnode.store import sethash
from frostnode.store.db import Database
from frostnode.store.errors import IncompleteView, InvalidRecord, RecordTooLarge, SequenceConflict
from frostnode.store.log import (
    DataLog,
    Envelope,
    LogLimits,
    OriginState,
    RecordBody,
    Retention,
)
from frostnode.wire import DecodeError

A, B, C = (bytes([x]) * 32 for x in (0xA1, 0xB2, 0xC3))
CLIENT = b"\x11" * 32


def body(i: int, topic: str = "t", size: int = 16) -> RecordBody:
    return RecordBody(CLIENT, topic, (b"%08d" % i).ljust(size, b"."), timestamp=i)


def env(origin: bytes, seq: int, i: int, at: float = 100.0, **kw) -> Envelope:
    return Envelope(origin, seq, at, body(i, **kw))


class RecordEncodingTests(SynchronousTestCase):
    def test_id_is_sha256_of_the_canonical_body(self) -> None:
        b = RecordBody(CLIENT, "prices/btc", b"payload", timestamp=7, nonce=b"n")
        expected = (b"\x01" + CLIENT + (10).to_bytes(4, "big") + b"prices/btc" + (7).to_bytes(8, "big")
                    + (1).to_bytes(4, "big") + b"n" + (7).to_bytes(4, "big") + b"payload")
        self.assertEqual(b.canonical, expected)
        self.assertEqual(b.record_id, hashlib.sha256(expected).digest())
        self.assertEqual(RecordBody.decode(expected), b)
        self.assertNotEqual(RecordBody(CLIENT, "prices/btc", b"payload", 7, b"m").record_id, b.record_id)

    def test_envelope_round_trip_keeps_the_id(self) -> None:
        e = Envelope(A, 3, 12.5, body(1), proof=b"sig" * 21)
        d = Envelope.decode(e.encode())
        self.assertEqual(d, e)
        self.assertEqual(d.record_id, e.body.record_id)

    def test_times_are_whole_microseconds(self) -> None:
        """The encoding holds integer microseconds; the envelope rounds once, so round trips are exact."""
        e = Envelope(A, 1, 1764063709.1234567, body(1))
        self.assertEqual(e.received_at, 1764063709.123457)
        self.assertEqual(Envelope.decode(e.encode()), e)

    def test_oversized_payload_in_an_envelope(self) -> None:
        data = Envelope(A, 1, 1.0, body(1, size=2048)).encode()
        self.assertRaises(InvalidRecord, Envelope.decode, data, LogLimits(max_payload=1024))
        self.assertEqual(Envelope.decode(data, LogLimits(max_payload=2048)).body, body(1, size=2048))

    def test_malformed_bodies_are_rejected(self) -> None:
        good = body(1).canonical
        cases = [
            b"",
            b"\x02" + good[1:],           # unknown version
            good + b"\x00",                 # trailing byte
            good[:-1],                      # truncated payload
            good[:33] + bytes(4) + good[38:],  # empty topic
        ]
        for data in cases:
            self.assertRaises(InvalidRecord, RecordBody.decode, data)
        bad_utf8 = b"\x01" + CLIENT + (1).to_bytes(4, "big") + b"\xff" + bytes(8) + bytes(4) + bytes(4)
        self.assertRaises(InvalidRecord, RecordBody.decode, bad_utf8)

    def test_length_fields_are_checked_before_reading(self) -> None:
        """A length claiming 4 GiB is refused from the header alone, naming the limit."""
        header = b"\x01" + CLIENT + (1).to_bytes(4, "big") + b"t" + bytes(8) + bytes(4) + b"\xff\xff\xff\xff"
        e = self.assertRaises(InvalidRecord, RecordBody.decode, header, LogLimits(max_payload=1024))
        self.assertIn("limit of 1024", str(e))
        self.assertIsInstance(e, DecodeError)  # what every message decoder raises
        big_proof = b"\x01" + A + (1).to_bytes(8, "big") + bytes(8) + b"\x7f\xff\xff\xff"
        self.assertIn("limit of 65536", str(self.assertRaises(InvalidRecord, Envelope.decode, big_proof)))

    def test_field_bounds(self) -> None:
        self.assertRaises(InvalidRecord, RecordBody, b"\x11" * 31, "t", b"")
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "", b"")
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "x" * 256, b"")
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "\ud800", b"")
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "t", b"", -1)
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "t", b"", 1 << 64)
        self.assertRaises(InvalidRecord, RecordBody, CLIENT, "t", b"", 0, b"n" * 256)
        self.assertRaises(InvalidRecord, Envelope, A, 0, 1.0, body(1))
        self.assertRaises(InvalidRecord, Envelope, A[:31], 1, 1.0, body(1))
        self.assertRaises(InvalidRecord, Envelope, A, 1, float("nan"), body(1))
        self.assertRaises(InvalidRecord, Envelope, A, 1, -1.0, body(1))


class LogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.open()

    def open(self, **kw) -> None:
        self.db = Database.open(self.dir)
        self.log = DataLog(self.db, A, **kw)

    def reopen(self, **kw) -> None:
        self.db.close_sync()
        self.open(**kw)

    def tearDown(self) -> None:
        self.db.close_sync()

    def test_append_is_idempotent(self) -> None:
        r1 = self.log.append_local_sync(body(1), 10.0)
        r2 = self.log.append_local_sync(body(1), 11.0)
        self.assertEqual((r1.record_id, r1.created), (body(1).record_id, True))
        self.assertEqual((r2.record_id, r2.created), (body(1).record_id, False))
        rid, created = self.log.append_local_sync(body(2), 12.0)
        self.assertTrue(created)
        self.assertEqual(self.log.origin_state(A), OriginState(have=2, max_seq=2, floor=0))
        entry = self.log.get(rid)
        self.assertEqual((entry.envelope.origin, entry.envelope.seq, entry.envelope.received_at, entry.position),
                         (A, 2, 12.0, 2))
        self.assertEqual(len(self.log), 2)

    def test_sequence_numbers_continue_after_restart(self) -> None:
        for i in range(3):
            self.log.append_local_sync(body(i), 1.0)
        self.reopen()
        self.log.append_local_sync(body(3), 1.0)
        self.assertEqual([e.seq for e in self.log.range(A, 1, 10)], [1, 2, 3, 4])
        self.assertEqual([e.body for e in self.log.range(A, 1, 10)], [body(i) for i in range(4)])

    def test_insert_remote_is_idempotent_and_checks_the_claimed_id(self) -> None:
        e = env(B, 1, 5)
        self.assertEqual(self.log.insert_remote_sync(e, e.record_id), (e.record_id, True))
        self.assertEqual(self.log.insert_remote_sync(e), (e.record_id, False))
        bad = self.assertRaises(InvalidRecord, self.log.insert_remote_sync, env(B, 2, 6), e.record_id)
        self.assertIn("hashes to", str(bad))
        self.assertEqual(self.log.have(B), 1)

    def test_equivocating_origin_is_named(self) -> None:
        self.log.insert_remote_sync(env(B, 1, 5))
        e = self.assertRaises(SequenceConflict, self.log.insert_remote_sync, env(B, 1, 6))
        self.assertIsInstance(e, ProtocolError)
        self.assertEqual(e.culprit, B)
        self.assertEqual(self.log.get(body(5).record_id).envelope.seq, 1)
        self.assertIsNone(self.log.get(body(6).record_id))

    def test_have_is_the_contiguous_prefix(self) -> None:
        """Out-of-order arrival: have() waits for the gap, then jumps."""
        for seq in (1, 2, 4, 5, 7):
            self.log.insert_remote_sync(env(B, seq, seq))
        self.assertEqual(self.log.origin_state(B), OriginState(have=2, max_seq=7, floor=0))
        self.assertEqual([e.seq for e in self.log.range(B, 3, 10)], [4, 5, 7])
        self.log.insert_remote_sync(env(B, 3, 3))
        self.assertEqual(self.log.have(B), 5)
        self.log.insert_remote_sync(env(B, 6, 6))
        self.assertEqual(self.log.have(B), 7)
        self.assertEqual(len(self.log.range(B, 1, 3)), 3)
        self.assertEqual(self.log.range(C, 1, 3), [])

    def test_same_body_through_two_origins(self) -> None:
        """A client submitting to two nodes: one record, both slots filled, counted once."""
        rid, _ = self.log.append_local_sync(body(1), 1.0)
        self.assertEqual(self.log.insert_remote_sync(env(B, 1, 1)), (rid, False))
        self.assertEqual((self.log.have(A), self.log.have(B)), (1, 1))
        self.assertEqual(self.log.digest().count, 1)
        self.assertEqual(self.log.range(B, 1, 5)[0].origin, B)
        self.assertEqual(self.log.get(rid).envelope.origin, A)

    def test_own_records_coming_back_move_our_counter(self) -> None:
        """After a restore from an old backup, peers' copies of our records keep us from reusing seqs."""
        self.log.insert_remote_sync(env(A, 5, 5))
        rid, created = self.log.append_local_sync(body(9), 1.0)
        self.assertEqual(self.log.get(rid).envelope.seq, 6)

    def test_topics_have_local_positions(self) -> None:
        for i in range(5):
            self.log.append_local_sync(body(i, topic="x" if i % 2 else "y"), 1.0)
        self.assertEqual([e.envelope.body for e in self.log.topic_range("y", 1, 10)], [body(0, "y"), body(2, "y"), body(4, "y")])
        self.assertEqual([e.position for e in self.log.topic_range("y", 2, 10)], [2, 3])
        self.assertEqual(self.log.topic_last("x"), 2)
        self.assertEqual(self.log.topic_range("nothing", 1, 10), [])

    def test_limits(self) -> None:
        self.reopen(limits=LogLimits(max_payload=100, max_proof=10, max_range=50))
        self.assertRaises(RecordTooLarge, self.log.append_local_sync, body(1, size=101), 1.0)
        self.assertRaises(RecordTooLarge, self.log.insert_remote_sync, Envelope(B, 1, 1.0, body(1), b"p" * 11))
        self.assertRaises(ValueError, self.log.range, B, 1, 51)
        self.assertRaises(ValueError, self.log.append_local_sync, body(1), float("inf"))
        self.assertRaises(TypeError, self.log.append_local_sync, b"raw bytes", 1.0)
        self.assertEqual(len(self.log), 0)

    def test_attach_proof_once(self) -> None:
        self.log.append_local_sync(body(1), 1.0)
        self.assertTrue(self.log.attach_proof_sync(A, 1, b"signature"))
        self.assertFalse(self.log.attach_proof_sync(A, 1, b"other"))
        self.assertEqual(self.log.range(A, 1, 1)[0].proof, b"signature")
        self.assertEqual(self.log.get(body(1).record_id).envelope.proof, b"signature")
        self.assertRaises(KeyError, self.log.attach_proof_sync, A, 2, b"x")

    def test_cut_is_the_same_list_everywhere(self) -> None:
        for seq in (1, 2, 3):
            self.log.insert_remote_sync(env(B, seq, seq))
        self.log.insert_remote_sync(env(C, 1, 2))  # alias of B's second record
        self.log.insert_remote_sync(env(C, 2, 10))
        self.log.insert_remote_sync(env(C, 4, 11))
        self.assertEqual(self.log.current_cut(), {B: 3, C: 2})
        got = self.log.records_in_cut({B: 2, C: 2})
        self.assertEqual([e.envelope.body for e in got], [body(1), body(2), body(10)])
        e = self.assertRaises(IncompleteView, self.log.records_in_cut, {C: 4})
        self.assertEqual((e.origin, e.wanted, e.have), (C, 4, 2))


class DigestTests(SynchronousTestCase):
    def open(self) -> DataLog:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        return DataLog(db, C)

    @settings(max_examples=15, deadline=None)
    @given(st.permutations([(o, s) for o in (A, B) for s in range(1, 6)]))
    def test_digest_ignores_order(self, order) -> None:
        """Same set inserted in a different order: same digest and count; each catch-up position agrees."""
        first, second = self.open(), self.open()
        for o, s in sorted(order):
            first.insert_remote_sync(env(o, s, s + (0 if o == A else 100)))
        for o, s in order:
            second.insert_remote_sync(env(o, s, s + (0 if o == A else 100)))
        self.assertEqual(first.digest(), second.digest())
        self.assertEqual(first.digest().count, 10)
        self.assertEqual(first.origins(), second.origins())

    def test_digest_tells_sets_apart(self) -> None:
        one, two, empty = self.open(), self.open(), self.open()
        one.insert_remote_sync(env(A, 1, 1))
        two.insert_remote_sync(env(A, 1, 2))
        self.assertNotEqual(one.digest().digest, two.digest().digest)
        self.assertNotEqual(one.digest().digest, empty.digest().digest)
        self.assertEqual(empty.digest().count, 0)
        # the envelope is not part of the digest: the set of records is
        three = self.open()
        three.insert_remote_sync(env(B, 7, 1, at=5.0))
        self.assertEqual(one.digest(), three.digest())


class SetHashTests(SynchronousTestCase):
    ids = [hashlib.sha256(b"%d" % i).digest() for i in range(6)]

    def test_order_and_grouping_do_not_matter(self) -> None:
        one = sethash.update(sethash.EMPTY, self.ids)
        two = sethash.EMPTY
        for i in reversed(self.ids):
            two = sethash.update(two, [i])
        self.assertEqual(one, two)
        self.assertNotEqual(one, sethash.update(sethash.EMPTY, self.ids[:-1]))

    def test_removal_undoes_addition(self) -> None:
        full = sethash.update(sethash.EMPTY, self.ids)
        self.assertEqual(sethash.update(full, removed=self.ids[:2]), sethash.update(sethash.EMPTY, self.ids[2:]))
        self.assertEqual(sethash.update(full, removed=self.ids), sethash.EMPTY)
        # a removal below zero wraps and comes back
        self.assertEqual(sethash.update(sethash.update(sethash.EMPTY, removed=self.ids[:1]), self.ids[:1]), sethash.EMPTY)

    def test_lanes_reduce_mod_2_16(self) -> None:
        """Adding one id 2^16 times is the identity: lanes really are mod 2^16 (and no carry leaks)."""
        self.assertEqual(sethash.update(sethash.EMPTY, self.ids[:1] * 65536), sethash.EMPTY)

    def test_bad_state(self) -> None:
        self.assertRaises(ValueError, sethash.update, b"\x00" * 10, [])
        self.assertRaises(ValueError, sethash.update, b"\xff" * sethash.STATE_BYTES, [])


class RetentionTests(SynchronousTestCase):
    def open(self, retention: Retention) -> DataLog:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        return DataLog(db, C, retention=retention)

    def test_by_count_keeps_the_newest_per_origin(self) -> None:
        log = self.open(Retention(max_per_origin=3))
        fresh = self.open(Retention())
        for s in range(1, 11):
            log.insert_remote_sync(env(A, s, s))
        self.assertEqual(log.prune_sync(now=0.0), 7)
        self.assertEqual(log.origin_state(A), OriginState(have=10, max_seq=10, floor=7))
        self.assertEqual([e.seq for e in log.range(A, 1, 100)], [8, 9, 10])
        # a pruned record offered again is not brought back
        self.assertFalse(log.insert_remote_sync(env(A, 2, 2)).created)
        self.assertIsNone(log.get(body(2).record_id))
        # the digest is that of the records still held
        for s in (8, 9, 10):
            fresh.insert_remote_sync(env(A, s, s))
        self.assertEqual(log.digest(), fresh.digest())
        self.assertEqual(log.prune_sync(now=0.0), 0)
        self.assertRaises(IncompleteView, log.records_in_cut, {A: 10})

    def test_by_age_uses_the_origins_receive_time(self) -> None:
        log = self.open(Retention(max_age=100.0))
        for s in range(1, 6):
            log.insert_remote_sync(env(A, s, s, at=float(s * 10)))
        log.insert_remote_sync(env(A, 7, 7, at=0.0))  # beyond a gap: kept until the gap fills
        self.assertEqual(log.prune_sync(now=135.0), 3)  # receive times 10, 20, 30 < 35
        self.assertEqual(log.origin_state(A).floor, 3)
        self.assertEqual(log.prune_sync(now=1000.0), 2)
        self.assertEqual(log.origin_state(A), OriginState(have=5, max_seq=7, floor=5))
        self.assertIsNotNone(log.get(body(7).record_id))

    def test_prune_limit_and_aliases(self) -> None:
        log = self.open(Retention(max_per_origin=1))
        for s in range(1, 5):
            log.insert_remote_sync(env(A, s, s))
        log.insert_remote_sync(env(B, 1, 4))  # alias of A's newest
        log.insert_remote_sync(env(B, 2, 1))  # alias of A's oldest
        self.assertEqual(log.prune_sync(now=0.0, limit=2), 2)
        self.assertEqual(log.prune_sync(now=0.0), 2)
        # A's slot 1 is gone but B's slot 2 still holds that record
        self.assertIsNotNone(log.get(body(1).record_id))
        self.assertIsNone(log.get(body(2).record_id))
        self.assertEqual(len(log), 2)


class AsyncLogTests(TestCase):
    @inlineCallbacks
    def test_many_concurrent_appends_share_few_fsyncs(self):
        db = Database.open(self.mktemp(), reactor=reactor)
        self.addCleanup(db.close)
        log = DataLog(db, A)
        before = db.stats.transactions
        results = yield gatherResults([log.append_local(body(i, size=1024), 1.0) for i in range(2000)])
        self.assertTrue(all(r.created for r in results))
        self.assertEqual(len({r.record_id for r in results}), 2000)
        self.assertLessEqual(db.stats.transactions - before, 4)
        self.assertEqual(log.origin_state(A), OriginState(2000, 2000, 0))
        # submitting the same bodies again changes nothing
        again = yield gatherResults([log.append_local(body(i, size=1024), 2.0) for i in range(0, 2000, 7)])
        self.assertFalse(any(r.created for r in again))
        self.assertEqual(log.digest().count, 2000)

    @inlineCallbacks
    def test_sequence_conflict_arrives_through_the_deferred(self):
        db = Database.open(self.mktemp(), reactor=reactor)
        self.addCleanup(db.close)
        log = DataLog(db, A)
        ok, bad = log.insert_remote(env(B, 1, 1)), log.insert_remote(env(B, 1, 2))
        yield ok
        f = yield self.assertFailure(bad, SequenceConflict)
        self.assertEqual(f.culprit, B)


_CHILD = textwrap.dedent("""
    import sys
    from twisted.internet import reactor, task
    from frostnode.store.db import Database
    from frostnode.store.log import DataLog, RecordBody

    db = Database.open(sys.argv[1], reactor=reactor)
    log = DataLog(db, b"\\xa1" * 32)
    n = 0

    def ack(result):
        sys.stdout.write(result.record_id.hex() + "\\n")
        sys.stdout.flush()

    def pump():
        global n
        for _ in range(40):
            n += 1
            body = RecordBody(b"\\x11" * 32, "t", (b"%08d" % n).ljust(1024, b"."), timestamp=n)
            log.append_local(body, reactor.seconds()).addCallback(ack)

    task.LoopingCall(pump).start(0.001)
    reactor.run()
""")


class KillTests(SynchronousTestCase):
    def test_acknowledged_records_survive_kill_9(self) -> None:
        """A writer SIGKILLed mid-stream: every record it acknowledged is there after reopening."""
        path = os.path.abspath(self.mktemp())
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = []
        try:
            while len(lines) < 600:
                line = proc.stdout.readline()
                if not line:
                    self.fail(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
                lines.append(line)
        finally:
            proc.send_signal(signal.SIGKILL)
            # through the same buffered reader: communicate() would skip what it buffered
            lines += proc.stdout.read().splitlines(keepends=True)
            proc.wait(timeout=30)
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        # a line is an acknowledgement once complete; each is written with one write(2)
        acked = [bytes.fromhex(line.decode()) for line in lines if line.endswith(b"\n")]

        db = Database.open(path)  # the dead process's lock is gone
        self.addCleanup(db.close_sync)
        log = DataLog(db, A)
        missing = [rid for rid in acked if rid not in log]
        self.assertEqual(missing, [])
        st = log.origin_state(A)
        self.assertEqual(st.have, st.max_seq)  # no holes: whole transactions or nothing
        self.assertGreaterEqual(st.have, len(acked))
        self.assertEqual(log.digest().count, st.have)
