# -*- test-case-name: tests.test_signing_commands -*-
"""
What clients may ask of the signing service, on both doors of a node: the
C{sign}, C{checkpoint} and C{checkpoints} commands of the client port, the
typed operations behind C{POST /v1/sign} and C{GET /v1/checkpoints}, and a
C{signing} section in C{status}.

The node wires them with one call, once the client layer and the signing
service exist (L{register_signing_commands})::

    register_signing_commands(node.client.api, node.signing, node.schemes)

Decisions:

  - B{Strict wire encoding} (L{frostnode.wire}), one codec per command, side
    by side here; the client library imports them from this module (which
    imports no reactor and no service).  A scheme's request travels as the
    scheme's own bytes: the client converts a JSON form with the scheme's
    C{request_from_json} (L{scheme_request}: the built-in schemes, and any
    scheme installed client-side, are loaded with
    L{frostnode.validation.registry.load_scheme}), so the node signs exactly
    the bytes the client chose.  The HTTP API, whose callers speak JSON,
    converts with the I{node's} schemes.
  - B{Errors are the client layer's typed codes.}  A L{SigningFailed}
    becomes a L{ClientError} with the same code (C{views-differ},
    C{validation-failed}, C{not-enough-signers}, C{timeout}) and
    C{members} naming every member the failure names, with why; for
    C{views-differ} the message is the divergent members' host keys.  No key
    yet (L{NoUsableKey}) is C{unavailable}; an unknown scheme or
    ciphersuite, or a request the scheme cannot read, is C{invalid-request}.
    The federation's own C{checkpoint} scheme is not offered to clients:
    checkpoints are what the federation decides to sign about itself.
  - B{Audit}: the C{audit} flag asks every member's verdict, so the result
    names every divergent member; without it the node's configured default
    applies.
  - B{What the client checks}: the library verifies the signature under the
    returned key (BIP340 for BIP 445, RFC 9591 otherwise) and that scheme
    and ciphersuite are those asked for; a checkpoint's message must be the
    checkpoint scheme's message of its statement (L{Checkpoint.verify}).
    Whether the key is I{the federation's} is for the caller to compare with
    C{pubkey} (or with a key it pinned).

C{sign}
=======
Arguments: C{scheme (bytes) | ciphersuite (bytes) | audit (flag) | request
(bytes)}.  Result: C{scheme (bytes) | ciphersuite (bytes) | epoch (u64) |
key (bytes) | signature (bytes) | message (bytes) | signers (count, 32 each)
| divergent (count, then host key (32) | kind (bytes) | reason (bytes),
ascending keys) | unresponsive (count, 32 each, ascending) | sessions
(u32)}.

C{checkpoint} and C{checkpoints}
================================
C{checkpoint} (no arguments) answers the newest checkpoint (C{not-found}
before the first); C{checkpoints} takes C{from (u64) | limit (u32)} and
answers C{last (u64) | count | count x checkpoint}, oldest first from
C{from}, stopping early at the client port's answer size.  A checkpoint is
C{seq (u64) | epoch (u64) | ciphersuite (bytes) | key (bytes) | signature
(bytes) | message (bytes) | statement (bytes) | signers (count, 32 each) |
divergent (count, 32 each) | created, us (u64)}; its cut, membership and
record digest are read from the statement (L{decode_statement}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from frostnode.client.errors import NOT_FOUND, ClientError, invalid_request, unavailable
from frostnode.signing.checkpoint import NAME as CHECKPOINT, Checkpoint, decode_statement
from frostnode.signing.errors import NoUsableKey, SigningFailed
from frostnode.signing.messages import MAX_REASON, MAX_SCHEME_NAME, MAX_SCHEME_REQUEST, MAX_SIGNERS
from frostnode.signing.suites import BIP445, RFC9591, SUITES, verify_signature
from frostnode.store.checkpoints import MAX_LIST, MAX_STATEMENT
from frostnode.store.codec import check_time, micros, seconds
from frostnode.validation.interface import check_scheme_name
from frostnode.validation.registry import SchemeLoadError, load_scheme
from frostnode.wire import DecodeError, Reader, Writer

if TYPE_CHECKING:  # pragma: no cover
    from frostnode.client.api import ClientContext, NodeAPI
    from frostnode.signing.service import SignatureResult, SigningService

MAX_CIPHERSUITE = 32
MAX_KEY = 33
MAX_SIGNATURE = 65
MAX_MESSAGE = 1024
MAX_KIND = 32
#: Checkpoints one C{checkpoints} page lists at most.
MAX_PAGE = MAX_LIST
#: Key sizes each ciphersuite signs under (output key x-only, internal key compressed).
KEY_SIZES = {BIP445: 32, RFC9591: 33}


def _name_bytes(name: str, what: str, limit: int) -> bytes:
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not 1 <= len(raw) <= limit:
        raise ValueError(f"{what} must be 1..{limit} ASCII characters, not {name!r}")
    return raw


def _read_name(r: Reader, what: str, limit: int) -> str:
    raw = r.var_bytes(limit)
    if not raw:
        raise DecodeError(f"{what} is empty")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not ASCII") from None


def _keys(r: Reader, max_count: int) -> tuple[bytes, ...]:
    return tuple(r.fixed(32) for _ in range(r.count(max_count, 32)))


def _ascending(keys: Any, what: str) -> None:
    keys = list(keys)
    if any(a >= b for a, b in zip(keys, keys[1:])):
        raise DecodeError(f"{what} are not in strictly ascending order")


# -- sign ------------------------------------------------------------------------------


class SignArgs(NamedTuple):
    """C{sign}: which scheme reads C{request}, under which ciphersuite, audited or not."""

    scheme: str
    request: bytes
    ciphersuite: str = BIP445
    audit: bool = False

    def encode(self) -> bytes:
        check_scheme_name(self.scheme)
        if not isinstance(self.request, bytes):
            raise ValueError(f"a scheme request is bytes, not {type(self.request).__name__}")
        return (Writer().var_bytes(self.scheme.encode("ascii"), MAX_SCHEME_NAME)
                .var_bytes(_name_bytes(self.ciphersuite, "ciphersuite", MAX_CIPHERSUITE), MAX_CIPHERSUITE)
                .flag(self.audit).var_bytes(self.request, MAX_SCHEME_REQUEST).to_bytes())

    @classmethod
    def decode(cls, args: bytes) -> "SignArgs":
        r = Reader(args, "sign request")
        scheme = _read_name(r, "scheme", MAX_SCHEME_NAME)
        try:
            check_scheme_name(scheme)
        except ValueError as e:
            raise DecodeError(str(e)) from None
        ciphersuite = _read_name(r, "ciphersuite", MAX_CIPHERSUITE)
        audit = r.flag()
        request = r.var_bytes(MAX_SCHEME_REQUEST)
        r.finish()
        return cls(scheme, request, ciphersuite, audit)


class Divergence(NamedTuple):
    """Why a member did not sign what the others did: its verdict's kind and reason."""

    kind: str
    reason: str


