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
or later).  An honest echoer holds the payload, and at least f+1 honest
members echoed any digest that reached READY quorum, so an answer comes.  A
member answers each peer at most once per instance with RESPONSE(payload); the
receiver checks the payload against the wanted digest and blames a responder
whose payload does not match.  We chose pull over attaching payloads to ECHOs
because the common case (everyone got the SEND) then costs nothing extra.

Concurrency and memory:
  - Instances are independent and accept messages in any order; an ECHO or
    READY for an instance we have not seen yet creates it.
  - Such state is I{unconfirmed} until the originator's SEND arrives or f+1
    distinct members have spoken about it (then at least one honest member
    did, so the originator really started it).  Unconfirmed instances are
    charged to every member that spoke in them, capped by
    C{max_unconfirmed_per_member}: a byzantine member cannot grow our state
    by inventing tags, and cannot use up an honest originator's quota either.
    Confirmed instances are charged to the originator, capped by
    C{max_open_per_origin}.  At the cap, the originator's oldest delivered
    instance still lingering (see below) is collected early to make room, so
    an honest burst is never refused while a slow member keeps old
    instances alive; only a cap full of I{undelivered} instances refuses a
    new one and blames the originator.
  - An instance is collected as soon as it is delivered and every member's
    ECHO for the delivered digest is in: every member then holds the payload
    and our READY is already sent, so nobody can still need anything from us.
    Otherwise the driver calls L{Bracha.sweep} periodically: a delivered
    instance is collected C{linger_sweeps} sweeps after delivery, an
    undelivered one abandoned after C{abandon_sweeps}.  Keys of collected
    instances go into a bounded "done" set so late and duplicate messages are
    ignored without re-creating state.  A member that pulls a payload after
    every holder has collected the instance will not get it: catch-up after
    long absences is the sync layer's job.

Wire format (version 1; our own small struct format until the shared codec
exists; every length is checked against the config before slicing):

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

from frostnode.crypto.errors import InvalidEncoding
from frostnode.crypto.hashes import tagged_hash

DIGEST_TAG = "frostnode/broadcast"
WIRE_VERSION = 1

SEND = 1
ECHO = 2
READY = 3
REQUEST = 4
RESPONSE = 5

KEY_LEN = 32
DIGEST_LEN = 32
MAX_BATCH_RECORDS = 0xFFFF

_BATCH_HEADER = struct.Struct(">BH")
_U32 = struct.Struct(">I")
_MIN_RECORD = 6  # SEND with empty tag and payload


