# -*- test-case-name: tests.test_signing_messages -*-
"""
The signing protocol's messages on L{frostnode.net.interfaces.CHANNEL_SIGN}.

Every message is C{version (u8) || type (u8) || body}, encoded with
L{frostnode.wire} (fixed-width integers, u32-prefixed byte strings, limits
checked before slicing, no trailing bytes), so one message has exactly one
encoding.  Types:

 - L{NonceRequest} (coordinator -> signer): "send me up to C{want} nonce
   commitments of C{epoch}"; C{reset} asks for every unspent one already
   issued to this coordinator too (it restarted and lost its pool).
 - L{NonceBatch} (signer -> coordinator): (nonce id, commitment) pairs.
 - L{SignRequest} (coordinator -> every selected signer, and in audit mode
   to every member): one ROAST session.  The same bytes go to every
   recipient; a recipient finds its own entry by index, and a member that is
   not in C{signers} only validates (replies with a L{Verdict}).  It names
   the epoch I{and} that epoch's output key: an epoch can hold two certified
   DKG sessions while members converge on the newest, and a member whose
   key for the epoch differs must say so (C{key-mismatch}) rather than sign
   with its own key a share the coordinator would check against another.
 - L{SignShare} (signer -> coordinator): a 32-byte signature share.
 - L{Verdict} (member -> coordinator): agreement (audit) or a refusal with a
   reason, signed with the member's host key (L{verdict_message}) so the
   coordinator can show a client I{who} said what.

Nonce ids are L{NONCE_ID_SIZE} bytes: the coordinator's host key, then 16
random bytes (see L{frostnode.signing.pool}).

The sender of every message is the authenticated link's member; nothing here
names the sender.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Union

from frostnode.crypto.hashes import tagged_hash
from frostnode.signing.suites import AGGNONCE_SIZE, COMMITMENT_SIZE, SHARE_SIZE, SUITE_CODES, SUITE_NAMES
from frostnode.wire import DecodeError, Reader, Writer

VERSION = 1

T_NONCE_REQUEST = 1
T_NONCE_BATCH = 2
T_SIGN_REQUEST = 3
T_SIGN_SHARE = 4
T_VERDICT = 5

REQUEST_ID_SIZE = 16
NONCE_ID_SIZE = 48
DIGEST_SIZE = 32
SIGNATURE_SIZE = 64

MAX_SCHEME_NAME = 64
#: Largest scheme request (the bytes a validation scheme interprets).
MAX_SCHEME_REQUEST = 256 * 1024
MAX_SIGNERS = 1024
MAX_NONCE_BATCH = 1024
MAX_REASON = 512

KEY_SIZE = 32

#: Verdict kinds.  C{key-mismatch}: the member's current key for the epoch is
#: not the one the request names (it is not serving that key; nothing was
#: reserved): unavailable, not a disagreement about data.
AGREE = 0
VIEWS_DIFFER = 1
VALIDATION_FAILED = 2
UNAVAILABLE = 3
KEY_MISMATCH = 4
VERDICT_NAMES = {AGREE: "agree", VIEWS_DIFFER: "views-differ", VALIDATION_FAILED: "validation-failed",
                 UNAVAILABLE: "unavailable", KEY_MISMATCH: "key-mismatch"}

TAG_VERDICT = "frostnode/sign-verdict"
TAG_REQUEST = "frostnode/sign-request"

_ENTRY_SIZE = 2 + NONCE_ID_SIZE + COMMITMENT_SIZE


def message_digest(message: bytes) -> bytes:
    """The digest members compare: SHA-256 of the exact bytes to sign."""
    return hashlib.sha256(message).digest()


def _scheme_name(name: str) -> bytes:
    if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= MAX_SCHEME_NAME:
        raise ValueError(f"scheme names are 1..{MAX_SCHEME_NAME} ASCII characters, not {name!r}")
    return name.encode("ascii")


def _read_scheme_name(r: Reader) -> str:
    raw = r.var_bytes(MAX_SCHEME_NAME)
    if not raw:
        raise DecodeError("empty scheme name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("scheme name is not ASCII") from None


class NonceRequest(NamedTuple):
    epoch: int
    want: int
    reset: bool

    def encode(self) -> bytes:
        return Writer().u8(VERSION).u8(T_NONCE_REQUEST).u64(self.epoch).u16(self.want).flag(self.reset).to_bytes()


class NonceBatch(NamedTuple):
    epoch: int
    nonces: tuple[tuple[bytes, bytes], ...]

    def encode(self) -> bytes:
        w = Writer().u8(VERSION).u8(T_NONCE_BATCH).u64(self.epoch).count(len(self.nonces), MAX_NONCE_BATCH)
        for nonce_id, commitment in self.nonces:
            w.fixed(nonce_id, NONCE_ID_SIZE).fixed(commitment, COMMITMENT_SIZE)
        return w.to_bytes()


class SignerEntry(NamedTuple):
    """One signer of a session: member index, the nonce it must use, and that nonce's commitment."""

    index: int
    nonce_id: bytes
    commitment: bytes


