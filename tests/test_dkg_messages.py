# -*- test-case-name: tests.test_dkg_messages -*-
"""
DKG session ids, agreement hashes, certificates and message encodings.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.group import G, N, scalar_to_bytes
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.dkg import messages as m
from frostnode.dkg.messages import ComplaintReason, Kind, Reason
from frostnode.dkg.run import EarlyBuffer, RunState
from frostnode.dkg.driver import DkgResult
from frostnode.dkg.session import PendingKey, PersistSigned, SendDirect, SessionCompleted
from frostnode.dkg.transcript import (
    Certificate,
    InvalidCertificate,
    SessionParams,
    agreement_hash,
    commitments_hash,
)
from tests.test_dkg_session import Federation, hosts


class SessionParamsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hosts = hosts(5)
        self.keys = [h.public for h in self.hosts]

    def test_id_independent_of_member_order(self) -> None:
        a = SessionParams(3, 0, 4, self.keys)
        b = SessionParams(3, 0, 4, list(reversed(self.keys)))
        self.assertEqual(a.session_id, b.session_id)
        self.assertEqual(a.members, tuple(sorted(self.keys)))

    def test_id_binds_every_parameter(self) -> None:
        base = SessionParams(3, 0, 4, self.keys)
        others = [
            SessionParams(4, 0, 4, self.keys),
            SessionParams(3, 1, 4, self.keys),
            SessionParams(3, 0, 3, self.keys),
            SessionParams(3, 0, 4, self.keys[:4]),
        ]
        ids = {base.session_id} | {o.session_id for o in others}
        self.assertEqual(len(ids), 5)

    def test_identifiers_follow_sorted_position(self) -> None:
        p = SessionParams(1, 0, 3, self.keys)
        for i, h in enumerate(sorted(self.keys)):
            self.assertEqual(p.identifier(h), i + 1)
            self.assertEqual(p.host_key(i + 1), h)
        r = p.restart([sorted(self.keys)[0]])
        self.assertEqual(r.attempt, 1)
        self.assertEqual(r.identifier(sorted(self.keys)[1]), 1)

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, SessionParams, 1, 0, 6, self.keys)
        self.assertRaises(ValueError, SessionParams, 1, 0, 0, self.keys)
        self.assertRaises(ValueError, SessionParams, 1, 0, 2, self.keys + self.keys[:1])
        self.assertRaises(ValueError, SessionParams, 1, 0, 1, self.keys[:1])
        self.assertRaises(ValueError, SessionParams(1, 0, 5, self.keys).restart, self.keys[:1])

    def test_immutable(self) -> None:
        p = SessionParams(1, 0, 3, self.keys)
        self.assertRaises(AttributeError, setattr, p, "epoch", 2)


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hosts = hosts(4)
        self.params = SessionParams(7, 2, 3, [h.public for h in self.hosts])
        self.key, _ = trusted_dealer_keygen(3, 4)
        self.ch = commitments_hash([[G * (i + k + 1) for k in range(3)] for i in range(4)])
        msg = agreement_hash(self.params, self.key, self.ch)
        self.cert = Certificate(self.params, self.key, self.ch, [h.sign(msg) for h in self.hosts])

    def test_roundtrip_and_verify(self) -> None:
        data = self.cert.encode()
        self.assertEqual(len(data), 1 + 16 + 32 * 4 + 33 + 32 + 64 * 4)
        c = Certificate.decode(data)
        self.assertEqual(c, self.cert)
        c.verify()

    def test_bad_signature_names_member(self) -> None:
        sigs = list(self.cert.signatures)
        sigs[2] = self.hosts[3].sign(self.cert.message)
        bad = Certificate(self.params, self.key, self.ch, sigs)
        e = self.assertRaises(InvalidCertificate, bad.verify)
        self.assertEqual(e.culprit, self.params.members[2])

    def test_other_transcript_fails(self) -> None:
        other = Certificate(self.params, self.key, bytes(32), self.cert.signatures)
        self.assertRaises(InvalidCertificate, other.verify)

    def test_strict_decoding(self) -> None:
        data = self.cert.encode()
        self.assertRaises(ValueError, Certificate.decode, data + b"\x00")
        self.assertRaises(ValueError, Certificate.decode, data[:-1])
        self.assertRaises(ValueError, Certificate.decode, b"\x02" + data[1:])
        # Members out of order.
        ms = bytearray(data)
        ms[17:49], ms[49:81] = data[49:81], data[17:49]
        self.assertRaises(ValueError, Certificate.decode, bytes(ms))


class MessageTests(SynchronousTestCase):
    sid = bytes(range(32))

    def test_tags(self) -> None:
        for kind, ident in [(Kind.ROUND1, None), (Kind.AGREE, None), (Kind.ABORT, None),
                            (Kind.COMPLAINT, 7), (Kind.REVEAL, 65535)]:
            self.assertEqual(m.parse_tag(m.tag(self.sid, kind, ident)), (self.sid, kind, ident))
        self.assertRaises(ValueError, m.tag, self.sid, Kind.COMPLAINT)
        self.assertRaises(ValueError, m.tag, self.sid, Kind.ROUND1, 3)
        self.assertRaises(ValueError, m.parse_tag, b"dkg" + self.sid + b"\x09")
        self.assertRaises(ValueError, m.parse_tag, m.tag(self.sid, Kind.ROUND1) + b"\x00")
        self.assertRaises(ValueError, m.parse_tag, b"xyz" + self.sid + b"\x01")

    def test_broadcast_payloads(self) -> None:
        self.assertEqual(m.decode_complaint(m.encode_complaint(ComplaintReason.MISSING_SHARE)), ComplaintReason.MISSING_SHARE)
        self.assertEqual(m.decode_reveal(m.encode_reveal(12345)), 12345)
        self.assertEqual(m.decode_agree(m.encode_agree(b"h" * 32, b"s" * 64)), (b"h" * 32, b"s" * 64))
        ex = {3: Reason.NO_REVEAL, 1: Reason.INVALID_ROUND1}
        self.assertEqual(m.decode_abort(m.encode_abort(True, ex)), (True, ex))
        self.assertEqual(m.decode_round1(m.encode_round1(b"pkg")), b"pkg")

    def test_broadcast_payloads_strict(self) -> None:
        bad = [
            (m.decode_complaint, b"\x01\x03"),
            (m.decode_complaint, b"\x01\x01\x00"),
            (m.decode_complaint, b"\x02\x01"),
            (m.decode_reveal, b"\x01" + N.to_bytes(32, "big")),
            (m.decode_reveal, b"\x01" + bytes(31)),
            (m.decode_agree, b"\x01" + bytes(95)),
            (m.decode_abort, b"\x01\x02" + bytes(4)),
            (m.decode_abort, b"\x01\x00\x00\x00\x00\x01\x00\x01\x63"),
            (m.decode_abort, b"\x01\x00\xff\xff\xff\xff"),
            (m.decode_round1, b""),
        ]
        for fn, data in bad:
            self.assertRaises(ValueError, fn, data)

    def test_direct(self) -> None:
        msgs = [
            m.Share(self.sid, 99),
            m.StatusRequest(2**40, m.NO_SESSION),
            m.Signatures(self.sid, {1: b"a" * 64, 9: b"b" * 64}),
        ]
        for msg in msgs:
            self.assertEqual(m.decode_direct(m.encode_direct(msg)), msg)
            data = m.encode_direct(msg)
            self.assertRaises(ValueError, m.decode_direct, data + b"\x00")
            self.assertRaises(ValueError, m.decode_direct, data[:-1])
        self.assertRaises(ValueError, m.decode_direct, b"\x01\x09")
        self.assertRaises(ValueError, m.decode_direct, b"")
        dup = m.encode_direct(m.Signatures(self.sid, {1: b"a" * 64}))[:-66]
        dup = dup[:-4] + (2).to_bytes(4, "big") + (1).to_bytes(2, "big") + b"a" * 64 + (1).to_bytes(2, "big") + b"a" * 64
        self.assertRaises(ValueError, m.decode_direct, dup)

    def test_reason_kinds(self) -> None:
        self.assertEqual({r for r in Reason if r.is_evidence},
                         {Reason.INVALID_ROUND1, Reason.INVALID_REVEAL, Reason.INVALID_AGREEMENT})


class StateEncodingTests(SynchronousTestCase):
    def test_run_state(self) -> None:
        ks = [h.public for h in hosts(4)]
        st = RunState(5, 3, tuple(ks), 2, {ks[0]: Reason.SILENT_ROUND1}, {ks[1]: 1})
        self.assertEqual(RunState.decode(st.encode()), st)
        self.assertRaises(ValueError, RunState.decode, st.encode() + b"\x00")
        self.assertRaises(ValueError, RunState.decode, st.encode()[:-1])

    def test_pending_key(self) -> None:
        hs = hosts(3)
        params = SessionParams(1, 0, 2, [h.public for h in hs])
        key, kps = trusted_dealer_keygen(2, 3)
        comms = tuple(tuple(G * (i + k + 1) for k in range(2)) for i in range(3))
        ah = agreement_hash(params, key, commitments_hash(comms))
        pk = PendingKey(params, kps[2], comms, ah, hs[1].sign(ah))
        back = PendingKey.decode(pk.encode())
        self.assertEqual(back.encode(), pk.encode())
        self.assertEqual(back.key_package, kps[2])
        self.assertNotIn(str(kps[2].secret_share), repr(back))
        tampered = bytearray(pk.encode())
        tampered[-100] ^= 1  # inside the commitments: the agreement hash no longer matches
        self.assertRaises(ValueError, PendingKey.decode, bytes(tampered))


class EarlyBufferTests(SynchronousTestCase):
    def test_bounded_per_sender(self) -> None:
        b = EarlyBuffer(per_sender=3)
        for i in range(5):
            b.add(b"s1", b"alice", ("x", i))
        b.add(b"s2", b"bob", ("y", 0))
        self.assertEqual(len(b), 4)
        self.assertEqual([item for _, item in b.take(b"s1")], [("x", 2), ("x", 3), ("x", 4)])
        self.assertEqual(b.take(b"s1"), [])
        self.assertEqual(b.take(b"s2"), [(b"bob", ("y", 0))])


class SecretReprTests(SynchronousTestCase):
    """
    Nothing that holds a secret share contribution or a key share prints it:
    reprs end up in logs, tracebacks and test-failure messages.
    """

    def assertHidden(self, obj: object, secrets: set[int]) -> None:
        text = f"{obj!r} {obj!s}"
        for k in secrets:
            for form in (str(k), f"{k:x}", f"{k:064x}", repr(scalar_to_bytes(k))[2:-1]):
                self.assertNotIn(form, text, f"{type(obj).__name__} shows a secret")

    def test_share_message(self) -> None:
        share = 0x5EC2E7 * 10**60 % N
        msg = m.Share(bytes(range(32)), share)
        for obj in (msg, m.decode_direct(m.encode_direct(msg)), SendDirect(b"p" * 32, m.encode_direct(msg))):
            self.assertHidden(obj, {share})
        self.assertIn("Share(session_id=", repr(msg))

    def test_every_dkg_object_along_a_run(self) -> None:
        """Mid-session (shares sent and received) and after: sessions, runs, actions, outcomes, results."""
        fed = Federation(4, seed=16)
        fed.start()
        fed.pump_only(lambda item: item[0] == "b")   # round 1 everywhere: shares in flight
        first = fed.members[0]
        fed.pump_only(lambda item: item[0] == "d" and item[1] == first)
        shares = {m.decode_direct(a.payload).share for acts in fed.actions.values() for a in acts
                  if isinstance(a, SendDirect) and isinstance(m.decode_direct(a.payload), m.Share)}
        self.assertEqual(len(shares), 4 * 3)
        early = EarlyBuffer()
        early.add(bytes(32), first, ("share", min(shares)))
        mid = [early] + [o for run in fed.runs.values() for o in (run, run.current)]
        mid += [a for acts in fed.actions.values() for a in acts]
        self.assertTrue(any(isinstance(a, PersistSigned) for a in mid))
        for obj in mid:
            self.assertHidden(obj, shares)
        fed.settle()
        outcomes = [fed.completed(h) for h in fed.members]
        keys = {o.pending.key_package.secret_share for o in outcomes}
        results = [DkgResult(1, True, {}, o.certificate, o.pending.key_package) for o in outcomes]
        after = [a for acts in fed.actions.values() for a in acts] + outcomes + results
        self.assertTrue(any(isinstance(a, SessionCompleted) for a in after))
        for obj in after:
            self.assertHidden(obj, shares | keys)
