# -*- test-case-name: tests.test_dkg_session -*-
"""
The pure DKG (session and run state machines) over an in-test federation.

L{Federation} plays reliable broadcast (every payload to every member,
itself included) and point-to-point links, delivering pending messages in a
random order and advancing a fake clock to the next deadline when nothing
is in flight.  Faults are rewrites of a member's outgoing actions, so the
machines under test run unmodified.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Optional

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto import bip445
from frostnode.crypto.bip340 import schnorr_verify, taproot_output_key
from frostnode.crypto.group import N, scalar_to_bytes
from frostnode.crypto.keygen import KeyPackage
from frostnode.dkg import messages as m
from frostnode.dkg.messages import Kind, Reason
from frostnode.dkg.run import AlsoCertified, DkgRun, EarlyBuffer, RunCompleted, RunConfig, RunFailed, RunState, SaveRun
from frostnode.dkg.session import (
    Blame,
    Broadcast,
    DkgSession,
    PendingKey,
    PersistSigned,
    SendDirect,
    SessionCompleted,
    SessionFailed,
    Timeouts,
)
from frostnode.dkg.transcript import Certificate, SessionParams
from frostnode.identity import HostKeypair

FAST = Timeouts(round1=10.0, round2=10.0, reveal=5.0, agreement=10.0)

Rewrite = Callable[[object], list]


def hosts(n: int, seed: int = 1) -> list[HostKeypair]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = rng.getrandbits(256)
        if 0 < k < N:
            out.append(HostKeypair(scalar_to_bytes(k)))
    return sorted(out, key=lambda h: h.public)


def threshold(n: int) -> int:
    return -(-2 * n // 3)


class Federation:
    """
    n members, each a L{DkgRun}, wired by a fake broadcast and fake links.

    @ivar rewrite: per member, a function over its outgoing actions (faults).
    @ivar down: members that neither send nor receive (crashed).
    @ivar persisted: per member, the pending keys it wrote (in order).
    @ivar outcomes: per member, the run outcomes it reported.
    """

    def __init__(self, n: int, seed: int = 1, timeouts: Timeouts = FAST, epoch: int = 1,
                 config: Optional[RunConfig] = None) -> None:
        self.hosts = hosts(n, seed)
        self.members = tuple(h.public for h in self.hosts)
        self.by_key = {h.public: h for h in self.hosts}
        self.t = threshold(n)
        self.epoch = epoch
        self.config = config or RunConfig(timeouts)
        self.rng = random.Random(seed)
        self.now = 0.0
        self.runs: dict[bytes, DkgRun] = {}
        self.queue: list[tuple] = []
        self.rewrite: dict[bytes, Rewrite] = {}
        self.down: set[bytes] = set()
        self.persisted: dict[bytes, list[PendingKey]] = {h: [] for h in self.members}
        self.saved: dict[bytes, RunState] = {}
        self.outcomes: dict[bytes, list] = {h: [] for h in self.members}
        self.actions: dict[bytes, list] = {h: [] for h in self.members}
        self.delivered = 0

    def start(self, who: Optional[Iterable[bytes]] = None) -> None:
        for h in (self.members if who is None else who):
            run = DkgRun(self.by_key[h], self.epoch, self.t, self.members, self.config)
            self.runs[h] = run
            self.apply(h, run.start(self.now))

    def apply(self, h: bytes, actions: list) -> None:
        rw = self.rewrite.get(h)
        for a in actions:
            self.actions[h].append(a)
            outs = [a] if rw is None else rw(a)
            for a2 in outs:
                self._do(h, a2)

    def _do(self, h: bytes, a) -> None:
        if isinstance(a, Broadcast):
            if h in self.down:
                return
            for r in self.members:
                self.queue.append(("b", r, h, a.tag, a.payload))
        elif isinstance(a, SendDirect):
            if h in self.down:
                return
            self.queue.append(("d", a.peer, h, a.payload))
        elif isinstance(a, PersistSigned):
            self.persisted[h].append(a.pending)
        elif isinstance(a, SaveRun):
            self.saved[h] = a.state
        elif isinstance(a, (RunCompleted, RunFailed, AlsoCertified)):
            self.outcomes[h].append(a)

    def pump(self) -> None:
        """Deliver everything in flight, in random order."""
        while self.queue:
            self._deliver(self.queue.pop(self.rng.randrange(len(self.queue))))

    def pump_only(self, pred: Callable[[tuple], bool]) -> None:
        """Deliver only what C{pred} selects, until nothing selected is in flight."""
        while True:
            picks = [i for i, item in enumerate(self.queue) if pred(item)]
            if not picks:
                return
            self._deliver(self.queue.pop(picks[self.rng.randrange(len(picks))]))

    def _deliver(self, item: tuple) -> None:
        to = item[1]
        if to in self.down or to not in self.runs:
            return
        self.delivered += 1
        run = self.runs[to]
        if item[0] == "b":
            self.apply(to, run.deliver(item[2], item[3], item[4], self.now))
        else:
            self.apply(to, run.receive_direct(item[2], m.decode_direct(item[3]), self.now))

    def settle(self, limit: float = 1000.0) -> None:
        """Pump, then jump to the next deadline, until nothing is left to do."""
        for _ in range(10000):
            self.pump()
            ds = [r.deadline for h, r in self.runs.items() if h not in self.down and r.deadline is not None]
            if not ds or min(ds) > limit:
                return
            self.now = max(self.now, min(ds))
            for h, r in self.runs.items():
                if h not in self.down:
                    self.apply(h, r.tick(self.now))
        raise AssertionError(f"no progress at time {self.now}")

    def completed(self, h: bytes) -> Optional[RunCompleted]:
        for o in self.outcomes[h]:
            if isinstance(o, RunCompleted):
                return o
        return None

    def failed(self, h: bytes) -> Optional[RunFailed]:
        for o in self.outcomes[h]:
            if isinstance(o, RunFailed):
                return o
        return None


def bip445_sign(kps: list[KeyPackage], msg: bytes) -> tuple[bytes, bytes]:
    """Sign C{msg} with the given key packages (BIP 445, Taproot output key); (sig, output key)."""
    kp0 = kps[0]
    n = len(kp0.verification_shares)
    ids = [kp.identifier - 1 for kp in kps]
    pubshares = [kp.verification_shares[kp.identifier].encode() for kp in kps]
    thresh_pk = kp0.group_key.encode()
    signers = bip445.SignersContext(n, kp0.threshold, ids, pubshares, thresh_pk)
    out_key = taproot_output_key(kp0.group_key.xbytes())[0]
    nonces = [bip445.nonce_gen(scalar_to_bytes(kp.secret_share), ps, out_key, msg, None) for kp, ps in zip(kps, pubshares)]
    aggnonce = bip445.nonce_agg([pn for _, pn in nonces])
    ctx = bip445.taproot_session_ctx(signers, aggnonce, msg)
    psigs = [bip445.sign(sn, scalar_to_bytes(kp.secret_share), kp.identifier - 1, ctx) for (sn, _), kp in zip(nonces, kps)]
    return bip445.partial_sig_agg(psigs, ctx), out_key


def drop(kind: Kind, cls=Broadcast) -> Rewrite:
    """A rewrite dropping this member's broadcasts of one kind."""
    def rw(a):
        if isinstance(a, cls) and m.parse_tag(a.tag)[1] is kind:
            return []
        return [a]
    return rw


