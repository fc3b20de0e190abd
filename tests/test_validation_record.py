"""
The record scheme: one canonical request per set of ids, a message every
member holding the records computes alike, and MissingData until they hold
them all.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.hashes import tagged_hash
from frostnode.store.db import Database
from frostnode.store.log import DataLog, Envelope, RecordBody
from frostnode.validation.interface import DataLogView, MissingData, Rejection
from frostnode.validation.record import RecordRequest, decode_request, encode_request, request_from_json
from frostnode.validation.registry import load_scheme
from frostnode.wire import DecodeError

A, B = b"\xa1" * 32, b"\xb2" * 32
CLIENT = b"\x11" * 32


def body(i: int, topic: str = "docs") -> RecordBody:
    return RecordBody(CLIENT, topic, b"document %d" % i, timestamp=i)


class RequestTests(SynchronousTestCase):
    def test_layout(self) -> None:
        r1, r2 = b"\x02" * 32, b"\x01" * 32
        req = encode_request([r1, r2], topic="docs")
        self.assertEqual(req, b"\x01" + b"\x00\x00\x00\x04docs" + b"\x00\x00\x00\x02" + r2 + r1)
        self.assertEqual(decode_request(req), RecordRequest((r2, r1), "docs"))
        self.assertEqual(decode_request(encode_request([r1])), RecordRequest((r1,), None))
        self.assertEqual(request_from_json({"records": [r1.hex(), r2.hex()], "topic": "docs"}), req)

    def test_encode_refuses(self) -> None:
        for args in (([],), ([b"\x01" * 31],), ([b"\x01" * 32, b"\x01" * 32],), ([b"\x01" * 32], ""),
                     ([b"\x01" * 32], "x" * 256), ([b"\x01" * 32] * 2000,)):
            with self.subTest(args=args):
                self.assertRaises(ValueError, encode_request, *args)

    def test_decode_accepts_only_the_canonical_form(self) -> None:
        r1, r2 = b"\x01" * 32, b"\x02" * 32
        good = encode_request([r1, r2])
        head = good[:9]
        for what, bad in {
            "unsorted": head + r2 + r1,
            "repeated": head + r1 + r1,
            "trailing": good + b"\x00",
            "truncated": good[:-1],
            "empty": good[:5] + b"\x00\x00\x00\x00",
            "version": b"\x02" + good[1:],
            "count over limit": good[:5] + b"\x00\x01\x00\x00" + r1,
            "topic not utf-8": b"\x01\x00\x00\x00\x01\xff" + good[5:],
        }.items():
            with self.subTest(what):
                self.assertRaises(DecodeError, decode_request, bad)

    def test_bad_json(self) -> None:
        for obj in ("ab", {}, {"records": "ab"}, {"records": ["zz"]}, {"records": [], "x": 1}):
            with self.subTest(obj=obj):
                self.assertRaises(ValueError, request_from_json, obj)


class RecordSchemeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.scheme = load_scheme("record")

    def open_view(self, local: bytes) -> tuple[DataLog, DataLogView]:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        log = DataLog(db, local)
        return log, DataLogView(log)

    def test_message_is_the_tagged_request_on_every_member_that_holds_the_records(self) -> None:
        log_a, view_a = self.open_view(A)
        log_b, view_b = self.open_view(B)
        bodies = [body(i) for i in range(3)]
        for b in bodies:  # member A received them from clients, in this order
            log_a.append_local_sync(b, 1.0)
        for seq, b in enumerate(reversed(bodies), 1):  # member B got them through another origin
            log_b.insert_remote_sync(Envelope(B, seq, 2.0, b))
        req = encode_request([b.record_id for b in bodies], topic="docs")
        message = self.scheme.message(req, view_a)
        self.assertEqual(message, tagged_hash("frostnode/validation/record", req))
        self.assertEqual(self.scheme.message(req, view_b), message)

    def test_missing_records_are_named_until_they_arrive(self) -> None:
        log, view = self.open_view(A)
        held, missing1, missing2 = body(1), body(2), body(3)
        log.append_local_sync(held, 1.0)
        req = encode_request([held.record_id, missing1.record_id, missing2.record_id])
        e = self.assertRaises(MissingData, self.scheme.message, req, view)
        self.assertEqual(e.record_ids, tuple(sorted([missing1.record_id, missing2.record_id])))
        self.assertEqual(e.cut, {})
        log.insert_remote_sync(Envelope(B, 1, 5.0, missing1))
        log.insert_remote_sync(Envelope(B, 2, 5.0, missing2))
        self.assertEqual(len(self.scheme.message(req, view)), 32)

    def test_wrong_topic_and_malformed_request(self) -> None:
        log, view = self.open_view(A)
        b = body(1, topic="images")
        log.append_local_sync(b, 1.0)
        e = self.assertRaises(Rejection, self.scheme.message, encode_request([b.record_id], topic="docs"), view)
        self.assertEqual(e.code, "wrong-topic")
        self.assertIn("'images'", e.reason)
        e = self.assertRaises(Rejection, self.scheme.message, b"\x01garbage", view)
        self.assertEqual(e.code, "malformed-request")
