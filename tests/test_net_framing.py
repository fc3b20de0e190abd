"""
Records in the decrypted stream: any chunking reassembles the same records,
large messages span Noise messages, bad headers are refused at the header,
and a record in tiny chunks costs memory in proportion to its size.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.net.errors import FramingError
from frostnode.net.framing import (
    ACK, DATA, MAX_ACK_IDS, PING, RESUME, RecordReader, decode_ack, decode_data, decode_resume,
    encode_ack, encode_data, encode_ping, encode_resume, split_plaintext,
)
from frostnode.net.noise import MAX_PLAINTEXT


def stream() -> bytes:
    return (encode_resume(5) + encode_data(5, 2, b"hello") + encode_ack(4, [9, 11])
            + encode_ping() + encode_data(6, 4, b"x" * 70000))


EXPECTED = [(RESUME, 5), (DATA, (5, 2, b"hello")), (ACK, (4, [9, 11])), (PING, b""), (DATA, (6, 4, b"x" * 70000))]


def decoded(records: list[tuple[int, bytes]]) -> list:
    out = []
    for typ, body in records:
        if typ == DATA:
            out.append((typ, decode_data(body)))
        elif typ == ACK:
            out.append((typ, decode_ack(body)))
        elif typ == RESUME:
            out.append((typ, decode_resume(body)))
        else:
            out.append((typ, body))
    return out


class RecordReaderTests(SynchronousTestCase):
    def test_one_byte_at_a_time(self) -> None:
        reader = RecordReader(100000)
        data = stream()
        records = []
        for i in range(len(data)):
            records += reader.feed(data[i:i + 1])
        self.assertEqual(decoded(records), EXPECTED)
        self.assertEqual(reader.buffered, 0)

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(1, 30000), min_size=1, max_size=20))
    def test_any_chunking(self, sizes: list[int]) -> None:
        reader = RecordReader(100000)
        data = stream()
        records, pos, i = [], 0, 0
        while pos < len(data):
            size = sizes[i % len(sizes)]
            records += reader.feed(data[pos:pos + size])
            pos += size
            i += 1
        self.assertEqual(decoded(records), EXPECTED)

    def test_large_message_spans_noise_messages(self) -> None:
        """A 1 MiB payload crosses 17 Noise-sized plaintexts and comes back whole."""
        payload = bytes(range(256)) * 4096
        chunks = split_plaintext(encode_data(1, 2, payload), MAX_PLAINTEXT)
        self.assertEqual(len(chunks), 17)
        self.assertTrue(all(len(c) <= MAX_PLAINTEXT for c in chunks))
        reader = RecordReader(len(payload))
        records = []
        for c in chunks:
            records += reader.feed(c)
        self.assertEqual(decoded(records), [(DATA, (1, 2, payload))])

    def test_tiny_chunks_cost_no_more_memory_than_the_record(self) -> None:
        """
        A peer sending 2-byte plaintexts: the partial record costs about its
        own size, not tens of bytes of object overhead per byte buffered.
        """
        payload = bytes(range(256)) * 4096                  # 1 MiB
        record = encode_data(1, 2, payload)
        reader = RecordReader(len(payload))
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        for i in range(0, len(record) - 1, 2):
            self.assertEqual(reader.feed(record[i:min(i + 2, len(record) - 1)]), [])
        buffering, _ = tracemalloc.get_traced_memory()
        self.assertEqual(reader.buffered, len(record) - 1)
        self.assertLess(buffering, 1.25 * len(record))
        records = reader.feed(record[-1:])
        _, peak = tracemalloc.get_traced_memory()
        self.assertEqual(decoded(records), [(DATA, (1, 2, payload))])
        self.assertEqual(reader.buffered, 0)
        self.assertLess(peak, 2.5 * len(record))             # the buffer, and the record copied out of it

    def test_oversized_record_refused_at_header(self) -> None:
        reader = RecordReader(1000)
        header = struct.pack(">BI", DATA, 2**31)
        with self.assertRaises(FramingError) as cm:
            reader.feed(header)
        self.assertIn("DATA record of 2147483648 bytes exceeds the limit of 1010", str(cm.exception))

    def test_message_at_the_limit_accepted(self) -> None:
        reader = RecordReader(1000)
        self.assertEqual(decoded(reader.feed(encode_data(1, 2, b"a" * 1000))), [(DATA, (1, 2, b"a" * 1000))])
        self.assertRaises(FramingError, RecordReader(999).feed, encode_data(1, 2, b"a" * 1000))

    def test_unknown_record_type(self) -> None:
        with self.assertRaises(FramingError) as cm:
            RecordReader(1000).feed(struct.pack(">BI", 99, 0))
        self.assertIn("unknown record type 99", str(cm.exception))

    def test_malformed_bodies(self) -> None:
        self.assertRaises(FramingError, decode_data, b"\x00" * 9)
        self.assertRaises(FramingError, decode_resume, b"\x00" * 9)
        # ACK whose count claims more ids than its body holds.
        self.assertRaises(FramingError, decode_ack, struct.pack(">QI", 1, 3) + b"\x00" * 16)
        self.assertRaises(FramingError, decode_ack, struct.pack(">QI", 1, 0) + b"\x00")
        # PING with a body is over its 0-byte limit.
        self.assertRaises(FramingError, RecordReader(10).feed, struct.pack(">BI", PING, 1) + b"\x00")

    def test_long_ack_lists_split(self) -> None:
        ids = list(range(2, 2 + MAX_ACK_IDS + 10))
        reader = RecordReader(10)
        records = reader.feed(encode_ack(1, ids))
        self.assertEqual(len(records), 2)
        got = [i for _, body in records for i in decode_ack(body)[1]]
        self.assertEqual(got, ids)