def bad_share_to(victim: bytes, also: Optional[Rewrite] = None) -> Rewrite:
    """Send C{victim} a wrong share (the issue-577 attack); everyone else gets good ones."""
    def rw(a):
        if isinstance(a, SendDirect) and a.peer == victim:
            msg = m.decode_direct(a.payload)
            return [SendDirect(a.peer, m.encode_direct(m.Share(msg.session_id, (msg.share + 1) % N)))]
        return [a] if also is None else also(a)
    return rw


class DkgChecks:
    def check_success(self, fed: Federation, members: Optional[list[bytes]] = None) -> Certificate:
        members = list(fed.members) if members is None else members
        certs = set()
        keys = set()
        kps = []
        for h in members:
            c = fed.completed(h)
            self.assertIsNotNone(c, f"member {h.hex()[:8]} did not complete: {fed.outcomes[h]}")
            certs.add(c.certificate.encode())
            keys.add(c.certificate.group_key)
            self.assertIsNotNone(c.pending)
            self.assertEqual(c.pending.key_package.group_key, c.certificate.group_key)
            kps.append(c.pending.key_package)
            c.certificate.verify()
        self.assertEqual(len(certs), 1)
        self.assertEqual(len(keys), 1)
        cert = Certificate.decode(certs.pop())
        # Any t of them can sign under the Taproot output key.
        t = cert.params.threshold
        rng = random.Random(7)
        for _ in range(2):
            signers = sorted(rng.sample(kps, t), key=lambda kp: kp.identifier)
            sig, out_key = bip445_sign(signers, b"any t of them")
            self.assertTrue(schnorr_verify(b"any t of them", out_key, sig))
        return cert


