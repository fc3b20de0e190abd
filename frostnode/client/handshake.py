# -*- test-case-name: tests.test_client_messages -*-
"""
The Noise handshake of the client port, and the hellos it carries.  No I/O.

Same pattern as the peer links, C{Noise_XX_25519_ChaChaPoly_BLAKE2s}, for the
same reasons (L{frostnode.net.noise}): the client checks the node's static
key when message 2 arrives and abandons the handshake I{before} message 3
reveals its own static key to a node that is not the one it meant; and the
node's side only completes on message 3, which a replay of captured traffic
cannot produce.  IK would save half a round trip per connection but let the
node complete on a replayable first message; clients that care about
latency keep one connection open.

The prologue differs from the peer links' (C{frostnode client v1} against
C{frostnode peer link v1}): a client that dials a peer port (or a member
that dials a client port) fails at message 2 with a clear handshake error
instead of reaching the other port's protocol.  The node's static key on
the client port is its member Noise key, the one on its address card, so a
client needs nothing beyond the card to authenticate the node.

Hellos, encrypted and bound to the transcript:

  - node -> client (message 2): C{version (u8) = 1 | node host key (32) |
    max_request_size (u32) | max_in_flight (u32)}, so the client library
    refuses an oversized request itself and never has more requests out
    than the node will take.
  - client -> node (message 3): C{version (u8) = 1}.

The class mirrors L{frostnode.net.noise.NoiseHandshake} (which fixes the
peer prologue) and hands over the same L{NoiseTransport}.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection

from frostnode.net.errors import HandshakeFailed
from frostnode.net.noise import MAX_HANDSHAKE_MESSAGE, PROTOCOL_NAME, NoiseTransport
from frostnode.wire import DecodeError, Reader, Writer

CLIENT_PROLOGUE = b"frostnode client v1"
HELLO_VERSION = 1

#: C{authenticate(remote_static_key, remote_payload)}; raises to refuse.
Authenticator = Callable[[bytes, bytes], None]


class NodeHello(NamedTuple):
    """What the node tells a client about itself in handshake message 2."""

    host_key: bytes
    max_request_size: int
    max_in_flight: int

    def encode(self) -> bytes:
        return (Writer().u8(HELLO_VERSION).fixed(self.host_key, 32).u32(self.max_request_size)
                .u32(self.max_in_flight).to_bytes())

    @classmethod
    def decode(cls, payload: bytes) -> "NodeHello":
        try:
            r = Reader(payload, "node hello")
            r.version(HELLO_VERSION)
            host_key = r.fixed(32)
            size = r.u32()
            in_flight = r.u32()
            r.finish()
        except DecodeError as e:
            raise HandshakeFailed(str(e)) from None
        if size < 1 or in_flight < 1:
            raise HandshakeFailed(f"node hello announces unusable limits ({size} bytes, {in_flight} in flight)")
        return cls(host_key, size, in_flight)


def encode_client_hello() -> bytes:
    return Writer().u8(HELLO_VERSION).to_bytes()


def decode_client_hello(payload: bytes) -> None:
    try:
        r = Reader(payload, "client hello")
        r.version(HELLO_VERSION)
        r.finish()
    except DecodeError as e:
        raise HandshakeFailed(str(e)) from None



class ClientHandshake:
    """
    One client-port XX handshake, either role.

    @param static_private: our X25519 static secret (the node's member Noise
        key, or the client's key).
    @param initiator: True on the client.
    @param payload: our hello, sent in message 2 (node) or 3 (client).
    @param authenticate: called once with the remote static key and hello as
        soon as both are known, before we send anything more; raises to refuse.
    """

    def __init__(self, static_private: bytes, initiator: bool, payload: bytes, authenticate: Authenticator) -> None:
        self.initiator = initiator
        self._payload = payload
        self._authenticate = authenticate
        self._connection = NoiseConnection.from_name(PROTOCOL_NAME)
        self._connection.set_prologue(CLIENT_PROLOGUE)
        if initiator:
            self._connection.set_as_initiator()
        else:
            self._connection.set_as_responder()
        self._connection.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
        self._connection.start_handshake()
        # noiseprotocol deletes handshake_state on completion; keep it to read rs.
        self._state = self._connection.noise_protocol.handshake_state
        self._received = 0
        self.remote_static: Optional[bytes] = None
        self.remote_payload: Optional[bytes] = None

    @property
    def complete(self) -> bool:
        return bool(self._connection.handshake_finished)

    def start(self) -> list[bytes]:
        """Messages to send once connected: message 1 for the client."""
        if self.initiator:
            return [bytes(self._connection.write_message(b""))]
        return []

    def receive(self, message: bytes) -> list[bytes]:
        """
        Process one handshake message; return what to send back.

        @raise HandshakeFailed: malformed or unauthentic message.
        @raise Exception: whatever C{authenticate} raised.
        """
        if self.complete:
            raise RuntimeError("handshake already complete")
        number = 2 if self.initiator else 2 * self._received + 1
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeFailed(f"handshake message {number} of {len(message)} bytes over the "
                                  f"{MAX_HANDSHAKE_MESSAGE}-byte limit")
        try:
            payload = bytes(self._connection.read_message(bytes(message)))
        except InvalidTag:
            raise HandshakeFailed(f"handshake message {number} failed authentication "
                                  f"(not a frostnode client port, or a different protocol version)") from None
        except Exception as e:  # noiseprotocol's exceptions share no base
            raise HandshakeFailed(f"handshake message {number} rejected ({type(e).__name__}: {e})") from None
        self._received += 1
        if self.initiator or self._received == 2:
            self.remote_static = bytes(self._state.rs.public_bytes)
            self.remote_payload = payload
            self._authenticate(self.remote_static, payload)
            return [bytes(self._connection.write_message(self._payload))] if self.initiator else []
        if payload:
            raise HandshakeFailed(f"handshake message 1 carries {len(payload)} unexpected payload bytes")
        return [bytes(self._connection.write_message(self._payload))]

    def transport(self) -> NoiseTransport:
        if not self.complete:
            raise RuntimeError("handshake not complete")
        return NoiseTransport(self._connection)