class BrachaConfig(NamedTuple):
    """
    Limits that bound what a peer can make us decode or remember.

    @ivar max_tag: longest tag accepted (at most 255).
    @ivar max_payload: largest payload accepted or broadcast.
    @ivar max_open_per_origin: confirmed, uncollected instances per originator.
    @ivar max_unconfirmed_per_member: unconfirmed instances a member may have
        spoken in before its further messages for new instances are dropped.
    @ivar done_capacity: how many collected instance keys we remember.
    @ivar linger_sweeps: sweeps a delivered but not fully counted instance survives.
    @ivar abandon_sweeps: sweeps an undelivered instance survives.
    """

    max_tag: int = 128
    max_payload: int = 64 * 1024
    max_open_per_origin: int = 256
    max_unconfirmed_per_member: int = 512
    done_capacity: int = 65536
    linger_sweeps: int = 2
    abandon_sweeps: int = 20


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
    it is used; trailing bytes, unknown kinds and version mismatches raise
    L{InvalidEncoding}.  Whether the originator in a key is a member is the
    caller's check.
    """
    n = len(data)
    if n < _BATCH_HEADER.size:
        raise InvalidEncoding("batch shorter than its header")
    version, count = _BATCH_HEADER.unpack_from(data, 0)
    if version != WIRE_VERSION:
        raise InvalidEncoding(f"unsupported broadcast wire version {version}")
    if count == 0 or count > (n - _BATCH_HEADER.size) // _MIN_RECORD:
        raise InvalidEncoding(f"batch count {count} impossible for {n} bytes")
    off = _BATCH_HEADER.size
    out: list[tuple[int, bytes, bytes]] = []
    append = out.append
    for _ in range(count):
        if off + 2 > n:
            raise InvalidEncoding("truncated record")
        kind = data[off]
        if kind == ECHO or kind == READY or kind == REQUEST:
            if off + 34 > n:
                raise InvalidEncoding("truncated record key")
            tl = data[off + 33]
            if tl > max_tag:
                raise InvalidEncoding(f"tag of {tl} bytes over the {max_tag}-byte limit")
            kend = off + 34 + tl
            end = kend + DIGEST_LEN
            if end > n:
                raise InvalidEncoding("truncated digest")
            append((kind, data[off + 1:kend], data[kend:end]))
            off = end
        elif kind == SEND or kind == RESPONSE:
            if kind == SEND:
                tl = data[off + 1]
                tstart = off + 2
            else:
                if off + 34 > n:
                    raise InvalidEncoding("truncated record key")
                tl = data[off + 33]
                tstart = off + 1
            if tl > max_tag:
                raise InvalidEncoding(f"tag of {tl} bytes over the {max_tag}-byte limit")
            kend = off + 34 + tl if kind == RESPONSE else tstart + tl
            if kend + 4 > n:
                raise InvalidEncoding("truncated payload length")
            (plen,) = _U32.unpack_from(data, kend)
            if plen > max_payload:
                raise InvalidEncoding(f"payload of {plen} bytes over the {max_payload}-byte limit")
            end = kend + 4 + plen
            if end > n:
                raise InvalidEncoding("truncated payload")
            append((kind, data[tstart:kend], data[kend + 4:end]))
            off = end
        else:
            raise InvalidEncoding(f"unknown record kind {kind}")
    if off != n:
        raise InvalidEncoding(f"{n - off} trailing bytes after {count} records")
    return out


class _Instance:
    """Everything one node remembers about one (originator, tag)."""

    __slots__ = (
        "key", "originator", "tag", "payloads", "send_digest",
        "echo_from", "echo_count", "ready_from", "ready_count",
        "ready", "delivered", "final", "want", "asked", "answered",
        "supporters", "born", "delivered_at", "closed",
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
        # None once confirmed; else the members charged for this instance.
        self.supporters: Optional[set[bytes]] = set()
        self.born = born
        self.delivered_at = 0
        self.closed = False


class Bracha:
    """
    One member's view of every broadcast instance.

    @param me: our host key; must be in C{members}.
    @param members: every member's host key (32 bytes each), ourselves included.
    @param config: the limits; see L{BrachaConfig}.
    """

    def __init__(self, me: bytes, members: Sequence[bytes], config: BrachaConfig = BrachaConfig()) -> None:
        members = list(members)
        if any(len(m) != KEY_LEN for m in members):
            raise ValueError("member host keys are 32 bytes")
        if len(set(members)) != len(members):
            raise ValueError("duplicate member host key")
        if me not in members:
            raise ValueError("we are not a member")
        if not 0 <= config.max_tag <= 255:
            raise ValueError("max_tag must be within 0..255")
        if config.max_payload < 0 or config.max_payload > 0xFFFFFFFF:
            raise ValueError("max_payload must fit in 32 bits")
        if min(config.max_open_per_origin, config.max_unconfirmed_per_member, config.done_capacity,
               config.linger_sweeps, config.abandon_sweeps) < 1:
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
        self._done: dict[bytes, None] = {}
        self._open: dict[bytes, int] = {m: 0 for m in members}
        # Per originator, delivered instances kept only for stragglers, oldest first.
        self._lingering: dict[bytes, dict[bytes, _Instance]] = {m: {} for m in members}
        self._unconfirmed: dict[bytes, int] = {m: 0 for m in members}
        self._generation = 0
        #: Records decoded from peers' batches (benchmarks: CPU per record).
        self.records_handled = 0

    # -- inspection (tests, metrics) --------------------------------------

    @property
    def open_instances(self) -> int:
        """Instances in memory, confirmed or not."""
        return len(self._instances)

    def is_done(self, originator: bytes, tag: bytes) -> bool:
        """Whether (originator, tag) was collected and is now ignored."""
        return instance_key(originator, tag) in self._done

    # -- inputs -----------------------------------------------------------

    def broadcast(self, tag: bytes, payload: bytes) -> list[Action]:
        """
        Start broadcasting C{payload} under C{tag} as its originator.

        @raise ValueError: the tag or payload is over its limit, we already
            broadcast this tag, or we have C{max_open_per_origin} broadcasts
            in flight (an honest originator must stay under the quota others
            enforce on it).
        """
        if len(tag) > self.config.max_tag:
            raise ValueError(f"tag of {len(tag)} bytes over the {self.config.max_tag}-byte limit")
        if len(payload) > self.config.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes over the {self.config.max_payload}-byte limit")
        key = instance_key(self.me, tag)
        inst = self._instances.get(key)
        if key in self._done or (inst is not None and inst.send_digest is not None):
            raise ValueError(f"tag {tag!r} was already broadcast")
        if (inst is None or inst.supporters is not None) and not self._room(self.me):
            raise ValueError(f"{self._open[self.me]} broadcasts already in flight")
        out: list[Action] = [SendAll(encode_send(tag, payload))]
        self._on_send(self.me, tag, payload, out)
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
        except InvalidEncoding as e:
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
                inst = self._instance(k, sender, out)
                if inst is not None:
                    self._count_echo(inst, sender, x, out)
                    self._maybe_collect(inst)
            elif kind == READY:
                inst = self._instance(k, sender, out)
                if inst is not None:
                    self._count_ready(inst, sender, x, out)
                    self._maybe_collect(inst)
            elif kind == REQUEST:
                self._on_request(sender, k, x, out)
            else:
                self._on_response(sender, k, x, out)
        return out

    def sweep(self) -> None:
        """
        Advance the collection clock one step (the driver calls this
        periodically): collect delivered instances that have lingered
        C{linger_sweeps} sweeps, abandon undelivered ones after
        C{abandon_sweeps}.
        """
        self._generation = g = self._generation + 1
        linger, abandon = self.config.linger_sweeps, self.config.abandon_sweeps
        for inst in list(self._instances.values()):
            if inst.delivered:
                if g - inst.delivered_at >= linger:
                    self._collect(inst)
            elif g - inst.born >= abandon:
                # Remember abandoned confirmed instances so late messages do not
                # revive them; unconfirmed ones may be junk, so forget them.
                self._collect(inst, remember=inst.supporters is None)

    # -- the protocol ------------------------------------------------------

    def _instance(self, key: bytes, speaker: bytes, out: list[Action]) -> Optional[_Instance]:
        """Find or create the instance, charging C{speaker} while it is unconfirmed."""
        inst = self._instances.get(key)
        if inst is None:
            if key in self._done:
                return None
            if self._unconfirmed[speaker] >= self.config.max_unconfirmed_per_member:
                out.append(Misbehaviour(speaker, "too many unconfirmed broadcast instances"))
                return None
            inst = self._instances[key] = _Instance(key, self._generation)
        elif inst.supporters is None:
            return inst
        elif speaker in inst.supporters:
            return inst
        elif self._unconfirmed[speaker] >= self.config.max_unconfirmed_per_member:
            out.append(Misbehaviour(speaker, "too many unconfirmed broadcast instances"))
            return None
        inst.supporters.add(speaker)
        self._unconfirmed[speaker] += 1
        if len(inst.supporters) > self.f and not self._confirm(inst, out):
            return None
        return inst

    def _confirm(self, inst: _Instance, out: list[Action]) -> bool:
        """Move the instance's charge from its supporters to its originator."""
        assert inst.supporters is not None
        for m in inst.supporters:
            self._unconfirmed[m] -= 1
        inst.supporters = None
        o = inst.originator
        if not self._room(o):
            inst.closed = True
            del self._instances[inst.key]
            self._remember(inst.key)
            out.append(Misbehaviour(o, "too many open broadcasts"))
            return False
        self._open[o] += 1
        return True

    def _room(self, originator: bytes) -> bool:
        """Whether one more confirmed instance fits the originator's quota, evicting a lingering one if need be."""
        if self._open[originator] < self.config.max_open_per_origin:
            return True
        lingering = self._lingering[originator]
        if not lingering:
            return False
        self._collect(lingering[next(iter(lingering))])
        return True

    def _on_send(self, originator: bytes, tag: bytes, payload: bytes, out: list[Action]) -> None:
        key = instance_key(originator, tag)
        inst = self._instances.get(key)
        if inst is None:
            if key in self._done:
                return
            inst = self._instances[key] = _Instance(key, self._generation)
        if inst.send_digest is not None:
            if payload != inst.payloads[inst.send_digest]:
                out.append(Misbehaviour(originator, f"two different SENDs for tag {tag!r}"))
            return
        if inst.supporters is not None and not self._confirm(inst, out):
            return
        digest = payload_digest(key, payload)
        inst.send_digest = digest
        inst.payloads[digest] = payload
        # The SEND is the originator's ECHO.
        self._count_echo(inst, originator, digest, out)
        if originator != self.me and self.me not in inst.echo_from:
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
            if inst.supporters is None:
                self._lingering[inst.originator][inst.key] = inst
            out.append(Deliver(inst.originator, inst.tag, payload))
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
        # whose ECHO it saw, and they hold the payload while the instance is open.
        inst = self._instances.get(key)
        if inst is None or sender in inst.answered:
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

    def _collect(self, inst: _Instance, remember: bool = True) -> None:
        if inst.closed:
            return
        inst.closed = True
        del self._instances[inst.key]
        if inst.supporters is None:
            self._open[inst.originator] -= 1
            if inst.delivered:
                del self._lingering[inst.originator][inst.key]
        else:
            for m in inst.supporters:
                self._unconfirmed[m] -= 1
        if remember:
            self._remember(inst.key)

    def _remember(self, key: bytes) -> None:
        done = self._done
        done[key] = None
        if len(done) > self.config.done_capacity:
            del done[next(iter(done))]
