# -*- test-case-name: tests.test_broadcast_bracha -*-
"""
Bracha reliable broadcast among a fixed member list, as a pure state machine.

Why this shape: FROST's KeyGen needs a broadcast channel (every member must see
the same round-1 package from each member, or none), and the links below give
only authenticated, reliable, I{unordered} point-to-point delivery.  Bracha's
protocol turns that into reliable broadcast for n >= 3f + 1 with f = (n-1)//3:

  - B{validity}: an honest originator's payload is delivered by every honest member;
  - B{consistency}: no two honest members deliver different payloads for one
    (originator, tag);
  - B{totality}: if one honest member delivers, every honest member does.

This module does no I/O.  L{Bracha.broadcast} and L{Bracha.receive} return
actions (L{Send}, L{SendAll}, L{Deliver}, L{Misbehaviour}) that the Twisted
driver (L{frostnode.broadcast.service}) carries out; tests drive it directly.

Protocol, per instance (originator, tag):
  - SEND(tag, payload) from the originator.  The originator is the
    authenticated link's member, never a field.  Receiving it counts as the
    originator's ECHO, so the originator sends no separate ECHO (n-1 messages
    fewer per broadcast).
  - On the first SEND, ECHO(digest) to all.  The digest is
    C{tagged_hash("frostnode/broadcast", originator || len(tag) || tag || payload)},
    so equal payloads under different instances never share a digest.
  - READY(digest) to all on ceil((n+f+1)/2) ECHOs for one digest, or on f+1
    READYs for one digest (amplification); at most one READY per instance.
  - Deliver on 2f+1 READYs for a digest, once we hold a payload with that
    digest.  Counters are per digest and each member counts at most once per
    message kind per instance (a second ECHO or READY with a different digest
    is equivocation and is reported), so digests are compared, not merely
    counted.

Payload retrieval (totality when the originator withheld the SEND from us): a
member with 2f+1 READYs for a digest but no matching payload sends
REQUEST(digest) to every member whose ECHO for that digest it has seen (now
or later).  An honest echoer holds the payload (in the instance, or for a
while after collecting it in the retained store, see below), and at least
f+1 honest members echoed any digest that reached READY quorum, so an answer
comes.  A member answers each peer at most once per instance with
RESPONSE(payload); the receiver checks the payload against the wanted digest
and blames a responder whose payload does not match.  We chose pull over attaching payloads to ECHOs
because the common case (everyone got the SEND) then costs nothing extra.

Concurrency and memory (every bound below is a config field; the argument
for each is why it cannot cost an honest originator totality):

  - Instances are independent and accept messages in any order; an ECHO or
    READY for an instance we have not seen yet creates it.
  - An instance is I{owned} when it is charged to its originator's quota of
    C{max_open_per_origin}.  Owned instances are never dropped before
    delivery (only abandoned, see below).  An instance becomes owned once it
    is I{confirmed} (the originator's SEND arrived, or f+1 distinct members
    have spoken in it, so at least one honest member did and the originator
    really started it) and its originator has room.
  - Until then it is charged to every member that spoke in it, per
    C{(speaker, originator)} pair, at most C{max_unconfirmed_per_member}
    per pair.  A pair over its cap drops I{its own} oldest charge; an
    instance is forgotten only when no charge is left on it.  So a byzantine
    speaker inventing tags only evicts its own charges, and a byzantine
    originator whose one-off SENDs honest members echo only evicts charges
    on its own instances.  An honest member speaks in an honest originator's
    instance only after that originator started it (on its SEND, or on a
    quorum that contains honest members who got it), and an honest
    originator keeps at most C{max_open_per_origin} broadcasts in flight, so
    with C{max_unconfirmed_per_member >= max_open_per_origin} an (honest,
    honest) pair is never over its cap: no honest message about an honest
    broadcast is lost, however many junk instances byzantine members start
    (unless we lag that originator by more than its whole quota; catching up
    from that far behind is the sync layer's job).  Worst case, unowned
    instances number C{(n-1) * n * max_unconfirmed_per_member}.
  - A confirmed instance whose originator's quota is full I{waits}: it keeps
    counting ECHOs and READYs, sends READY and delivers like any other, but
    we do not ECHO a SEND that waits (so a flooding originator gets no
    amplification from us beyond its quota).  Room is made by collecting
    the originator's oldest delivered instance (its payload goes to the
    retained store, below); a waiting instance is owned, and ECHOed, as soon
    as there is room, in arrival order.  Nothing is refused: a byzantine
    originator that fills our quota with SENDs only we got (they never
    deliver) cannot keep us from delivering its next broadcast with
    everyone else.  Totality needs every honest READY, not every honest
    ECHO; an ECHO we hold back costs only the liveness of an originator that
    has a quota's worth of undelivered broadcasts open at us.
  - An instance is collected as soon as it is delivered and every member's
    ECHO for the delivered digest is in: every member then holds the payload
    and our READY is already sent, so nobody can still need anything from us.
    Otherwise the driver calls L{Bracha.sweep} periodically: a delivered
    instance is collected C{linger_sweeps} sweeps after delivery, an
    undelivered one abandoned after C{abandon_sweeps}.
  - When we collect an instance whose payload we ECHOed before every member
    ECHOed it, someone may still REQUEST that payload from us (an originator
    that withheld its SEND from them, then hurried its later broadcasts to
    push this one out).  The payload moves to a I{retained} store, which
    answers REQUESTs for C{retain_sweeps} sweeps, at most
    C{max_retained_per_origin} payloads per originator (an originator can
    only push out its own).  A member that pulls a payload later than that
    will not get it: catch-up after long absences is the sync layer's job.
  - Keys of collected confirmed instances go into a I{done} set per
    originator, C{done_capacity} each, so late and duplicate messages are
    ignored without re-creating state.  Only an originator's own broadcasts
    push its keys out, so only an originator that ran C{done_capacity}
    broadcasts since can get an old tag delivered a second time (by
    broadcasting it again).  Upper layers therefore put a session or epoch in
    every tag and keep only the first delivery for it (a DKG session keeps
    one round-1 package per member; sync files signed records by origin and
    sequence number, idempotently).
  - What bounded memory still allows a byzantine originator to do, to its
    own broadcasts only: before one of them is owned at us, push every
    honest speaker's charge on it out by making each honest member echo
    C{max_unconfirmed_per_member} later SENDs first; or push its payload out
    of the retained stores of every holder before a withheld member's
    REQUEST arrives.  Both take a quota's worth of traffic through every
    honest member inside that window, and cost other originators nothing.

Wire format (version 1).  It follows L{frostnode.wire}'s conventions
(fixed-width big-endian integers, u32 payload lengths, every length checked
against the caller's limits and the bytes left before slicing, no trailing
bytes, L{DecodeError} for anything malformed) and takes its limits from
there.  The batch decoder is written out inline rather than with
L{frostnode.wire.Reader}: it runs once per record, O(n^2) times per
broadcast, and the inline loop costs ~0.45 us per record against ~1.5 us
through C{Reader} (measured on a 21-record ECHO/READY/SEND batch).

  batch    = version:u8 count:u16 record*count        (no trailing bytes)
  SEND     = 0x01 taglen:u8 tag plen:u32 payload
  ECHO     = 0x02 key digest:32
  READY    = 0x03 key digest:32
  REQUEST  = 0x04 key digest:32
  RESPONSE = 0x05 key plen:u32 payload
  key      = originator:32 taglen:u8 tag

A batch coalesces every record for one peer in one reactor turn: Bracha sends
O(n^2) records per broadcast, so per-frame costs must not be paid per record.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Sequence, Union

from frostnode.crypto.hashes import tagged_hash
from frostnode.wire import MAX_U8, MAX_U16, MAX_U32, DecodeError

DIGEST_TAG = "frostnode/broadcast"
WIRE_VERSION = 1

SEND = 1
ECHO = 2
READY = 3
REQUEST = 4
RESPONSE = 5

KEY_LEN = 32
DIGEST_LEN = 32
MAX_BATCH_RECORDS = MAX_U16

_BATCH_HEADER = struct.Struct(">BH")
_U32 = struct.Struct(">I")
_MIN_RECORD = 6  # SEND with empty tag and payload


class BrachaConfig(NamedTuple):
    """
    Limits that bound what a peer can make us decode or remember.

    @ivar max_tag: longest tag accepted (at most 255).
    @ivar max_payload: largest payload accepted or broadcast.
    @ivar max_open_per_origin: owned (confirmed, uncollected) instances per
        originator; also how many broadcasts we keep in flight ourselves.
    @ivar max_unconfirmed_per_member: charges for instances not (yet) owned,
        per (speaker, originator) pair; over it the pair's oldest charge is
        dropped.  Keep it at least C{max_open_per_origin} (see the module
        docstring for why that makes honest messages safe).
    @ivar done_capacity: collected instance keys remembered, per originator.
    @ivar linger_sweeps: sweeps a delivered but not fully echoed instance survives.
    @ivar abandon_sweeps: sweeps an undelivered instance survives.
    @ivar max_retained_per_origin: payloads of collected instances kept to
        answer REQUESTs, per originator.
    @ivar retain_sweeps: sweeps a retained payload is kept.
    """

    max_tag: int = 128
    max_payload: int = 64 * 1024
    max_open_per_origin: int = 256
    max_unconfirmed_per_member: int = 256
    done_capacity: int = 4096
    linger_sweeps: int = 2
    abandon_sweeps: int = 20
    max_retained_per_origin: int = 256
    retain_sweeps: int = 20


class Send(NamedTuple):
    """Send one record to one peer."""

    to: bytes
    record: bytes


class SendAll(NamedTuple):
    """Send one record to every other member."""

    record: bytes


class Deliver(NamedTuple):
    """The broadcast (sender, tag) is delivered with this payload, exactly once."""

    sender: bytes
    tag: bytes
    payload: bytes


class Misbehaviour(NamedTuple):
    """C{culprit} (the authenticated link's member) sent something no honest member sends."""

    culprit: bytes
    reason: str


Action = Union[Send, SendAll, Deliver, Misbehaviour]


def instance_key(originator: bytes, tag: bytes) -> bytes:
    """The wire and table key of an instance: C{originator || len(tag) || tag}."""
    return originator + bytes((len(tag),)) + tag


def payload_digest(key: bytes, payload: bytes) -> bytes:
    """The digest ECHO and READY carry, domain-separated by the instance key."""
    return tagged_hash(DIGEST_TAG, key + payload)


def encode_send(tag: bytes, payload: bytes) -> bytes:
    return bytes((SEND, len(tag))) + tag + _U32.pack(len(payload)) + payload


def encode_echo(key: bytes, digest: bytes) -> bytes:
    return bytes((ECHO,)) + key + digest


def encode_ready(key: bytes, digest: bytes) -> bytes:
    return bytes((READY,)) + key + digest


def encode_request(key: bytes, digest: bytes) -> bytes:
    return bytes((REQUEST,)) + key + digest


def encode_response(key: bytes, payload: bytes) -> bytes:
    return bytes((RESPONSE,)) + key + _U32.pack(len(payload)) + payload


def encode_batch(records: Sequence[bytes]) -> bytes:
    """Coalesce records for one peer into one links payload."""
    if not 0 < len(records) <= MAX_BATCH_RECORDS:
        raise ValueError(f"a batch holds 1..{MAX_BATCH_RECORDS} records, not {len(records)}")
    return _BATCH_HEADER.pack(WIRE_VERSION, len(records)) + b"".join(records)


def decode_batch(data: bytes, max_tag: int, max_payload: int) -> list[tuple[int, bytes, bytes]]:
    """
    Parse a batch into C{(kind, key_or_tag, digest_or_payload)} tuples.

    SEND yields C{(SEND, tag, payload)}; the others yield C{(kind, key, x)}.
    Every length is checked against the limits and the remaining bytes before
    it is used.  Whether the originator in a key is a member is the caller's
    check.

    @raise DecodeError: truncated, over a limit, trailing bytes, an unknown
        record kind or wire version.
    """
    n = len(data)
    if n < _BATCH_HEADER.size:
        raise DecodeError("batch shorter than its header")
    version, count = _BATCH_HEADER.unpack_from(data, 0)
    if version != WIRE_VERSION:
        raise DecodeError(f"unsupported broadcast wire version {version}")
    if count == 0 or count > (n - _BATCH_HEADER.size) // _MIN_RECORD:
        raise DecodeError(f"batch count {count} impossible for {n} bytes")
    off = _BATCH_HEADER.size
    out: list[tuple[int, bytes, bytes]] = []
    append = out.append
    for _ in range(count):
        if off + 2 > n:
            raise DecodeError("truncated record")
        kind = data[off]
        if kind == ECHO or kind == READY or kind == REQUEST:
            if off + 34 > n:
                raise DecodeError("truncated record key")
            tl = data[off + 33]
            if tl > max_tag:
                raise DecodeError(f"tag of {tl} bytes over the {max_tag}-byte limit")
            kend = off + 34 + tl
            end = kend + DIGEST_LEN
            if end > n:
                raise DecodeError("truncated digest")
            append((kind, data[off + 1:kend], data[kend:end]))
            off = end
        elif kind == SEND or kind == RESPONSE:
            if kind == SEND:
                tl = data[off + 1]
                tstart = off + 2
            else:
                if off + 34 > n:
                    raise DecodeError("truncated record key")
                tl = data[off + 33]
                tstart = off + 1
            if tl > max_tag:
                raise DecodeError(f"tag of {tl} bytes over the {max_tag}-byte limit")
            kend = off + 34 + tl if kind == RESPONSE else tstart + tl
            if kend + 4 > n:
                raise DecodeError("truncated payload length")
            (plen,) = _U32.unpack_from(data, kend)
            if plen > max_payload:
                raise DecodeError(f"payload of {plen} bytes over the {max_payload}-byte limit")
            end = kend + 4 + plen
            if end > n:
                raise DecodeError("truncated payload")
            append((kind, data[tstart:kend], data[kend + 4:end]))
            off = end
        else:
            raise DecodeError(f"unknown record kind {kind}")
    if off != n:
        raise DecodeError(f"{n - off} trailing bytes after {count} records")
    return out


class _Instance:
    """Everything one node remembers about one (originator, tag)."""

    __slots__ = (
        "key", "originator", "tag", "payloads", "send_digest",
        "echo_from", "echo_count", "ready_from", "ready_count",
        "ready", "delivered", "final", "want", "asked", "answered",
        "supporters", "confirmed", "born", "delivered_at", "closed",
    )

    def __init__(self, key: bytes, born: int) -> None:
        self.key = key
        self.originator = key[:KEY_LEN]
        self.tag = key[KEY_LEN + 1:]
        self.payloads: dict[bytes, bytes] = {}
        self.send_digest: Optional[bytes] = None
        self.echo_from: dict[bytes, bytes] = {}
        self.echo_count: dict[bytes, int] = {}
        self.ready_from: dict[bytes, bytes] = {}
        self.ready_count: dict[bytes, int] = {}
        self.ready: Optional[bytes] = None
        self.delivered = False
        self.final: Optional[bytes] = None
        self.want: Optional[bytes] = None
        self.asked: set[bytes] = set()
        self.answered: set[bytes] = set()
        # None once owned (charged to the originator); else the members charged for it.
        self.supporters: Optional[set[bytes]] = set()
        # The SEND arrived or f+1 members spoke; never reset.
        self.confirmed = False
        self.born = born
        self.delivered_at = 0
        self.closed = False


class _Retained:
    """A collected instance's payload, kept to answer REQUESTs from members that ECHOed late or never."""

    __slots__ = ("digest", "payload", "answered", "since")

    def __init__(self, digest: bytes, payload: bytes, answered: set[bytes], since: int) -> None:
        self.digest = digest
        self.payload = payload
        self.answered = answered
        self.since = since


class Bracha:
    """
    One member's view of every broadcast instance.

    @param me: our host key; must be in C{members}.
    @param members: every member's host key (32 bytes each), ourselves included.
    @param config: the limits; see L{BrachaConfig}.
    @ivar records_handled: records decoded from peers' batches (benchmarks:
        CPU per record; the driver's L{handled<frostnode.broadcast.service.ReliableBroadcast.handled>}).
    @ivar evicted: unowned-instance charges dropped because their
        (speaker, originator) pair was over its cap.
    """

    def __init__(self, me: bytes, members: Sequence[bytes], config: BrachaConfig = BrachaConfig()) -> None:
        members = list(members)
        if any(len(m) != KEY_LEN for m in members):
            raise ValueError("member host keys are 32 bytes")
        if len(set(members)) != len(members):
            raise ValueError("duplicate member host key")
        if me not in members:
            raise ValueError("we are not a member")
        if not 0 <= config.max_tag <= MAX_U8:
            raise ValueError(f"max_tag must be within 0..{MAX_U8}")
        if not 0 <= config.max_payload <= MAX_U32:
            raise ValueError("max_payload must fit in 32 bits")
        if min(config.max_open_per_origin, config.max_unconfirmed_per_member, config.done_capacity,
               config.linger_sweeps, config.abandon_sweeps, config.max_retained_per_origin,
               config.retain_sweeps) < 1:
            raise ValueError("instance limits and sweep counts must be positive")
        self.me = me
        self.members = members
        self.config = config
        self.n = n = len(members)
        self.f = f = (n - 1) // 3
        self.echo_quorum = (n + f + 2) // 2   # ceil((n + f + 1) / 2)
        self.ready_amplify = f + 1
        self.ready_quorum = 2 * f + 1
        self._members = frozenset(members)
        self._instances: dict[bytes, _Instance] = {}
        # Per originator: collected keys, oldest first.
        self._done: dict[bytes, dict[bytes, None]] = {m: {} for m in members}
        self._open: dict[bytes, int] = {m: 0 for m in members}
        # Per originator, owned delivered instances kept only for stragglers, oldest first.
        self._lingering: dict[bytes, dict[bytes, _Instance]] = {m: {} for m in members}
        # Per originator, confirmed undelivered instances waiting for room, oldest first.
        self._waiting: dict[bytes, dict[bytes, _Instance]] = {m: {} for m in members}
        # Originators that may have room for a waiting instance again.
        self._freed: set[bytes] = set()
        # Per (speaker, originator): keys of unowned instances charged to the pair, oldest first.
        self._charges: dict[tuple[bytes, bytes], dict[bytes, None]] = {}
        # Per originator: payloads of collected instances, oldest first.
        self._retained: dict[bytes, dict[bytes, _Retained]] = {m: {} for m in members}
        self._generation = 0
        self.records_handled = 0
        self.evicted = 0

    # -- inspection (tests, metrics) --------------------------------------

    @property
    def open_instances(self) -> int:
        """Instances in memory, owned or not."""
        return len(self._instances)

    @property
    def retained_payloads(self) -> int:
        """Payloads of collected instances still kept to answer REQUESTs."""
        return sum(len(r) for r in self._retained.values())

    def is_done(self, originator: bytes, tag: bytes) -> bool:
        """Whether (originator, tag) was collected and is now ignored."""
        done = self._done.get(originator)
        return done is not None and instance_key(originator, tag) in done

    # -- inputs -----------------------------------------------------------

    def broadcast(self, tag: bytes, payload: bytes) -> list[Action]:
        """
        Start broadcasting C{payload} under C{tag} as its originator.

        @raise ValueError: the tag or payload is over its limit, we already
            broadcast this tag, or we have C{max_open_per_origin} undelivered
            broadcasts in flight (an honest originator stays within the quota
            others keep for it, so that they never hold back their ECHO).
        """
        if len(tag) > self.config.max_tag:
            raise ValueError(f"tag of {len(tag)} bytes over the {self.config.max_tag}-byte limit")
        if len(payload) > self.config.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes over the {self.config.max_payload}-byte limit")
        key = instance_key(self.me, tag)
        inst = self._instances.get(key)
        if key in self._done[self.me] or (inst is not None and inst.send_digest is not None):
            raise ValueError(f"tag {tag!r} was already broadcast")
        if (inst is None or inst.supporters is not None) and not self._room(self.me):
            raise ValueError(f"{self._open[self.me]} broadcasts already in flight")
        out: list[Action] = [SendAll(encode_send(tag, payload))]
        self._on_send(self.me, tag, payload, out)
        if self._freed:
            self._promote(out)
        return out

    def receive(self, sender: bytes, data: bytes) -> list[Action]:
        """
        Handle one batch from the authenticated member C{sender}.

        A malformed batch is dropped whole and reported as L{Misbehaviour}.

        @raise ValueError: C{sender} is not another member (the links
            guarantee it is, so this is the caller's bug).
        """
        if sender not in self._members or sender == self.me:
            raise ValueError("batch from a non-member or from ourselves")
        try:
            records = decode_batch(data, self.config.max_tag, self.config.max_payload)
        except DecodeError as e:
            return [Misbehaviour(sender, f"malformed broadcast batch: {e}")]
        self.records_handled += len(records)
        out: list[Action] = []
        members = self._members
        for kind, k, x in records:
            if kind == SEND:
                self._on_send(sender, k, x, out)
                continue
            if k[:KEY_LEN] not in members:
                out.append(Misbehaviour(sender, "record names a non-member originator"))
                continue
            if kind == ECHO:
                inst = self._instance(k, sender)
                if inst is not None:
                    self._count_echo(inst, sender, x, out)
                    self._maybe_collect(inst)
            elif kind == READY:
                inst = self._instance(k, sender)
                if inst is not None:
                    self._count_ready(inst, sender, x, out)
                    self._maybe_collect(inst)
            elif kind == REQUEST:
                self._on_request(sender, k, x, out)
            else:
                self._on_response(sender, k, x, out)
        if self._freed:
            self._promote(out)
        return out

    def sweep(self) -> list[Action]:
        """
        Advance the collection clock one step (the driver calls this
        periodically and carries out what it returns): collect delivered
        instances that have lingered C{linger_sweeps} sweeps, abandon
        undelivered ones after C{abandon_sweeps}, forget retained payloads
        after C{retain_sweeps}; then ECHO waiting SENDs that now have room.
        """
        self._generation = g = self._generation + 1
        linger, abandon = self.config.linger_sweeps, self.config.abandon_sweeps
        for inst in list(self._instances.values()):
            if inst.delivered:
                if g - inst.delivered_at >= linger:
                    self._collect(inst)
            elif g - inst.born >= abandon:
                self._collect(inst)
        keep = self.config.retain_sweeps
        for retained in self._retained.values():
            while retained:
                oldest = next(iter(retained))
                if g - retained[oldest].since < keep:
                    break
                del retained[oldest]
        out: list[Action] = []
        if self._freed:
            self._promote(out)
        return out

    # -- quotas ------------------------------------------------------------

    def _instance(self, key: bytes, speaker: bytes) -> Optional[_Instance]:
        """Find or create the instance, charging C{speaker} while it is not owned."""
        inst = self._instances.get(key)
        if inst is None:
            if key in self._done[key[:KEY_LEN]]:
                return None
            inst = self._instances[key] = _Instance(key, self._generation)
        elif inst.supporters is None or speaker in inst.supporters:
            return inst
        self._charge(inst, speaker)
        if not inst.confirmed and len(inst.supporters) > self.f:
            # At least one honest member spoke: the originator really started it.
            inst.confirmed = True
            if self._room(inst.originator):
                self._own(inst)
            else:
                self._waiting[inst.originator][key] = inst
        return inst

    def _charge(self, inst: _Instance, speaker: bytes) -> None:
        """Charge an unowned instance to (C{speaker}, its originator), dropping that pair's oldest charge if full."""
        pair = (speaker, inst.originator)
        charges = self._charges.get(pair)
        if charges is None:
            charges = self._charges[pair] = {}
        elif len(charges) >= self.config.max_unconfirmed_per_member:
            oldest = next(iter(charges))
            del charges[oldest]
            self.evicted += 1
            old = self._instances[oldest]
            old.supporters.discard(speaker)
            if not old.supporters:
                self._collect(old)
        charges[inst.key] = None
        inst.supporters.add(speaker)

    def _own(self, inst: _Instance) -> None:
        """Move an instance's charge from its speakers to its originator (which has room)."""
        o, key = inst.originator, inst.key
        charges = self._charges
        for m in inst.supporters:
            del charges[(m, o)][key]
        inst.supporters = None
        self._waiting[o].pop(key, None)
        self._open[o] += 1

    def _room(self, originator: bytes) -> bool:
        """
        Whether one more owned instance fits the originator's quota,
        collecting its oldest delivered one (payload retained) if need be.
        """
        if self._open[originator] < self.config.max_open_per_origin:
            return True
        lingering = self._lingering[originator]
        if not lingering:
            return False
        self._collect(lingering[next(iter(lingering))])
        return True

    def _promote(self, out: list[Action]) -> None:
        """Own (and ECHO) waiting instances, oldest first, of originators that may have room now."""
        freed = self._freed
        while freed:
            o = freed.pop()
            waiting = self._waiting[o]
            while waiting and self._room(o):
                inst = waiting[next(iter(waiting))]
                self._own(inst)
                d = inst.send_digest
                if d is not None and self.me not in inst.echo_from:
                    out.append(SendAll(encode_echo(inst.key, d)))
                    self._count_echo(inst, self.me, d, out)
                self._maybe_collect(inst)

    # -- the protocol ------------------------------------------------------

    def _on_send(self, originator: bytes, tag: bytes, payload: bytes, out: list[Action]) -> None:
        key = instance_key(originator, tag)
        inst = self._instances.get(key)
        if inst is None:
            if key in self._done[originator]:
                return
            inst = self._instances[key] = _Instance(key, self._generation)
            inst.confirmed = True
            if self._room(originator):
                inst.supporters = None
                self._open[originator] += 1
            else:
                self._charge(inst, originator)
                self._waiting[originator][key] = inst
        elif inst.send_digest is not None:
            if payload != inst.payloads[inst.send_digest]:
                out.append(Misbehaviour(originator, f"two different SENDs for tag {tag!r}"))
            return
        elif inst.supporters is not None:
            if originator not in inst.supporters:
                self._charge(inst, originator)
            if not inst.confirmed:
                inst.confirmed = True
                if self._room(originator):
                    self._own(inst)
                else:
                    self._waiting[originator][key] = inst
        digest = payload_digest(key, payload)
        inst.send_digest = digest
        inst.payloads[digest] = payload
        # The SEND is the originator's ECHO.
        self._count_echo(inst, originator, digest, out)
        if inst.supporters is None and originator != self.me and self.me not in inst.echo_from:
            out.append(SendAll(encode_echo(key, digest)))
            self._count_echo(inst, self.me, digest, out)
        if not inst.delivered and inst.want == digest:
            self._deliver(inst, digest, out)
        self._maybe_collect(inst)

    def _count_echo(self, inst: _Instance, member: bytes, digest: bytes, out: list[Action]) -> None:
        prev = inst.echo_from.get(member)
        if prev is not None:
            if prev != digest:
                out.append(Misbehaviour(member, "two different ECHO digests in one broadcast"))
            return
        inst.echo_from[member] = digest
        c = inst.echo_count[digest] = inst.echo_count.get(digest, 0) + 1
        if c >= self.echo_quorum and inst.ready is None:
            self._send_ready(inst, digest, out)
        if inst.want == digest and not inst.delivered and member != self.me and member not in inst.asked:
            inst.asked.add(member)
            out.append(Send(member, encode_request(inst.key, digest)))

    def _send_ready(self, inst: _Instance, digest: bytes, out: list[Action]) -> None:
        inst.ready = digest
        out.append(SendAll(encode_ready(inst.key, digest)))
        self._count_ready(inst, self.me, digest, out)

    def _count_ready(self, inst: _Instance, member: bytes, digest: bytes, out: list[Action]) -> None:
        prev = inst.ready_from.get(member)
        if prev is not None:
            if prev != digest:
                out.append(Misbehaviour(member, "two different READY digests in one broadcast"))
            return
        inst.ready_from[member] = digest
        c = inst.ready_count[digest] = inst.ready_count.get(digest, 0) + 1
        if c >= self.ready_amplify and inst.ready is None:
            self._send_ready(inst, digest, out)
        if c >= self.ready_quorum and not inst.delivered:
            self._deliver(inst, digest, out)

    def _deliver(self, inst: _Instance, digest: bytes, out: list[Action]) -> None:
        payload = inst.payloads.get(digest)
        if payload is not None:
            inst.delivered = True
            inst.final = digest
            inst.delivered_at = self._generation
            o = inst.originator
            if inst.supporters is None:
                self._lingering[o][inst.key] = inst
                if self._waiting[o]:
                    # This one may now make room for a waiting one.
                    self._freed.add(o)
            else:
                self._waiting[o].pop(inst.key, None)
            out.append(Deliver(o, inst.tag, payload))
            return
        if inst.want is not None:
            return  # only possible with more than f faulty members
        inst.want = digest
        for member, d in inst.echo_from.items():
            if d == digest and member != self.me:
                inst.asked.add(member)
                out.append(Send(member, encode_request(inst.key, digest)))

    def _on_request(self, sender: bytes, key: bytes, digest: bytes, out: list[Action]) -> None:
        # Requests never create state: an honest requester only asks members
        # whose ECHO it saw, and they hold the payload while the instance is
        # open, then in the retained store.
        inst = self._instances.get(key)
        if inst is None:
            kept = self._retained[key[:KEY_LEN]].get(key)
            if kept is None or kept.digest != digest or sender in kept.answered:
                return
            kept.answered.add(sender)
            out.append(Send(sender, encode_response(key, kept.payload)))
            return
        if sender in inst.answered:
            return
        payload = inst.payloads.get(digest)
        if payload is None:
            return
        inst.answered.add(sender)
        out.append(Send(sender, encode_response(key, payload)))

    def _on_response(self, sender: bytes, key: bytes, payload: bytes, out: list[Action]) -> None:
        inst = self._instances.get(key)
        if inst is None or inst.want is None or inst.delivered:
            return  # late answer to a request already satisfied
        if sender not in inst.asked:
            out.append(Misbehaviour(sender, "unsolicited broadcast RESPONSE"))
            return
        digest = payload_digest(key, payload)
        if digest != inst.want:
            out.append(Misbehaviour(sender, "RESPONSE payload does not match the READY digest"))
            return
        inst.payloads[digest] = payload
        self._deliver(inst, digest, out)
        self._maybe_collect(inst)

    # -- collection --------------------------------------------------------

    def _maybe_collect(self, inst: _Instance) -> None:
        # Every member ECHOed the digest we delivered, so every member holds
        # the payload and nobody will ask us for it; our READY is already
        # sent.  Late messages then meet the done set.
        if inst.delivered and not inst.closed and inst.echo_count[inst.final] == self.n:
            self._collect(inst)

    def _collect(self, inst: _Instance) -> None:
        if inst.closed:
            return
        inst.closed = True
        key, o = inst.key, inst.originator
        del self._instances[key]
        if inst.supporters is None:
            self._open[o] -= 1
            if inst.delivered:
                del self._lingering[o][key]
            if self._waiting[o]:
                self._freed.add(o)
        else:
            charges = self._charges
            for m in inst.supporters:
                del charges[(m, o)][key]
            self._waiting[o].pop(key, None)
        if inst.confirmed:
            # Unconfirmed state may be junk anyone invented: not worth a done slot.
            done = self._done[o]
            done[key] = None
            if len(done) > self.config.done_capacity:
                del done[next(iter(done))]
        d = inst.send_digest
        if d is not None and inst.echo_from.get(self.me) == d and inst.echo_count[d] < self.n:
            # We vouched for this payload and someone has not: they may still ask us.
            retained = self._retained[o]
            retained[key] = _Retained(d, inst.payloads[d], inst.answered, self._generation)
            if len(retained) > self.config.max_retained_per_origin:
                del retained[next(iter(retained))]