class SignResult(NamedTuple):
    """
    A signature as a client receives it.

    @ivar key: what C{signature} verifies under: the Taproot output key
        (x-only, BIP 445) or the internal group key (compressed, RFC 9591).
    @ivar message: the exact bytes signed, C{tagged_hash("frostnode/validation/<scheme>", statement)}.
    @ivar signers: host keys of the members whose shares make the signature.
    @ivar divergent: members that computed another message or lacked the data.
    @ivar unresponsive: members still awaited when the signature was done
        (slow, silent, or still catching up on the data).
    @ivar sessions: ROAST sessions the coordinator started.
    """

    signature: bytes
    key: bytes
    message: bytes
    scheme: str
    ciphersuite: str
    epoch: int
    signers: tuple[bytes, ...]
    divergent: Mapping[bytes, Divergence]
    unresponsive: tuple[bytes, ...] = ()
    sessions: int = 1

    @classmethod
    def from_result(cls, result: "SignatureResult") -> "SignResult":
        divergent = {key: Divergence(ref.kind, ref.reason) for key, ref in result.divergent.items()}
        return cls(result.signature, result.key, result.message, result.scheme, result.ciphersuite, result.epoch,
                   tuple(result.signers), dict(sorted(divergent.items())), tuple(sorted(set(result.unresponsive))),
                   result.sessions)

    def verify(self) -> bool:
        """The signature verifies under C{key} over C{message}."""
        return verify_signature(self.ciphersuite, self.key, self.message, self.signature)

    def encode(self) -> bytes:
        w = (Writer().var_bytes(self.scheme.encode("ascii"), MAX_SCHEME_NAME)
             .var_bytes(self.ciphersuite.encode("ascii"), MAX_CIPHERSUITE).u64(self.epoch)
             .var_bytes(self.key, MAX_KEY).var_bytes(self.signature, MAX_SIGNATURE)
             .var_bytes(self.message, MAX_MESSAGE).count(len(self.signers), MAX_SIGNERS))
        for s in self.signers:
            w.fixed(s, 32)
        w.count(len(self.divergent), MAX_SIGNERS)
        for key, d in sorted(self.divergent.items()):
            w.fixed(key, 32).var_bytes(d.kind.encode("ascii", "replace")[:MAX_KIND], MAX_KIND)
            w.var_bytes(d.reason.encode("utf-8", "replace")[:MAX_REASON], MAX_REASON)
        w.count(len(self.unresponsive), MAX_SIGNERS)
        for key in self.unresponsive:
            w.fixed(key, 32)
        return w.u32(self.sessions).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "SignResult":
        r = Reader(data, "sign answer")
        scheme = _read_name(r, "scheme", MAX_SCHEME_NAME)
        ciphersuite = _read_name(r, "ciphersuite", MAX_CIPHERSUITE)
        epoch = r.u64()
        key = r.var_bytes(MAX_KEY)
        signature = r.var_bytes(MAX_SIGNATURE)
        message = r.var_bytes(MAX_MESSAGE)
        signers = _keys(r, MAX_SIGNERS)
        if len(set(signers)) != len(signers):
            raise DecodeError("sign answer: a signer is named twice")
        divergent = {}
        for _ in range(r.count(MAX_SIGNERS, 32 + 8)):
            member = r.fixed(32)
            kind = r.var_bytes(MAX_KIND).decode("ascii", "replace")
            divergent[member] = Divergence(kind, r.var_bytes(MAX_REASON).decode("utf-8", "replace"))
        _ascending(divergent, "sign answer: divergent members")
        unresponsive = _keys(r, MAX_SIGNERS)
        _ascending(unresponsive, "sign answer: unresponsive members")
        sessions = r.u32()
        r.finish()
        return cls(signature, key, message, scheme, ciphersuite, epoch, signers, divergent, unresponsive, sessions)

    def to_json(self) -> dict:
        return {
            "signature": self.signature.hex(),
            "key": self.key.hex(),
            "message": self.message.hex(),
            "scheme": self.scheme,
            "ciphersuite": self.ciphersuite,
            "epoch": self.epoch,
            "signers": [s.hex() for s in self.signers],
            "divergent": {k.hex(): {"kind": d.kind, "reason": d.reason} for k, d in self.divergent.items()},
            "unresponsive": [k.hex() for k in self.unresponsive],
            "sessions": self.sessions,
        }


