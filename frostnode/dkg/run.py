# -*- test-case-name: tests.test_dkg_session -*-
"""
One epoch's DKG run: attempts, exclusions and restarts, as a pure state machine.

A run starts with the federation's members and a fixed threshold t and tries
sessions (L{frostnode.dkg.session.DkgSession}) until one is certified.
Attempt k's members are the run's members minus everyone excluded so far
(exclusions only grow), and its session id covers (epoch, k, t, members), so
every member that reached the same verdicts computes the same next session.

Restart, not continue
=====================
When a session fails we start a fresh one without the excluded members
instead of carrying on with the survivors' contributions (the FROST paper's
"disqualify and continue").  Continuing would leave the excluded member
holding a share of the new key (it already received f_j(i) from everyone)
and would keep identifiers with holes in them.  A restart costs one more
round trip and gives a key whose holders are exactly the session's members,
identified 1..n'.

Lower bound
===========
t stays fixed for the whole run: excluding members must never lower the
number of signers a key needs (otherwise getting others excluded would be a
way to weaken the key).  So a run continues while at least
C{max(t, 2)} members remain and fewer than C{max_attempts} sessions have
been tried; then it fails, naming everyone it excluded, and the previous
epoch's key stays in use.  Reliable broadcast runs over the whole
federation (its n >= 3f + 1 is the federation's, including excluded
members, who still relay), so it does not constrain n'.

Consistency of exclusions
=========================
Exclusions on I{evidence} (an invalid round-1 package, an invalid reveal, an
invalid agreement signature) are drawn from reliably broadcast data and
judged only once the relevant set is complete, so every honest member draws
the same ones.  Exclusions on I{timing} (silent in round 1, no reveal,
silent in the agreement round) depend on each member's own deadline; a
member that is slow by about the timeout can be judged differently by
different members.  Then their next sessions have different ids, neither
gets all n signatures, and both time out again: nothing is ever accepted
that not every member of a session signed (safety does not depend on
timing), but such a run may end with no key.  Nothing short of consensus
would avoid that, and it needs a slow member I{and} a fault in the same
attempt.  Others' aborts never exclude anyone by themselves: a
member's claim that someone was silent is logged, not trusted.

A member that lost its state in a crash aborts the session it was in with a
C{restarted} abort; everyone restarts with the same members.  More than
C{max_restarts} such aborts from one member in a run exclude it
(L{Reason.REPEATED_RESTARTS}), so a member cannot stall the run forever.
The stored attempt moves on before a failed session's own abort leaves, so
the session a member aborts after a crash is never one it already aborted
(see L{DkgRun.recover}).

Two certificates in one run
===========================
A session we signed stays open after it fails (see L{frostnode.dkg.session}).
So if a member was judged silent in the agreement round of attempt k but
its signature arrives later, attempt k can be certified even though attempt
k+1 was certified too.  Every member of both sessions then holds valid
shares of both keys, so funds sent to either are safe.  The run reports the
first certificate it sees as its outcome and any later one as
L{AlsoCertified}; the driver stores both, and the epoch's current key is
the certified session with the highest attempt, whatever the order they
arrived in (see L{frostnode.dkg.storage} and L{frostnode.store.keys}).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Union

from frostnode.dkg import messages as m
from frostnode.dkg.messages import Kind, Reason
from frostnode.dkg.session import (
    Action,
    Blame,
    DkgSession,
    PendingKey,
    SessionCompleted,
    SessionFailed,
    Timeouts,
    restarted_abort,
)
from frostnode.dkg.transcript import MAX_MEMBERS, Certificate, InvalidCertificate, SessionParams
from frostnode.identity import HostKeypair
from frostnode.wire import Reader, Writer

Rand = Callable[[int], bytes]


class RunConfig(NamedTuple):
    """
    @ivar timeouts: per-phase timeouts of every session.
    @ivar max_attempts: sessions tried before the run gives up.
    @ivar max_restarts: C{restarted} aborts tolerated from one member per run.
    """

    timeouts: Timeouts = Timeouts()
    max_attempts: int = 8
    max_restarts: int = 2


class SaveRun(NamedTuple):
    """Write the run's state durably before any later action (the next round-1 broadcast)."""

    state: "RunState"


