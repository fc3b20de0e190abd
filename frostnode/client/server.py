# -*- test-case-name: tests.test_client_server -*-
"""
The node's client port: Noise over TCP, requests in, answers out.

L{ClientServerProtocol} is the thin shell around the pure pieces
(L{frostnode.client.handshake}, L{frostnode.client.messages},
L{frostnode.client.limits}); the work is L{frostnode.client.api.NodeAPI}'s.
It is a different port, prologue and protocol from the peer links: a client
never reaches a member-only message, and nothing a client sends is handed
to the links.

Lifecycle of one connection::

    connected --(XX handshake, handshake_timeout)--> serving --(idle_timeout)--> closed
        |                                              |
        +-- over max_connections / max_handshaking,    +-- undecryptable frame, oversized request,
            in total or from its source address            handshake garbage: closed, one log line
            (refused at accept)

What a hostile client can and cannot do:

  - B{Garbage.}  Before the handshake ends frames are capped at 1 KiB; a
    frame that fails Noise authentication closes the connection (the stream
    cannot be resynchronised).  A well-encrypted but malformed request gets
    C{invalid-request} and the connection stays.
  - B{Size.}  A request whose declared length is over C{max_request_size}
    is answered C{too-large} as soon as its 8-byte head is in, and the
    connection is closed without reading the body.
  - B{Many keys.}  A static key costs nothing, so the connection and
    handshake caps are also counted per source address
    (L{frostnode.client.limits.AddressCaps}): one host opening connections
    with fresh keys fills its own share, not the port, and clients from
    other addresses still get in.  A refused source is logged once per
    flood, not once per connection.
  - B{Rate and concurrency.}  Every request is charged to the client's
    token bucket and in-flight count (L{frostnode.client.limits}); requests
    over either are answered C{rate-limited} at once, without touching the
    log.
  - B{Not reading answers.}  The transport is registered as its own
    streaming producer: when its write buffer is full it stops reading from
    the socket, so a client that floods requests without reading the
    answers stalls only itself.
  - Every failure closes only that connection; the node, and every other
    client, carry on.

Answers queued during one reactor turn leave together at its end (one
C{writeSequence}, as few Noise messages as possible), as on the peer links.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from frostnode.client.api import ClientContext, NodeAPI
from frostnode.client.errors import INTERNAL, ClientError, invalid_request, too_large
from frostnode.client.handshake import ClientHandshake, NodeHello, decode_client_hello
from frostnode.client.limits import AddressCaps, ClientLimits, ClientRegistry, ClientState, Source, source_of
from frostnode.client.messages import FrameReader, Oversized, decode_request, encode_error, encode_frame, encode_ok
from frostnode.net.errors import LinkViolation
from frostnode.net.framing import split_plaintext
from frostnode.net.listening import ListeningService, describe_address
from frostnode.net.listening import OneShotObserver
from frostnode.net.noise import MAX_HANDSHAKE_MESSAGE, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, NoiseTransport
from frostnode.wire import DecodeError

_PREFIX = struct.Struct(">H")
#: Flush at once, not at the end of the turn, when this much is queued.
_FLUSH_THRESHOLD = 16 * MAX_PLAINTEXT


class ClientCounters:
    """Totals since start, for status and tests."""

    __slots__ = ("connections", "refused", "refused_by_address", "handshakes_failed", "violations", "requests",
                 "rate_limited", "too_large", "bytes_in")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class ClientServerProtocol(Int16StringReceiver):
    """
    One client connection on the node's side.

    @ivar source: where it comes from, as the per-address caps count it.
    @ivar client_key: the client's authenticated Noise static key, once known.
    @ivar in_flight: this connection's requests not answered yet.
    @ivar bytes_in: bytes received on this connection (frames and prefixes).
    """

    log = Logger()
    MAX_LENGTH = MAX_HANDSHAKE_MESSAGE

    def __init__(self, factory: "ClientServerFactory", source: Source = Source("local", True)) -> None:
        self.factory = factory
        self.source = source
        self.clock = factory.clock
        self.limits = factory.limits
        self.client_key: Optional[bytes] = None
        self.address = "?"
        self.closing = False
        self.close_reason: Optional[str] = None
        self.in_flight = 0
        self.bytes_in = 0
        self._hs: Optional[ClientHandshake] = None
        self._noise: Optional[NoiseTransport] = None
        self._frames = FrameReader(self.limits.max_request_size)
        self._state: Optional[ClientState] = None
        self._context: Optional[ClientContext] = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_call: Optional[IDelayedCall] = None
        self._hs_timer: Optional[IDelayedCall] = None
        self._idle_call: Optional[IDelayedCall] = None
        self._last_rx = 0.0
        self._warned_rate = False
        self._closed = OneShotObserver()

    def __repr__(self) -> str:
        who = self.client_key.hex()[:16] if self.client_key else "unauthenticated"
        return f"<ClientServerProtocol {who} at {self.address}>"

    # -- connection events ---------------------------------------------------------------

    def connectionMade(self) -> None:
        self.address = describe_address(self.transport.getPeer())
        self.factory._opened(self)
        # Back-pressure: stop reading while our answers sit unread in the write buffer.
        self.transport.registerProducer(self.transport, True)
        self._hs = ClientHandshake(self.factory.noise_private, False, self.factory.hello, self._authenticate)
        self._hs_timer = self.clock.callLater(self.limits.handshake_timeout, self._handshake_timed_out)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._cancel_timers()
        self._out = []
        self.factory._closed(self)
        if self._state is not None:
            self.factory.registry.detach(self._state, self.clock.seconds())
        self._closed.fire(None)

    def when_closed(self) -> Deferred:
        """Fires once the connection is gone."""
        return self._closed.observe()

    def lengthLimitExceeded(self, length: int) -> None:
        self.fail(f"frame of {length} bytes over the {self.MAX_LENGTH}-byte limit")

    # -- inbound ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.factory.counters.bytes_in += len(data)
        super().dataReceived(data)

    def stringReceived(self, frame: bytes) -> None:
        if self.closing:
            return
        noise = self._noise
        if noise is not None:
            self._last_rx = self.clock.seconds()
            try:
                items = self._frames.feed(noise.decrypt(frame))
            except LinkViolation as e:
                self.fail(e.reason)
                return
            for item in items:
                if self.closing:
                    return
                if isinstance(item, Oversized):
                    self._oversized(item)
                    return
                self._request(item.request_id, item.body)
            return
        assert self._hs is not None
        try:
            replies = self._hs.receive(frame)
        except LinkViolation as e:
            self.fail(e.reason)
            return
        for message in replies:
            self.transport.write(_PREFIX.pack(len(message)) + message)
        if self._hs.complete:
            self._handshake_complete()

    def _authenticate(self, remote_key: bytes, payload: bytes) -> None:
        decode_client_hello(payload)

    def _handshake_complete(self) -> None:
        assert self._hs is not None
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.client_key = self._hs.remote_static
        self._noise = self._hs.transport()
        self._hs = None
        self.MAX_LENGTH = MAX_NOISE_MESSAGE
        now = self.clock.seconds()
        self._last_rx = now
        self._state = self.factory.registry.attach(self.client_key, now)
        self._context = ClientContext(self.client_key, self.address, "noise")
        self.factory._authenticated(self)
        self.log.debug("client {client} connected from {address}", client=self.client_key.hex(), address=self.address)
        self._idle_call = self.clock.callLater(self.limits.idle_timeout, self._idle_check)

    def _request(self, request_id: int, body: bytes) -> None:
        counters = self.factory.counters
        counters.requests += 1
        state = self._state
        assert state is not None and self._context is not None
        now = self.clock.seconds()
        refused = self.factory.registry.admit(state, now)
        if refused is not None:
            counters.rate_limited += 1
            if not self._warned_rate:
                self._warned_rate = True
                self.log.info("client {client} at {address} is rate limited: {reason}",
                              client=self.client_key.hex(), address=self.address, reason=refused.message)
            self._answer(request_id, encode_error(refused))
            return
        try:
            command, args = decode_request(body)
        except DecodeError as e:
            self.factory.registry.done(state, now)
            self._answer(request_id, encode_error(invalid_request(str(e))))
            return
        self.in_flight += 1
        d = self.factory.api.call(self._context, command, args)
        d.addBoth(self._answered, request_id, command, state)

    def _answered(self, result: Any, request_id: int, command: str, state: ClientState) -> None:
        self.in_flight -= 1
        self.factory.registry.done(state, self.clock.seconds())
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, ClientError):  # NodeAPI.call promises ClientError; do not trust it blindly
                self.log.failure("command {command} failed outside the API's error handling", result, command=command)
                error = ClientError(INTERNAL, f"internal error serving {command!r}; the node logged the details")
            body = encode_error(error)
        elif isinstance(result, bytes):
            body = encode_ok(result)
        else:
            self.log.error("command {command} returned {kind}, not bytes", command=command, kind=type(result).__name__)
            body = encode_error(ClientError(INTERNAL, f"internal error serving {command!r}; the node logged the details"))
        if not self.closing:
            self._answer(request_id, body)

    def _oversized(self, item: Oversized) -> None:
        self.factory.counters.too_large += 1
        self._answer(item.request_id, encode_error(too_large(
            f"request of {item.length} bytes over the node's limit of {item.limit} bytes; closing the connection")))
        self.flush()
        self.log.info("client {client} at {address} announced a {length}-byte request (limit {limit}): closing",
                      client=self.client_key.hex() if self.client_key else None, address=self.address,
                      length=item.length, limit=item.limit)
        self.close("oversized request")

    # -- outbound ---------------------------------------------------------------------------

    def _answer(self, request_id: int, body: bytes) -> None:
        frame = encode_frame(request_id, body)
        self._out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= _FLUSH_THRESHOLD:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self.closing or self._noise is None or not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._out_size = 0
        encrypt = self._noise.encrypt
        frames = []
        for chunk in split_plaintext(data, MAX_PLAINTEXT):
            ciphertext = encrypt(chunk)
            frames.append(_PREFIX.pack(len(ciphertext)))
            frames.append(ciphertext)
        self.transport.writeSequence(frames)

    # -- timers -----------------------------------------------------------------------------

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        self.fail(f"handshake not complete after {self.limits.handshake_timeout:g}s")

    def _idle_check(self) -> None:
        self._idle_call = None
        if self.closing:
            return
        now = self.clock.seconds()
        quiet = now - self._last_rx
        if quiet >= self.limits.idle_timeout and self.in_flight == 0:
            self.log.debug("client {client} idle for {seconds:g}s: closing", client=self.client_key.hex(), seconds=quiet)
            self.close("idle")
            return
        self._idle_call = self.clock.callLater(max(self.limits.idle_timeout - quiet, 1.0), self._idle_check)

    def _cancel_timers(self) -> None:
        for name in ("_flush_call", "_hs_timer", "_idle_call"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- closing ----------------------------------------------------------------------------

    def fail(self, reason: str) -> None:
        """The client broke the protocol: one log line, and this connection is dropped."""
        if self.closing:
            return
        if self._noise is None:
            self.factory.counters.handshakes_failed += 1
        else:
            self.factory.counters.violations += 1
        self.log.warn("dropping client {client} at {address}: {reason}",
                      client=self.client_key.hex() if self.client_key else "(unauthenticated)",
                      address=self.address, reason=reason)
        self.close(reason, abort=True)

    def close(self, reason: str, abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self._cancel_timers()
        self._out = []
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()


class ClientServerFactory(Factory):
    """
    Builds client connections and holds what they share: the API, the
    per-client limits and the connection caps.

    @param api: the command table and operations.
    @param noise_private: the node's Noise static secret (the card's Noise key).
    @param clock: every timer of the port.
    """

    log = Logger()

    def __init__(self, api: NodeAPI, noise_private: bytes, clock: IReactorTime,
                 limits: Optional[ClientLimits] = None) -> None:
        self.api = api
        self.noise_private = noise_private
        self.clock = clock
        self.limits = limits or api.limits
        self.registry = ClientRegistry(self.limits)
        self.address_caps = AddressCaps(self.limits)
        self.hello = NodeHello(api.host_key, self.limits.max_request_size, self.limits.max_in_flight).encode()
        self.counters = ClientCounters()
        self.connections: set[ClientServerProtocol] = set()
        self.handshaking: set[ClientServerProtocol] = set()

    def buildProtocol(self, addr: Any) -> Optional[ClientServerProtocol]:
        # Returning None makes Twisted close the accepted socket at once.
        # The source's caps first: a flood from one source is refused (and
        # logged, once) as that source's, before it can reach the port's.
        source = source_of(addr)
        refusal = self.address_caps.refusal(source)
        if refusal is not None:
            self.counters.refused += 1
            self.counters.refused_by_address += 1
            if self.address_caps.first_refusal(source):
                self.log.warn("refusing client connections from {source}: {reason} (logged once until it has "
                              "none open)", source=source.name, reason=refusal, address=describe_address(addr))
            return None
        if len(self.connections) >= self.limits.max_connections:
            self.counters.refused += 1
            self.log.warn("refusing client connection from {address}: {count} connections open (limit)",
                          address=describe_address(addr), count=len(self.connections))
            return None
        if len(self.handshaking) >= self.limits.max_handshaking:
            self.counters.refused += 1
            self.log.warn("refusing client connection from {address}: {count} handshakes in progress (limit)",
                          address=describe_address(addr), count=len(self.handshaking))
            return None
        return ClientServerProtocol(self, source)

    def _opened(self, protocol: ClientServerProtocol) -> None:
        self.counters.connections += 1
        self.connections.add(protocol)
        self.handshaking.add(protocol)
        self.address_caps.opened(protocol.source)

    def _authenticated(self, protocol: ClientServerProtocol) -> None:
        if protocol in self.handshaking:
            self.handshaking.discard(protocol)
            self.address_caps.authenticated(protocol.source)

    def _closed(self, protocol: ClientServerProtocol) -> None:
        if protocol not in self.connections:
            return
        handshaking = protocol in self.handshaking
        self.connections.discard(protocol)
        self.handshaking.discard(protocol)
        self.address_caps.closed(protocol.source, handshaking)


class ClientPortService(ListeningService):
    """
    Listens on the client port while running; stopping closes every client
    connection.  Answers still being computed (a submit waiting for its
    fsync) complete in the store but are not sent.

    @param endpoint: where to listen (C{[client] listen}).
    """

    what = "client port"

    def __init__(self, api: NodeAPI, noise_private: bytes, endpoint: IStreamServerEndpoint,
                 clock: IReactorTime, limits: Optional[ClientLimits] = None) -> None:
        super().__init__(endpoint, ClientServerFactory(api, noise_private, clock, limits))

    def stopService(self) -> Deferred:
        waits = [super().stopService()]
        for conn in list(self.factory.connections):
            waits.append(conn.when_closed())
            conn.close("node stopping", abort=True)
        return DeferredList([d for d in waits if d is not None]).addCallback(lambda _: None)
