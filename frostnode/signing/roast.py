# -*- test-case-name: tests.test_signing_roast -*-
"""
The ROAST coordinator (Ruffing, Ronge, Jin, Schneider-Bensch, Schroder,
"ROAST: Robust Asynchronous Schnorr Threshold Signatures", CCS 2022) for one
signing request, as a pure state machine: events in, actions out, no clock,
no network.

ROAST wraps a threshold scheme whose sessions can stall or abort (FROST) so
that a signature always comes out while at least t members are honest and
agree, without timeouts deciding who is faulty:

 - The coordinator keeps a I{responsive set} R: members not busy in a
   session, not caught misbehaving, not refusing.  Initially every
   candidate.  Whenever t members of R each have a fresh nonce commitment
   (from L{frostnode.signing.pool}), it starts a session with the first t
   of them (FIFO, so returning members queue behind waiting ones) and
   removes them from R.
 - A I{valid} share puts its sender back into R (it proved honest and
   live); the session finishes when all its t shares are in, and the first
   finished session is the result.  Shares are verified I{lazily}: a
   share's sender rejoins R at once, and its share is verified only when
   the sender is about to be picked for another session (L{_vet}) or when
   its session completes, where the aggregate is checked once and, only if
   that fails, every share (identifiable abort).  So no member enters a
   session unless its last share was valid, as in the paper, while the
   honest path costs one signature check instead of t share checks.
 - An invalid share or undecodable message marks its sender malicious: it is
   named, never used again, and its sessions can never finish (their other
   members still answer and return to R).
 - A slow or silent member simply never returns to R; nobody waits for it:
   the others return and form new sessions.  The driver's timeouts only
   report who is slow (status), they do not steer the protocol.
 - Hence at most n - t + 1 sessions: each new session needs a member of R,
   and every session that never finishes holds at least one faulty member
   who never comes back.

 - B{Patience} (not in the paper).  The paper's coordinator starts a
   session whenever t members are in R, so with n = 5, t = 3 the first share
   of session 1 already starts session 2, and an all-honest request costs
   several sessions' nonces and shares.  Here a new session starts only
   while no session is I{live}: a session stops being live when one of its
   members is caught misbehaving or refuses (it can never finish), or when
   the driver reports that it outlived its patience
   (L{RoastCoordinator.session_expired}, the driver's session timeout).
   Timing therefore only delays the next session, never decides who is
   faulty; an expired session may still finish and then wins, and the
   session bound is unchanged (it never depended on when sessions start).
   C{eager=True} gives the paper's behaviour.

What frostnode adds to the paper:

 - B{Refusals.}  A member that computed another message (C{views-differ}),
   whose scheme rejected the request (C{validation-failed}) or that cannot
   serve it (C{unavailable}) leaves R for this request, as a faulty member
   would, but is recorded as I{divergent}/I{unavailable}, not malicious.
   Its unused nonce goes back to the pool when the refusal comes before
   any reservation (divergent refusals, and C{key-mismatch}: the member
   holds another key for the epoch, an I{unavailable} kind).  Successful
   results name divergent members too.
 - B{Failure.}  When fewer than t members that are neither malicious nor
   refusing remain, no session can ever finish: the request fails at once
   with C{views-differ} (if any member refused as divergent; naming every
   divergent member), else C{validation-failed} (if members rejected; the
   most common reason), else C{not-enough-signers}.  The driver's deadline
   produces C{timeout} (L{RoastCoordinator.expire}).
 - B{Audit} (optional).  Members not in the first session get a
   validate-only request (session number 0); their verdicts count like
   refusals and agreements in sessions.  A divergent member is then known
   before it is ever picked (saving a failed session), and the result waits
   (until the deadline) for every candidate's verdict so that it names all
   divergent members.

Members are named by index (position in the epoch's sorted host keys).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Protocol, Sequence, Union

from frostnode.crypto.errors import InvalidSignatureShare
from frostnode.signing.errors import NOT_ENOUGH_SIGNERS, TIMEOUT, VALIDATION_FAILED, VIEWS_DIFFER, Refusal
from frostnode.signing.messages import SignerEntry
from frostnode.signing.suites import SHARE_SIZE, EpochKey, Session, Suite

#: Refusal kinds as the signing messages name them.
KIND_VIEWS_DIFFER = "views-differ"
KIND_VALIDATION_FAILED = "validation-failed"
KIND_UNAVAILABLE = "unavailable"
KIND_KEY_MISMATCH = "key-mismatch"
_DIVERGENT = (KIND_VIEWS_DIFFER, KIND_VALIDATION_FAILED)
#: Refusals a signer sends before it reserves the session's nonce.
_BEFORE_RESERVING = _DIVERGENT + (KIND_KEY_MISMATCH,)


class NonceSource(Protocol):
    """The coordinator's stock of nonce commitments for this request's epoch, by member index."""

    def available(self, index: int) -> int: ...

    def take(self, index: int) -> Optional[tuple[bytes, bytes]]: ...


# -- actions -------------------------------------------------------------------

class StartSession(NamedTuple):
    """Send a session request to every signer (and, for session 0, validate-only to C{audit})."""

    number: int
    signers: tuple[SignerEntry, ...]
    aggnonce: bytes
    audit: tuple[int, ...] = ()


class ReturnNonce(NamedTuple):
    """A nonce the signer refused to use before reserving it: back to the pool."""

    index: int
    nonce_id: bytes
    commitment: bytes


class NeedNonces(NamedTuple):
    """Responsive members the coordinator has no commitment for: refill them."""

    indices: tuple[int, ...]


class Finished(NamedTuple):
    """The signature, from session C{number}'s C{signers}."""

    signature: bytes
    number: int
    signers: tuple[int, ...]
    report: "Report"


