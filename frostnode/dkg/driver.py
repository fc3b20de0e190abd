# -*- test-case-name: tests.test_dkg_driver -*-
"""
The Twisted shell around L{frostnode.dkg.run}: links, broadcast, store, clock.

L{DkgService} owns at most one L{DkgRun} at a time and does three things
the pure machines cannot:

  - B{Carries out actions in order, waiting for durable writes.}  Actions
    go through one FIFO queue.  A write (the run state before a round-1
    broadcast, a signed session's key before its agreement signature, a
    certified key) blocks the queue until its Deferred fires, i.e. until it
    is on disk; so a signature never leaves before the key it commits to is
    stored, whatever arrives meanwhile.  If a write fails the service stops
    taking part in DKGs (it logs a critical event): an unstorable key must
    never be signed for.
  - B{Keeps time.}  One C{IDelayedCall} on the injected clock, at the run's
    next deadline.  The schedule (L{frostnode.dkg.scheduler}) starts runs at
    the configured interval; L{DkgService.request_dkg} starts one on demand
    or says when it may.
  - B{Catches up.}  A member that restarts, was excluded, or was away asks
    every peer for what it missed (a C{STATUS} request naming the epoch and
    the session it is waiting in); peers answer with their current
    certificates of that epoch and later ones (and the certificate of that
    session, if they hold one), and with the agreement signatures they hold
    for that session.  A certificate for a session we signed completes it
    (we hold the key); one for a session we are not in tells us the
    federation's key, of which we hold no share.  The same path takes a
    certificate attached to a later signing request
    (L{DkgService.offer_certificate}).
  - B{Converges on one key per epoch.}  An epoch may end with more than one
    certified session (see L{frostnode.dkg.run}); every certificate is
    stored and the epoch's current one is the highest-ranked (see
    L{frostnode.dkg.storage}).  Whenever our current certificate of an
    epoch changes we offer it point-to-point on C{CHANNEL_DKG}: the first
    one of an epoch to the peers outside its session (its members certify
    it from the broadcast themselves), a later one that displaces another
    to every peer, since they may have settled on the one it displaced.  A
    restarted member asks for the certificates of its newest epoch and
    later ones, and peers answer with their current ones; a link coming up
    (when the links report it) gets our newest current certificate, at most
    once per C{offer_spacing} per peer.  A certificate offered to us that
    we do not hold yet is checked and stored, whatever its epoch, so each
    member's current key is computed from the same certificates in the
    end.  All of this is bounded: one message per peer per change, per
    link-up, or per status request.

Starting and joining are the same thing: attempt 0 of epoch e+1 over the
current members has one session id, whoever computes it.  So a member whose
timer fires starts that session, and a member that receives a message for it
first starts it too, if the minimum spacing (less the join grace) has passed
for it; otherwise it stays out and is excluded as silent.

Logging: every exclusion, blame and outcome is a C{twisted.logger} event with
named fields (C{epoch}, C{attempt}, C{session}, C{culprit}, C{reason}).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from frostnode.crypto.bip340 import taproot_output_key
from frostnode.crypto.group import Point
from frostnode.crypto.keygen import KeyPackage
from frostnode.dkg import messages as m
from frostnode.dkg.messages import Reason
from frostnode.dkg.run import (
    AlsoCertified,
    DkgRun,
    EarlyBuffer,
    RunCompleted,
    RunConfig,
    RunFailed,
    SaveRun,
)
from frostnode.dkg.scheduler import DkgTooSoon, SchedulePolicy, ScheduleTimer
from frostnode.dkg.session import (
    Blame,
    Broadcast,
    PersistSigned,
    SendDirect,
    SessionCompleted,
    SessionFailed,
)
from frostnode.dkg.storage import DkgStorage, rank
from frostnode.dkg.transcript import Certificate, InvalidCertificate, SessionParams
from frostnode.identity import HostKeypair
from frostnode.net.interfaces import CHANNEL_DKG, IBroadcast, ILinks

__all__ = ["DkgService", "DkgResult", "DkgTooSoon", "default_threshold"]

#: Certificates of later epochs sent in one status answer.
MAX_CATCH_UP = 8


def default_threshold(n: int) -> int:
    """t = ceil(2n/3): any coalition that can sign includes more than n/3 members, so an honest one."""
    return -(-2 * n // 3)


def _short(h: bytes) -> str:
    return h.hex()[:16]


@dataclass(frozen=True)
class DkgResult:
    """
    How a DKG run ended, for us.

    @ivar ok: a key was certified.
    @ivar excluded: everyone the run excluded (host key to reason).
    @ivar certificate: the success certificate (every member's signature).
    @ivar key_package: our share, or None if we are not in the certified
        session (we were excluded, or the run failed).
    """

    epoch: int
    ok: bool
    excluded: Mapping[bytes, Reason] = field(default_factory=dict)
    certificate: Optional[Certificate] = None
    key_package: Optional[KeyPackage] = None
    reason: str = ""

    @property
    def member(self) -> bool:
        return self.key_package is not None

    @property
    def internal_key(self) -> Optional[Point]:
        """The Taproot-safe internal key (33-byte plain point)."""
        return None if self.certificate is None else self.certificate.group_key

    @property
    def output_key(self) -> Optional[bytes]:
        """The BIP86-style Taproot output key (32-byte x-only)."""
        ik = self.internal_key
        return None if ik is None else taproot_output_key(ik.xbytes())[0]

    @property
    def session_id(self) -> Optional[bytes]:
        return None if self.certificate is None else self.certificate.params.session_id

    @property
    def attempt(self) -> Optional[int]:
        return None if self.certificate is None else self.certificate.params.attempt


Members = Union[Callable[[], Sequence[bytes]], object]


class DkgService(Service):
    """
    This member's DKG.

    @param host: our host key (signs the agreement round).
    @param members: the current members' host keys: a callable, or an object
        with C{host_keys()} (a L{frostnode.identity.MemberDirectory}).
    @param links: point-to-point links; we register on L{CHANNEL_DKG}.
    @param broadcast: reliable broadcast among the members.
    @param storage: see L{frostnode.dkg.storage}.
    @param clock: every timer.
    @param policy: interval and minimum spacing.
    @param config: timeouts and attempt limits.
    @param threshold: t as a function of n.
    @param schedule: start runs from the policy's timer (off: on request and
        by joining only).
    @param offer_spacing: seconds between two offers of our current
        certificate to one peer on link-up.
    """

    log = Logger()

    def __init__(self, host: HostKeypair, members: Members, links: ILinks, broadcast: IBroadcast,
                 storage: DkgStorage, clock: IReactorTime, policy: SchedulePolicy = SchedulePolicy(),
                 config: RunConfig = RunConfig(), threshold: Callable[[int], int] = default_threshold,
                 rand: Callable[[int], bytes] = os.urandom, schedule: bool = True,
                 offer_spacing: float = 60.0) -> None:
        self.host = host
        self._members = members.host_keys if hasattr(members, "host_keys") else members  # type: ignore[union-attr]
        self.links = links
        self.broadcast = broadcast
        self.storage = storage
        self.clock = clock
        self.policy = policy
        self.config = config
        self.threshold = threshold
        self._rand = rand
        self.early = EarlyBuffer()
        self.run: Optional[DkgRun] = None
        self.last_result: Optional[DkgResult] = None
        self._waiters: list[Deferred] = []
        self._queue: deque = deque()
        self._blocked = False
        self._draining = False
        self._halted = False
        self._call: Optional[IDelayedCall] = None
        self._last_failure: Optional[float] = None
        self._schedule = schedule
        self.timer = ScheduleTimer(clock, policy, storage.last_dkg, lambda: self._last_failure, self._scheduled)
        #: Bytes we handed to the links and to the broadcast (payloads, not Bracha's overhead).
        self.bytes_direct = 0
        self.bytes_broadcast = 0
        self.offer_spacing = offer_spacing
        self._offered: dict[bytes, float] = {}
        self._key_observers: list[Callable[[], None]] = []
        #: Runs this node started or joined, and those that ended without a key (metrics).
        self.runs_started = 0
        self.runs_failed = 0
        self._round2_logged: set[bytes] = set()
        #: Session ids of certificates checked and queued for the store.
        self._adopting: set[bytes] = set()
        links.register(CHANNEL_DKG, self._direct)
        broadcast.subscribe(m.TAG_PREFIX, self._delivered)
        # Not part of ILinks: PeerNetwork reports links coming up, memory links do not.
        observe = getattr(links, "add_link_observer", None)
        if observe is not None:
            observe(self._link_changed)

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._recover()
        if self._schedule:
            self.timer.start()

    def stopService(self) -> Optional[Deferred]:
        self.timer.stop()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _now(self) -> float:
        return self.clock.seconds()

    def members(self) -> list[bytes]:
        return sorted(self._members())

    def _recover(self) -> None:
        """Resume or cleanly abort whatever DKG we were in before a restart."""
        loaded = self.storage.load_run()
        waiting = m.NO_SESSION
        if loaded is not None:
            state, closed = loaded
            if state.epoch <= self.storage.last_epoch():
                # Killed between writing the certificate and dropping the run
                # state: the run is over, so finish the second write now.
                self.log.info("DKG epoch {epoch}: dropping the state of a run already certified", epoch=state.epoch)
                self._drop_stale_run()
            else:
                signed = self.storage.load_signed(state.epoch)
                self.run, acts = DkgRun.recover(self.host, state, signed, self._now(), self.config, self._rand,
                                                self.early, closed=closed)
                cur = self.run.current
                if cur is not None and cur.signed:
                    waiting = cur.sid
                self.log.info("DKG epoch {epoch}: resuming after a restart at attempt {attempt} ({sessions} signed sessions)",
                              epoch=state.epoch, attempt=self.run.attempt, sessions=len(self.run.sessions) - (0 if cur is None or cur.signed else 1))
                self._execute(acts)
        # From our newest epoch on, not the one after: a session of it may
        # have been certified since, and outrank the certificate we hold.
        self._ask_status(max(self.storage.last_epoch(), 1), waiting)

    # -- public API -------------------------------------------------------------------

    def request_dkg(self) -> Deferred:
        """
        Start a DKG now (a join was accepted), or join the one running.

        @return: a Deferred firing with the L{DkgResult}, or failing with
            L{DkgTooSoon} (naming the earliest allowed time) inside the
            minimum spacing.
        """
        if self._halted:
            return fail(RuntimeError("DKG halted after a store failure"))
        if self.run is not None and self.run.outcome is None:
            return self._wait()
        try:
            self.policy.check_request(self.storage.last_dkg(), self._now())
        except DkgTooSoon as e:
            return fail(e)
        return self._start_run()

    def when_done(self) -> Deferred:
        """The running DKG's result (or the last one's, if none is running)."""
        if self.run is not None and self.run.outcome is None:
            return self._wait()
        return succeed(self.last_result)

    def offer_certificate(self, data: Union[bytes, Certificate], sender: Optional[bytes] = None) -> None:
        """
        A certificate someone handed us (for example attached to a signing
        request).  Invalid ones are logged and ignored.
        """
        try:
            cert = data if isinstance(data, Certificate) else Certificate.decode(data)
        except ValueError as e:
            self.log.warn("undecodable DKG certificate from {culprit}: {why}", culprit=_short(sender or b""), why=str(e))
            return
        self._on_certificate(sender, cert)

    def observe_keys(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback()} whenever an epoch's current key changed in the
        store (a first certificate, or one that outranks it), after the
        write is durable: for example the signing service's
        C{epochs_changed}.
        """
        self._key_observers.append(callback)

    # -- starting -----------------------------------------------------------------------

    def _next_epoch(self) -> int:
        """
        The epoch number of our next run: one past the newest certified epoch,
        and past any epoch whose run failed.  A failed run burns its number,
        so a retry never reuses a session id (the broadcast layer would take
        its messages for duplicates of the failed run's).
        """
        nxt = self.storage.last_epoch() + 1
        loaded = self.storage.load_run()
        if loaded is not None and loaded[1]:
            nxt = max(nxt, loaded[0].epoch + 1)
        if self.run is not None and isinstance(self.run.outcome, RunFailed):
            nxt = max(nxt, self.run.epoch + 1)
        return nxt

    def _next_params(self, epoch: Optional[int] = None) -> Optional[SessionParams]:
        ms = self.members()
        try:
            return SessionParams(self._next_epoch() if epoch is None else epoch, 0, self.threshold(len(ms)), ms)
        except ValueError:
            return None

    def _joinable(self, sid: bytes) -> Optional[SessionParams]:
        """
        The session, if C{sid} is attempt 0 of an epoch we could be asked to
        run next: from one past our newest key to two past our own next
        epoch (peers may have burned epochs on failed runs we missed).
        """
        for epoch in range(self.storage.last_epoch() + 1, self._next_epoch() + 3):
            p = self._next_params(epoch)
            if p is not None and p.session_id == sid and self.host.public in p:
                return p
        return None

    def _start_run(self, params: Optional[SessionParams] = None) -> Deferred:
        params = params or self._next_params()
        if params is None or self.host.public not in params:
            return fail(ValueError("we are not in a valid member list, so cannot run a DKG"))
        self.run = DkgRun(self.host, params.epoch, params.threshold, params.members, self.config, self._rand, self.early)
        self.runs_started += 1
        self.log.info("DKG epoch {epoch}: starting with {n} members, t = {t}", epoch=params.epoch, n=params.n, t=params.threshold)
        d = self._wait()
        self._execute(self.run.start(self._now()))
        return d

    def _scheduled(self) -> Deferred:
        if self.run is not None and self.run.outcome is None:
            return self._wait()
        if self._halted:
            return succeed(None)
        return self._start_run()

    def _wait(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def _finish(self, result: DkgResult) -> None:
        self.last_result = result
        if not result.ok:
            self.runs_failed += 1
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)
        self.timer.reschedule()

    # -- inputs -------------------------------------------------------------------------

    def _delivered(self, sender: bytes, tag: bytes, payload: bytes) -> None:
        if self._halted:
            return
        if not self.running:
            # Not started (or stopped): keep it for when we are.
            try:
                self.early.add(m.parse_tag(tag)[0], sender, ("b", tag, payload))
            except ValueError:
                pass
            return
        run = self.run
        if run is None or run.outcome is not None:
            try:
                sid, _, _ = m.parse_tag(tag)
            except ValueError:
                return
            if run is not None and sid in run.session_ids():
                self._execute(run.deliver(sender, tag, payload, self._now()))
                return
            nxt = self._joinable(sid)
            if nxt is None:
                self.early.add(sid, sender, ("b", tag, payload))
                return
            if not self.policy.may_join(self.storage.last_dkg(), self._now()):
                self.log.warn("DKG epoch {epoch}: {culprit} started a DKG inside our minimum spacing; not joining",
                              epoch=nxt.epoch, culprit=_short(sender))
                return
            self.early.add(sid, sender, ("b", tag, payload))
            self._start_run(nxt)
            return
        self._execute(run.deliver(sender, tag, payload, self._now()))

    def _direct(self, sender: bytes, payload: bytes) -> None:
        if self._halted:
            return
        try:
            msg = m.decode_direct(payload)
        except ValueError as e:
            self.log.warn("malformed DKG message from {culprit}: {why}", culprit=_short(sender), why=str(e))
            return
        if not self.running:
            if isinstance(msg, m.Share):
                self.early.add(msg.session_id, sender, ("share", msg.share))
            return
        if isinstance(msg, m.StatusRequest):
            self._answer_status(sender, msg)
        elif isinstance(msg, m.CertificateMessage):
            self._on_certificate(sender, msg.certificate)
        elif self.run is not None:
            self._execute(self.run.receive_direct(sender, msg, self._now()))
        elif isinstance(msg, m.Share):
            self.early.add(msg.session_id, sender, ("share", msg.share))

    def _on_certificate(self, sender: Optional[bytes], cert: Certificate) -> None:
        epoch = cert.params.epoch
        run = self.run
        if run is not None and run.epoch == epoch:
            try:
                self._execute(run.offer_certificate(cert, self._now()))
            except InvalidCertificate as e:
                self.log.warn("DKG epoch {epoch}: invalid certificate from {culprit}: {why}",
                              epoch=epoch, culprit=_short(sender or b""), why=str(e))
            return
        sid = cert.params.session_id
        if sid in self._adopting or any(c.params.session_id == sid for c in self.storage.certificates(epoch)):
            return  # held already, or on its way to the store
        ms = set(self.members())
        try:
            if not set(cert.params.members) <= ms or cert.params.threshold < self.threshold(len(ms)):
                raise InvalidCertificate(None, "members or threshold do not fit the current federation")
            cert.verify()
        except InvalidCertificate as e:
            self.log.warn("DKG epoch {epoch}: invalid certificate from {culprit}: {why}",
                          epoch=epoch, culprit=_short(sender or b""), why=str(e))
            return
        pending = self.storage.signed_key(cert.params)
        if pending is not None and pending.agreement_hash != cert.message:
            pending = None
        self._adopting.add(sid)
        if epoch <= self.storage.last_epoch():
            # Another certified session of an epoch we hold a key of: keep
            # it; it becomes current if it outranks ours.
            self._execute([AlsoCertified(cert, pending)])
            return
        # A later epoch than any we know: we were away or excluded.
        if run is not None and run.outcome is None:
            self.log.warn("DKG epoch {epoch}: abandoning our run, the federation is already at epoch {newer}",
                          epoch=run.epoch, newer=epoch)
        self.run = None
        self._execute([RunCompleted(cert, pending, {})])
        if sender is not None:
            self._ask_status(epoch + 1, m.NO_SESSION, [sender])

    def _answer_status(self, peer: bytes, req: m.StatusRequest) -> None:
        """
        Our current certificate of each epoch from the one asked for (at most
        C{MAX_CATCH_UP} epochs), the certificate of the session the peer
        waits in if we hold one, and the agreement signatures we hold for it.
        """
        certs: dict[bytes, Certificate] = {}
        last = self.storage.last_epoch()
        for e in range(req.epoch, min(last, req.epoch + MAX_CATCH_UP - 1) + 1):
            held = self.storage.certificates(e)
            for c in held[-1:] + [c for c in held if c.params.session_id == req.session_id]:
                certs[c.params.session_id] = c
        run = self.run
        if run is not None and run.epoch >= req.epoch:
            # Certified in this run but perhaps not stored yet (the write is in flight).
            ours = run.certificates()
            best = max(ours, key=rank, default=None)
            for c in ours:
                if c is best or c.params.session_id == req.session_id:
                    certs[c.params.session_id] = c
        out: list = [m.CertificateMessage(c) for c in certs.values()]
        if req.session_id != m.NO_SESSION and run is not None:
            sigs = run.signatures(req.session_id)
            if sigs:
                out.append(m.Signatures(req.session_id, sigs))
        for msg in out:
            self._send(peer, m.encode_direct(msg))

    def _link_changed(self, peer: bytes, up: bool) -> None:
        """A link came up: the peer may have missed our current key (bounded per peer by C{offer_spacing})."""
        if not up or not self.running or self._halted:
            return
        now = self._now()
        last = self._offered.get(peer)
        if last is not None and now - last < self.offer_spacing:
            return
        epoch = self.storage.last_epoch()
        cert = self.storage.current(epoch) if epoch else None
        if cert is None:
            return
        self._offered[peer] = now
        self._send(peer, m.encode_direct(m.CertificateMessage(cert)))

    def _ask_status(self, epoch: int, session_id: bytes, peers: Optional[list[bytes]] = None) -> None:
        payload = m.encode_direct(m.StatusRequest(epoch, session_id))
        for p in (self.links.peers() if peers is None else peers):
            self._send(p, payload)

    def _send(self, peer: bytes, payload: bytes) -> None:
        try:
            self.links.send(peer, CHANNEL_DKG, payload)
        except Exception as e:
            self.log.warn("DKG message to {peer} not queued: {why}", peer=_short(peer), why=repr(e))
            return
        self.bytes_direct += len(payload)

    # -- actions ------------------------------------------------------------------------

    def _execute(self, actions: list) -> None:
        self._queue.extend(actions)
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and not self._blocked and not self._halted:
                d = self._perform(self._queue.popleft())
                if d is not None:
                    self._blocked = True
                    d.addCallbacks(self._write_done, self._write_failed)
        finally:
            self._draining = False
        self._arm()

    def _write_done(self, _: object) -> None:
        self._blocked = False
        self._drain()

    def _write_failed(self, f) -> None:
        self._halted = True
        self._queue.clear()
        self.log.critical("DKG halted: a durable write failed, nothing more will be signed: {why}",
                          why=f.getErrorMessage(), log_failure=f)

    def _drop_stale_run(self) -> None:
        d = self.storage.finish_run()
        d.addErrback(lambda f: self.log.failure("could not drop a finished DKG run's state", f))

    def _log_phase_of_broadcast(self, tag: bytes) -> None:
        """
        One event as each phase starts (operators, and tests that must act
        inside a phase, read them): round 1 when our package leaves, the
        agreement round when our signature leaves (our key is on disk by then).
        """
        try:
            sid, kind, _ = m.parse_tag(tag)
        except ValueError:
            return
        if kind == m.Kind.ROUND1:
            self.log.info("DKG session {session}: round 1, broadcasting our commitments and proof of knowledge",
                          session=_short(sid), phase="round1")
        elif kind == m.Kind.AGREE:
            self.log.info("DKG session {session}: key share stored; broadcasting our agreement signature",
                          session=_short(sid), phase="agreement")

    def _log_round2(self, payload: bytes) -> None:
        # A direct message is VERSION | type | session id ...; log the first share per session.
        if len(payload) >= 34 and payload[1] == m.DirectType.SHARE:
            sid = bytes(payload[2:34])
            if sid not in self._round2_logged:
                if len(self._round2_logged) > 64:
                    self._round2_logged.clear()
                self._round2_logged.add(sid)
                self.log.info("DKG session {session}: round 2, sending our secret shares",
                              session=_short(sid), phase="round2")

    def _perform(self, a) -> Optional[Deferred]:
        now = self._now()
        if isinstance(a, Broadcast):
            self.bytes_broadcast += len(a.payload)
            self._log_phase_of_broadcast(a.tag)
            self.broadcast.broadcast(a.tag, a.payload)
        elif isinstance(a, SendDirect):
            self._log_round2(a.payload)
            self._send(a.peer, a.payload)
        elif isinstance(a, PersistSigned):
            return self.storage.save_signed(a.pending, now)
        elif isinstance(a, SaveRun):
            return self.storage.save_run(a.state)
        elif isinstance(a, Blame):
            self.log.warn("DKG session {session}: {culprit} misbehaved: {what}",
                          session=_short(a.session_id), culprit=_short(a.culprit), what=a.what)
        elif isinstance(a, SessionCompleted):
            self.log.info("DKG epoch {epoch} attempt {attempt}: certified by all {n} members, key {key}",
                          epoch=a.params.epoch, attempt=a.params.attempt, n=a.params.n,
                          key=a.certificate.group_key.encode().hex())
        elif isinstance(a, SessionFailed):
            self._session_failed(a)
        elif isinstance(a, RunCompleted):
            return self._run_completed(a, now)
        elif isinstance(a, AlsoCertified):
            p = a.certificate.params
            self.log.warn("DKG epoch {epoch}: another session was certified too (attempt {attempt}, "
                          "key {key}, {role}); keeping it, the highest attempt is the epoch's key",
                          epoch=p.epoch, attempt=p.attempt, key=a.certificate.group_key.encode().hex(),
                          role="we hold a share" if a.pending is not None else "we hold no share")
            return self._store_certificate(a.certificate, a.pending, now)
        elif isinstance(a, RunFailed):
            return self._run_failed(a, now)
        return None

    def _session_failed(self, a: SessionFailed) -> None:
        p = a.params
        if not a.exclusions:
            self.log.warn("DKG epoch {epoch} attempt {attempt}: session {session} aborted (restart of {culprit}), "
                          "retrying with the same members", epoch=p.epoch, attempt=p.attempt,
                          session=_short(p.session_id), culprit=_short(a.restarted_by or b""))
        for h, r in sorted(a.exclusions.items()):
            self.log.warn("DKG epoch {epoch} attempt {attempt}: excluding {culprit}: {reason}",
                          epoch=p.epoch, attempt=p.attempt, session=_short(p.session_id),
                          culprit=h.hex(), reason=r.name)
        # Someone may hold a certificate we missed (we might be the one excluded).
        self._ask_status(p.epoch, p.session_id if a.signed else m.NO_SESSION)

    def _store_certificate(self, cert: Certificate, pending, now: float) -> Deferred:
        """Store a certificate (with our key if we are in its session), then act if the epoch's current one changed."""
        epoch = cert.params.epoch
        if pending is None:
            pending = self.storage.signed_key(cert.params)
            if pending is not None and pending.agreement_hash != cert.message:
                pending = None
        before = self.storage.current(epoch)
        if pending is not None:
            d = self.storage.certify(pending, cert, now)
        else:
            d = self.storage.record_foreign(cert, now)
        d.addCallback(lambda _: self._current_changed(epoch, before))
        d.addBoth(self._stored, cert.params.session_id)
        return d

    def _stored(self, result: object, sid: bytes) -> object:
        self._adopting.discard(sid)
        return result

    def _current_changed(self, epoch: int, before: Optional[Certificate]) -> None:
        """After a durable certificate write: offer, report and announce the epoch's current key if it changed."""
        after = self.storage.current(epoch)
        if after is None or after == before:
            return
        p = after.params
        if before is not None:
            self.log.warn("DKG epoch {epoch}: the current key is now attempt {attempt}'s {key}, "
                          "which outranks attempt {previous}'s", epoch=epoch, attempt=p.attempt,
                          key=after.group_key.encode().hex(), previous=before.params.attempt)
        # Members of its session certify a first certificate from the
        # broadcast; one that displaces another goes to everyone, who may
        # have settled on the other.
        payload = m.encode_direct(m.CertificateMessage(after))
        for peer in self.links.peers():
            if before is not None or peer not in p:
                self._send(peer, payload)
        last = self.last_result
        if epoch == self.storage.last_epoch() and (last is None or last.epoch <= epoch):
            # Our run's exclusions if it certified this epoch: this result is
            # published before the run is announced (its state is still
            # being dropped), and must already name them.
            outcome = self.run.outcome if self.run is not None and self.run.epoch == epoch else None
            if isinstance(outcome, RunCompleted):
                excluded = dict(outcome.exclusions)
            else:
                excluded = dict(last.excluded) if last is not None and last.epoch == epoch else {}
            self.last_result = self._result(after, excluded)
        for observer in list(self._key_observers):
            try:
                observer()
            except Exception:
                self.log.failure("key observer failed after epoch {epoch} changed", epoch=epoch)

    def _result(self, cert: Certificate, excluded: Mapping[bytes, Reason]) -> DkgResult:
        pending = self.storage.signed_key(cert.params)
        return DkgResult(cert.params.epoch, True, dict(excluded), cert, None if pending is None else pending.key_package)

    def _run_completed(self, a: RunCompleted, now: float) -> Deferred:
        cert = a.certificate
        p = cert.params
        d = self._store_certificate(cert, a.pending, now)
        d.addCallback(lambda _: self.storage.finish_run())

        def announce(_: object) -> None:
            # Normally the run's certificate; one that outranks it if we already held that.
            current = self.storage.current(p.epoch) or cert
            result = self._result(current, a.exclusions)
            q = current.params
            self.log.info("DKG epoch {epoch}: new key certified (attempt {attempt}, {n} members, t = {t}); "
                          "internal key {internal}, output key {output}; {role}; excluded: {excluded}",
                          epoch=q.epoch, attempt=q.attempt, n=q.n, t=q.threshold,
                          internal=current.group_key.encode().hex(), output=result.output_key.hex(),
                          role="we hold a share" if result.member else "we hold no share",
                          excluded={h.hex(): r.name for h, r in a.exclusions.items()})
            self._finish(result)
        d.addCallback(announce)
        return d

    def _run_failed(self, a: RunFailed, now: float) -> Deferred:
        self._last_failure = now
        self.log.error("DKG epoch {epoch} failed: {reason}; excluded: {excluded}; the previous key stays in use",
                       epoch=a.epoch, reason=a.reason, excluded={h.hex(): r.name for h, r in a.exclusions.items()})
        self._ask_status(a.epoch, m.NO_SESSION)
        d = self.storage.save_run(self.run.state, closed=True) if self.run is not None else succeed(None)
        d.addCallback(lambda _: self._finish(DkgResult(a.epoch, False, dict(a.exclusions), reason=a.reason)))
        return d

    # -- time ---------------------------------------------------------------------------

    def _arm(self) -> None:
        deadline = None if self.run is None or self._halted else self.run.deadline
        if self._call is not None and self._call.active():
            if deadline is not None and self._call.getTime() == deadline:
                return
            self._call.cancel()
        self._call = None
        if deadline is not None:
            self._call = self.clock.callLater(max(0.0, deadline - self._now()), self._tick)

    def _tick(self) -> None:
        self._call = None
        if self.run is not None and not self._halted:
            self._execute(self.run.tick(self._now()))
        else:
            self._arm()