class AllHonestTests(DkgChecks, SynchronousTestCase):
    def test_n4(self) -> None:
        fed = Federation(4)
        fed.start()
        fed.settle()
        cert = self.check_success(fed)
        self.assertEqual(cert.params.attempt, 0)
        self.assertEqual(cert.params.threshold, 3)
        # Every member persisted its key before its signature left.
        for h in fed.members:
            acts = fed.actions[h]
            persist = next(i for i, a in enumerate(acts) if isinstance(a, PersistSigned))
            agree = next(i for i, a in enumerate(acts) if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.AGREE)
            self.assertLess(persist, agree)

    def test_n7_any_order(self) -> None:
        for seed in (2, 3):
            fed = Federation(7, seed=seed)
            fed.start()
            fed.settle()
            self.check_success(fed)

    def test_fewer_than_t_remaining_fails_the_run(self) -> None:
        fed = Federation(4)
        fed.down.update(fed.members[:2])
        fed.start()
        fed.settle()
        for h in fed.members[2:]:
            f = fed.failed(h)
            self.assertIsNotNone(f)
            self.assertEqual(f.exclusions, {fed.members[0]: Reason.SILENT_ROUND1, fed.members[1]: Reason.SILENT_ROUND1})
            self.assertIn("fewer than t", f.reason)
            self.assertIsNone(fed.completed(h))


class Issue577Tests(DkgChecks, SynchronousTestCase):
    """One member sends a bad share to exactly one honest member."""

    def attack(self, also: Optional[Rewrite], seed: int = 5) -> tuple[Federation, bytes, bytes]:
        fed = Federation(7, seed=seed)
        culprit, victim = fed.members[2], fed.members[5]
        fed.rewrite[culprit] = bad_share_to(victim, also)
        fed.start()
        fed.settle()
        return fed, culprit, victim

    def test_no_reveal_excludes_culprit(self) -> None:
        fed, culprit, victim = self.attack(drop(Kind.REVEAL))
        honest = [h for h in fed.members if h != culprit]
        cert = self.check_success(fed, honest)
        self.assertEqual(cert.params.attempt, 1)
        self.assertNotIn(culprit, cert.params.members)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.NO_REVEAL})
        # The victim never signed the first session; nobody accepted its key.
        first = fed.runs[victim].params_for(0).session_id
        self.assertNotIn(first, [p.params.session_id for p in fed.persisted[victim]])

    def test_bad_reveal_excludes_culprit(self) -> None:
        def bad_reveal(a):
            if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.REVEAL:
                share = m.decode_reveal(a.payload)
                return [Broadcast(a.tag, m.encode_reveal((share + 1) % N))]
            return [a]
        fed, culprit, victim = self.attack(bad_reveal)
        honest = [h for h in fed.members if h != culprit]
        cert = self.check_success(fed, honest)
        self.assertNotIn(culprit, cert.params.members)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.INVALID_REVEAL})
            blamed = {b.culprit for b in fed.actions[h] if isinstance(b, Blame)}
            self.assertIn(culprit, blamed)

    def test_good_reveal_dismisses_complaint(self) -> None:
        fed, culprit, victim = self.attack(None)
        cert = self.check_success(fed)  # everyone, the culprit too, on the first attempt
        self.assertEqual(cert.params.attempt, 0)
        for h in fed.members:
            self.assertEqual(fed.completed(h).exclusions, {})
        complaints = [a for a in fed.actions[victim]
                      if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.COMPLAINT]
        self.assertEqual([m.parse_tag(a.tag)[2] for a in complaints], [fed.runs[victim].params_for(0).identifier(culprit)])

    def test_never_only_some_honest_accept(self) -> None:
        """Whatever the culprit does with reveals and timing, honest members agree."""
        for seed in range(3):
            for also in (None, drop(Kind.REVEAL), drop(Kind.AGREE)):
                fed, culprit, victim = self.attack(also, seed=seed)
                honest = [h for h in fed.members if h != culprit]
                keys = {fed.completed(h).certificate.group_key if fed.completed(h) else None for h in honest}
                self.assertEqual(len(keys), 1, f"seed {seed}: honest members disagree: {keys}")
                self.assertNotIn(None, keys)


