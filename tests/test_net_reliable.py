"""
The pure reliable-delivery state: ids, acknowledgements, resends, duplicate
suppression within a bounded window, queue limits, peer restarts.
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.net.errors import QueueFull, ReliabilityError
from frostnode.net.reliable import ReceiveWindow, SendQueue

PEER = bytes(range(32))


class SendQueueTests(SynchronousTestCase):
    def test_ids_and_cumulative_ack(self) -> None:
        q = SendQueue(PEER, 10, 1000)
        ids = [q.push(2, b"m%d" % i) for i in range(5)]
        self.assertEqual(ids, [1, 2, 3, 4, 5])
        self.assertEqual(q.ack(3, []), 3)
        self.assertEqual([i for i, _, _ in q.unacked()], [4, 5])
        self.assertEqual(q.base, 4)
        self.assertEqual(q.queued_bytes, 4)

    def test_cumulative_ack_releases_payload_bytes(self) -> None:
        """
        The byte budget is the payloads', not the entries': after a peer
        acknowledges everything, the queue is empty and takes a full budget
        again (a leak here made every send to a live peer fail after a while).
        """
        q = SendQueue(PEER, 100, 1000)
        for _ in range(3):
            ids = [q.push(2, b"x" * 300) for _ in range(3)]
            self.assertEqual(q.queued_bytes, 900)
            self.assertEqual(q.ack(ids[-1], []), 3)
            self.assertEqual(q.queued_bytes, 0)

    def test_selective_ack(self) -> None:
        q = SendQueue(PEER, 10, 1000)
        for i in range(5):
            q.push(2, b"x")
        self.assertEqual(q.ack(1, [3, 5, 5]), 3)
        self.assertEqual([i for i, _, _ in q.unacked()], [2, 4])
        self.assertEqual(q.base, 2)

    def test_unacked_keeps_channel_and_payload_in_id_order(self) -> None:
        q = SendQueue(PEER, 10, 1000)
        q.push(2, b"a"), q.push(4, b"b"), q.push(2, b"c")
        q.ack(0, [2])
        self.assertEqual(list(q.unacked()), [(1, 2, b"a"), (3, 2, b"c")])

    def test_ack_of_unsent_id_is_a_violation(self) -> None:
        q = SendQueue(PEER, 10, 1000)
        q.push(2, b"a")
        self.assertRaises(ReliabilityError, q.ack, 2, [])
        self.assertRaises(ReliabilityError, q.ack, 0, [7])
        self.assertRaises(ReliabilityError, q.ack, 0, [0])

    def test_queue_full_by_count_names_peer(self) -> None:
        q = SendQueue(PEER, 3, 1000)
        for _ in range(3):
            q.push(2, b"x")
        with self.assertRaises(QueueFull) as cm:
            q.push(2, b"x")
        self.assertEqual(cm.exception.peer, PEER)
        self.assertIn(PEER.hex()[:12], str(cm.exception))
        self.assertIn("away too long", str(cm.exception))
        q.ack(1, [])
        self.assertEqual(q.push(2, b"x"), 4)

    def test_queue_full_by_span(self) -> None:
        """An old unacknowledged id keeps the span wide even when later ones are acked."""
        q = SendQueue(PEER, 3, 1000)
        for _ in range(3):
            q.push(2, b"x")
        q.ack(0, [2, 3])
        self.assertRaises(QueueFull, q.push, 2, b"x")

    def test_queue_full_by_bytes(self) -> None:
        q = SendQueue(PEER, 100, 10)
        q.push(2, b"x" * 8)
        with self.assertRaises(QueueFull) as cm:
            q.push(2, b"x" * 3)
        self.assertIn("10 bytes", str(cm.exception))


class ReceiveWindowTests(SynchronousTestCase):
    def test_in_order_and_duplicates(self) -> None:
        w = ReceiveWindow(100)
        w.set_epoch(1)
        self.assertEqual([w.accept(i) for i in (1, 2, 3)], [True, True, True])
        self.assertEqual([w.accept(i) for i in (2, 3, 1)], [False, False, False])
        self.assertEqual(w.take_ack(), (3, []))
        self.assertFalse(w.ack_pending)

    def test_out_of_order_then_gap_fills(self) -> None:
        w = ReceiveWindow(100)
        w.set_epoch(1)
        self.assertTrue(w.accept(3))
        self.assertTrue(w.accept(5))
        self.assertFalse(w.accept(5))
        self.assertEqual(w.take_ack(), (0, [3, 5]))
        self.assertTrue(w.accept(1))
        self.assertTrue(w.accept(2))
        self.assertEqual(w.low, 3)
        self.assertTrue(w.accept(4))
        self.assertEqual(w.low, 5)
        self.assertEqual(w.take_ack(), (5, []))

    def test_beyond_window_and_zero_are_violations(self) -> None:
        w = ReceiveWindow(10)
        w.set_epoch(1)
        self.assertTrue(w.accept(10))
        self.assertRaises(ReliabilityError, w.accept, 11)
        self.assertRaises(ReliabilityError, w.accept, 0)

    def test_resume_forgets_ids_below_base(self) -> None:
        w = ReceiveWindow(10)
        w.set_epoch(1)
        w.accept(4)
        w.resume(4)          # ids 1..3 will never come again
        self.assertEqual(w.low, 4)
        w.resume(2)          # never lowers the watermark
        self.assertEqual(w.low, 4)
        self.assertTrue(w.accept(14))  # the window moved with the watermark
        self.assertRaises(ReliabilityError, w.resume, 0)

    def test_new_epoch_resets(self) -> None:
        """A restarted sender counts from 1 again; its ids are new, not duplicates."""
        w = ReceiveWindow(100)
        self.assertTrue(w.set_epoch(1))
        for i in (1, 2, 3):
            w.accept(i)
        self.assertFalse(w.set_epoch(1))
        self.assertFalse(w.accept(2))
        self.assertTrue(w.set_epoch(2))
        self.assertTrue(w.accept(2))
        self.assertEqual(w.snapshot_ack(), (0, [2]))


class ResendScenarioTests(SynchronousTestCase):
    """Queue and window together over links that drop messages: exactly once."""

    @settings(max_examples=40, deadline=None)
    @given(st.integers(0, 2**32), st.integers(1, 60), st.floats(0.0, 0.6))
    def test_exactly_once_over_lossy_links(self, seed: int, count: int, loss: float) -> None:
        rng = random.Random(seed)
        q = SendQueue(PEER, 1000, 10**6)
        w = ReceiveWindow(1000)
        w.set_epoch(1)
        delivered: list[bytes] = []
        for i in range(count):
            q.push(2, b"%d" % i)
        rounds = 0
        while len(q) and rounds < 200:
            rounds += 1
            # A new link: RESUME, then everything unacknowledged; the link
            # drops a random suffix of the stream, and acks may be lost too.
            w.resume(q.base)
            pending = list(q.unacked())
            cut = rng.randrange(len(pending) + 1) if rng.random() < loss else len(pending)
            for msg_id, _, payload in pending[:cut]:
                if w.accept(msg_id):
                    delivered.append(payload)
            if rng.random() >= loss:
                q.ack(*w.take_ack())
        self.assertEqual(len(q), 0)
        self.assertEqual(sorted(delivered), sorted(b"%d" % i for i in range(count)))
