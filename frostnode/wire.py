# -*- test-case-name: tests.test_wire -*-
"""
The one wire codec for every frostnode message on every port.

Why a small struct-based format and not CBOR, msgpack or protobuf:

  - B{One encoding per value.}  Integers are fixed-width big-endian, byte
    strings carry a u32 length, nothing is optional or reorderable.  Bracha
    echoes and DKG transcripts compare I{digests of encodings}; a format that
    admits several encodings of one value (CBOR's non-minimal integers, maps
    in any key order, msgpack's int widths) would need a canonicaliser and a
    check that the peer used it.
  - B{Limits before allocation.}  Every length and count read from the wire
    is checked against a limit I{the caller} passes, and against the bytes
    actually left, before anything is sliced or a loop runs.  Generic decoders
    (cbor2, msgpack) build whole object trees first and have at best global
    limits; a peer's 4 GiB length prefix must fail at the prefix.
  - B{No schema compiler, no dependency}: messages are few and small, each
    has one owner module that writes its encoder and decoder side by side
    with L{Writer} and L{Reader}.
  - B{Speed}: fixed-width fields are one C{struct} call; the hot paths
    (echoes, link records) stay a few microseconds per message.

Conventions every message owner follows:

  - A message starts with its format version (L{Writer.u8}, checked with
    L{Reader.version}); a decoder rejects versions it does not know rather
    than guessing.
  - A decoder ends with L{Reader.finish}: trailing bytes are an error, so
    two different byte strings never decode to the same message.
  - L{DecodeError} (a C{ValueError}) means "these bytes are not a valid
    message"; the caller decides who is to blame (the link layer closes the
    link of the member that sent them).  Encoding a value that does not fit
    (a negative int, bytes over the caller's own limit) is the I{caller's}
    bug and raises a plain C{ValueError}.
"""

from __future__ import annotations

import struct
from typing import Iterable

__all__ = [
    "DecodeError", "Writer", "Reader", "encode_u64_list", "decode_u64_list",
    "MAX_U8", "MAX_U16", "MAX_U32", "MAX_U64",
]

MAX_U8 = 0xFF
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class DecodeError(ValueError):
    """Bytes from outside that are not a valid message: truncated, over a limit, trailing data."""