class ExclusionTests(DkgChecks, SynchronousTestCase):
    def test_bad_proof_of_knowledge(self) -> None:
        fed = Federation(7, seed=9)
        culprit = fed.members[0]

        def bad_pok(a):
            if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.ROUND1:
                body = bytearray(a.payload)
                body[-1] ^= 1  # mu
                return [Broadcast(a.tag, bytes(body))]
            return [a]
        fed.rewrite[culprit] = bad_pok
        fed.start()
        fed.settle()
        honest = list(fed.members[1:])
        cert = self.check_success(fed, honest)
        self.assertEqual(cert.params.attempt, 1)
        self.assertEqual(cert.params.n, 6)
        self.assertEqual(cert.params.threshold, 5)  # t is the run's, not recomputed
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.INVALID_ROUND1})
        # Caught without waiting for any deadline.
        self.assertEqual(fed.now, 0.0)

    def test_malformed_round1(self) -> None:
        fed = Federation(4, seed=3)
        culprit = fed.members[3]
        fed.rewrite[culprit] = lambda a: ([Broadcast(a.tag, a.payload[:-1])]
                                          if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.ROUND1 else [a])
        fed.start()
        fed.settle()
        # 3 remain, t = 3: still enough.
        self.check_success(fed, list(fed.members[:3]))

    def test_silent_member(self) -> None:
        fed = Federation(7, seed=4)
        silent = fed.members[4]
        fed.down.add(silent)
        fed.start()
        fed.settle()
        honest = [h for h in fed.members if h != silent]
        cert = self.check_success(fed, honest)
        self.assertNotIn(silent, cert.params.members)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {silent: Reason.SILENT_ROUND1})
        self.assertEqual(fed.now, FAST.round1)

    def test_silent_in_round2(self) -> None:
        """Broadcasts its package, then sends no shares and reveals nothing."""
        fed = Federation(7, seed=6)
        culprit = fed.members[1]
        fed.rewrite[culprit] = lambda a: [] if isinstance(a, SendDirect) or (
            isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is not Kind.ROUND1) else [a]
        fed.start()
        fed.settle()
        honest = [h for h in fed.members if h != culprit]
        self.check_success(fed, honest)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.NO_REVEAL})

    def test_silent_in_agreement(self) -> None:
        fed = Federation(4, seed=8)
        culprit = fed.members[2]
        fed.rewrite[culprit] = drop(Kind.AGREE)
        fed.start()
        fed.settle()
        honest = [h for h in fed.members if h != culprit]
        cert = self.check_success(fed, honest)
        self.assertEqual(cert.params.attempt, 1)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.SILENT_AGREEMENT})
            # They signed attempt 0 too and kept that key, in case it is certified late.
            self.assertEqual([p.params.attempt for p in fed.persisted[h]], [0, 1])

    def test_late_signature_certifies_old_session_too(self) -> None:
        fed, culprit, held = late_agreement_signature()
        honest = [h for h in fed.members if h != culprit]
        self.check_success(fed, honest)
        fed.rewrite.pop(culprit)
        fed.apply(culprit, held)
        fed.settle()
        for h in honest:
            also = [o for o in fed.outcomes[h] if isinstance(o, AlsoCertified)]
            self.assertEqual(len(also), 1)
            self.assertEqual(also[0].certificate.params.attempt, 0)
            self.assertIsNotNone(also[0].pending)  # they hold a share of that key as well

    def test_invalid_agreement_signature(self) -> None:
        fed = Federation(4, seed=10)
        culprit = fed.members[1]

        def garble(a):
            if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.AGREE:
                h, sig = m.decode_agree(a.payload)
                return [Broadcast(a.tag, m.encode_agree(h, bytes(64)))]
            return [a]
        fed.rewrite[culprit] = garble
        fed.start()
        fed.settle()
        honest = [h for h in fed.members if h != culprit]
        self.check_success(fed, honest)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {culprit: Reason.INVALID_AGREEMENT})

    def test_duplicates_ignored(self) -> None:
        fed = Federation(4, seed=11)
        dup = fed.members[0]
        fed.rewrite[dup] = lambda a: [a, a] if isinstance(a, SendDirect) else [a]
        fed.start()
        fed.settle()
        self.check_success(fed)


