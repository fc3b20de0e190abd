# -*- test-case-name: tests.test_dkg_messages -*-
"""
What a DKG session I{is}, and what its members sign to agree on its outcome.

Session id
==========
A session is fixed by four things every member knows without talking: the
epoch being generated, the attempt counter within that epoch's run (0 first,
+1 on every restart), the threshold t and the sorted list of member host keys.
Its id is::

    session_id = tagged_hash("frostnode/dkg/session",
                             version:u8 || epoch:u64 || attempt:u32 || t:u16 ||
                             n:u16 || host_key_1 || ... || host_key_n)

with the host keys (32-byte x-only) in ascending byte order.  The id is the
FROST context bound into every proof of knowledge, so a round-1 package cannot
be replayed into another session, and it prefixes every broadcast tag.

FROST identifiers: the member at 0-based position i of the sorted list is
identifier i + 1 (BIP 445 id i).  A restart without some members re-derives
the identifiers from the shorter list, so they are always 1..n'.

Agreement message
=================
What each member signs with its host key (BIP340) once it holds valid shares
from everyone::

    commitments_hash = tagged_hash("frostnode/dkg/commitments",
                                   C_1,0 || ... || C_1,t-1 || ... || C_n,t-1)
    agreement_hash   = tagged_hash("frostnode/dkg/agreement",
                                   session_id || t:u16 || n:u16 || host keys ||
                                   internal_group_key:33 || commitments_hash)

The commitments are hashed in identifier order.  The group key is implied by the
commitments; it is included so that a certificate shown to someone
without the commitments (an excluded member, a client) still says which key
the n signers agreed on.

Certificate
===========
The n signatures of every member on one agreement hash: with the
session parameters, the internal key and the commitments hash, it is
self-contained (anyone who knows the members' host keys can check it).  Any
two honest members hold a certificate for the same session only on the same
transcript, because each signed what it saw itself.
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping, Sequence

from frostnode.crypto.errors import ProtocolError
from frostnode.crypto.group import Point, point_from_bytes
from frostnode.crypto.hashes import tagged_hash
from frostnode.identity import verify_host_signature
from frostnode.wire import DecodeError, Reader, Writer

SESSION_TAG = "frostnode/dkg/session"
COMMITMENTS_TAG = "frostnode/dkg/commitments"
AGREEMENT_TAG = "frostnode/dkg/agreement"
SESSION_VERSION = 1
CERTIFICATE_VERSION = 1

#: The largest federation a session encodes (identifiers are u16 on the wire).
MAX_MEMBERS = 1000


class InvalidCertificate(ProtocolError):
    """A certificate whose signature by C{culprit} (a host key) does not verify, or that does not match our transcript."""


class SessionParams:
    """
    The parameters that fix one DKG session, and its id.

    Instances are immutable and hashable; the id is computed once.

    @ivar epoch: the epoch this run generates a key for (previous epoch + 1).
    @ivar attempt: restarts so far in this epoch's run.
    @ivar threshold: t, the number of members needed to sign.
    @ivar members: host keys, sorted ascending, distinct.
    """

    __slots__ = ("epoch", "attempt", "threshold", "members", "session_id", "_index")

    def __init__(self, epoch: int, attempt: int, threshold: int, members: Iterable[bytes]) -> None:
        ms = tuple(sorted(bytes(m) for m in members))
        if not 0 <= epoch < 2**64:
            raise ValueError(f"epoch {epoch} out of range")
        if not 0 <= attempt < 2**32:
            raise ValueError(f"attempt {attempt} out of range")
        if any(len(m) != 32 for m in ms):
            raise ValueError("host keys must be 32-byte x-only keys")
        if len(set(ms)) != len(ms):
            raise ValueError("duplicate host key in the member list")
        if not 2 <= len(ms) <= MAX_MEMBERS:
            raise ValueError(f"a DKG needs 2..{MAX_MEMBERS} members, got {len(ms)}")
        if not 1 <= threshold <= len(ms):
            raise ValueError(f"threshold {threshold} not in 1..{len(ms)}")
        object.__setattr__(self, "epoch", epoch)
        object.__setattr__(self, "attempt", attempt)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "members", ms)
        object.__setattr__(self, "_index", {m: i + 1 for i, m in enumerate(ms)})
        enc = struct.pack(">BQIHH", SESSION_VERSION, epoch, attempt, threshold, len(ms)) + b"".join(ms)
        object.__setattr__(self, "session_id", tagged_hash(SESSION_TAG, enc))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SessionParams is immutable")

    @property
    def n(self) -> int:
        return len(self.members)

    def identifier(self, host_key: bytes) -> int:
        """The FROST identifier (1-based position) of a member; C{KeyError} for a non-member."""
        return self._index[host_key]

    def host_key(self, identifier: int) -> bytes:
        if not 1 <= identifier <= len(self.members):
            raise KeyError(identifier)
        return self.members[identifier - 1]

    def __contains__(self, host_key: object) -> bool:
        return host_key in self._index

    def identifiers(self) -> range:
        return range(1, len(self.members) + 1)

    def restart(self, excluded: Iterable[bytes]) -> "SessionParams":
        """
        The next attempt: same epoch and threshold, C{attempt + 1}, without C{excluded}.

        @raise ValueError: fewer than two or fewer than t members would remain.
        """
        ex = set(excluded)
        return SessionParams(self.epoch, self.attempt + 1, self.threshold, (m for m in self.members if m not in ex))

    def encode(self) -> bytes:
        w = Writer().u64(self.epoch).u32(self.attempt).u16(self.threshold).u16(self.n)
        for h in self.members:
            w.fixed(h, 32)
        return w.to_bytes()

    @classmethod
    def read(cls, r: Reader) -> "SessionParams":
        """Read parameters from C{r} (a message that embeds them); C{ValueError} if malformed."""
        epoch, attempt, t, n = r.u64(), r.u32(), r.u16(), r.u16()
        if n > MAX_MEMBERS:
            raise DecodeError(f"{n} members is over the limit of {MAX_MEMBERS}")
        members = [r.fixed(32) for _ in range(n)]
        if any(a >= b for a, b in zip(members, members[1:])):
            raise DecodeError("member list is not sorted and distinct")
        try:
            return cls(epoch, attempt, t, members)
        except ValueError as e:
            raise DecodeError(str(e)) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionParams):
            return NotImplemented
        return self.session_id == other.session_id

    def __hash__(self) -> int:
        return hash(self.session_id)

    def __repr__(self) -> str:
        return (f"SessionParams(epoch={self.epoch}, attempt={self.attempt}, t={self.threshold}, "
                f"n={self.n}, id={self.session_id.hex()[:16]})")


def commitments_hash(commitments: Sequence[Sequence[Point]]) -> bytes:
    """Hash of every member's commitments, in identifier order."""
    return tagged_hash(COMMITMENTS_TAG, b"".join(c.encode() for cs in commitments for c in cs))


