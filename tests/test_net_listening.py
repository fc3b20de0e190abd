"""
L{OneShotObserver}: waiters before and after the outcome, failures
remembered (a failed listen must not leave C{when_listening} hanging), each
caller with its own Deferred, and a reset waited on afresh.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from frostnode.net.listening import OneShotObserver


class OneShotObserverTests(SynchronousTestCase):
    def test_waiters_before_and_after_the_result(self) -> None:
        o = OneShotObserver()
        early = o.observe()
        self.assertNoResult(early)
        o.fire("port")
        self.assertEqual(self.successResultOf(early), "port")
        self.assertEqual(self.successResultOf(o.observe()), "port")
        self.assertEqual((o.fired, o.result, o.failure), (True, "port", None))

    def test_a_failure_is_remembered(self) -> None:
        """The bug it replaces: a caller asking after a failed listen waited forever."""
        o = OneShotObserver()
        early = o.observe()
        o.fail(Failure(CannotListenError("127.0.0.1", 9001, OSError("in use"))))
        self.failureResultOf(early, CannotListenError)
        self.failureResultOf(o.observe(), CannotListenError)
        self.assertIn("failed", repr(o))

    def test_each_caller_has_its_own_deferred(self) -> None:
        o = OneShotObserver()
        a, b = o.observe(), o.observe()
        a.addCallback(lambda _: "changed by a")
        o.fire(1)
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("changed by a", 1))
        self.assertEqual(self.successResultOf(o.observe()), 1)

    def test_a_waiter_asking_again_is_answered_at_once(self) -> None:
        o = OneShotObserver()
        again = []
        o.observe().addCallback(lambda _: again.append(o.observe()))
        o.fire("x")
        self.assertEqual(self.successResultOf(again[0]), "x")

    def test_reset_waits_for_the_next_outcome(self) -> None:
        o = OneShotObserver()
        o.fail(Failure(CannotListenError("", 1, OSError("denied"))))
        self.assertRaises(ValueError, o.fire, "second outcome without a reset")
        o.reset()
        d = o.observe()
        self.assertNoResult(d)
        o.fire("bound on the retry")
        self.assertEqual(self.successResultOf(d), "bound on the retry")
