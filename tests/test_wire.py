"""
The wire codec: round trips, one encoding per value, and every malformed
input refused with a DecodeError that says what and where.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.wire import DecodeError, Reader, Writer, decode_u64_list, encode_u64_list


class RoundTripTests(SynchronousTestCase):
    def test_fields_round_trip(self) -> None:
        data = (
            Writer().u8(1).u16(0xBEEF).u32(7).u64(2**64 - 1).flag(True).fixed(b"k" * 32, 32)
            .var_bytes(b"payload", 16).count(2, 4).raw(encode_u64_list([5, 9])).to_bytes()
        )
        r = Reader(data, "test message")
        self.assertEqual(r.version(1), 1)
        self.assertEqual(r.u16(), 0xBEEF)
        self.assertEqual(r.u32(), 7)
        self.assertEqual(r.u64(), 2**64 - 1)
        self.assertIs(r.flag(), True)
        self.assertEqual(r.fixed(32), b"k" * 32)
        self.assertEqual(r.var_bytes(16), b"payload")
        n = r.count(4, min_item_size=8)
        self.assertEqual(decode_u64_list(r, n), [5, 9])
        r.finish()

    def test_big_endian_fixed_width(self) -> None:
        """One encoding per value: the digest of an encoding is well defined."""
        self.assertEqual(Writer().u16(1).u32(2).u64(3).to_bytes(),
                         b"\x00\x01" + b"\x00\x00\x00\x02" + b"\x00" * 7 + b"\x03")
        self.assertEqual(Writer().var_bytes(b"ab", 2).to_bytes(), b"\x00\x00\x00\x02ab")

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 2**64 - 1), st.binary(max_size=64), st.lists(st.integers(0, 2**64 - 1), max_size=8))
    def test_round_trip_property(self, n: int, blob: bytes, ids: list[int]) -> None:
        data = Writer().u64(n).var_bytes(blob, 64).count(len(ids), 8).raw(encode_u64_list(ids)).to_bytes()
        r = Reader(data)
        self.assertEqual(r.u64(), n)
        self.assertEqual(r.var_bytes(64), blob)
        self.assertEqual(decode_u64_list(r, r.count(8, 8)), ids)
        r.finish()


class EncoderPreconditionTests(SynchronousTestCase):
    """Encoding what does not fit is the caller's bug: plain ValueError, not DecodeError."""

    def test_out_of_range_ints(self) -> None:
        for method, value in [("u8", 256), ("u16", -1), ("u32", 2**32), ("u64", 2**64), ("u8", True)]:
            with self.assertRaises(ValueError) as cm:
                getattr(Writer(), method)(value)
            self.assertNotIsInstance(cm.exception, DecodeError)

    def test_lengths_over_own_limits(self) -> None:
        self.assertRaises(ValueError, Writer().fixed, b"abc", 4)
        self.assertRaises(ValueError, Writer().var_bytes, b"x" * 5, 4)
        self.assertRaises(ValueError, Writer().count, 5, 4)


class StrictDecodingTests(SynchronousTestCase):
    def assertDecodeError(self, fn, *fragments: str) -> None:
        with self.assertRaises(DecodeError) as cm:
            fn()
        for f in fragments:
            self.assertIn(f, str(cm.exception))

    def test_truncated(self) -> None:
        self.assertDecodeError(lambda: Reader(b"\x00\x01", "echo").u32(), "truncated echo", "u32 needs 4 bytes", "2 left")
        self.assertDecodeError(lambda: Reader(b"ab", "echo").fixed(32), "truncated echo", "32-byte field")

    def test_trailing_bytes(self) -> None:
        r = Reader(b"\x01\x02", "hello")
        r.u8()
        self.assertDecodeError(r.finish, "hello", "1 trailing bytes at offset 1")

    def test_length_over_limit_refused_before_reading(self) -> None:
        """A 4 GiB length prefix fails at the prefix, whatever follows."""
        data = b"\xff\xff\xff\xff" + b"x" * 10
        self.assertDecodeError(lambda: Reader(data, "share").var_bytes(1024), "share", "length 4294967295 exceeds the limit of 1024")

    def test_length_beyond_data(self) -> None:
        self.assertDecodeError(lambda: Reader(b"\x00\x00\x00\x05ab").var_bytes(10), "truncated", "needs 5 bytes")

    def test_count_over_limit_or_unbacked(self) -> None:
        self.assertDecodeError(lambda: Reader(b"\x00\x00\x01\x00").count(16), "count 256 exceeds the limit of 16")
        # Within the limit but the message cannot hold that many 8-byte items.
        self.assertDecodeError(lambda: Reader(b"\x00\x00\x00\x03" + b"\x00" * 16).count(16, min_item_size=8),
                               "count 3 needs at least 24 bytes, 16 left")

    def test_version_and_flag(self) -> None:
        self.assertDecodeError(lambda: Reader(b"\x02", "hello").version(1), "hello: unsupported version 2")
        self.assertDecodeError(lambda: Reader(b"\x02").flag(), "flag byte must be 0 or 1")

    def test_rest_limit(self) -> None:
        self.assertEqual(Reader(b"abc").rest(3), b"abc")
        self.assertDecodeError(lambda: Reader(b"abcd").rest(3), "trailing payload of 4 bytes exceeds the limit of 3")

    def test_decode_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(DecodeError, ValueError))

    @settings(max_examples=80, deadline=None)
    @given(st.binary(max_size=40))
    def test_garbage_only_raises_decode_error(self, data: bytes) -> None:
        r = Reader(data)
        try:
            r.version(1)
            r.u64()
            r.var_bytes(16)
            decode_u64_list(r, r.count(4, 8))
            r.finish()
        except DecodeError:
            pass
