# -*- test-case-name: tests.test_net_link -*-
"""
One peer link: a TCP connection carrying a Noise session that carries records.

L{LinkProtocol} is the thin Twisted shell around the pure pieces:
L{frostnode.net.noise} (handshake, encryption), L{frostnode.net.framing}
(records, reassembly) and the per-peer reliable state that
L{frostnode.net.peers.PeerNetwork} owns.  It decides nothing about members
or delivery itself; it asks its network.

Lifecycle::

    connected --(Noise XX, handshake timeout)--> authenticated --> established
        |                                                              |
        +--- malformed / unauthentic / not a member / timeout ---------+--> closed (logged)

  - Before the handshake ends, frames are capped at
    L{MAX_HANDSHAKE_MESSAGE} bytes: a peer that has not authenticated cannot
    make us buffer 64 KiB.
  - The link hello, carried encrypted in handshake messages 2 and 3, is
    C{version (u8) = 1 | session epoch (u64)} (L{frostnode.wire}).  The epoch
    reaches the other side before any record, so the reliable layer never
    reads an acknowledgement against the wrong incarnation of a peer.
  - B{Batching.}  Records queued during one reactor turn are written at the
    end of it (C{callLater(0)}), concatenated and cut into as few Noise
    messages as possible, in one C{writeSequence}.  Acknowledgements ride
    along with outgoing data; when there is none they wait at most
    C{ack_delay}.
  - B{Timers} use the injected clock: the handshake timeout, and one timer
    per link that sends a PING when we have sent nothing for
    C{keepalive_interval} and closes the link when we have received nothing
    for C{idle_timeout} (the peer sends PINGs too, so a live peer is never
    idle; a dead TCP peer is noticed).
  - Every failure closes only this link, with one log line naming the
    address, the member (or the offending static key) and the reason.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from frostnode.net.errors import FramingError, HandshakeFailed, LinkViolation, PeerRefused
from frostnode.net.framing import (
    ACK, DATA, PING, RESUME, RecordReader, decode_ack, decode_data, decode_resume,
    encode_ack, encode_ping, split_plaintext,
)
from frostnode.net.listening import OneShotObserver, describe_address
from frostnode.net.noise import MAX_HANDSHAKE_MESSAGE, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, NoiseHandshake, NoiseTransport
from frostnode.wire import DecodeError, Reader, Writer

if TYPE_CHECKING:  # pragma: no cover
    from frostnode.net.peers import PeerNetwork, _Peer

LINK_VERSION = 1
_PREFIX = struct.Struct(">H")
#: Flush at once (not at the end of the turn) when this much is queued.
FLUSH_THRESHOLD = 16 * MAX_PLAINTEXT


def encode_hello(epoch: int) -> bytes:
    """Our handshake payload: link version and session epoch."""
    return Writer().u8(LINK_VERSION).u64(epoch).to_bytes()


def decode_hello(payload: bytes) -> int:
    """The peer's session epoch from its handshake payload."""
    try:
        r = Reader(payload, "link hello")
        r.version(LINK_VERSION)
        epoch = r.u64()
        r.finish()
    except DecodeError as e:
        raise HandshakeFailed(str(e)) from None
    return epoch


