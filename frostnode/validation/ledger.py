# -*- test-case-name: tests.test_validation_ledger -*-
"""
The C{ledger} scheme: a small replicated ledger whose balances the
federation signs at an explicit log position.

Accounts and commands
=====================
An account is a secp256k1 x-only (BIP340) public key; whoever holds its
secret key controls it.  Clients submit I{commands} as records on the
ledger's topic (default C{"ledger"}); the record's payload is exactly one
command, 146 bytes::

  u8   version = 1
  u8   kind: 1 = transfer, 2 = mint
  32   sender (x-only key): the account that signs, and pays a transfer
  32   recipient (x-only key, a valid point)
  u64  amount, 1 .. 2^64-1
  u64  sequence number of the sender, 1, 2, 3, ...
  64   BIP340 signature by the sender over the command's sighash

The sighash is C{tagged_hash("frostnode/ledger/command", ledger_id ||
first 82 bytes)} with C{ledger_id = tagged_hash("frostnode/ledger/id",
u32 len(topic) || topic || issuer)}: a command signed for one ledger (topic,
issuer) is worthless on any other.  The record's own client key, timestamp
and nonce play no part: anyone may relay a signed command.

Money enters only through I{mint} commands signed by the ledger's I{issuer}.
The issuer is named in every signing request, not in node configuration, and
the signed message commits to it, so a verifier sees which issuer the
balances assume and checks it is the one they trust; an operator who wants
nodes to sign for one issuer only runs a L{LedgerScheme} built with
C{issuer=} (and C{topic=}) under its own name.  The issuer is also an
ordinary account: it can receive, and transfer what it holds.

Replay: one answer for a set of records
=======================================
L{replay} depends only on the I{set} of records it is given, never on their
order, so every member that holds a cut computes the same ledger even though
records from different origins arrived in different orders:

  1. Records on other topics are ignored.  A payload that is not a command
     (C{malformed-command}), a mint not signed by the issuer
     (C{not-issuer}), or a signature that does not verify
     (C{bad-signature}) never takes part.
  2. A I{command} is identified by its sighash.  The same signed command in
     several records (a replay, a client resubmitting) is one command,
     applied at most once; all its records share its outcome.
  3. Each account's commands are ordered by its sequence numbers.  If the
     account signed two different commands with one sequence number, the
     one with the smaller sighash holds that number and the other is
     C{double-apply}: only the key's owner can make such a pair, and this
     rule picks the same one on every member.
  4. An account's next command applies when all its earlier sequence numbers
     applied and, for a transfer, its balance covers the amount.  Commands
     are applied until none can be: the result is the I{largest} set of
     applicable commands.

That set is unique.  Applying one account's command only raises other
accounts' balances and never touches their sequence numbers, so it never
disables another account's next command; two enabled commands of different
accounts commute; one account has at most one enabled command (step 3).
Every maximal application order therefore ends in the same state (the
diamond property), and L{replay}'s queue order is just one such order.

A command that is not applied at a cut is reported, not consumed: a
transfer exceeding its sender's balance is C{overdraft} (the account's next
sequence number, but short of funds), a later one of the same account is
C{blocked} behind it.  Both may apply at a later cut, once the account
received enough: a cheque waits for cover, it does not bounce.  A client that
needs to know waits for the answer to a signing request that I{requires}
its record.

Balances fit in 128 bits: each applied command adds at most 2^64-1, and a
log holds far fewer than 2^64 records.

Signing requests
================
A request names the topic, the issuer, a cut (a sequence number per origin,
as from L{frostnode.store.log.DataLog.current_cut}; zero entries are
dropped) and optionally record ids that must be I{applied} at that cut.
Each member replays the records of the cut from its own log.  Version 1::

  u8     version = 1
  u32    topic length (1..255), topic (UTF-8)
  32     issuer (x-only key)
  u32    origins in the cut (<= MAX_CUT_ORIGINS), each: 32-byte origin,
         u64 seq >= 1; origins strictly ascending
  u32    required record ids (<= MAX_REQUIRED), each 32 bytes, strictly
         ascending

The statement is the request followed by the resulting state::

  u32    accounts, strictly ascending, each: 32-byte account,
         16-byte big-endian balance, u64 number of commands it sent
         that applied

listing every account that sent or received an applied command; the message
is C{tagged_hash("frostnode/validation/ledger", statement)}.  L{replay} plus
L{ledger_message} recompute it from records obtained any other way.

Refusals (L{Rejection} codes): C{malformed-request}; C{wrong-ledger} (a
pinned scheme got another topic or issuer); C{not-in-cut} (a required record
is not among the cut's records); C{wrong-topic}; and for a required record
that did not apply, its outcome's code (C{overdraft}, C{blocked},
C{bad-signature}, C{double-apply}, C{not-issuer}, C{malformed-command}).
A cut this member does not hold yet raises L{MissingData}; one that reaches
records retention pruned is refused with C{pruned}: replaying a ledger
needs its whole history, so run the ledger's nodes with retention off.

Cost: a request replays the whole cut and checks each command's signature
(verifications are cached by sighash, key and signature).  That is fine for a
small ledger; a large one would need signed checkpoints to start from.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Optional

from coincurve import PublicKeyXOnly

from frostnode.crypto.bip340 import pubkey_xonly, schnorr_sign, schnorr_verify
from frostnode.crypto.hashes import tagged_hash
from frostnode.validation.interface import LogView, Rejection, check_cut, scheme_message
from frostnode.wire import MAX_U32, MAX_U64, DecodeError, Reader, Writer

if TYPE_CHECKING:  # pragma: no cover
    from frostnode.store.log import RecordBody

NAME = "ledger"
DEFAULT_TOPIC = "ledger"

COMMAND_VERSION = 1
TRANSFER = 1
MINT = 2
KEY_SIZE = 32
SIG_SIZE = 64
#: Bytes a command signs (everything before the signature).
SIGNED_SIZE = 1 + 1 + KEY_SIZE + KEY_SIZE + 8 + 8
COMMAND_SIZE = SIGNED_SIZE + SIG_SIZE

COMMAND_TAG = "frostnode/ledger/command"
LEDGER_ID_TAG = "frostnode/ledger/id"

REQUEST_VERSION = 1
MAX_TOPIC = 255
MAX_CUT_ORIGINS = 4096
MAX_REQUIRED = 1024
_BALANCE_SIZE = 16

_KIND_NAMES = {TRANSFER: "transfer", MINT: "mint"}

# Outcome codes.
APPLIED = "applied"
MALFORMED_COMMAND = "malformed-command"
NOT_ISSUER = "not-issuer"
BAD_SIGNATURE = "bad-signature"
DOUBLE_APPLY = "double-apply"
OVERDRAFT = "overdraft"
BLOCKED = "blocked"


def _short(key: bytes) -> str:
    return key.hex()[:16]


def _check_key(key: object, what: str) -> bytes:
    """An x-only key that is a point on the curve (coincurve parses it)."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be a {KEY_SIZE}-byte x-only key")
    try:
        PublicKeyXOnly(key)
    except (ValueError, TypeError):
        raise ValueError(f"{what} {_short(key)} is not a valid x-only public key") from None
    return key


