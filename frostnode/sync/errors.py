# -*- test-case-name: tests.test_sync_messages -*-
"""
What can go wrong in replication and catch-up, split the way the rest of
frostnode splits errors (L{frostnode.crypto.errors}):

  - L{SyncUnavailable} and L{SyncOverloaded}: raised to I{our} caller of
    L{frostnode.sync.service.SyncService.submit} (the client port maps them to
    its C{unavailable} and C{rate-limited} answers).  Nobody is blamed.
  - L{DecodeError} (from L{frostnode.wire}): bytes that are not a sync message.
    The shell blames the authenticated link's member that sent them.
  - L{BadBatch} and L{BadPage}, L{ProtocolError}s: a member sent records whose
    proof does not hold.  They carry the culprit; the service logs it and
    carries on.
"""

from __future__ import annotations

from frostnode.crypto.errors import ProtocolError


class SyncUnavailable(Exception):
    """The sync service is not running (starting or stopping); try again later."""


class SyncOverloaded(Exception):
    """Too many submissions are waiting for their fsync; the client should slow down."""


class BadBatch(ProtocolError):
    """
    A broadcast batch whose tag, encoding or origin signature is wrong.  The
    culprit is the originator: reliable broadcast authenticates it.
    """


class BadPage(ProtocolError):
    """
    A catch-up page that is malformed, answers another question than the one
    asked, or holds a record whose origin signature does not verify.  The
    culprit is the member that served the page (it should have checked what
    it stored, and it did when it stored it).
    """
