# -*- test-case-name: tests.test_sync_service -*-
"""
Replication of the data log among the members: every member ends up holding
the same set of records, whichever member each client talked to.

Two paths, one check:

  - B{Broadcast} (the fast path).  The member that received records from
    clients (their I{origin}) groups what it acknowledged in one short window
    into a batch, signs it with its host key and hands it to reliable
    broadcast (L{frostnode.broadcast}).  Bracha costs O(n^2) messages per
    broadcast; batching pays that once per window instead of once per
    record.
  - B{Catch-up} (the safety net).  Members exchange per-origin positions
    (C{have}: every slot 1..have held) and pull missing ranges from peers in
    bounded pages.  This is how a member that was down, cut off, or lost
    broadcast messages (its peers' queues overflowed, it crashed after
    acknowledging) converges, and how records that were never broadcast
    (their origin crashed between the acknowledgement and the broadcast, or
    a record too large for one broadcast) spread.
  - B{The check} is the same on both paths: a record is stored only with its
    origin's signature over its batch (L{frostnode.sync.messages}): the
    batch statement binds the record ids (content hashes), the slots and the
    origin's receive times.  A peer serving catch-up can therefore only
    serve what the origin signed; it cannot alter, invent or re-slot
    records.  The stored proof is 77 bytes per slot.

Why per-origin sequence numbers and not a Merkle comparison
===========================================================
The log already files every record under (origin, seq) and keeps C{have}
per origin (L{frostnode.store.log}), because per-origin order is what
validation may rely on.  With that index, "what am I missing" is one
integer per origin: a summary is n * 48 bytes, the difference is known
without any round trips, and the missing records are a seq range that one
LMDB cursor reads in order.  A Merkle tree over the record set would need
its own index kept in step with every insert and prune, and log(N) round
trips of hash comparisons to locate a difference, only to rediscover what
the sequence numbers already say.  What sequence numbers do not give (a
check that two logs are equal) the log's order-independent set digest
gives: every summary carries it, and C{status()} shows each peer's.

What order means here
=====================
Nothing depends on the order in which batches, pages or messages arrive:
inserts are idempotent and C{have} only advances over contiguous slots.
Validation schemes may rely on per-origin order and on cuts
(L{frostnode.store.log.DataLog.records_in_cut}), never on arrival order.

Durability
==========
A client is acknowledged only after its record is fsync'd in this node's log
(L{frostnode.sync.service.SyncService.submit}).  A node killed right after
an acknowledgement restarts with the record in its log; nothing of the sync
state needs saving, because the origin keeps no proofs of its own records:
it signs any range of them on demand, one signature per catch-up page.  Its
peers see its C{have} in its next summary and pull what they lack.

Limits
======
Every decoder checks lengths against configured limits before reading;
pages are bounded in records and bytes; a member may ask for at most
C{serve_rate} pages per second (token bucket); requests in flight, pages
being written and batches waiting for broadcast are all bounded.  A
malformed message or a record whose proof fails is logged with the member
that sent it and ignored; the member's other messages are still served.

A member must not come back under the same host key with a lost or older
store: it would number new records from a lower sequence number, and every
peer would see two records in one slot (logged as the origin's
equivocation, L{frostnode.store.errors.SequenceConflict}).  Our own origin is
never fetched from peers, because only this node appends to it.

Known limit: with retention enabled, a member whose C{have} for an origin is
below a peer's pruned prefix cannot fetch those pruned slots from anyone, and
the log has no operation to skip them; such a member stays behind on that
origin (its C{status} lag says so).
"""

from frostnode.sync.service import SubmitResult, SyncConfig, SyncService

__all__ = ["SubmitResult", "SyncConfig", "SyncService"]