class RecoveryTests(DkgChecks, SynchronousTestCase):
    """A member drops its run object and rebuilds it from what it persisted."""

    def crash_and_recover(self, fed: Federation, h: bytes) -> list:
        run = DkgRun.recover(fed.by_key[h], fed.saved[h], {p.params.session_id: p for p in fed.persisted[h]},
                             fed.now, fed.config)
        fed.runs[h], acts = run
        fed.apply(h, acts)
        return acts

    def test_crash_before_signing_restarts_with_same_members(self) -> None:
        fed = Federation(4, seed=12)
        victim = fed.members[1]
        fed.start()
        # Round 1 completes everywhere; shares are in flight when the victim
        # crashes and loses its polynomial.
        fed.pump_only(lambda item: item[0] == "b")
        self.assertTrue(all(r.current.phase.value == "round2" for r in fed.runs.values()))
        self.assertEqual(fed.persisted[victim], [])
        self.crash_and_recover(fed, victim)
        fed.settle()
        cert = self.check_success(fed)
        self.assertEqual(cert.params.attempt, 1)
        self.assertEqual(cert.params.n, 4)
        for h in fed.members:
            self.assertEqual(fed.runs[h].restarts, {victim: 1})
        self.assertEqual(fed.now, 0.0)  # no timeout was needed

    def test_next_attempt_is_stored_before_the_abort_leaves(self) -> None:
        """
        A session we did not sign fails: the run's state for what comes next
        (the next attempt, or the failed run) is out before our abort, so a
        crash between them never leaves a stored run inside a session we
        already aborted.
        """
        for down, after in ((1, SaveRun), (2, RunFailed)):
            fed = Federation(4, seed=15)
            fed.down.update(fed.members[:down])
            fed.start()
            fed.settle()
            abort0 = m.tag(SessionParams(fed.epoch, 0, fed.t, fed.members).session_id, Kind.ABORT)
            for h in fed.members[down:]:
                acts = fed.actions[h]
                abort = next(i for i, a in enumerate(acts) if isinstance(a, Broadcast) and a.tag == abort0)
                nxt = next(i for i, a in enumerate(acts)
                           if isinstance(a, after) and (after is RunFailed or a.state.attempt == 1))
                self.assertLess(nxt, abort, f"{after.__name__} after the abort")
                if after is SaveRun:
                    self.assertEqual(acts[nxt].state.excluded, {fed.members[0]: Reason.SILENT_ROUND1})

    def test_repeated_restarts_exclude_the_member(self) -> None:
        fed = Federation(7, seed=14, config=RunConfig(FAST, max_restarts=1))
        victim = fed.members[0]
        fed.start()
        for _ in range(2):
            fed.pump_only(lambda item: item[0] == "b" and m.parse_tag(item[3])[1] is Kind.ROUND1)
            self.crash_and_recover(fed, victim)
        fed.settle()
        honest = list(fed.members[1:])
        cert = self.check_success(fed, honest)
        self.assertNotIn(victim, cert.params.members)
        for h in honest:
            self.assertEqual(fed.completed(h).exclusions, {victim: Reason.REPEATED_RESTARTS})
        self.assertIn("excluded", fed.failed(victim).reason)

    def test_crash_after_signing_completes_from_a_certificate(self) -> None:
        fed = Federation(4, seed=13)
        victim = fed.members[3]
        fed.start()
        fed.settle()
        self.check_success(fed)
        # The victim crashes after persisting and signing but before seeing the certificate.
        fed.outcomes[victim].clear()
        self.crash_and_recover(fed, victim)
        fed.pump()  # its re-sent signature is a duplicate for everyone
        cert = fed.completed(fed.members[0]).certificate
        fed.apply(victim, fed.runs[victim].offer_certificate(cert, fed.now))
        c = fed.completed(victim)
        self.assertEqual(c.certificate, cert)
        self.assertEqual(c.pending.key_package, fed.persisted[victim][0].key_package)


