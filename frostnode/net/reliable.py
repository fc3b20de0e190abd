# -*- test-case-name: tests.test_net_reliable -*-
"""
Reliable, unordered, exactly-once delivery between two members: the pure
state, no I/O.  L{frostnode.net.peers} keeps one L{SendQueue} and one
L{ReceiveWindow} per peer, for the lifetime of the process, across however
many TCP connections come and go.

Semantics
=========

  - Each process picks a random 64-bit B{session epoch} when it starts and
    announces it in every handshake.  Message ids are per (our epoch, peer):
    1, 2, 3, ...  A restarted process has a new epoch, so its ids can never
    be mistaken for its previous incarnation's.
  - The sender keeps every message until the peer acknowledges it.  After
    any reconnect it sends C{RESUME(base)} (the lowest id it still holds)
    and then everything it holds, in id order.
  - The receiver remembers, per peer epoch, a contiguous low watermark
    C{low} (every id <= low received) and the set of ids received above it.
    A received id at or below C{low}, or in the set, is a duplicate and is
    dropped (but acknowledged again).  C{RESUME(base)} lets it raise C{low}
    to C{base - 1}: ids below C{base} will never come again.
  - Acknowledgements are C{(cumulative, [ids above it])}, batched per link
    and sent with outgoing data or after a short delay.

Hence: B{delivery is exactly once within the lifetime of both processes.}
If the I{receiver} restarts, what the sender still holds is delivered to the
new process (the old one may or may not have handled some of it); if the
I{sender} restarts, what it held is gone.  Persistence and catch-up above
this layer (the replicated log, DKG and signing state) handle restarts.

Bounds
======

  - Sender: at most C{max_messages} unacknowledged messages I{and} at most
    that span of ids between the oldest unacknowledged and the next id, and
    at most C{max_bytes} of payload; beyond that L{SendQueue.push} raises
    L{QueueFull}, telling the caller the peer has been away too long.
  - Receiver: ids more than C{window} above C{low} are a protocol violation
    (an honest sender's span never exceeds its C{max_messages}; keep
    C{window} >= every member's C{max_messages}), so the set above C{low}
    holds at most C{window} ids whatever a peer sends.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Optional

from frostnode.net.errors import QueueFull, ReliabilityError


class SendQueue:
    """
    Outgoing messages to one peer, held until acknowledged.

    @param peer: the peer's host key (for errors).
    @param max_messages: most unacknowledged messages (and widest id span).
    @param max_bytes: most unacknowledged payload bytes.
    """

    __slots__ = ("peer", "max_messages", "max_bytes", "next_id", "_pending", "queued_bytes")

    def __init__(self, peer: bytes, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("queue limits must be positive")
        self.peer = peer
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.next_id = 1
        self._pending: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self.queued_bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def base(self) -> int:
        """The lowest id we may still (re)send."""
        for msg_id in self._pending:
            return msg_id
        return self.next_id

    def push(self, channel: int, payload: bytes) -> int:
        """
        Hold a new message; return its id.

        @raise QueueFull: the peer has this many unacknowledged messages or bytes.
        """
        if self.next_id - self.base >= self.max_messages:
            raise QueueFull(self.peer, len(self._pending), self.queued_bytes, f"{self.max_messages} messages")
        if self.queued_bytes + len(payload) > self.max_bytes:
            raise QueueFull(self.peer, len(self._pending), self.queued_bytes, f"{self.max_bytes} bytes")
        msg_id = self.next_id
        self.next_id = msg_id + 1
        self._pending[msg_id] = (channel, payload)
        self.queued_bytes += len(payload)
        return msg_id

    def ack(self, cumulative: int, ids: list[int]) -> int:
        """
        Forget what the peer has acknowledged; return how many messages that was.

        @raise ReliabilityError: an id we never assigned.
        """
        last = self.next_id - 1
        if cumulative > last:
            raise ReliabilityError(f"acknowledgement up to id {cumulative}, but only {last} were ever sent")
        pending = self._pending
        removed = 0
        while pending:
            msg_id = next(iter(pending))
            if msg_id > cumulative:
                break
            _, (_, payload) = pending.popitem(last=False)
            self.queued_bytes -= len(payload)
            removed += 1
        for msg_id in ids:
            if msg_id > last or msg_id == 0:
                raise ReliabilityError(f"acknowledgement of id {msg_id}, never sent (last id {last})")
            entry = pending.pop(msg_id, None)
            if entry is not None:
                self.queued_bytes -= len(entry[1])
                removed += 1
        return removed

    def unacked(self) -> Iterator[tuple[int, int, bytes]]:
        """C{(id, channel, payload)} of every held message, oldest first (for a resend)."""
        for msg_id, (channel, payload) in list(self._pending.items()):
            yield msg_id, channel, payload


class ReceiveWindow:
    """
    Which ids from one peer epoch have been received, in bounded memory.

    @param window: how far above the low watermark an id may be.
    """

    __slots__ = ("window", "epoch", "low", "_above", "_new_above", "ack_pending")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.window = window
        self.epoch: Optional[int] = None
        self.low = 0
        self._above: set[int] = set()
        self._new_above: list[int] = []
        self.ack_pending = False

    def set_epoch(self, epoch: int) -> bool:
        """
        Start tracking C{epoch}; forget everything if it is a new one (the
        peer restarted).  Return whether the state was reset.
        """
        if epoch == self.epoch:
            return False
        self.epoch = epoch
        self.low = 0
        self._above.clear()
        self._new_above.clear()
        self.ack_pending = False
        return True

    def resume(self, base: int) -> None:
        """The sender will never send an id below C{base}: raise the watermark."""
        if base == 0:
            raise ReliabilityError("RESUME with base 0 (ids start at 1)")
        if base - 1 > self.low:
            self.low = base - 1
            above = self._above
            if above:
                self._above = {i for i in above if i > self.low}
            self._advance()

    def _advance(self) -> None:
        above = self._above
        low = self.low
        while low + 1 in above:
            low += 1
            above.discard(low)
        self.low = low

    def accept(self, msg_id: int) -> bool:
        """
        Record C{msg_id}; return True if it is new (deliver it), False for a
        duplicate (drop it).  Either way an acknowledgement is due.

        @raise ReliabilityError: id 0 or beyond the window.
        """
        self.ack_pending = True
        low = self.low
        if msg_id == low + 1:                 # the common case: in order
            self.low = msg_id
            if self._above:
                self._advance()
            return True
        if msg_id <= low:
            if msg_id == 0:
                raise ReliabilityError("message id 0 (ids start at 1)")
            return False
        if msg_id in self._above:
            return False
        if msg_id - low > self.window:
            raise ReliabilityError(
                f"message id {msg_id} is {msg_id - low} above the low watermark {low} (window {self.window})"
            )
        self._above.add(msg_id)
        self._new_above.append(msg_id)
        return True

    def take_ack(self) -> tuple[int, list[int]]:
        """The acknowledgement due now: C{(cumulative, ids above it received since the last one)}."""
        self.ack_pending = False
        ids = [i for i in self._new_above if i > self.low]
        self._new_above = []
        return self.low, ids

    def snapshot_ack(self) -> tuple[int, list[int]]:
        """Everything received, for a fresh link (acks in flight on the old one may be lost)."""
        self.ack_pending = False
        self._new_above = []
        return self.low, sorted(self._above)
