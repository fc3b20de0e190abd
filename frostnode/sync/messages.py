# -*- test-case-name: tests.test_sync_messages -*-
"""
The sync layer's bytes: broadcast batches, the per-slot proof, the signed
batch statement, and the three catch-up messages.  No I/O; every decoder
checks lengths and counts against the caller's limits before slicing
(L{frostnode.wire}), and rejects trailing bytes.

Batch statement
===============
The origin signs, with its BIP340 host key, one statement per batch::

    tagged_hash("frostnode/sync/batch/v1",
                origin:32 || first_seq:u64 || count:u32 ||
                (record_id:32 || received_us:u64) * count)

It binds the records' ids (so their content), their slots (origin,
first_seq + i) and the origin's receive times (which retention by age reads,
so every node must agree on them).  A node that holds the records of a batch
can recompute the statement; it needs nothing else but the signature.

Proof (L{Envelope.proof} of every slot of the batch, 77 bytes)::

    version:u8 (1) || first_seq:u64 || count:u32 || signature:64

Each slot of a batch stores the same proof: a verifier needs all C{count}
records of the batch, which is why catch-up serves whole batches.

Broadcast payload (IBroadcast tag C{sync/<first>-<last>}, decimal)::

    version:u8 (1) || first_seq:u64 || signature:64 || count:u32 ||
    (received_us:u64 || body:var_bytes) * count

Catch-up messages (L{frostnode.net.interfaces.CHANNEL_SYNC})::

    SUMMARY = version:u8 || 1:u8 || records:u64 || digest:32 || n:u32 ||
              (origin:32 || have:u64 || max_seq:u64) * n
    REQUEST = version:u8 || 2:u8 || origin:32 || from_seq:u64 || limit:u32
    PAGE    = version:u8 || 3:u8 || origin:32 || from_seq:u64 || have:u64 ||
              n:u32 || envelope:var_bytes * n

C{PAGE.from_seq} repeats the request's, so an answer is matched to its
question; C{PAGE.have} is the server's C{have} for the origin, a hint.
Envelopes are L{frostnode.store.log.Envelope.encode}.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Sequence, Union

from frostnode.crypto.hashes import tagged_hash
from frostnode.identity import verify_host_signature
from frostnode.store.codec import micros
from frostnode.store.log import Envelope, LogLimits, RecordBody
from frostnode.sync.errors import BadPage
from frostnode.wire import MAX_U32, DecodeError, Reader, Writer

WIRE_VERSION = 1
BATCH_VERSION = 1
PROOF_VERSION = 1
STATEMENT_TAG = "frostnode/sync/batch/v1"
TAG_PREFIX = b"sync/"

SUMMARY = 1
REQUEST = 2
PAGE = 3

SIGNATURE_SIZE = 64
KEY_SIZE = 32
_PROOF = struct.Struct(">BQI64s")
PROOF_SIZE = _PROOF.size
_ITEM = struct.Struct(">32sQ")
_COUNT = struct.Struct(">I")
#: Smallest encoded envelope: version, origin, seq, time, empty proof, smallest body.
_MIN_ENVELOPE = 1 + 32 + 8 + 8 + 4 + (1 + 32 + 4 + 1 + 8 + 4 + 4)
#: Smallest batch entry: time and a body length.
_MIN_ENTRY = 8 + 4


class Proof(NamedTuple):
    """The origin's signature over a batch (first_seq .. first_seq + count - 1)."""

    first_seq: int
    count: int
    signature: bytes

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def encode(self) -> bytes:
        return _PROOF.pack(PROOF_VERSION, self.first_seq, self.count, self.signature)


def decode_proof(data: bytes) -> Proof:
    """
    Parse a slot's proof.

    @raise DecodeError: wrong size or version, or an empty batch.
    """
    if len(data) != PROOF_SIZE:
        raise DecodeError(f"proof is {len(data)} bytes, not {PROOF_SIZE}")
    version, first, count, sig = _PROOF.unpack(data)
    if version != PROOF_VERSION:
        raise DecodeError(f"proof: unsupported version {version}")
    if first < 1 or count < 1 or first + count - 1 > 0xFFFFFFFFFFFFFFFF:
        raise DecodeError(f"proof: impossible batch of {count} from seq {first}")
    return Proof(first, count, sig)


def batch_statement(origin: bytes, first_seq: int, items: Sequence[tuple[bytes, int]]) -> bytes:
    """
    The 32-byte message the origin signs for a batch: C{items} are
    C{(record_id, received_us)} for seqs C{first_seq, first_seq + 1, ...}.
    """
    if len(origin) != KEY_SIZE:
        raise ValueError("origin must be a 32-byte host key")
    parts = [origin, struct.pack(">QI", first_seq, len(items))]
    pack = _ITEM.pack
    parts.extend(pack(rid, us) for rid, us in items)
    return tagged_hash(STATEMENT_TAG, b"".join(parts))


def batch_tag(first_seq: int, last_seq: int) -> bytes:
    """The broadcast tag of a batch: C{sync/<first>-<last>}."""
    return b"%s%d-%d" % (TAG_PREFIX, first_seq, last_seq)


