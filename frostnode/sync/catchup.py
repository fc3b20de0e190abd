# -*- test-case-name: tests.test_sync_catchup -*-
"""
Who to ask for which records: the catch-up planner, a pure state machine.

Inputs are what peers said (their summaries, their pages), what the local
log holds (C{have} per origin, passed in), which links are up, and C{now};
the output is a list of L{PageRequest}s for the shell to send.  No I/O, so
the policy is tested without a reactor or a store.

Policy:
  - B{One question per origin at a time}, at most C{max_in_flight} in all,
    so a returning member's requests (and the pages coming back) are
    bounded: per origin at most one page requested and two pages verified
    but still being written (L{page_verified} lets the next request go out
    while the previous page is in the group commit: the network and the disk
    overlap).
  - B{Ask someone who has it}: a connected peer whose last summary's C{have}
    for the origin is above ours.  The origin itself is preferred (it holds
    all of its records and signs a page with one signature); otherwise
    candidates take turns, spreading the load.
  - B{Let broadcast work first}: an origin is fetched only once our C{have}
    for it has not moved for C{grace} seconds while a peer claims more.
    Records in flight through broadcast would otherwise be fetched twice on
    every summary.  A returning member's C{have} does not move (new
    broadcasts land above its gap), so it starts catching up after C{grace};
    once fetching an origin, it keeps going without waiting.
  - B{Back off}: a peer that answered with nothing useful, or did not answer
    within C{request_timeout}, is not asked for that origin again for
    C{retry_delay}; a peer that served a bad page is not asked for anything
    for C{penalty_time}.
  - Our own origin is never requested: only this node appends to it, so
    peers can only hold less of it than we do.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Optional

from frostnode.sync.messages import OriginSummary, Summary


class PageRequest(NamedTuple):
    """Send C{REQUEST(origin, from_seq, limit)} to C{peer}."""

    peer: bytes
    origin: bytes
    from_seq: int
    limit: int


class _Asked(NamedTuple):
    peer: bytes
    from_seq: int
    sent_at: float


class Lag(NamedTuple):
    """
    Per peer, from its last summary: C{missing} records it holds that we do
    not (yet), and C{lagging} records we hold that it does not.
    """

    missing: int
    lagging: int


_ALL = b""


class Planner:
    """
    @param local: our host key.
    @param page_records: the C{limit} of each request.
    @param max_in_flight: most requests outstanding at once.
    @param request_timeout: seconds before an unanswered request is given up.
    @param retry_delay: seconds a peer is not asked again for an origin after
        an empty answer or a timeout.
    @param penalty_time: seconds a peer that served a bad page is not asked.
    @param grace: seconds our C{have} for an origin must stand still before
        we fetch it.
    """

    def __init__(
        self,
        local: bytes,
        *,
        page_records: int,
        max_in_flight: int,
        request_timeout: float,
        retry_delay: float,
        penalty_time: float,
        grace: float = 0.0,
    ) -> None:
        if page_records < 1 or max_in_flight < 1:
            raise ValueError("page_records and max_in_flight must be positive")
        self.local = local
        self.page_records = page_records
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.retry_delay = retry_delay
        self.penalty_time = penalty_time
        self.grace = grace
        self.summaries: dict[bytes, Summary] = {}
        self.summary_times: dict[bytes, float] = {}
        self._asked: dict[bytes, _Asked] = {}
        self._writing: dict[bytes, list[int]] = {}
        self._blocked: dict[tuple[bytes, bytes], float] = {}
        self._stalled: dict[bytes, tuple[int, float]] = {}
        self._active: set[bytes] = set()
        self._turn = 0

    # -- inputs ----------------------------------------------------------------------

    def summary_received(self, peer: bytes, summary: Summary, now: float) -> None:
        self.summaries[peer] = summary
        self.summary_times[peer] = now

    def forget(self, peer: bytes) -> None:
        """Drop what C{peer} told us (it is no longer a member)."""
        self.summaries.pop(peer, None)
        self.summary_times.pop(peer, None)

    def expected(self, peer: bytes, origin: bytes, from_seq: int) -> bool:
        """Whether a page from C{peer} for (C{origin}, C{from_seq}) answers our outstanding request."""
        asked = self._asked.get(origin)
        return asked is not None and asked.peer == peer and asked.from_seq == from_seq

    def page_verified(self, peer: bytes, origin: bytes, upto: Optional[int], now: float) -> None:
        """
        The outstanding request for C{origin} was answered with a valid page
        ending at C{upto} (None: nothing at or after the requested seq), now
        being written.
        """
        asked = self._asked.pop(origin, None)
        if upto is None or (asked is not None and upto < asked.from_seq):
            self._blocked[(peer, origin)] = now + self.retry_delay
            return
        self._writing.setdefault(origin, []).append(upto)

    def page_written(self, origin: bytes, upto: int) -> None:
        """The page ending at C{upto} is durable (or failed): local C{have} now tells the truth."""
        pages = self._writing.get(origin)
        if pages and upto in pages:
            pages.remove(upto)
            if not pages:
                del self._writing[origin]

    def page_rejected(self, peer: bytes, origin: bytes, now: float) -> None:
        """C{peer} served a bad page: ask it nothing for C{penalty_time}."""
        asked = self._asked.get(origin)
        if asked is not None and asked.peer == peer:
            del self._asked[origin]
        self._blocked[(peer, _ALL)] = now + self.penalty_time

    def expire(self, now: float) -> list[tuple[bytes, bytes]]:
        """Give up requests older than C{request_timeout}; returns their C{(peer, origin)}."""
        out = []
        for origin, asked in list(self._asked.items()):
            if now - asked.sent_at >= self.request_timeout:
                del self._asked[origin]
                self._blocked[(asked.peer, origin)] = now + self.retry_delay
                out.append((asked.peer, origin))
        for key, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[key]
        return out

    # -- decisions ---------------------------------------------------------------------

    def _blocked_now(self, peer: bytes, origin: bytes, now: float) -> bool:
        until = self._blocked.get((peer, origin))
        if until is not None and until > now:
            return True
        until = self._blocked.get((peer, _ALL))
        return until is not None and until > now

    def plan(self, now: float, local_have: Mapping[bytes, int], connected: Iterable[bytes]) -> list[PageRequest]:
        """The requests to send now, each recorded as outstanding."""
        if len(self._asked) >= self.max_in_flight:
            return []
        up = [p for p in sorted(connected) if p in self.summaries]
        if not up:
            return []
        origins: set[bytes] = set()
        for p in up:
            origins.update(self.summaries[p].origins)
        origins.discard(self.local)
        order = sorted(origins)
        if not order:
            return []
        self._turn += 1
        start = self._turn % len(order)
        out: list[PageRequest] = []
        for origin in order[start:] + order[:start]:
            if len(self._asked) >= self.max_in_flight:
                break
            if origin in self._asked:
                continue
            writing = self._writing.get(origin, ())
            if len(writing) >= 2:
                continue
            have = local_have.get(origin, 0)
            base = max([have, *writing])
            ahead = [p for p in up if self.summaries[p].origins.get(origin, OriginSummary(0, 0)).have > base]
            if not ahead:
                if not writing:
                    self._active.discard(origin)
                    self._stalled.pop(origin, None)
                continue
            if origin not in self._active:
                mark = self._stalled.get(origin)
                if mark is None or mark[0] != have:
                    mark = self._stalled[origin] = (have, now)
                if now - mark[1] < self.grace:
                    continue
            candidates = [p for p in ahead if not self._blocked_now(p, origin, now)]
            if not candidates:
                continue
            self._active.add(origin)
            peer = origin if origin in candidates else candidates[(self._turn + len(out)) % len(candidates)]
            self._asked[origin] = _Asked(peer, base + 1, now)
            out.append(PageRequest(peer, origin, base + 1, self.page_records))
        return out

    # -- reporting ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._asked)

    def lag(self, local_have: Mapping[bytes, int]) -> dict[bytes, Lag]:
        """Per peer with a summary: how far apart its log and ours are, in records."""
        out = {}
        for peer, s in self.summaries.items():
            missing = lagging = 0
            for origin in set(s.origins) | set(local_have):
                theirs = s.origins.get(origin, OriginSummary(0, 0)).have
                ours = local_have.get(origin, 0)
                if theirs > ours:
                    missing += theirs - ours
                else:
                    lagging += ours - theirs
            out[peer] = Lag(missing, lagging)
        return out
