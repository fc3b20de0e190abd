# -*- test-case-name: tests.test_signing_service -*-
"""
The Twisted driver of threshold signing: L{SigningService} wires the pure
cores (L{frostnode.signing.signer}, L{frostnode.signing.roast},
L{frostnode.signing.pool}) to the links, the stores and the clock.

One service per node plays both roles:

 - B{Coordinator} for the requests its clients make (L{SigningService.sign}):
   it runs the scheme on its own view, proposes the message digest, and runs
   ROAST over the members, taking nonce commitments from its
   L{CoordinatorPool}.  No share is trusted unchecked: each is verified
   before its sender is picked again, and a session's aggregate is checked
   as a signature under the key (naming every bad share if it fails) before
   it is answered (see L{frostnode.signing.roast}).
 - B{Signer} for every coordinator (itself included, through a local
   queue rather than the links): it decides with L{Signer.handle} on its
   own view and, to sign, reserves the nonce in the L{NonceStore} I{first}:
   the reservation's Deferred fires only after the spent mark is fsync'd,
   and only then is the share computed and sent.  A crash at any point
   leaves the nonce spent or never released; a restarted signer refuses it
   (C{unavailable}).
 - B{Nonce issuer}: answers coordinators' refill requests with commitments
   it has persisted (C{add_batch} fires after the fsync) before sending.

Time: every timer uses the injected C{clock}.  Per session, C{session_timeout}
marks members that have not answered as slow (status) and lets ROAST start
another session (patience, see L{frostnode.signing.roast}); per request,
C{request_timeout} ends it with C{timeout}.  A background C{LoopingCall}
tops up nonce pools, another prunes spent nonces, and, if configured,
another signs a checkpoint.

Misbehaviour (an invalid share, an invalid verdict signature, an agreement
with another digest, a bad nonce batch) marks the member I{misbehaving}: it
is named in results and in L{status}, and is not picked again by this node
for C{misbehaving_for} seconds, until the epochs change (a new key may be
what it was missing), or until L{forgive}.  An undecodable message only
excludes its sender from the request it names (it is named there): garbage
proves less than a share that fails its check.  A member whose key for the
epoch differs from ours answers C{key-mismatch} (the request names the
epoch's output key) and is only I{unavailable} for that request.  Slowness
only marks it I{unresponsive} and moves it to the back of the queue; its
next answer clears that.

Limits against a member that floods us (all on the injected clock): a nonce
batch is taken only as the answer to a refill in flight, cut to what was
asked (L{CoordinatorPool}); refills are served up to a rate per
(coordinator, epoch) and never past the outstanding cap
(L{NonceIssuer}); session requests from one coordinator are taken up to
C{sign_request_rate} per second (beyond, dropped and logged); and scheme
results are cached by view state (L{Signer}), so the same request asked
again with fresh ids is not evaluated again.

Missing data: when a scheme raises L{MissingData}, the signer (or the
coordinator) calls the optional C{catch_up(error)} hook once, then runs the
scheme again every C{catchup_poll} seconds until C{catchup_timeout}; a
signer then refuses with C{views-differ} ("missing data: ..."), a
coordinator fails the request with C{views-differ} naming itself.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from frostnode.client.limits import TokenBucket
from frostnode.crypto.errors import InvalidCommitment, NonceReuseError, ProtocolError
from frostnode.crypto.nonces import SecretNonce
from frostnode.identity import HostKeypair
from frostnode.net.interfaces import CHANNEL_SIGN, ILinks
from frostnode.signing import messages as m
from frostnode.signing.checkpoint import NAME as CHECKPOINT, Checkpoint, CheckpointRequest, CheckpointScheme
from frostnode.signing.errors import (
    NOT_ENOUGH_SIGNERS,
    TIMEOUT,
    VALIDATION_FAILED,
    VIEWS_DIFFER,
    NoUsableKey,
    Refusal,
    SigningFailed,
)
from frostnode.signing.pool import CoordinatorPool, NonceIssuer
from frostnode.signing.roast import (
    Failed,
    Finished,
    NeedNonces,
    ReturnNonce,
    RoastCoordinator,
    StartSession,
)
from frostnode.signing.signer import Answer, NeedData, Ready, Scheme, Signer, verify_verdict
from frostnode.signing.suites import BIP445, AGGNONCE_SIZE, EpochKey, SigningShare, Suite, get_suite
from frostnode.store.checkpoints import MAX_LIST, CheckpointStore
from frostnode.store.errors import NonceSpent, UnknownNonce
from frostnode.store.keys import KeyStore
from frostnode.store.nonces import NonceEntry, NonceStore
from frostnode.validation.interface import MissingData, scheme_message


def _short(key: bytes) -> str:
    return key.hex()[:16]


@dataclass(frozen=True)
class SigningConfig:
    """
    @ivar session_timeout: seconds before a session's silent members count as
        slow and ROAST stops waiting for that session before starting another.
    @ivar request_timeout: seconds before a request fails with C{timeout}.
    @ivar catchup_timeout: how long a scheme lacking data is retried.
    @ivar catchup_poll: seconds between those retries.
    @ivar pool_low_water: refill a member's commitments below this many.
    @ivar pool_batch: commitments asked for per refill.
    @ivar refill_retry: seconds before an unanswered refill is sent again.
    @ivar refill_interval: seconds between background pool top-ups.
    @ivar max_outstanding: unspent nonces a signer keeps per coordinator.
    @ivar audit: default for L{SigningService.sign}'s C{audit}.
    @ivar eager: ROAST without patience (the paper's rule).
    @ivar key_refresh: seconds an epoch key read from the store is trusted
        before its status is read again.
    @ivar prune_interval: seconds between pruning spent nonces.
    @ivar checkpoint_interval: seconds between checkpoints, None for none.
    @ivar checkpoints_kept: signed checkpoints kept in memory.
    @ivar max_catchups: signer requests waiting for data at once.
    @ivar prefill: at start, fill pools for every member of the newest
        epoch; otherwise the first request fills them (one extra round trip)
        and only pools this node has used are kept topped up.
    @ivar misbehaving_for: seconds a member caught misbehaving is not picked.
    @ivar sign_request_rate: session requests per second taken from one
        coordinator (a token bucket); more are dropped.
    @ivar sign_request_burst: the bucket's size.
    @ivar nonce_reuse_after: seconds before a commitment this coordinator
        handed out is taken back when its signer offers it again.
    """

    session_timeout: float = 1.0
    request_timeout: float = 10.0
    catchup_timeout: float = 5.0
    catchup_poll: float = 0.25
    pool_low_water: int = 16
    pool_batch: int = 64
    refill_retry: float = 2.0
    refill_interval: float = 1.0
    max_outstanding: int = 512
    audit: bool = False
    eager: bool = False
    key_refresh: float = 5.0
    prune_interval: float = 600.0
    checkpoint_interval: Optional[float] = None
    checkpoints_kept: int = 64
    max_catchups: int = 1024
    prefill: bool = True
    misbehaving_for: float = 3600.0
    sign_request_rate: float = 1000.0
    sign_request_burst: int = 2000
    nonce_reuse_after: float = 300.0


@dataclass(frozen=True)
class SignatureResult:
    """
    What a client gets back.

    @ivar key: what C{signature} verifies under: the 32-byte Taproot output
        key (BIP 445, BIP340 signature) or the 33-byte internal key (RFC 9591).
    @ivar message: the exact bytes signed (the scheme's message).
    @ivar signers: host keys of the members whose shares make the signature.
    @ivar divergent: host key -> L{Refusal} of members that disagreed.
    @ivar unresponsive: members awaited when the signature was done.
    @ivar sessions: ROAST sessions started.
    """

    signature: bytes
    key: bytes
    message: bytes
    scheme: str
    request: bytes
    ciphersuite: str
    epoch: int
    signers: tuple[bytes, ...]
    divergent: Mapping[bytes, Refusal] = field(default_factory=dict)
    unavailable: Mapping[bytes, Refusal] = field(default_factory=dict)
    malicious: Mapping[bytes, str] = field(default_factory=dict)
    unresponsive: tuple[bytes, ...] = ()
    sessions: int = 1


@dataclass
class MemberStatus:
    """
    One member as this node's signing service sees it.

    @ivar state: C{"ok"}, C{"unresponsive"} (missed a session timeout since
        its last answer) or C{"misbehaving"} (not picked until C{until}).
    @ivar until: when a C{misbehaving} mark expires.
    @ivar garbage: undecodable messages received from it.
    """

    host_key: bytes
    state: str = "ok"
    detail: str = ""
    last_answer: Optional[float] = None
    timeouts: int = 0
    refusals: int = 0
    until: Optional[float] = None
    garbage: int = 0


class _PoolView:
    """The coordinator pool for one epoch, by member index (L{frostnode.signing.roast.NonceSource})."""

    def __init__(self, pool: CoordinatorPool, key: EpochKey, clock: IReactorTime) -> None:
        self.pool = pool
        self.key = key
        self.clock = clock

    def available(self, index: int) -> int:
        return self.pool.available(self.key.members[index], self.key.epoch)

    def take(self, index: int) -> Optional[tuple[bytes, bytes]]:
        return self.pool.take(self.key.members[index], self.key.epoch, self.clock.seconds())


class _Request:
    """A request we coordinate."""

    def __init__(self, request_id: bytes, scheme: str, request: bytes, suite: Suite, signing: SigningShare,
                 audit: bool, deferred: Deferred, now: float, catchup_deadline: float) -> None:
        self.request_id = request_id
        self.scheme = scheme
        self.request = request
        self.suite = suite
        self.key = signing.key
        self.audit = audit
        self.deferred = deferred
        self.started = now
        self.catchup_deadline = catchup_deadline
        self.message = b""
        self.digest = b""
        self.template: Optional[m.SignRequest] = None
        self.commitment = b""
        self.roast: Optional[RoastCoordinator] = None
        self.timers: list[IDelayedCall] = []
        self.flagged: set[int] = set()
        self.done = False


class SigningService(Service):
    """
    Threshold signing for one member.

    @param links: this node's links; we register on L{CHANNEL_SIGN}.
    @param members: the current members' host keys (a sequence, or anything
        with C{host_keys()}); checkpoints and refills use it.
    @param host: this member's host keypair (signs verdicts).
    @param keys: the L{frostnode.store.keys.KeyStore} (epoch keys).
    @param nonces: the L{frostnode.store.nonces.NonceStore}.
    @param view: this member's log view, passed to schemes as is.
    @param schemes: scheme name -> scheme (C{message(request, view)}).
    @param clock: every timer.
    @param rand: randomness for request and nonce ids and nonces.
    @param catch_up: optional C{catch_up(MissingData) -> Deferred}, called
        once per request lacking data.
    @param on_checkpoint: optional callback for each signed L{Checkpoint}
        (to publish it; to persist them, see L{keep_checkpoints}).
    """

    log = Logger()

    def __init__(
        self,
        links: ILinks,
        members: Any,
        host: HostKeypair,
        keys: KeyStore,
        nonces: NonceStore,
        view: Any,
        schemes: Mapping[str, Scheme],
        clock: IReactorTime,
        config: SigningConfig = SigningConfig(),
        rand: Callable[[int], bytes] = os.urandom,
        catch_up: Optional[Callable[[MissingData], Deferred]] = None,
        on_checkpoint: Optional[Callable[[Checkpoint], None]] = None,
    ) -> None:
        if links.local != host.public:
            raise ValueError("the links' local member is not this host key")
        self.links = links
        self.local = host.public
        self._members_source = members
        self.keys = keys
        self.nonces = nonces
        self.view = view
        self.clock = clock
        self.config = config
        self.rand = rand
        self.catch_up = catch_up
        self.on_checkpoint = on_checkpoint
        if CHECKPOINT in schemes:
            raise ValueError(f"the scheme name {CHECKPOINT!r} is reserved for the federation's checkpoints")
        self.checkpoint_scheme = CheckpointScheme(self._membership)
        self.schemes: dict[str, Scheme] = {**schemes, CHECKPOINT: self.checkpoint_scheme}
        self.signer = Signer(host, self.schemes)
        self.issuer = NonceIssuer(max_outstanding=config.max_outstanding,
                                  max_batch=min(config.max_outstanding, m.MAX_NONCE_BATCH),
                                  refill_every=config.refill_retry)
        self.pool = CoordinatorPool(self.local, low_water=config.pool_low_water, batch=config.pool_batch,
                                    retry_after=config.refill_retry, reuse_after=config.nonce_reuse_after)
        self._sign_buckets: dict[bytes, TokenBucket] = {}
        self._noise: dict[tuple[str, bytes], list] = {}
        self._idle: list[Deferred] = []
        self._shares: dict[int, tuple[Optional[SigningShare], float]] = {}
        self._newest: Optional[tuple[Optional[int], float]] = None
        self._requests: dict[bytes, _Request] = {}
        self._starving: set[bytes] = set()
        self._status: dict[bytes, MemberStatus] = {}
        self._catchups: dict[tuple[bytes, bytes, int], IDelayedCall] = {}
        self._local_queue: deque[bytes] = deque()
        self._draining = False
        self._store_pending = 0
        self._checkpoints: deque[Checkpoint] = deque(maxlen=config.checkpoints_kept)
        self._checkpoint_seq = 0
        self.checkpoint_store: Optional[CheckpointStore] = None
        self._loaded_epochs: set[int] = set()
        self._loops: list[LoopingCall] = []
        #: Counters for benchmarks and status.
        self.signatures = 0
        self.failures = 0
        self.shares_sent = 0
        links.register(CHANNEL_SIGN, self._received)

    # -- Service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for rec in self.keys.usable():
            self._load_issued(rec.epoch)
        self._top_up(everyone=self.config.prefill)
        for fn, interval in ((self._top_up, self.config.refill_interval),
                             (self._prune, self.config.prune_interval),
                             (self._checkpoint_tick, self.config.checkpoint_interval)):
            if interval:
                loop = LoopingCall(self._guarded, fn)
                loop.clock = self.clock
                loop.start(interval, now=False).addErrback(self._loop_failed)
                self._loops.append(loop)

    def stopService(self) -> Any:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in self._catchups.values():
            if call.active():
                call.cancel()
        self._catchups.clear()
        for req in list(self._requests.values()):
            self._fail(req, SigningFailed(TIMEOUT, "the signing service stopped"))
        return super().stopService()

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Run one background job; log a failure so the next tick still runs."""
        try:
            fn()
        except Exception:
            self.log.failure("signing background job {job} failed", job=fn.__name__)

    def _loop_failed(self, f: Failure) -> None:
        self.log.failure("signing background job stopped", f)

    # -- members, keys, status ----------------------------------------------------

    def members(self) -> list[bytes]:
        src = self._members_source
        keys = src.host_keys() if hasattr(src, "host_keys") else src
        return sorted(keys)

    def _st(self, member: bytes) -> MemberStatus:
        st = self._status.get(member)
        if st is None:
            st = self._status[member] = MemberStatus(member)
        elif st.until is not None and self.clock.seconds() >= st.until:
            self.forgive(member)
        return st

    def status(self) -> dict[bytes, MemberStatus]:
        """Every member's signing status (for the C{status} command); copies."""
        return {mem: replace(self._st(mem)) for mem in self.members()}

    def forgive(self, member: bytes) -> None:
        """Let a member marked misbehaving be picked again."""
        st = self._status.get(member)
        if st is not None and st.state == "misbehaving":
            st.state, st.detail, st.until = "ok", "", None

    def _misbehaved(self, member: bytes, reason: str) -> None:
        st = self._st(member)
        st.state, st.detail = "misbehaving", reason
        st.until = self.clock.seconds() + self.config.misbehaving_for
        self.log.warn("signing: member {culprit} misbehaved: {reason}", culprit=_short(member), reason=reason)

    def _answered(self, member: bytes) -> None:
        st = self._st(member)
        st.last_answer = self.clock.seconds()
        if st.state == "unresponsive":
            st.state, st.detail = "ok", ""

    def _slow(self, member: bytes, what: str) -> None:
        st = self._st(member)
        st.timeouts += 1
        if st.state == "ok":
            st.state, st.detail = "unresponsive", what

    def epochs_changed(self) -> None:
        """
        The DKG driver stored, certified, confirmed or retired an epoch:
        re-read keys now, forget the in-memory nonce pools of epochs that
        can no longer sign (their unspent nonces stay in the store, harmless,
        until the store drops the epoch), and forgive members marked
        misbehaving (a key change is a likely reason for disagreement, and
        the new epoch starts afresh).
        """
        self._shares.clear()
        self._newest = None
        usable = {rec.epoch for rec in self.keys.usable()}
        for epoch in self.pool.epochs() - usable:
            self.pool.drop_epoch(epoch)
        for epoch in self._loaded_epochs - usable:
            self.issuer.drop_epoch(epoch)
        self._loaded_epochs &= usable
        for member in list(self._status):
            self.forgive(member)

    def _signing_share(self, epoch: int) -> Optional[SigningShare]:
        now = self.clock.seconds()
        hit = self._shares.get(epoch)
        if hit is not None and now - hit[1] < self.config.key_refresh:
            return hit[0]
        rec = self.keys.get(epoch)
        if rec is None:
            # Not cached: any member can name any epoch, and that must not grow memory.
            self._shares.pop(epoch, None)
            return None
        share = None
        if rec.usable:
            try:
                share = SigningShare.from_record(rec, self.local)
            except ValueError as e:
                self.log.error("epoch {epoch} record unusable for signing: {error}", epoch=epoch, error=str(e))
        self._shares[epoch] = (share, now)
        if share is not None and epoch not in self._loaded_epochs:
            self._load_issued(epoch)
        return share

    def _newest_share(self) -> Optional[SigningShare]:
        now = self.clock.seconds()
        if self._newest is None or now - self._newest[1] >= self.config.key_refresh:
            rec = self.keys.newest_usable()
            self._newest = (None if rec is None else rec.epoch, now)
        epoch = self._newest[0]
        return None if epoch is None else self._signing_share(epoch)

    def _membership(self, epoch: int) -> Optional[Sequence[bytes]]:
        share = self._signing_share(epoch)
        return None if share is None else share.key.members

    def _load_issued(self, epoch: int) -> None:
        self._loaded_epochs.add(epoch)
        limit = self.config.max_outstanding * max(len(self.members()), 1) + 1
        self.issuer.load(epoch, self.nonces.unspent(epoch, limit=limit))

    # -- sending --------------------------------------------------------------------

    def _send(self, peer: bytes, payload: bytes) -> None:
        if peer == self.local:
            self._local_queue.append(payload)
            if not self._draining:
                self._draining = True
                try:
                    while self._local_queue:
                        self._received(self.local, self._local_queue.popleft())
                finally:
                    self._draining = False
            return
        try:
            self.links.send(peer, CHANNEL_SIGN, payload)
        except Exception as e:
            self.log.warn("signing: cannot send to {peer}: {error}", peer=_short(peer), error=str(e))

    @property
    def busy(self) -> bool:
        """
        Store writes or local deliveries in progress: work that finishes
        without the clock (tests and benchmarks wait on this).
        """
        return bool(self._store_pending or self._local_queue)

    def when_idle(self) -> Deferred:
        """
        A Deferred firing (with None) once no store write this service
        started is pending, and what each write's completion does (send a
        share, a batch) has run; at once if none is pending.
        """
        if not self._store_pending:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle.append(d)
        return d

    def _track(self, d: Deferred, callback: Optional[Callable[[Any], Any]] = None,
               errback: Optional[Callable[[Failure], Any]] = None) -> Deferred:
        """
        Count the store write C{d} as pending until C{callback} or
        C{errback} (run first) have run on its result.
        """
        self._store_pending += 1
        if callback is not None or errback is not None:
            d.addCallbacks(callback or (lambda r: r), errback=errback or (lambda f: f))

        def done(result: Any) -> Any:
            self._store_pending -= 1
            if not self._store_pending and self._idle:
                waiters, self._idle = self._idle, []
                for w in waiters:
                    w.callback(None)
            return result
        return d.addBoth(done)

    def _noisy(self, what: str, peer: bytes, detail: str) -> None:
        """
        Count one more C{what} from C{peer} and log it, at most every 10 s
        per peer and kind: a member flooding us must not flood the log.
        """
        now = self.clock.seconds()
        entry = self._noise.get((what, peer))
        if entry is None:
            entry = self._noise[(what, peer)] = [0, None]
        entry[0] += 1
        if entry[1] is None or now - entry[1] >= 10.0:
            entry[1] = now
            self.log.warn("signing: {what} from {culprit} ({detail}): {count} so far",
                          what=what, culprit=_short(peer), detail=detail, count=entry[0])

    # -- receiving --------------------------------------------------------------------

    def _received(self, sender: bytes, payload: bytes) -> None:
        if not self.running:
            return
        try:
            msg = m.decode(payload)
        except m.DecodeError as e:
            self._garbage(sender, payload, str(e))
            return
        if sender != self.local:
            self._answered(sender)
        if isinstance(msg, m.SignRequest):
            self._on_sign_request(sender, msg)
        elif isinstance(msg, m.SignShare):
            self._on_share(sender, msg)
        elif isinstance(msg, m.Verdict):
            self._on_verdict(sender, msg)
        elif isinstance(msg, m.NonceRequest):
            self._on_nonce_request(sender, msg)
        elif isinstance(msg, m.NonceBatch):
            self._on_nonce_batch(sender, msg)

    def _garbage(self, sender: bytes, payload: bytes, error: str) -> None:
        """
        An undecodable message: if it names one of our requests, its sender
        is out of that request (and named in its result); no longer-lived
        mark, since nothing in it proves what the sender meant.
        """
        reason = f"undecodable signing message: {error}"
        self._st(sender).garbage += 1
        self._noisy("undecodable messages", sender, error)
        if len(payload) >= 2 + m.REQUEST_ID_SIZE and payload[1] in (m.T_SIGN_SHARE, m.T_VERDICT):
            req = self._requests.get(payload[2:2 + m.REQUEST_ID_SIZE])
            if req is not None and req.roast is not None:
                index = req.key.index_of(sender)
                if index is not None:
                    req.flagged.add(index)  # named by ROAST for this request, not marked misbehaving
                    self._apply(req, req.roast.on_misbehaviour(index, reason))

    # -- signer side -------------------------------------------------------------------

    def _on_sign_request(self, coordinator: bytes, req: m.SignRequest) -> None:
        if coordinator != self.local:
            now = self.clock.seconds()
            bucket = self._sign_buckets.get(coordinator)
            if bucket is None:
                bucket = self._sign_buckets[coordinator] = TokenBucket(
                    self.config.sign_request_rate, self.config.sign_request_burst, now)
            if bucket.take(now):
                self._noisy("session requests dropped", coordinator,
                            f"over {self.config.sign_request_rate} per second")
                return
        commitment = req.request_commitment()
        self._decide(coordinator, req, commitment, None)

    def _decide(self, coordinator: bytes, req: m.SignRequest, commitment: bytes, deadline: Optional[float]) -> None:
        signing = self._signing_share(req.epoch)
        outcome = self.signer.handle(coordinator, req, signing, self.view, commitment)
        if isinstance(outcome, Answer):
            self._send(coordinator, outcome.verdict.encode())
        elif isinstance(outcome, NeedData):
            self._wait_for_data(coordinator, req, commitment, outcome.error, deadline)
        else:
            self._sign_ready(coordinator, outcome, commitment)

    def _wait_for_data(self, coordinator: bytes, req: m.SignRequest, commitment: bytes, error: MissingData,
                       deadline: Optional[float]) -> None:
        now = self.clock.seconds()
        key = (coordinator, req.request_id, req.session)
        if deadline is None:
            if key in self._catchups or len(self._catchups) >= self.config.max_catchups:
                self._send(coordinator, self.signer.handle_missing(coordinator, req, error, commitment).verdict.encode())
                return
            deadline = now + self.config.catchup_timeout
            self._ask_catch_up(error)
        if now >= deadline:
            self._catchups.pop(key, None)
            self._send(coordinator, self.signer.handle_missing(coordinator, req, error, commitment).verdict.encode())
            return

        def retry() -> None:
            self._catchups.pop(key, None)
            self._decide(coordinator, req, commitment, deadline)
        self._catchups[key] = self.clock.callLater(min(self.config.catchup_poll, deadline - now), retry)

    def _ask_catch_up(self, error: MissingData) -> None:
        if self.catch_up is not None:
            maybeDeferred(self.catch_up, error).addErrback(
                lambda f: self.log.failure("catch-up for {missing} failed", f, missing=str(error)))

    def _unavailable(self, coordinator: bytes, req: m.SignRequest, commitment: bytes, reason: str) -> None:
        v = self.signer.verdict(coordinator, req, m.UNAVAILABLE, b"", reason, commitment).verdict
        self._send(coordinator, v.encode())

    def _sign_ready(self, coordinator: bytes, ready: Ready, commitment: bytes) -> None:
        req, entry = ready.request, ready.entry
        epoch = req.epoch
        state = self.nonces.status(epoch, entry.nonce_id)
        if state is None:
            return self._unavailable(coordinator, req, commitment, "nonce unknown here")
        if state:
            return self._unavailable(coordinator, req, commitment, "nonce already used")
        if self.nonces.commitment(epoch, entry.nonce_id) != entry.commitment:
            return self._unavailable(coordinator, req, commitment, "nonce commitment does not match")
        def reserved(stored: NonceEntry) -> None:
            # The spent mark is on disk: only now may a share made with it leave.
            self.log.debug("signing: nonce {nonce_id} of epoch {epoch} spent for {coordinator} session {session}",
                           nonce_id=entry.nonce_id, epoch=epoch, coordinator=coordinator, session=req.session)
            nonce = SecretNonce.from_persisted(int.from_bytes(stored.k1, "big"), int.from_bytes(stored.k2, "big"),
                                               stored.commitment)
            try:
                share = ready.sign(nonce)
            except (ValueError, NonceReuseError, ProtocolError) as e:
                self.log.error("signing: no share for {coordinator} session {session}: {error}",
                               coordinator=_short(coordinator), session=req.session, error=str(e))
                self._unavailable(coordinator, req, commitment, f"cannot sign: {e}")
                return
            self.shares_sent += 1
            self._send(coordinator, share.encode())

        def refused(f: Failure) -> None:
            if f.check(NonceSpent, UnknownNonce):
                self._unavailable(coordinator, req, commitment, "nonce already used")
                return
            self.log.failure("signing: reserving a nonce failed", f)
            self._unavailable(coordinator, req, commitment, "nonce store error")

        # Out of the issuer's book from the moment the reservation is asked
        # for: a reset refill arriving before the fsync must not offer it again.
        self.issuer.used(epoch, entry.nonce_id)
        self._track(self.nonces.reserve(epoch, entry.nonce_id), reserved, refused)

    def _on_nonce_request(self, coordinator: bytes, msg: m.NonceRequest) -> None:
        """
        Answer a refill: only for an epoch we can sign in and a coordinator
        of that epoch (anything else is not answered: the coordinator retries
        after its C{refill_retry}), within the issuer's rate and cap.
        """
        epoch = msg.epoch
        signing = self._signing_share(epoch)
        if signing is None or signing.key.index_of(coordinator) is None:
            self.log.debug("signing: refill from {coordinator} for epoch {epoch} not served (no key here)",
                           coordinator=_short(coordinator), epoch=epoch)
            return
        plan = self.issuer.plan(coordinator, epoch, msg.want, msg.reset, self.clock.seconds())
        if plan.limited and not plan.resend and not plan.generate:
            self._noisy("nonce refills dropped", coordinator,
                        f"over {self.config.max_outstanding} commitments per {self.config.refill_retry}s")
            return
        if not plan.generate:
            self._send(coordinator, m.NonceBatch(epoch, tuple(plan.resend)).encode())
            return
        fresh = self.issuer.generate(signing, coordinator, plan.generate, self.rand)
        entries = []
        pairs = []
        for nonce_id, secnonce in fresh:
            k1, k2 = secnonce.peek_for_persistence()
            entries.append(NonceEntry(nonce_id, k1.to_bytes(32, "big"), k2.to_bytes(32, "big"), secnonce.commitment))
            pairs.append((nonce_id, secnonce.commitment))
        del fresh

        def persisted(_: Any) -> None:
            # On disk: now the commitments may be published.
            self.issuer.issued(coordinator, epoch, pairs)
            self._send(coordinator, m.NonceBatch(epoch, tuple(plan.resend) + tuple(pairs)).encode())

        def failed(f: Failure) -> None:
            self.issuer.not_issued(coordinator, epoch, len(entries))
            self.log.failure("signing: persisting {count} nonces failed", f, count=len(entries))
            self._send(coordinator, m.NonceBatch(epoch, tuple(plan.resend)).encode())

        self._track(self.nonces.add_batch(epoch, entries), persisted, failed)

    # -- coordinator side: nonces ----------------------------------------------------

    def _refill(self, epoch: int, members: Sequence[bytes]) -> None:
        for r in self.pool.refills(epoch, members, self.clock.seconds()):
            self._send(r.member, m.NonceRequest(r.epoch, r.want, r.reset).encode())

    def _top_up(self, everyone: bool = False) -> None:
        """Refill the pools of the newest epoch that run low: all members', or those we have used."""
        share = self._newest_share()
        if share is None:
            return
        epoch = share.key.epoch
        used = set(self.pool.members(epoch))
        members = [mem for mem in share.key.members
                   if self._st(mem).state != "misbehaving" and (everyone or mem in used)]
        self._refill(epoch, members)

    def _prune(self) -> None:
        self._track(self.nonces.prune_spent(),
                    errback=lambda f: self.log.failure("signing: pruning spent nonces failed", f))

    def _on_nonce_batch(self, member: bytes, msg: m.NonceBatch) -> None:
        if not self.pool.expecting(member, msg.epoch):
            # Not an answer to a refill in flight (a late second answer, or
            # unsolicited): dropped before a single point is parsed.
            return
        if self._signing_share(msg.epoch) is None:
            self.pool.drop_epoch(msg.epoch)  # the epoch can no longer sign here
            return
        try:
            added = self.pool.add(member, msg.epoch, msg.nonces, self.clock.seconds())
        except InvalidCommitment as e:
            self._misbehaved(member, e.message)
            return
        if not added:
            return
        for rid in list(self._starving):
            req = self._requests.get(rid)
            if req is None or req.roast is None:
                self._starving.discard(rid)
            elif req.key.epoch == msg.epoch:
                self._starving.discard(rid)
                self._apply(req, req.roast.nonces_arrived())

    # -- coordinator side: requests -----------------------------------------------------

    def sign(self, scheme: str, request: bytes, ciphersuite: str = BIP445, audit: Optional[bool] = None) -> Deferred:
        """
        Ask the federation to sign what C{scheme} makes of C{request}.

        @param audit: ask every member for its verdict and wait (up to the
            request timeout) for all of them, so the result names every
            divergent member; default from the configuration.
        @return: a Deferred firing with a L{SignatureResult}, or failing with
            L{SigningFailed}, L{NoUsableKey}, or C{ValueError} for an unknown
            scheme or ciphersuite.
        """
        try:
            suite = get_suite(ciphersuite)
            if scheme not in self.schemes:
                raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(sorted(self.schemes))})")
            if not isinstance(request, bytes) or len(request) > m.MAX_SCHEME_REQUEST:
                raise ValueError(f"a request is at most {m.MAX_SCHEME_REQUEST} bytes")
        except ValueError:
            return fail()
        signing = self._newest_share()
        if signing is None:
            return fail(NoUsableKey("this node holds no usable epoch key"))
        now = self.clock.seconds()
        d: Deferred = Deferred()
        req = _Request(self.rand(m.REQUEST_ID_SIZE), scheme, request, suite, signing,
                       self.config.audit if audit is None else audit, d, now, now + self.config.catchup_timeout)
        self._requests[req.request_id] = req
        req.timers.append(self.clock.callLater(self.config.request_timeout, self._expire, req))
        self._evaluate_own(req, first=True)
        return d

    def _evaluate_own(self, req: _Request, first: bool = False) -> None:
        if req.done:
            return
        try:
            result = self.signer.evaluate(req.scheme, req.request, req.key.output_key, self.view, self.local,
                                          req.request_id)
        except MissingData as e:
            now = self.clock.seconds()
            if first:
                self._ask_catch_up(e)
            if now >= req.catchup_deadline:
                self._fail(req, SigningFailed(
                    VIEWS_DIFFER, f"{_short(self.local)} (the coordinator) lacks data: {e}",
                    divergent={self.local: Refusal("views-differ", b"", f"missing data: {e}")}))
                return
            req.timers.append(self.clock.callLater(min(self.config.catchup_poll, req.catchup_deadline - now),
                                                   self._evaluate_own, req))
            return
        if result.message is None:
            self._fail(req, SigningFailed(VALIDATION_FAILED, result.rejection))
            return
        self._begin(req, result.message)

    def _candidates(self, key: EpochKey) -> list[int]:
        """
        Ourselves first, then the members after us in index order
        (wrapping), slow or unconnected ones last, misbehaving ones (until
        their mark expires) never.

        The order is stable on purpose: the same signer set comes back
        request after request, and a signer set's validation (t
        multiplications for every signer, BIP 445's C{ValidateSignersCtx})
        is then cached; different coordinators start at different places,
        which spreads the load.
        """
        connected = self.links.connected()
        me = key.index_of(self.local)
        start = 0 if me is None else me + 1
        good, late = [], []
        for k in range(key.n):
            i = (start + k) % key.n
            if i == me:
                continue
            mem = key.members[i]
            st = self._st(mem)
            if st.state == "misbehaving":
                continue
            (late if st.state == "unresponsive" or mem not in connected else good).append(i)
        return ([] if me is None else [me]) + good + late

    def _begin(self, req: _Request, message: bytes) -> None:
        req.message = message
        req.digest = m.message_digest(message)
        req.template = m.SignRequest(req.request_id, 0, req.key.epoch, req.key.output_key, req.suite.name, req.scheme,
                                     req.request, req.digest, bytes(AGGNONCE_SIZE), ())
        req.commitment = req.template.request_commitment()
        req.roast = RoastCoordinator(req.key, req.suite, message, self._candidates(req.key),
                                     _PoolView(self.pool, req.key, self.clock), audit=req.audit,
                                     eager=self.config.eager)
        self._apply(req, req.roast.start())

    def _apply(self, req: _Request, actions: list) -> None:
        if req.roast is not None:
            for i, why in req.roast.report.malicious.items():
                if i not in req.flagged:
                    req.flagged.add(i)
                    if req.key.members[i] != self.local:
                        self._misbehaved(req.key.members[i], why)
        for a in actions:
            if req.done:
                return
            if isinstance(a, StartSession):
                self._start_session(req, a)
            elif isinstance(a, ReturnNonce):
                self.pool.give_back(req.key.members[a.index], req.key.epoch, a.nonce_id, a.commitment)
            elif isinstance(a, NeedNonces):
                self._starving.add(req.request_id)
                self._refill(req.key.epoch, [req.key.members[i] for i in a.indices])
            elif isinstance(a, Finished):
                self._finished(req, a)
            elif isinstance(a, Failed):
                self._failed(req, a)

    def _start_session(self, req: _Request, a: StartSession) -> None:
        assert req.template is not None
        msg = req.template._replace(session=a.number, aggnonce=a.aggnonce, signers=a.signers)
        payload = msg.encode()
        members = req.key.members
        req.timers.append(self.clock.callLater(self.config.session_timeout, self._session_timeout, req, a.number))
        if a.audit:
            audit_payload = req.template.encode()
            for i in a.audit:
                self._send(members[i], audit_payload)
        # Others first, ourselves last: our own share is computed while theirs travel.
        for e in sorted(a.signers, key=lambda e: members[e.index] == self.local):
            self._send(members[e.index], payload)
        self._refill(req.key.epoch, [members[e.index] for e in a.signers])

    def _session_timeout(self, req: _Request, number: int) -> None:
        if req.done or req.roast is None:
            return
        for i in req.roast.session_waiting(number):
            self._slow(req.key.members[i], f"no answer in session {number} within {self.config.session_timeout}s")
        self._apply(req, req.roast.session_expired(number))

    def _expire(self, req: _Request) -> None:
        if req.done:
            return
        if req.roast is None:
            self._fail(req, SigningFailed(TIMEOUT, "the coordinator's own evaluation did not finish"))
            return
        self._apply(req, req.roast.expire())

    def _on_share(self, sender: bytes, msg: m.SignShare) -> None:
        req = self._requests.get(msg.request_id)
        if req is None or req.roast is None:
            return
        index = req.key.index_of(sender)
        if index is None:
            return
        self._apply(req, req.roast.on_share(index, msg.session, msg.share))

    def _on_verdict(self, sender: bytes, v: m.Verdict) -> None:
        req = self._requests.get(v.request_id)
        if req is None or req.roast is None:
            return
        index = req.key.index_of(sender)
        if index is None:
            return
        if not verify_verdict(sender, self.local, req.commitment, v):
            reason = "verdict with an invalid host-key signature"
            self._misbehaved(sender, reason)
            self._apply(req, req.roast.on_misbehaviour(index, reason))
            return
        if v.kind == m.AGREE:
            if v.digest != req.digest:
                reason = "agreement with a digest that is not the proposal"
                self._misbehaved(sender, reason)
                self._apply(req, req.roast.on_misbehaviour(index, reason))
                return
            self._apply(req, req.roast.on_agreement(index, v.session, v.digest))
            return
        self._st(sender).refusals += 1
        self.log.info("signing: {member} refused session {session} of {request}: {kind}: {reason}",
                      member=_short(sender), session=v.session, request=req.request_id.hex()[:8],
                      kind=v.kind_name, reason=v.reason)
        self._apply(req, req.roast.on_refusal(index, v.session, v.kind_name, v.digest, v.reason))

    # -- outcomes ----------------------------------------------------------------------

    def _cleanup(self, req: _Request) -> None:
        req.done = True
        self._requests.pop(req.request_id, None)
        self._starving.discard(req.request_id)
        for t in req.timers:
            if t.active():
                t.cancel()
        req.timers = []

    def _names(self, req: _Request, indices: Any) -> dict:
        members = req.key.members
        if isinstance(indices, dict):
            return {members[i]: v for i, v in indices.items()}
        return {members[i]: None for i in indices}

    def _finished(self, req: _Request, a: Finished) -> None:
        # The suites' aggregate checked the signature under the key (BIP340
        # for BIP 445, RFC 9591's verification otherwise) before ROAST took it.
        r = a.report
        members = req.key.members
        result = SignatureResult(
            signature=a.signature,
            key=req.suite.signing_key(req.key),
            message=req.message,
            scheme=req.scheme,
            request=req.request,
            ciphersuite=req.suite.name,
            epoch=req.key.epoch,
            signers=tuple(members[i] for i in a.signers),
            divergent=self._names(req, r.divergent),
            unavailable=self._names(req, r.unavailable),
            malicious=self._names(req, r.malicious),
            unresponsive=tuple(members[i] for i in r.unresponsive),
            sessions=r.sessions,
        )
        self._cleanup(req)
        self.signatures += 1
        req.deferred.callback(result)

    def _failed(self, req: _Request, a: Failed) -> None:
        r = a.report
        members = req.key.members
        divergent = self._names(req, r.divergent)
        malicious = self._names(req, r.malicious)
        unavailable = self._names(req, r.unavailable)
        unresponsive = [members[i] for i in r.unresponsive]
        detail = a.detail
        if a.code == VIEWS_DIFFER:
            detail = ", ".join(_short(mem) for mem in sorted(divergent))
        elif a.code == NOT_ENOUGH_SIGNERS and not detail:
            parts = [f"{_short(mem)} misbehaved ({why})" for mem, why in sorted(malicious.items())]
            parts += [f"{_short(mem)} {ref.kind} ({ref.reason})" for mem, ref in sorted(unavailable.items())]
            detail = "; ".join(parts) or f"fewer than {req.key.threshold} members can sign"
        elif a.code == TIMEOUT:
            detail = "no answer from " + (", ".join(_short(mem) for mem in unresponsive) or "enough members")
        self._fail(req, SigningFailed(a.code, detail, divergent, unavailable, malicious, unresponsive))

    def _fail(self, req: _Request, error: SigningFailed) -> None:
        if req.done:
            return
        self._cleanup(req)
        self.failures += 1
        self.log.info("signing request {request} failed: {error}", request=req.request_id.hex()[:8], error=str(error))
        req.deferred.errback(Failure(error))

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self) -> Deferred:
        """
        Sign a checkpoint now: the newest epoch, its membership and the
        records of this node's current cut.  Fires with the L{Checkpoint},
        numbered and kept (see L{checkpoints}; with L{keep_checkpoints},
        only once it is on disk), or fails as L{sign} does.
        """
        signing = self._newest_share()
        if signing is None:
            return fail(NoUsableKey("this node holds no usable epoch key"))
        cut = self.view.current_cut()
        request = CheckpointRequest(signing.key.epoch, cut).encode()
        d = self.sign(CHECKPOINT, request, audit=True)

        def signed(result: SignatureResult) -> Any:
            statement = self.checkpoint_scheme.statement(request, self.view)
            assert scheme_message(CHECKPOINT, statement) == result.message
            cp = Checkpoint(result.epoch, dict(cut), statement, result.message, result.signature, result.key,
                            result.ciphersuite, result.signers, self.clock.seconds(), tuple(sorted(result.divergent)))
            if self.checkpoint_store is None:
                self._checkpoint_seq += 1
                return self._kept(replace(cp, seq=self._checkpoint_seq))
            return self._track(self.checkpoint_store.append(cp.to_record()),
                               lambda seq: self._kept(replace(cp, seq=seq)))
        return d.addCallback(signed)

    def _kept(self, cp: Checkpoint) -> Checkpoint:
        self._checkpoints.append(cp)
        self.log.info("checkpoint {seq} signed: epoch {epoch}, {origins} origins, signers {signers}", seq=cp.seq,
                      epoch=cp.epoch, origins=len(cp.cut), signers=", ".join(_short(m) for m in cp.signers))
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(cp)
            except Exception:
                self.log.failure("on_checkpoint callback failed")
        return cp

    def _checkpoint_tick(self) -> None:
        self.checkpoint().addErrback(
            lambda f: self.log.warn("checkpoint not signed: {error}", error=f.getErrorMessage()))

    def keep_checkpoints(self, store: CheckpointStore) -> None:
        """
        Keep signed checkpoints in C{store} (durable, numbered), from now on:
        L{checkpoint} fires only once its checkpoint is on disk, and
        L{checkpoints} and L{latest_checkpoint} read the store, so a
        restarted node still serves the checkpoints it signed before.
        Call it before the service starts.
        """
        self.checkpoint_store = store

    def checkpoints(self, from_seq: int = 1, limit: Optional[int] = None) -> list[Checkpoint]:
        """
        Signed checkpoints numbered C{from_seq} and up, oldest first: from
        the store when one is kept (at most C{limit}, and at most
        L{frostnode.store.checkpoints.MAX_LIST}), otherwise the last
        C{checkpoints_kept} signed since start.
        """
        if self.checkpoint_store is not None:
            return [Checkpoint.from_record(rec)
                    for rec in self.checkpoint_store.list(from_seq, limit if limit is not None else MAX_LIST)]
        out = [cp for cp in self._checkpoints if cp.seq >= from_seq]
        return out if limit is None else out[:limit]

    def latest_checkpoint(self) -> Optional[Checkpoint]:
        if self.checkpoint_store is not None:
            rec = self.checkpoint_store.latest()
            return None if rec is None else Checkpoint.from_record(rec)
        return self._checkpoints[-1] if self._checkpoints else None


__all__ = ["SigningService", "SigningConfig", "SignatureResult", "MemberStatus", "SigningFailed", "NoUsableKey",
           "Refusal", "Checkpoint"]