# -- checkpoints -----------------------------------------------------------------------


def encode_checkpoint(cp: Checkpoint) -> bytes:
    w = (Writer().u64(cp.seq).u64(cp.epoch).var_bytes(cp.ciphersuite.encode("ascii"), MAX_CIPHERSUITE)
         .var_bytes(cp.key, MAX_KEY).var_bytes(cp.signature, MAX_SIGNATURE).var_bytes(cp.message, MAX_MESSAGE)
         .var_bytes(cp.statement, MAX_STATEMENT).count(len(cp.signers), MAX_SIGNERS))
    for s in cp.signers:
        w.fixed(s, 32)
    w.count(len(cp.divergent), MAX_SIGNERS)
    for d in cp.divergent:
        w.fixed(d, 32)
    return w.u64(micros(check_time(cp.created, "checkpoint time"))).to_bytes()


def read_checkpoint(r: Reader) -> Checkpoint:
    """
    One checkpoint, its cut read from its statement.

    @raise DecodeError: malformed, or a statement that does not decode.
    """
    seq = r.u64()
    epoch = r.u64()
    ciphersuite = _read_name(r, "ciphersuite", MAX_CIPHERSUITE)
    key = r.var_bytes(MAX_KEY)
    signature = r.var_bytes(MAX_SIGNATURE)
    message = r.var_bytes(MAX_MESSAGE)
    statement = r.var_bytes(MAX_STATEMENT)
    signers = _keys(r, MAX_SIGNERS)
    divergent = _keys(r, MAX_SIGNERS)
    created = seconds(r.u64())
    cut = decode_statement(statement).cut
    return Checkpoint(epoch, cut, statement, message, signature, key, ciphersuite, signers, created, divergent, seq)


