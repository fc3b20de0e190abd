# -*- test-case-name: tests.test_dkg_scheduler -*-
"""
When a DKG may run: a pure policy, and a timer that follows it.

The federation runs a DKG at a configured fixed interval and when a join is
accepted, but never sooner than C{min_spacing} (default 14 days) after the
last successful DKG: a guard against DDoS (every DKG costs every member
O(n^2) work) and against membership churn.  "The last successful DKG" is the
time our store recorded the newest certificate, ours or one we learnt as an
excluded member, so the rule survives restarts and holds for every member.

A request inside the window is refused with L{DkgTooSoon}, which names the
earliest allowed time.  Members compare the window against their own clocks
and their own certification times, which differ by a few seconds; a member
therefore I{joins} a DKG another member started if its own window ends within
C{join_grace} (default 10 minutes), so a scheduled run is not split by
clock skew.  It never I{starts} one early.

Without any certified key yet (a new federation) a DKG is due at once.  A
run that fails (too few members, too many attempts) is retried no sooner
than C{retry_delay} later; the spacing rule still applies, since it counts
from the last I{successful} DKG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

DAY = 86400.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class DkgTooSoon(Exception):
    """
    A DKG was requested inside the minimum spacing after the last one.

    @ivar earliest: the first time (seconds since the epoch, the node's
        clock) at which a DKG may start.
    @ivar last: when the last successful DKG was certified.
    """

    def __init__(self, earliest: float, last: float, min_spacing: float) -> None:
        self.earliest = earliest
        self.last = last
        self.min_spacing = min_spacing
        super().__init__(
            f"the last DKG was certified at {_iso(last)}; with a minimum spacing of "
            f"{min_spacing / DAY:g} days the next may start at {_iso(earliest)} at the earliest"
        )


@dataclass(frozen=True)
class SchedulePolicy:
    """
    @ivar interval: seconds from one successful DKG to the next scheduled
        one, or None for no periodic DKG (only on request).  At least
        C{min_spacing}.
    @ivar min_spacing: no DKG starts sooner than this after the last one.
    @ivar join_grace: how much earlier than its own window a member joins a
        DKG started by another.
    @ivar retry_delay: after a failed run, wait this long before the next.
    """

    interval: Optional[float] = 30 * DAY
    min_spacing: float = 14 * DAY
    join_grace: float = 600.0
    retry_delay: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("min_spacing", "join_grace", "retry_delay"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, not {v!r}")
        if self.interval is not None and not (math.isfinite(self.interval) and self.interval >= self.min_spacing):
            raise ValueError(f"interval {self.interval!r} must be at least min_spacing ({self.min_spacing})")
        if self.join_grace > self.min_spacing:
            raise ValueError("join_grace cannot exceed min_spacing")

    def earliest(self, last: Optional[float]) -> float:
        """The first time a DKG may start (-inf if there never was one)."""
        return -math.inf if last is None else last + self.min_spacing

    def check_request(self, last: Optional[float], now: float) -> None:
        """
        @raise DkgTooSoon: C{now} is inside the window after C{last}.
        """
        if last is not None and now < self.earliest(last):
            raise DkgTooSoon(self.earliest(last), last, self.min_spacing)

    def may_join(self, last: Optional[float], now: float) -> bool:
        """Would we take part in a DKG another member started at C{now}?"""
        return last is None or now >= self.earliest(last) - self.join_grace

    def next_due(self, last: Optional[float], last_failure: Optional[float]) -> Optional[float]:
        """When the timer should start a DKG, or None (periodic DKG off and a key exists)."""
        if last is None:
            due = 0.0
        elif self.interval is None:
            return None
        else:
            due = last + self.interval
        if last_failure is not None:
            due = max(due, last_failure + self.retry_delay)
        return max(due, self.earliest(last))


class ScheduleTimer:
    """
    Calls C{start()} when the policy says a DKG is due, and again after each
    run it started has ended (C{start} returns a Deferred).

    Like C{TimerService}, errors from C{start} are logged and do not stop
    the schedule.  C{last()} and C{last_failure()} are read afresh every
    time, so runs started by other means (a request, joining a peer's run)
    move the schedule too: call L{reschedule} after them.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, policy: SchedulePolicy, last: Callable[[], Optional[float]],
                 last_failure: Callable[[], Optional[float]], start: Callable[[], Deferred]) -> None:
        self.clock = clock
        self.policy = policy
        self._last = last
        self._last_failure = last_failure
        self._start = start
        self._call: Optional[IDelayedCall] = None
        self._running = False
        self._busy = False

    @property
    def due(self) -> Optional[float]:
        return self.policy.next_due(self._last(), self._last_failure())

    def start(self) -> None:
        self._running = True
        self.reschedule()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def reschedule(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._running or self._busy:
            return
        due = self.due
        if due is None:
            return
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._busy = True
        try:
            d = self._start()
        except Exception:
            self.log.failure("scheduled DKG failed to start")
            self._busy = False
            self.reschedule()
            return

        def done(result: object) -> None:
            self._busy = False
            self.reschedule()

        def failed(f) -> None:
            self.log.failure("scheduled DKG failed", f)
            done(None)
        d.addCallbacks(done, failed)
