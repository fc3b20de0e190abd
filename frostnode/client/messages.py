# -*- test-case-name: tests.test_client_messages -*-
"""
What travels over the client port once the Noise handshake is done, and the
JSON shapes the HTTP API and C{frostnode-client --json} print.  Pure: no I/O.

Frames
======
The plaintexts of the Noise transport messages, concatenated, form a byte
stream of frames in each direction (as on the peer links, a frame may span
many Noise messages and many frames may share one)::

    request id (u32) | body length (u32) | body

The length is checked against the receiver's limit as soon as the 8-byte
head is in, before any of the body is buffered (L{FrameReader}); the request
id comes I{before} the length so that a node can name the request it
refuses as C{too-large}.  Request ids are the client's to choose; answers
carry the id of their request and may come in any order (a C{status} is not
held up behind a C{submit} waiting for its fsync).

Bodies use the strict codec (L{frostnode.wire}): fixed-width integers, u32
length prefixes, a leading version byte, no trailing bytes.

  - Request: C{version (u8) = 1 | command (var bytes, 1..32 of [a-z0-9-]) |
    arguments (the rest)}.  The command name selects a handler in the node's
    table (L{frostnode.client.api.NodeAPI.register_command}), which decodes
    its own arguments: a new command (C{sign}) brings its own codec and
    changes nothing here.
  - Answer: C{version (u8) = 1 | status (u8)}, then for status 0 the
    command's result (the rest), for status 1 C{code (var bytes) | message
    (var bytes, UTF-8) | has retry_after (flag) | retry_after in ms (u32) |
    members (u32 count, then per member: host key (32) | why (var bytes,
    UTF-8))}, the members in ascending key order (empty but for the
    signing codes, see L{frostnode.client.errors}).

The built-in commands' arguments and results are the L{NamedTuple}s below,
each with its C{encode}/C{decode} side by side.  A record travels with its
I{canonical body} (L{RecordBody.canonical}) and its id, and the client checks
that one hashes to the other: a node cannot hand out a record under another
record's id.

C{status} is the exception: its result is one JSON document (UTF-8, sorted
keys).  It is a report for people and monitoring whose fields grow with
every layer (links, sync, DKG), is never hashed or compared, and is printed
as JSON anyway; a fixed binary layout would have to be versioned each time
a layer adds a counter.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, NamedTuple, Optional, Union

from frostnode.client.errors import MAX_MESSAGE, REMOTE_CODES, ClientError
from frostnode.crypto.bip340 import NETWORK_HRP, p2tr_address
from frostnode.store.codec import check_time, micros, seconds
from frostnode.store.log import MAX_CLIENT_NONCE, MAX_TOPIC, LogEntry, LogLimits, RecordBody
from frostnode.wire import MAX_U32, MAX_U64, DecodeError, Reader, Writer

PROTOCOL_VERSION = 1
FRAME_HEAD = struct.Struct(">II")
FRAME_HEAD_SIZE = FRAME_HEAD.size
MAX_COMMAND = 32
_COMMAND_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
STATUS_OK = 0
STATUS_ERROR = 1
MAX_CODE = 32
#: Most records one C{topic} answer lists (the log's own C{max_range} default).
MAX_PAGE = 10_000
#: Longest C{status} document accepted.
MAX_STATUS = 1 << 20
MAX_ADDRESS = 128
#: Most members an error names, and the longest reason it gives for one.
MAX_ERROR_MEMBERS = 1024
MAX_MEMBER_REASON = 256
MAX_NETWORK = 32

# -- frames ------------------------------------------------------------------------


def encode_frame(request_id: int, body: bytes) -> bytes:
    if not 0 <= request_id <= MAX_U32:
        raise ValueError(f"request id {request_id} is not a u32")
    return FRAME_HEAD.pack(request_id, len(body)) + body


class Frame(NamedTuple):
    request_id: int
    body: bytes


class Oversized(NamedTuple):
    """A frame whose declared length is over the limit; nothing after it is read."""

    request_id: int
    length: int
    limit: int


class FrameReader:
    """
    Reassembles frames from the decrypted stream, whatever the chunking.

    Memory stays bounded by one frame's limit plus one chunk, whatever the
    chunk sizes: unparsed bytes wait in one C{bytearray}, not a list of
    chunks (a client sending 1-byte Noise plaintexts would otherwise make us
    hold tens of bytes of object overhead per byte buffered).  A frame over
    the limit is reported as L{Oversized} as soon as its head is in, and the
    reader reads nothing more: its sender declared that it would send more
    than we accept, and the connection is closed after answering.

    @param max_length: the largest body accepted.
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buffer = bytearray()
        self.stopped = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Union[Frame, Oversized]]:
        if self.stopped or not chunk:
            return []
        buffer = self._buffer
        buffer += chunk
        end = len(buffer)
        pos = 0
        out: list[Union[Frame, Oversized]] = []
        unpack = FRAME_HEAD.unpack_from
        while end - pos >= FRAME_HEAD_SIZE:
            request_id, length = unpack(buffer, pos)
            if length > self.max_length:
                out.append(Oversized(request_id, length, self.max_length))
                self.stopped = True
                self._buffer = bytearray()
                return out
            stop = pos + FRAME_HEAD_SIZE + length
            if stop > end:
                break
            out.append(Frame(request_id, bytes(buffer[pos + FRAME_HEAD_SIZE:stop])))
            pos = stop
        if pos:
            del buffer[:pos]
        return out


