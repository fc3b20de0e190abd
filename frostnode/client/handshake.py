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

L{ClientHandshake} is L{frostnode.net.noise.NoiseHandshake} with this
prologue.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from frostnode.net.errors import HandshakeFailed
from frostnode.net.noise import NoiseHandshake
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



class ClientHandshake(NoiseHandshake):
    """
    The peer links' XX handshake (L{NoiseHandshake}: either role, the
    remote key checked by C{authenticate} before we reveal ours) under the
    client port's prologue, so the two ports never complete each other's
    handshakes.
    """

    def __init__(self, static_private: bytes, initiator: bool, payload: bytes, authenticate: Authenticator) -> None:
        super().__init__(static_private, initiator, payload, authenticate, prologue=CLIENT_PROLOGUE)
