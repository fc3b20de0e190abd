# -*- test-case-name: tests.test_net_peers -*-
"""
L{PeerNetwork}: this node's links to every other member, as one L{ILinks}.

It owns, per peer and for the whole life of the process, the reliable
delivery state (L{frostnode.net.reliable}), a dialer, and at most one
I{current} link; L{frostnode.net.link.LinkProtocol} instances come and go
underneath.

Decisions:

  - B{Who is a member} is asked of the L{MemberDirectory} given at
    construction, by the remote Noise static key after the handshake; an
    unknown key, our own key, or (when we dialled) a member other than the
    one dialled is refused and logged.  The directory is fixed for the life
    of one L{PeerNetwork}.
  - B{Dialling}: every member dials every other (the C{ClientService}
    pattern: C{backoffPolicy} with jitter, redial when the link is lost)
    and stops while any link to that peer is up, whichever side dialled it.
    The member with the smaller host key dials at once, the other after one
    backoff delay, so a full mesh mostly forms without duplicate dials.  A
    link that dies within C{stable_link_time} does not reset the backoff,
    so a peer that keeps breaking its links is not redialled in a tight loop.
  - B{Addresses} are card addresses, C{tcp:HOST:PORT} or
    C{tcp:host=HOST:port=PORT}.  Endpoint construction is the replaceable
    C{endpoint_factory(reactor, address)}; the default, L{tcp_endpoint},
    refuses C{.onion} hosts, and a Tor deployment passes a factory that
    returns a SOCKS endpoint (txtorcon's C{TorClientEndpoint}) for those.
  - B{Two links to one peer} (simultaneous dials, a redial while the other
    side still holds a half-dead connection): L{prefer_new_link} decides,
    identically on both sides: a link to a new incarnation of the peer
    (different session epoch) wins; otherwise a newer link in the same
    direction wins (its initiator gave up on the old one); otherwise the
    link initiated by the smaller host key wins.  The loser is closed; its
    unacknowledged messages are resent on the winner.
  - B{Unknown channel}: a DATA record for a channel with no registered
    handler is accepted, acknowledged and dropped, counted in
    C{counters.unknown_channel_dropped} and logged once per peer and
    channel.  Refusing it instead (closing the link, unacknowledged) would
    wedge the pair: the sender resends it first on every new link, so no
    later message, on any channel, would ever arrive.  Handlers are
    registered before the service starts; a message that arrives for a
    channel first is lost, as it would be for any unknown message type.
  - Handlers run synchronously in the reactor turn that decrypted the
    frame; what they send is batched into the same outgoing flush.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from frostnode.identity import AddressCard, HostKeypair, MemberDirectory
from frostnode.net.errors import PeerRefused, UnsupportedAddress
from frostnode.net.framing import encode_ack, encode_data, encode_resume
from frostnode.net.interfaces import Handler, ILinks
from frostnode.net.link import LinkProtocol
from frostnode.net.listening import OneShotObserver
from frostnode.net.noise import noise_public_key
from frostnode.net.reliable import ReceiveWindow, SendQueue

#: C{endpoint_factory(reactor, address)} -> an endpoint to dial C{address}.
EndpointFactory = Callable[[Any, str], IStreamClientEndpoint]
#: C{observer(peer_host_key, up)}, called when a peer's link comes up or goes down.
LinkObserver = Callable[[bytes, bool], None]


@dataclass(frozen=True)
class LinkConfig:
    """
    Limits and timers of the peer links.  Field names match the config
    file's C{[peer]} and C{[limits]} keys where those exist.

    @ivar max_message_size: largest payload C{send} accepts and a peer may send.
    @ivar peer_queue_size: most unacknowledged messages held per peer
        (beyond it, L{frostnode.net.errors.QueueFull}).
    @ivar peer_queue_bytes: most unacknowledged payload bytes held per peer.
    @ivar receive_window: how far above the contiguous low watermark a
        peer's message id may be; keep it >= every member's C{peer_queue_size}.
    @ivar ack_delay: longest an acknowledgement waits for outgoing data to ride on.
    @ivar stable_link_time: a link that lived this long resets the dial backoff.
    @ivar max_handshaking: most inbound connections still in their handshake.
    """

    max_message_size: int = 16 * 1024 * 1024
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    keepalive_interval: float = 15.0
    ack_delay: float = 0.02
    peer_queue_size: int = 65536
    peer_queue_bytes: int = 256 * 1024 * 1024
    receive_window: int = 131072
    connect_timeout: float = 10.0
    initial_reconnect_delay: float = 1.0
    max_reconnect_delay: float = 60.0
    reconnect_factor: float = 1.5
    stable_link_time: float = 10.0
    max_handshaking: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LinkConfig.{f.name} must be a positive number, got {value!r}")
        if self.keepalive_interval >= self.idle_timeout:
            raise ValueError(
                f"LinkConfig.keepalive_interval ({self.keepalive_interval}) must be below idle_timeout ({self.idle_timeout})"
            )
        if self.receive_window < self.peer_queue_size:
            raise ValueError(
                f"LinkConfig.receive_window ({self.receive_window}) must be >= peer_queue_size ({self.peer_queue_size})"
            )
        if self.reconnect_factor < 1:
            raise ValueError(f"LinkConfig.reconnect_factor must be >= 1, got {self.reconnect_factor}")


@dataclass
class LinkCounters:
    """Totals since start, for metrics and benchmarks (frames and bytes are on the wire)."""

    messages_in: int = 0
    messages_out: int = 0
    duplicates_in: int = 0
    retransmits: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    links_up: int = 0
    links_refused: int = 0
    stale_dropped: int = 0
    unknown_channel_dropped: int = 0


def prefer_new_link(
    local: bytes, peer: bytes, current_outbound: bool, current_epoch: int, new_outbound: bool, new_epoch: int
) -> bool:
    """
    Whether a newly authenticated link to C{peer} should replace the current
    one.  Both sides evaluate this with mirrored arguments and agree.
    """
    if new_epoch != current_epoch:
        return True                      # the peer restarted: the old link is dead
    if new_outbound == current_outbound:
        return True                      # same initiator dialled again: it gave up on the old one
    return new_outbound == (local < peer)  # keep the link dialled by the smaller host key


def parse_tcp_address(address: str) -> tuple[str, int]:
    """
    C{(host, port)} of a card address: C{tcp:HOST:PORT}, C{tcp:[V6]:PORT}
    or C{tcp:host=HOST:port=PORT}.

    @raise UnsupportedAddress: any other form.
    """
    if not address.startswith("tcp:"):
        raise UnsupportedAddress(f"unsupported address {address!r}: only tcp: addresses are dialled")
    rest = address[4:]
    host: Optional[str]
    port_text: Optional[str]
    if "=" in rest:
        host = port_text = None
        for part in rest.split(":"):
            key, sep, value = part.partition("=")
            if not sep:
                raise UnsupportedAddress(f"unsupported address {address!r}: mixed positional and keyword fields")
            if key == "host":
                host = value
            elif key == "port":
                port_text = value
            elif key != "timeout":
                raise UnsupportedAddress(f"unsupported address {address!r}: unknown field {key!r}")
    elif rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise UnsupportedAddress(f"unsupported address {address!r}")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise UnsupportedAddress(f"unsupported address {address!r}: no port")
    if not host or not port_text or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UnsupportedAddress(f"unsupported address {address!r}: needs a host and a port in 1..65535")
    return host, int(port_text)


def tcp_endpoint(reactor: Any, address: str, timeout: float = 10.0) -> IStreamClientEndpoint:
    """
    The default C{endpoint_factory}: plain TCP to a card address.

    @raise UnsupportedAddress: a C{.onion} host (needs a SOCKS endpoint:
        pass an C{endpoint_factory} that builds one) or a malformed address.
    """
    host, port = parse_tcp_address(address)
    if host.lower().rstrip(".").endswith(".onion"):
        raise UnsupportedAddress(
            f"{address!r} is an onion address: dialling it needs a SOCKS endpoint (pass an endpoint_factory)"
        )
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def _fire_all(waiters: list[Deferred], result: Any) -> None:
    """
    Fire every Deferred in C{waiters} with C{result} (errback them with a
    L{Failure}), emptying the list first: a callback may queue a new wait.
    """
    pending = waiters[:]
    waiters.clear()
    for d in pending:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class _Peer:
    """Everything this node keeps about one other member."""

    def __init__(self, network: "PeerNetwork", card: AddressCard) -> None:
        config = network.config
        self.host_key = card.host_key
        self.card = card
        self.name = card.short()
        self.tx = SendQueue(card.host_key, config.peer_queue_size, config.peer_queue_bytes)
        self.rx = ReceiveWindow(config.receive_window)
        self.link: Optional[LinkProtocol] = None
        self.up_since = 0.0
        self.sent_upto = 0
        self.connected_waiters: list[Deferred] = []
        self.acked_waiters: list[Deferred] = []
        self.unknown_channels: set[int] = set()   # already logged; bounded by 65,536
        self.dialer = _Dialer(network, self)


class _Dialer:
    """
    Connection attempts to one peer: wait, dial, and on failure wait longer.
    Idle while any link to the peer is up.
    """

    log = Logger()

    def __init__(self, network: "PeerNetwork", peer: _Peer) -> None:
        self.network = network
        self.peer = peer
        self.preferred = network.local < peer.host_key
        self.failures = 0
        self.attempts = 0
        self._call: Optional[IDelayedCall] = None
        self._connecting: Optional[Deferred] = None
        self._handshaking: Optional[LinkProtocol] = None
        self._attempt_waiters: list[Deferred] = []

    @property
    def busy(self) -> bool:
        return self._connecting is not None or self._handshaking is not None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        """Drop the scheduled attempt and cancel one under way (the service stops, or a link is up)."""
        self._cancel_timer()
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()

    def _cancel_timer(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        if self._call is not None or self.busy or self.peer.link is not None or not self.network.running:
            return
        # The preferred initiator's first attempt is immediate; the other side's
        # waits one backoff delay, by when a link usually exists.
        if self.preferred:
            delay = 0.0 if self.failures == 0 else self.network.retry_policy(self.failures - 1)
        else:
            delay = self.network.retry_policy(self.failures)
        self.failures += 1
        self._call = self.network.clock.callLater(delay, self.dial)

    def dial(self) -> Deferred:
        """
        Dial now unless a link is up or an attempt is under way.  Fires with
        the outbound L{LinkProtocol} once TCP connects (its handshake may
        still fail), or None if there was nothing to do.
        """
        self._cancel_timer()
        if self.peer.link is not None or not self.network.running:
            return succeed(None)
        if self._handshaking is not None:
            return succeed(self._handshaking)
        d: Deferred = Deferred()
        self._attempt_waiters.append(d)
        if self._connecting is not None:
            return d
        addresses = self.peer.card.addresses
        if not addresses:
            self._fire_waiters(None)
            self.log.warn("member {peer} has no address to dial", peer=self.peer.name)
            return d
        address = addresses[self.attempts % len(addresses)]
        self.attempts += 1
        try:
            endpoint = self.network.endpoint_factory(self.network.reactor, address)
        except Exception as e:
            self.log.warn("cannot dial {peer} at {address}: {error}", peer=self.peer.name, address=address, error=str(e))
            self._fire_waiters(None)
            self._schedule()
            return d
        connecting = endpoint.connect(_DialFactory(self.network, self.peer.host_key))
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._failed, errbackArgs=(address,))
        return d

    def _fire_waiters(self, result: Optional[LinkProtocol]) -> None:
        _fire_all(self._attempt_waiters, result)

    def _connected(self, link: LinkProtocol) -> None:
        self._connecting = None
        if not link.closing:
            self._handshaking = link
        self._fire_waiters(link)

    def _failed(self, failure: Failure, address: str) -> None:
        self._connecting = None
        self._fire_waiters(None)
        if failure.check(CancelledError, ConnectingCancelledError):
            return
        self.log.info("dialling {peer} at {address} failed: {error}", peer=self.peer.name, address=address,
                      error=failure.getErrorMessage())
        self._schedule()

    def attempt_over(self, link: LinkProtocol) -> None:
        """Our outbound C{link} finished its handshake or died in it; retry if no link is up."""
        if self._handshaking is link:
            self._handshaking = None
        self._schedule()

    def link_up(self) -> None:
        self.stop()

    def link_down(self, lived: float) -> None:
        if lived >= self.network.config.stable_link_time:
            self.failures = 0
        self._schedule()


class _DialFactory(Factory):
    noisy = False

    def __init__(self, network: "PeerNetwork", peer: bytes) -> None:
        self.network = network
        self.peer = peer

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        return LinkProtocol(self.network, self.peer)


class LinkServerFactory(Factory):
    """Inbound links; refuses new connections while too many are still in their handshake."""

    noisy = False
    log = Logger()

    def __init__(self, network: "PeerNetwork") -> None:
        self.network = network

    def buildProtocol(self, addr: Any) -> Optional[LinkProtocol]:
        if self.network._handshaking_inbound() >= self.network.config.max_handshaking:
            self.log.warn("refused link from {address}: {reason}", address=str(addr),
                          reason="too many connections in their handshake", key="unknown")
            return None
        return LinkProtocol(self.network, None)


@implementer(ILinks)
class PeerNetwork(Service):
    """
    Authenticated, reliable, unordered links to every other member.

    @param reactor: dials through it (C{IReactorTCP}) and, unless C{clock}
        is given, schedules every timer on it.
    @param host: our host keypair; its public key must be in C{directory}.
    @param noise_private: our X25519 static secret; its public key must be
        the one on our card.
    @param directory: the members.
    @param listen_endpoint: where peers reach us (None: dial out only).
    @param config: limits and timers.
    @param clock: timers, when they should not run on C{reactor} (tests).
    @param endpoint_factory: C{(reactor, address) -> IStreamClientEndpoint};
        default L{tcp_endpoint}.
    @param retry_policy: C{failures -> seconds}; default C{backoffPolicy}
        from the config with jitter up to C{initial_reconnect_delay}.
    @param epoch: our session epoch; default random.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: HostKeypair,
        noise_private: bytes,
        directory: MemberDirectory,
        listen_endpoint: Optional[IStreamServerEndpoint] = None,
        config: LinkConfig = LinkConfig(),
        *,
        clock: Optional[IReactorTime] = None,
        endpoint_factory: Optional[EndpointFactory] = None,
        retry_policy: Optional[Callable[[int], float]] = None,
        epoch: Optional[int] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.local = host.public
        self.noise_private = noise_private
        self.directory = directory
        self.listen_endpoint = listen_endpoint
        self.config = config
        own = directory.by_host_key(self.local)
        if own is None:
            raise ValueError(f"our host key {self.local.hex()} is not in the member directory")
        if own.noise_key != noise_public_key(noise_private):
            raise ValueError(f"our Noise key does not match the one on our card ({own.noise_key.hex()})")
        self.name = own.short()
        self.epoch = epoch if epoch is not None else int.from_bytes(os.urandom(8), "big")
        self._rng = rng if rng is not None else random.Random()
        self.endpoint_factory: EndpointFactory = (
            endpoint_factory if endpoint_factory is not None
            else (lambda r, address: tcp_endpoint(r, address, timeout=config.connect_timeout))
        )
        self.retry_policy = retry_policy if retry_policy is not None else backoffPolicy(
            initialDelay=config.initial_reconnect_delay,
            maxDelay=config.max_reconnect_delay,
            factor=config.reconnect_factor,
            jitter=lambda: self._rng.random() * config.initial_reconnect_delay,
        )
        self.counters = LinkCounters()
        self._handlers: dict[int, Handler] = {}
        self._observers: list[LinkObserver] = []
        self._open: set[LinkProtocol] = set()
        self._peers: dict[bytes, _Peer] = {
            card.host_key: _Peer(self, card) for card in directory if card.host_key != self.local
        }
        self._port: Optional[IListeningPort] = None
        self._listening: Optional[Deferred] = None
        self._port_outcome = OneShotObserver()

    # -- ILinks ------------------------------------------------------------------

    def send(self, peer: bytes, channel: int, payload: bytes) -> None:
        p = self._peers.get(peer)
        if p is None:
            raise ValueError(f"{peer.hex()} is not another member")
        if not 0 <= channel <= 0xFFFF:
            raise ValueError(f"channel {channel} out of range 0..65535")
        if type(payload) is not bytes:
            payload = bytes(payload)
        if len(payload) > self.config.max_message_size:
            raise ValueError(f"payload of {len(payload)} bytes over the {self.config.max_message_size}-byte limit")
        msg_id = p.tx.push(channel, payload)
        self.counters.messages_out += 1
        link = p.link
        if link is not None:
            link.queue(encode_data(msg_id, channel, payload))
            p.sent_upto = msg_id

    def register(self, channel: int, handler: Handler) -> None:
        if not 0 <= channel <= 0xFFFF:
            raise ValueError(f"channel {channel} out of range 0..65535")
        if channel in self._handlers:
            raise ValueError(f"channel {channel} already has a handler")
        self._handlers[channel] = handler

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def connected(self) -> set[bytes]:
        return {k for k, p in self._peers.items() if p.link is not None}

    # -- beyond ILinks -------------------------------------------------------------

    def when_connected(self, peer: bytes) -> Deferred:
        """Fires with C{peer} once a link to it is up (at once if one is)."""
        p = self._peers[peer]
        if p.link is not None:
            return succeed(peer)
        d: Deferred = Deferred()
        p.connected_waiters.append(d)
        return d

    def when_all_connected(self) -> Deferred:
        """Fires once links to every other member have been up (each at some point)."""
        return gatherResults([self.when_connected(k) for k in self._peers]).addCallback(lambda _: None)

    def when_acked(self, peer: bytes) -> Deferred:
        """Fires once C{peer} has acknowledged everything sent to it so far."""
        p = self._peers[peer]
        if not len(p.tx):
            return succeed(peer)
        d: Deferred = Deferred()
        p.acked_waiters.append(d)
        return d

    def unacked(self, peer: bytes) -> int:
        """How many messages to C{peer} await acknowledgement."""
        return len(self._peers[peer].tx)

    def add_link_observer(self, observer: LinkObserver) -> None:
        """Call C{observer(peer, up)} whenever a peer's link comes up or goes down."""
        self._observers.append(observer)

    def current_link(self, peer: bytes) -> Optional[LinkProtocol]:
        return self._peers[peer].link

    def open_links(self) -> list[LinkProtocol]:
        """Every connection, in or out, established or still in its handshake."""
        return list(self._open)

    def dial(self, peer: bytes) -> Deferred:
        """Dial C{peer} now (see L{_Dialer.dial}); a no-op while a link is up."""
        return self._peers[peer].dialer.dial()

    def when_listening(self) -> Deferred:
        """Fires with the listening port once it is bound, or fails with why it cannot be, also when asked after."""
        return self._port_outcome.observe()

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._port_outcome.reset()
        if self.listen_endpoint is not None:
            self._listening = self.listen_endpoint.listen(LinkServerFactory(self))
            self._listening.addCallbacks(self._listened, self._listen_failed)
        for p in self._peers.values():
            p.dialer.start()

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        if not self.running:
            port.stopListening()
            return
        self._port = port
        self._port_outcome.fire(port)

    def _listen_failed(self, failure: Failure) -> None:
        self._listening = None
        if failure.check(CancelledError):
            return
        self.log.failure("{node} cannot listen for peers", failure, node=self.name)
        self._port_outcome.fail(failure)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        for p in self._peers.values():
            p.dialer.stop()
        waits = []
        if self._listening is not None:
            self._listening.cancel()
        if self._port is not None:
            waits.append(maybeDeferred(self._port.stopListening))
            self._port = None
            self._port_outcome.reset()
        for link in list(self._open):
            waits.append(link.when_closed())
            link.close("service stopping", abort=True)
        return gatherResults(waits).addCallback(lambda _: None)

    # -- called by links -------------------------------------------------------------

    def _handshaking_inbound(self) -> int:
        return sum(1 for link in self._open if not link.outbound and not link.established)

    def _link_opened(self, link: LinkProtocol) -> None:
        self._open.add(link)
        if not self.running:
            link.close("service not running", abort=True)

    def _authenticate(self, link: LinkProtocol, noise_key: bytes) -> _Peer:
        card = self.directory.by_noise_key(noise_key)
        if card is None:
            raise PeerRefused("static key is not a member's", noise_key)
        if card.host_key == self.local:
            raise PeerRefused("static key is our own: a node never links to itself", noise_key)
        if link.expected is not None and card.host_key != link.expected:
            raise PeerRefused(f"dialled member {link.expected.hex()[:12]} but reached {card.short()}", noise_key)
        return self._peers[card.host_key]

    def _link_established(self, link: LinkProtocol) -> None:
        peer = link.peer
        assert peer is not None and link.peer_epoch is not None
        current = peer.link
        if current is None:
            self._install(peer, link)
            peer.up_since = self.clock.seconds()
            self.counters.links_up += 1
            self.log.info("link {direction} {peer} at {address} is up", direction="to" if link.outbound else "from",
                          peer=peer.name, address=link.address)
            peer.dialer.link_up()
            _fire_all(peer.connected_waiters, peer.host_key)
            self._notify(peer.host_key, True)
        elif prefer_new_link(self.local, peer.host_key, current.outbound, current.peer_epoch,  # type: ignore[arg-type]
                             link.outbound, link.peer_epoch):
            restarted = current.peer_epoch != link.peer_epoch
            self._install(peer, link)
            if restarted:
                peer.up_since = self.clock.seconds()
            self._close_duplicate(peer, current, link, "replaced by a newer link" + (" (peer restarted)" if restarted else ""))
        else:
            self._close_duplicate(peer, link, current, "duplicate link; keeping the existing one")
        if link.outbound:
            peer.dialer.attempt_over(link)

    def _close_duplicate(self, peer: _Peer, loser: LinkProtocol, winner: LinkProtocol, reason: str) -> None:
        self.log.info(
            "two links with {peer}: closing the one {loser_direction} {loser_address} ({reason}), "
            "keeping the one {winner_direction} {winner_address}",
            peer=peer.name, reason=reason,
            loser_direction="to" if loser.outbound else "from", loser_address=loser.address,
            winner_direction="to" if winner.outbound else "from", winner_address=winner.address,
        )
        loser.close(reason)

    def _install(self, peer: _Peer, link: LinkProtocol) -> None:
        """Make C{link} current and resume delivery on it."""
        peer.link = link
        assert link.peer_epoch is not None
        if peer.rx.set_epoch(link.peer_epoch) and peer.sent_upto:
            self.log.info("{peer} has a new session epoch (restarted)", peer=peer.name)
        link.queue(encode_resume(peer.tx.base))
        link.queue(encode_ack(*peer.rx.snapshot_ack()))
        resent = 0
        for msg_id, channel, payload in peer.tx.unacked():
            link.queue(encode_data(msg_id, channel, payload))
            if msg_id <= peer.sent_upto:
                resent += 1
        self.counters.retransmits += resent
        peer.sent_upto = peer.tx.next_id - 1

    def _link_closing(self, link: LinkProtocol) -> None:
        peer = link.peer
        if peer is None or peer.link is not link:
            return
        peer.link = None
        lived = self.clock.seconds() - peer.up_since
        self.log.info("link {direction} {peer} at {address} is down: {reason}",
                      direction="to" if link.outbound else "from", peer=peer.name, address=link.address,
                      reason=link.close_reason)
        self._notify(peer.host_key, False)
        peer.dialer.link_down(lived)

    def _link_lost(self, link: LinkProtocol) -> None:
        self._open.discard(link)
        if link.close_reason is None:
            link.close_reason = "connection lost"
        self._link_closing(link)
        if link.expected is not None:
            self._peers[link.expected].dialer.attempt_over(link)

    def _notify(self, peer: bytes, up: bool) -> None:
        for observer in list(self._observers):
            try:
                observer(peer, up)
            except Exception:
                self.log.failure("link observer failed for {peer}", peer=peer.hex()[:12])

    def _data_received(self, link: LinkProtocol, peer: _Peer, msg_id: int, channel: int, payload: bytes) -> None:
        if link.peer_epoch != peer.rx.epoch:
            self.counters.stale_dropped += 1      # from a previous incarnation of the peer
            return
        if not peer.rx.accept(msg_id):
            self.counters.duplicates_in += 1
            return
        handler = self._handlers.get(channel)
        if handler is None:
            # Acknowledged (accepted above) and dropped: see "Unknown channel"
            # in the module docstring for why this must not close the link.
            self.counters.unknown_channel_dropped += 1
            if channel not in peer.unknown_channels:
                peer.unknown_channels.add(channel)
                self.log.warn("dropped a message from {peer} on unknown channel {channel} "
                              "(further ones on it are only counted)", peer=peer.name, channel=channel)
            return
        self.counters.messages_in += 1
        try:
            handler(peer.host_key, payload)
        except Exception:
            self.log.failure("handler for channel {channel} failed on a message from {peer}",
                             channel=channel, peer=peer.name)

    def _ack_received(self, peer: _Peer, cumulative: int, ids: list[int]) -> None:
        if peer.tx.ack(cumulative, ids) and not len(peer.tx) and peer.acked_waiters:
            _fire_all(peer.acked_waiters, peer.host_key)

    def _ack_due(self, peer: _Peer) -> None:
        link = peer.link
        if link is not None:
            link.schedule_ack()
