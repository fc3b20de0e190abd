# -*- test-case-name: tests.test_net_reliable -*-
"""
What can go wrong on a peer link, split the way the rest of frostnode splits
errors (see L{frostnode.crypto.errors}):

  - L{QueueFull} and C{ValueError}: raised to I{our} caller of
    C{ILinks.send}; nobody on the network is blamed.
  - L{LinkViolation} and its subclasses: the other end of I{one link} broke
    the link protocol.  The link layer logs the reason with the peer's
    address (and member key, once known) and closes that link only; the node
    and its other links carry on.  They never escape C{net/}.
"""

from __future__ import annotations

from typing import Optional


class QueueFull(Exception):
    """
    A peer's queue of unacknowledged messages is at its limit: the peer has
    been away (or silent) too long for this node to keep buffering for it.

    @ivar peer: the peer's host key.
    """

    def __init__(self, peer: bytes, queued: int, queued_bytes: int, limit: str) -> None:
        self.peer = peer
        self.queued = queued
        self.queued_bytes = queued_bytes
        self.limit = limit
        super().__init__(
            f"queue for peer {peer.hex()[:12]} is full ({queued} messages, {queued_bytes} bytes "
            f"unacknowledged; limit: {limit}): the peer has been away too long"
        )


class UnsupportedAddress(ValueError):
    """A card address this node cannot dial (unknown scheme, or C{.onion} without a SOCKS endpoint)."""


class LinkViolation(Exception):
    """
    The other end of a link broke the link protocol; the link is closed.

    @ivar reason: a one-line, log-ready description.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeFailed(LinkViolation):
    """The Noise handshake did not complete: malformed message, failed decryption, bad payload."""


class PeerRefused(LinkViolation):
    """
    The handshake completed but the remote static key is not acceptable: not
    a member, ourselves, or not the member we dialled.

    @ivar noise_key: the remote static key, for the log line.
    """

    def __init__(self, reason: str, noise_key: Optional[bytes] = None) -> None:
        super().__init__(reason)
        self.noise_key = noise_key


class DecryptionFailed(LinkViolation):
    """A transport frame failed Noise authentication."""


class FramingError(LinkViolation):
    """A malformed record, an unknown record type, or a record over the size limit."""


class ReliabilityError(LinkViolation):
    """Message ids or acknowledgements that no honest peer could send."""