# -- broadcast batches ----------------------------------------------------------------


class Batch(NamedTuple):
    """A decoded broadcast batch: C{entries} are C{(received_us, body)} for seqs from C{first_seq}."""

    first_seq: int
    signature: bytes
    entries: list[tuple[int, RecordBody]]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1

    def items(self) -> list[tuple[bytes, int]]:
        return [(body.record_id, us) for us, body in self.entries]

    def proof(self) -> Proof:
        return Proof(self.first_seq, len(self.entries), self.signature)


def encode_batch(first_seq: int, signature: bytes, entries: Sequence[tuple[int, RecordBody]]) -> bytes:
    if not entries:
        raise ValueError("a batch holds at least one record")
    w = Writer().u8(BATCH_VERSION).u64(first_seq).fixed(signature, SIGNATURE_SIZE).count(len(entries), MAX_U32)
    for us, body in entries:
        w.u64(us).var_bytes(body.canonical, MAX_U32)
    return w.to_bytes()


def encode_batch_size(entries: Sequence[tuple[int, RecordBody]]) -> int:
    """Bytes L{encode_batch} will produce, without building them."""
    return 1 + 8 + SIGNATURE_SIZE + 4 + sum(12 + len(body.canonical) for _, body in entries)


def decode_batch(data: bytes, limits: LogLimits, max_records: int) -> Batch:
    """
    Parse a broadcast batch; each body is decoded (and so hashed) against
    C{limits}.

    @raise DecodeError: malformed, over a limit, or trailing bytes.
    """
    r = Reader(data, "sync batch")
    r.version(BATCH_VERSION)
    first = r.u64()
    sig = r.fixed(SIGNATURE_SIZE)
    n = r.count(max_records, _MIN_ENTRY)
    if n == 0:
        raise DecodeError("sync batch: no records")
    if first < 1 or first + n - 1 > 0xFFFFFFFFFFFFFFFF:
        raise DecodeError(f"sync batch: impossible seq range from {first}")
    entries = []
    max_body = limits.max_payload + limits.max_nonce + 1024
    for _ in range(n):
        us = r.u64()
        entries.append((us, RecordBody.decode(r.var_bytes(max_body), limits)))
    r.finish()
    return Batch(first, sig, entries)


def verify_batch(origin: bytes, tag: bytes, batch: Batch) -> Optional[str]:
    """None if C{batch} is C{origin}'s signed batch for C{tag}, else why not."""
    if tag != batch_tag(batch.first_seq, batch.last_seq):
        return f"tag {tag!r} does not name the batch's seqs {batch.first_seq}-{batch.last_seq}"
    if not verify_host_signature(origin, batch_statement(origin, batch.first_seq, batch.items()), batch.signature):
        return f"origin signature over seqs {batch.first_seq}-{batch.last_seq} does not verify"
    return None


# -- catch-up messages ------------------------------------------------------------------


class OriginSummary(NamedTuple):
    have: int
    max_seq: int


class Summary(NamedTuple):
    """A member's log position: its digest, and per origin C{have} and C{max_seq}."""

    records: int
    digest: bytes
    origins: dict[bytes, OriginSummary]


class Request(NamedTuple):
    """Ask for C{origin}'s slots from C{from_seq}, at most about C{limit} of them."""

    origin: bytes
    from_seq: int
    limit: int


class Page(NamedTuple):
    """The answer to a L{Request}: envelopes still encoded (the service decodes them against its limits)."""

    origin: bytes
    from_seq: int
    have: int
    envelopes: list[bytes]


SyncMessage = Union[Summary, Request, Page]


def encode_summary(records: int, digest: bytes, origins: Sequence[tuple[bytes, int, int]], max_origins: int) -> bytes:
    w = Writer().u8(WIRE_VERSION).u8(SUMMARY).u64(records).fixed(digest, 32).count(len(origins), max_origins)
    for origin, have, max_seq in origins:
        w.fixed(origin, KEY_SIZE).u64(have).u64(max_seq)
    return w.to_bytes()


def encode_request(origin: bytes, from_seq: int, limit: int) -> bytes:
    return Writer().u8(WIRE_VERSION).u8(REQUEST).fixed(origin, KEY_SIZE).u64(from_seq).u32(limit).to_bytes()


def encode_page(origin: bytes, from_seq: int, have: int, envelopes: Sequence[bytes], max_records: int) -> bytes:
    w = Writer().u8(WIRE_VERSION).u8(PAGE).fixed(origin, KEY_SIZE).u64(from_seq).u64(have)
    w.count(len(envelopes), max_records)
    for e in envelopes:
        w.var_bytes(e, MAX_U32)
    return w.to_bytes()


def page_overhead() -> int:
    """Bytes of a PAGE besides its envelopes' lengths and bytes."""
    return 1 + 1 + KEY_SIZE + 8 + 8 + 4


