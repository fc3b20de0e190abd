# -*- test-case-name: tests.test_signing_service -*-
"""
How a signing request fails, in words a client can act on.

L{SigningFailed} has a C{code}, one of

 - C{views-differ}: too many members computed a different message (or lack
   the data) for a threshold of agreeing members to remain; C{divergent}
   names them, each with its digest and reason.  Ask again once the logs
   have converged, or ask a node in the majority.
 - C{validation-failed}: the data does not validate (the coordinator's own
   scheme rejected it, or the members that refused all rejected it);
   the reason is the scheme's.
 - C{not-enough-signers}: fewer than a threshold of members can still sign
   (misbehaving, unusable or banned members); C{malicious} and
   C{unavailable} say who and why.
 - C{timeout}: the request's deadline passed; C{unresponsive} names the
   members that were still awaited.

C{str()} is C{"<code>: <detail>"}, e.g. C{"views-differ: 3f2a..., 91bc..."}.
Members are named by host key.  Calling C{sign} with an unknown scheme or
ciphersuite, or when no epoch key is usable, raises C{ValueError} or
L{NoUsableKey} at once: those are the caller's or the node's state, not a
failure of the federation.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

VIEWS_DIFFER = "views-differ"
VALIDATION_FAILED = "validation-failed"
NOT_ENOUGH_SIGNERS = "not-enough-signers"
TIMEOUT = "timeout"
CODES = (VIEWS_DIFFER, VALIDATION_FAILED, NOT_ENOUGH_SIGNERS, TIMEOUT)


class Refusal(NamedTuple):
    """A member's signed verdict other than a share: what it computed and why it refused."""

    kind: str
    digest: bytes
    reason: str


class SigningFailed(Exception):
    """
    The federation did not produce a signature.

    @ivar code: one of L{CODES}.
    @ivar detail: the text after the code.
    @ivar divergent: host key -> L{Refusal} for members that disagreed
        (C{views-differ} or C{validation-failed} refusals).
    @ivar unavailable: host key -> L{Refusal} for members that could not
        serve the request.
    @ivar malicious: host key -> reason, members caught misbehaving.
    @ivar unresponsive: host keys still awaited when the request ended.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        divergent: Mapping[bytes, Refusal] = {},
        unavailable: Mapping[bytes, Refusal] = {},
        malicious: Mapping[bytes, str] = {},
        unresponsive: Sequence[bytes] = (),
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown signing failure code {code!r}")
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.divergent = dict(divergent)
        self.unavailable = dict(unavailable)
        self.malicious = dict(malicious)
        self.unresponsive = list(unresponsive)

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


class NoUsableKey(Exception):
    """This node holds no certified, unretired epoch key (no DKG yet)."""
