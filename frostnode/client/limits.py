# -*- test-case-name: tests.test_client_messages -*-
"""
What one client may ask of a node: request size, requests in flight, and a
request rate.  Pure: time is passed in (the server reads its injected clock).

Decisions:

  - B{A client is its static key}, not a connection: limits are shared by
    all connections of one key, so opening more connections buys no more
    rate.  Opening more I{keys} costs a handshake each and is bounded by the
    server's connection caps (L{ClientLimits.max_connections},
    C{max_handshaking}); the HTTP API, which has no client keys, uses the
    remote address instead.
  - B{Rate}: a token bucket (C{rate} per second, C{burst} at most), charged
    for I{every} request that reaches the dispatcher, malformed ones
    included, so a flood of garbage is throttled like a flood of valid
    requests.  A request with no token gets C{rate-limited} with the time
    until the next token.
  - B{In flight}: at most C{max_in_flight} answered-later requests per
    client; more gets C{rate-limited} with C{retry_after} 0 (retry when an
    answer arrives).  The client library never exceeds it: the node
    announces the limit in its hello and the library queues.
  - B{Forgetting}: a client's state lives while it has a connection or a
    request in flight, and afterwards only while its bucket is not full
    (reconnecting must not refill it), in a table capped at
    C{max_tracked_clients}, oldest first out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Hashable, Optional

from frostnode.client.errors import ClientError, rate_limited


@dataclass(frozen=True)
class ClientLimits:
    """
    The client port's limits and timers.  The first four are C{[client]}
    config keys; the rest have no config key yet (see docs/client.rst).

    @ivar max_request_size: largest request frame body, in bytes.
    @ivar max_answer_size: a C{topic} page stops growing at this many bytes.
    @ivar idle_timeout: a connection with nothing in flight and nothing
        received for this long is closed.
    """

    max_request_size: int = 1 << 20
    max_in_flight: int = 16
    rate: float = 50.0
    burst: int = 100
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connections: int = 1024
    max_handshaking: int = 256
    max_answer_size: int = 8 << 20
    max_tracked_clients: int = 65536

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"ClientLimits.{f.name} must be a positive number, got {value!r}")
        if self.max_request_size > 0xFFFFFFFF:
            raise ValueError("ClientLimits.max_request_size must fit in a u32")

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> "ClientLimits":
        """From a L{frostnode.config.ClientSection}."""
        return cls(max_request_size=section.max_request_size, max_in_flight=section.max_in_flight,
                   rate=section.rate, burst=section.burst, **overrides)


class TokenBucket:
    """C{rate} tokens per second, at most C{burst}; starts full."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class ClientState:
    """One client's bucket and counters, shared by its connections."""

    __slots__ = ("key", "bucket", "in_flight", "connections", "rate_limited")

    def __init__(self, key: Hashable, bucket: TokenBucket) -> None:
        self.key = key
        self.bucket = bucket
        self.in_flight = 0
        self.connections = 0
        self.rate_limited = 0


class ClientRegistry:
    """The per-client states of one port."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self._active: dict[Hashable, ClientState] = {}
        self._idle: "OrderedDict[Hashable, ClientState]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._active) + len(self._idle)

    def get(self, key: Hashable, now: float) -> ClientState:
        state = self._active.get(key)
        if state is None:
            state = self._idle.pop(key, None)
            if state is None:
                state = ClientState(key, TokenBucket(self.limits.rate, self.limits.burst, now))
            self._active[key] = state
        return state

    def attach(self, key: Hashable, now: float) -> ClientState:
        """A connection of C{key} is up."""
        state = self.get(key, now)
        state.connections += 1
        return state

    def detach(self, state: ClientState, now: float) -> None:
        """One of its connections is gone."""
        state.connections -= 1
        self._maybe_idle(state, now)

    def release(self, state: ClientState, now: float) -> None:
        """Forget C{state} if nothing holds it (for callers without connections: the HTTP API)."""
        self._maybe_idle(state, now)

    def _maybe_idle(self, state: ClientState, now: float) -> None:
        if state.connections > 0 or state.in_flight > 0 or self._active.get(state.key) is not state:
            return
        del self._active[state.key]
        if state.bucket.full(now):
            return
        self._idle[state.key] = state
        while len(self._idle) > self.limits.max_tracked_clients:
            self._idle.popitem(last=False)

    def admit(self, state: ClientState, now: float) -> Optional[ClientError]:
        """
        Charge one request to C{state}: C{None} if it may run (it is then in
        flight until L{done}), else the C{rate-limited} error to answer.
        """
        wait = state.bucket.take(now)
        if wait > 0.0:
            state.rate_limited += 1
            return rate_limited(f"over {self.limits.rate:g} requests/s (burst {self.limits.burst})", wait)
        if state.in_flight >= self.limits.max_in_flight:
            state.rate_limited += 1
            return rate_limited(f"{state.in_flight} requests already in flight (limit {self.limits.max_in_flight})", 0.0)
        state.in_flight += 1
        return None

    def done(self, state: ClientState, now: float) -> None:
        """A request admitted by L{admit} was answered (or its connection is gone)."""
        state.in_flight -= 1
        self._maybe_idle(state, now)
