# -*- test-case-name: tests.test_signing_service -*-
"""
The federation's checkpoint: a signature, by the federation's own key, over
what its log held at a cut, under which epoch and membership.

A checkpoint is signed like any client request, through a validation scheme
(C{checkpoint}), so every member checks it against its I{own} data:

 - request (L{CheckpointRequest}): the epoch and a I{cut}, a sequence
   number per origin (the coordinating node's L{current_cut}).  Not the
   whole-log digest: members hold different record sets while replication
   is in flight, so only a named cut is something they can agree on.
 - statement: version, epoch, the epoch's membership I{as this member
   knows it}, the cut, and the number and SHA-256 digest of the ids of the
   records in the cut (in the log's fixed cut order).  A member that lacks
   part of the cut raises L{MissingData} (the service catches up and asks
   again); one whose membership or records differ computes another
   statement and refuses with C{views-differ}.
 - message: C{tagged_hash("frostnode/validation/checkpoint", statement)},
   as for every scheme (L{scheme_message}).

Anyone holding a L{Checkpoint} can check it: recompute the message from the
statement and verify the signature under C{key} (BIP340 for BIP 445);
L{Checkpoint.verify} does, and L{decode_statement} reads the statement.

A node keeps the checkpoints it signed in a
L{frostnode.store.checkpoints.CheckpointStore} once
L{frostnode.signing.service.SigningService.keep_checkpoints} is given one
(L{Checkpoint.to_record} and L{Checkpoint.from_record} convert), so they
survive a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from frostnode.signing.suites import verify_signature
from frostnode.store.checkpoints import CheckpointRecord
from frostnode.validation.interface import Rejection, check_cut, scheme_message
from frostnode.wire import DecodeError, Reader, Writer

NAME = "checkpoint"
VERSION = 1
MAX_ORIGINS = 4096
MAX_MEMBERS = 1024


class CheckpointRequest(NamedTuple):
    epoch: int
    cut: Mapping[bytes, int]

    def encode(self) -> bytes:
        cut = check_cut(self.cut)
        w = Writer().u8(VERSION).u64(self.epoch).count(len(cut), MAX_ORIGINS)
        for origin, seq in cut.items():
            w.fixed(origin, 32).u64(seq)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "CheckpointRequest":
        r = Reader(data, "checkpoint request")
        r.version(VERSION)
        epoch = r.u64()
        n = r.count(MAX_ORIGINS, 40)
        cut: dict[bytes, int] = {}
        prev = b""
        for _ in range(n):
            origin, seq = r.fixed(32), r.u64()
            if origin <= prev:
                raise DecodeError("checkpoint cut origins are not strictly ascending")
            prev = origin
            cut[origin] = seq
        r.finish()
        return cls(epoch, cut)


def encode_statement(epoch: int, members: Sequence[bytes], cut: Mapping[bytes, int], count: int, digest: bytes) -> bytes:
    w = Writer().u8(VERSION).u64(epoch).count(len(members), MAX_MEMBERS)
    for m in members:
        w.fixed(m, 32)
    cut = check_cut(cut)
    w.count(len(cut), MAX_ORIGINS)
    for origin, seq in cut.items():
        w.fixed(origin, 32).u64(seq)
    return w.u64(count).fixed(digest, 32).to_bytes()


class Statement(NamedTuple):
    """
    What a checkpoint attests, decoded: a client holding a checkpoint reads
    the epoch, membership and cut from here, from the signed bytes
    themselves, rather than from fields beside them.

    @ivar count: records in the cut.
    @ivar digest: SHA-256 of their ids, in the log's cut order.
    """

    epoch: int
    members: tuple[bytes, ...]
    cut: Mapping[bytes, int]
    count: int
    digest: bytes


def decode_statement(statement: bytes) -> Statement:
    """
    The inverse of L{encode_statement}.

    @raise DecodeError: anything else (members or origins out of order,
        trailing bytes).
    """
    r = Reader(statement, "checkpoint statement")
    r.version(VERSION)
    epoch = r.u64()
    members = tuple(r.fixed(32) for _ in range(r.count(MAX_MEMBERS, 32)))
    if any(a >= b for a, b in zip(members, members[1:])):
        raise DecodeError("checkpoint statement: members are not strictly ascending")
    cut: dict[bytes, int] = {}
    prev = b""
    for _ in range(r.count(MAX_ORIGINS, 40)):
        origin, seq = r.fixed(32), r.u64()
        if origin <= prev:
            raise DecodeError("checkpoint statement: cut origins are not strictly ascending")
        prev = origin
        cut[origin] = seq
    count = r.u64()
    digest = r.fixed(32)
    r.finish()
    return Statement(epoch, members, cut, count, digest)


class CheckpointScheme:
    """
    The C{checkpoint} validation scheme.

    @param membership: epoch -> its members' host keys (sorted), or None if
        this member holds no key for that epoch.  The scheme's only
        configuration; it reads no clock.
    """

    name = NAME

    def __init__(self, membership: Callable[[int], Optional[Sequence[bytes]]]) -> None:
        self._membership = membership

    def statement(self, request: bytes, view: Any) -> bytes:
        try:
            req = CheckpointRequest.decode(request)
        except DecodeError as e:
            raise Rejection(str(e), code="malformed-request") from None
        members = self._membership(req.epoch)
        if members is None:
            raise Rejection(f"no key for epoch {req.epoch}", code="unknown-epoch")
        bodies = view.records_in_cut(req.cut)
        h = hashlib.sha256()
        for body in bodies:
            h.update(body.record_id)
        return encode_statement(req.epoch, members, req.cut, len(bodies), h.digest())

    def message(self, request: bytes, view: Any) -> bytes:
        return scheme_message(NAME, self.statement(request, view))


@dataclass(frozen=True)
class Checkpoint:
    """
    A signed checkpoint.

    @ivar statement: what was signed, in L{encode_statement} form; the
        message is C{scheme_message("checkpoint", statement)}.
    @ivar key: the key C{signature} verifies under (the Taproot output key).
    @ivar created: the coordinating node's clock when it was signed.
    @ivar divergent: members that refused (their view of the cut, the
        epoch or the membership differs, or they lacked records).
    @ivar seq: its number in this node's checkpoint history (1, 2, ...;
        see L{frostnode.store.checkpoints}); numbers differ between nodes.
    """

    epoch: int
    cut: Mapping[bytes, int]
    statement: bytes
    message: bytes
    signature: bytes
    key: bytes
    ciphersuite: str
    signers: tuple[bytes, ...]
    created: float
    divergent: tuple[bytes, ...] = ()
    seq: int = 0

    def verify(self) -> bool:
        """
        Whether the signature is the federation's over this statement: the
        message is the checkpoint scheme's message of C{statement}, the
        signature verifies under C{key}, and the statement names C{epoch}.
        """
        try:
            epoch = decode_statement(self.statement).epoch
        except DecodeError:
            return False
        return (epoch == self.epoch and scheme_message(NAME, self.statement) == self.message
                and verify_signature(self.ciphersuite, self.key, self.message, self.signature))

    def to_record(self) -> CheckpointRecord:
        return CheckpointRecord(self.epoch, dict(self.cut), self.statement, self.message, self.signature, self.key,
                                self.ciphersuite, tuple(self.signers), self.created, tuple(self.divergent), self.seq)

    @classmethod
    def from_record(cls, rec: CheckpointRecord) -> "Checkpoint":
        return cls(rec.epoch, dict(rec.cut), rec.statement, rec.message, rec.signature, rec.key, rec.ciphersuite,
                   tuple(rec.signers), rec.created, tuple(rec.divergent), rec.seq)
