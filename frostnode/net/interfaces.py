"""
The contracts between layers, so that links, broadcast and the protocols above
can be built, tested and swapped independently (real Noise/TCP links, the
in-memory links of tests and large-n benchmarks).

Peers are named by host key (32-byte x-only bytes) everywhere above C{net/}.
"""

from __future__ import annotations

from typing import Callable

from zope.interface import Attribute, Interface

#: A handler for messages on one channel: C{handler(sender_host_key, payload)}.
Handler = Callable[[bytes, bytes], None]

# Channel numbers: one per owner module above the links.  A frame for a
# channel with no registered handler is an unknown message type.
CHANNEL_BROADCAST = 1   # frostnode.broadcast
CHANNEL_DKG = 2         # frostnode.dkg (point-to-point shares)
CHANNEL_SYNC = 3        # frostnode.sync (catch-up)
CHANNEL_SIGN = 4        # frostnode.signing
CHANNEL_MEMBERSHIP = 5  # frostnode.membership


class ILinks(Interface):
    """
    Reliable, unordered, authenticated point-to-point delivery among members.

    Every payload handed to L{send} is delivered exactly once to the handler
    registered for its channel on the peer, even across reconnects, in no
    particular order.  The sender a handler sees is the authenticated link's
    member, never a field from the message.
    """

    local = Attribute("This node's host key (32 bytes).")

    def send(peer: bytes, channel: int, payload: bytes) -> None:
        """
        Queue C{payload} for C{peer}.  Never blocks, never raises for a peer
        that is down (it is queued); raises C{ValueError} for a peer that is
        not a member or a payload over the configured maximum, and
        L{frostnode.net.errors.QueueFull} when the peer's queue is full.
        """

    def register(channel: int, handler: Handler) -> None:
        """Route messages on C{channel} to C{handler}; one handler per channel."""

    def peers() -> list[bytes]:
        """Host keys of the other members."""

    def connected() -> set[bytes]:
        """Host keys of the members with an authenticated link up now."""


class IBroadcast(Interface):
    """
    Reliable broadcast among all members: validity, consistency, totality
    for n >= 3f + 1.  An instance is identified by (original sender, tag).
    """

    def broadcast(tag: bytes, payload: bytes) -> None:
        """Reliably broadcast C{payload} under C{tag}; we deliver it to ourselves too."""

    def subscribe(prefix: bytes, callback: Callable[[bytes, bytes, bytes], None]) -> None:
        """Call C{callback(sender, tag, payload)} on delivery of any tag starting with C{prefix}."""

    def delivered(sender: bytes, tag: bytes):
        """A Deferred that fires with the payload delivered for (sender, tag)."""
