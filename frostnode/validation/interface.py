# -*- test-case-name: tests.test_validation_registry -*-
"""
The contract between the signing service and validation schemes.

A member signs only what its I{own} copy of the data says.  A scheme turns a
client's request plus the member's local log into the statement the member
is willing to sign, or refuses.  Members whose views differ then compute
different messages, their shares do not combine, and the signing service can
name them: that is the whole point, so a scheme must be a function of the
request and the view and of nothing else.

What a scheme is
================
Any object with (see L{Scheme}):

  - C{name}: a short lowercase name (L{SCHEME_NAME}); it is how clients and
    the configuration refer to the scheme, and it domain-separates its
    messages.
  - C{statement(request, view) -> bytes}: the canonical statement the scheme
    attests, computed from C{request} (the scheme's own request encoding) and
    C{view} (a read-only L{LogView}).  It raises L{Rejection} with a reason
    when the data does not validate, and L{MissingData} when the view lacks
    records the request names, so the signing service can catch up for a
    bounded time and ask again.
  - optionally C{request_from_json(obj) -> bytes}: the scheme's request
    encoding built from the JSON form a client sends (CLI, HTTP).

The signing service never calls C{statement} itself: it uses the
L{frostnode.validation.registry.LoadedScheme} the registry returns, whose
C{message(request, view)} returns the I{exact} bytes to sign,
C{tagged_hash("frostnode/validation/" + name, statement)}
(L{scheme_message}).

Domain separation by construction
=================================
Because the wrapper, not the scheme, hashes the statement under a tag made
from the scheme's name, a signature obtained through one scheme is never a
valid signature for another scheme's message, whatever bytes either
statement holds.  The registry refuses two schemes with the same name.  The
message is 32 bytes, which both ciphersuites sign (and BIP340 verifiers
handle on every library).

Determinism, and why there is no clock
======================================
C{statement} receives exactly two inputs.  No clock, no randomness, no
configuration beyond what the scheme object was built with: a scheme that
needs a parameter (an issuer key, a topic) takes it in the request, where
the signed message commits to it, or is built with it by its module.  This
cannot stop a scheme from importing C{time}; it makes the right thing the
easy thing, and the docs (C{docs/validation.rst}) say why.

The view exposes only what every member holding the same data agrees on:
record bodies by id, the records of a I{cut} (a sequence number per origin)
in a fixed order, and (for schemes that attest a member's whole state, like
checkpoints) the current cut and the log digest.  It deliberately hides local
topic positions, receive times and which origin slot a record reached first,
since those differ between members that hold identical data (see
L{frostnode.store.log}).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Protocol, Sequence

from frostnode.crypto.hashes import tagged_hash
from frostnode.store.errors import IncompleteView

if TYPE_CHECKING:  # pragma: no cover
    from frostnode.store.log import DataLog, LogDigest, RecordBody

#: Scheme names: lowercase, digits, C{.}, C{_}, C{-}; they become hash tags.
SCHEME_NAME = re.compile(r"[a-z][a-z0-9._-]{0,62}\Z")

#: Prefix of the tag under which a scheme's statement is hashed.
MESSAGE_TAG_PREFIX = "frostnode/validation/"

_HOST_KEY_SIZE = 32
_RECORD_ID_SIZE = 32


class Rejection(Exception):
    """
    The member's data does not validate: it refuses to sign, with a reason.

    Reasons are computed from the request and the view only, so members
    with the same data refuse with the same words; the signing service
    forwards them to the client (C{validation-failed: <reason>}).

    @ivar reason: human-readable, names the record or account at fault.
    @ivar code: a short stable word for programs (C{"overdraft"},
        C{"malformed-request"}, ...); each scheme documents its codes.
    """

    def __init__(self, reason: str, *, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class MissingData(Exception):
    """
    The local view lacks data the request names; catch-up may bring it.

    The signing service retries the scheme after catch-up for a bounded time
    and refuses only then.  Data that retention already pruned is not
    missing in this sense (it will never come back): that is a L{Rejection}.

    @ivar record_ids: ids of named records this member does not hold.
    @ivar cut: C{{origin: seq}} for each origin whose slots up to C{seq} the
        request needs and this member does not fully hold yet.
    """

    def __init__(self, record_ids: Iterable[bytes] = (), cut: Optional[Mapping[bytes, int]] = None) -> None:
        self.record_ids = tuple(sorted(set(record_ids)))
        self.cut = dict(sorted((cut or {}).items()))
        if not self.record_ids and not self.cut:
            raise ValueError("MissingData must name missing records or cut slots")
        parts = []
        if self.record_ids:
            shown = ", ".join(r.hex()[:16] for r in self.record_ids[:8])
            more = f" and {len(self.record_ids) - 8} more" if len(self.record_ids) > 8 else ""
            parts.append(f"records {shown}{more}")
        if self.cut:
            parts.append("cut slots " + ", ".join(f"{o.hex()[:16]} up to {s}" for o, s in self.cut.items()))
        super().__init__("not held locally: " + "; ".join(parts))


class SchemeFailed(Rejection):
    """
    A scheme raised something other than L{Rejection} or L{MissingData}, or
    returned something other than bytes: a bug in the scheme.  The member
    refuses (it cannot say what its data means) and the node logs the
    original exception, chained as C{__cause__}.
    """

    def __init__(self, scheme: str, problem: str) -> None:
        super().__init__(f"scheme {scheme!r} failed: {problem}", code="scheme-failed")
        self.scheme = scheme


class LogView(Protocol):
    """
    What a scheme may read: a read-only view of the member's replicated log.

    All methods are synchronous and cheap enough to call during one
    evaluation; a scheme must not keep the view after it returns.
    """

    def get(self, record_id: bytes) -> Optional["RecordBody"]:
        """The body of the held record C{record_id}, or C{None}."""

    def records_in_cut(self, cut: Mapping[bytes, int]) -> Sequence["RecordBody"]:
        """
        The bodies in slots (o, 1..cut[o]) for every origin o, each record
        once, in (origin, seq) order of first appearance: the same list on
        every member that holds the cut.

        @raise MissingData: some slot of the cut is not held yet.
        @raise Rejection: (code C{"pruned"}) retention removed slots the cut
            needs; catch-up will not bring them back.
        """

    def current_cut(self) -> dict[bytes, int]:
        """C{{origin: have}}: the largest cut this member can evaluate now (differs while members lag)."""

    def digest(self) -> "LogDigest":
        """Order-independent digest and count of the held records (equal only when the sets are)."""


class Scheme(Protocol):
    """
    What a validation scheme implements.  C{request_from_json} is optional:
    without it clients send the raw request as a hex string.
    """

    name: str

    def statement(self, request: bytes, view: LogView) -> bytes:
        """
        The canonical statement this member attests for C{request}, from
        C{view} only.

        @raise Rejection: the data (or the request) does not validate.
        @raise MissingData: the view lacks records the request names.
        """


def check_scheme_name(name: object) -> str:
    """
    @return: C{name} if it is a valid scheme name.
    @raise ValueError: it is not (the message says what a name may hold).
    """
    if not isinstance(name, str) or not SCHEME_NAME.match(name):
        raise ValueError(
            f"scheme name {name!r} is not valid: use 1-63 characters, a lowercase letter "
            "first, then lowercase letters, digits, '.', '_' or '-'"
        )
    return name


def scheme_tag(name: str) -> str:
    """The BIP340-style hash tag of scheme C{name}'s messages."""
    return MESSAGE_TAG_PREFIX + check_scheme_name(name)


