# -*- test-case-name: tests.test_store_log -*-
"""
The replicated data log: a set of content-addressed client records, each
filed under one or more (origin member, sequence number) slots.

Records
=======
A L{RecordBody} is what a client submitted: client key, topic, payload, and
the client's own timestamp and nonce.  Its I{record id} is SHA-256 of its
canonical encoding (L{RecordBody.canonical}, one fixed layout with a version
byte; decoding rejects every other byte string), so the same submission has
the same id on every node and resubmitting it is a no-op.  The client's
timestamp and nonce are part of the body precisely so that a client I{can}
submit the same payload twice on purpose.

An L{Envelope} says how a record entered the federation: the member that
received it from the client (I{origin}, a host key), the origin's sequence
number for it (1, 2, 3, ... per origin) and the origin's receive time, plus
an opaque I{proof} (the origin's signature or a broadcast certificate, in the
sync layer's encoding) that lets a node serving catch-up convince others.
The envelope is not part of the id.

Durability
==========
L{DataLog.append_local} and L{DataLog.insert_remote} are group-committed
(L{frostnode.store.db}): their Deferreds fire after the fsync.  A node acknowledges a
client only from C{append_local}'s callback, so what a client was told is
accepted survives a crash of the node (tested with C{kill -9}).

Indexes
=======
- id -> record (the body, its first envelope, and its local topic position);
- (origin, seq) -> id, the slot, with receive time and proof;
- (topic, position) -> id, where I{position} is this node's own insertion
  counter for the topic (1, 2, ...), never reused;
- per origin: C{have} (highest seq with every slot 1..have filled or pruned),
  C{max_seq} (highest seen) and C{floor} (highest pruned).

The same body may reach two origins (a client submitting to two nodes); both
slots point at one record.  Filling such an alias slot advances C{have}, so
catch-up does not ask for it forever, and the record is counted once.

What a validation scheme may rely on
====================================
- B{No global order.}  Records from different origins interleave differently
  on every node; topic positions are local and differ between nodes.  A
  scheme must never use them to decide what to sign.
- B{Per-origin order.}  For one origin, sequence numbers are a total order
  every node agrees on: slot (o, s) holds the same record everywhere
  (L{SequenceConflict} otherwise).
- B{The set of records.}  Two nodes with the same digest hold the same set.
  A scheme that needs a common, ordered view names a I{cut}: a sequence
  number per origin (L{DataLog.current_cut}); L{DataLog.records_in_cut}
  returns exactly the records in slots (o, 1..cut[o]) in (origin, seq) order
  on every node that holds them, or raises L{IncompleteView}.

Digest
======
The log digest is a hash of the I{set} of held record ids that does not
depend on insertion order and is updated incrementally: LtHash
(L{frostnode.store.sethash}, which also says why XOR or a sum modulo 2^256
of SHA-256 would let a client forge equal digests for different sets).  A
multiset hash is fine because inserts are idempotent: an id is added at most
once while it is held and subtracted exactly when it is let go.  The record
count comes with it.  Both are folded in once per group-committed batch
(L{frostnode.store.db.Database.stage}), in the batch's own transaction.

Retention
=========
Configurable by age (the I{origin's} receive time, which every node holds
for the slot, so every node makes the same decision) and by count (the
newest C{max_per_origin} slots of each origin).  Pruning removes a prefix of
each origin's sequence: slot s goes only when every slot before it went, and
never past C{have}; that prefix's end is the origin's C{floor}.  A slot at
or below the floor that arrives later is ignored (reported as not created),
so pruned records do not come back through catch-up.  A record goes when its
last slot goes, and leaves the digest then.  The digest therefore describes
what a node I{holds}: nodes agree on it only once they have pruned to the
same floors (compare L{DataLog.origins}); with retention off, equal digests
mean equal logs.  A cut reaching below a floor cannot be evaluated
(L{IncompleteView}): schemes that replay history need retention off or a
checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional

from twisted.internet.defer import Deferred

from frostnode.store import sethash
from frostnode.store.codec import check_time, micros, seconds, stored, u64
from frostnode.store.db import Database
from frostnode.store.errors import (
    CorruptStore,
    IncompleteView,
    InvalidRecord,
    RecordTooLarge,
    SequenceConflict,
)
from frostnode.wire import MAX_U32, MAX_U64, DecodeError, Reader, Writer

_BODY_VERSION = 1
_ENVELOPE_VERSION = 1
_RECORD_VERSION = 1
MAX_TOPIC = 255
MAX_CLIENT_NONCE = 255
HOST_KEY_SIZE = 32
CLIENT_KEY_SIZE = 32

_ORIGIN_STATE = struct.Struct(">QQQ")
#: Stored record: version, first origin, its seq, its receive time (us), topic position, slot count; then the body.
_RECORD_HEAD = struct.Struct(">B32sQQQI")
#: Stored slot: record id, receive time (us); then the proof.
_SLOT_HEAD = struct.Struct(">32sQ")
#: Bytes of a canonical body besides the payload, at most.
_BODY_OVERHEAD = 1 + CLIENT_KEY_SIZE + 4 + MAX_TOPIC + 8 + 4 + MAX_CLIENT_NONCE + 4
_DIGEST = "log.digest"


@dataclass(frozen=True)
class LogLimits:
    """
    Hard bounds applied to every record entering the log (local or remote),
    before anything is allocated or written.  C{max_range} caps one
    L{DataLog.range} / L{DataLog.topic_range} answer.
    """

    max_payload: int = 1 << 20
    max_nonce: int = 64
    max_proof: int = 64 * 1024
    max_range: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.max_payload <= MAX_U32 - _BODY_OVERHEAD:
            raise ValueError(f"max_payload must be in [0, 2^32 - {_BODY_OVERHEAD}], not {self.max_payload}")
        if not 0 <= self.max_nonce <= MAX_CLIENT_NONCE:
            raise ValueError(f"max_nonce must be in [0, {MAX_CLIENT_NONCE}], not {self.max_nonce}")
        if not 0 <= self.max_proof <= MAX_U32:
            raise ValueError(f"max_proof must be in [0, 2^32), not {self.max_proof}")
        if self.max_range < 1:
            raise ValueError(f"max_range must be positive, not {self.max_range}")

    def check_body(self, body: "RecordBody") -> None:
        if len(body.payload) > self.max_payload:
            raise RecordTooLarge(f"payload is {len(body.payload)} bytes, limit {self.max_payload}")
        if len(body.nonce) > self.max_nonce:
            raise RecordTooLarge(f"client nonce is {len(body.nonce)} bytes, limit {self.max_nonce}")

    def check_envelope(self, env: "Envelope") -> None:
        self.check_body(env.body)
        if len(env.proof) > self.max_proof:
            raise RecordTooLarge(f"proof is {len(env.proof)} bytes, limit {self.max_proof}")


@dataclass(frozen=True)
class Retention:
    """
    What L{DataLog.prune} removes.  C{None} disables a rule; with both
    C{None} nothing is ever pruned.

    @ivar max_age: seconds after the origin's receive time.
    @ivar max_per_origin: slots kept per origin (the newest).
    """

    max_age: Optional[float] = None
    max_per_origin: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_age is not None and not (math.isfinite(self.max_age) and self.max_age > 0):
            raise ValueError(f"retention max_age must be a positive number of seconds, not {self.max_age}")
        if self.max_per_origin is not None and self.max_per_origin < 1:
            raise ValueError(f"retention max_per_origin must be at least 1, not {self.max_per_origin}")


@dataclass(frozen=True)
class RecordBody:
    """
    A client submission.  C{canonical} is its one valid encoding and
    C{record_id} its SHA-256.

    @ivar client_key: the submitting client's 32-byte public key.
    @ivar topic: 1..255 bytes of UTF-8.
    @ivar timestamp: the client's own clock or counter, an int in [0, 2^64).
    @ivar nonce: up to 255 client-chosen bytes, to make equal payloads distinct.
    """

    client_key: bytes
    topic: str
    payload: bytes = field(repr=False)
    timestamp: int = 0
    nonce: bytes = b""
    canonical: bytes = field(init=False, repr=False, compare=False)
    record_id: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.client_key, bytes) or len(self.client_key) != CLIENT_KEY_SIZE:
            raise InvalidRecord(f"client key must be {CLIENT_KEY_SIZE} bytes")
        if not isinstance(self.topic, str):
            raise InvalidRecord("topic must be a str")
        try:
            topic = self.topic.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecord("topic is not encodable as UTF-8") from None
        if not 1 <= len(topic) <= MAX_TOPIC:
            raise InvalidRecord(f"topic must be 1..{MAX_TOPIC} bytes of UTF-8, not {len(topic)}")
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_U32 - _BODY_OVERHEAD:
            raise InvalidRecord("payload must be bytes, under 4 GiB")
        if isinstance(self.timestamp, bool) or not isinstance(self.timestamp, int) or not 0 <= self.timestamp <= MAX_U64:
            raise InvalidRecord("timestamp must be an int in [0, 2^64)")
        if not isinstance(self.nonce, bytes) or len(self.nonce) > MAX_CLIENT_NONCE:
            raise InvalidRecord(f"client nonce must be at most {MAX_CLIENT_NONCE} bytes")
        canonical = (
            Writer().u8(_BODY_VERSION).fixed(self.client_key, CLIENT_KEY_SIZE).var_bytes(topic, MAX_TOPIC)
            .u64(self.timestamp).var_bytes(self.nonce, MAX_CLIENT_NONCE).var_bytes(self.payload, MAX_U32)
            .to_bytes()
        )
        object.__setattr__(self, "canonical", canonical)
        object.__setattr__(self, "record_id", hashlib.sha256(canonical).digest())

    @classmethod
    def decode(cls, data: bytes, limits: Optional[LogLimits] = None) -> "RecordBody":
        """
        Parse a canonical body, checking each length (against C{limits})
        before reading it.

        @raise InvalidRecord: (a L{DecodeError}) naming the field at fault.
        """
        limits = limits or LogLimits()
        try:
            r = Reader(data, "record body")
            r.version(_BODY_VERSION)
            client_key = r.fixed(CLIENT_KEY_SIZE)
            topic_bytes = r.var_bytes(MAX_TOPIC)
            timestamp = r.u64()
            nonce = r.var_bytes(limits.max_nonce)
            payload = r.var_bytes(limits.max_payload)
            r.finish()
        except InvalidRecord:
            raise
        except DecodeError as e:
            raise InvalidRecord(str(e)) from None
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord("record body: topic is not UTF-8") from None
        return cls(client_key, topic, payload, timestamp, nonce)


@dataclass(frozen=True)
class Envelope:
    """
    A record as filed by its origin: slot (origin, seq), the origin's receive
    time (float seconds, kept to whole microseconds: the encoding stores
    integer microseconds), an opaque proof, and the body.
    """

    origin: bytes
    seq: int
    received_at: float
    body: RecordBody
    proof: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.origin, bytes) or len(self.origin) != HOST_KEY_SIZE:
            raise InvalidRecord(f"origin must be a {HOST_KEY_SIZE}-byte host key")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 1 <= self.seq <= MAX_U64:
            raise InvalidRecord(f"sequence number must be in [1, 2^64), not {self.seq!r}")
        object.__setattr__(self, "received_at", check_time(self.received_at, "receive time", InvalidRecord))
        if not isinstance(self.body, RecordBody):
            raise InvalidRecord("body must be a RecordBody")
        if not isinstance(self.proof, bytes) or len(self.proof) > MAX_U32:
            raise InvalidRecord("proof must be bytes, under 4 GiB")

    @property
    def record_id(self) -> bytes:
        return self.body.record_id

    def encode(self) -> bytes:
        return (
            Writer().u8(_ENVELOPE_VERSION).fixed(self.origin, HOST_KEY_SIZE).u64(self.seq)
            .u64(micros(self.received_at)).var_bytes(self.proof, MAX_U32).raw(self.body.canonical)
            .to_bytes()
        )

    @classmethod
    def decode(cls, data: bytes, limits: Optional[LogLimits] = None) -> "Envelope":
        """
        Parse an envelope from a peer, every length checked against
        C{limits} first.

        @raise InvalidRecord: (a L{DecodeError}) naming the field at fault.
        """
        limits = limits or LogLimits()
        try:
            r = Reader(data, "envelope")
            r.version(_ENVELOPE_VERSION)
            origin = r.fixed(HOST_KEY_SIZE)
            seq = r.u64()
            received_at = seconds(r.u64())
            proof = r.var_bytes(limits.max_proof)
            rest = r.rest(limits.max_payload + _BODY_OVERHEAD)
        except DecodeError as e:
            raise InvalidRecord(str(e)) from None
        return cls(origin, seq, received_at, RecordBody.decode(rest, limits), proof)


class LogEntry(NamedTuple):
    """A held record: its id, its first envelope, and its local topic position."""

    record_id: bytes
    envelope: Envelope
    position: int


class Appended(NamedTuple):
    """C{append_local}'s result: the id, and whether this call added the record."""

    record_id: bytes
    created: bool


