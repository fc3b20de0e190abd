# -*- test-case-name: tests.test_dkg_scheduler -*-
"""
The DKG schedule: minimum spacing, interval, join grace, retries, and the timer.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from frostnode.dkg.scheduler import DAY, DkgTooSoon, SchedulePolicy, ScheduleTimer

T0 = 1_700_000_000.0


class PolicyTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        p = SchedulePolicy()
        self.assertEqual(p.min_spacing, 14 * DAY)

    def test_request_inside_window_names_earliest_time(self) -> None:
        p = SchedulePolicy()
        p.check_request(None, T0)  # never had a DKG
        e = self.assertRaises(DkgTooSoon, p.check_request, T0, T0 + 13 * DAY)
        self.assertEqual(e.earliest, T0 + 14 * DAY)
        self.assertEqual(e.last, T0)
        self.assertIn("2023-11-28T22:13:20+00:00", str(e))  # T0 + 14 days, in UTC
        p.check_request(T0, T0 + 14 * DAY)

    def test_join_grace(self) -> None:
        p = SchedulePolicy(join_grace=600)
        self.assertTrue(p.may_join(None, T0))
        self.assertFalse(p.may_join(T0, T0 + 14 * DAY - 601))
        self.assertTrue(p.may_join(T0, T0 + 14 * DAY - 600))

    def test_next_due(self) -> None:
        p = SchedulePolicy(interval=30 * DAY, retry_delay=3600)
        self.assertEqual(p.next_due(None, None), 0.0)
        self.assertEqual(p.next_due(T0, None), T0 + 30 * DAY)
        self.assertEqual(p.next_due(T0, T0 + 30 * DAY + 5), T0 + 30 * DAY + 3605)
        # A failed run right after bootstrap still respects the retry delay.
        self.assertEqual(p.next_due(None, T0), T0 + 3600)
        self.assertIsNone(SchedulePolicy(interval=None).next_due(T0, None))

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, SchedulePolicy, interval=DAY)  # below min spacing
        self.assertRaises(ValueError, SchedulePolicy, min_spacing=-1)
        self.assertRaises(ValueError, SchedulePolicy, retry_delay=math.nan)
        self.assertRaises(ValueError, SchedulePolicy, min_spacing=10, join_grace=20, interval=None)


class TimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.last: float | None = T0
        self.failure: float | None = None
        self.started: list[Deferred] = []
        self.timer = ScheduleTimer(self.clock, SchedulePolicy(interval=20 * DAY), lambda: self.last,
                                   lambda: self.failure, self.start)

    def start(self) -> Deferred:
        d: Deferred = Deferred()
        self.started.append(d)
        return d

    def test_fires_at_interval_then_after_the_run(self) -> None:
        self.timer.start()
        self.clock.advance(20 * DAY - 1)
        self.assertEqual(self.started, [])
        self.clock.advance(1)
        self.assertEqual(len(self.started), 1)
        # Nothing more while the run is going.
        self.clock.advance(40 * DAY)
        self.assertEqual(len(self.started), 1)
        self.last = self.clock.seconds()
        self.started[0].callback(None)
        self.clock.advance(20 * DAY)
        self.assertEqual(len(self.started), 2)

    def test_errors_do_not_stop_the_schedule(self) -> None:
        self.timer = ScheduleTimer(self.clock, SchedulePolicy(interval=20 * DAY), lambda: self.last,
                                   lambda: self.failure, lambda: fail(RuntimeError("boom")))
        self.timer.start()
        self.failure = T0 + 20 * DAY
        self.clock.advance(20 * DAY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.timer.due, T0 + 20 * DAY + 3600)

    def test_stop(self) -> None:
        self.timer.start()
        self.timer.stop()
        self.clock.advance(30 * DAY)
        self.assertEqual(self.started, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reschedule_follows_new_last(self) -> None:
        self.timer = ScheduleTimer(self.clock, SchedulePolicy(interval=20 * DAY), lambda: self.last,
                                   lambda: self.failure, lambda: succeed(None))
        self.timer.start()
        self.clock.advance(10 * DAY)
        self.last = self.clock.seconds()  # a requested DKG happened meanwhile
        self.timer.reschedule()
        self.assertEqual(self.timer.due, T0 + 30 * DAY)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), T0 + 30 * DAY)
