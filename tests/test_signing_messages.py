"""
Tests for L{frostnode.signing.messages}: one encoding per message, and
decoders that refuse anything else before allocating for it.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.signing import messages as m
from frostnode.wire import DecodeError

RID = b"r" * 16
ENTRY = m.SignerEntry(3, b"n" * 48, b"\x02" * 66)


def sign_request(**kw) -> m.SignRequest:
    fields = dict(request_id=RID, session=2, epoch=9, key=b"k" * 32, suite="bip445", scheme="record", request=b"req",
                  digest=b"d" * 32, aggnonce=b"a" * 66, signers=(m.SignerEntry(1, b"x" * 48, b"\x03" * 66), ENTRY))
    fields.update(kw)
    return m.SignRequest(**fields)


EXAMPLES = [
    m.NonceRequest(5, 64, True),
    m.NonceBatch(5, ((b"i" * 48, b"c" * 66), (b"j" * 48, b"e" * 66))),
    m.NonceBatch(5, ()),
    sign_request(),
    sign_request(suite="rfc9591", signers=()),
    m.SignShare(RID, 7, b"s" * 32),
    m.Verdict(RID, 0, m.AGREE, b"d" * 32, "", b"g" * 64),
    m.Verdict(RID, 1, m.VALIDATION_FAILED, b"", "overdraft: alice — 5 short", b"g" * 64),
    m.Verdict(RID, 1, m.KEY_MISMATCH, b"", "epoch 9 is key 0102 here", b"g" * 64),
]


class MessageTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for msg in EXAMPLES:
            self.assertEqual(m.decode(msg.encode()), msg)

    def test_trailing_and_truncated_bytes_are_refused(self) -> None:
        for msg in EXAMPLES:
            data = msg.encode()
            self.assertRaises(DecodeError, m.decode, data + b"\x00")
            for cut in (1, 2, len(data) // 2, len(data) - 1):
                self.assertRaises(DecodeError, m.decode, data[:cut])

    def test_unknown_version_type_suite_kind(self) -> None:
        data = bytearray(sign_request().encode())
        self.assertRaises(DecodeError, m.decode, b"\x02" + bytes(data[1:]))
        self.assertRaises(DecodeError, m.decode, b"\x01\x09" + bytes(data[2:]))
        data[2 + 16 + 4 + 8 + 32] = 7  # suite code
        self.assertRaises(DecodeError, m.decode, bytes(data))
        v = bytearray(EXAMPLES[-1].encode())
        v[2 + 16 + 4] = 9
        self.assertRaises(DecodeError, m.decode, bytes(v))

    def test_signer_entries_must_ascend(self) -> None:
        req = sign_request()
        self.assertRaises(ValueError, req._replace(signers=tuple(reversed(req.signers))).encode)
        data = req.encode()
        head = len(data) - 2 * 116
        swapped = data[:head] + data[head + 116:] + data[head:head + 116]
        self.assertRaises(DecodeError, m.decode, swapped)

    def test_counts_are_checked_before_allocation(self) -> None:
        huge = b"\x01" + bytes([m.T_NONCE_BATCH]) + struct.pack(">Q", 1) + struct.pack(">I", 1_000_000)
        with self.assertRaises(DecodeError) as cm:
            m.decode(huge)
        self.assertIn("exceeds the limit", str(cm.exception))
        lying = b"\x01" + bytes([m.T_NONCE_BATCH]) + struct.pack(">Q", 1) + struct.pack(">I", 1000)
        self.assertIn("truncated", str(self.assertRaises(DecodeError, m.decode, lying)))

    def test_a_key_is_32_bytes(self) -> None:
        self.assertRaises(ValueError, sign_request(key=b"k" * 33).encode)
        data = sign_request().encode()
        head = 2 + 16 + 4 + 8
        self.assertEqual(data[head:head + 32], b"k" * 32)
        self.assertRaises(DecodeError, m.decode, data[:head] + data[head + 1:])

    def test_verdict_digest_is_empty_or_32_bytes(self) -> None:
        bad = m.Verdict(RID, 0, m.AGREE, b"d" * 32, "", b"g" * 64).encode()
        bad = bad[:23] + struct.pack(">I", 5) + b"d" * 5 + bad[23 + 4 + 32:]
        self.assertRaises(DecodeError, m.decode, bad)

    def test_long_reasons_are_truncated_identically_for_signing(self) -> None:
        reason = "é" * 600
        v = m.Verdict(RID, 1, m.VIEWS_DIFFER, b"", m.truncate_reason(reason), b"g" * 64)
        self.assertLessEqual(len(v.reason.encode()), m.MAX_REASON)
        self.assertEqual(m.decode(v.encode()), v)
        self.assertEqual(m.verdict_message(b"c" * 32, b"x" * 32, RID, 1, m.VIEWS_DIFFER, b"", reason),
                         m.verdict_message(b"c" * 32, b"x" * 32, RID, 1, m.VIEWS_DIFFER, b"", v.reason))

    def test_request_commitment_covers_content_not_session(self) -> None:
        req = sign_request()
        self.assertEqual(req.request_commitment(), req._replace(session=9, signers=()).request_commitment())
        for change in (dict(request=b"other"), dict(digest=b"e" * 32), dict(scheme="ledger"), dict(epoch=10),
                       dict(suite="rfc9591"), dict(key=b"K" * 32)):
            self.assertNotEqual(req.request_commitment(), req._replace(**change).request_commitment())

    @settings(max_examples=40, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage_never_crashes_the_decoder(self, data: bytes) -> None:
        try:
            m.decode(b"\x01" + data)
        except DecodeError:
            pass

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(0, 1023), unique=True, max_size=20), st.binary(max_size=200),
           st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=64))
    def test_sign_request_round_trip(self, indices, request, scheme) -> None:
        entries = tuple(m.SignerEntry(i, bytes([i % 256]) * 48, b"\x02" * 66) for i in sorted(indices))
        req = sign_request(signers=entries, request=request, scheme=scheme)
        self.assertEqual(m.decode(req.encode()), req)
