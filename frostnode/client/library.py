# -*- test-case-name: tests.test_client_server -*-
"""
The Deferred-based client library: connect to any node over Noise, then
C{submit}, C{get}, C{topic}, C{status}, C{pubkey}, C{sign}, C{checkpoint}
and C{checkpoints}, or any command by name (L{FrostnodeClient.call}, for
commands a node adds later).

Connecting:

  - The target is a L{NodeTarget}: where the node's client port is, and its
    Noise static key; usually built from the node's address card
    (L{NodeTarget.from_card_file}), whose binding signature is checked, or
    from C{HOST:PORT} and the key in hex.  The handshake is abandoned, and
    our own static key never sent, if the node's key is not that one
    (L{WrongNodeKey}); with a card, the host key the node names in its
    hello must be the card's too.
  - An address card lists the node's I{peer} addresses, which clients must
    not use.  A card file may carry an extra, unsigned C{"client_addresses"}
    list (client endpoint strings such as C{"tcp:192.0.2.7:9001"}); the
    address needs no signature, because the Noise key, which is signed, is
    what authenticates the node.  Without it, give the address separately.

Using a connection:

  - Requests are pipelined and answered in any order.  The library never
    has more requests out than the node's C{max_in_flight} (announced in its
    hello): the rest wait in a local queue.  A request over the node's
    C{max_request_size} fails locally with C{too-large}, without being sent.
  - Each request has a timeout on the injected clock (C{timeout}, counted
    from the call, queue time included); a request that timed out keeps its
    slot until the node answers it, so the node's in-flight count and ours
    agree.
  - C{submit} builds the record body itself (client key = our static key,
    C{timestamp} = microseconds since the epoch by the clock, C{nonce} = 16
    random bytes unless given) and checks that the id the node returns is
    that body's hash.  To retry a submission safely after a lost
    connection, pass the same C{timestamp} and C{nonce}: the node's log is
    idempotent and answers with the same id (C{created} false).
  - Records returned by C{get} and C{topic} are checked against their ids.
  - Signatures returned by C{sign} are verified under the key the node
    names, and checkpoints against their own statements
    (L{frostnode.signing.commands}); C{bad-response} otherwise.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from typing import Any, Optional, Union

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from frostnode.client.errors import (
    WRONG_NODE_KEY, BadResponse, ClientError, ConnectionFailed, RequestTimeout, WrongNodeKey, invalid_request,
    too_large,
)
from frostnode.client.handshake import ClientHandshake, NodeHello, encode_client_hello
from frostnode.client.keys import client_public_key, generate_client_key
from frostnode.client.messages import (
    Accepted, FrameReader, Oversized, PublicKeys, Record, SubmitArgs, TopicArgs, TopicPage, decode_response,
    decode_status, encode_frame, encode_get_args, encode_request,
)
from frostnode.identity import AddressCard, InvalidCard
from frostnode.net.errors import LinkViolation, UnsupportedAddress
from frostnode.net.framing import split_plaintext
from frostnode.net.noise import MAX_HANDSHAKE_MESSAGE, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, NoiseTransport
from frostnode.net.peers import parse_tcp_address
from frostnode.signing.commands import (
    CheckpointPage, CheckpointsArgs, SignArgs, SignResult, check_checkpoint, check_sign_result, decode_checkpoint,
    scheme_request,
)
from frostnode.signing.suites import BIP445
from frostnode.store.errors import InvalidRecord
from frostnode.wire import MAX_U32, DecodeError

_PREFIX = struct.Struct(">H")
#: Largest answer a client accepts by default (a topic page is capped by the node at a few MiB).
DEFAULT_MAX_ANSWER = 64 << 20
DEFAULT_NONCE_SIZE = 16


class NodeTarget:
    """
    Where a node's client port is and which Noise key it must present.

    @ivar host_key: the node's host key when known (from a card): the node's
        hello must name it.
    """

    def __init__(self, host: str, port: int, noise_key: bytes, host_key: Optional[bytes] = None) -> None:
        if len(noise_key) != 32:
            raise ValueError("a node's Noise key is 32 bytes (64 hex digits)")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not in 1..65535")
        self.host = host
        self.port = port
        self.noise_key = bytes(noise_key)
        self.host_key = host_key

    def __repr__(self) -> str:
        return f"NodeTarget({self.host}:{self.port}, noise key {self.noise_key.hex()[:16]}...)"

    @staticmethod
    def parse_address(address: str) -> tuple[str, int]:
        """C{HOST:PORT}, C{[V6]:PORT}, or a C{tcp:} client endpoint string, as C{(host, port)}."""
        text = address if address.startswith("tcp:") else "tcp:" + address
        try:
            return parse_tcp_address(text)
        except UnsupportedAddress as e:
            raise ValueError(str(e)) from None

    @classmethod
    def from_address(cls, address: str, noise_key_hex: str) -> "NodeTarget":
        try:
            key = bytes.fromhex(noise_key_hex)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"node key must be 64 hex digits (the card's noise_key), not {noise_key_hex!r}")
        host, port = cls.parse_address(address)
        return cls(host, port, key)

    @classmethod
    def from_card(cls, card: Union[AddressCard, dict], address: Optional[str] = None) -> "NodeTarget":
        """
        From a node's card (a verified L{AddressCard}, or its JSON object,
        verified here) and the client port's address: C{address} if given,
        else the card object's first C{client_addresses} entry.

        @raise ValueError: an invalid card, or no client address.
        """
        extra: list = []
        if isinstance(card, dict):
            extra = card.get("client_addresses") or []
            if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
                raise ValueError("card's client_addresses must be a list of strings")
            try:
                card = AddressCard.from_dict(card)
            except InvalidCard as e:
                raise ValueError(f"invalid address card: {e}") from None
        else:
            card.verify()
        if address is None:
            if not extra:
                raise ValueError(f"the card of node {card.host_key.hex()} lists no client_addresses: "
                                 f"give the client port's address (--node HOST:PORT)")
            address = extra[0]
        host, port = cls.parse_address(address)
        return cls(host, port, card.noise_key, card.host_key)

    @classmethod
    def from_card_file(cls, path: str, address: Optional[str] = None) -> "NodeTarget":
        import json

        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f"cannot read card file {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"card file {path} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"card file {path} does not hold a JSON object")
        return cls.from_card(data, address)


class _Pending:
    __slots__ = ("command", "deferred", "timer", "frame", "sent")

    def __init__(self, command: str, deferred: Deferred, frame: bytes) -> None:
        self.command = command
        self.deferred = deferred
        self.frame = frame
        self.timer: Optional[IDelayedCall] = None
        self.sent = False


class _ClientProtocol(Int16StringReceiver):
    """The client end of one connection: handshake, then frames to and from L{FrostnodeClient}."""

    MAX_LENGTH = MAX_HANDSHAKE_MESSAGE

    def __init__(self, target: NodeTarget, private_key: bytes, max_answer: int) -> None:
        self.target = target
        self._private = private_key
        self._frames = FrameReader(max_answer)
        self._hs: Optional[ClientHandshake] = None
        self._noise: Optional[NoiseTransport] = None
        self.hello: Optional[NodeHello] = None
        self.ready: Deferred = Deferred()
        self.client: Optional["FrostnodeClient"] = None
        self.error: Optional[ClientError] = None
        self.lost = False

    def connectionMade(self) -> None:
        self._hs = ClientHandshake(self._private, True, encode_client_hello(), self._authenticate)
        for message in self._hs.start():
            self.transport.write(_PREFIX.pack(len(message)) + message)

    def _authenticate(self, remote_key: bytes, payload: bytes) -> None:
        if remote_key != self.target.noise_key:
            raise WrongNodeKey(self.target.noise_key, remote_key)
        hello = NodeHello.decode(payload)
        if self.target.host_key is not None and hello.host_key != self.target.host_key:
            raise ClientError(WRONG_NODE_KEY, f"node says it is member {hello.host_key.hex()}, "
                                              f"the card is for {self.target.host_key.hex()}")
        self.hello = hello

    def stringReceived(self, frame: bytes) -> None:
        if self.error is not None:
            return
        if self._noise is not None:
            try:
                items = self._frames.feed(self._noise.decrypt(frame))
            except LinkViolation as e:
                self.abandon(BadResponse(f"node sent an undecryptable frame: {e.reason}"))
                return
            for item in items:
                if isinstance(item, Oversized):
                    self.abandon(BadResponse(f"node announced a {item.length}-byte answer (our limit: {item.limit})"))
                    return
                if self.client is not None:
                    self.client._answer(item.request_id, item.body)
            return
        assert self._hs is not None
        try:
            replies = self._hs.receive(frame)
        except ClientError as e:
            self.abandon(e)
            return
        except LinkViolation as e:
            self.abandon(ConnectionFailed(f"handshake with {self.target.host}:{self.target.port} failed: {e.reason}"))
            return
        for message in replies:
            self.transport.write(_PREFIX.pack(len(message)) + message)
        if self._hs.complete:
            self._noise = self._hs.transport()
            self._hs = None
            self.MAX_LENGTH = MAX_NOISE_MESSAGE
            self.ready.callback(self)

    def lengthLimitExceeded(self, length: int) -> None:
        self.abandon(BadResponse(f"node sent a {length}-byte frame over the {self.MAX_LENGTH}-byte limit"))

    def send_frames(self, frames: list[bytes]) -> None:
        assert self._noise is not None
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        out = []
        for chunk in split_plaintext(data, MAX_PLAINTEXT):
            ciphertext = self._noise.encrypt(chunk)
            out.append(_PREFIX.pack(len(ciphertext)))
            out.append(ciphertext)
        self.transport.writeSequence(out)

    def abandon(self, error: ClientError) -> None:
        """Give up on this connection with C{error} as the reason."""
        if self.error is None:
            self.error = error
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        error = self.error or ConnectionFailed(
            f"connection to {self.target.host}:{self.target.port} lost"
            + (f" ({reason.getErrorMessage()})" if reason is not None else ""))
        if not self.ready.called:
            self.ready.errback(error)
        if self.client is not None:
            self.client._lost(error)


class FrostnodeClient:
    """
    A connection to one node.  Make one with L{connect}.

    @ivar node_host_key: the host key the node named in its hello.
    @ivar client_key: our static public key, the client key of our records.
    @ivar max_request_size: the node's request limit.
    @ivar max_in_flight: how many requests we keep out at once.
    """

    log = Logger()

    def __init__(self, protocol: _ClientProtocol, private_key: bytes, clock: IReactorTime,
                 timeout: float = 30.0) -> None:
        assert protocol.hello is not None
        self._protocol = protocol
        self.clock = clock
        self.timeout = timeout
        self.client_key = client_public_key(private_key)
        self.node_host_key = protocol.hello.host_key
        self.max_request_size = protocol.hello.max_request_size
        self.max_in_flight = protocol.hello.max_in_flight
        self._pending: dict[int, _Pending] = {}
        self._queue: deque[tuple[int, _Pending]] = deque()
        self._next_id = 1
        self._out_count = 0  # requests sent and not answered (timed-out ones included)
        self._closed: Optional[ClientError] = None
        self._close_waiters: list[Deferred] = []
        self._out: list[bytes] = []
        self._flush_call: Optional[IDelayedCall] = None
        protocol.client = self
        if protocol.lost:
            self._lost(protocol.error or ConnectionFailed("connection lost during the handshake"))

    @property
    def connected(self) -> bool:
        return self._closed is None

    # -- generic requests ----------------------------------------------------------------------

    def call(self, command: str, args: bytes = b"", timeout: Optional[float] = None) -> Deferred:
        """
        Send one request; a Deferred of the result's bytes, or failing with a
        L{ClientError}.  Commands a node registers later (C{sign}) are used
        through this, with their own argument and result codecs.
        """
        if self._closed is not None:
            return fail(self._closed)
        try:
            body = encode_request(command, args)
        except ValueError as e:
            return fail(invalid_request(str(e)))
        if len(body) > self.max_request_size:
            return fail(too_large(f"{command} request of {len(body)} bytes is over the node's limit of "
                                  f"{self.max_request_size} bytes (not sent)"))
        request_id = self._take_id()
        d: Deferred = Deferred()
        pending = _Pending(command, d, encode_frame(request_id, body))
        self._pending[request_id] = pending
        seconds = self.timeout if timeout is None else timeout
        pending.timer = self.clock.callLater(seconds, self._timed_out, request_id, seconds)
        self._queue.append((request_id, pending))
        self._pump()
        return d

    def _take_id(self) -> int:
        while True:
            request_id = self._next_id
            self._next_id = 1 if self._next_id >= MAX_U32 else self._next_id + 1
            if request_id not in self._pending:
                return request_id

    def _pump(self) -> None:
        """Send queued requests while fewer than C{max_in_flight} are out."""
        while self._queue and self._out_count < self.max_in_flight:
            request_id, pending = self._queue.popleft()
            if self._pending.get(request_id) is not pending or pending.deferred.called:
                continue  # timed out while queued
            pending.sent = True
            self._out_count += 1
            self._out.append(pending.frame)
            pending.frame = b""
        if self._out and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._out and self._closed is None:
            frames, self._out = self._out, []
            self._protocol.send_frames(frames)

    def _timed_out(self, request_id: int, seconds: float) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        pending.timer = None
        if not pending.sent:
            del self._pending[request_id]
        pending.deferred.errback(RequestTimeout(pending.command, seconds))

    def _answer(self, request_id: int, body: bytes) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None or not pending.sent:
            if pending is not None:
                self._pending[request_id] = pending
            self._protocol.abandon(BadResponse(f"node answered request {request_id}, which is not outstanding"))
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self._out_count -= 1
        self._pump()
        if pending.deferred.called:
            return  # timed out already; the answer only freed its slot
        try:
            result = decode_response(body)
        except ClientError as e:
            pending.deferred.errback(e)
            return
        except DecodeError as e:
            pending.deferred.errback(BadResponse(f"malformed answer to {pending.command}: {e}"))
            return
        pending.deferred.callback(result)

    def _lost(self, error: ClientError) -> None:
        if self._closed is None:
            self._closed = error
        pending, self._pending = self._pending, {}
        self._queue.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        for p in pending.values():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
            if not p.deferred.called:
                p.deferred.errback(error)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> Deferred:
        """Close the connection; requests still out fail with C{connection}.  Fires once closed."""
        if self._protocol.lost:
            return succeed(None)
        d: Deferred = Deferred()
        self._close_waiters.append(d)
        if self._closed is None:
            self._closed = ConnectionFailed("connection closed by the client")
            self._protocol.error = self._closed
        self._protocol.transport.loseConnection()
        return d

    # -- the built-in commands ----------------------------------------------------------------

    def submit(self, topic: str, payload: bytes, *, timestamp: Optional[int] = None,
               nonce: Optional[bytes] = None, timeout: Optional[float] = None) -> Deferred:
        """
        Submit one record; a Deferred of L{Accepted} once the node has it on
        disk.  Fails with C{invalid-request} locally for a malformed topic or
        nonce, and with C{too-large} locally if over the node's limit.
        """
        if timestamp is None:
            timestamp = int(self.clock.seconds() * 1_000_000)
        if nonce is None:
            nonce = os.urandom(DEFAULT_NONCE_SIZE)
        args = SubmitArgs(topic, payload, timestamp, nonce)
        try:
            expected = args.body(self.client_key).record_id
            encoded = args.encode()
        except (InvalidRecord, ValueError) as e:
            return fail(invalid_request(str(e)))
        d = self.call("submit", encoded, timeout)
        d.addCallback(self._check_accepted, expected)
        return d

    @staticmethod
    def _check_accepted(result: bytes, expected: bytes) -> Accepted:
        accepted = _decode(Accepted.decode, result, "submit")
        if accepted.record_id != expected:
            raise BadResponse(f"node accepted record {accepted.record_id.hex()}, but the submission's id is "
                              f"{expected.hex()}")
        return accepted

    def get(self, record_id: bytes, timeout: Optional[float] = None) -> Deferred:
        """One record by id: a Deferred of L{Record} (C{not-found} if this node does not hold it)."""
        if not isinstance(record_id, bytes) or len(record_id) != 32:
            return fail(invalid_request("a record id is 32 bytes"))
        d = self.call("get", encode_get_args(record_id), timeout)
        d.addCallback(lambda raw: _decode(Record.decode, raw, "get"))
        d.addCallback(_check_id, record_id)
        return d

    def topic(self, topic: str, from_position: int = 1, limit: int = 100,
              timeout: Optional[float] = None) -> Deferred:
        """A page of C{topic}'s records on this node: a Deferred of L{TopicPage}."""
        try:
            args = TopicArgs(topic, from_position, limit).encode()
        except ValueError as e:
            return fail(invalid_request(str(e)))
        d = self.call("topic", args, timeout)
        d.addCallback(lambda raw: _decode(TopicPage.decode, raw, "topic"))
        return d

    def status(self, timeout: Optional[float] = None) -> Deferred:
        """The node's status report (a dict, as JSON)."""
        return self.call("status", b"", timeout).addCallback(lambda raw: _decode(decode_status, raw, "status"))

    def pubkey(self, timeout: Optional[float] = None) -> Deferred:
        """The federation's keys: a Deferred of L{PublicKeys} (C{unavailable} before the first DKG)."""
        return self.call("pubkey", b"", timeout).addCallback(lambda raw: _decode(PublicKeys.decode, raw, "pubkey"))

    # -- signing ---------------------------------------------------------------------------------

    def sign(self, scheme: str, request: Any, ciphersuite: str = BIP445, audit: bool = False,
             timeout: Optional[float] = None) -> Deferred:
        """
        Ask the federation, through this node, to sign what C{scheme} makes
        of C{request}; a Deferred of L{SignResult}, whose signature the
        library has verified under its C{key} (compare the key with
        L{pubkey}'s C{output_key} for BIP 445).

        @param request: the scheme's request bytes, or its JSON form (a
            dict, list, ...), converted here by the scheme's
            C{request_from_json} (the built-in C{record} and C{ledger}, and
            schemes installed on this side).
        @param ciphersuite: C{"bip445"} (BIP340 under the Taproot output
            key) or C{"rfc9591"} (under the internal key).
        @param audit: wait for every member's verdict, so that the result
            names every divergent member.
        @return: fails with a L{ClientError}: C{views-differ} (its
            C{members} name who), C{validation-failed}, C{not-enough-signers},
            C{timeout}, C{unavailable} (no key yet), C{invalid-request}.
        """
        try:
            args = SignArgs(scheme, scheme_request(scheme, request), ciphersuite, audit).encode()
        except ValueError as e:
            return fail(invalid_request(str(e)))
        d = self.call("sign", args, timeout)
        d.addCallback(lambda raw: _decode(SignResult.decode, raw, "sign"))
        d.addCallback(_checked, check_sign_result, scheme, ciphersuite)
        return d

    def checkpoint(self, timeout: Optional[float] = None) -> Deferred:
        """
        The newest checkpoint this node signed, verified: a Deferred of
        L{Checkpoint} (C{not-found} before the first).
        """
        d = self.call("checkpoint", b"", timeout)
        d.addCallback(lambda raw: _decode(decode_checkpoint, raw, "checkpoint"))
        return d.addCallback(_checked, check_checkpoint)

    def checkpoints(self, from_seq: int = 1, limit: int = 100, timeout: Optional[float] = None) -> Deferred:
        """
        This node's checkpoints numbered C{from_seq} and up, oldest first,
        each verified: a Deferred of L{CheckpointPage}.
        """
        try:
            args = CheckpointsArgs(from_seq, limit).encode()
        except ValueError as e:
            return fail(invalid_request(str(e)))
        d = self.call("checkpoints", args, timeout)
        d.addCallback(lambda raw: _decode(CheckpointPage.decode, raw, "checkpoints"))

        def verified(page: CheckpointPage) -> CheckpointPage:
            for cp in page.checkpoints:
                _checked(cp, check_checkpoint)
            return page
        return d.addCallback(verified)