def _check_topic(topic: object) -> bytes:
    if not isinstance(topic, str):
        raise ValueError(f"the ledger topic must be a str, not {type(topic).__name__}")
    raw = topic.encode("utf-8")
    if not 1 <= len(raw) <= MAX_TOPIC:
        raise ValueError(f"the ledger topic must be 1..{MAX_TOPIC} bytes of UTF-8, not {len(raw)}")
    return raw


def ledger_id(topic: str, issuer: bytes) -> bytes:
    """The 32-byte identity of the ledger (C{topic}, C{issuer}) that every command signs."""
    return tagged_hash(LEDGER_ID_TAG, Writer().var_bytes(_check_topic(topic), MAX_TOPIC).fixed(issuer, KEY_SIZE).to_bytes())


# -- commands -------------------------------------------------------------------------


class Command(NamedTuple):
    """One decoded ledger command (see the module docstring for the layout)."""

    kind: int
    sender: bytes
    recipient: bytes
    amount: int
    seq: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return (
            Writer().u8(COMMAND_VERSION).u8(self.kind).fixed(self.sender, KEY_SIZE)
            .fixed(self.recipient, KEY_SIZE).u64(self.amount).u64(self.seq).to_bytes()
        )

    def encode(self) -> bytes:
        """The record payload."""
        return self.signed_bytes() + self.signature

    def sighash(self, ledger: bytes) -> bytes:
        """What the sender signs, for the ledger with id C{ledger} (L{ledger_id})."""
        return tagged_hash(COMMAND_TAG, ledger + self.signed_bytes())

    @classmethod
    def decode(cls, payload: bytes) -> "Command":
        """
        Parse a payload strictly.

        @raise DecodeError: wrong size or version, an unknown kind, a zero
            amount or sequence number, a transfer to its own sender, or a
            recipient that is not a valid key.  (The signature, and hence
            the sender, is checked by L{replay}, which knows the ledger.)
        """
        if len(payload) != COMMAND_SIZE:
            raise DecodeError(f"a ledger command is {COMMAND_SIZE} bytes, not {len(payload)}")
        r = Reader(payload, "ledger command")
        r.version(COMMAND_VERSION)
        kind = r.u8()
        if kind not in _KIND_NAMES:
            raise DecodeError(f"ledger command: unknown kind {kind}")
        sender, recipient = r.fixed(KEY_SIZE), r.fixed(KEY_SIZE)
        amount, seq = r.u64(), r.u64()
        signature = r.fixed(SIG_SIZE)
        r.finish()
        if amount == 0:
            raise DecodeError("ledger command: amount is zero")
        if seq == 0:
            raise DecodeError("ledger command: sequence numbers start at 1")
        if kind == TRANSFER and sender == recipient:
            raise DecodeError("ledger command: a transfer to the sending account")
        try:
            _check_key(recipient, "recipient")
        except ValueError as e:
            raise DecodeError(f"ledger command: {e}") from None
        return cls(kind, sender, recipient, amount, seq, signature)


