"""
The sync layer's bytes and checks, without a reactor or a store: batch and
catch-up message encodings (strict: limits before allocation, no trailing
bytes), the origin's batch signature, which pages a server may serve and
which a requester accepts.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.identity import HostKeypair
from frostnode.store.codec import micros
from frostnode.store.log import Envelope, LogLimits, RecordBody
from frostnode.sync.errors import BadPage
from frostnode.sync.messages import (
    PROOF_SIZE,
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
    encode_page,
    encode_request,
    encode_summary,
    servable_prefix,
    verify_batch,
    verify_page,
)
from frostnode.wire import DecodeError

ORIGIN = HostKeypair.generate()
OTHER = HostKeypair.generate()
PEER = b"\x99" * 32
LIMITS = LogLimits()
LIMITS_KW = dict(max_origins=16, max_page_records=100, max_envelope=1 << 20)


def body(i: int, size: int = 32) -> RecordBody:
    return RecordBody(b"\x11" * 32, "topic", (b"%d" % i).ljust(size, b"-"), timestamp=i)


def signed_batch(first: int, n: int, key: HostKeypair = ORIGIN, at: float = 1000.0) -> tuple[list[tuple[int, RecordBody]], bytes]:
    entries = [(micros(at + i / 1000), body(first + i)) for i in range(n)]
    sig = key.sign(batch_statement(ORIGIN.public, first, [(b.record_id, us) for us, b in entries]))
    return entries, sig


def envelopes(first: int, n: int, key: HostKeypair = ORIGIN) -> list[Envelope]:
    """Slots first..first+n-1 of ORIGIN, as one signed batch."""
    entries, sig = signed_batch(first, n, key)
    proof = Proof(first, n, sig).encode()
    return [Envelope(ORIGIN.public, first + i, us / 1e6, b, proof) for i, (us, b) in enumerate(entries)]


class BatchTests(SynchronousTestCase):
    def test_round_trip_and_signature(self) -> None:
        entries, sig = signed_batch(7, 5)
        batch = decode_batch(encode_batch(7, sig, entries), LIMITS, 100)
        self.assertEqual((batch.first_seq, batch.last_seq, batch.signature), (7, 11, sig))
        self.assertEqual([b for _, b in batch.entries], [b for _, b in entries])
        self.assertIsNone(verify_batch(ORIGIN.public, b"sync/7-11", batch))
        self.assertEqual(batch_tag(7, 11), b"sync/7-11")

    def test_wrong_tag_signer_or_time_is_refused(self) -> None:
        entries, sig = signed_batch(7, 5)
        batch = decode_batch(encode_batch(7, sig, entries), LIMITS, 100)
        self.assertIn("tag", verify_batch(ORIGIN.public, b"sync/7-12", batch))
        # signed by another member than the one who broadcast it
        self.assertIn("signature", verify_batch(OTHER.public, b"sync/7-11", batch))
        # the same records claimed for other slots
        moved = decode_batch(encode_batch(8, sig, entries), LIMITS, 100)
        self.assertIn("signature", verify_batch(ORIGIN.public, b"sync/8-12", moved))
        # receive times are signed too: every node must agree on them (retention)
        retimed = [(us + 1, b) for us, b in entries]
        batch = decode_batch(encode_batch(7, sig, retimed), LIMITS, 100)
        self.assertIn("signature", verify_batch(ORIGIN.public, b"sync/7-11", batch))

    def test_malformed_batches(self) -> None:
        entries, sig = signed_batch(1, 3)
        good = encode_batch(1, sig, entries)
        for data, what in [
            (good + b"\x00", "trailing"),
            (good[:-1], "truncated"),
            (b"\x02" + good[1:], "version"),
            (good[:73] + (0).to_bytes(4, "big"), "no records"),
            (good[:1] + bytes(8) + good[9:], "impossible seq range"),
            (good[:73] + (1000).to_bytes(4, "big") + good[77:], "count"),
        ]:
            with self.assertRaises(DecodeError, msg=what) as cm:
                decode_batch(data, LIMITS, 100)
            self.assertTrue(str(cm.exception))
        # a count over the caller's limit fails on the count, before any body is read
        with self.assertRaises(DecodeError) as cm:
            decode_batch(good, LIMITS, 2)
        self.assertIn("limit of 2", str(cm.exception))

    def test_body_limits_apply_inside_a_batch(self) -> None:
        entries, sig = signed_batch(1, 1)
        big = [(entries[0][0], body(1, size=5000))]
        with self.assertRaises(DecodeError):
            decode_batch(encode_batch(1, sig, big), LogLimits(max_payload=4096), 100)


class ProofTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        p = Proof(5, 10, b"s" * 64)
        self.assertEqual(len(p.encode()), PROOF_SIZE)
        self.assertEqual(decode_proof(p.encode()), p)
        self.assertEqual(p.last_seq, 14)

    def test_malformed(self) -> None:
        good = Proof(5, 10, b"s" * 64).encode()
        for data in (good[:-1], good + b"x", b"\x02" + good[1:], Proof(0, 1, b"s" * 64).encode(),
                     Proof(5, 0, b"s" * 64).encode(), Proof(2 ** 64 - 1, 2, b"s" * 64).encode()):
            self.assertRaises(DecodeError, decode_proof, data)


class MessageTests(SynchronousTestCase):
    def test_round_trips(self) -> None:
        summary = encode_summary(12, b"d" * 32, [(b"a" * 32, 3, 5), (b"b" * 32, 0, 0)], 16)
        self.assertEqual(decode_message(summary, **LIMITS_KW),
                         Summary(12, b"d" * 32, {b"a" * 32: (3, 5), b"b" * 32: (0, 0)}))
        self.assertEqual(decode_message(encode_request(b"a" * 32, 9, 100), **LIMITS_KW), Request(b"a" * 32, 9, 100))
        encs = [e.encode() for e in envelopes(1, 3)]
        page = encode_page(ORIGIN.public, 1, 3, encs, 100)
        self.assertEqual(decode_message(page, **LIMITS_KW), Page(ORIGIN.public, 1, 3, encs))

    def test_strict_decoding(self) -> None:
        summary = encode_summary(1, b"d" * 32, [(b"a" * 32, 3, 5)], 16)
        request = encode_request(b"a" * 32, 9, 100)
        page = encode_page(ORIGIN.public, 1, 3, [e.encode() for e in envelopes(1, 3)], 100)
        bad = [
            summary + b"\x00",
            summary[:-1],
            request[:1] + b"\x09" + request[2:],                        # unknown kind
            b"\x02" + request[1:],                                      # unknown version
            encode_request(b"a" * 32, 0, 100),                          # seq 0 does not exist
            encode_request(b"a" * 32, 1, 0),                            # empty page asked
            encode_summary(1, b"d" * 32, [(b"a" * 32, 6, 5)], 16),      # have above max_seq
            encode_summary(1, b"d" * 32, [(b"a" * 32, 1, 1)] * 2, 16),  # origin twice
            page[:-5],
            b"",
        ]
        for data in bad:
            self.assertRaises(DecodeError, decode_message, data, **LIMITS_KW)

    def test_counts_are_checked_before_reading(self) -> None:
        """A summary claiming 2^32-1 origins or a page claiming more than the limit fails at the count."""
        summary = encode_summary(1, b"d" * 32, [], 16)
        huge = summary[:-4] + b"\xff\xff\xff\xff"
        with self.assertRaises(DecodeError) as cm:
            decode_message(huge, **LIMITS_KW)
        self.assertIn("count", str(cm.exception))
        page = encode_page(ORIGIN.public, 1, 3, [e.encode() for e in envelopes(1, 3)], 100)
        with self.assertRaises(DecodeError):
            decode_message(page, max_origins=16, max_page_records=2, max_envelope=1 << 20)
        with self.assertRaises(DecodeError):
            decode_message(page, max_origins=16, max_page_records=100, max_envelope=100)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_bytes_never_crash_the_decoder(self, data: bytes) -> None:
        try:
            decode_message(data, **LIMITS_KW)
        except DecodeError:
            pass


class PageTests(SynchronousTestCase):
    def test_a_genuine_page_verifies(self) -> None:
        verify_page(PEER, ORIGIN.public, envelopes(1, 4) + envelopes(5, 3), max_proofs=4)

    def check_rejected(self, envs: list[Envelope], reason: str, origin: bytes = ORIGIN.public) -> None:
        with self.assertRaises(BadPage) as cm:
            verify_page(PEER, origin, envs, max_proofs=4)
        self.assertEqual(cm.exception.culprit, PEER)
        self.assertIn(reason, cm.exception.message)

    def test_altered_record(self) -> None:
        envs = envelopes(1, 4)
        envs[2] = replace(envs[2], body=body(999))
        self.check_rejected(envs, "does not verify")

    def test_forged_by_another_key(self) -> None:
        self.check_rejected(envelopes(1, 4, key=OTHER), "does not verify")

    def test_altered_receive_time(self) -> None:
        envs = envelopes(1, 4)
        envs[0] = replace(envs[0], received_at=envs[0].received_at + 1)
        self.check_rejected(envs, "does not verify")

    def test_wrong_origin(self) -> None:
        self.check_rejected(envelopes(1, 4), "holds a record of", origin=OTHER.public)

    def test_gaps_and_partial_batches(self) -> None:
        envs = envelopes(1, 4)
        self.check_rejected(envs[:2] + envs[3:], "not contiguous")
        self.check_rejected(envs[:3], "not wholly in the page")
        self.check_rejected(envs[1:], "not wholly in the page")

    def test_missing_or_garbage_proof(self) -> None:
        envs = envelopes(1, 2)
        self.check_rejected([replace(envs[0], proof=b"")] + envs[1:], "proof is 0 bytes")

    def test_proofs_per_page_are_capped(self) -> None:
        envs = [e for first in range(1, 11) for e in envelopes(first, 1)]
        self.check_rejected(envs, "more than 4 batches")

    def test_servable_prefix_keeps_whole_batches(self) -> None:
        a, b = envelopes(1, 4), envelopes(5, 3)
        size = len(a[0].encode()) + 4
        self.assertEqual(servable_prefix(a + b, 10 ** 6), [e.encode() for e in a + b])
        # a byte budget that ends inside the second batch drops that batch whole
        self.assertEqual(servable_prefix(a + b, size * 5), [e.encode() for e in a])
        # the first batch is always served, even over the budget
        self.assertEqual(servable_prefix(a + b, 10), [e.encode() for e in a])
        # a page cut by the record limit inside a batch stops at the last whole batch
        self.assertEqual(servable_prefix(a + b[:2], 10 ** 6), [e.encode() for e in a])
        # starting inside a batch serves nothing: the caller must start at its head
        self.assertEqual(servable_prefix(a[1:], 10 ** 6), [])
        # a slot without a proof (not signed yet) ends the page
        self.assertEqual(servable_prefix(a + [replace(b[0], proof=b"")] + b[1:], 10 ** 6), [e.encode() for e in a])
        # what it serves, a requester accepts
        verify_page(PEER, ORIGIN.public, [Envelope.decode(x) for x in servable_prefix(a + b, size * 5)], 4)
