# -*- test-case-name: tests.test_dkg_messages -*-
"""
The DKG's messages and their strict encodings (version 1).

Two transports, one owner (this module):

Reliable broadcast (L{frostnode.net.interfaces.IBroadcast}), tag then payload.
The sender is the broadcast's originator, never a field::

    tag      = "dkg" || session_id:32 || kind:u8 [|| identifier:u16]
    ROUND1     kind 1                         payload = ver:u8 || Round1Package
    COMPLAINT  kind 2, identifier = accused   payload = ver:u8 || reason:u8
    REVEAL     kind 3, identifier = accuser   payload = ver:u8 || share:32
    AGREE      kind 4                         payload = ver:u8 || agreement_hash:32 || sig:64
    ABORT      kind 5                         payload = ver:u8 || restarted:u8 || count:u32 ||
                                                         (identifier:u16 || reason:u8)*count

One broadcast instance is (originator, tag), so each member has exactly one
round-1 package, one agreement signature and one abort per session, and one
complaint per accused / one reveal per accuser: Bracha's consistency then
means every honest member sees the same one or none.

Point-to-point on C{CHANNEL_DKG} (the sender is the authenticated link)::

    msg       = ver:u8 || type:u8 || body
    SHARE       type 1   session_id:32 || share:32
    STATUS      type 2   epoch:u64 || session_id:32      (session_id zero: none)
    CERTIFICATE type 3   Certificate (see L{frostnode.dkg.transcript})
    SIGNATURES  type 4   session_id:32 || count:u32 || (identifier:u16 || sig:64)*count

Encoded with L{frostnode.wire}: decoders check every length and count
against the limits here before slicing and refuse trailing bytes.  Failures
raise a C{ValueError} (L{frostnode.wire.DecodeError}, or L{InvalidEncoding}
for a bad point or scalar) and the caller, who knows the sender, turns that
into blame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Union

from frostnode.crypto.errors import InvalidEncoding
from frostnode.crypto.group import scalar_from_bytes, scalar_to_bytes
from frostnode.dkg.transcript import MAX_MEMBERS, Certificate
from frostnode.wire import DecodeError, Reader, Writer

VERSION = 1
TAG_PREFIX = b"dkg"
#: Largest round-1 package (t = MAX_MEMBERS) and certificate we decode.
MAX_ROUND1 = 33 * MAX_MEMBERS + 65
MAX_CERTIFICATE = 1 + 16 + 32 * MAX_MEMBERS + 33 + 32 + 64 * MAX_MEMBERS
_TAG_BASE = len(TAG_PREFIX) + 32 + 1


class Kind(enum.IntEnum):
    """Broadcast message kinds (the last byte of the tag before any identifier)."""

    ROUND1 = 1
    COMPLAINT = 2
    REVEAL = 3
    AGREE = 4
    ABORT = 5


class ComplaintReason(enum.IntEnum):
    INVALID_SHARE = 1
    MISSING_SHARE = 2


class Reason(enum.IntEnum):
    """
    Why a member is excluded from the rest of a DKG run.

    I{Evidence} reasons can be checked by every member from reliably
    broadcast data, so every honest member reaches them alike; I{timing}
    reasons come from a local timeout.
    """

    INVALID_ROUND1 = 1       # evidence: undecodable package or bad proof of knowledge
    INVALID_REVEAL = 2       # evidence: revealed share fails its sender's commitments
    INVALID_AGREEMENT = 3    # evidence: agreement signature invalid on our transcript
    SILENT_ROUND1 = 4        # timing: no round-1 package before the deadline
    NO_REVEAL = 5            # timing: accused did not reveal before the deadline
    SILENT_AGREEMENT = 6     # timing: no agreement signature before the deadline
    REPEATED_RESTARTS = 7    # aborted too many sessions of the run after losing its state

    @property
    def is_evidence(self) -> bool:
        return self in (Reason.INVALID_ROUND1, Reason.INVALID_REVEAL, Reason.INVALID_AGREEMENT)


# -- broadcast ------------------------------------------------------------------

def tag(session_id: bytes, kind: Kind, identifier: int | None = None) -> bytes:
    t = TAG_PREFIX + session_id + bytes((kind,))
    if kind in (Kind.COMPLAINT, Kind.REVEAL):
        if identifier is None:
            raise ValueError(f"{kind.name} tags name an identifier")
        t += struct.pack(">H", identifier)
    elif identifier is not None:
        raise ValueError(f"{kind.name} tags have no identifier")
    return t


def parse_tag(t: bytes) -> tuple[bytes, Kind, int | None]:
    """(session_id, kind, identifier or None); L{InvalidEncoding} for anything else."""
    if not t.startswith(TAG_PREFIX) or len(t) < _TAG_BASE:
        raise InvalidEncoding("not a DKG tag")
    sid = bytes(t[len(TAG_PREFIX):len(TAG_PREFIX) + 32])
    try:
        kind = Kind(t[_TAG_BASE - 1])
    except ValueError:
        raise InvalidEncoding(f"unknown DKG message kind {t[_TAG_BASE - 1]}") from None
    if kind in (Kind.COMPLAINT, Kind.REVEAL):
        if len(t) != _TAG_BASE + 2:
            raise InvalidEncoding(f"{kind.name} tag has the wrong length")
        return sid, kind, struct.unpack_from(">H", t, _TAG_BASE)[0]
    if len(t) != _TAG_BASE:
        raise InvalidEncoding(f"{kind.name} tag has the wrong length")
    return sid, kind, None


def _reader(payload: bytes, what: str) -> Reader:
    r = Reader(payload, what)
    r.version(VERSION)
    return r


def encode_round1(package_bytes: bytes) -> bytes:
    return Writer().u8(VERSION).raw(package_bytes).to_bytes()


def decode_round1(payload: bytes) -> bytes:
    """The Round1Package bytes (the caller decodes them with its t)."""
    return _reader(payload, "round-1 package").rest(MAX_ROUND1)


def encode_complaint(reason: ComplaintReason) -> bytes:
    return Writer().u8(VERSION).u8(reason).to_bytes()


def decode_complaint(payload: bytes) -> ComplaintReason:
    r = _reader(payload, "complaint")
    code = r.u8()
    r.finish()
    try:
        return ComplaintReason(code)
    except ValueError:
        raise DecodeError(f"unknown complaint reason {code}") from None


def encode_reveal(share: int) -> bytes:
    return Writer().u8(VERSION).fixed(scalar_to_bytes(share), 32).to_bytes()


def decode_reveal(payload: bytes) -> int:
    r = _reader(payload, "reveal")
    share = r.fixed(32)
    r.finish()
    return scalar_from_bytes(share)


def encode_agree(agreement_hash: bytes, signature: bytes) -> bytes:
    return Writer().u8(VERSION).fixed(agreement_hash, 32).fixed(signature, 64).to_bytes()


def decode_agree(payload: bytes) -> tuple[bytes, bytes]:
    r = _reader(payload, "agreement signature")
    h, sig = r.fixed(32), r.fixed(64)
    r.finish()
    return h, sig


def encode_abort(restarted: bool, exclusions: dict[int, Reason]) -> bytes:
    """
    C{restarted}: the author lost its session state (a crash) and will never
    sign this session; otherwise the abort reports the author's own
    exclusions, for the record.
    """
    w = Writer().u8(VERSION).flag(restarted).count(len(exclusions), MAX_MEMBERS)
    for ident, why in sorted(exclusions.items()):
        w.u16(ident).u8(why)
    return w.to_bytes()


def decode_abort(payload: bytes) -> tuple[bool, dict[int, Reason]]:
    r = _reader(payload, "abort")
    restarted = r.flag()
    out: dict[int, Reason] = {}
    for _ in range(r.count(MAX_MEMBERS, 3)):
        ident, why = r.u16(), r.u8()
        try:
            out[ident] = Reason(why)
        except ValueError:
            raise DecodeError(f"unknown exclusion reason {why}") from None
    r.finish()
    return restarted, out


# -- point to point --------------------------------------------------------------

class DirectType(enum.IntEnum):
    SHARE = 1
    STATUS = 2
    CERTIFICATE = 3
    SIGNATURES = 4


@dataclass(frozen=True)
class Share:
    """
    f_i(j), our secret polynomial at the recipient's identifier: with t of
    them anyone holds the recipient's key share, so it is left out of the
    repr (and thereby of logs and test-failure messages).
    """

    session_id: bytes
    share: int = field(repr=False)


@dataclass(frozen=True)
class StatusRequest:
    """
    "What do you know about epoch C{epoch}?"  A peer answers with its
    certificates for that epoch and the agreement signatures it holds for
    C{session_id} (all zero: none).
    """

    epoch: int
    session_id: bytes


@dataclass(frozen=True)
class CertificateMessage:
    certificate: Certificate


@dataclass(frozen=True)
class Signatures:
    session_id: bytes
    signatures: dict[int, bytes]


Direct = Union[Share, StatusRequest, CertificateMessage, Signatures]

NO_SESSION = bytes(32)


def encode_direct(msg: Direct) -> bytes:
    w = Writer().u8(VERSION)
    if isinstance(msg, Share):
        w.u8(DirectType.SHARE).fixed(msg.session_id, 32).fixed(scalar_to_bytes(msg.share), 32)
    elif isinstance(msg, StatusRequest):
        w.u8(DirectType.STATUS).u64(msg.epoch).fixed(msg.session_id, 32)
    elif isinstance(msg, CertificateMessage):
        w.u8(DirectType.CERTIFICATE).raw(msg.certificate.encode())
    elif isinstance(msg, Signatures):
        w.u8(DirectType.SIGNATURES).fixed(msg.session_id, 32).count(len(msg.signatures), MAX_MEMBERS)
        for ident, sig in sorted(msg.signatures.items()):
            w.u16(ident).fixed(sig, 64)
    else:
        raise TypeError(f"not a DKG direct message: {msg!r}")
    return w.to_bytes()


def decode_direct(data: bytes) -> Direct:
    """Parse a point-to-point DKG message; L{DecodeError} or L{InvalidEncoding} (both C{ValueError}) if malformed."""
    r = _reader(data, "DKG message")
    code = r.u8()
    try:
        kind = DirectType(code)
    except ValueError:
        raise DecodeError(f"unknown DKG message type {code}") from None
    out: Direct
    if kind is DirectType.SHARE:
        out = Share(r.fixed(32), scalar_from_bytes(r.fixed(32)))
    elif kind is DirectType.STATUS:
        out = StatusRequest(r.u64(), r.fixed(32))
    elif kind is DirectType.CERTIFICATE:
        return CertificateMessage(Certificate.decode(r.rest(MAX_CERTIFICATE)))
    else:
        sid = r.fixed(32)
        sigs: dict[int, bytes] = {}
        for _ in range(r.count(MAX_MEMBERS, 66)):
            ident = r.u16()
            if ident in sigs:
                raise DecodeError(f"identifier {ident} appears twice")
            sigs[ident] = r.fixed(64)
        out = Signatures(sid, sigs)
    r.finish()
    return out