class SignRequest(NamedTuple):
    """
    One ROAST session of one signing request.

    @ivar request_id: the coordinator's id for the whole request (all its
        sessions).
    @ivar session: the session number within the request.
    @ivar key: the epoch's 32-byte Taproot output key the coordinator signs
        under (for RFC 9591 too: it commits to the internal key); a signer
        holding another key for C{epoch} refuses with C{key-mismatch}.
    @ivar digest: SHA-256 of the message the coordinator computed.
    @ivar aggnonce: BIP 445's aggregate nonce (zeros for RFC 9591).
    @ivar signers: ascending by index; empty in a validate-only request.
    """

    request_id: bytes
    session: int
    epoch: int
    key: bytes
    suite: str
    scheme: str
    request: bytes
    digest: bytes
    aggnonce: bytes
    signers: tuple[SignerEntry, ...]

    def encode(self) -> bytes:
        w = (Writer().u8(VERSION).u8(T_SIGN_REQUEST).fixed(self.request_id, REQUEST_ID_SIZE).u32(self.session)
             .u64(self.epoch).fixed(self.key, KEY_SIZE).u8(SUITE_CODES[self.suite])
             .var_bytes(_scheme_name(self.scheme), MAX_SCHEME_NAME)
             .var_bytes(self.request, MAX_SCHEME_REQUEST).fixed(self.digest, DIGEST_SIZE)
             .fixed(self.aggnonce, AGGNONCE_SIZE).count(len(self.signers), MAX_SIGNERS))
        prev = -1
        for e in self.signers:
            if e.index <= prev:
                raise ValueError("signer entries must be strictly ascending by index")
            prev = e.index
            w.u16(e.index).fixed(e.nonce_id, NONCE_ID_SIZE).fixed(e.commitment, COMMITMENT_SIZE)
        return w.to_bytes()

    def request_commitment(self) -> bytes:
        """What a verdict binds to: the request's content, the key and the coordinator's proposal."""
        w = (Writer().u64(self.epoch).fixed(self.key, KEY_SIZE).u8(SUITE_CODES[self.suite])
             .var_bytes(_scheme_name(self.scheme), MAX_SCHEME_NAME).var_bytes(self.request, MAX_SCHEME_REQUEST)
             .fixed(self.digest, DIGEST_SIZE))
        return tagged_hash(TAG_REQUEST, w.to_bytes())

    def entry_for(self, index: int) -> SignerEntry | None:
        for e in self.signers:
            if e.index == index:
                return e
        return None


class SignShare(NamedTuple):
    request_id: bytes
    session: int
    share: bytes

    def encode(self) -> bytes:
        return (Writer().u8(VERSION).u8(T_SIGN_SHARE).fixed(self.request_id, REQUEST_ID_SIZE).u32(self.session)
                .fixed(self.share, SHARE_SIZE).to_bytes())


class Verdict(NamedTuple):
    """
    A member's answer other than a share: agreement or refusal.

    @ivar digest: SHA-256 of the message the member computed (empty if it
        computed none: rejection, missing data, unusable request).
    @ivar signature: the member's BIP340 host-key signature over
        L{verdict_message}.
    """

    request_id: bytes
    session: int
    kind: int
    digest: bytes
    reason: str
    signature: bytes

    def encode(self) -> bytes:
        return (Writer().u8(VERSION).u8(T_VERDICT).fixed(self.request_id, REQUEST_ID_SIZE).u32(self.session)
                .u8(self.kind).var_bytes(self.digest, DIGEST_SIZE).var_bytes(_reason(self.reason), MAX_REASON)
                .fixed(self.signature, SIGNATURE_SIZE).to_bytes())

    @property
    def kind_name(self) -> str:
        return VERDICT_NAMES[self.kind]


