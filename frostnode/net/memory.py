# -*- test-case-name: tests.test_broadcast_memory -*-
"""
In-memory links: every member of a federation in one process, no sockets.

Why: the protocols above C{net/} are written against L{ILinks}, and their
tests (and benchmarks at n = 31 or 64) need many members, faults on demand
and a clock they control.  L{MemoryNetwork} is a hub that hands each member a
L{MemoryLinks}; a payload sent is delivered to the peer's handler on a later
turn of the injected L{IReactorTime} (C{callLater(delay)}, 0 by default), so
nothing runs re-entrantly and C{task.Clock} tests drive time themselves.

What it simulates, honouring the L{ILinks} contract (reliable, exactly once,
unordered):
  - B{unordered delivery}: with C{rng}, each turn's pending payloads are
    delivered in a random order;
  - B{cut/heal}: payloads between a cut pair are held and delivered, once,
    after L{MemoryNetwork.heal};
  - B{silence}: a silenced member has crashed: what it sends and what is sent
    to it are dropped;
  - B{byzantine}: L{MemoryNetwork.set_byzantine} installs a rewrite function
    over a member's outgoing payloads (drop, replace, multiply, redirect).

Counters (C{payloads_sent}, C{bytes_sent} per channel) feed the benchmarks.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from frostnode.net.interfaces import Handler, ILinks

#: A byzantine member's rewrite of one outgoing payload:
#: C{rewrite(peer, channel, payload) -> [(peer, channel, payload), ...]}.
Rewrite = Callable[[bytes, int, bytes], Iterable[tuple[bytes, int, bytes]]]


class MemoryNetwork:
    """
    The hub: owns pending payloads, faults and counters.

    @param clock: schedules deliveries (C{callLater(delay, ...)}).
    @param members: every member's host key.
    @param rng: if given, shuffles each turn's deliveries.
    @param delay: seconds from send to delivery.
    @param max_payload: payloads above this raise C{ValueError}, like real links.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        members: Sequence[bytes],
        rng: Optional[random.Random] = None,
        delay: float = 0.0,
        max_payload: int = 16 * 1024 * 1024,
    ) -> None:
        if len(set(members)) != len(members):
            raise ValueError("duplicate member")
        self.clock = clock
        self.members = list(members)
        self.rng = rng
        self.delay = delay
        self.max_payload = max_payload
        self._links = {m: MemoryLinks(self, m) for m in self.members}
        self._pending: list[tuple[bytes, bytes, int, bytes]] = []
        self._call: Optional[IDelayedCall] = None
        self._cut: set[frozenset[bytes]] = set()
        self._held: dict[frozenset[bytes], list[tuple[bytes, bytes, int, bytes]]] = defaultdict(list)
        self._silent: set[bytes] = set()
        self._byzantine: dict[bytes, Rewrite] = {}
        self.payloads_sent: dict[int, int] = defaultdict(int)
        self.bytes_sent: dict[int, int] = defaultdict(int)
        self.payloads_delivered = 0

    def links(self, member: bytes) -> "MemoryLinks":
        """The L{ILinks} of C{member}."""
        return self._links[member]

    # -- faults ------------------------------------------------------------

    def cut(self, a: bytes, b: bytes) -> None:
        """Hold everything between C{a} and C{b} until L{heal}."""
        self._cut.add(frozenset((a, b)))

    def heal(self, a: bytes, b: bytes) -> None:
        """Restore the pair's link and deliver what was held, once."""
        pair = frozenset((a, b))
        self._cut.discard(pair)
        held = self._held.pop(pair, [])
        if held:
            self._pending.extend(held)
            self._schedule()

    def silence(self, member: bytes) -> None:
        """Crash C{member}: drop what it sends and what is sent to it."""
        self._silent.add(member)

    def unsilence(self, member: bytes) -> None:
        self._silent.discard(member)

    def set_byzantine(self, member: bytes, rewrite: Optional[Rewrite]) -> None:
        """Pass C{member}'s outgoing payloads through C{rewrite} (None: honest again)."""
        if rewrite is None:
            self._byzantine.pop(member, None)
        else:
            self._byzantine[member] = rewrite

    # -- delivery ----------------------------------------------------------

    def _send(self, sender: bytes, peer: bytes, channel: int, payload: bytes) -> None:
        if peer not in self._links or peer == sender:
            raise ValueError(f"{peer.hex()} is not another member")
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes over the {self.max_payload}-byte limit")
        if sender in self._silent:
            return
        rewrite = self._byzantine.get(sender)
        out = [(peer, channel, payload)] if rewrite is None else list(rewrite(peer, channel, payload))
        for p, c, data in out:
            self.payloads_sent[c] += 1
            self.bytes_sent[c] += len(data)
            self._pending.append((sender, p, c, data))
        if out:
            self._schedule()

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self._deliver)

    def _deliver(self) -> None:
        self._call = None
        batch, self._pending = self._pending, []
        if self.rng is not None:
            self.rng.shuffle(batch)
        for item in batch:
            sender, peer, channel, payload = item
            if sender in self._silent or peer in self._silent:
                continue
            pair = frozenset((sender, peer))
            if pair in self._cut:
                self._held[pair].append(item)
                continue
            handler = self._links[peer]._handlers.get(channel)
            if handler is None:
                self.log.warn("no handler for channel {channel} on {peer}; dropped payload from {sender}",
                              channel=channel, peer=peer.hex()[:12], sender=sender.hex()[:12])
                continue
            self.payloads_delivered += 1
            try:
                handler(sender, payload)
            except Exception:
                self.log.failure("handler for channel {channel} on {peer} failed on payload from {sender}",
                                 channel=channel, peer=peer.hex()[:12], sender=sender.hex()[:12])


@implementer(ILinks)
class MemoryLinks:
    """One member's links into a L{MemoryNetwork}."""

    def __init__(self, network: MemoryNetwork, local: bytes) -> None:
        self._network = network
        self.local = local
        self._handlers: dict[int, Handler] = {}

    def send(self, peer: bytes, channel: int, payload: bytes) -> None:
        self._network._send(self.local, peer, channel, payload)

    def register(self, channel: int, handler: Handler) -> None:
        if channel in self._handlers:
            raise ValueError(f"channel {channel} already has a handler")
        self._handlers[channel] = handler

    def peers(self) -> list[bytes]:
        return [m for m in self._network.members if m != self.local]

    def connected(self) -> set[bytes]:
        net = self._network
        if self.local in net._silent:
            return set()
        return {
            m for m in self.peers()
            if m not in net._silent and frozenset((self.local, m)) not in net._cut
        }