def decode_checkpoint(data: bytes) -> Checkpoint:
    r = Reader(data, "checkpoint answer")
    cp = read_checkpoint(r)
    r.finish()
    return cp


def checkpoint_to_json(cp: Checkpoint) -> dict:
    """The checkpoint for JSON readers, with what its statement says spelled out."""
    st = decode_statement(cp.statement)
    return {
        "seq": cp.seq,
        "epoch": cp.epoch,
        "members": [m.hex() for m in st.members],
        "cut": {origin.hex(): n for origin, n in st.cut.items()},
        "records": st.count,
        "records_digest": st.digest.hex(),
        "statement": cp.statement.hex(),
        "message": cp.message.hex(),
        "signature": cp.signature.hex(),
        "key": cp.key.hex(),
        "ciphersuite": cp.ciphersuite,
        "signers": [s.hex() for s in cp.signers],
        "divergent": [d.hex() for d in cp.divergent],
        "created": cp.created,
    }


class CheckpointsArgs(NamedTuple):
    """C{checkpoints}: up to C{limit} checkpoints numbered C{from_seq} and up."""

    from_seq: int = 1
    limit: int = 100

    def encode(self) -> bytes:
        return Writer().u64(self.from_seq).u32(self.limit).to_bytes()

    @classmethod
    def decode(cls, args: bytes) -> "CheckpointsArgs":
        r = Reader(args, "checkpoints request")
        out = cls(r.u64(), r.u32())
        r.finish()
        return out


class CheckpointPage(NamedTuple):
    """
    Checkpoints, oldest first.  C{last} is the newest number on the node when
    it answered; ask again from the last listed number + 1 while it is
    below C{last}.
    """

    last: int
    checkpoints: list[Checkpoint]

    def encode(self) -> bytes:
        w = Writer().u64(self.last).count(len(self.checkpoints), MAX_PAGE)
        for cp in self.checkpoints:
            w.raw(encode_checkpoint(cp))
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> "CheckpointPage":
        r = Reader(data, "checkpoints answer")
        last = r.u64()
        n = r.count(MAX_PAGE, 8 + 8 + 4 * 5 + 4 * 2 + 8)
        checkpoints = [read_checkpoint(r) for _ in range(n)]
        r.finish()
        _ascending([cp.seq for cp in checkpoints], "checkpoints answer: numbers")
        return cls(last, checkpoints)

    def to_json(self) -> dict:
        return {"last": self.last, "checkpoints": [checkpoint_to_json(cp) for cp in self.checkpoints]}


# -- failures ---------------------------------------------------------------------------


def signing_error(error: SigningFailed) -> ClientError:
    """
    The client's view of a failed request: the same code, C{members} naming
    every member the failure names (divergent first, then misbehaving,
    unavailable, and those still awaited), and for C{views-differ} the
    divergent members' host keys as the message.
    """
    members: dict[bytes, str] = {}
    for key, ref in error.divergent.items():
        members.setdefault(key, f"{ref.kind}: {ref.reason}" if ref.reason else ref.kind)
    for key, why in error.malicious.items():
        members.setdefault(key, f"misbehaved: {why}")
    for key, ref in error.unavailable.items():  # "unavailable" or "key-mismatch"
        members.setdefault(key, f"{ref.kind}: {ref.reason}" if ref.reason else ref.kind)
    for key in error.unresponsive:
        members.setdefault(key, "no answer")
    message = error.detail or error.code
    if error.code == "views-differ" and error.divergent:
        message = ", ".join(key.hex() for key in sorted(error.divergent))
    return ClientError(error.code, message, members=members)


def as_signing_client_error(failure: Failure) -> Failure:
    """Errback: L{SigningFailed} and L{NoUsableKey} as L{ClientError}s; anything else passes."""
    if failure.check(SigningFailed):
        return Failure(signing_error(failure.value))
    if failure.check(NoUsableKey):
        return Failure(unavailable(f"this node cannot sign yet: {failure.value} (the first key generation has not "
                                   f"completed)"))
    return failure


