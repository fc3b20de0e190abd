"""
The catch-up planner on its own: who is asked for what, how many questions
are out at once, waiting for broadcast before fetching, back-off after empty
answers and timeouts, penalties for bad pages, and the per-peer lag report.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.sync.catchup import Lag, PageRequest, Planner
from frostnode.sync.messages import OriginSummary, Summary

ME, A, B, C, D = (bytes([x]) * 32 for x in (0x01, 0x0A, 0x0B, 0x0C, 0x0D))


def summary(**haves: int) -> Summary:
    keys = {"me": ME, "a": A, "b": B, "c": C, "d": D}
    return Summary(0, b"\x00" * 32, {keys[k]: OriginSummary(h, h) for k, h in haves.items()})


def planner(**kw) -> Planner:
    args = dict(page_records=100, max_in_flight=8, request_timeout=10.0, retry_delay=1.0, penalty_time=60.0)
    args.update(kw)
    return Planner(ME, **args)


class PlannerTests(SynchronousTestCase):
    def test_asks_the_origin_itself_from_our_have(self) -> None:
        p = planner()
        p.summary_received(B, summary(a=50, b=10), 0.0)
        p.summary_received(A, summary(a=50), 0.0)
        reqs = p.plan(0.0, {A: 20}, {A, B})
        self.assertEqual(sorted(reqs), sorted([PageRequest(A, A, 21, 100), PageRequest(B, B, 1, 100)]))

    def test_only_connected_peers_that_have_more(self) -> None:
        p = planner()
        p.summary_received(A, summary(c=50), 0.0)
        p.summary_received(B, summary(c=20), 0.0)
        self.assertEqual(p.plan(0.0, {C: 20}, {B}), [])      # B has nothing new, A is down
        self.assertEqual(p.plan(0.0, {C: 20}, {A, B}), [PageRequest(A, C, 21, 100)])

    def test_never_asks_for_our_own_origin(self) -> None:
        p = planner()
        p.summary_received(A, summary(me=99), 0.0)
        self.assertEqual(p.plan(0.0, {}, {A}), [])

    def test_one_question_per_origin_and_a_global_cap(self) -> None:
        p = planner(max_in_flight=2)
        for peer in (A, B, C, D):
            p.summary_received(peer, summary(a=9, b=9, c=9, d=9), 0.0)
        first = p.plan(0.0, {}, {A, B, C, D})
        self.assertEqual(len(first), 2)
        self.assertEqual(len({r.origin for r in first}), 2)
        self.assertEqual(p.plan(0.0, {}, {A, B, C, D}), [])
        self.assertEqual(p.in_flight, 2)

    def test_pipelines_one_page_while_the_previous_is_written(self) -> None:
        p = planner()
        p.summary_received(A, summary(a=1000), 0.0)
        (r1,) = p.plan(0.0, {}, {A})
        self.assertTrue(p.expected(A, A, 1))
        self.assertFalse(p.expected(B, A, 1))
        p.page_verified(A, A, 100, 0.0)
        (r2,) = p.plan(0.0, {}, {A})                  # have is still 0 on disk
        self.assertEqual(r2.from_seq, 101)
        p.page_verified(A, A, 200, 0.0)
        self.assertEqual(p.plan(0.0, {}, {A}), [])    # two pages being written: wait
        p.page_written(A, 100)
        (r3,) = p.plan(0.0, {A: 100}, {A})
        self.assertEqual(r3.from_seq, 201)

    def test_waits_for_broadcast_before_fetching(self) -> None:
        p = planner(grace=1.0)
        p.summary_received(A, summary(a=10), 0.0)
        self.assertEqual(p.plan(0.0, {A: 5}, {A}), [])
        self.assertEqual(p.plan(0.9, {A: 8}, {A}), [])    # broadcast is delivering: the clock restarts
        self.assertEqual(p.plan(1.5, {A: 8}, {A}), [])
        (r,) = p.plan(2.0, {A: 8}, {A})
        self.assertEqual(r.from_seq, 9)
        # once fetching, the next pages go out at once
        p.page_verified(A, A, 9, 2.0)
        p.page_written(A, 9)
        p.summary_received(A, summary(a=500), 2.0)
        self.assertEqual(len(p.plan(2.0, {A: 9}, {A})), 1)

    def test_empty_answer_and_timeout_back_off_that_peer_for_that_origin(self) -> None:
        p = planner()
        p.summary_received(A, summary(c=10, d=10), 0.0)
        p.summary_received(B, summary(c=10), 0.0)
        reqs = {r.origin: r for r in p.plan(0.0, {}, {A, B})}
        first_c = reqs[C].peer
        p.page_verified(first_c, C, None, 0.0)         # nothing at the seq we asked for
        (again,) = p.plan(0.1, {}, {A, B})
        self.assertNotEqual(again.peer, first_c)
        self.assertEqual(p.expire(5.0), [])
        self.assertEqual(sorted(p.expire(10.1)), sorted([(A, D), (again.peer, C)]))
        # the empty answer's back-off is over; the timed-out pairs wait
        self.assertEqual(p.plan(10.5, {}, {A, B}), [PageRequest(first_c, C, 1, 100)])
        self.assertEqual(p.plan(11.2, {}, {A, B}), [PageRequest(A, D, 1, 100)])

    def test_bad_page_bans_the_peer_for_every_origin(self) -> None:
        p = planner()
        p.summary_received(A, summary(c=10, d=10), 0.0)
        (r1, r2) = p.plan(0.0, {}, {A})
        p.page_rejected(A, r1.origin, 0.0)
        self.assertEqual(p.plan(1.0, {}, {A}), [])
        p.page_verified(A, r2.origin, 10, 1.0)
        p.page_written(r2.origin, 10)
        self.assertEqual(p.plan(30.0, {r2.origin: 10}, {A}), [])
        self.assertEqual(p.plan(61.0, {r2.origin: 10}, {A}), [PageRequest(A, r1.origin, 1, 100)])

    def test_lag_per_peer(self) -> None:
        p = planner()
        p.summary_received(A, summary(a=10, b=5), 0.0)
        self.assertEqual(p.lag({A: 4, B: 5, C: 3}), {A: Lag(missing=6, lagging=3)})