def _make_command(
    kind: int, seckey: bytes, recipient: bytes, amount: int, seq: int, ledger: bytes, aux_rand: Optional[bytes]
) -> bytes:
    _check_key(recipient, "recipient")
    if not isinstance(amount, int) or not 1 <= amount <= MAX_U64:
        raise ValueError(f"amount must be an int in [1, 2^64), not {amount!r}")
    if not isinstance(seq, int) or not 1 <= seq <= MAX_U64:
        raise ValueError(f"sequence number must be an int in [1, 2^64), not {seq!r}")
    sender = pubkey_xonly(seckey)
    if kind == TRANSFER and sender == recipient:
        raise ValueError("a transfer to the sending account does nothing; refusing to sign it")
    unsigned = Command(kind, sender, recipient, amount, seq, b"")
    sig = schnorr_sign(unsigned.sighash(ledger), seckey, os.urandom(32) if aux_rand is None else aux_rand)
    return unsigned._replace(signature=sig).encode()


def sign_transfer(
    seckey: bytes,
    recipient: bytes,
    amount: int,
    seq: int,
    *,
    issuer: bytes,
    topic: str = DEFAULT_TOPIC,
    aux_rand: Optional[bytes] = None,
) -> bytes:
    """
    A signed transfer from the account of C{seckey}: the payload of a record
    to submit on C{topic}.

    @param seq: the sender's next sequence number (one more than the
        number of its commands applied so far; see L{LedgerState.seqs}).
    @param aux_rand: BIP340 auxiliary randomness; C{None} draws 32 bytes
        from C{os.urandom}.  Client-side only: schemes never sign.
    """
    return _make_command(TRANSFER, seckey, recipient, amount, seq, ledger_id(topic, _check_key(issuer, "issuer")), aux_rand)


def sign_mint(
    issuer_seckey: bytes,
    recipient: bytes,
    amount: int,
    seq: int,
    *,
    topic: str = DEFAULT_TOPIC,
    aux_rand: Optional[bytes] = None,
) -> bytes:
    """
    A mint by the issuer (the account of C{issuer_seckey}) crediting
    C{recipient}; C{seq} counts the issuer's commands, mints and transfers
    alike.
    """
    issuer = pubkey_xonly(issuer_seckey)
    return _make_command(MINT, issuer_seckey, recipient, amount, seq, ledger_id(topic, issuer), aux_rand)


@lru_cache(maxsize=16384)
def _verify(sighash: bytes, sender: bytes, signature: bytes) -> bool:
    return schnorr_verify(sighash, sender, signature)


# -- replay ---------------------------------------------------------------------------


class Outcome(NamedTuple):
    """
    What the replay made of one record.

    @ivar code: L{APPLIED} or why not (see the module docstring).
    @ivar command: the command's sighash, C{None} if it never was a valid command.
    """

    code: str
    reason: str
    command: Optional[bytes] = None

    @property
    def applied(self) -> bool:
        return self.code == APPLIED