# -- the node side ----------------------------------------------------------------------------


class SigningCommands:
    """
    The typed operations both doors share, over one L{SigningService}.

    @param signing: the node's signing service.
    @param schemes: the validation schemes clients may name (the node's
        loaded schemes: name -> L{frostnode.validation.registry.LoadedScheme}).
    @param max_answer: a C{checkpoints} page stops growing at this many bytes.
    """

    log = Logger()

    def __init__(self, signing: "SigningService", schemes: Mapping[str, Any], max_answer: int = 8 << 20) -> None:
        self.signing = signing
        self.schemes = {name: s for name, s in schemes.items() if name != CHECKPOINT}
        self.max_answer = max_answer

    def _check(self, scheme: str, ciphersuite: str) -> None:
        if scheme == CHECKPOINT:
            raise invalid_request(f"the {CHECKPOINT!r} scheme is the federation's own; read checkpoints with "
                                  f"the checkpoint command")
        if scheme not in self.schemes:
            raise invalid_request(f"unknown scheme {scheme!r} (this node knows: {', '.join(sorted(self.schemes))})")
        if ciphersuite not in SUITES:
            raise invalid_request(f"unknown ciphersuite {ciphersuite!r} (known: {', '.join(sorted(SUITES))})")

    def sign(self, scheme: str, request: bytes, ciphersuite: str = BIP445, audit: bool = False) -> Deferred:
        """
        Coordinate one signature; a Deferred of L{SignResult}, or failing
        with a L{ClientError} (see the module docstring).
        """
        self._check(scheme, ciphersuite)
        if len(request) > MAX_SCHEME_REQUEST:
            raise invalid_request(f"a scheme request is at most {MAX_SCHEME_REQUEST} bytes, not {len(request)}")
        d = self.signing.sign(scheme, request, ciphersuite, audit=True if audit else None)
        return d.addCallbacks(SignResult.from_result, as_signing_client_error)

    def request_from_json(self, scheme: str, obj: Any) -> bytes:
        """C{scheme}'s request from its JSON form, converted by this node's scheme."""
        if scheme == CHECKPOINT or scheme not in self.schemes:
            self._check(scheme, BIP445)
        try:
            return self.schemes[scheme].request_from_json(obj)
        except ValueError as e:
            raise invalid_request(f"scheme {scheme!r}: {e}") from None

    def latest_checkpoint(self) -> Checkpoint:
        cp = self.signing.latest_checkpoint()
        if cp is None:
            interval = self.signing.config.checkpoint_interval
            when = f"one is signed every {interval:g} s" if interval else "this node does not sign them"
            raise ClientError(NOT_FOUND, f"no checkpoint signed on this node yet ({when})")
        return cp

    def checkpoints(self, from_seq: int = 1, limit: int = 100) -> CheckpointPage:
        if limit < 1:
            raise invalid_request(f"limit must be at least 1, not {limit}")
        latest = self.signing.latest_checkpoint()
        last = 0 if latest is None else latest.seq
        out: list[Checkpoint] = []
        size = 0
        for cp in self.signing.checkpoints(max(from_seq, 1), min(limit, MAX_PAGE)):
            size += len(cp.statement) + 256 + 32 * (len(cp.signers) + len(cp.divergent))
            if out and size > self.max_answer:
                break
            out.append(cp)
        return CheckpointPage(last, out)

    def status(self) -> dict:
        """The C{signing} section of C{status}: counters, and each member as this node sees it."""
        members = self.signing.status()
        latest = self.signing.latest_checkpoint()
        return {
            "signatures": self.signing.signatures,
            "failures": self.signing.failures,
            "unresponsive": sorted(k.hex() for k, st in members.items() if st.state == "unresponsive"),
            "misbehaving": sorted(k.hex() for k, st in members.items() if st.state == "misbehaving"),
            "members": {k.hex(): {"state": st.state, "detail": st.detail, "last_answer": st.last_answer,
                                  "timeouts": st.timeouts, "refusals": st.refusals}
                        for k, st in sorted(members.items())},
            "checkpoint": None if latest is None else latest.seq,
        }

    # -- the client port's commands ------------------------------------------------------

    def cmd_sign(self, context: "ClientContext", args: bytes) -> Deferred:
        a = SignArgs.decode(args)
        self.log.debug("sign {scheme} ({ciphersuite}) for client {client}", scheme=a.scheme,
                       ciphersuite=a.ciphersuite, client=context.client_key.hex())
        return self.sign(a.scheme, a.request, a.ciphersuite, a.audit).addCallback(SignResult.encode)

    def cmd_checkpoint(self, context: "ClientContext", args: bytes) -> bytes:
        if args:
            raise invalid_request(f"checkpoint takes no arguments ({len(args)} bytes given)")
        return encode_checkpoint(self.latest_checkpoint())

    def cmd_checkpoints(self, context: "ClientContext", args: bytes) -> bytes:
        a = CheckpointsArgs.decode(args)
        return self.checkpoints(a.from_seq, a.limit).encode()


