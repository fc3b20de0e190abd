# -*- test-case-name: tests.test_net_noise -*-
"""
The Noise session of one peer link: handshake, then transport encryption.
No I/O: bytes in, bytes out; L{frostnode.net.link} moves them.

Pattern: C{Noise_XX_25519_ChaChaPoly_BLAKE2s}.  Why XX rather than IK or KK,
although members know each other's static keys from their cards:

  - B{Replay fails inside the handshake.}  The responder's handshake ends
    only when it decrypts message 3, which is keyed by the responder's fresh
    ephemeral; a captured message 1 + 3 replayed to it fails there, before
    the link counts as authenticated.  With IK the responder completes after
    message 1 (anyone can replay that), and would have to treat the link as
    tentative until the first transport message arrived.
  - B{The responder needs no hint of who is dialling.}  KK would require a
    cleartext identifier in message 1 (or trial decryption against every
    member); XX carries the initiator's static key encrypted in message 3.
  - B{The initiator checks the responder before revealing itself.}  The
    responder's static key arrives in message 2; L{NoiseHandshake} calls the
    C{authenticate} hook then, and a wrong or unknown key aborts before
    message 3 carries our own static key.
  - The cost, one extra half round trip, is paid once per long-lived link.

The prologue names the link protocol and its version, so two nodes speaking
different link versions fail the handshake instead of misreading each other.
L{PROLOGUE} is the peer links'; another port (the client port) passes its
own to L{NoiseHandshake}, so a connection to the wrong port fails at
message 2 instead of reaching the other port's protocol.
Handshake payloads: message 1 carries none (it is cleartext); messages 2 and
3 carry each side's link hello (version, session epoch; see L{frostnode.net.link}),
encrypted and bound to the handshake transcript.

noiseprotocol 0.3.1 quirks handled here: it deletes its handshake state when
the handshake completes, so we keep our own reference to read the remote
static key; and it accepts 65,535-byte plaintexts whose ciphertexts (plus the
16-byte tag) exceed the Noise message limit, so L{NoiseTransport.encrypt}
caps plaintext at L{MAX_PLAINTEXT}.
"""

from __future__ import annotations

from typing import Callable, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from frostnode.net.errors import DecryptionFailed, HandshakeFailed

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"frostnode peer link v1"
#: The Noise spec's limit on one message, ciphertext and tag included.
MAX_NOISE_MESSAGE = 65535
TAG_SIZE = 16
#: Largest plaintext one transport message may carry.
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_SIZE
#: Our XX handshake messages are under 200 bytes; anything much larger before
#: the handshake ends is refused without buffering it.
MAX_HANDSHAKE_MESSAGE = 1024

#: C{authenticate(remote_static_key, remote_payload)}; raises to refuse the peer.
Authenticator = Callable[[bytes, bytes], None]


def generate_noise_private_key() -> bytes:
    """A fresh X25519 static secret, 32 raw bytes."""
    return X25519PrivateKey.generate().private_bytes_raw()


def noise_public_key(private_key: bytes) -> bytes:
    """The 32-byte raw X25519 public key that goes on the address card."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


class NoiseTransport:
    """Transport-phase encryption of one link, after a completed handshake."""

    __slots__ = ("_connection",)

    def __init__(self, connection: NoiseConnection) -> None:
        self._connection = connection

    def encrypt(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"plaintext of {len(plaintext)} bytes over the {MAX_PLAINTEXT}-byte Noise limit")
        return self._connection.encrypt(bytes(plaintext))

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._connection.decrypt(bytes(ciphertext))
        except Exception as e:  # the library raises several unrelated types
            raise DecryptionFailed(f"transport frame of {len(ciphertext)} bytes failed decryption ({type(e).__name__})") from None


class NoiseHandshake:
    """
    One XX handshake, either role.

    @param static_private: our X25519 static secret.
    @param initiator: whether we dialled.
    @param payload: our hello, sent encrypted in message 2 (responder) or 3 (initiator).
    @param authenticate: called once with the remote static key and hello,
        as soon as both are known and before we reveal anything more; it
        raises (any L{frostnode.net.errors.LinkViolation}) to refuse.
    @param prologue: names the protocol and version spoken after the
        handshake; both sides must pass the same bytes or the handshake
        fails (at message 2).  Default: the peer links' L{PROLOGUE}.
    """

    def __init__(
        self, static_private: bytes, initiator: bool, payload: bytes, authenticate: Authenticator,
        *, prologue: bytes = PROLOGUE,
    ) -> None:
        if not isinstance(prologue, bytes) or not prologue:
            raise ValueError(f"prologue must be non-empty bytes, got {prologue!r}")
        self.initiator = initiator
        self.prologue = prologue
        self._payload = payload
        self._authenticate = authenticate
        self._connection = NoiseConnection.from_name(PROTOCOL_NAME)
        self._connection.set_prologue(prologue)
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
        """Messages to send as soon as the connection is up: message 1 for the initiator."""
        if self.initiator:
            return [bytes(self._connection.write_message(b""))]
        return []

    def _read(self, message: bytes) -> bytes:
        # XX: the initiator reads message 2; the responder reads 1, then 3.
        number = 2 if self.initiator else 2 * self._received + 1
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeFailed(
                f"handshake message {number} of {len(message)} bytes over the {MAX_HANDSHAKE_MESSAGE}-byte limit"
            )
        try:
            return bytes(self._connection.read_message(bytes(message)))
        except InvalidTag:
            raise HandshakeFailed(
                f"handshake message {number} failed authentication (replayed or tampered, or the peer "
                f"does not speak {self.prologue.decode('ascii', 'replace')!r})"
            ) from None
        except Exception as e:
            # noiseprotocol's own exception classes share no base, and
            # cryptography raises ValueError for bad points: anything raised
            # on peer-supplied bytes is a failed handshake.
            raise HandshakeFailed(f"handshake message {number} rejected ({type(e).__name__}: {e})") from None

    def _check_remote(self, payload: bytes) -> None:
        self.remote_static = bytes(self._state.rs.public_bytes)
        self.remote_payload = payload
        self._authenticate(self.remote_static, payload)

    def receive(self, message: bytes) -> list[bytes]:
        """
        Process one handshake message from the peer; return what to send back.

        @raise HandshakeFailed: malformed or unauthentic message.
        @raise LinkViolation: whatever C{authenticate} raised.
        """
        if self.complete:
            raise RuntimeError("handshake already complete")
        payload = self._read(message)
        self._received += 1
        if self.initiator:
            # Message 2: responder's static key and hello; answer with message 3.
            self._check_remote(payload)
            return [bytes(self._connection.write_message(self._payload))]
        if self._received == 1:
            if payload:
                raise HandshakeFailed(f"handshake message 1 carries {len(payload)} unexpected payload bytes")
            return [bytes(self._connection.write_message(self._payload))]
        # Message 3: initiator's static key and hello; we are done.
        self._check_remote(payload)
        return []

    def transport(self) -> NoiseTransport:
        if not self.complete:
            raise RuntimeError("handshake not complete")
        return NoiseTransport(self._connection)