@dataclass(frozen=True)
class LedgerState:
    """
    The ledger after L{replay}.

    @ivar balances: every account that sent or received an applied command,
        ascending, to its balance (possibly 0).
    @ivar seqs: for each of those accounts, how many of its own commands
        applied (its next sequence number is one more).
    @ivar outcomes: for each record on the ledger's topic, by record id.
    """

    balances: dict[bytes, int]
    seqs: dict[bytes, int]
    outcomes: dict[bytes, Outcome]

    @property
    def supply(self) -> int:
        return sum(self.balances.values())

    def encode(self) -> bytes:
        """The state part of the statement."""
        w = Writer().count(len(self.balances), MAX_U32)
        for account, balance in self.balances.items():
            w.fixed(account, KEY_SIZE).fixed(balance.to_bytes(_BALANCE_SIZE, "big"), _BALANCE_SIZE).u64(self.seqs[account])
        return w.to_bytes()


def replay(bodies: Iterable["RecordBody"], issuer: bytes, topic: str = DEFAULT_TOPIC) -> LedgerState:
    """
    The ledger (C{topic}, C{issuer}) defined by a set of records.

    The result depends only on the set: order and repetitions of C{bodies}
    do not matter (see the module docstring for the rules).  Pass the bodies
    of the records of a cut, e.g. C{DataLogView(log).records_in_cut(cut)}
    or C{[e.envelope.body for e in log.records_in_cut(cut)]}, or records
    gathered any other way for an independent check.

    @param bodies: objects with C{record_id}, C{topic} and C{payload}, as
        L{frostnode.store.log.RecordBody}.
    @raise ValueError: C{issuer} or C{topic} is not valid.
    """
    _check_key(issuer, "issuer")
    ledger = ledger_id(topic, issuer)
    outcomes: dict[bytes, Outcome] = {}
    # (sender, seq) -> sighash -> (command, record ids)
    slots: dict[tuple[bytes, int], dict[bytes, tuple[Command, list[bytes]]]] = {}
    for body in bodies:
        if body.topic != topic:
            continue
        rid = body.record_id
        if rid in outcomes:
            continue
        try:
            cmd = Command.decode(body.payload)
        except DecodeError as e:
            outcomes[rid] = Outcome(MALFORMED_COMMAND, str(e))
            continue
        h = cmd.sighash(ledger)
        if cmd.kind == MINT and cmd.sender != issuer:
            outcomes[rid] = Outcome(NOT_ISSUER, f"mint signed by {_short(cmd.sender)}, not the issuer {_short(issuer)}", h)
            continue
        if not _verify(h, cmd.sender, cmd.signature):
            outcomes[rid] = Outcome(
                BAD_SIGNATURE,
                f"{_KIND_NAMES[cmd.kind]} sequence {cmd.seq} does not carry a valid signature by {_short(cmd.sender)}",
                h,
            )
            continue
        outcomes[rid] = Outcome("", "", h)  # placeholder, decided below
        slots.setdefault((cmd.sender, cmd.seq), {}).setdefault(h, (cmd, []))[1].append(rid)

    # Step 3: one command per (account, seq), the smallest sighash.
    chains: dict[bytes, dict[int, tuple[Command, bytes]]] = {}
    for (sender, seq), candidates in slots.items():
        winner = min(candidates)
        chains.setdefault(sender, {})[seq] = (candidates[winner][0], winner)
        for h, (cmd, rids) in candidates.items():
            if h != winner:
                for rid in rids:
                    outcomes[rid] = Outcome(
                        DOUBLE_APPLY,
                        f"account {_short(sender)} sequence {seq} is already taken by command {_short(winner)}",
                        h,
                    )

    # Step 4: apply until nothing more applies.  Any order reaches the same state.
    balances: dict[bytes, int] = {}
    next_seq = {sender: 1 for sender in chains}
    applied: set[bytes] = set()
    queue = deque(sorted(chains))
    queued = set(queue)
    while queue:
        x = queue.popleft()
        queued.discard(x)
        chain = chains[x]
        while True:
            item = chain.get(next_seq[x])
            if item is None:
                break
            cmd, h = item
            if cmd.kind == TRANSFER:
                have = balances.get(x, 0)
                if have < cmd.amount:
                    break
                balances[x] = have - cmd.amount
            else:
                balances.setdefault(x, 0)
            balances[cmd.recipient] = balances.get(cmd.recipient, 0) + cmd.amount
            applied.add(h)
            next_seq[x] += 1
            to = cmd.recipient
            if to != x and to in chains and to not in queued:
                queue.append(to)
                queued.add(to)

    for (sender, seq), candidates in slots.items():
        cmd, h = chains[sender][seq]
        if h in applied:
            outcome = Outcome(APPLIED, f"{_KIND_NAMES[cmd.kind]} sequence {seq} of {_short(sender)} applied", h)
        elif next_seq[sender] == seq:
            outcome = Outcome(
                OVERDRAFT,
                f"account {_short(sender)} holds {balances.get(sender, 0)} at this cut; "
                f"its transfer sequence {seq} sends {cmd.amount}",
                h,
            )
        else:
            outcome = Outcome(
                BLOCKED,
                f"account {_short(sender)} sequence {seq} waits for its sequence {next_seq[sender]}, "
                "which is missing or not applicable at this cut",
                h,
            )
        for rid in candidates[h][1]:
            outcomes[rid] = outcome

    assert all(o.code for o in outcomes.values()), "a command's outcome was left undecided"
    accounts = sorted(balances)
    return LedgerState(
        balances={a: balances[a] for a in accounts},
        seqs={a: next_seq.get(a, 1) - 1 for a in accounts},
        outcomes=outcomes,
    )


