# -*- test-case-name: tests.test_signing_pool -*-
"""
Nonce preprocessing policy: who holds which nonce commitments.

With commitments published ahead of time a signature costs one round trip
(request out, shares back), as in FROST's preprocessing variant.  The
danger is two sessions using one nonce.  Single use at the signer is the
nonce store's job (L{frostnode.store.nonces.NonceStore.reserve} marks a nonce
spent durably before its secret comes out, so a nonce signs at most once,
ever).  This module decides how commitments reach coordinators so that
honest coordinators never I{collide} on one, which would cost a failed
session rather than a key.

Decision: B{per-(signer, coordinator) pools, sent point-to-point on
request}, not reliable broadcast.

 - Every nonce belongs to exactly one coordinator, named in its id:
   C{nonce_id = coordinator host key (32) || 16 random bytes}.  Two
   coordinators can never pick the same nonce, with no coordination
   between them, and a signer refuses a request from coordinator C that
   names a nonce of another coordinator, so a faulty coordinator cannot burn
   the nonces an honest one relies on.  The ownership survives restarts
   because it is in the id, which the store keeps.
 - Broadcasting every batch to every member would cost a Bracha instance
   (O(n^2) messages) per batch and still need collision handling (two
   coordinators taking the same nonce at once: one session fails and
   retries).  A point-to-point request and reply is 2 messages, needs no
   agreement, and only coordinators that actually coordinate ask.
 - Cost: a coordinator that crashes loses its in-memory pool.  On its first
   request after a start it sets C{reset}, and signers re-send the unspent
   commitments they issued to it before generating more; any it had used
   are spent at the signer and are not re-sent.

Signer side (L{NonceIssuer}): nonces are generated with BIP 445's
C{NonceGen} (secret share, pubshare, output key and nonce id as hedging
inputs, fresh randomness), persisted with C{NonceStore.add_batch}, and only
then sent (the driver's order).  At most C{max_outstanding} unspent nonces
per (coordinator, epoch) exist; a request past that cap is answered from
the book (the least recently sent first), not with new nonces and never by
burning old ones, so a coordinator asking again and again costs no
generation, no fsync and no spent entries.  Re-sending is also how a
coordinator gets back commitments it lost track of (an answer it dropped
as unsolicited).  The commitments served to one (coordinator, epoch) are
rate-limited too: C{max_outstanding} per C{refill_every} seconds (a token
bucket on the caller's clock), which an honest coordinator, asking for a
batch only when its stock runs low, does not reach.

Coordinator side (L{CoordinatorPool}): commitments per (member, epoch) in
arrival order, each handed out once.  A batch is taken only as the answer
to a refill we have in flight for that (member, epoch), cut to what we
asked for and to a stock of C{low_water + batch}: anything else (a second
answer to a retried refill, an unsolicited batch, an epoch we never asked
about) is dropped I{before} its points are parsed, so a member cannot make
us hold or decode more than we asked for.  Commitments of an accepted
batch are parsed on arrival, so a bad one blames its signer before any
session uses it.  When a member's stock falls below C{low_water} a refill
of C{batch} is requested (one request in flight per member, retried after
C{retry_after} seconds), in the background, so signing does not wait for it
except on a cold start.  Commitments a signer returned unused (it refused
the session before reserving) go back to the pool.  A handed-out id a
signer sends again is refused for C{reuse_after} seconds (the session using
it may still reach the signer); after that it is taken back, since a signer
only re-sends nonces it never reserved (a session that never reached it).

Pure: no I/O, no clock (C{now} is passed in), randomness injected.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from itertools import islice
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from frostnode.crypto import bip445
from frostnode.crypto.errors import InvalidCommitment, InvalidEncoding
from frostnode.crypto.nonces import SecretNonce
from frostnode.signing.messages import NONCE_ID_SIZE
from frostnode.signing.suites import SigningShare, parse_commitment

Rand = Callable[[int], bytes]

HOST_KEY_SIZE = 32


def make_nonce_id(coordinator: bytes, rand: Rand = os.urandom) -> bytes:
    """A fresh nonce id owned by C{coordinator}."""
    if len(coordinator) != HOST_KEY_SIZE:
        raise ValueError("a coordinator is named by its 32-byte host key")
    return coordinator + rand(NONCE_ID_SIZE - HOST_KEY_SIZE)


def coordinator_of(nonce_id: bytes) -> bytes:
    """The coordinator a nonce was issued to."""
    if len(nonce_id) != NONCE_ID_SIZE:
        raise ValueError(f"nonce ids are {NONCE_ID_SIZE} bytes")
    return nonce_id[:HOST_KEY_SIZE]


class IssuePlan(NamedTuple):
    """
    How a signer answers a L{frostnode.signing.messages.NonceRequest}.

    @ivar resend: already issued, unspent (id, commitment) pairs to send again.
    @ivar generate: how many new nonces to generate, persist and send.
    @ivar limited: the rate limit cut the answer (empty: drop the request).
    """

    resend: list[tuple[bytes, bytes]]
    generate: int
    limited: bool = False


class _Allowance:
    """Commitments one (coordinator, epoch) may still be sent: a token bucket."""

    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now


class NonceIssuer:
    """
    A signer's record of the unspent nonces it issued, per (coordinator, epoch).

    @param max_outstanding: unspent nonces kept per (coordinator, epoch).
    @param max_batch: most nonces sent in one reply.
    @param refill_every: seconds in which one (coordinator, epoch) may be
        sent C{max_outstanding} commitments (a burst of that many, refilled
        at C{max_outstanding / refill_every} per second).
    """

    def __init__(self, max_outstanding: int = 512, max_batch: int = 256, refill_every: float = 2.0) -> None:
        if not 1 <= max_batch <= max_outstanding:
            raise ValueError("need 1 <= max_batch <= max_outstanding")
        if not refill_every > 0:
            raise ValueError("refill_every must be positive")
        self.max_outstanding = max_outstanding
        self.max_batch = max_batch
        self.rate = max_outstanding / refill_every
        self._out: dict[tuple[bytes, int], OrderedDict[bytes, bytes]] = {}
        self._pending: dict[tuple[bytes, int], int] = {}
        self._allowance: dict[tuple[bytes, int], _Allowance] = {}

    def _book(self, coordinator: bytes, epoch: int) -> OrderedDict[bytes, bytes]:
        key = (coordinator, epoch)
        book = self._out.get(key)
        if book is None:
            book = self._out[key] = OrderedDict()
        return book

    def load(self, epoch: int, unspent: Iterable[tuple[bytes, bytes]]) -> None:
        """Register the store's unspent (id, commitment) pairs of C{epoch} at start-up."""
        for nonce_id, commitment in unspent:
            if len(nonce_id) == NONCE_ID_SIZE:
                self._book(coordinator_of(nonce_id), epoch)[nonce_id] = commitment

    def outstanding(self, coordinator: bytes, epoch: int) -> int:
        book = self._out.get((coordinator, epoch))
        return 0 if book is None else len(book)

    def _available(self, key: tuple[bytes, int], now: float) -> float:
        a = self._allowance.get(key)
        if a is None:
            a = self._allowance[key] = _Allowance(float(self.max_outstanding), now)
        elif now > a.updated:
            a.tokens = min(float(self.max_outstanding), a.tokens + (now - a.updated) * self.rate)
            a.updated = now
        return a.tokens

    def plan(self, coordinator: bytes, epoch: int, want: int, reset: bool, now: float) -> IssuePlan:
        """
        What to send C{coordinator}, which asked for C{want} commitments at
        C{now}.  Re-sent entries move to the back of the book, so answers at
        the cap go round all of it.  Generated ones count against the cap
        at once (L{issued} or L{not_issued} settles them).
        """
        key = (coordinator, epoch)
        want = max(0, min(want, self.max_batch))
        allowance = int(self._available(key, now))
        limited = allowance < want
        want = min(want, allowance)
        book = self._book(coordinator, epoch)
        resend = list(islice(book.items(), want)) if reset else []
        room = self.max_outstanding - len(book) - self._pending.get(key, 0)
        generate = max(0, min(want - len(resend), room))
        short = want - len(resend) - generate
        if short > 0:
            resend += islice(book.items(), len(resend), len(resend) + short)
        for nonce_id, _ in resend:
            book.move_to_end(nonce_id)
        if generate:
            self._pending[key] = self._pending.get(key, 0) + generate
        self._allowance[key].tokens -= len(resend) + generate
        return IssuePlan(resend, generate, limited)

    def generate(self, signing: SigningShare, coordinator: bytes, count: int,
                 rand: Rand = os.urandom) -> list[tuple[bytes, SecretNonce]]:
        """
        C{count} fresh nonces for C{coordinator}, not yet persisted or issued.

        The returned L{SecretNonce}s exist only to be written to the store
        (C{peek_for_persistence}); signing always reads them back through
        C{NonceStore.reserve}.
        """
        key = signing.key
        pubshare = key.verification_shares[signing.index]
        out = []
        for _ in range(count):
            nonce_id = make_nonce_id(coordinator, rand)
            secnonce, _ = bip445.nonce_gen(signing.secret, pubshare, key.output_key, None, nonce_id, rand(32))
            out.append((nonce_id, secnonce))
        return out

    def _settle(self, key: tuple[bytes, int], count: int) -> None:
        left = self._pending.get(key, 0) - count
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def issued(self, coordinator: bytes, epoch: int, nonces: Sequence[tuple[bytes, bytes]]) -> None:
        """The (id, commitment) pairs a plan generated are persisted and about to be sent."""
        self._settle((coordinator, epoch), len(nonces))
        book = self._book(coordinator, epoch)
        for nonce_id, commitment in nonces:
            book[nonce_id] = commitment

    def not_issued(self, coordinator: bytes, epoch: int, count: int) -> None:
        """C{count} nonces a plan generated were not persisted: they never existed."""
        self._settle((coordinator, epoch), count)

    def used(self, epoch: int, nonce_id: bytes) -> None:
        """
        A reservation of the nonce was submitted (it will be spent, or is
        already): never offer it again, not even while the reservation's
        fsync is still running.
        """
        book = self._out.get((coordinator_of(nonce_id), epoch))
        if book is not None:
            book.pop(nonce_id, None)

    def drop_epoch(self, epoch: int) -> None:
        for d in (self._out, self._pending, self._allowance):
            for key in [k for k in d if k[1] == epoch]:
                del d[key]


