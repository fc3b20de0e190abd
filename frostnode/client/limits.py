# -*- test-case-name: tests.test_client_messages -*-
"""
What one client may ask of a node: request size, requests in flight, and a
request rate.  Pure: time is passed in (the server reads its injected clock).

Decisions:

  - B{A client is its static key}, not a connection: limits are shared by
    all connections of one key, so opening more connections buys no more
    rate.  The HTTP API, which has no client keys, uses the remote address
    instead.
  - B{A key is free, an address is not}: anyone can make a thousand static
    keys, so the port's caps on connections and unfinished handshakes
    (L{ClientLimits.max_connections}, C{max_handshaking}) would let one
    host fill them with fresh keys and lock every other client out.  Each
    I{source address} therefore has caps of its own
    (C{max_connections_per_address}, C{max_handshaking_per_address}),
    checked at accept before any key is seen (L{AddressCaps}).  The source
    is the IPv4 address, or the IPv6 I{/64} (one host usually holds a whole
    /64, so counting single IPv6 addresses would cap nothing).
  - B{Loopback has its own, higher caps}
    (C{max_connections_per_loopback}, C{max_handshaking_per_loopback}):
    local tools, and every client reaching the node through its onion
    service (the Tor daemon connects from 127.0.0.1), come from there.  They
    are still below the port's totals, so a flood through Tor cannot lock
    out clients that connect directly; clients behind Tor can only be told
    apart by their keys.  Each loopback address counts on its own
    (127.0.0.1 and 127.0.0.2 are two sources); a UNIX socket's peers count
    as one loopback source.
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

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Hashable, NamedTuple, Optional

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
    @ivar max_connections_per_address: open connections from one source
        address (see L{source_of}), handshaking or not.
    @ivar max_handshaking_per_address: unfinished handshakes from one source.
    @ivar max_connections_per_loopback: the same for one loopback source,
        which is also where onion-service clients come from.
    @ivar max_handshaking_per_loopback: unfinished handshakes from one
        loopback source.
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
    max_connections_per_address: int = 32
    max_handshaking_per_address: int = 8
    max_connections_per_loopback: int = 512
    max_handshaking_per_loopback: int = 128

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


class Source(NamedTuple):
    """
    Where a connection comes from, as the per-address caps count it.

    @ivar name: the IPv4 address, the IPv6 /64, a loopback address, or
        C{"local"} for a peer that has no IP address (a UNIX socket).
    @ivar loopback: counted against the loopback caps.
    """

    name: str
    loopback: bool


def source_of(address: Any) -> Source:
    """The L{Source} of a connection from C{address} (an L{twisted.internet.interfaces.IAddress})."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return Source("local", True)
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return Source(host, False)  # not an IP address: count it as it was given
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return Source(str(ip), True)
    if isinstance(ip, ipaddress.IPv6Address):
        return Source(str(ipaddress.IPv6Network((ip, 64), strict=False)), False)
    return Source(str(ip), False)


class _SourceCount:
    __slots__ = ("connections", "handshaking", "warned")

    def __init__(self) -> None:
        self.connections = 0
        self.handshaking = 0
        self.warned = False


class AddressCaps:
    """
    Connections and unfinished handshakes open per source address: what
    L{ClientLimits.max_connections_per_address} and friends cap.  A source
    is tracked only while it has a connection open, so the table is never
    larger than the port's connection cap.
    """

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self._open: dict[str, _SourceCount] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, source: Source) -> tuple[int, int]:
        """C{(connections, handshaking)} open from C{source}."""
        count = self._open.get(source.name)
        return (0, 0) if count is None else (count.connections, count.handshaking)

    def caps(self, source: Source) -> tuple[int, int]:
        """C{(max connections, max handshaking)} for C{source}."""
        limits = self.limits
        if source.loopback:
            return limits.max_connections_per_loopback, limits.max_handshaking_per_loopback
        return limits.max_connections_per_address, limits.max_handshaking_per_address

    def refusal(self, source: Source) -> Optional[str]:
        """Why a new connection from C{source} must be refused, or C{None} if it may open."""
        count = self._open.get(source.name)
        if count is None:
            return None
        max_connections, max_handshaking = self.caps(source)
        if count.connections >= max_connections:
            return f"{count.connections} connections open from {source.name} (limit {max_connections} per address)"
        if count.handshaking >= max_handshaking:
            return f"{count.handshaking} handshakes in progress from {source.name} (limit {max_handshaking} per address)"
        return None

    def first_refusal(self, source: Source) -> bool:
        """
        True the first time a source is refused since it last had no
        connection: a flood is logged once, not once per connection.
        """
        count = self._open.get(source.name)
        if count is None or count.warned:
            return False
        count.warned = True
        return True

    def opened(self, source: Source) -> None:
        """A connection from C{source} is open and handshaking."""
        count = self._open.get(source.name)
        if count is None:
            count = self._open[source.name] = _SourceCount()
        count.connections += 1
        count.handshaking += 1

    def authenticated(self, source: Source) -> None:
        """One of its handshakes completed."""
        self._open[source.name].handshaking -= 1

    def closed(self, source: Source, handshaking: bool) -> None:
        """One of its connections is gone (C{handshaking}: before its handshake completed)."""
        count = self._open[source.name]
        count.connections -= 1
        if handshaking:
            count.handshaking -= 1
        if count.connections == 0:
            del self._open[source.name]