# -- requests and statements ----------------------------------------------------------


class LedgerRequest(NamedTuple):
    """A decoded C{ledger} request."""

    topic: str
    issuer: bytes
    cut: dict[bytes, int]
    required: tuple[bytes, ...]


def encode_request(
    *,
    issuer: bytes,
    cut: Mapping[bytes, int],
    topic: str = DEFAULT_TOPIC,
    require: Iterable[bytes] = (),
) -> bytes:
    """
    The canonical C{ledger} request.

    @param cut: C{{origin: seq}}; entries with C{seq == 0} name nothing and
        are dropped.
    @param require: record ids that must be applied at the cut for the
        members to sign (any order, no repeats).
    @raise ValueError: an invalid key, cut, topic or record id, a repeated
        record id, or a list over its limit.
    """
    raw_topic = _check_topic(topic)
    _check_key(issuer, "issuer")
    entries = [(o, s) for o, s in check_cut(cut).items() if s > 0]
    ids = list(require)
    for rid in ids:
        if not isinstance(rid, bytes) or len(rid) != 32:
            raise ValueError(f"required record id {rid!r} is not 32 bytes")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise ValueError("a required record id is named twice")
    w = Writer().u8(REQUEST_VERSION).var_bytes(raw_topic, MAX_TOPIC).fixed(issuer, KEY_SIZE)
    w.count(len(entries), MAX_CUT_ORIGINS)
    for origin, seq in entries:
        w.fixed(origin, KEY_SIZE).u64(seq)
    w.count(len(unique), MAX_REQUIRED)
    for rid in unique:
        w.fixed(rid, 32)
    return w.to_bytes()


def decode_request(request: bytes) -> LedgerRequest:
    """
    Parse a request made by L{encode_request}.

    @raise DecodeError: anything else: wrong version, a topic that is empty
        or not UTF-8, an invalid issuer key, origins or ids not strictly
        ascending, a zero sequence number, counts over the limits, trailing
        bytes.
    """
    r = Reader(request, "ledger request")
    r.version(REQUEST_VERSION)
    raw_topic = r.var_bytes(MAX_TOPIC)
    issuer = r.fixed(KEY_SIZE)
    n = r.count(MAX_CUT_ORIGINS, KEY_SIZE + 8)
    cut: dict[bytes, int] = {}
    last = b""
    for _ in range(n):
        origin, seq = r.fixed(KEY_SIZE), r.u64()
        if origin <= last:
            raise DecodeError("ledger request: cut origins are not strictly ascending")
        if seq == 0:
            raise DecodeError(f"ledger request: cut names origin {_short(origin)} with sequence 0")
        cut[origin] = seq
        last = origin
    m = r.count(MAX_REQUIRED, 32)
    required = tuple(r.fixed(32) for _ in range(m))
    r.finish()
    if any(a >= b for a, b in zip(required, required[1:])):
        raise DecodeError("ledger request: required record ids are not strictly ascending")
    try:
        topic = raw_topic.decode("utf-8")
        _check_topic(topic)
        _check_key(issuer, "issuer")
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"ledger request: {e}") from None
    return LedgerRequest(topic, issuer, cut, required)