def decode_message(data: bytes, *, max_origins: int, max_page_records: int, max_envelope: int) -> SyncMessage:
    """
    Parse one catch-up message.

    @param max_origins: most origins a SUMMARY may list.
    @param max_page_records: most envelopes a PAGE may carry.
    @param max_envelope: largest encoded envelope accepted.
    @raise DecodeError: naming what is wrong.
    """
    r = Reader(data, "sync message")
    r.version(WIRE_VERSION)
    kind = r.u8()
    if kind == SUMMARY:
        records = r.u64()
        digest = r.fixed(32)
        n = r.count(max_origins, KEY_SIZE + 16)
        origins: dict[bytes, OriginSummary] = {}
        for _ in range(n):
            origin = r.fixed(KEY_SIZE)
            have, max_seq = r.u64(), r.u64()
            if origin in origins:
                raise DecodeError("sync summary: origin listed twice")
            if have > max_seq:
                raise DecodeError(f"sync summary: have {have} above max_seq {max_seq}")
            origins[origin] = OriginSummary(have, max_seq)
        r.finish()
        return Summary(records, digest, origins)
    if kind == REQUEST:
        origin = r.fixed(KEY_SIZE)
        from_seq, limit = r.u64(), r.u32()
        r.finish()
        if from_seq < 1 or limit < 1:
            raise DecodeError(f"sync request: from_seq {from_seq} and limit {limit} must be positive")
        return Request(origin, from_seq, limit)
    if kind == PAGE:
        origin = r.fixed(KEY_SIZE)
        from_seq, have = r.u64(), r.u64()
        n = r.count(max_page_records, 4 + _MIN_ENVELOPE)
        envelopes = [r.var_bytes(max_envelope) for _ in range(n)]
        r.finish()
        return Page(origin, from_seq, have, envelopes)
    raise DecodeError(f"sync message: unknown kind {kind}")


# -- pages -----------------------------------------------------------------------------------


def servable_prefix(envelopes: Sequence[Envelope], max_bytes: int) -> list[bytes]:
    """
    The encodings of the longest prefix of C{envelopes} (one origin, read
    from the log in seq order) that a verifier can check on its own: seqs
    contiguous, and every slot's proof naming a batch that lies wholly inside
    the prefix.  Stops before C{max_bytes} of encodings, except that a first
    complete batch is always included.  Slots without a valid proof end the
    prefix.
    """
    out: list[bytes] = []
    good = 0
    size = 0
    if not envelopes:
        return out
    lo = envelopes[0].seq
    need = 0
    proofs: dict[bytes, Proof] = {}
    for i, env in enumerate(envelopes):
        if env.seq != lo + i:
            break
        p = proofs.get(env.proof)
        if p is None:
            try:
                p = decode_proof(env.proof)
            except DecodeError:
                break
            proofs[env.proof] = p
        if p.first_seq < lo or not p.first_seq <= env.seq <= p.last_seq:
            break
        enc = env.encode()
        size += len(enc) + 4
        if size > max_bytes and good:
            break
        out.append(enc)
        need = max(need, p.last_seq)
        if need == env.seq:
            good = len(out)
    return out[:good]


def verify_page(peer: bytes, origin: bytes, envelopes: Sequence[Envelope], max_proofs: int) -> None:
    """
    Check a page of C{origin}'s envelopes served by C{peer}: contiguous seqs,
    every slot's batch wholly in the page, every batch's origin signature.

    @raise BadPage: naming C{peer}.
    """
    if not envelopes:
        return
    lo = envelopes[0].seq
    hi = lo + len(envelopes) - 1
    for i, env in enumerate(envelopes):
        if env.origin != origin:
            raise BadPage(peer, f"page for origin {origin.hex()[:16]} holds a record of {env.origin.hex()[:16]}")
        if env.seq != lo + i:
            raise BadPage(peer, f"page seqs are not contiguous at {env.seq}")
    proofs: dict[bytes, Proof] = {}
    for env in envelopes:
        p = proofs.get(env.proof)
        if p is None:
            try:
                p = decode_proof(env.proof)
            except DecodeError as e:
                raise BadPage(peer, f"seq {env.seq}: {e}") from None
            if len(proofs) >= max_proofs:
                raise BadPage(peer, f"page holds more than {max_proofs} batches")
            proofs[env.proof] = p
        if not p.first_seq <= env.seq <= p.last_seq:
            raise BadPage(peer, f"seq {env.seq} is outside its proof's batch {p.first_seq}-{p.last_seq}")
        if p.first_seq < lo or p.last_seq > hi:
            raise BadPage(peer, f"batch {p.first_seq}-{p.last_seq} is not wholly in the page {lo}-{hi}")
    for p in proofs.values():
        part = envelopes[p.first_seq - lo:p.last_seq - lo + 1]
        items = [(e.record_id, micros(e.received_at)) for e in part]
        if not verify_host_signature(origin, batch_statement(origin, p.first_seq, items), p.signature):
            raise BadPage(peer, f"origin {origin.hex()[:16]}'s signature over seqs {p.first_seq}-{p.last_seq} "
                                f"does not verify (altered or forged records)")
