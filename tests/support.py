"""
Helpers shared by test modules of several layers (no tests here): members
with real keys and cards, a capture of global log events that can be
awaited, child processes whose output or JSON log events can be awaited,
and a bound on any wait.

Awaiting, not polling: every C{when*} here fires from the event itself (a
log event emitted, a line a child wrote), so a test waits exactly as long
as the thing takes, and a child that exits first fails the wait with its
output instead of leaving it to the test's timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from frostnode.identity import AddressCard, HostKeypair
from frostnode.net.noise import generate_noise_private_key, noise_public_key


# -- members --------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A member's secret keys and its address card."""

    host: HostKeypair
    noise_private: bytes
    card: AddressCard

    @property
    def key(self) -> bytes:
        return self.host.public


def make_member(address: str = "tcp:127.0.0.1:1") -> Member:
    host = HostKeypair.generate()
    noise_private = generate_noise_private_key()
    return Member(host, noise_private, AddressCard.create(host, noise_public_key(noise_private), [address]))


def make_members(addresses: list[str]) -> list[Member]:
    return [make_member(a) for a in addresses]


# -- waiting ------------------------------------------------------------------------


def with_timeout(d: Deferred, seconds: float, what: str) -> Deferred:
    """C{d}, failing with a message naming C{what} if it has not fired after C{seconds}."""
    timer = reactor.callLater(seconds, d.cancel)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure):
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        return result

    return d.addBoth(done)


class LogCapture:
    """Collects global log events from the moment it is made until C{stop}."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._waiters: list[tuple[str, dict, int, Deferred]] = []
        globalLogPublisher.addObserver(self._observe)

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self._observe)

    @staticmethod
    def _matches(event: LogEvent, text: str, fields: dict) -> bool:
        return text in (formatEvent(event) or "") and all(event.get(k) == v for k, v in fields.items())

    def matching(self, text: str, **fields: Any) -> list[LogEvent]:
        """The events so far whose formatted text holds C{text} and whose C{fields} have these values."""
        return [e for e in self.events if self._matches(e, text, fields)]

    def when(self, text: str, count: int = 1, **fields: Any) -> Deferred:
        """
        Fires with L{matching}C{(text, **fields)} once it holds at least
        C{count} events (at once if it does); cancelling forgets the wait.
        It fires in the reactor turn after the event, so the test does not
        resume inside the code that logged it.
        """
        if len(self.matching(text, **fields)) >= count:
            return succeed(self.matching(text, **fields))

        def cancel(d: Deferred) -> None:
            self._waiters = [w for w in self._waiters if w[3] is not d]

        d: Deferred = Deferred(cancel)
        self._waiters.append((text, fields, count, d))
        return d

    def _observe(self, event: LogEvent) -> None:
        self.events.append(event)
        for waiter in list(self._waiters):
            text, fields, count, d = waiter
            if self._matches(event, text, fields):
                found = self.matching(text, **fields)
                if len(found) >= count:
                    self._waiters.remove(waiter)
                    reactor.callLater(0, lambda d=d, found=found: d.called or d.callback(found))


# -- child processes ------------------------------------------------------------------


class ChildProcess(ProcessProtocol):
    """
    A child process: its standard error, a Deferred for its exit (firing
    with the reason: a C{ProcessDone} or C{ProcessTerminated}), and waits
    that fail, naming what they waited for, if it exits first.

    @ivar name: how failures name the child.
    @ivar running: from the spawn until the exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.err = b""
        self.ended: Deferred = Deferred()
        self.running = False
        self._waiters: list[tuple[Any, str, Deferred]] = []

    def connectionMade(self) -> None:
        self.running = True

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def _wait(self, condition: Any, what: str) -> Deferred:
        def cancel(d: Deferred) -> None:
            self._waiters = [w for w in self._waiters if w[2] is not d]

        d: Deferred = Deferred(cancel)
        self._waiters.append((condition, what, d))
        return d

    def _fire(self, holds: Callable[[Any], bool], result: Any) -> None:
        """Fire, with C{result}, every wait whose condition C{holds}."""
        for waiter in list(self._waiters):
            if holds(waiter[0]):
                self._waiters.remove(waiter)
                waiter[2].callback(result)

    def describe(self) -> str:
        """What the child said, for a failed wait."""
        return f"stderr:\n{self.err.decode(errors='replace')[-3000:]}"

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        waiters, self._waiters = self._waiters, []
        for _, what, d in waiters:
            d.errback(AssertionError(f"{self.name} exited ({reason.value}) before {what}\n{self.describe()}"))
        self.ended.callback(reason.value)


class OutputProcess(ChildProcess):
    """A child whose standard output (C{out}) is read as text."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.out = b""

    def when_output(self, text: bytes) -> Deferred:
        """Fires once C{text} is in the output (at once if it is)."""
        if text in self.out:
            return succeed(None)
        return self._wait(text, f"printing {text!r}")

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._fire(lambda text: text in self.out, None)

    def describe(self) -> str:
        return f"stdout:\n{self.out.decode(errors='replace')}\n{super().describe()}"


class EventProcess(ChildProcess):
    """
    A child that writes one JSON object per line on its standard output (a
    node's JSON log, a driven test node's answers): C{events} in order; a
    line that is not JSON is kept as C{{"text": line, "level": "unparsed"}}.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.events: list[dict] = []
        self._buffer = b""

    def when(self, predicate: Callable[[dict], bool]) -> Deferred:
        """Fires with the first event (past or future) that satisfies C{predicate}."""
        for event in self.events:
            if predicate(event):
                return succeed(event)
        return self._wait(predicate, "the awaited event")

    def send(self, **command: Any) -> None:
        """Write C{command} as one JSON line on the child's standard input."""
        self.transport.write(json.dumps(command).encode() + b"\n")

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"text": line.decode("utf-8", "replace"), "level": "unparsed"}
            self.events.append(event)
            self._fire(lambda predicate: predicate(event), event)

    def texts(self) -> list[str]:
        return [e.get("text", "") for e in self.events]

    def describe(self) -> str:
        return f"{super().describe()}\nlast events: {[e.get('text', e) for e in self.events[-5:]]}"
