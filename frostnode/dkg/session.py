# -*- test-case-name: tests.test_dkg_session -*-
"""
One DKG session (one attempt of an epoch's run) as a pure state machine.

Inputs are messages (L{DkgSession.deliver} for broadcast deliveries,
L{DkgSession.receive_share} and friends for point-to-point ones) and the time
(L{DkgSession.tick} at L{DkgSession.deadline}); outputs are L{Action}s that
the driver carries out in order.  No reactor, no sockets, no disk: the
driver owns those, and the order of the returned actions carries the
durability rule (see L{PersistSigned}).

Phases
======
ROUND1
    We broadcast our L{Round1Package} (proof of knowledge bound to the
    session id) and wait for every member's package.  Round 1 ends when all
    n packages are delivered, valid or not, or at the round-1 deadline.  Any
    invalid package (undecodable, wrong size, bad proof of knowledge) or
    missing package fails the session, naming those members.  Waiting for
    all n before judging means every honest member judges the same set of
    reliably broadcast packages (unless a deadline cuts in).
ROUND2
    We send f_i(j) to each member j point-to-point and collect theirs.  When
    we hold one from everyone, L{keygen_finalize} checks them all in one
    multiplication; only when that fails do we check each share
    (L{verify_share}) to find the senders to complain about.  At the round-2
    deadline we also complain about senders we have nothing from.
COMPLAINTS (during ROUND2 and after)
    A complaint is a broadcast naming the accused.  The accused answers by
    broadcasting the share it sent the accuser (L{Kind.REVEAL}); everyone
    checks it against the accused's commitments.  A valid reveal dismisses
    the complaint and the accuser uses the revealed share.  An invalid
    reveal, or none within C{reveal} seconds of the complaint, excludes the
    accused.  The accuser is not excluded for a dismissed complaint: from
    the outside, "the accuser lied" and "the accused sent a bad share and
    then revealed a good one" look the same, and either way the revealed
    share is the accuser's own, so a false complaint costs one broadcast and
    leaks nothing.  Exclusions from complaints are decided only once our
    round-2 deadline has passed and every complaint we know of is resolved
    or expired, so that members who see complaints in a different order
    still decide on the same set.
AGREEMENT
    With valid shares from everyone we compute our L{KeyPackage}, hash the
    transcript (L{frostnode.dkg.transcript.agreement_hash}), sign it with our
    host key and emit L{PersistSigned} I{then} the broadcast of the
    signature.  The key becomes ours only with valid signatures from all n
    members on our hash: that is the L{Certificate}.  A member whose
    signature is invalid is excluded; one whose signature has not arrived by
    the agreement deadline is excluded as silent.

Agreement and issue 577
=======================
Nobody accepts a key without every member's signature, and an honest member
signs only when it holds valid shares from everyone.  So if a member sends a
bad share to one honest member, that member does not sign until the
complaint is resolved, and nobody, including those who already signed,
can accept the key in the meantime.  Either the reveal fixes the share and
everyone ends with the same key, or the accused is excluded and the session
fails for everyone.

Failure and what survives it
============================
A failed session emits L{SessionFailed} with the exclusions (host key to
L{Reason}); if we had not signed we then broadcast an abort for the record
(after L{SessionFailed}, so the run's state is stored first: see there).
A session we I{had} signed stays alive after failing: its signatures are all
reliably broadcast, so it may still complete (a member judged silent was
merely slow), and then its certificate is as good as any.  That is why a
signed session's key package is persisted before the signature leaves.

An abort flagged C{restarted} (the author lost its state in a crash and will
never sign) fails the session at once, with evidence-only exclusions: the
run restarts it with the same members.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Callable, NamedTuple, Optional, Union

from frostnode.crypto.errors import InvalidEncoding, InvalidSecretShare, ProtocolError
from frostnode.crypto.group import Point, point_from_bytes
from frostnode.crypto.keygen import (
    KeyPackage,
    Round1Package,
    Round1Secret,
    keygen_finalize,
    keygen_round1,
    keygen_share,
    verify_proof_of_knowledge,
    verify_share,
)
from frostnode.dkg import messages as m
from frostnode.dkg.messages import ComplaintReason, Kind, Reason
from frostnode.dkg.transcript import (
    Certificate,
    InvalidCertificate,
    SessionParams,
    agreement_hash,
    commitments_hash,
)
from frostnode.identity import HostKeypair, verify_host_signature
from frostnode.wire import Reader, Writer

Rand = Callable[[int], bytes]

_MAX_KEY_PACKAGE = 64 + 70 + 65 * 1000


class Timeouts(NamedTuple):
    """
    Seconds each phase may take before we blame whoever is missing.

    @ivar round1: from the session's start to every round-1 package.
    @ivar round2: from entering round 2 to a share from every member.
    @ivar reveal: from a complaint's delivery to the accused's reveal.
    @ivar agreement: after C{round2 + reveal}, to every agreement signature.
    """

    round1: float = 60.0
    round2: float = 60.0
    reveal: float = 30.0
    agreement: float = 60.0


# -- actions -------------------------------------------------------------------

class Broadcast(NamedTuple):
    """Reliably broadcast C{payload} under C{tag}."""

    tag: bytes
    payload: bytes


class SendDirect(NamedTuple):
    """Send C{payload} to C{peer} on C{CHANNEL_DKG}."""

    peer: bytes
    payload: bytes

    def __repr__(self) -> str:
        # The payload may be a secret share (a Share message): print its size only.
        return f"SendDirect(peer={self.peer.hex()[:16]}, payload=<{len(self.payload)} bytes>)"


class PersistSigned(NamedTuple):
    """
    Write C{pending} durably.  The driver must not carry out any later
    action (the next one broadcasts our agreement signature) before the
    write has completed.
    """

    pending: "PendingKey"


class SessionCompleted(NamedTuple):
    """Every member signed our transcript: the key in C{pending} is certified."""

    params: SessionParams
    certificate: Certificate
    pending: "PendingKey"


class SessionFailed(NamedTuple):
    """
    The session cannot complete in our view.

    It comes I{before} the abort we broadcast for the session (if we had
    not signed), so that whatever the caller does about the failure (the
    run persists the next attempt, with these exclusions) happens before
    the abort leaves.  Otherwise a crash between the two would leave a
    stored run still in this session: on recovery we would abort it again
    as C{restarted}, a second payload under the same broadcast tag (we
    would look equivocating), and start the next attempt without the
    exclusions we had drawn, so with another session id than our peers.

    @ivar exclusions: host key to reason, for the next attempt.
    @ivar signed: we had signed; the session may still complete later.
    @ivar restarted_by: host key of the member whose restart aborted it.
    """

    params: SessionParams
    exclusions: dict[bytes, Reason]
    signed: bool
    restarted_by: Optional[bytes]


class Blame(NamedTuple):
    """Something a member sent proves (or strongly suggests) misbehaviour; for the log."""

    culprit: bytes
    session_id: bytes
    what: str


Action = Union[Broadcast, SendDirect, PersistSigned, SessionCompleted, SessionFailed, Blame]


# -- the persisted key ------------------------------------------------------------

class PendingKey:
    """
    Our outcome of a session, written before our agreement signature leaves.

    Holds the key package (with our secret share), every member's
    commitments, the hashes we signed and our signature: after a crash the
    signature can be re-sent byte for byte and a certificate for the
    session checked against what we signed.
    """

    __slots__ = ("params", "key_package", "commitments", "commitments_hash", "agreement_hash", "signature")

    def __init__(self, params: SessionParams, key_package: KeyPackage, commitments: tuple[tuple[Point, ...], ...],
                 agreement_hash_: bytes, signature: bytes) -> None:
        if len(commitments) != params.n or any(len(c) != params.threshold for c in commitments):
            raise ValueError("commitments do not fit the session")
        self.params = params
        self.key_package = key_package
        self.commitments = commitments
        self.commitments_hash = commitments_hash(commitments)
        self.agreement_hash = agreement_hash_
        self.signature = signature

    @property
    def identifier(self) -> int:
        return self.key_package.identifier

    def encode(self) -> bytes:
        w = Writer().u8(1).raw(self.params.encode()).var_bytes(self.key_package.encode(), _MAX_KEY_PACKAGE)
        for cs in self.commitments:
            for c in cs:
                w.fixed(c.encode(), 33)
        return w.fixed(self.agreement_hash, 32).fixed(self.signature, 64).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "PendingKey":
        """Strict parse; C{ValueError} if malformed or inconsistent."""
        r = Reader(data, "pending key")
        r.version(1)
        params = SessionParams.read(r)
        kp = KeyPackage.decode(r.var_bytes(_MAX_KEY_PACKAGE))
        n, t = params.n, params.threshold
        comms = tuple(tuple(point_from_bytes(r.fixed(33)) for _ in range(t)) for _ in range(n))
        ah, sig = r.fixed(32), r.fixed(64)
        r.finish()
        if kp.threshold != t or kp.participants != tuple(params.identifiers()) or kp.identifier not in kp.participants:
            raise InvalidEncoding("pending key's key package does not fit its session")
        pk = cls(params, kp, comms, ah, sig)
        if agreement_hash(params, kp.group_key, pk.commitments_hash) != pk.agreement_hash:
            raise InvalidEncoding("pending key's agreement hash does not match its contents")
        return pk

    def __repr__(self) -> str:
        return f"PendingKey({self.params!r}, {self.key_package!r})"


class Phase(Enum):
    NEW = "new"
    ROUND1 = "round1"
    ROUND2 = "round2"
    SIGNED = "signed"
    COMPLETED = "completed"
    FAILED = "failed"


class _Complaint:
    __slots__ = ("since", "verdict", "expired")

    def __init__(self, since: float) -> None:
        self.since = since                      # when it counts from (delivery, or our round-2 entry)
        self.verdict: Optional[bool] = None     # True: dismissed, False: accused proved faulty
        self.expired = False                    # no verdict within the reveal timeout

    def open(self) -> bool:
        return self.verdict is None and not self.expired


class DkgSession:
    """
    Our side of one session.  Create it, call L{start}, feed it messages.

    @ivar phase: where we are.
    @ivar signed: our agreement signature may have left (we emitted it).
    @ivar exclusions: what the failure named, once failed.
    """

    def __init__(self, params: SessionParams, host: HostKeypair, timeouts: Timeouts = Timeouts(),
                 rand: Rand = os.urandom) -> None:
        if host.public not in params:
            raise ValueError("we are not a member of this session")
        self.params = params
        self.sid = params.session_id
        self.host = host
        self.me = params.identifier(host.public)
        self.timeouts = timeouts
        self._rand = rand
        self.phase = Phase.NEW
        self.signed = False
        self.exclusions: dict[bytes, Reason] = {}
        self._secret: Optional[Round1Secret] = None
        self._packages: dict[int, Round1Package] = {}
        self._bad_round1: dict[int, str] = {}
        self._round1_deadline = 0.0
        self._sent: dict[int, int] = {}              # shares we sent, for reveals
        self._received: dict[int, int] = {}          # first share each member sent us
        self._verified: dict[int, int] = {}          # shares known to be valid (ours included)
        self._bad_share: set[int] = set()
        self._complained: set[int] = set()           # whom we accused
        self._complaints: dict[tuple[int, int], _Complaint] = {}   # (accuser, accused)
        self._reveals: dict[tuple[int, int], int] = {}             # (accused, accuser) -> share, -1 if malformed
        self._reveal_verdict: dict[tuple[int, int], bool] = {}
        self._invalid_reveal: set[int] = set()
        self._round2_deadline = 0.0
        self._round2_over = False
        self._agreement_deadline = 0.0
        self.pending: Optional[PendingKey] = None
        self._sigs: dict[int, bytes] = {}
        self._bad_sigs: set[int] = set()
        self._early_sigs: dict[int, bytes] = {}
        self._restarted_by: Optional[bytes] = None
        self.certificate: Optional[Certificate] = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Generate our polynomial and broadcast its commitments."""
        if self.phase is not Phase.NEW:
            raise ValueError("session already started")
        p = self.params
        self._secret, package = keygen_round1(self.me, p.threshold, p.n, self.sid, self._rand)
        self.phase = Phase.ROUND1
        self._round1_deadline = now + self.timeouts.round1
        return [Broadcast(m.tag(self.sid, Kind.ROUND1), m.encode_round1(package.encode()))]

    @classmethod
    def resume(cls, pending: PendingKey, host: HostKeypair, now: float,
               timeouts: Timeouts = Timeouts()) -> tuple["DkgSession", list[Action]]:
        """
        Rebuild a session we had signed from its persisted key, after a restart.

        Our signature is broadcast again (same bytes: harmless to those who
        have it); the driver should also ask peers for their signatures.
        """
        s = cls(pending.params, host, timeouts)
        if pending.identifier != s.me:
            raise ValueError("pending key belongs to another member")
        s.phase = Phase.SIGNED
        s.signed = True
        s.pending = pending
        s._round2_over = True
        s._agreement_deadline = now + timeouts.agreement
        s._sigs[s.me] = pending.signature
        return s, [Broadcast(m.tag(s.sid, Kind.AGREE), m.encode_agree(pending.agreement_hash, pending.signature))]

    @property
    def finished(self) -> bool:
        """Nothing more can happen: completed, or failed without our signature."""
        return self.phase is Phase.COMPLETED or (self.phase is Phase.FAILED and not self.signed)

    @property
    def deadline(self) -> Optional[float]:
        """When L{tick} next has something to do, or None."""
        ph = self.phase
        if ph is Phase.ROUND1:
            return self._round1_deadline
        if ph in (Phase.ROUND2, Phase.SIGNED):
            times = [self._agreement_deadline]
            if not self._round2_over:
                times.append(self._round2_deadline)
            times.extend(c.since + self.timeouts.reveal for c in self._complaints.values() if c.open())
            return min(times)
        return None

    def signatures(self) -> dict[int, bytes]:
        """Valid agreement signatures we hold, by identifier (for peers who missed them)."""
        return dict(self._sigs)

    # -- inputs ---------------------------------------------------------------------

    def deliver(self, sender: bytes, kind: Kind, ident: Optional[int], payload: bytes, now: float) -> list[Action]:
        """A broadcast delivery for this session (tag already parsed)."""
        if sender not in self.params:
            return [Blame(sender, self.sid, f"{kind.name} broadcast from a non-member")]
        j = self.params.identifier(sender)
        if self.phase is Phase.NEW:
            raise ValueError("session not started")
        if self.finished:
            return []
        if self.phase is Phase.FAILED:
            # Signed but failed: only signatures can still matter.
            return self._on_agree(j, payload, now) if kind is Kind.AGREE else []
        if kind is Kind.ROUND1:
            return self._on_round1(j, payload, now)
        if kind is Kind.COMPLAINT:
            return self._on_complaint(j, ident, payload, now)
        if kind is Kind.REVEAL:
            return self._on_reveal(j, ident, payload, now)
        if kind is Kind.AGREE:
            return self._on_agree(j, payload, now)
        if kind is Kind.ABORT:
            return self._on_abort(j, payload, now)
        return []

    def receive_share(self, sender: bytes, share: int, now: float) -> list[Action]:
        """A point-to-point share from C{sender} (the authenticated link's member)."""
        if sender not in self.params:
            return [Blame(sender, self.sid, "share from a non-member")]
        j = self.params.identifier(sender)
        if j == self.me or j in self._received or self.phase in (Phase.NEW, Phase.FAILED, Phase.COMPLETED):
            return []
        self._received[j] = share
        if self.phase is Phase.ROUND2:
            return self._progress(now)
        return []

    def receive_signatures(self, responder: bytes, sigs: dict[int, bytes], now: float) -> list[Action]:
        """Agreement signatures a peer forwarded (after our restart)."""
        if self.pending is None:
            return []
        out: list[Action] = []
        for j, sig in sigs.items():
            if j in self._sigs or not 1 <= j <= self.params.n:
                continue
            if verify_host_signature(self.params.host_key(j), self.pending.agreement_hash, sig):
                self._sigs[j] = sig
            else:
                out.append(Blame(responder, self.sid, f"forwarded an invalid signature for member {j}"))
        return out + self._check_agreement(now)

    def offer_certificate(self, cert: Certificate, now: float) -> list[Action]:
        """
        A certificate for this session from a peer.

        @raise InvalidCertificate: it is for another transcript, or a signature fails.
        """
        if cert.params != self.params:
            raise InvalidCertificate(None, "certificate is for another session")
        if self.phase is Phase.COMPLETED:
            return []
        if self.pending is None:
            raise InvalidCertificate(None, "we never signed this session, so no certificate for it can be genuine")
        if cert.message != self.pending.agreement_hash:
            raise InvalidCertificate(None, "certificate is for a different transcript than the one we signed")
        cert.verify()
        self._sigs = {j: cert.signatures[j - 1] for j in self.params.identifiers()}
        return self._check_agreement(now)

    def tick(self, now: float) -> list[Action]:
        """Act on whichever deadlines have passed."""
        ph = self.phase
        if ph is Phase.ROUND1:
            if now >= self._round1_deadline:
                return self._end_round1(now)
            return []
        if ph not in (Phase.ROUND2, Phase.SIGNED):
            return []
        out: list[Action] = []
        for c in self._complaints.values():
            if c.open() and now >= c.since + self.timeouts.reveal:
                c.expired = True
        if not self._round2_over and now >= self._round2_deadline:
            self._round2_over = True
            out += self._complain_about_missing()
        out += self._settle(now)
        if self.phase in (Phase.ROUND2, Phase.SIGNED) and now >= self._agreement_deadline:
            ex = self._complaint_exclusions(now)
            for j in self.params.identifiers():
                h = self.params.host_key(j)
                if j in self._bad_sigs:
                    ex.setdefault(h, Reason.INVALID_AGREEMENT)
                elif j not in self._sigs and j != self.me:
                    ex.setdefault(h, Reason.SILENT_AGREEMENT)
            out += self._fail(ex)
        return out

    # -- round 1 ----------------------------------------------------------------------

    def _on_round1(self, j: int, payload: bytes, now: float) -> list[Action]:
        if j in self._packages or j in self._bad_round1:
            return []
        out: list[Action] = []
        try:
            pkg = Round1Package.decode(m.decode_round1(payload), self.params.threshold)
            verify_proof_of_knowledge(j, pkg, self.sid)
        except (ValueError, ProtocolError) as e:
            self._bad_round1[j] = str(e)
            out.append(Blame(self.params.host_key(j), self.sid, f"invalid round-1 package: {e}"))
        else:
            self._packages[j] = pkg
        if self.phase is Phase.ROUND1 and len(self._packages) + len(self._bad_round1) == self.params.n:
            out += self._end_round1(now)
        return out

    def _end_round1(self, now: float) -> list[Action]:
        p = self.params
        ex: dict[bytes, Reason] = {}
        for j in p.identifiers():
            if j in self._bad_round1:
                ex[p.host_key(j)] = Reason.INVALID_ROUND1
            elif j not in self._packages:
                ex[p.host_key(j)] = Reason.SILENT_ROUND1
        if ex:
            return self._fail(ex)
        return self._enter_round2(now)

    # -- round 2 ----------------------------------------------------------------------

    def _enter_round2(self, now: float) -> list[Action]:
        p = self.params
        secret = self._secret
        assert secret is not None
        self.phase = Phase.ROUND2
        out: list[Action] = []
        for j in p.identifiers():
            share = keygen_share(secret, j)
            if j == self.me:
                self._verified[j] = share
            else:
                self._sent[j] = share
                out.append(SendDirect(p.host_key(j), m.encode_direct(m.Share(self.sid, share))))
        secret.forget()
        self._secret = None
        self._round2_deadline = now + self.timeouts.round2
        self._agreement_deadline = self._round2_deadline + self.timeouts.reveal + self.timeouts.agreement
        # Complaints and reveals that arrived while we were still in round 1.
        for (a, b), c in self._complaints.items():
            c.since = max(c.since, now)
            if b == self.me:
                out += self._reveal_to(a)
        for (b, a) in list(self._reveals):
            self._judge_reveal(b, a)
        out += self._progress(now)
        return out

    def _usable(self, j: int) -> bool:
        return j in self._verified or (j in self._received and j not in self._bad_share)

    def _progress(self, now: float) -> list[Action]:
        """Finalize once we hold a usable share from everyone."""
        p = self.params
        if self.phase is not Phase.ROUND2 or not all(self._usable(j) for j in p.identifiers()):
            return []
        shares = {j: self._verified.get(j, self._received.get(j)) for j in p.identifiers()}
        try:
            kp = keygen_finalize(self.me, p.threshold, shares, self._packages, taproot_safe=True)
        except InvalidSecretShare:
            return self._check_each_share()
        self._verified.update(shares)  # type: ignore[arg-type]
        return self._sign(kp, now)

    def _check_each_share(self) -> list[Action]:
        out: list[Action] = []
        for j, share in sorted(self._received.items()):
            if j in self._verified or j in self._bad_share:
                continue
            try:
                verify_share(j, self.me, share, self._packages[j])
            except InvalidSecretShare as e:
                self._bad_share.add(j)
                out.append(Blame(self.params.host_key(j), self.sid, str(e)))
                out += self._complain(j, ComplaintReason.INVALID_SHARE)
            else:
                self._verified[j] = share
        return out

    def _complain_about_missing(self) -> list[Action]:
        out = self._check_each_share()
        for j in self.params.identifiers():
            if not self._usable(j) and j not in self._complained:
                out += self._complain(j, ComplaintReason.MISSING_SHARE)
        return out

    def _complain(self, j: int, reason: ComplaintReason) -> list[Action]:
        if j in self._complained:
            return []
        self._complained.add(j)
        return [Broadcast(m.tag(self.sid, Kind.COMPLAINT, j), m.encode_complaint(reason))]

    # -- complaints ---------------------------------------------------------------------

    def _on_complaint(self, a: int, b: Optional[int], payload: bytes, now: float) -> list[Action]:
        p = self.params
        try:
            m.decode_complaint(payload)
        except ValueError as e:
            return [Blame(p.host_key(a), self.sid, f"malformed complaint: {e}")]
        if b is None or not 1 <= b <= p.n or b == a:
            return [Blame(p.host_key(a), self.sid, f"complaint names no other member ({b})")]
        if (a, b) in self._complaints:
            return []
        c = self._complaints[(a, b)] = _Complaint(now)
        verdict = self._verdict(b, a)
        if verdict is not None:
            c.verdict = verdict
        out: list[Action] = []
        if b == self.me and self.phase is not Phase.ROUND1:
            out += self._reveal_to(a)
        return out + self._settle(now)

    def _reveal_to(self, a: int) -> list[Action]:
        share = self._sent.get(a)
        if share is None:
            return []  # restarted after signing: the shares we sent are gone
        return [Broadcast(m.tag(self.sid, Kind.REVEAL, a), m.encode_reveal(share))]

    def _on_reveal(self, b: int, a: Optional[int], payload: bytes, now: float) -> list[Action]:
        p = self.params
        if a is None or not 1 <= a <= p.n or a == b:
            return [Blame(p.host_key(b), self.sid, f"reveal names no other member ({a})")]
        if (b, a) in self._reveals:
            return []
        out: list[Action] = []
        try:
            self._reveals[(b, a)] = m.decode_reveal(payload)
        except ValueError as e:
            self._reveals[(b, a)] = -1
            out.append(Blame(p.host_key(b), self.sid, f"malformed reveal: {e}"))
        if self.phase is not Phase.ROUND1:
            if not self._judge_reveal(b, a):
                out.append(Blame(p.host_key(b), self.sid, f"revealed share for member {a} does not match its commitments"))
            out += self._progress(now)
        return out + self._settle(now)

    def _verdict(self, b: int, a: int) -> Optional[bool]:
        """True/False once (b's reveal for a) has been judged, else None."""
        return self._reveal_verdict.get((b, a))

    def _judge_reveal(self, b: int, a: int) -> bool:
        """Check b's revealed share for a against b's commitments (round 2 and later only)."""
        share = self._reveals[(b, a)]
        ok = False
        if share >= 0:
            try:
                verify_share(b, a, share, self._packages[b])
                ok = True
            except InvalidSecretShare:
                pass
        self._reveal_verdict[(b, a)] = ok
        if ok:
            if a == self.me and b not in self._verified:
                self._verified[b] = share
                self._bad_share.discard(b)
        else:
            self._invalid_reveal.add(b)
        c = self._complaints.get((a, b))
        if c is not None:
            c.verdict = ok
        return ok

    def _complaint_exclusions(self, now: float) -> dict[bytes, Reason]:
        p = self.params
        ex: dict[bytes, Reason] = {p.host_key(b): Reason.INVALID_REVEAL for b in sorted(self._invalid_reveal)}
        for (a, b), c in sorted(self._complaints.items()):
            if c.verdict is None and c.expired:
                ex.setdefault(p.host_key(b), Reason.NO_REVEAL)
        return ex

    def _settle(self, now: float) -> list[Action]:
        """Fail on complaint outcomes once nothing we know of is still open."""
        if self.phase not in (Phase.ROUND2, Phase.SIGNED) or not self._round2_over:
            return []
        if any(c.open() for c in self._complaints.values()):
            return []
        if any((self.me, b) not in self._complaints for b in self._complained):
            return []  # our own complaints are not back yet
        ex = self._complaint_exclusions(now)
        return self._fail(ex) if ex else []

    # -- agreement ----------------------------------------------------------------------

    def _sign(self, kp: KeyPackage, now: float) -> list[Action]:
        p = self.params
        comms = tuple(self._packages[j].commitments for j in p.identifiers())
        ch = commitments_hash(comms)
        ah = agreement_hash(p, kp.group_key, ch)
        sig = self.host.sign(ah)
        self.pending = PendingKey(p, kp, comms, ah, sig)
        self.phase = Phase.SIGNED
        self.signed = True
        self._sigs[self.me] = sig
        out: list[Action] = [PersistSigned(self.pending), Broadcast(m.tag(self.sid, Kind.AGREE), m.encode_agree(ah, sig))]
        early, self._early_sigs = self._early_sigs, {}
        for j, sig_j in sorted(early.items()):
            if not self._judge_sig(j, sig_j):
                out.append(Blame(p.host_key(j), self.sid, "agreement: invalid signature"))
        return out + self._check_agreement(now)

    def _on_agree(self, j: int, payload: bytes, now: float) -> list[Action]:
        if j in self._sigs or j in self._bad_sigs or j in self._early_sigs:
            return []
        try:
            their_hash, sig = m.decode_agree(payload)
        except ValueError as e:
            self._bad_sigs.add(j)
            return [Blame(self.params.host_key(j), self.sid, f"malformed agreement message: {e}")] + self._check_agreement(now)
        if self.pending is None:
            self._early_sigs[j] = sig
            return []
        out: list[Action] = []
        if not self._judge_sig(j, sig):
            why = "signed another transcript" if their_hash != self.pending.agreement_hash else "invalid signature"
            out.append(Blame(self.params.host_key(j), self.sid, f"agreement: {why}"))
        return out + self._check_agreement(now)

    def _judge_sig(self, j: int, sig: bytes) -> bool:
        assert self.pending is not None
        if verify_host_signature(self.params.host_key(j), self.pending.agreement_hash, sig):
            self._sigs[j] = sig
            return True
        self._bad_sigs.add(j)
        return False

    def _check_agreement(self, now: float) -> list[Action]:
        p = self.params
        if self.pending is None or self.phase is Phase.COMPLETED:
            return []
        if len(self._sigs) == p.n:
            self.certificate = Certificate(p, self.pending.key_package.group_key, self.pending.commitments_hash,
                                           [self._sigs[j] for j in p.identifiers()])
            self.phase = Phase.COMPLETED
            return [SessionCompleted(p, self.certificate, self.pending)]
        if self.phase is Phase.SIGNED and self._bad_sigs and len(self._sigs) + len(self._bad_sigs) == p.n:
            return self._fail({p.host_key(j): Reason.INVALID_AGREEMENT for j in sorted(self._bad_sigs)})
        return []

    # -- aborts and failure ---------------------------------------------------------------

    def _on_abort(self, j: int, payload: bytes, now: float) -> list[Action]:
        p = self.params
        try:
            restarted, claims = m.decode_abort(payload)
        except ValueError as e:
            return [Blame(p.host_key(j), self.sid, f"malformed abort: {e}")]
        if not restarted:
            return []  # its own view; we judge by ours, at our deadlines
        self._restarted_by = p.host_key(j)
        ex = {p.host_key(b): Reason.INVALID_ROUND1 for b in self._bad_round1}
        ex.update({p.host_key(b): Reason.INVALID_REVEAL for b in self._invalid_reveal})
        ex.update({p.host_key(b): Reason.INVALID_AGREEMENT for b in self._bad_sigs})
        return self._fail(ex)

    def _fail(self, exclusions: dict[bytes, Reason]) -> list[Action]:
        if self.phase in (Phase.FAILED, Phase.COMPLETED):
            return []
        self.phase = Phase.FAILED
        # We know we did our part; if our own messages did not come back in
        # time the broadcast is failing, and excluding ourselves would not help.
        exclusions = {h: r for h, r in exclusions.items() if h != self.host.public or r.is_evidence}
        self.exclusions = dict(exclusions)
        self._secret = None
        # SessionFailed first: the run's reaction to it (the next attempt's
        # SaveRun) must be durable before our abort leaves.  See SessionFailed.
        out: list[Action] = [SessionFailed(self.params, dict(exclusions), self.signed, self._restarted_by)]
        if not self.signed:
            self._sent.clear()
            p = self.params
            claims = {p.identifier(h): r for h, r in exclusions.items() if h in p}
            out.append(Broadcast(m.tag(self.sid, Kind.ABORT), m.encode_abort(False, claims)))
        return out


def restarted_abort(params: SessionParams) -> Broadcast:
    """The broadcast a member sends for a session whose state it lost: it will never sign it."""
    return Broadcast(m.tag(params.session_id, Kind.ABORT), m.encode_abort(True, {}))
