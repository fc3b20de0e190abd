"""
Shared helpers for the tests.test_net_* modules (no tests here): fast link
configs, listening sockets on port 0, and a raw Noise client that plays a
peer we control byte by byte.  Members with real keys and cards, and the
log capture, come from L{tests.support} (imported from here too).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.protocols.basic import Int16StringReceiver
from twisted.internet.protocol import Protocol

from frostnode.net.noise import NoiseHandshake, NoiseTransport
from frostnode.net.link import encode_hello
from frostnode.net.peers import LinkConfig
from tests.support import LogCapture, Member, make_member, make_members  # also imported from here


def fast_config(**overrides: Any) -> LinkConfig:
    base = LinkConfig(
        handshake_timeout=5.0,
        idle_timeout=30.0,
        keepalive_interval=10.0,
        ack_delay=0.005,
        initial_reconnect_delay=0.05,
        max_reconnect_delay=0.3,
        reconnect_factor=2.0,
        stable_link_time=1.0,
        max_message_size=1024 * 1024,
    )
    return replace(base, **overrides)


def listening_socket(reactor: Any, port: int = 0) -> tuple[AdoptedStreamServerEndpoint, int]:
    """A socket bound to 127.0.0.1 (port 0: any free port), as a listen endpoint and its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    bound = sock.getsockname()[1]
    return AdoptedStreamServerEndpoint(reactor, sock.detach(), socket.AF_INET), bound


class RawClient(Protocol):
    """Writes given bytes on connect; records what comes back and when the server hangs up."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.lost: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class NoiseClient(Int16StringReceiver):
    """
    A peer that does a real XX handshake as initiator with any static key,
    records every byte it wrote (to replay later), and afterwards can send
    hand-made records.
    """

    MAX_LENGTH = 65535

    def __init__(self, noise_private: bytes, epoch: int = 7) -> None:
        self.hs = NoiseHandshake(noise_private, True, encode_hello(epoch), lambda key, payload: None)
        self.written = b""
        self.transport_cipher: Optional[NoiseTransport] = None
        self.handshake_done: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.frames: list[bytes] = []

    def _write(self, message: bytes) -> None:
        framed = len(message).to_bytes(2, "big") + message
        self.written += framed
        self.transport.write(framed)

    def connectionMade(self) -> None:
        for m in self.hs.start():
            self._write(m)

    def stringReceived(self, frame: bytes) -> None:
        if self.transport_cipher is not None:
            self.frames.append(self.transport_cipher.decrypt(frame))
            return
        for m in self.hs.receive(frame):
            self._write(m)
        if self.hs.complete:
            self.transport_cipher = self.hs.transport()
            self.handshake_done.callback(self)

    def send_plaintext(self, plaintext: bytes) -> None:
        assert self.transport_cipher is not None
        self.sendString(self.transport_cipher.encrypt(plaintext))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.handshake_done.called:
            self.handshake_done.errback(reason)
        self.lost.callback(None)