# -- requests and answers --------------------------------------------------------------


def check_command(command: str) -> bytes:
    """The command name as bytes, or C{ValueError} if it is not 1..32 of [a-z0-9-]."""
    raw = command.encode("ascii", "replace") if isinstance(command, str) else b""
    if not 1 <= len(raw) <= MAX_COMMAND or not set(raw) <= _COMMAND_CHARS:
        raise ValueError(f"command name must be 1..{MAX_COMMAND} characters of a-z, 0-9 and '-', not {command!r}")
    return raw


def encode_request(command: str, args: bytes) -> bytes:
    return Writer().u8(PROTOCOL_VERSION).var_bytes(check_command(command), MAX_COMMAND).raw(args).to_bytes()


def decode_request(body: bytes) -> tuple[str, bytes]:
    """C{(command, arguments)}; L{DecodeError} for a malformed body or command name."""
    r = Reader(body, "request")
    r.version(PROTOCOL_VERSION)
    raw = r.var_bytes(MAX_COMMAND)
    if not raw or not set(raw) <= _COMMAND_CHARS:
        raise DecodeError(f"request: command name {raw[:MAX_COMMAND]!r} is not 1..{MAX_COMMAND} of [a-z0-9-]")
    return raw.decode("ascii"), r.rest(MAX_U32)


def encode_ok(result: bytes) -> bytes:
    return Writer().u8(PROTOCOL_VERSION).u8(STATUS_OK).raw(result).to_bytes()


def encode_error(error: ClientError) -> bytes:
    message = error.message.encode("utf-8", "replace")
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + b"..."
    w = Writer().u8(PROTOCOL_VERSION).u8(STATUS_ERROR).var_bytes(error.code.encode("ascii"), MAX_CODE)
    w.var_bytes(message, MAX_MESSAGE)
    if error.retry_after is None:
        w.flag(False).u32(0)
    else:
        w.flag(True).u32(min(max(int(error.retry_after * 1000 + 0.999), 0), MAX_U32))
    members = sorted(error.members.items())[:MAX_ERROR_MEMBERS]
    w.count(len(members), MAX_ERROR_MEMBERS)
    for key, why in members:
        w.fixed(key, 32).var_bytes(why.encode("utf-8", "replace")[:MAX_MEMBER_REASON], MAX_MEMBER_REASON)
    return w.to_bytes()


def decode_response(body: bytes) -> bytes:
    """
    The result bytes of an answer.

    @raise ClientError: the node's answer was an error.
    @raise DecodeError: the answer is malformed.
    """
    r = Reader(body, "answer")
    r.version(PROTOCOL_VERSION)
    status = r.u8()
    if status == STATUS_OK:
        return r.rest(MAX_U32)
    if status != STATUS_ERROR:
        raise DecodeError(f"answer: unknown status {status}")
    code = r.var_bytes(MAX_CODE).decode("ascii", "replace")
    if code not in REMOTE_CODES:
        raise DecodeError(f"answer: unknown error code {code!r}")
    message = r.var_bytes(MAX_MESSAGE).decode("utf-8", "replace")
    has_retry = r.flag()
    retry_ms = r.u32()
    members: dict[bytes, str] = {}
    prev = b""
    for _ in range(r.count(MAX_ERROR_MEMBERS, 32 + 4)):
        key = r.fixed(32)
        if key <= prev:
            raise DecodeError("answer: the members of an error are not in strictly ascending order")
        prev = key
        members[key] = r.var_bytes(MAX_MEMBER_REASON).decode("utf-8", "replace")
    r.finish()
    raise ClientError(code, message, retry_ms / 1000 if has_retry else None, members)


# -- JSON helpers --------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    """Strict standard base64 (padding required), or C{ValueError} naming C{what}."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None


