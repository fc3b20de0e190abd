# -*- test-case-name: tests.test_sync_service -*-
"""
L{SyncService}: the replicated data log's Twisted shell.  It takes client
submissions into the local log, spreads them by reliable broadcast, and
fetches what this node missed from its peers.  The design is in
L{frostnode.sync}; the bytes in L{frostnode.sync.messages}; who to ask in
L{frostnode.sync.catchup}.

Submission path, in order:
  1. L{SyncService.submit} hands the body to L{DataLog.append_local} (group
     commit).  Its Deferred fires after the fsync, with the slot: that is the
     client's acknowledgement.
  2. The acknowledged record joins the open batch.  The batch closes at
     the end of the reactor turn (which holds a whole group commit's
     acknowledgements) if no other submission is waiting for the disk, so a
     lone record is not delayed; otherwise after C{batch_delay}, so that
     under load the next group commit's records join it, or at
     C{max_batch_records} or C{max_batch_bytes}.  Every batch costs a
     broadcast (O(n^2) messages), a signature check and a group commit with
     an fsync on every member: about 6 ms of CPU over a 5-member federation
     on the reference machine, which is why batches should be large.
  3. The batch is signed and broadcast under C{sync/<first>-<last>}.  If
     the broadcast layer refuses (its per-originator quota of open
     instances), the batch waits in a bounded queue and is retried; a batch
     that cannot wait (queue full, or one record over the broadcast payload
     limit) is left to catch-up, which every peer runs against us anyway.

The local sequence number of a new record is known without reading it back:
only this service appends to the local origin, the store applies writes in
submission order and fires their Deferreds in that order, so the created
records take C{max_seq + 1, + 2, ...}.  Each batch checks its first and last
slot against the log before it is signed; a mismatch (someone else appended)
is logged, the counter is re-read and the batch is left to catch-up.

Receiving: a delivered batch from another origin is decoded, its tag and the
origin's signature checked, and each record inserted with the batch's proof.
A catch-up page is checked the same way (L{verify_page}) before any of it is
written.  A record that fails is logged with its culprit and dropped; the
sender's other messages are still handled.

Observing: L{SyncService.add_change_observer} calls back after every event
that can change what the log, L{SyncService.status} and the counters show,
so a test or tool waits for a condition on them (every member holds the
same records; a peer's lag is 0) without polling.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, NamedTuple, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from frostnode.crypto.errors import ProtocolError
from frostnode.identity import HostKeypair, MemberDirectory
from frostnode.net.interfaces import CHANNEL_SYNC, IBroadcast, ILinks
from frostnode.store.codec import check_time, micros, seconds
from frostnode.store.errors import SequenceConflict, StoreClosed
from frostnode.store.log import DataLog, Envelope, LogEntry, RecordBody
from frostnode.sync.catchup import PageRequest, Planner
from frostnode.sync.errors import BadBatch, BadPage, SyncOverloaded, SyncUnavailable
from frostnode.sync.messages import (
    TAG_PREFIX,
    Page,
    Proof,
    Request,
    Summary,
    batch_statement,
    batch_tag,
    decode_batch,
    decode_message,
    decode_proof,
    encode_batch,
    encode_batch_size,
    encode_page,
    encode_request,
    encode_summary,
    page_overhead,
    servable_prefix,
    verify_batch,
    verify_page,
)
from frostnode.wire import DecodeError


#: Records accepted in one broadcast batch (the broadcast payload limit binds first).
MAX_BATCH_RECORDS = 0xFFFF


def _short(key: bytes) -> str:
    return key.hex()[:16]


@dataclass(frozen=True)
class SyncConfig:
    """
    Limits and timers of replication and catch-up.

    @ivar batch_delay: longest a batch stays open for records still on their
        way to the disk (a batch with nothing more on the way closes at the
        end of its reactor turn).
    @ivar max_batch_records: records per broadcast batch.
    @ivar max_batch_bytes: bytes per broadcast payload; keep it at or below
        the broadcast layer's C{max_payload} (64 KiB by default).
    @ivar max_unsent_batches: batches kept waiting for broadcast room.
    @ivar broadcast_retry: seconds between attempts to broadcast waiting batches.
    @ivar summary_interval: seconds between summaries to each connected peer
        (also the planner's tick).
    @ivar page_records: records asked for per catch-up request.
    @ivar max_page_bytes: bytes of envelopes per page served; keep it under
        the links' C{max_message_size}.
    @ivar max_in_flight: catch-up requests outstanding at once.
    @ivar request_timeout: seconds before an unanswered request is given up.
    @ivar retry_delay: seconds before asking the same peer for the same origin
        after an empty answer or a timeout.
    @ivar penalty_time: seconds a peer that served bad records is not asked.
    @ivar catchup_grace: seconds our C{have} for an origin must stand still
        (while a peer claims more) before we fetch it rather than wait for
        its broadcasts.
    @ivar serve_rate: pages per second served to one peer (token bucket).
    @ivar serve_burst: pages one peer may ask for at once.
    @ivar max_summary_origins: origins listed in (and accepted from) a summary.
    @ivar max_proofs_per_page: distinct batches (signature checks) in one page.
    @ivar max_pending_submissions: submissions waiting for their fsync.
    @ivar prune_interval: seconds between retention runs (only if the log
        has a retention rule).
    """

    batch_delay: float = 0.02
    max_batch_records: int = 512
    max_batch_bytes: int = 60 * 1024
    max_unsent_batches: int = 4096
    broadcast_retry: float = 0.05
    summary_interval: float = 2.0
    page_records: int = 1024
    max_page_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 8
    request_timeout: float = 10.0
    retry_delay: float = 1.0
    penalty_time: float = 60.0
    catchup_grace: float = 1.0
    serve_rate: float = 200.0
    serve_burst: int = 32
    max_summary_origins: int = 4096
    max_proofs_per_page: int = 256
    max_pending_submissions: int = 65536
    prune_interval: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SyncConfig.{f.name} must be a non-negative number, got {value!r}")
            if f.name not in ("batch_delay", "catchup_grace") and value == 0:
                raise ValueError(f"SyncConfig.{f.name} must be positive")
        if self.page_records < self.max_batch_records:
            raise ValueError(
                f"SyncConfig.page_records ({self.page_records}) must be at least max_batch_records "
                f"({self.max_batch_records}), or a whole batch might never fit a page"
            )


class SubmitResult(NamedTuple):
    """
    What a client is told once its record is durable here.

    @ivar record_id: SHA-256 of the canonical body.
    @ivar created: False if this node already held the record (resubmission).
    @ivar origin: host key of the member whose slot holds it (ours if
        created; empty in the rare case that retention removed an old
        record between the resubmission's check and this answer).
    @ivar seq: that slot's sequence number (0 in that case).
    """

    record_id: bytes
    created: bool
    origin: bytes
    seq: int


class _Bucket:
    """Token bucket for the pages one peer may ask for."""

    __slots__ = ("tokens", "last", "dropped", "logged_at")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.last = now
        self.dropped = 0
        self.logged_at: Optional[float] = None


class SyncService(Service):
    """
    Replication and catch-up of the data log among the members.

    @param log: this node's data log (its C{local} is our host key).
    @param links: this node's links; we register on L{CHANNEL_SYNC}.
    @param broadcast: reliable broadcast; we subscribe to C{sync/} tags.
    @param host: our host keypair, which signs our batches.
    @param directory: the members: only their records are accepted.
    @param clock: every timer, and the receive time of submissions.
    @param config: limits and timers.
    """

    log = Logger()

    def __init__(
        self,
        log: DataLog,
        links: ILinks,
        broadcast: IBroadcast,
        host: HostKeypair,
        directory: MemberDirectory,
        clock: IReactorTime,
        config: SyncConfig = SyncConfig(),
    ) -> None:
        if log.local != host.public or links.local != host.public:
            raise ValueError("the log, the links and the host key must all be this node's")
        if host.public not in directory:
            raise ValueError(f"our host key {host.public.hex()} is not in the member directory")
        self.datalog = log
        self.links = links
        self.broadcaster = broadcast
        self.host = host
        self.directory = directory
        self.clock = clock
        self.config = config
        self.local = host.public
        self.planner = Planner(
            self.local,
            page_records=config.page_records,
            max_in_flight=config.max_in_flight,
            request_timeout=config.request_timeout,
            retry_delay=config.retry_delay,
            penalty_time=config.penalty_time,
            grace=config.catchup_grace,
        )
        self._next_seq = log.origin_state(self.local).max_seq
        self._pending_submissions = 0
        self._batch: list[tuple[int, int, RecordBody]] = []
        self._batch_bytes = 0
        self._batch_call: Optional[IDelayedCall] = None
        self._idle_call: Optional[IDelayedCall] = None
        self._unsent: list[tuple[bytes, bytes]] = []
        self._retry_call: Optional[IDelayedCall] = None
        self._buckets: dict[bytes, _Bucket] = {}
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._pruner: Optional[LoopingCall] = None
        # Envelopes decode against the log's limits plus their own header.
        self._max_envelope = log.limits.max_payload + log.limits.max_nonce + log.limits.max_proof + 1024
        #: Counters for tests, status and benchmarks.
        self.batches_broadcast = 0
        self.batches_received = 0
        self.records_received = 0
        self.pages_served = 0
        self.pages_fetched = 0
        self.records_fetched = 0
        self.rejected = 0
        self._change_observers: list[Callable[[], None]] = []
        links.register(CHANNEL_SYNC, self._then_changed(self._received))
        broadcast.subscribe(TAG_PREFIX, self._then_changed(self._delivered))
        observe = getattr(links, "add_link_observer", None)
        if observe is not None:
            observe(self._then_changed(self._link_changed))

    # -- Service -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self._pending_submissions:
            self._next_seq = self.datalog.origin_state(self.local).max_seq
        self._ticker.start(self.config.summary_interval, now=True)
        retention = self.datalog.retention
        if retention.max_age is not None or retention.max_per_origin is not None:
            self._pruner = LoopingCall(self._prune)
            self._pruner.clock = self.clock
            self._pruner.start(self.config.prune_interval, now=False)

    def stopService(self) -> Any:
        if self._ticker.running:
            self._ticker.stop()
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        for call in (self._batch_call, self._idle_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._batch_call = self._idle_call = self._retry_call = None
        # What is still unsent reaches the peers through catch-up.
        if self._batch:
            self._close_batch()
        self._unsent.clear()
        return super().stopService()

    # -- the client side's API --------------------------------------------------------

    def submit(self, body: RecordBody) -> Deferred:
        """
        Store C{body} durably under our origin and spread it to every member.

        Fires with a L{SubmitResult} after the fsync (acknowledge the client
        only then); fails with L{InvalidRecord}/L{RecordTooLarge} for a body
        the log refuses, L{SyncUnavailable} when the service is not running,
        L{SyncOverloaded} when too many submissions are waiting for the disk.
        Resubmitting a held record succeeds with C{created=False} and the
        slot that already holds it.
        """
        if not self.running:
            return fail(SyncUnavailable("the sync service is not running"))
        if self._pending_submissions >= self.config.max_pending_submissions:
            return fail(SyncOverloaded(f"{self._pending_submissions} submissions are waiting for the disk"))
        now = self.clock.seconds()
        try:
            d = self.datalog.append_local(body, now)
        except (TypeError, ValueError) as e:
            return fail(e)
        self._pending_submissions += 1
        d.addBoth(self._appended, body, micros(check_time(now, "now")))
        d.addBoth(self._changed)
        return d

    def get(self, record_id: bytes) -> Optional[LogEntry]:
        """The held record with this id (its first envelope and local topic position), or None."""
        return self.datalog.get(record_id)

    def topic_range(self, topic: str, from_position: int, limit: int) -> list[LogEntry]:
        """Up to C{limit} records of C{topic} from this node's local position C{from_position}."""
        return self.datalog.topic_range(topic, from_position, limit)

    def topic_last(self, topic: str) -> int:
        """The last local position used in C{topic} (0 if none)."""
        return self.datalog.topic_last(topic)

    def status(self) -> dict:
        """
        This node's log position and its distance to each peer, JSON-ready.

        C{peers[k]["lag"]} is how many records peer C{k} lacks that we hold
        (its sync lag behind us), C{peers[k]["missing"]} how many it holds
        that we lack, both from its last summary (C{None} before the first).
        """
        digest = self.datalog.digest()
        origins = self.datalog.origins()
        have = {o: st.have for o, st in origins.items()}
        lags = self.planner.lag(have)
        connected = self.links.connected()
        now = self.clock.seconds()
        peers = {}
        for peer in self.links.peers():
            s = self.planner.summaries.get(peer)
            lag = lags.get(peer)
            peers[peer.hex()] = {
                "up": peer in connected,
                "lag": None if lag is None else lag.lagging,
                "missing": None if lag is None else lag.missing,
                "digest": None if s is None else s.digest.hex(),
                "count": None if s is None else s.records,
                "summary_age": None if s is None else now - self.planner.summary_times[peer],
            }
        return {
            "host_key": self.local.hex(),
            "digest": digest.hex(),
            "count": digest.count,
            "origins": {o.hex(): {"have": st.have, "max": st.max_seq} for o, st in sorted(origins.items())},
            "peers": peers,
            "links_up": len(connected),
            "pending": {
                "submissions": self._pending_submissions,
                "batch": len(self._batch),
                "unsent_batches": len(self._unsent),
                "requests_in_flight": self.planner.in_flight,
            },
        }

    # -- observing -----------------------------------------------------------------------------

    def add_change_observer(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} after every event that can change what the log,
        L{status} and the received, fetched and served counters show: each
        write of ours to the log completing (a submission, a record from a
        broadcast batch or a catch-up page, a retention run) and each sync
        message, delivered batch or link change handled.  An observer runs
        inside this service's callbacks: it should only note the change (a
        test re-checks its condition in a later reactor turn).  One that
        raises is logged; the others still run.
        """
        self._change_observers.append(observer)

    def _changed(self, result: Any = None) -> Any:
        for observer in list(self._change_observers):
            try:
                observer()
            except Exception:
                self.log.failure("sync change observer {observer!r} failed", observer=observer)
        return result

    def _then_changed(self, handler: Callable[..., None]) -> Callable[..., None]:
        """C{handler}, telling the change observers once it has run."""

        def handle(*args: Any) -> None:
            try:
                handler(*args)
            finally:
                self._changed()

        return handle

    # -- our records: batch, sign, broadcast --------------------------------------------------

    def _appended(self, result: Any, body: RecordBody, received_us: int) -> Any:
        self._pending_submissions -= 1
        if isinstance(result, Failure):
            return result
        rid, created = result
        if created:
            self._next_seq += 1
            if self.running:
                self._add_to_batch(self._next_seq, received_us, body)
            return SubmitResult(rid, True, self.local, self._next_seq)
        entry = self.datalog.get(rid)
        if entry is None:  # pruned by retention since: it was held, so it is accepted
            return SubmitResult(rid, False, b"", 0)
        return SubmitResult(rid, False, entry.envelope.origin, entry.envelope.seq)

    def _add_to_batch(self, seq: int, received_us: int, body: RecordBody) -> None:
        size = 12 + len(body.canonical)
        if self._batch and (seq != self._batch[-1][0] + 1 or self._batch_bytes + size > self.config.max_batch_bytes):
            self._close_batch()
        self._batch.append((seq, received_us, body))
        self._batch_bytes += size
        if len(self._batch) >= self.config.max_batch_records:
            self._close_batch()
            return
        if self._batch_call is None:
            self._batch_call = self.clock.callLater(self.config.batch_delay, self._close_batch)
        if self._idle_call is None:
            self._idle_call = self.clock.callLater(0, self._close_if_idle)

    def _close_if_idle(self) -> None:
        # End of the turn that acknowledged records: if no other submission
        # is on its way to the disk, nothing would join the batch soon.
        self._idle_call = None
        if not self._pending_submissions:
            self._close_batch()

    def _close_batch(self) -> None:
        if self._batch_call is not None:
            if self._batch_call.active():
                self._batch_call.cancel()
            self._batch_call = None
        entries, self._batch, self._batch_bytes = self._batch, [], 0
        if not entries:
            return
        first, last = entries[0][0], entries[-1][0]
        if not self._slots_match(first, entries[0][2]) or not self._slots_match(last, entries[-1][2]):
            self.log.error(
                "our slots {first}-{last} do not hold the records just appended (another writer on the "
                "local origin?); leaving them to catch-up", first=first, last=last)
            self._next_seq = self.datalog.origin_state(self.local).max_seq
            return
        items = [(body.record_id, us) for _, us, body in entries]
        signature = self.host.sign(batch_statement(self.local, first, items))
        pairs = [(us, body) for _, us, body in entries]
        if encode_batch_size(pairs) > self.config.max_batch_bytes:
            # One record over the broadcast payload limit: peers pull it.
            self.log.debug("batch {first}-{last} too large to broadcast; left to catch-up", first=first, last=last)
            return
        self._broadcast(batch_tag(first, last), encode_batch(first, signature, pairs))

    def _slots_match(self, seq: int, body: RecordBody) -> bool:
        got = self.datalog.range(self.local, seq, 1)
        return bool(got) and got[0].seq == seq and got[0].record_id == body.record_id

    def _broadcast(self, tag: bytes, payload: bytes) -> None:
        if not self._unsent:
            try:
                self.broadcaster.broadcast(tag, payload)
                self.batches_broadcast += 1
                return
            except ValueError:
                pass  # the broadcast layer's quota of open instances: wait for room
        if len(self._unsent) >= self.config.max_unsent_batches:
            dropped_tag, _ = self._unsent.pop(0)
            self.log.warn("too many batches waiting for broadcast; {tag} left to catch-up", tag=dropped_tag)
        self._unsent.append((tag, payload))
        if self._retry_call is None:
            self._retry_call = self.clock.callLater(self.config.broadcast_retry, self._retry_unsent)

    def _retry_unsent(self) -> None:
        self._retry_call = None
        while self._unsent:
            tag, payload = self._unsent[0]
            try:
                self.broadcaster.broadcast(tag, payload)
            except ValueError:
                break
            self._unsent.pop(0)
            self.batches_broadcast += 1
        if self._unsent and self.running:
            self._retry_call = self.clock.callLater(self.config.broadcast_retry, self._retry_unsent)

    # -- others' batches ------------------------------------------------------------------------

    def _delivered(self, origin: bytes, tag: bytes, payload: bytes) -> None:
        if origin == self.local:
            return  # our own batch: already in the log
        try:
            if origin not in self.directory:
                raise BadBatch(origin, "originator is not a member")
            try:
                batch = decode_batch(payload, self.datalog.limits, MAX_BATCH_RECORDS)
            except DecodeError as e:
                raise BadBatch(origin, f"malformed batch: {e}") from None
            why = verify_batch(origin, tag, batch)
            if why is not None:
                raise BadBatch(origin, why)
            proof = batch.proof().encode()
            try:
                envelopes = [Envelope(origin, batch.first_seq + i, seconds(us), body, proof)
                             for i, (us, body) in enumerate(batch.entries)]
            except ValueError as e:  # InvalidRecord: a receive time out of range
                raise BadBatch(origin, str(e)) from None
        except BadBatch as e:
            self.rejected += 1
            self.log.warn("sync batch {tag} from {culprit} rejected: {reason}", tag=tag,
                          culprit=_short(origin), reason=e.message)
            return
        self.batches_received += 1
        for env in envelopes:
            d = self.datalog.insert_remote(env)
            d.addCallbacks(self._count_received, self._insert_failed, errbackArgs=(origin, "broadcast"))
            d.addBoth(self._changed)

    def _count_received(self, result: Any) -> None:
        if result.created:
            self.records_received += 1

    def _insert_failed(self, f: Failure, source: bytes, how: str) -> None:
        if f.check(SequenceConflict):
            e = f.value
            self.log.error("origin {culprit} equivocated: {reason} (via {how} from {source})",
                           culprit=_short(e.culprit), reason=e.message, how=how, source=_short(source))
        elif f.check(StoreClosed):
            pass
        else:
            self.log.failure("storing a record from {source} failed", f, source=_short(source))

    # -- catch-up: summaries and the planner ---------------------------------------------------------

    def _summary(self) -> bytes:
        digest = self.datalog.digest()
        origins = sorted(self.datalog.origins().items())[: self.config.max_summary_origins]
        return encode_summary(digest.count, digest.digest, [(o, st.have, st.max_seq) for o, st in origins],
                              self.config.max_summary_origins)

    def _send(self, peer: bytes, payload: bytes) -> bool:
        try:
            self.links.send(peer, CHANNEL_SYNC, payload)
            return True
        except Exception as e:
            self.log.warn("sync message to {peer} not queued: {why}", peer=_short(peer), why=repr(e))
            return False

    def _tick(self) -> None:
        try:
            now = self.clock.seconds()
            for peer, origin in self.planner.expire(now):
                self.log.info("catch-up request to {peer} for origin {origin} timed out", peer=_short(peer),
                              origin=_short(origin))
            connected = self.links.connected()
            if connected:
                summary = self._summary()
                for peer in sorted(connected):
                    self._send(peer, summary)
            self._plan()
        except Exception:
            self.log.failure("sync tick failed")

    def _link_changed(self, peer: bytes, up: bool) -> None:
        # A peer back (or new) learns our position at once, not at the next tick.
        if up and self.running:
            self._send(peer, self._summary())

    def _plan(self) -> None:
        if not self.running:
            return
        have = {o: st.have for o, st in self.datalog.origins().items()}
        for req in self.planner.plan(self.clock.seconds(), have, self.links.connected()):
            self._request(req)

    def _request(self, req: PageRequest) -> None:
        if not self._send(req.peer, encode_request(req.origin, req.from_seq, req.limit)):
            # Not queued (the peer's link queue is full): ask someone else, later.
            self.planner.page_verified(req.peer, req.origin, None, self.clock.seconds())

    # -- catch-up: incoming messages ------------------------------------------------------------------

    def _received(self, peer: bytes, data: bytes) -> None:
        try:
            msg = decode_message(
                data,
                max_origins=self.config.max_summary_origins,
                max_page_records=max(self.config.page_records, self.datalog.limits.max_range),
                max_envelope=self._max_envelope,
            )
        except DecodeError as e:
            self.rejected += 1
            self.log.warn("malformed sync message from {culprit} ignored: {reason}", culprit=_short(peer), reason=str(e))
            return
        if isinstance(msg, Summary):
            self._on_summary(peer, msg)
        elif isinstance(msg, Request):
            self._on_request(peer, msg)
        else:
            self._on_page(peer, msg)

    def _on_summary(self, peer: bytes, summary: Summary) -> None:
        strangers = [o for o in summary.origins if o not in self.directory]
        if strangers:
            # Records of former members are legitimate history, but we cannot
            # check whose key signed them against anything: not fetched.
            summary = summary._replace(origins={o: s for o, s in summary.origins.items() if o in self.directory})
        self.planner.summary_received(peer, summary, self.clock.seconds())
        self._plan()

    def _on_request(self, peer: bytes, req: Request) -> None:
        now = self.clock.seconds()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = _Bucket(self.config.serve_burst, now)
        bucket.tokens = min(float(self.config.serve_burst), bucket.tokens + (now - bucket.last) * self.config.serve_rate)
        bucket.last = now
        if bucket.tokens < 1:
            bucket.dropped += 1
            if bucket.logged_at is None or now - bucket.logged_at >= 10.0:
                bucket.logged_at = now
                self.log.warn("catch-up requests from {culprit} over the rate limit ({rate}/s): "
                              "{dropped} dropped so far", culprit=_short(peer), rate=self.config.serve_rate,
                              dropped=bucket.dropped)
            return
        bucket.tokens -= 1
        if req.origin not in self.directory:
            self.log.info("catch-up request from {peer} for non-member origin {origin} ignored",
                          peer=_short(peer), origin=_short(req.origin))
            return
        limit = min(req.limit, self.config.page_records, self.datalog.limits.max_range)
        envelopes = self._page(req.origin, req.from_seq, limit)
        have = self.datalog.origin_state(req.origin).have
        self.pages_served += 1
        self._send(peer, encode_page(req.origin, req.from_seq, have, envelopes, len(envelopes)))

    def _page(self, origin: bytes, from_seq: int, limit: int) -> list[bytes]:
        """Encoded envelopes answering (C{origin}, C{from_seq}): whole batches, each with its proof."""
        budget = self.config.max_page_bytes - page_overhead()
        if origin == self.local:
            return self._own_page(from_seq, limit, budget)
        head = self.datalog.range(origin, from_seq, 1)
        if not head:
            return []
        start = head[0].seq
        try:
            first = decode_proof(head[0].proof).first_seq
        except DecodeError:
            first = start
        if first < start:
            limit = min(limit + (start - first), self.datalog.limits.max_range)
            start = first
        return servable_prefix(self.datalog.range(origin, start, limit), budget)

    def _own_page(self, from_seq: int, limit: int, budget: int) -> list[bytes]:
        """
        Our own slots carry no stored proof: we are their origin and sign the
        page as one batch, which costs one signature per page.
        """
        envs = self.datalog.range(self.local, from_seq, limit)
        run: list[Envelope] = []
        size = 0
        for env in envs:
            if run and env.seq != run[-1].seq + 1:
                break
            size += len(env.body.canonical) + 140
            if run and size > budget:
                break
            run.append(env)
        if not run:
            return []
        first = run[0].seq
        items = [(e.record_id, micros(e.received_at)) for e in run]
        proof = Proof(first, len(run), self.host.sign(batch_statement(self.local, first, items))).encode()
        return [replace(e, proof=proof).encode() for e in run]

    def _on_page(self, peer: bytes, page: Page) -> None:
        now = self.clock.seconds()
        if not self.planner.expected(peer, page.origin, page.from_seq):
            self.log.info("unsolicited or late catch-up page from {peer} for origin {origin} ignored",
                          peer=_short(peer), origin=_short(page.origin))
            return
        try:
            if page.origin == self.local:
                raise BadPage(peer, "page of our own origin, which we never ask for")
            envelopes = []
            for raw in page.envelopes:
                try:
                    envelopes.append(Envelope.decode(raw, self.datalog.limits))
                except DecodeError as e:
                    raise BadPage(peer, f"malformed envelope: {e}") from None
            verify_page(peer, page.origin, envelopes, self.config.max_proofs_per_page)
        except ProtocolError as e:
            self.rejected += 1
            self.planner.page_rejected(peer, page.origin, now)
            self.log.warn("catch-up page from {culprit} for origin {origin} rejected: {reason}",
                          culprit=_short(peer), origin=_short(page.origin), reason=e.message)
            self._plan()
            return
        self.pages_fetched += 1
        if not envelopes or envelopes[0].seq > page.from_seq:
            # Nothing at the seq we asked for: not this peer, for a while.
            self.planner.page_verified(peer, page.origin, None, now)
        else:
            self.planner.page_verified(peer, page.origin, envelopes[-1].seq, now)
        if envelopes:
            upto = envelopes[-1].seq
            waits = []
            for env in envelopes:
                d = self.datalog.insert_remote(env)
                d.addCallbacks(self._count_fetched, self._insert_failed, errbackArgs=(peer, "catch-up"))
                d.addBoth(self._changed)
                waits.append(d)
            gatherResults(waits).addBoth(self._page_written, page.origin, upto)
        self._plan()

    def _count_fetched(self, result: Any) -> None:
        if result.created:
            self.records_fetched += 1

    def _page_written(self, _: Any, origin: bytes, upto: int) -> None:
        self.planner.page_written(origin, upto)
        self._plan()

    # -- retention --------------------------------------------------------------------------------------

    def _prune(self) -> Optional[Deferred]:
        def again(n: int) -> Optional[Deferred]:
            if n >= 10_000 and self.running:
                return self.datalog.prune(self.clock.seconds()).addCallback(again)
            return None

        d = self.datalog.prune(self.clock.seconds()).addCallback(again)
        d.addErrback(lambda f: self.log.failure("pruning the log failed", f))
        d.addBoth(self._changed)
        return d