class PropertyTests(DkgChecks, SynchronousTestCase):
    """Any delivery order, any one faulty member: honest members end with one key, or none."""

    def test_random_orders_and_faults(self) -> None:
        from hypothesis import given, settings, strategies as st

        faults = {
            "none": lambda fed, c, v: None,
            "silent": lambda fed, c, v: fed.down.add(c),
            "bad share, no reveal": lambda fed, c, v: fed.rewrite.__setitem__(c, bad_share_to(v, drop(Kind.REVEAL))),
            "bad share, good reveal": lambda fed, c, v: fed.rewrite.__setitem__(c, bad_share_to(v)),
            "no agreement": lambda fed, c, v: fed.rewrite.__setitem__(c, drop(Kind.AGREE)),
            "no shares": lambda fed, c, v: fed.rewrite.__setitem__(
                c, lambda a: [] if isinstance(a, SendDirect) else [a]),
        }

        @settings(max_examples=20, deadline=None, derandomize=True)
        @given(n=st.sampled_from([4, 5, 7]), seed=st.integers(0, 10**6), fault=st.sampled_from(sorted(faults)),
               who=st.integers(0, 6), victim=st.integers(0, 6))
        def check(n: int, seed: int, fault: str, who: int, victim: int) -> None:
            fed = Federation(n, seed=seed)
            culprit, target = fed.members[who % n], fed.members[victim % n]
            if target == culprit:
                target = fed.members[(victim + 1) % n]
            faults[fault](fed, culprit, target)
            fed.start()
            fed.settle()
            honest = [h for h in fed.members if h != culprit or fault == "none"]
            outcomes = {fed.completed(h).certificate.encode() if fed.completed(h) else None for h in honest}
            self.assertEqual(len(outcomes), 1, f"{fault}: honest members disagree")
            # One fault among n >= 4 with t = ceil(2n/3) always leaves enough members.
            self.assertNotIn(None, outcomes, f"{fault}: no key")
            cert = Certificate.decode(outcomes.pop())
            if fault in ("silent", "bad share, no reveal", "no agreement"):
                self.assertNotIn(culprit, cert.params.members)
            elif fault == "no shares":
                # Its shares reach everyone as reveals: nothing to exclude it for.
                self.assertIn(culprit, cert.params.members)
        check()


def late_agreement_signature(seed: int = 8) -> tuple["Federation", bytes, list]:
    """
    4 members; member 2 holds back its first agreement signature, so the
    others exclude it as silent and certify attempt 1 without it.  Returns
    (federation, culprit, [the held-back broadcast]), settled.
    """
    fed = Federation(4, seed=seed)
    culprit = fed.members[2]
    held: list = []

    def hold(a):
        if isinstance(a, Broadcast) and m.parse_tag(a.tag)[1] is Kind.AGREE and not held:
            held.append(a)
            return []
        return [a]
    fed.rewrite[culprit] = hold
    fed.start()
    fed.settle()
    return fed, culprit, held