def request_from_json(obj: Any, *, topic: Optional[str] = None, issuer: Optional[bytes] = None) -> bytes:
    """
    The request from its JSON form::

      {"topic": "ledger", "issuer": "<hex>", "cut": {"<origin hex>": seq, ...},
       "require": ["<record id hex>", ...]}

    C{topic} defaults to C{topic} (or C{"ledger"}), C{issuer} to C{issuer};
    C{require} is optional.

    @raise ValueError: a missing or mistyped field, bad hex, or what
        L{encode_request} refuses.
    """
    if not isinstance(obj, dict):
        raise ValueError("a ledger request is a JSON object")
    unknown = set(obj) - {"topic", "issuer", "cut", "require"}
    if unknown:
        raise ValueError(f"unknown field(s) in ledger request: {', '.join(sorted(unknown))}")

    def unhex(value: Any, what: str) -> bytes:
        try:
            return bytes.fromhex(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} {value!r} is not hex") from None

    if "issuer" in obj:
        issuer = unhex(obj["issuer"], "issuer")
    if issuer is None:
        raise ValueError('a ledger request needs "issuer" (hex x-only key)')
    raw_cut = obj.get("cut")
    if not isinstance(raw_cut, dict):
        raise ValueError('"cut" must be an object {"<origin hex>": sequence number}')
    cut = {unhex(o, "cut origin"): s for o, s in raw_cut.items()}
    require = obj.get("require", [])
    if not isinstance(require, list):
        raise ValueError('"require" must be a list of hex record ids')
    return encode_request(
        issuer=issuer,
        cut=cut,
        topic=obj.get("topic", topic or DEFAULT_TOPIC),
        require=[unhex(x, "required record id") for x in require],
    )


def ledger_statement(request: LedgerRequest, state: LedgerState) -> bytes:
    """The statement members sign for C{request} when their replay gives C{state}."""
    return (
        encode_request(issuer=request.issuer, cut=request.cut, topic=request.topic, require=request.required)
        + state.encode()
    )


def ledger_message(request: LedgerRequest, state: LedgerState, name: str = NAME) -> bytes:
    """
    The exact message the federation signs for C{request} and C{state}:
    with L{replay}, how a client checks a signature against its own replay.
    """
    return scheme_message(name, ledger_statement(request, state))


class LedgerScheme:
    """
    Sign the ledger's balances at the cut a request names, after replaying
    this member's own records of that cut.

    @param name: the scheme's name (its message domain).
    @param topic: if set, the only topic this scheme signs for.
    @param issuer: if set, the only issuer this scheme signs for.
    """

    def __init__(self, name: str = NAME, *, topic: Optional[str] = None, issuer: Optional[bytes] = None) -> None:
        if topic is not None:
            _check_topic(topic)
        if issuer is not None:
            _check_key(issuer, "issuer")
        self.name = name
        self.topic = topic
        self.issuer = issuer

    def request_from_json(self, obj: Any) -> bytes:
        return request_from_json(obj, topic=self.topic, issuer=self.issuer)

    def statement(self, request: bytes, view: LogView) -> bytes:
        try:
            req = decode_request(request)
        except DecodeError as e:
            raise Rejection(str(e), code="malformed-request") from None
        if self.topic is not None and req.topic != self.topic:
            raise Rejection(f"this scheme signs ledger topic {self.topic!r} only, not {req.topic!r}", code="wrong-ledger")
        if self.issuer is not None and req.issuer != self.issuer:
            raise Rejection(
                f"this scheme signs for issuer {_short(self.issuer)} only, not {_short(req.issuer)}", code="wrong-ledger"
            )
        bodies = view.records_in_cut(req.cut)
        state = replay(bodies, req.issuer, req.topic)
        in_cut = {b.record_id: b for b in bodies}
        for rid in req.required:
            body = in_cut.get(rid)
            if body is None:
                raise Rejection(f"required record {_short(rid)} is not in the cut", code="not-in-cut")
            if body.topic != req.topic:
                raise Rejection(
                    f"required record {_short(rid)} is on topic {body.topic!r}, not the ledger's {req.topic!r}",
                    code="wrong-topic",
                )
            outcome = state.outcomes[rid]
            if not outcome.applied:
                raise Rejection(f"required record {_short(rid)}: {outcome.reason}", code=outcome.code)
        return ledger_statement(req, state)

    def __repr__(self) -> str:
        return f"LedgerScheme(name={self.name!r}, topic={self.topic!r}, issuer={self.issuer.hex() if self.issuer else None})"


#: The built-in instance (entry point C{ledger = frostnode.validation.ledger:scheme}).
scheme = LedgerScheme()