def agreement_hash(params: SessionParams, group_key: Point, commitments_digest: bytes) -> bytes:
    """The 32-byte message each member signs with its host key in the agreement round."""
    if len(commitments_digest) != 32:
        raise ValueError("commitments hash must be 32 bytes")
    enc = (params.session_id + struct.pack(">HH", params.threshold, params.n) + b"".join(params.members)
           + group_key.encode() + commitments_digest)
    return tagged_hash(AGREEMENT_TAG, enc)


class Certificate:
    """
    Proof that every member of a session agreed on its outcome.

    @ivar params: the session.
    @ivar group_key: the Taproot-safe internal key the session produced.
    @ivar commitments_hash: L{commitments_hash} of the session's commitments.
    @ivar signatures: one BIP340 signature per member, in identifier order.
    """

    __slots__ = ("params", "group_key", "commitments_hash", "signatures")

    def __init__(self, params: SessionParams, group_key: Point, commitments_digest: bytes, signatures: Sequence[bytes]) -> None:
        if len(signatures) != params.n:
            raise ValueError(f"a certificate needs {params.n} signatures, got {len(signatures)}")
        if len(commitments_digest) != 32:
            raise ValueError("commitments hash must be 32 bytes")
        self.params = params
        self.group_key = group_key
        self.commitments_hash = bytes(commitments_digest)
        self.signatures = tuple(bytes(s) for s in signatures)

    @property
    def message(self) -> bytes:
        return agreement_hash(self.params, self.group_key, self.commitments_hash)

    def verify(self) -> None:
        """
        Check every signature against its member's host key.

        @raise InvalidCertificate: naming the first member whose signature fails.
        """
        msg = self.message
        for host_key, sig in zip(self.params.members, self.signatures):
            if not verify_host_signature(host_key, msg, sig):
                raise InvalidCertificate(host_key, "agreement signature does not verify")

    def encode(self) -> bytes:
        w = Writer().u8(CERTIFICATE_VERSION).raw(self.params.encode())
        w.fixed(self.group_key.encode(), 33).fixed(self.commitments_hash, 32)
        for sig in self.signatures:
            w.fixed(sig, 64)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "Certificate":
        """Strict parse (no trailing bytes); does not verify the signatures.  C{ValueError} if malformed."""
        r = Reader(data, "certificate")
        r.version(CERTIFICATE_VERSION)
        params = SessionParams.read(r)
        gk = point_from_bytes(r.fixed(33))
        ch = r.fixed(32)
        sigs = [r.fixed(64) for _ in range(params.n)]
        r.finish()
        return cls(params, gk, ch, sigs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())

    def __repr__(self) -> str:
        return f"Certificate({self.params!r}, key={self.group_key.encode().hex()[:16]})"


def certificate_from(params: SessionParams, group_key: Point, commitments_digest: bytes,
                     signatures: Mapping[bytes, bytes]) -> Certificate:
    """Assemble a certificate from signatures keyed by host key (all members must be present)."""
    return Certificate(params, group_key, commitments_digest, [signatures[m] for m in params.members])