def _check_uint(value: int, maximum: int, kind: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{kind} out of range: {value!r}")
    return value


class Writer:
    """
    Appends fields to a buffer; L{to_bytes} returns the message.

    Methods return C{self} so short messages read as one expression::

        Writer().u8(1).u64(epoch).to_bytes()
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, value: int) -> "Writer":
        self._buf += _U8.pack(_check_uint(value, MAX_U8, "u8"))
        return self

    def u16(self, value: int) -> "Writer":
        self._buf += _U16.pack(_check_uint(value, MAX_U16, "u16"))
        return self

    def u32(self, value: int) -> "Writer":
        self._buf += _U32.pack(_check_uint(value, MAX_U32, "u32"))
        return self

    def u64(self, value: int) -> "Writer":
        self._buf += _U64.pack(_check_uint(value, MAX_U64, "u64"))
        return self

    def flag(self, value: bool) -> "Writer":
        """A boolean as one byte, 0 or 1."""
        self._buf += b"\x01" if value else b"\x00"
        return self

    def fixed(self, data: bytes, size: int) -> "Writer":
        """Exactly C{size} bytes, no prefix (keys, digests, signatures)."""
        if len(data) != size:
            raise ValueError(f"fixed field needs {size} bytes, got {len(data)}")
        self._buf += data
        return self

    def var_bytes(self, data: bytes, max_len: int) -> "Writer":
        """A u32 length, then C{data}; C{max_len} is the limit the decoder will apply."""
        if len(data) > max_len:
            raise ValueError(f"{len(data)} bytes over the field limit of {max_len}")
        self._buf += _U32.pack(len(data))
        self._buf += data
        return self

    def count(self, n: int, max_count: int) -> "Writer":
        """A u32 item count for a list that follows; C{max_count} as the decoder's."""
        if not 0 <= n <= max_count:
            raise ValueError(f"count {n} over the limit of {max_count}")
        self._buf += _U32.pack(n)
        return self

    def raw(self, data: bytes) -> "Writer":
        """Bytes already encoded by another message's encoder (a nested message, a trailer)."""
        self._buf += data
        return self

    def __len__(self) -> int:
        return len(self._buf)

    def to_bytes(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """
    Reads fields from one message, checking every length against the bytes
    left and the caller's limits before slicing.

    @param data: the whole message.
    @param what: names the message in errors ("handshake payload", "echo").
    """

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str = "message") -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int, field: str) -> bytes:
        left = len(self._data) - self._pos
        if n > left:
            raise DecodeError(
                f"truncated {self._what}: {field} needs {n} bytes at offset {self._pos}, {left} left"
            )
        start = self._pos
        self._pos = start + n
        return self._data[start:self._pos]

    def _unpack(self, s: struct.Struct, field: str) -> int:
        left = len(self._data) - self._pos
        if s.size > left:
            raise DecodeError(
                f"truncated {self._what}: {field} needs {s.size} bytes at offset {self._pos}, {left} left"
            )
        (value,) = s.unpack_from(self._data, self._pos)
        self._pos += s.size
        return value

    def u8(self) -> int:
        return self._unpack(_U8, "u8")

    def u16(self) -> int:
        return self._unpack(_U16, "u16")

    def u32(self) -> int:
        return self._unpack(_U32, "u32")

    def u64(self) -> int:
        return self._unpack(_U64, "u64")

    def flag(self) -> bool:
        value = self._unpack(_U8, "flag")
        if value > 1:
            raise DecodeError(f"{self._what}: flag byte must be 0 or 1, got {value}")
        return value == 1

    def version(self, *supported: int) -> int:
        """Read the leading version byte; refuse any version not in C{supported}."""
        value = self._unpack(_U8, "version")
        if value not in supported:
            raise DecodeError(f"{self._what}: unsupported version {value} (supported: {sorted(supported)})")
        return value

    def fixed(self, size: int) -> bytes:
        return self._take(size, f"{size}-byte field")

    def var_bytes(self, max_len: int) -> bytes:
        """A u32-length-prefixed byte string of at most C{max_len} bytes."""
        n = self._unpack(_U32, "length")
        if n > max_len:
            raise DecodeError(f"{self._what}: length {n} exceeds the limit of {max_len}")
        return self._take(n, "byte string")

    def count(self, max_count: int, min_item_size: int = 1) -> int:
        """
        A u32 item count of at most C{max_count}.  With C{min_item_size} > 0,
        also refuse counts the remaining bytes cannot possibly hold, so a
        caller's loop never starts on a count the message cannot back.
        """
        n = self._unpack(_U32, "count")
        if n > max_count:
            raise DecodeError(f"{self._what}: count {n} exceeds the limit of {max_count}")
        if min_item_size > 0 and n * min_item_size > self.remaining:
            raise DecodeError(
                f"truncated {self._what}: count {n} needs at least {n * min_item_size} bytes, {self.remaining} left"
            )
        return n

    def rest(self, max_len: int) -> bytes:
        """Everything left (a trailing payload delimited by the enclosing frame)."""
        if self.remaining > max_len:
            raise DecodeError(f"{self._what}: trailing payload of {self.remaining} bytes exceeds the limit of {max_len}")
        return self._take(self.remaining, "payload")

    def finish(self) -> None:
        """Refuse trailing bytes: one message, one encoding."""
        if self._pos != len(self._data):
            raise DecodeError(f"{self._what}: {len(self._data) - self._pos} trailing bytes at offset {self._pos}")


def encode_u64_list(ids: Iterable[int]) -> bytes:
    """Pack a sequence of u64 values back to back (the body of a counted list)."""
    ids = list(ids)
    return struct.pack(f">{len(ids)}Q", *ids)


def decode_u64_list(reader: Reader, n: int) -> list[int]:
    """Read C{n} u64 values that a L{Reader.count} announced (already limit-checked)."""
    raw = reader.fixed(8 * n)
    return list(struct.unpack(f">{n}Q", raw))