class Inserted(NamedTuple):
    """C{insert_remote}'s result: the id, and whether the record was new here."""

    record_id: bytes
    created: bool


class OriginState(NamedTuple):
    """
    Catch-up position for one origin.

    @ivar have: every slot 1..have is held or pruned; ask peers from have + 1.
    @ivar max_seq: highest slot seen (> have means gaps).
    @ivar floor: slots 1..floor were pruned by retention.
    """

    have: int
    max_seq: int
    floor: int


class LogDigest(NamedTuple):
    """Order-independent digest of the set of held record ids, and their count."""

    count: int
    digest: bytes

    def hex(self) -> str:
        return self.digest.hex()


#: Stored records were checked against the limits in force when they arrived;
#: reading them back only checks the encoding.
_STORED = LogLimits(max_payload=MAX_U32 - _BODY_OVERHEAD, max_nonce=MAX_CLIENT_NONCE, max_proof=MAX_U32)


class DataLog:
    """
    The log in sub-databases C{log.records}, C{log.slots}, C{log.by_topic},
    C{log.topics}, C{log.origins}, C{log.meta}.

    @param local: this node's host key, the origin of C{append_local}.
    """

    def __init__(
        self,
        db: Database,
        local: bytes,
        *,
        limits: Optional[LogLimits] = None,
        retention: Optional[Retention] = None,
    ) -> None:
        if not isinstance(local, bytes) or len(local) != HOST_KEY_SIZE:
            raise ValueError(f"local origin must be a {HOST_KEY_SIZE}-byte host key")
        self._db = db
        self.local = local
        self.limits = limits or LogLimits()
        self.retention = retention or Retention()
        self._records = db.subdb("log.records")
        self._slots = db.subdb("log.slots")
        self._by_topic = db.subdb("log.by_topic")
        self._topics = db.subdb("log.topics")
        self._origins = db.subdb("log.origins")
        self._meta = db.subdb("log.meta")
        db.aggregate(_DIGEST, self._flush_digest)

    # -- stored values: fixed heads (struct), then the body or the proof ------------

    @staticmethod
    def _record_value(env: Envelope, position: int, refs: int) -> bytes:
        head = _RECORD_HEAD.pack(_RECORD_VERSION, env.origin, env.seq, micros(env.received_at), position, refs)
        return head + env.body.canonical

    @staticmethod
    def _parse_record(raw: bytes, rid: bytes) -> tuple[bytes, int, float, int, int, RecordBody]:
        what = f"record {rid.hex()[:16]}"
        if len(raw) < _RECORD_HEAD.size or raw[0] != _RECORD_VERSION:
            raise CorruptStore(f"{what}: bad header")
        _, origin, seq, received_us, position, refs = _RECORD_HEAD.unpack_from(raw)
        with stored(what):
            body = RecordBody.decode(bytes(raw[_RECORD_HEAD.size:]), _STORED)
        if body.record_id != rid:
            raise CorruptStore(f"{what}: stored body hashes to {body.record_id.hex()[:16]}")
        return origin, seq, seconds(received_us), position, refs, body

    @staticmethod
    def _slot_value(rid: bytes, received_at: float, proof: bytes) -> bytes:
        return _SLOT_HEAD.pack(rid, micros(received_at)) + proof

    @staticmethod
    def _parse_slot(raw: bytes) -> tuple[bytes, float, bytes]:
        if len(raw) < _SLOT_HEAD.size:
            raise CorruptStore(f"log slot of {len(raw)} bytes")
        rid, received_us = _SLOT_HEAD.unpack_from(raw)
        return rid, seconds(received_us), bytes(raw[_SLOT_HEAD.size:])

    @staticmethod
    def _topic_key(topic: bytes, position: int) -> bytes:
        return bytes((len(topic),)) + topic + u64(position)

    # -- shared transaction helpers -------------------------------------------------------

    def _origin_state(self, txn: Any, origin: bytes) -> OriginState:
        raw = txn.get(origin, db=self._origins)
        if raw is None:
            return OriginState(0, 0, 0)
        if len(raw) != _ORIGIN_STATE.size:
            raise CorruptStore(f"origin {origin.hex()[:16]}: state is {len(raw)} bytes")
        return OriginState(*_ORIGIN_STATE.unpack(raw))

    def _put_origin_state(self, txn: Any, origin: bytes, st: OriginState) -> None:
        txn.put(origin, _ORIGIN_STATE.pack(*st), db=self._origins)

    def _get_u64(self, txn: Any, key: bytes, db: Any) -> int:
        raw = txn.get(key, db=db)
        if raw is None:
            return 0
        if len(raw) != 8:
            raise CorruptStore(f"counter {bytes(key)!r} is {len(raw)} bytes")
        return int.from_bytes(raw, "big")

    def _flush_digest(self, txn: Any, items: list[tuple[bool, bytes]]) -> None:
        """Fold a batch's additions and removals into the set hash and the count."""
        added = [rid for add, rid in items if add]
        removed = [rid for add, rid in items if not add]
        state = txn.get(b"sethash", db=self._meta)
        txn.put(b"sethash", sethash.update(state or sethash.EMPTY, added, removed), db=self._meta)
        count = self._get_u64(txn, b"count", self._meta) + len(added) - len(removed)
        txn.put(b"count", u64(count), db=self._meta)

    def _insert(self, txn: Any, env: Envelope, st: Optional[OriginState] = None) -> bool:
        """File C{env} in its slot; True if the record itself is new here."""
        origin, seq, rid = env.origin, env.seq, env.record_id
        if st is None:
            st = self._origin_state(txn, origin)
        if seq <= st.floor:
            return False  # pruned by retention: do not bring it back
        skey = origin + u64(seq)
        existing = txn.get(skey, db=self._slots)
        if existing is not None:
            if existing[:32] != rid:
                raise SequenceConflict(origin, seq, bytes(existing[:32]), rid)
            return False
        txn.put(skey, self._slot_value(rid, env.received_at, env.proof), db=self._slots)
        raw = txn.get(rid, db=self._records)
        if raw is not None:
            o, s, t, position, refs, body = self._parse_record(raw, rid)
            txn.put(rid, self._record_value(Envelope(o, s, t, body), position, refs + 1), db=self._records)
            created = False
        else:
            topic = env.body.topic.encode("utf-8")
            position = self._get_u64(txn, topic, self._topics) + 1
            txn.put(topic, u64(position), db=self._topics)
            txn.put(self._topic_key(topic, position), rid, db=self._by_topic)
            txn.put(rid, self._record_value(env, position, 1), db=self._records)
            self._db.stage(_DIGEST, (True, rid))
            created = True
        have = st.have
        if seq == have + 1:
            have = seq
            cur = txn.cursor(db=self._slots)
            if cur.set_key(origin + u64(have + 1)):
                for key in cur.iternext(keys=True, values=False):
                    if key != origin + u64(have + 1):
                        break
                    have += 1
        self._put_origin_state(txn, origin, OriginState(have, max(st.max_seq, seq), st.floor))
        return created

    def _drop_slot(self, txn: Any, origin: bytes, seq: int) -> bool:
        """Prune one slot, and its record if no other slot holds it; True if the record went."""
        skey = origin + u64(seq)
        raw = txn.get(skey, db=self._slots)
        rid, _, _ = self._parse_slot(raw)
        txn.delete(skey, db=self._slots)
        o, s, t, position, refs, body = self._parse_record(txn.get(rid, db=self._records), rid)
        if refs > 1:
            txn.put(rid, self._record_value(Envelope(o, s, t, body), position, refs - 1), db=self._records)
            return False
        txn.delete(rid, db=self._records)
        txn.delete(self._topic_key(body.topic.encode("utf-8"), position), db=self._by_topic)
        self._db.stage(_DIGEST, (False, rid))
        return True

    # -- transaction bodies ----------------------------------------------------------------

    def _append_local(self, txn: Any, body: RecordBody, now: float) -> Appended:
        rid = body.record_id
        if txn.get(rid, db=self._records) is not None:
            return Appended(rid, False)
        st = self._origin_state(txn, self.local)
        return Appended(rid, self._insert(txn, Envelope(self.local, st.max_seq + 1, now, body), st))

    def _insert_remote(self, txn: Any, env: Envelope) -> Inserted:
        return Inserted(env.record_id, self._insert(txn, env))

    def _attach_proof(self, txn: Any, origin: bytes, seq: int, proof: bytes) -> bool:
        skey = origin + u64(seq)
        raw = txn.get(skey, db=self._slots)
        if raw is None:
            raise KeyError(f"no record in slot ({origin.hex()[:16]}, {seq})")
        rid, received_at, old = self._parse_slot(raw)
        if old:
            return False
        txn.put(skey, self._slot_value(rid, received_at, proof), db=self._slots)
        return True

    def _prune(self, txn: Any, now: float, limit: int) -> int:
        ret = self.retention
        if ret.max_age is None and ret.max_per_origin is None:
            return 0
        cutoff = None if ret.max_age is None else now - ret.max_age
        states = [(bytes(k), v) for k, v in txn.cursor(db=self._origins)]
        pruned = 0
        for origin, _ in states:
            st = self._origin_state(txn, origin)
            seq = st.floor
            while seq < st.have and pruned < limit:
                nxt = seq + 1
                by_count = ret.max_per_origin is not None and nxt <= st.have - ret.max_per_origin
                if not by_count:
                    if cutoff is None:
                        break
                    _, received_at, _ = self._parse_slot(txn.get(origin + u64(nxt), db=self._slots))
                    if received_at >= cutoff:
                        break
                self._drop_slot(txn, origin, nxt)
                seq = nxt
                pruned += 1
            if seq != st.floor:
                self._put_origin_state(txn, origin, st._replace(floor=seq))
            if pruned >= limit:
                break
        return pruned

    # -- argument checks (raise at once, before queueing) ----------------------------------

    def _check_body(self, body: RecordBody) -> RecordBody:
        if not isinstance(body, RecordBody):
            raise TypeError(f"expected RecordBody, got {type(body).__name__}")
        self.limits.check_body(body)
        return body

    def _check_envelope(self, env: Envelope, record_id: Optional[bytes]) -> Envelope:
        if not isinstance(env, Envelope):
            raise TypeError(f"expected Envelope, got {type(env).__name__}")
        self.limits.check_envelope(env)
        if record_id is not None and record_id != env.record_id:
            raise InvalidRecord(
                f"record from origin {env.origin.hex()[:16]} seq {env.seq} hashes to "
                f"{env.record_id.hex()[:16]}, not the claimed {bytes(record_id).hex()[:16]}"
            )
        return env

    @staticmethod
    def _check_now(now: float) -> float:
        return check_time(now, "now")

    def _check_proof(self, origin: bytes, seq: int, proof: bytes) -> None:
        if not isinstance(origin, bytes) or len(origin) != HOST_KEY_SIZE or not 1 <= seq <= MAX_U64:
            raise ValueError("slot must be a 32-byte origin and a sequence number >= 1")
        if not isinstance(proof, bytes) or not 1 <= len(proof) <= self.limits.max_proof:
            raise RecordTooLarge(f"proof must be 1..{self.limits.max_proof} bytes")

    # -- group-committed writes ----------------------------------------------------------------

    def append_local(self, body: RecordBody, now: float) -> Deferred:
        """
        File a client submission under our own origin with the next sequence
        number and receive time C{now}.  Fires with L{Appended} after fsync;
        acknowledge the client only then.  A body already held (from any
        origin) gets no new slot: C{created} is False.
        """
        return self._db.write(self._append_local, self._check_body(body), self._check_now(now))

    def insert_remote(self, env: Envelope, record_id: Optional[bytes] = None) -> Deferred:
        """
        File a record another member originated (or our own, coming back).
        The caller has already checked C{env.proof}.  C{record_id}, if given,
        is the id the sender claimed and must match the body's hash
        (L{InvalidRecord} otherwise).  Fires with L{Inserted} after fsync, or
        fails with L{SequenceConflict} naming the origin if its slot already
        holds a different record.  Idempotent.
        """
        return self._db.write(self._insert_remote, self._check_envelope(env, record_id))

    def attach_proof(self, origin: bytes, seq: int, proof: bytes) -> Deferred:
        """Store the proof for a slot that has none yet; fires with whether it was stored."""
        self._check_proof(origin, seq, proof)
        return self._db.write(self._attach_proof, origin, seq, proof)

    def prune(self, now: float, limit: int = 10_000) -> Deferred:
        """
        Apply the retention rules at time C{now}, removing at most C{limit}
        slots in one transaction; fires with the number removed.  Call again
        while it returns C{limit}.
        """
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        return self._db.write(self._prune, self._check_now(now), limit)

    def append_local_sync(self, body: RecordBody, now: float) -> Appended:
        return self._db.write_sync(self._append_local, self._check_body(body), self._check_now(now))

    def insert_remote_sync(self, env: Envelope, record_id: Optional[bytes] = None) -> Inserted:
        return self._db.write_sync(self._insert_remote, self._check_envelope(env, record_id))

    def attach_proof_sync(self, origin: bytes, seq: int, proof: bytes) -> bool:
        self._check_proof(origin, seq, proof)
        return self._db.write_sync(self._attach_proof, origin, seq, proof)

    def prune_sync(self, now: float, limit: int = 10_000) -> int:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        return self._db.write_sync(self._prune, self._check_now(now), limit)

    # -- reads ------------------------------------------------------------------------------------

    def _entry(self, txn: Any, rid: bytes) -> Optional[LogEntry]:
        raw = txn.get(rid, db=self._records)
        if raw is None:
            return None
        origin, seq, received_at, position, _, body = self._parse_record(raw, rid)
        slot = txn.get(origin + u64(seq), db=self._slots)
        proof = b"" if slot is None else self._parse_slot(slot)[2]
        return LogEntry(rid, Envelope(origin, seq, received_at, body, proof), position)

    def get(self, record_id: bytes) -> Optional[LogEntry]:
        if not isinstance(record_id, bytes) or len(record_id) != 32:
            raise ValueError("record id must be 32 bytes")
        with self._db.read() as txn:
            return self._entry(txn, record_id)

    def __contains__(self, record_id: object) -> bool:
        with self._db.read() as txn:
            return isinstance(record_id, bytes) and txn.get(record_id, db=self._records) is not None

    def origin_state(self, origin: bytes) -> OriginState:
        with self._db.read() as txn:
            return self._origin_state(txn, origin)

    def have(self, origin: bytes) -> int:
        """Highest seq such that this node holds (or pruned) every slot 1..seq of C{origin}."""
        return self.origin_state(origin).have

    def origins(self) -> dict[bytes, OriginState]:
        with self._db.read() as txn:
            return {bytes(k): self._origin_state(txn, bytes(k)) for k in txn.cursor(db=self._origins).iternext(values=False)}

    def current_cut(self) -> dict[bytes, int]:
        """{origin: have}: the largest cut this node can evaluate now."""
        return {o: st.have for o, st in self.origins().items()}

    def _check_limit(self, limit: int) -> int:
        if not 1 <= limit <= self.limits.max_range:
            raise ValueError(f"limit must be in 1..{self.limits.max_range}, not {limit}")
        return limit

    def range(self, origin: bytes, from_seq: int, limit: int) -> list[Envelope]:
        """
        Up to C{limit} held slots of C{origin} with seq >= C{from_seq}, in seq
        order (gaps skipped), as envelopes to send to a peer catching up.
        """
        self._check_limit(limit)
        if not isinstance(origin, bytes) or len(origin) != HOST_KEY_SIZE or not 0 <= from_seq <= MAX_U64:
            raise ValueError("range needs a 32-byte origin and a sequence number")
        out: list[Envelope] = []
        with self._db.read() as txn:
            cur = txn.cursor(db=self._slots)
            if not cur.set_range(origin + u64(from_seq)):
                return out
            for key, raw in cur:
                if len(out) >= limit or key[:HOST_KEY_SIZE] != origin:
                    break
                rid, received_at, proof = self._parse_slot(raw)
                body = self._parse_record(txn.get(rid, db=self._records), rid)[5]
                out.append(Envelope(origin, int.from_bytes(key[HOST_KEY_SIZE:], "big"), received_at, body, proof))
        return out

    def topic_range(self, topic: str, from_position: int, limit: int) -> list[LogEntry]:
        """Up to C{limit} records of C{topic} at local positions >= C{from_position}."""
        self._check_limit(limit)
        t = topic.encode("utf-8")
        if not 1 <= len(t) <= MAX_TOPIC:
            raise ValueError(f"topic must be 1..{MAX_TOPIC} bytes of UTF-8")
        prefix = bytes((len(t),)) + t
        out: list[LogEntry] = []
        with self._db.read() as txn:
            cur = txn.cursor(db=self._by_topic)
            if not cur.set_range(prefix + u64(max(from_position, 0))):
                return out
            for key, rid in cur:
                if len(out) >= limit or not key.startswith(prefix):
                    break
                entry = self._entry(txn, bytes(rid))
                if entry is None:
                    raise CorruptStore(f"topic index points at missing record {bytes(rid).hex()[:16]}")
                out.append(entry)
        return out

    def topic_last(self, topic: str) -> int:
        """The last local position used in C{topic} (0 if none)."""
        with self._db.read() as txn:
            return self._get_u64(txn, topic.encode("utf-8"), self._topics)

    def records_in_cut(self, cut: Mapping[bytes, int]) -> list[LogEntry]:
        """
        The records in slots (o, 1..cut[o]) for every origin in C{cut}, each
        once, in (origin, seq) order of first appearance: the same list on
        every node that holds the cut.

        @raise IncompleteView: a slot in the cut is not held (yet) or was pruned.
        """
        out: list[LogEntry] = []
        seen: set[bytes] = set()
        with self._db.read() as txn:
            for origin in sorted(cut):
                upto = cut[origin]
                if upto <= 0:
                    continue
                st = self._origin_state(txn, origin)
                if upto > st.have or st.floor:
                    raise IncompleteView(origin, upto, st.have, st.floor)
                cur = txn.cursor(db=self._slots)
                cur.set_key(origin + u64(1))
                for n, (key, raw) in enumerate(cur, 1):
                    if n > upto:
                        break
                    rid = self._parse_slot(raw)[0]
                    if rid not in seen:
                        seen.add(rid)
                        entry = self._entry(txn, rid)
                        if entry is None:
                            raise CorruptStore(f"slot points at missing record {rid.hex()[:16]}")
                        out.append(entry)
        return out

    def digest(self) -> LogDigest:
        """The set hash and count of the held records (see the module docstring)."""
        with self._db.read() as txn:
            count = self._get_u64(txn, b"count", self._meta)
            state = txn.get(b"sethash", db=self._meta)
        return LogDigest(count, sethash.digest(state or sethash.EMPTY))

    def __len__(self) -> int:
        return self.digest().count
