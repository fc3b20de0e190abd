# -*- test-case-name: tests.test_net_framing -*-
"""
Records inside a link's encrypted byte stream.  Pure: no I/O.

Two layers, each with one job:

  1. On TCP, L{frostnode.net.link} uses C{Int16StringReceiver} frames: a
     2-byte length and one Noise message (at most 65,535 bytes).
  2. The plaintexts of the transport messages, concatenated, form a byte
     stream of I{records}.  A record may end in the middle of one Noise
     message and a large one may span many; this is how application
     messages larger than one Noise message are split and reassembled, and
     how many small messages share one Noise message (batching: one frame,
     one AEAD call, many Bracha echoes).

A record is C{type (u8) | body length (u32) | body}, big-endian like every
frostnode encoding (L{frostnode.wire}).  Bodies:

  - L{DATA}: C{message id (u64) | channel (u16) | payload}; the payload is
    the rest of the body.
  - L{ACK}: C{cumulative (u64) | count (u32) | count x id (u64)}: every id up
    to C{cumulative} and each listed id has been received.
  - L{RESUME}: C{base (u64)}: the sender will never (re)send an id below
    C{base}, so the receiver may forget them.
  - L{PING}: empty; keeps an idle link's timers fed.

The length is checked against the per-type limit as soon as the 5-byte
header is in, before any of the body is buffered, so a peer's 4 GiB length
costs nothing but the link.  An unknown type is refused the same way: it
closes the link (there is no "skip unknown records", since a new record type
comes with a new link version in the Noise prologue).

Everything is encoded with precompiled C{struct}s rather than
L{frostnode.wire.Writer} on the DATA path: it runs once per message, and the
fixed header is all there is to encode.
"""

from __future__ import annotations

import struct
from typing import Iterable

from frostnode.net.errors import FramingError
from frostnode.wire import DecodeError, Reader, decode_u64_list, encode_u64_list

DATA = 1
ACK = 2
RESUME = 3
PING = 4
RECORD_TYPES = {DATA: "DATA", ACK: "ACK", RESUME: "RESUME", PING: "PING"}

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size
_DATA_HEAD = struct.Struct(">BIQH")
DATA_OVERHEAD = _DATA_HEAD.size          # record header + id + channel
_DATA_FIELDS = struct.Struct(">QH")
_ACK_HEAD = struct.Struct(">BIQI")
_U64 = struct.Struct(">Q")

#: Most ids one ACK record lists; more are split over several records.
MAX_ACK_IDS = 4096
_PING_RECORD = HEADER.pack(PING, 0)


def encode_data(msg_id: int, channel: int, payload: bytes) -> bytes:
    return _DATA_HEAD.pack(DATA, len(payload) + 10, msg_id, channel) + payload


def decode_data(body: bytes) -> tuple[int, int, bytes]:
    """C{(message id, channel, payload)} of a DATA body."""
    if len(body) < 10:
        raise FramingError(f"DATA record of {len(body)} bytes is shorter than its 10-byte header")
    msg_id, channel = _DATA_FIELDS.unpack_from(body)
    return msg_id, channel, body[10:]


def encode_ack(cumulative: int, ids: Iterable[int]) -> bytes:
    """One or more ACK records (ids split in runs of L{MAX_ACK_IDS})."""
    ids = list(ids)
    out = []
    for start in range(0, max(len(ids), 1), MAX_ACK_IDS):
        run = ids[start:start + MAX_ACK_IDS]
        out.append(_ACK_HEAD.pack(ACK, 12 + 8 * len(run), cumulative, len(run)) + encode_u64_list(run))
    return b"".join(out)


def decode_ack(body: bytes) -> tuple[int, list[int]]:
    try:
        r = Reader(body, "ACK record")
        cumulative = r.u64()
        n = r.count(MAX_ACK_IDS, min_item_size=8)
        ids = decode_u64_list(r, n)
        r.finish()
    except DecodeError as e:
        raise FramingError(str(e)) from None
    return cumulative, ids


def encode_resume(base: int) -> bytes:
    return HEADER.pack(RESUME, 8) + _U64.pack(base)