class Failed(NamedTuple):
    """No signature: C{code} and C{detail} as in L{frostnode.signing.errors}."""

    code: str
    detail: str
    report: "Report"


Action = Union[StartSession, ReturnNonce, NeedNonces, Finished, Failed]


@dataclass
class Report:
    """
    What the coordinator learned about members, by index.

    @ivar agreeing: members that sent a valid share or an agreeing verdict.
    @ivar unresponsive: members still awaited (in a session, or audit).
    """

    agreeing: set[int] = field(default_factory=set)
    divergent: dict[int, Refusal] = field(default_factory=dict)
    unavailable: dict[int, Refusal] = field(default_factory=dict)
    malicious: dict[int, str] = field(default_factory=dict)
    unresponsive: list[int] = field(default_factory=list)
    sessions: int = 0


class _Session:
    __slots__ = ("number", "session", "entries", "shares", "waiting")

    def __init__(self, number: int, session: Session, entries: tuple[SignerEntry, ...]) -> None:
        self.number = number
        self.session = session
        self.entries = {e.index: e for e in entries}
        self.shares: dict[int, bytes] = {}
        self.waiting = set(self.entries)


class RoastCoordinator:
    """
    ROAST for one request.

    @param candidates: member indices that may sign, in preference order
        (the driver puts itself first and known-slow members last, and
        leaves out members banned for misbehaviour).
    @param nonces: where session commitments come from; each is taken once.
    @param audit: send a validate-only request to every other candidate and
        wait for all verdicts (or the deadline) before finishing.
    @param eager: start sessions whenever t members are responsive, even
        while another session may still finish (the paper's rule).
    """

    def __init__(
        self,
        key: EpochKey,
        suite: Suite,
        message: bytes,
        candidates: Sequence[int],
        nonces: NonceSource,
        audit: bool = False,
        eager: bool = False,
    ) -> None:
        if len(set(candidates)) != len(candidates) or any(not 0 <= i < key.n for i in candidates):
            raise ValueError("candidates must be distinct member indices")
        self.key = key
        self.suite = suite
        self.message = message
        self.t = key.threshold
        self.candidates = list(candidates)
        self.nonces = nonces
        self.audit = audit
        self.eager = eager
        self._live: set[int] = set()
        self.responsive: list[int] = list(candidates)
        self.report = Report()
        self._sessions: dict[int, _Session] = {}
        self._busy: dict[int, int] = {}
        self._audit_waiting: set[int] = set()
        self._unverified: dict[int, tuple[_Session, bytes]] = {}
        self._next = 1
        self._signature: Optional[Finished] = None
        self.result: Optional[Union[Finished, Failed]] = None

    # -- bookkeeping -------------------------------------------------------------

    @property
    def sessions_started(self) -> int:
        return self._next - 1

    def waiting_on(self) -> list[int]:
        """Members whose answer we still expect (in a session, or to the audit)."""
        return sorted(set(self._busy) | self._audit_waiting)

    def session_waiting(self, number: int) -> list[int]:
        """Members of session C{number} that have not answered yet."""
        s = self._sessions.get(number)
        return [] if s is None else sorted(s.waiting)

    def _possible(self) -> int:
        r = self.report
        return sum(1 for i in self.candidates
                   if i not in r.malicious and i not in r.divergent and i not in r.unavailable)

    def _finish(self, action: Union[Finished, Failed]) -> list[Action]:
        self.result = action
        self.report.unresponsive = self.waiting_on()
        self.report.sessions = self.sessions_started
        return [action]

    def _check_viable(self) -> list[Action]:
        if self.result is not None or self._signature is not None or self._possible() >= self.t:
            return []
        r = self.report
        if any(ref.kind == KIND_VIEWS_DIFFER for ref in r.divergent.values()):
            return self._finish(Failed(VIEWS_DIFFER, "", r))
        if r.divergent:
            reason, _ = Counter(ref.reason for ref in r.divergent.values()).most_common(1)[0]
            return self._finish(Failed(VALIDATION_FAILED, reason, r))
        return self._finish(Failed(NOT_ENOUGH_SIGNERS, "", r))

    def _maybe_done(self) -> list[Action]:
        if self._signature is None or self.result is not None:
            return []
        if self.audit and self._audit_waiting:
            return []
        return self._finish(self._signature)

    def _leave(self, index: int) -> None:
        """C{index} can no longer take part in this request; its session can never finish."""
        self._unverified.pop(index, None)
        number = self._busy.pop(index, None)
        if number is not None:
            self._live.discard(number)
        self._audit_waiting.discard(index)
        if index in self.responsive:
            self.responsive.remove(index)

    # -- sessions --------------------------------------------------------------------

    def _vet(self, index: int) -> bool:
        """
        Verify C{index}'s last share if it has not been yet; an invalid one
        makes it malicious.  @return: whether it may be picked.
        """
        pending = self._unverified.pop(index, None)
        if pending is None:
            return True
        s, share = pending
        if s.session.verify_share(index, share):
            self.report.agreeing.add(index)
            return True
        self.report.malicious[index] = f"invalid signature share in session {s.number}"
        self._leave(index)
        return False

    def _try_start(self) -> list[Action]:
        actions: list[Action] = []
        while self.result is None and self._signature is None and (self.eager or not self._live):
            chosen: list[int] = []
            for i in list(self.responsive):
                if self.nonces.available(i) > 0 and self._vet(i):
                    chosen.append(i)
                    if len(chosen) == self.t:
                        break
            if len(chosen) < self.t:
                failed = self._check_viable()
                if failed:
                    return actions + failed
                starving = tuple(i for i in self.responsive if self.nonces.available(i) == 0)
                if starving:
                    actions.append(NeedNonces(starving))
                break
            chosen.sort()
            entries = []
            for i in chosen:
                got = self.nonces.take(i)
                assert got is not None  # available() said so
                entries.append(SignerEntry(i, got[0], got[1]))
            entries_t = tuple(entries)
            session = self.suite.coordinator_session(self.key, [(e.index, e.commitment) for e in entries_t], self.message)
            number = self._next
            self._next += 1
            self._sessions[number] = _Session(number, session, entries_t)
            self._live.add(number)
            for i in chosen:
                self.responsive.remove(i)
                self._busy[i] = number
            audit: tuple[int, ...] = ()
            if self.audit and number == 1:
                audit = tuple(i for i in self.candidates if i not in chosen)
                self._audit_waiting = set(audit)
            actions.append(StartSession(number, entries_t, session.aggnonce, audit))
        return actions

    def start(self) -> list[Action]:
        """Begin: start the first session if t candidates have nonces."""
        if len(self.candidates) < self.t:
            return self._finish(Failed(NOT_ENOUGH_SIGNERS, f"{len(self.candidates)} usable members, {self.t} needed",
                                       self.report))
        return self._try_start()

    def nonces_arrived(self) -> list[Action]:
        """The pool got commitments: maybe t responsive members are ready now."""
        return self._try_start()

    # -- events ----------------------------------------------------------------------

    def on_share(self, index: int, number: int, share: bytes) -> list[Action]:
        """
        A share from C{index} for session C{number}.  Shares for unknown
        sessions, from members not in the session, or repeated, are ignored
        (links deliver exactly once, so these are stale or misrouted).
        """
        s = self._sessions.get(number)
        if s is None or index not in s.waiting or index in self.report.malicious:
            return []
        s.waiting.discard(index)
        self._busy.pop(index, None)
        if len(share) != SHARE_SIZE:
            return self.on_misbehaviour(index, f"malformed signature share in session {number}")
        s.shares[index] = share
        if self.result is not None:
            return []
        if len(s.shares) == len(s.entries) and self._signature is None:
            return self._complete(s)
        self._unverified[index] = (s, share)
        self.responsive.append(index)
        return self._maybe_done() + self._try_start()

    def _complete(self, s: _Session) -> list[Action]:
        """Every share of C{s} is in: aggregate (one check on the honest path) or name the culprits."""
        try:
            sig = s.session.aggregate(s.shares)
        except InvalidSignatureShare as e:
            culprits = set(e.culprits)
        else:
            culprits = set()
        for i in s.shares:
            pending = self._unverified.get(i)
            if pending is not None and pending[0] is s:
                del self._unverified[i]
            if i not in culprits:
                self.report.agreeing.add(i)
        if culprits:
            self._live.discard(s.number)
            for c in sorted(culprits):
                self.report.malicious[c] = f"invalid signature share in session {s.number}"
                self._leave(c)
            # The honest members of s wait in R (those whose share completed s are not there yet).
            for i in sorted(s.shares):
                if i not in culprits and i not in self.responsive and i not in self._busy:
                    self.responsive.append(i)
            return self._check_viable() or self._maybe_done() or self._try_start()
        self._signature = Finished(sig, s.number, tuple(sorted(s.entries)), self.report)
        return self._maybe_done()

    def on_refusal(self, index: int, number: int, kind: str, digest: bytes, reason: str) -> list[Action]:
        """
        A verified refusal (C{kind} one of C{views-differ},
        C{validation-failed}, C{unavailable}, C{key-mismatch}) from
        C{index}, for session C{number} (0: the audit).
        """
        if index in self.report.malicious or index in self.report.divergent or index in self.report.unavailable:
            return []
        s = self._sessions.get(number)
        if number != 0 and (s is None or index not in s.waiting):
            return []
        if number == 0 and index not in self._audit_waiting:
            return []
        actions: list[Action] = []
        refusal = Refusal(kind, digest, reason)
        if kind in _DIVERGENT:
            self.report.divergent[index] = refusal
        else:
            self.report.unavailable[index] = refusal
        if s is not None:
            s.waiting.discard(index)
            entry = s.entries[index]
            if kind in _BEFORE_RESERVING:
                actions.append(ReturnNonce(index, entry.nonce_id, entry.commitment))
        self._leave(index)
        return actions + (self._check_viable() or self._maybe_done() or self._try_start())

    def on_agreement(self, index: int, number: int, digest: bytes) -> list[Action]:
        """An audit verdict from C{index} agreeing with our digest."""
        if number != 0 or index not in self._audit_waiting:
            return []
        self._audit_waiting.discard(index)
        self.report.agreeing.add(index)
        return self._maybe_done()

    def on_misbehaviour(self, index: int, reason: str) -> list[Action]:
        """C{index} sent something invalid: malicious, never used again in this request."""
        if index in self.report.malicious:
            return []
        self.report.malicious[index] = reason
        self.report.agreeing.discard(index)
        self._leave(index)
        return self._check_viable() or self._maybe_done() or self._try_start()

    def live_sessions(self) -> list[int]:
        return sorted(self._live)

    def session_expired(self, number: int) -> list[Action]:
        """
        Session C{number} outlived the driver's patience: stop waiting for it
        before starting another (it may still finish).
        """
        if number not in self._live:
            return []
        self._live.discard(number)
        return self._try_start()

    def expire(self) -> list[Action]:
        """
        The request's deadline passed.  With a signature in hand (audit still
        waiting) that is the result; otherwise C{timeout}, naming the members
        still awaited and those we never got a nonce commitment from.
        """
        if self.result is not None:
            return []
        if self._signature is not None:
            return self._finish(self._signature)
        starving = {i for i in self.responsive if self.nonces.available(i) == 0}
        silent = sorted(set(self.waiting_on()) | starving)
        actions = self._finish(Failed(TIMEOUT, f"{len(silent)} members did not answer in time", self.report))
        self.report.unresponsive = silent
        return actions