def jsonable(value: Any) -> Any:
    """C{value} with bytes as hex, tuples as lists and unknown objects as strings."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {(k.hex() if isinstance(k, bytes) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    as_dict = getattr(value, "_asdict", None)
    if callable(as_dict):
        return jsonable(as_dict())
    return str(value)


# -- submit ---------------------------------------------------------------------------


def _topic_bytes(topic: str) -> bytes:
    raw = topic.encode("utf-8") if isinstance(topic, str) else b""
    if not 1 <= len(raw) <= MAX_TOPIC:
        raise ValueError(f"topic must be 1..{MAX_TOPIC} bytes of UTF-8, not {topic!r}")
    return raw


def _read_topic(r: Reader) -> str:
    raw = r.var_bytes(MAX_TOPIC)
    if not raw:
        raise DecodeError("topic is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("topic is not UTF-8") from None


class SubmitArgs(NamedTuple):
    """C{submit}: everything of a L{RecordBody} but the client key, which the node takes from the handshake."""

    topic: str
    payload: bytes
    timestamp: int
    nonce: bytes

    def encode(self) -> bytes:
        return (Writer().var_bytes(_topic_bytes(self.topic), MAX_TOPIC).u64(self.timestamp)
                .var_bytes(self.nonce, MAX_CLIENT_NONCE).raw(self.payload).to_bytes())

    @classmethod
    def decode(cls, args: bytes) -> "SubmitArgs":
        r = Reader(args, "submit request")
        topic = _read_topic(r)
        timestamp = r.u64()
        nonce = r.var_bytes(MAX_CLIENT_NONCE)
        return cls(topic, r.rest(MAX_U32), timestamp, nonce)

    def body(self, client_key: bytes) -> RecordBody:
        return RecordBody(client_key, self.topic, self.payload, self.timestamp, self.nonce)


class Accepted(NamedTuple):
    """A submission durably written by the node: its id, whether it was new, and its slot there."""

    record_id: bytes
    created: bool
    origin: bytes
    seq: int

    def encode(self) -> bytes:
        return Writer().fixed(self.record_id, 32).flag(self.created).fixed(self.origin, 32).u64(self.seq).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "Accepted":
        r = Reader(data, "submit answer")
        out = cls(r.fixed(32), r.flag(), r.fixed(32), r.u64())
        r.finish()
        return out

    def to_json(self) -> dict:
        return {"record_id": self.record_id.hex(), "created": self.created, "origin": self.origin.hex(),
                "seq": self.seq}


# -- get / topic ----------------------------------------------------------------------


def encode_get_args(record_id: bytes) -> bytes:
    return Writer().fixed(record_id, 32).to_bytes()


def decode_get_args(args: bytes) -> bytes:
    r = Reader(args, "get request")
    record_id = r.fixed(32)
    r.finish()
    return record_id


class Record(NamedTuple):
    """
    A record as a node holds it: id, the body the client submitted, its
    first slot (origin, seq) with that origin's receive time, and its topic
    position I{on the node that answered} (positions differ between nodes).
    """

    record_id: bytes
    body: RecordBody
    origin: bytes
    seq: int
    received_at: float
    position: int

    @property
    def topic(self) -> str:
        return self.body.topic

    @property
    def payload(self) -> bytes:
        return self.body.payload

    @property
    def client_key(self) -> bytes:
        return self.body.client_key

    @classmethod
    def from_entry(cls, entry: LogEntry) -> "Record":
        env = entry.envelope
        return cls(entry.record_id, env.body, env.origin, env.seq, env.received_at, entry.position)

    def encode(self) -> bytes:
        return (Writer().fixed(self.record_id, 32).u64(self.position).fixed(self.origin, 32).u64(self.seq)
                .u64(micros(self.received_at)).var_bytes(self.body.canonical, MAX_U32).to_bytes())

    @classmethod
    def read(cls, r: Reader, max_body: int) -> "Record":
        record_id = r.fixed(32)
        position = r.u64()
        origin = r.fixed(32)
        seq = r.u64()
        received_at = check_time(seconds(r.u64()), "receive time", DecodeError)
        canonical = r.var_bytes(max_body)
        body = RecordBody.decode(canonical, LogLimits(max_payload=max_body, max_nonce=MAX_CLIENT_NONCE))
        if body.record_id != record_id:
            raise DecodeError(f"record {record_id.hex()[:16]}: its body hashes to {body.record_id.hex()[:16]}")
        return cls(record_id, body, origin, seq, received_at, position)

    @classmethod
    def decode(cls, data: bytes, max_body: int = MAX_U32 - 1024) -> "Record":
        r = Reader(data, "record")
        out = cls.read(r, max_body)
        r.finish()
        return out

    def to_json(self) -> dict:
        b = self.body
        return {
            "record_id": self.record_id.hex(),
            "topic": b.topic,
            "payload": b64(b.payload),
            "client_key": b.client_key.hex(),
            "timestamp": b.timestamp,
            "nonce": b64(b.nonce),
            "origin": self.origin.hex(),
            "seq": self.seq,
            "received_at": self.received_at,
            "position": self.position,
        }


class TopicArgs(NamedTuple):
    """C{topic}: up to C{limit} records of C{topic} from local position C{from_position} on."""

    topic: str
    from_position: int
    limit: int

    def encode(self) -> bytes:
        return Writer().var_bytes(_topic_bytes(self.topic), MAX_TOPIC).u64(self.from_position).u32(self.limit).to_bytes()

    @classmethod
    def decode(cls, args: bytes) -> "TopicArgs":
        r = Reader(args, "topic request")
        out = cls(_read_topic(r), r.u64(), r.u32())
        r.finish()
        return out


class TopicPage(NamedTuple):
    """
    One page of a topic.  C{next} is the position to ask for next; C{last}
    the topic's last position on this node when it answered.  A page may
    hold fewer records than asked (the node caps an answer's size), so page
    on with C{next} until it passes C{last}.
    """

    topic: str
    last: int
    next: int
    records: list[Record]

    def encode(self) -> bytes:
        w = Writer().var_bytes(_topic_bytes(self.topic), MAX_TOPIC).u64(self.last).u64(self.next)
        w.count(len(self.records), MAX_PAGE)
        for rec in self.records:
            w.raw(rec.encode())
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes, max_body: int = MAX_U32 - 1024) -> "TopicPage":
        r = Reader(data, "topic answer")
        topic = _read_topic(r)
        last = r.u64()
        nxt = r.u64()
        n = r.count(MAX_PAGE, min_item_size=32 + 8 + 32 + 8 + 8 + 4)
        records = [Record.read(r, max_body) for _ in range(n)]
        r.finish()
        return cls(topic, last, nxt, records)

    def to_json(self) -> dict:
        return {"topic": self.topic, "last": self.last, "next": self.next,
                "records": [rec.to_json() for rec in self.records]}


# -- status / pubkey ------------------------------------------------------------------


def encode_status(status: dict) -> bytes:
    text = json.dumps(jsonable(status), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return Writer().var_bytes(text, MAX_STATUS).to_bytes()


def decode_status(data: bytes) -> dict:
    r = Reader(data, "status answer")
    raw = r.var_bytes(MAX_STATUS)
    r.finish()
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"status answer is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise DecodeError("status answer is not a JSON object")
    return value


class PublicKeys(NamedTuple):
    """
    The federation's current key: the current record of the newest epoch
    that has a certified key, whether or not this node is in it.  The
    Taproot internal key (x-only), the tweaked output key (x-only) and its
    P2TR address, and whether the node answering holds a share of it.

    @ivar holds_share: this node holds a share of the key and may sign with
        it.  False on a member that the newest key generation excluded: it
        still knows the federation's key (from the certificate), but cannot
        take part in signing under it.
    """

    epoch: int
    internal_key: bytes
    output_key: bytes
    address: str
    network: str
    holds_share: bool

    def encode(self) -> bytes:
        return (Writer().u64(self.epoch).fixed(self.internal_key, 32).fixed(self.output_key, 32)
                .var_bytes(self.address.encode("ascii"), MAX_ADDRESS)
                .var_bytes(self.network.encode("ascii"), MAX_NETWORK).flag(self.holds_share).to_bytes())

    @classmethod
    def decode(cls, data: bytes) -> "PublicKeys":
        """Also checks that the address is the output key's on the named network."""
        r = Reader(data, "pubkey answer")
        epoch = r.u64()
        internal = r.fixed(32)
        output = r.fixed(32)
        address = r.var_bytes(MAX_ADDRESS).decode("ascii", "replace")
        network = r.var_bytes(MAX_NETWORK).decode("ascii", "replace")
        holds_share = r.flag()
        r.finish()
        if network not in NETWORK_HRP:
            raise DecodeError(f"pubkey answer: unknown network {network!r}")
        if p2tr_address(output, network) != address:
            raise DecodeError(f"pubkey answer: address {address!r} is not the output key's on {network}")
        return cls(epoch, internal, output, address, network, holds_share)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "internal_key": self.internal_key.hex(), "output_key": self.output_key.hex(),
                "address": self.address, "network": self.network, "holds_share": self.holds_share}


def nonnegative_int(value: Any, what: str, maximum: int = MAX_U64) -> int:
    """A JSON or query value as an int in [0, maximum], or C{ValueError} naming C{what}."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer")
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 20:
            raise ValueError(f"{what} must be a non-negative integer, not {value[:40]!r}")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{what} must be an integer in [0, {maximum}]")
    return value


def optional_hex(value: Any, what: str, size: int) -> Optional[bytes]:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"{what} must be {2 * size} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} must be {2 * size} hex digits") from None