def register_signing_commands(api: "NodeAPI", signing: "SigningService", schemes: Mapping[str, Any]) -> None:
    """
    Offer C{signing} to the node's clients: the C{sign}, C{checkpoint} and
    C{checkpoints} commands on the client port, C{POST /v1/sign} and
    C{GET /v1/checkpoints[/latest]} on the HTTP API (through
    C{api.signing}), and the C{signing} section of C{status}.

    @param schemes: the validation schemes clients may name (the node's).
    @raise ValueError: if signing commands are already registered on C{api}.
    """
    commands = SigningCommands(signing, schemes, api.limits.max_answer_size)
    api.register_command("sign", commands.cmd_sign)
    api.register_command("checkpoint", commands.cmd_checkpoint)
    api.register_command("checkpoints", commands.cmd_checkpoints)
    api.add_status("signing", commands.status)
    api.signing = commands


# -- the client side ---------------------------------------------------------------------------

_client_schemes: dict[str, Any] = {}


def scheme_request(scheme: str, request: Any) -> bytes:
    """
    The bytes of a C{sign} request: C{request} itself if it is bytes, else
    its JSON form converted by C{scheme}'s C{request_from_json}, with the
    scheme loaded on this side (built in, or installed under the
    C{frostnode.validators} entry points).

    @raise ValueError: the scheme is not known here, or the JSON does not
        describe a request.
    """
    if isinstance(request, (bytes, bytearray, memoryview)):
        return bytes(request)
    loaded = _client_schemes.get(scheme)
    if loaded is None:
        try:
            check_scheme_name(scheme)
            loaded = load_scheme(scheme)
        except (SchemeLoadError, ValueError) as e:
            problem = e.problem if isinstance(e, SchemeLoadError) else str(e)
            raise ValueError(f"cannot build a {scheme!r} request from JSON here ({problem}); "
                             f"pass the request's bytes instead") from None
        _client_schemes[scheme] = loaded
    return loaded.request_from_json(request)


def check_sign_result(result: SignResult, scheme: str, ciphersuite: str) -> SignResult:
    """
    The checks the client library makes of a C{sign} answer.

    @raise ValueError: naming what does not match.
    """
    if (result.scheme, result.ciphersuite) != (scheme, ciphersuite):
        raise ValueError(f"asked for a {scheme}/{ciphersuite} signature, node answered {result.scheme}/"
                         f"{result.ciphersuite}")
    size = KEY_SIZES.get(ciphersuite)
    if size is not None:
        if len(result.key) != size:
            raise ValueError(f"a {ciphersuite} key is {size} bytes, not {len(result.key)}")
        if not result.verify():
            raise ValueError(f"the signature does not verify under key {result.key.hex()}")
    return result


def check_checkpoint(cp: Checkpoint) -> Checkpoint:
    """@raise ValueError: the checkpoint's signature or message is not its statement's."""
    if cp.ciphersuite in KEY_SIZES and not cp.verify():
        raise ValueError(f"checkpoint {cp.seq}: the signature is not the federation's over its statement "
                         f"under key {cp.key.hex()}")
    return cp


__all__ = ["SignArgs", "SignResult", "Divergence", "CheckpointsArgs", "CheckpointPage", "SigningCommands",
           "register_signing_commands", "scheme_request", "signing_error", "encode_checkpoint",
           "decode_checkpoint", "checkpoint_to_json", "check_sign_result", "check_checkpoint"]