def _decode(decoder: Any, raw: bytes, command: str) -> Any:
    try:
        return decoder(raw)
    except DecodeError as e:
        raise BadResponse(f"malformed {command} answer: {e}") from None


def _checked(value: Any, check: Any, *args: Any) -> Any:
    try:
        return check(value, *args)
    except ValueError as e:
        raise BadResponse(str(e)) from None


def _check_id(record: Record, record_id: bytes) -> Record:
    if record.record_id != record_id:
        raise BadResponse(f"asked for record {record_id.hex()}, node sent {record.record_id.hex()}")
    return record


def connect(
    reactor: Any,
    target: NodeTarget,
    private_key: Optional[bytes] = None,
    *,
    connect_timeout: float = 10.0,
    timeout: float = 30.0,
    max_answer_size: int = DEFAULT_MAX_ANSWER,
) -> Deferred:
    """
    Connect to C{target} and complete the handshake; a Deferred of a
    L{FrostnodeClient}, or failing with L{ConnectionFailed}, L{WrongNodeKey}
    or L{RequestTimeout}.

    @param reactor: provides TCP and time (the clock of every timeout).
    @param private_key: our static secret; C{None} for an ephemeral key.
    @param connect_timeout: for the TCP connection and the handshake together.
    @param timeout: default per-request timeout.
    """
    key = private_key if private_key is not None else generate_client_key()
    protocol = _ClientProtocol(target, key, max_answer_size)
    endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=connect_timeout)
    result: Deferred = Deferred()
    connecting = connectProtocol(endpoint, protocol)

    def timed_out() -> None:
        if not connecting.called:
            connecting.cancel()
        elif not protocol.ready.called:
            protocol.abandon(RequestTimeout("handshake", connect_timeout))

    timer = reactor.callLater(connect_timeout, timed_out)

    def finish(outcome: Any) -> None:
        if timer.active():
            timer.cancel()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(FrostnodeClient(outcome, key, reactor, timeout))

    def tcp_failed(f: Failure) -> None:
        if f.check(CancelledError):
            finish(Failure(RequestTimeout("connect", connect_timeout)))
        else:
            finish(Failure(ConnectionFailed(f"cannot connect to {target.host}:{target.port}: {f.getErrorMessage()}")))

    connecting.addCallbacks(lambda p: p.ready.addBoth(finish), tcp_failed)
    return result