def decode_resume(body: bytes) -> int:
    try:
        r = Reader(body, "RESUME record")
        base = r.u64()
        r.finish()
    except DecodeError as e:
        raise FramingError(str(e)) from None
    return base


def encode_ping() -> bytes:
    return _PING_RECORD


def record_limits(max_message_size: int) -> dict[int, int]:
    """The largest body each record type may declare, given the payload limit."""
    return {
        DATA: max_message_size + 10,
        ACK: 12 + 8 * MAX_ACK_IDS,
        RESUME: 8,
        PING: 0,
    }


class RecordReader:
    """
    Reassembles records from the decrypted stream, whatever the chunking.

    Memory stays bounded by one record's limit plus one chunk, whatever the
    chunk sizes.  Only the one record that straddles chunks is buffered, in
    one C{bytearray} grown in place; records wholly inside a chunk are sliced
    straight out of it.  Not a list of chunks: a peer sending 1-byte Noise
    plaintexts would make us hold tens of bytes of object overhead per byte
    buffered (a 16 MiB record: some 700 MB).  A record that spans many chunks
    is still copied once into the buffer and once out, not per chunk.

    @param max_message_size: largest DATA payload accepted.
    """

    def __init__(self, max_message_size: int) -> None:
        self._limits = record_limits(max_message_size)
        self._buffer = bytearray()
        self._need = HEADER_SIZE  # bytes the buffered record needs in total, once its header is in

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """
        Add one decrypted chunk; return the records it completes, in order.

        @raise FramingError: unknown type or a length over its limit (the
            stream is unusable afterwards; close the link).
        """
        out: list[tuple[int, bytes]] = []
        pos = self._complete_buffered(chunk, out) if self._buffer else 0
        end = len(chunk)
        if end - pos >= HEADER_SIZE:
            pos = self._parse(chunk, pos, out)
        if pos < end:
            with memoryview(chunk) as view:
                self._buffer += view[pos:]
        return out

    def _check_header(self, data: "bytes | bytearray", pos: int) -> tuple[int, int]:
        typ, length = HEADER.unpack_from(data, pos)
        limit = self._limits.get(typ)
        if limit is None:
            raise FramingError(f"unknown record type {typ}")
        if length > limit:
            raise FramingError(f"{RECORD_TYPES[typ]} record of {length} bytes exceeds the limit of {limit}")
        return typ, length

    def _complete_buffered(self, chunk: bytes, out: list[tuple[int, bytes]]) -> int:
        """
        Move the front of C{chunk} into the buffered record until it is
        complete (then append it to C{out}) or C{chunk} is used up; return
        how many bytes of C{chunk} were taken.
        """
        buffer = self._buffer
        if len(chunk) < self._need - len(buffer):
            buffer += chunk                    # the common case of tiny chunks, kept cheap
            return len(chunk)
        taken = 0
        while True:
            missing = self._need - len(buffer)
            if len(chunk) - taken < missing:
                buffer += chunk[taken:]
                return len(chunk)
            buffer += chunk[taken:taken + missing]
            taken += missing
            if self._need > HEADER_SIZE or len(buffer) > HEADER_SIZE:
                break                          # the body is complete
            typ, length = self._check_header(buffer, 0)
            self._need = HEADER_SIZE + length
            if not length:
                break
        with memoryview(buffer) as whole:
            out.append((buffer[0], whole[HEADER_SIZE:].tobytes()))
        self._buffer = bytearray()             # lets a large record's memory go at once
        self._need = HEADER_SIZE
        return taken

    def _parse(self, data: bytes, pos: int, out: list[tuple[int, bytes]]) -> int:
        """Append the complete records in C{data} from C{pos} to C{out}; return where they end."""
        end = len(data)
        limits = self._limits
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            typ, length = unpack(data, pos)
            limit = limits.get(typ)
            if limit is None or length > limit:
                self._check_header(data, pos)  # raises, naming the type and limit
            stop = pos + HEADER_SIZE + length
            if stop > end:
                self._need = HEADER_SIZE + length
                return pos
            out.append((typ, data[pos + HEADER_SIZE:stop]))
            pos = stop
        return pos


def split_plaintext(data: bytes, size: int) -> list[bytes]:
    """Cut the outgoing record stream into Noise-sized plaintexts."""
    if len(data) <= size:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]