def scheme_message(name: str, statement: bytes) -> bytes:
    """
    The exact 32-byte message a federation signs when scheme C{name}
    attests C{statement}: C{tagged_hash("frostnode/validation/<name>",
    statement)}.  Verifiers recompute it from a statement they built or were
    given.
    """
    if not isinstance(statement, bytes):
        raise TypeError(f"a statement is bytes, not {type(statement).__name__}")
    return tagged_hash(scheme_tag(name), statement)


def check_cut(cut: Mapping[Any, Any]) -> dict[bytes, int]:
    """
    A cut as a plain dict with validated keys and values, in origin order.

    @raise ValueError: a key is not a 32-byte host key or a value is not a
        non-negative int.
    """
    out: dict[bytes, int] = {}
    for origin in sorted(cut):
        seq = cut[origin]
        if not isinstance(origin, bytes) or len(origin) != _HOST_KEY_SIZE:
            raise ValueError(f"cut origin {origin!r} is not a {_HOST_KEY_SIZE}-byte host key")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 64:
            raise ValueError(f"cut sequence number for origin {origin.hex()[:16]} must be an int in [0, 2^64), not {seq!r}")
        out[origin] = seq
    return out


class DataLogView:
    """
    L{LogView} over a L{frostnode.store.log.DataLog}.

    It hands out record I{bodies} only (content-addressed, equal everywhere)
    and turns the store's L{IncompleteView} into L{MissingData} (slots not
    held yet, naming every lagging origin at once) or a L{Rejection} with
    code C{"pruned"} (retention removed them).
    """

    def __init__(self, datalog: "DataLog") -> None:
        self._log = datalog

    def get(self, record_id: bytes) -> Optional["RecordBody"]:
        if not isinstance(record_id, bytes) or len(record_id) != _RECORD_ID_SIZE:
            raise ValueError(f"a record id is {_RECORD_ID_SIZE} bytes")
        entry = self._log.get(record_id)
        return None if entry is None else entry.envelope.body

    def records_in_cut(self, cut: Mapping[bytes, int]) -> list["RecordBody"]:
        cut = check_cut(cut)
        lacking: dict[bytes, int] = {}
        for origin, upto in cut.items():
            if upto <= 0:
                continue
            st = self._log.origin_state(origin)
            if st.floor:
                raise _pruned(origin, upto, st.floor)
            if upto > st.have:
                lacking[origin] = upto
        if lacking:
            raise MissingData(cut=lacking)
        try:
            entries = self._log.records_in_cut(cut)
        except IncompleteView as e:  # the log changed since the check above
            if e.floor:
                raise _pruned(e.origin, e.wanted, e.floor) from None
            raise MissingData(cut={e.origin: e.wanted}) from None
        return [entry.envelope.body for entry in entries]

    def current_cut(self) -> dict[bytes, int]:
        return self._log.current_cut()

    def digest(self) -> "LogDigest":
        return self._log.digest()


def _pruned(origin: bytes, upto: int, floor: int) -> Rejection:
    return Rejection(
        f"the cut needs origin {origin.hex()[:16]} slots 1..{upto}, but retention pruned 1..{floor} here",
        code="pruned",
    )
