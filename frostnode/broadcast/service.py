# -*- test-case-name: tests.test_broadcast_service -*-
"""
The Twisted driver of L{frostnode.broadcast.bracha}: L{IBroadcast} over any L{ILinks}.

Why a separate shell: the protocol core stays pure (and is tested without a
reactor); this module only moves bytes, keeps time and calls back.

  - B{Batching.}  Records the core wants to send are queued per peer and
    flushed once per reactor turn (C{clock.callLater(0)}), one links payload
    per peer (split only above C{max_batch_bytes}).  Records for all peers are
    encoded once and the same bytes go to every peer.
  - B{Collection.}  While the service runs, a C{LoopingCall} on the injected
    clock calls L{Bracha.sweep} every C{sweep_interval} seconds and carries
    out what it returns (ECHOs of SENDs that waited for room).
  - B{Delivery.}  Subscribers (by tag prefix) and L{delivered} Deferreds are
    called in the turn the core delivers.  A subscriber that raises is logged
    and the others still run.  The last C{recent_deliveries} payloads are kept
    so that L{delivered} asked after the fact still answers.
  - B{Misbehaviour} reported by the core is logged with the culprit's host key.
  - B{Quiescence.}  L{handled} fires once the core has handled a number of
    records, so tests and tools can wait for traffic that delivers nothing
    (an equivocation no quorum forms on) without polling.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from frostnode.broadcast.bracha import (
    MAX_BATCH_RECORDS,
    Action,
    Bracha,
    BrachaConfig,
    Deliver,
    Misbehaviour,
    Send,
    SendAll,
    encode_batch,
)
from frostnode.net.interfaces import CHANNEL_BROADCAST, IBroadcast, ILinks

Subscriber = Callable[[bytes, bytes, bytes], None]


def _short(key: bytes) -> str:
    return key.hex()[:16]


@implementer(IBroadcast)
class ReliableBroadcast(Service):
    """
    Reliable broadcast among C{members} over C{links}.

    @param links: this node's links; we register on L{CHANNEL_BROADCAST}.
    @param members: every member's host key, C{links.local} included.
    @param clock: schedules flushes and sweeps.
    @param config: the core's limits.
    @param sweep_interval: seconds between collection sweeps.
    @param max_batch_bytes: soft cap on one links payload (a single larger
        record still goes alone).
    @param recent_deliveries: deliveries remembered for late L{delivered} calls.
    """

    log = Logger()

    def __init__(
        self,
        links: ILinks,
        members: Sequence[bytes],
        clock: IReactorTime,
        config: BrachaConfig = BrachaConfig(),
        sweep_interval: float = 30.0,
        max_batch_bytes: int = 60 * 1024,
        recent_deliveries: int = 4096,
    ) -> None:
        self.links = links
        self.clock = clock
        self.core = Bracha(links.local, members, config)
        self.max_batch_bytes = max_batch_bytes
        self._peers = [m for m in self.core.members if m != links.local]
        self._to_all: list[bytes] = []
        self._to_one: dict[bytes, list[bytes]] = {}
        self._flush_call: Optional[IDelayedCall] = None
        self._subscribers: list[tuple[bytes, Subscriber]] = []
        self._waiting: dict[tuple[bytes, bytes], list[Deferred]] = {}
        self._recent: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._recent_max = recent_deliveries
        self._handled_waiters: list[tuple[int, Deferred]] = []
        # Start times of our own broadcasts, for the latency observers; bounded
        # like the core's open instances (an undelivered one ages out).
        self._started: OrderedDict[bytes, float] = OrderedDict()
        self._latency_observers: list[Callable[[float], None]] = []
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._sweep_interval = sweep_interval
        #: Counters for benchmarks: records, batches and bytes through the links.
        self.records_sent = 0
        self.batches_received = 0
        self.batches_sent = 0
        self.bytes_sent = 0
        links.register(CHANNEL_BROADCAST, self._received)

    # -- Service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._sweeper.start(self._sweep_interval, now=False)

    def stopService(self):
        if self._sweeper.running:
            self._sweeper.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush()
        return super().stopService()

    # -- IBroadcast --------------------------------------------------------

    def broadcast(self, tag: bytes, payload: bytes) -> None:
        """
        Reliably broadcast C{payload} under C{tag}; we deliver it too.

        @raise ValueError: see L{Bracha.broadcast}.
        """
        actions = self.core.broadcast(tag, payload)
        if self._latency_observers:
            self._started[tag] = self.clock.seconds()
            if len(self._started) > self._recent_max:
                self._started.popitem(last=False)
        self._apply(actions)

    def observe_latency(self, callback: Callable[[float], None]) -> None:
        """
        Call C{callback(seconds)} when one of our own broadcasts is delivered
        here: the time from L{broadcast} to delivery, which needs 2f+1 READYs,
        so it measures the whole protocol round, not just our links.
        """
        self._latency_observers.append(callback)

    def subscribe(self, prefix: bytes, callback: Subscriber) -> None:
        """Call C{callback(sender, tag, payload)} for every delivery whose tag starts with C{prefix}."""
        self._subscribers.append((prefix, callback))

    def delivered(self, sender: bytes, tag: bytes) -> Deferred:
        """
        A Deferred firing with the payload delivered for (C{sender}, C{tag}).

        Fires at once if the delivery is among the recent ones; cancelling it
        forgets the wait.
        """
        key = (sender, tag)
        payload = self._recent.get(key)
        if payload is not None:
            return succeed(payload)
        waiters = self._waiting.setdefault(key, [])

        def cancel(d: Deferred) -> None:
            ws = self._waiting.get(key)
            if ws is not None and d in ws:
                ws.remove(d)
                if not ws:
                    del self._waiting[key]

        d: Deferred = Deferred(cancel)
        waiters.append(d)
        return d

    def handled(self, records: int) -> Deferred:
        """
        A Deferred firing with the core's L{records_handled<Bracha.records_handled>}
        once at least C{records} records from peers have been handled (at
        once if they have); cancelling it forgets the wait.
        """
        if self.core.records_handled >= records:
            return succeed(self.core.records_handled)

        def cancel(d: Deferred) -> None:
            self._handled_waiters = [(n, w) for n, w in self._handled_waiters if w is not d]

        d: Deferred = Deferred(cancel)
        self._handled_waiters.append((records, d))
        return d

    # -- plumbing ----------------------------------------------------------

    def _received(self, sender: bytes, data: bytes) -> None:
        try:
            actions = self.core.receive(sender, data)
        except ValueError as e:
            self.log.warn("broadcast batch from non-member {sender} refused: {why}", sender=_short(sender), why=str(e))
            return
        self.batches_received += 1
        self._apply(actions)
        if self._handled_waiters:
            self._fire_handled()

    def _fire_handled(self) -> None:
        handled = self.core.records_handled
        due = [w for n, w in self._handled_waiters if n <= handled]
        if due:
            self._handled_waiters = [(n, w) for n, w in self._handled_waiters if n > handled]
            for w in due:
                w.callback(handled)

    def _sweep(self) -> None:
        self._apply(self.core.sweep())

    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            t = type(a)
            if t is SendAll:
                self._to_all.append(a.record)
            elif t is Send:
                self._to_one.setdefault(a.to, []).append(a.record)
            elif t is Deliver:
                self._deliver(a)
            elif t is Misbehaviour:
                self.log.warn("broadcast misbehaviour by {culprit}: {reason}", culprit=_short(a.culprit), reason=a.reason)
        if (self._to_all or self._to_one) and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _batches(self, records: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for r in records:
            if chunk and (size + len(r) > self.max_batch_bytes or len(chunk) >= MAX_BATCH_RECORDS):
                out.append(encode_batch(chunk))
                chunk, size = [], 0
            chunk.append(r)
            size += len(r)
        if chunk:
            out.append(encode_batch(chunk))
        return out

    def _flush(self) -> None:
        self._flush_call = None
        to_all, self._to_all = self._to_all, []
        to_one, self._to_one = self._to_one, {}
        common = self._batches(to_all) if to_all else []
        n_all = len(to_all)
        for peer in self._peers:
            extra = to_one.get(peer)
            if extra is None:
                payloads = common
                self.records_sent += n_all
            else:
                # Small enough to ride with the common records in one payload?
                payloads = self._batches(to_all + extra) if len(common) <= 1 else common + self._batches(extra)
                self.records_sent += n_all + len(extra)
            for p in payloads:
                try:
                    self.links.send(peer, CHANNEL_BROADCAST, p)
                except Exception as e:
                    # ValueError (oversize) or QueueFull: this peer loses these
                    # records; with reliable links that only happens to a peer
                    # gone too long, which the sync layer must catch up.
                    self.log.error("broadcast batch to {peer} not queued: {why}", peer=_short(peer), why=repr(e))
                    continue
                self.batches_sent += 1
                self.bytes_sent += len(p)

    def _deliver(self, d: Deliver) -> None:
        if d.sender == self.links.local and self._latency_observers:
            started = self._started.pop(d.tag, None)
            if started is not None:
                elapsed = self.clock.seconds() - started
                for observe in self._latency_observers:
                    observe(elapsed)
        key = (d.sender, d.tag)
        self._recent[key] = d.payload
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        for prefix, callback in list(self._subscribers):
            if d.tag.startswith(prefix):
                try:
                    callback(d.sender, d.tag, d.payload)
                except Exception:
                    self.log.failure("broadcast subscriber for {prefix} failed on ({sender}, {tag})",
                                     prefix=prefix, sender=_short(d.sender), tag=d.tag)
        for waiter in self._waiting.pop(key, []):
            waiter.callback(d.payload)