class RunCompleted(NamedTuple):
    """
    The run's outcome: a certified key.

    @ivar pending: our key package, or None when we are not in the
        certified session (excluded, or we lost our copy).
    @ivar exclusions: everyone the run excluded, and why.
    """

    certificate: Certificate
    pending: Optional[PendingKey]
    exclusions: dict[bytes, Reason]


class AlsoCertified(NamedTuple):
    """A second session of the run was certified after the first (see module docstring)."""

    certificate: Certificate
    pending: Optional[PendingKey]


class RunFailed(NamedTuple):
    """No key: too few members left, or too many attempts."""

    epoch: int
    exclusions: dict[bytes, Reason]
    reason: str


RunAction = Union[Action, SaveRun, RunCompleted, AlsoCertified, RunFailed]


# -- persisted state -----------------------------------------------------------------

class RunState(NamedTuple):
    """What a run must remember across a crash (its sessions' keys are stored apart)."""

    epoch: int
    threshold: int
    members: tuple[bytes, ...]
    attempt: int
    excluded: dict[bytes, Reason]
    restarts: dict[bytes, int]

    def encode(self) -> bytes:
        w = Writer().u8(1).u64(self.epoch).u16(self.threshold).u32(self.attempt).count(len(self.members), MAX_MEMBERS)
        for h in self.members:
            w.fixed(h, 32)
        w.count(len(self.excluded), MAX_MEMBERS)
        for h, reason in sorted(self.excluded.items()):
            w.fixed(h, 32).u8(reason)
        w.count(len(self.restarts), MAX_MEMBERS)
        for h, c in sorted(self.restarts.items()):
            w.fixed(h, 32).u16(c)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "RunState":
        """Strict parse; C{ValueError} if malformed."""
        r = Reader(data, "DKG run state")
        r.version(1)
        epoch, t, attempt = r.u64(), r.u16(), r.u32()
        members = tuple(r.fixed(32) for _ in range(r.count(MAX_MEMBERS, 32)))
        excluded = {}
        for _ in range(r.count(MAX_MEMBERS, 33)):
            h = r.fixed(32)
            excluded[h] = Reason(r.u8())
        restarts = {}
        for _ in range(r.count(MAX_MEMBERS, 34)):
            h = r.fixed(32)
            restarts[h] = r.u16()
        r.finish()
        return cls(epoch, t, members, attempt, excluded, restarts)


# -- early messages ---------------------------------------------------------------------

class EarlyBuffer:
    """
    Messages for sessions we have not started yet, bounded per sender.

    Nothing may depend on delivery order, so a member that enters a session
    a little later than a peer must still see the peer's round-1 package and
    share.  Each sender may park at most C{per_sender} messages; beyond
    that its oldest are dropped (an honest member sends a handful per
    session, and we only ever fall one or two sessions behind).
    """

    def __init__(self, per_sender: int = 64) -> None:
        self.per_sender = per_sender
        self._items: OrderedDict[int, tuple[bytes, bytes, tuple]] = OrderedDict()
        self._count: dict[bytes, list[int]] = {}
        self._seq = 0

    def add(self, sid: bytes, sender: bytes, item: tuple) -> None:
        mine = self._count.setdefault(sender, [])
        if len(mine) >= self.per_sender:
            self._items.pop(mine.pop(0), None)
        self._seq += 1
        self._items[self._seq] = (sid, sender, item)
        mine.append(self._seq)

    def take(self, sid: bytes) -> list[tuple[bytes, tuple]]:
        out = []
        for k in [k for k, v in self._items.items() if v[0] == sid]:
            _, sender, item = self._items.pop(k)
            self._count[sender].remove(k)
            out.append((sender, item))
        return out

    def session_ids(self) -> set[bytes]:
        return {v[0] for v in self._items.values()}

    def __len__(self) -> int:
        return len(self._items)