class LinkProtocol(Int16StringReceiver):
    """
    A link to (or from) one member.

    @ivar expected: the host key we dialled; None for an inbound connection.
    @ivar peer: the member's per-peer state, once the handshake authenticated it.
    @ivar peer_epoch: the session epoch from the peer's hello.
    @ivar established: the handshake completed and the network accepted the link.
    @ivar closing: we closed (or lost) the link; nothing more is read or written.
    """

    log = Logger()
    MAX_LENGTH = MAX_HANDSHAKE_MESSAGE

    def __init__(self, network: "PeerNetwork", expected: Optional[bytes] = None) -> None:
        self.network = network
        self.expected = expected
        self.outbound = expected is not None
        self.peer: Optional["_Peer"] = None
        self.peer_epoch: Optional[int] = None
        self.remote_key: Optional[bytes] = None
        self.established = False
        self.closing = False
        self.close_reason: Optional[str] = None
        self.address = "?"
        self._clock = network.clock
        self._config = network.config
        self._counters = network.counters
        self._hs: Optional[NoiseHandshake] = None
        self._noise: Optional[NoiseTransport] = None
        self._records = RecordReader(self._config.max_message_size)
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_call: Optional[IDelayedCall] = None
        self._ack_call: Optional[IDelayedCall] = None
        self._hs_timer: Optional[IDelayedCall] = None
        self._tick_call: Optional[IDelayedCall] = None
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._closed = OneShotObserver()

    def __repr__(self) -> str:
        who = self.peer.name if self.peer is not None else "unauthenticated"
        return f"<LinkProtocol {'to' if self.outbound else 'from'} {who} at {self.address}>"

    # -- connection events -------------------------------------------------------

    def connectionMade(self) -> None:
        self.address = describe_address(self.transport.getPeer())
        # Records are already batched per reactor turn; Nagle plus delayed
        # ACKs would only add 20-45 ms to every protocol round on loopback.
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        self.network._link_opened(self)
        if self.closing:
            return
        self._hs = NoiseHandshake(
            self.network.noise_private, self.outbound, encode_hello(self.network.epoch), self._authenticate
        )
        self._hs_timer = self._clock.callLater(self._config.handshake_timeout, self._handshake_timed_out)
        for message in self._hs.start():
            self._write_frame(message)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._cancel_timers()
        self.network._link_lost(self)
        self._closed.fire(self)

    def when_closed(self) -> Deferred:
        """A Deferred that fires with this link once its connection is gone."""
        return self._closed.observe()

    def lengthLimitExceeded(self, length: int) -> None:
        self.fail(FramingError(f"frame of {length} bytes over the {self.MAX_LENGTH}-byte limit"))

    # -- inbound -----------------------------------------------------------------

    def stringReceived(self, frame: bytes) -> None:
        if self.closing:
            return
        counters = self._counters
        counters.frames_in += 1
        counters.bytes_in += len(frame) + 2
        noise = self._noise
        if noise is not None:
            self._last_rx = self._clock.seconds()
            try:
                records = self._records.feed(noise.decrypt(frame))
                if records:
                    self._handle_records(records)
            except LinkViolation as e:
                self.fail(e)
            return
        try:
            replies = self._hs.receive(frame)  # type: ignore[union-attr]
        except LinkViolation as e:
            self.fail(e)
            return
        for message in replies:
            self._write_frame(message)
        if self._hs.complete:  # type: ignore[union-attr]
            self._handshake_complete()

    def _authenticate(self, remote_key: bytes, payload: bytes) -> None:
        self.remote_key = remote_key
        self.peer_epoch = decode_hello(payload)
        self.peer = self.network._authenticate(self, remote_key)

    def _handshake_complete(self) -> None:
        assert self._hs is not None
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self._noise = self._hs.transport()
        self._hs = None
        self.MAX_LENGTH = MAX_NOISE_MESSAGE
        self._last_rx = self._last_tx = self._clock.seconds()
        self.established = True
        self._schedule_tick()
        self.network._link_established(self)

    def _handle_records(self, records: list[tuple[int, bytes]]) -> None:
        peer = self.peer
        assert peer is not None
        network = self.network
        for typ, body in records:
            if self.closing:
                return
            if typ == DATA:
                msg_id, channel, payload = decode_data(body)
                network._data_received(self, peer, msg_id, channel, payload)
            elif typ == ACK:
                cumulative, ids = decode_ack(body)
                network._ack_received(peer, cumulative, ids)
            elif typ == RESUME:
                base = decode_resume(body)
                if self.peer_epoch == peer.rx.epoch:
                    peer.rx.resume(base)
            elif typ == PING:
                pass
            else:  # pragma: no cover - RecordReader refuses unknown types
                raise FramingError(f"unknown record type {typ}")
        if peer.rx.ack_pending:
            network._ack_due(peer)

    # -- outbound ----------------------------------------------------------------

    def _write_frame(self, message: bytes) -> None:
        self._counters.frames_out += 1
        self._counters.bytes_out += len(message) + 2
        self.transport.write(_PREFIX.pack(len(message)) + message)

    def queue(self, record: bytes) -> None:
        """Queue an encoded record; it leaves at the end of this reactor turn."""
        if self.closing:
            return
        self._out.append(record)
        self._out_size += len(record)
        if self._out_size >= FLUSH_THRESHOLD:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def schedule_ack(self) -> None:
        """An acknowledgement is due: send it with the next flush, or after C{ack_delay}."""
        if self._flush_call is None and self._ack_call is None and not self.closing:
            self._ack_call = self._clock.callLater(self._config.ack_delay, self.flush)

    def flush(self) -> None:
        """Encrypt and write everything queued, in as few Noise messages as possible."""
        call = self._flush_call
        if call is not None:
            self._flush_call = None
            if call.active():
                call.cancel()
        call = self._ack_call
        if call is not None:
            self._ack_call = None
            if call.active():
                call.cancel()
        if self.closing or self._noise is None:
            return
        peer = self.peer
        if peer is not None and peer.rx.ack_pending and peer.link is self:
            self._out.append(encode_ack(*peer.rx.take_ack()))
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._out_size = 0
        encrypt = self._noise.encrypt
        pack = _PREFIX.pack
        frames = []
        wire = 0
        for chunk in split_plaintext(data, MAX_PLAINTEXT):
            ciphertext = encrypt(chunk)
            frames.append(pack(len(ciphertext)))
            frames.append(ciphertext)
            wire += len(ciphertext) + 2
        counters = self._counters
        counters.frames_out += len(frames) // 2
        counters.bytes_out += wire
        self._last_tx = self._clock.seconds()
        self.transport.writeSequence(frames)

    # -- timers ------------------------------------------------------------------

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        self.fail(HandshakeFailed(f"handshake not complete after {self._config.handshake_timeout:g}s"))

    def _schedule_tick(self) -> None:
        config = self._config
        due = min(self._last_rx + config.idle_timeout, self._last_tx + config.keepalive_interval)
        self._tick_call = self._clock.callLater(max(due - self._clock.seconds(), 0.0), self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        if self.closing:
            return
        now = self._clock.seconds()
        config = self._config
        if now - self._last_rx >= config.idle_timeout:
            self.fail(LinkViolation(f"nothing received for {now - self._last_rx:g}s (idle timeout)"))
            return
        if now - self._last_tx >= config.keepalive_interval:
            self.queue(encode_ping())
            self.flush()
        self._schedule_tick()

    def _cancel_timers(self) -> None:
        for name in ("_flush_call", "_ack_call", "_hs_timer", "_tick_call"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- closing -----------------------------------------------------------------

    def fail(self, error: LinkViolation) -> None:
        """The other end broke the protocol (or went quiet): log why and drop the connection."""
        if self.closing:
            return
        key = error.noise_key if isinstance(error, PeerRefused) and error.noise_key else self.remote_key
        if self.established:
            self.log.warn(
                "closing link {direction} {peer} at {address}: {reason}",
                direction="to" if self.outbound else "from", peer=self.peer.name if self.peer else "?",
                address=self.address, reason=error.reason, key=key.hex() if key else None,
            )
        else:
            self.log.warn(
                "refused link {direction} {address} (static key {key}): {reason}",
                direction="to" if self.outbound else "from", address=self.address,
                key=key.hex() if key else "unknown", reason=error.reason,
                peer=self.peer.name if self.peer else None,
            )
        if not self.established:
            self._counters.links_refused += 1
        self.close(error.reason, abort=True)

    def close(self, reason: str, abort: bool = False) -> None:
        """Close this link (replaced, shutting down, or after L{fail})."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self._cancel_timers()
        self._out = []
        self.network._link_closing(self)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
