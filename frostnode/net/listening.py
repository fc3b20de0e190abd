# -*- test-case-name: tests.test_net_listening -*-
"""
Waiting for something that happens once: a port bound (or not), a
connection gone.

Every service that listens offers C{when_listening()}, and every connection
shell C{when_closed()}; each used to keep its own list of waiting Deferreds,
and the copies drifted (one forgot a failed listen, so its C{when_listening}
never fired).  L{OneShotObserver} is the one copy: it remembers the outcome,
so a caller who asks after the event gets it at once, failure included.

Decisions:

  - B{Every caller gets its own Deferred}, never a shared one: a waiter that
    adds a callback returning something else, or that lets a failure go
    unhandled, affects only itself.
  - B{The outcome is remembered until L{OneShotObserver.reset}}: a service
    resets it when it gives its port up or starts a new listen, so that a
    restarted service is waited on afresh.  Waiters still pending at a
    reset wait for the next outcome.
  - B{Waiters are fired after the outcome is recorded}: a callback that asks
    again is answered at once, not queued for an event that has passed.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure


def describe_address(address: object) -> str:
    """C{host:port} of a Twisted address, for logs; anything else as it prints."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return str(address)


class OneShotObserver:
    """
    One event's outcome (a result or a L{Failure}) for any number of callers,
    before or after it happens.

    @ivar result: the result once L{fire}d (C{None} before, and after L{fail}).
    @ivar failure: the failure once L{fail}ed, else C{None}.
    """

    __slots__ = ("fired", "result", "failure", "_waiters")

    def __init__(self) -> None:
        self.fired = False
        self.result: Any = None
        self.failure: Optional[Failure] = None
        self._waiters: list[Deferred] = []

    def __repr__(self) -> str:
        state = ("pending" if not self.fired else
                 f"failed: {self.failure.getErrorMessage()}" if self.failure is not None else f"fired: {self.result!r}")
        return f"<OneShotObserver {state}, {len(self._waiters)} waiting>"

    def observe(self) -> Deferred:
        """A new Deferred with the outcome: now if there is one, else when it comes."""
        if self.fired:
            return fail(self.failure) if self.failure is not None else succeed(self.result)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result: Any) -> None:
        """
        The event happened with C{result}.

        @raise ValueError: an outcome is already recorded (reset it first).
        """
        self._settle(result, None)

    def fail(self, failure: Failure) -> None:
        """
        The event will not happen: C{failure} says why.

        @raise ValueError: an outcome is already recorded (reset it first).
        """
        self._settle(None, failure)

    def reset(self) -> None:
        """Forget the outcome: the next L{observe} waits for a new one."""
        self.fired = False
        self.result = None
        self.failure = None

    def _settle(self, result: Any, failure: Optional[Failure]) -> None:
        if self.fired:
            raise ValueError(f"{self!r} already has its outcome; reset it before the next one")
        self.fired = True
        self.result = result
        self.failure = failure
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if failure is not None:
                d.errback(failure)
            else:
                d.callback(result)


class ListeningService(Service):
    """
    Listens with C{factory} on C{endpoint} while running: the client port,
    the HTTP API and the metrics page are each one of these, and they used
    to be three copies of this bookkeeping.

    A port that cannot be bound is logged as an error and the service (and
    the node) runs on without it; L{when_listening} says which happened, also
    when asked after the fact.  Stopping before the port is bound cancels
    the listen: waiters fail with C{CancelledError} and nothing is logged.
    A port bound after the service stopped is closed at once.

    @cvar what: how the logs name this port ("client port", "HTTP API").
    """

    log = Logger()
    what = "port"

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, description: str = "") -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description or str(endpoint)
        self.port: Optional[IListeningPort] = None
        self._listening: Optional[Deferred] = None
        self._outcome = OneShotObserver()

    def when_listening(self) -> Deferred:
        """Fires with the listening port (C{getHost().port} is the bound port), or fails with why it could not listen."""
        return self._outcome.observe()

    def startService(self) -> None:
        super().startService()
        self._outcome.reset()
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)

    def listened(self, port: IListeningPort) -> None:
        """Hook: the port is bound (before waiters hear of it)."""

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        if not self.running:
            port.stopListening()
            return
        self.port = port
        self.log.info("{what} listening on {address}", what=self.what, address=describe_address(port.getHost()))
        self.listened(port)
        self._outcome.fire(port)

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        if not failure.check(CancelledError):  # cancelled: stopped before the port was bound
            self.log.error("{what} cannot listen on {listen}: {error}", what=self.what, listen=self.description,
                           error=failure.getErrorMessage())
        self._outcome.fail(failure)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
        port, self.port = self.port, None
        self._outcome.reset()
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)