class Refill(NamedTuple):
    """Ask C{member} for C{want} commitments of C{epoch}."""

    member: bytes
    epoch: int
    want: int
    reset: bool


class _Stock:
    __slots__ = ("nonces", "requested_at", "asked", "answered")

    def __init__(self) -> None:
        self.nonces: OrderedDict[bytes, bytes] = OrderedDict()
        self.requested_at: Optional[float] = None
        self.asked = 0
        self.answered = False


class CoordinatorPool:
    """
    The commitments this coordinator holds, per (member, epoch).

    @param local: our host key: every nonce id we accept starts with it.
    @param low_water: refill a member's stock when it falls below this.
    @param batch: how many commitments one refill asks for; a stock never
        holds more than C{low_water + batch}.
    @param retry_after: seconds before an unanswered refill is asked again.
    @param remember_used: how many handed-out ids are remembered, so that a
        signer re-sending them does not get them used twice.
    @param reuse_after: seconds after which a remembered id a signer sends
        again is taken back (its session never reached the signer).
    """

    def __init__(self, local: bytes, low_water: int = 16, batch: int = 64, retry_after: float = 2.0,
                 remember_used: int = 1 << 16, reuse_after: float = 300.0) -> None:
        if not 0 < low_water <= batch:
            raise ValueError("need 0 < low_water <= batch")
        self.local = local
        self.low_water = low_water
        self.batch = batch
        self.retry_after = retry_after
        self.reuse_after = reuse_after
        self.capacity = low_water + batch
        self._stock: dict[tuple[bytes, int], _Stock] = {}
        self._used: OrderedDict[bytes, float] = OrderedDict()
        self._remember = remember_used

    def _get(self, member: bytes, epoch: int) -> _Stock:
        key = (member, epoch)
        st = self._stock.get(key)
        if st is None:
            st = self._stock[key] = _Stock()
        return st

    def expecting(self, member: bytes, epoch: int) -> bool:
        """Is a refill from C{member} for C{epoch} in flight (would L{add} take a batch)?"""
        st = self._stock.get((member, epoch))
        return st is not None and st.asked > 0

    def add(self, member: bytes, epoch: int, nonces: Sequence[tuple[bytes, bytes]], now: float) -> int:
        """
        Take in a signer's answer to our refill; returns how many were new.

        Without a refill in flight for (C{member}, C{epoch}) nothing is
        looked at (returns 0).  Otherwise the first entries, up to what the
        refill asked for, are checked, and kept up to the stock's capacity.

        @raise InvalidCommitment: culprit C{member}: a commitment that does not
            parse or an id not issued to us.  Nothing of the batch is kept.
        """
        st = self._stock.get((member, epoch))
        if st is None or not st.asked:
            return 0
        nonces = nonces[:st.asked]
        st.asked = 0
        st.requested_at = None
        for nonce_id, commitment in nonces:
            if len(nonce_id) != NONCE_ID_SIZE or coordinator_of(nonce_id) != self.local:
                raise InvalidCommitment(member, "nonce id not issued to this coordinator")
            try:
                parse_commitment(commitment)
            except InvalidEncoding:
                raise InvalidCommitment(member, "nonce commitment is not two valid points") from None
        st.answered = True
        added = 0
        for nonce_id, commitment in nonces:
            if len(st.nonces) >= self.capacity:
                break
            if nonce_id in st.nonces:
                continue
            taken = self._used.get(nonce_id)
            if taken is not None:
                if now - taken < self.reuse_after:
                    continue
                del self._used[nonce_id]
            st.nonces[nonce_id] = commitment
            added += 1
        return added

    def available(self, member: bytes, epoch: int) -> int:
        st = self._stock.get((member, epoch))
        return 0 if st is None else len(st.nonces)

    def take(self, member: bytes, epoch: int, now: float) -> Optional[tuple[bytes, bytes]]:
        """Hand out the oldest commitment of C{member}, once; None if out of stock."""
        st = self._stock.get((member, epoch))
        if st is None or not st.nonces:
            return None
        nonce_id, commitment = st.nonces.popitem(last=False)
        self._used[nonce_id] = now
        if len(self._used) > self._remember:
            self._used.popitem(last=False)
        return nonce_id, commitment

    def give_back(self, member: bytes, epoch: int, nonce_id: bytes, commitment: bytes) -> None:
        """
        The signer refused before reserving: the nonce is unused and may
        serve again (unless the stock filled up meanwhile; the signer still
        holds it and will offer it again).
        """
        self._used.pop(nonce_id, None)
        st = self._stock.get((member, epoch))
        if st is None or len(st.nonces) >= self.capacity:
            return
        st.nonces[nonce_id] = commitment
        st.nonces.move_to_end(nonce_id, last=False)

    def refills(self, epoch: int, members: Iterable[bytes], now: float) -> list[Refill]:
        """
        The refill requests to send now for C{members} (marked in flight).
        Until a member first answers after our start, requests set C{reset}.
        """
        out = []
        for m in members:
            st = self._get(m, epoch)
            if len(st.nonces) >= self.low_water:
                continue
            if st.requested_at is not None and now - st.requested_at < self.retry_after:
                continue
            st.requested_at = now
            st.asked = self.batch
            out.append(Refill(m, epoch, self.batch, not st.answered))
        return out

    def members(self, epoch: int) -> list[bytes]:
        """Members we have a stock (possibly empty) for in C{epoch}: those we asked or used."""
        return [mem for mem, ep in self._stock if ep == epoch]

    def epochs(self) -> set[int]:
        """Epochs we hold a stock (possibly empty) for."""
        return {ep for _, ep in self._stock}

    def drop_epoch(self, epoch: int) -> None:
        for key in [k for k in self._stock if k[1] == epoch]:
            del self._stock[key]