# -- the run ---------------------------------------------------------------------------

class DkgRun:
    """
    Our side of one epoch's DKG.

    @ivar outcome: None while running, then L{RunCompleted} or L{RunFailed}
        (a failed run can still turn completed if a session we signed is
        certified late).
    """

    def __init__(self, host: HostKeypair, epoch: int, threshold: int, members: tuple[bytes, ...],
                 config: RunConfig = RunConfig(), rand: Rand = os.urandom,
                 early: Optional[EarlyBuffer] = None) -> None:
        self.host = host
        self.epoch = epoch
        self.threshold = threshold
        self.members = tuple(sorted(members))
        if host.public not in self.members:
            raise ValueError("we are not a member of this run")
        SessionParams(epoch, 0, threshold, self.members)  # validates
        self.config = config
        self._rand = rand
        self.early = early if early is not None else EarlyBuffer()
        self.attempt = 0
        self.excluded: dict[bytes, Reason] = {}
        self.restarts: dict[bytes, int] = {}
        self.sessions: dict[bytes, DkgSession] = {}
        self._dead: set[bytes] = set()
        self._counted_restarts: set[tuple[bytes, bytes]] = set()
        self.current: Optional[DkgSession] = None
        self.outcome: Optional[Union[RunCompleted, RunFailed]] = None
        self._certified: set[bytes] = set()

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return RunState(self.epoch, self.threshold, self.members, self.attempt, dict(self.excluded), dict(self.restarts))

    def params_for(self, attempt: int) -> SessionParams:
        return SessionParams(self.epoch, attempt, self.threshold, (h for h in self.members if h not in self.excluded))

    @property
    def completed(self) -> bool:
        return isinstance(self.outcome, RunCompleted)

    @property
    def deadline(self) -> Optional[float]:
        ds = [d for s in self.sessions.values() if (d := s.deadline) is not None]
        return min(ds) if ds else None

    def session_ids(self) -> set[bytes]:
        return set(self.sessions) | self._dead

    # -- starting ----------------------------------------------------------------------

    def start(self, now: float) -> list[RunAction]:
        """Begin attempt 0."""
        if self.current is not None or self.outcome is not None:
            raise ValueError("run already started")
        return self._begin(now)

    @classmethod
    def recover(cls, host: HostKeypair, state: RunState, pendings: dict[bytes, PendingKey], now: float,
                config: RunConfig = RunConfig(), rand: Rand = os.urandom,
                early: Optional[EarlyBuffer] = None, closed: bool = False) -> tuple["DkgRun", list[RunAction]]:
        """
        Rebuild a run after a restart.

        Sessions we had signed are resumed from their persisted keys (our
        signature is re-sent, and they may still be certified).  If the
        current session is not among them we lost its secrets: we abort it
        with a C{restarted} abort, count that against ourselves as everyone
        else will, and begin the next attempt with the same members.

        The stored session never already has an abort of ours: a failed
        session's abort is broadcast only after the next attempt's
        L{SaveRun} (see L{SessionFailed}), so a crash in between leaves the
        next attempt stored, with the exclusions we drew, and that one is
        what we abort here.  The C{restarted} abort is sent before the next
        L{SaveRun} instead: a crash in between sends the same bytes again,
        which is harmless, whereas the other order could lose it and leave
        our peers waiting in the session for its deadline.

        @param closed: the run had already failed; only its signed sessions
            are resumed (they may still be certified), nothing new starts.
        """
        run = cls(host, state.epoch, state.threshold, state.members, config, rand, early)
        run.attempt = state.attempt
        run.excluded = dict(state.excluded)
        run.restarts = dict(state.restarts)
        out: list[RunAction] = []
        for sid, pk in pendings.items():
            if pk.params.epoch != state.epoch:
                continue
            s, acts = DkgSession.resume(pk, host, now, config.timeouts)
            run.sessions[sid] = s
            out += acts
        if closed:
            run.outcome = RunFailed(run.epoch, dict(run.excluded), "failed before the restart")
            return run, out
        try:
            cur = run.params_for(run.attempt)
        except ValueError:
            cur = None
        if cur is not None and cur.session_id in run.sessions:
            run.current = run.sessions[cur.session_id]
            out += run._replay(cur.session_id, now)
            return run, out
        if cur is not None and host.public in cur:
            out.append(restarted_abort(cur))
            run._dead.add(cur.session_id)
            run._counted_restarts.add((host.public, cur.session_id))
            run.restarts[host.public] = run.restarts.get(host.public, 0) + 1
            if run.restarts[host.public] > config.max_restarts:
                run.excluded[host.public] = Reason.REPEATED_RESTARTS
        run.attempt += 1
        return run, out + run._begin(now)

    def _begin(self, now: float) -> list[RunAction]:
        """Start session number C{self.attempt}, or fail the run."""
        self.current = None
        remaining = [h for h in self.members if h not in self.excluded]
        if self.host.public in self.excluded:
            return self._run_failed(f"we were excluded ({self.excluded[self.host.public].name})")
        if len(remaining) < max(self.threshold, 2):
            return self._run_failed(f"only {len(remaining)} members remain, fewer than t = {self.threshold}")
        if self.attempt >= self.config.max_attempts:
            return self._run_failed(f"no session succeeded in {self.config.max_attempts} attempts")
        params = self.params_for(self.attempt)
        session = DkgSession(params, self.host, self.config.timeouts, self._rand)
        self.sessions[params.session_id] = session
        self.current = session
        out: list[RunAction] = [SaveRun(self.state)]
        out += session.start(now)
        return out + self._replay(params.session_id, now)

    def _replay(self, sid: bytes, now: float) -> list[RunAction]:
        out: list[RunAction] = []
        for sender, item in self.early.take(sid):
            if item[0] == "b":
                out += self.deliver(sender, item[1], item[2], now)
            elif item[0] == "share":
                out += self._absorb(self.sessions[sid].receive_share(sender, item[1], now), now) if sid in self.sessions else []
        return out

    def _run_failed(self, reason: str) -> list[RunAction]:
        self.current = None
        self.outcome = RunFailed(self.epoch, dict(self.excluded), reason)
        return [self.outcome]

    # -- inputs ---------------------------------------------------------------------------

    def deliver(self, sender: bytes, tag: bytes, payload: bytes, now: float) -> list[RunAction]:
        """A broadcast delivery whose tag starts with the DKG prefix."""
        try:
            sid, kind, ident = m.parse_tag(tag)
        except ValueError as e:
            return [Blame(sender, b"", f"bad DKG tag: {e}")]
        s = self.sessions.get(sid)
        if s is None:
            if sid not in self._dead:
                self.early.add(sid, sender, ("b", tag, payload))
            return []
        return self._absorb(s.deliver(sender, kind, ident, payload, now), now)

    def receive_direct(self, sender: bytes, msg: m.Direct, now: float) -> list[RunAction]:
        """A decoded point-to-point message other than a status request."""
        if isinstance(msg, m.Share):
            s = self.sessions.get(msg.session_id)
            if s is None:
                if msg.session_id not in self._dead:
                    self.early.add(msg.session_id, sender, ("share", msg.share))
                return []
            return self._absorb(s.receive_share(sender, msg.share, now), now)
        if isinstance(msg, m.Signatures):
            s = self.sessions.get(msg.session_id)
            return [] if s is None else self._absorb(s.receive_signatures(sender, msg.signatures, now), now)
        if isinstance(msg, m.CertificateMessage):
            try:
                return self.offer_certificate(msg.certificate, now)
            except InvalidCertificate as e:
                return [Blame(sender, msg.certificate.params.session_id, f"sent a bad certificate: {e}")]
        return []

    def check_certificate(self, cert: Certificate) -> None:
        """
        Is C{cert} a certificate this run could have produced?

        @raise InvalidCertificate: another epoch or threshold, members outside
            ours or fewer than t, or a signature that fails.
        """
        p = cert.params
        if p.epoch != self.epoch or p.threshold != self.threshold:
            raise InvalidCertificate(None, f"certificate is for epoch {p.epoch} t={p.threshold}, not {self.epoch} t={self.threshold}")
        if not set(p.members) <= set(self.members) or p.n < self.threshold:
            raise InvalidCertificate(None, "certificate's members are not a large enough subset of the run's")
        cert.verify()

    def offer_certificate(self, cert: Certificate, now: float) -> list[RunAction]:
        """
        A certificate for a session of this run, from a peer.

        @raise InvalidCertificate: see L{check_certificate}, or it is for a
            session we signed but on another transcript.
        """
        sid = cert.params.session_id
        if sid in self._certified:
            return []
        self.check_certificate(cert)
        s = self.sessions.get(sid)
        if s is not None and s.pending is not None:
            return self._absorb(s.offer_certificate(cert, now), now)
        # We are not in it, or hold no key for it: we learn the key, not a share.
        return self._certified_session(cert, None, now)

    def tick(self, now: float) -> list[RunAction]:
        out: list[RunAction] = []
        for s in list(self.sessions.values()):
            d = s.deadline
            if d is not None and now >= d:
                out += self._absorb(s.tick(now), now)
        return out

    def signatures(self, sid: bytes) -> dict[int, bytes]:
        s = self.sessions.get(sid)
        return {} if s is None else s.signatures()

    def certificates(self) -> list[Certificate]:
        return [s.certificate for s in self.sessions.values() if s.certificate is not None]

    # -- session outcomes ----------------------------------------------------------------------

    def _absorb(self, actions: list[Action], now: float) -> list[RunAction]:
        out: list[RunAction] = []
        for a in actions:
            out.append(a)
            if isinstance(a, SessionCompleted):
                out += self._certified_session(a.certificate, a.pending, now)
            elif isinstance(a, SessionFailed):
                out += self._session_failed(a, now)
        return out

    def _certified_session(self, cert: Certificate, pending: Optional[PendingKey], now: float) -> list[RunAction]:
        sid = cert.params.session_id
        if sid in self._certified:
            return []
        self._certified.add(sid)
        if self.completed:
            return [AlsoCertified(cert, pending)]
        self.outcome = RunCompleted(cert, pending, dict(self.excluded))
        out: list[RunAction] = [self.outcome]
        # Sessions we did not sign are over; signed ones may still certify.
        for k, s in list(self.sessions.items()):
            if not s.signed:
                del self.sessions[k]
                self._dead.add(k)
        self.current = None
        return out

    def _session_failed(self, f: SessionFailed, now: float) -> list[RunAction]:
        sid = f.params.session_id
        s = self.sessions.get(sid)
        if s is not None and not s.signed:
            del self.sessions[sid]
            self._dead.add(sid)
        if f.restarted_by is not None and (f.restarted_by, sid) not in self._counted_restarts:
            self._counted_restarts.add((f.restarted_by, sid))
            self.restarts[f.restarted_by] = self.restarts.get(f.restarted_by, 0) + 1
            if self.restarts[f.restarted_by] > self.config.max_restarts:
                self.excluded.setdefault(f.restarted_by, Reason.REPEATED_RESTARTS)
        if self.current is None or self.current.sid != sid or self.outcome is not None:
            return []
        for h, r in f.exclusions.items():
            self.excluded.setdefault(h, r)
        self.attempt += 1
        return self._begin(now)