def _reason(reason: str) -> bytes:
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON:
        raw = raw[: MAX_REASON - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return raw


def truncate_reason(reason: str) -> str:
    """C{reason} as it will travel: at most L{MAX_REASON} bytes of UTF-8."""
    return _reason(reason).decode("utf-8")


def verdict_message(coordinator: bytes, request_commitment: bytes, request_id: bytes, session: int,
                    kind: int, digest: bytes, reason: str) -> bytes:
    """The 32 bytes a member signs for a verdict; binds coordinator, request and session."""
    w = (Writer().fixed(coordinator, 32).fixed(request_commitment, DIGEST_SIZE).fixed(request_id, REQUEST_ID_SIZE)
         .u32(session).u8(kind).var_bytes(digest, DIGEST_SIZE).var_bytes(_reason(reason), MAX_REASON))
    return tagged_hash(TAG_VERDICT, w.to_bytes())


Message = Union[NonceRequest, NonceBatch, SignRequest, SignShare, Verdict]


def decode(data: bytes) -> Message:
    """
    Decode any signing message.

    @raise DecodeError: not a valid message (the sender is to blame).
    """
    r = Reader(data, "signing message")
    r.version(VERSION)
    t = r.u8()
    if t == T_NONCE_REQUEST:
        msg: Message = NonceRequest(r.u64(), r.u16(), r.flag())
    elif t == T_NONCE_BATCH:
        epoch = r.u64()
        n = r.count(MAX_NONCE_BATCH, NONCE_ID_SIZE + COMMITMENT_SIZE)
        msg = NonceBatch(epoch, tuple((r.fixed(NONCE_ID_SIZE), r.fixed(COMMITMENT_SIZE)) for _ in range(n)))
    elif t == T_SIGN_REQUEST:
        request_id = r.fixed(REQUEST_ID_SIZE)
        session = r.u32()
        epoch = r.u64()
        key = r.fixed(KEY_SIZE)
        code = r.u8()
        suite = SUITE_NAMES.get(code)
        if suite is None:
            raise DecodeError(f"unknown ciphersuite code {code}")
        scheme = _read_scheme_name(r)
        request = r.var_bytes(MAX_SCHEME_REQUEST)
        digest = r.fixed(DIGEST_SIZE)
        aggnonce = r.fixed(AGGNONCE_SIZE)
        n = r.count(MAX_SIGNERS, _ENTRY_SIZE)
        raw = r.fixed(n * _ENTRY_SIZE)
        entries = []
        prev = -1
        for off in range(0, len(raw), _ENTRY_SIZE):
            index = int.from_bytes(raw[off:off + 2], "big")
            if index <= prev:
                raise DecodeError("signer entries are not strictly ascending")
            prev = index
            entries.append(SignerEntry(index, raw[off + 2:off + 2 + NONCE_ID_SIZE],
                                       raw[off + 2 + NONCE_ID_SIZE:off + _ENTRY_SIZE]))
        msg = SignRequest(request_id, session, epoch, key, suite, scheme, request, digest, aggnonce, tuple(entries))
    elif t == T_SIGN_SHARE:
        msg = SignShare(r.fixed(REQUEST_ID_SIZE), r.u32(), r.fixed(SHARE_SIZE))
    elif t == T_VERDICT:
        request_id = r.fixed(REQUEST_ID_SIZE)
        session = r.u32()
        kind = r.u8()
        if kind not in VERDICT_NAMES:
            raise DecodeError(f"unknown verdict kind {kind}")
        digest = r.var_bytes(DIGEST_SIZE)
        if len(digest) not in (0, DIGEST_SIZE):
            raise DecodeError(f"a verdict digest is empty or {DIGEST_SIZE} bytes")
        try:
            reason = r.var_bytes(MAX_REASON).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("verdict reason is not UTF-8") from None
        msg = Verdict(request_id, session, kind, digest, reason, r.fixed(SIGNATURE_SIZE))
    else:
        raise DecodeError(f"unknown signing message type {t}")
    r.finish()
    return msg
