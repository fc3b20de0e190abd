# -*- test-case-name: tests.test_client_messages -*-
"""
The answers a client can get instead of a result, one type per code.

Every request to a node ends in a result or a L{ClientError} whose C{code}
is one of L{ERROR_CODES}; the same codes travel over the Noise client port,
the HTTP API (with the HTTP status in L{HTTP_STATUS}) and the CLI's C{--json}
output, so a script handles them the same way whichever door it came in by.

Codes a node sends (L{REMOTE_CODES}):

  - C{invalid-request}: the request is malformed, names an unknown command,
    or its fields are out of range.  Retrying the same request is pointless.
  - C{too-large}: the request (or its payload) is over the node's limit.
    Over the Noise port, a request whose I{declared} length is over the limit
    is answered and the connection is closed: the node does not read on.
  - C{unknown-topic}: no record was ever filed under the topic on this node.
  - C{not-found}: no record with that id is held by this node (not yet
    replicated here, pruned by retention, or never submitted).  Not in the
    issue's list; a missing record is neither malformed nor a node failure.
  - C{rate-limited}: over the client's request rate or in-flight limit;
    C{retry_after} says when a token is next available (0 for in-flight).
  - C{unavailable}: the node cannot serve it now (no key yet before the
    first DKG, the store is closed or full, a layer not running).
  - C{internal}: a bug.  The node logged the traceback; the message is
    generic on purpose.

and those of a C{sign} request (L{frostnode.signing.commands}), which name
the members at fault in C{members} (host key -> why):

  - C{views-differ}: too many members computed another message from their
    own data (or lack it) for a threshold to agree; the message lists them.
  - C{validation-failed}: the data does not validate; the scheme's reason.
  - C{not-enough-signers}: fewer than a threshold of members can sign
    (misbehaving or unable to).
  - C{timeout}: the federation did not finish within the node's request
    timeout; C{members} names those still awaited.  The same code as the
    library's own timeout (no answer from the node): either way nothing was
    signed for the caller, and asking again is safe.

Codes only the client library raises, without the node having answered
(L{LOCAL_CODES}): C{connection} (cannot connect, or the connection was lost
with the request outstanding: it may or may not have been executed, so
resubmit the I{same} body and the idempotent log returns the same id),
C{wrong-node-key} (the node's Noise key is not the expected one: nothing of
ours was revealed to it), C{timeout}, and C{bad-response} (the node's answer
does not decode, or contradicts the request: a record id that is not the
hash of what we submitted, a record whose body does not hash to its id).

Other layers plug their own failures into this vocabulary without importing
this module: an exception with a C{client_error_code} attribute naming one
of L{REMOTE_CODES} is reported with that code and its C{str()} as message
(see L{frostnode.client.api.as_client_error}).
"""

from __future__ import annotations

from typing import Mapping, Optional

INVALID_REQUEST = "invalid-request"
TOO_LARGE = "too-large"
UNKNOWN_TOPIC = "unknown-topic"
NOT_FOUND = "not-found"
RATE_LIMITED = "rate-limited"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"

CONNECTION = "connection"
WRONG_NODE_KEY = "wrong-node-key"
TIMEOUT = "timeout"
BAD_RESPONSE = "bad-response"

VIEWS_DIFFER = "views-differ"
VALIDATION_FAILED = "validation-failed"
NOT_ENOUGH_SIGNERS = "not-enough-signers"

#: The codes of a failed signing request (also C{timeout}).
SIGNING_CODES = (VIEWS_DIFFER, VALIDATION_FAILED, NOT_ENOUGH_SIGNERS, TIMEOUT)
REMOTE_CODES = (INVALID_REQUEST, TOO_LARGE, UNKNOWN_TOPIC, NOT_FOUND, RATE_LIMITED, UNAVAILABLE, INTERNAL,
                VIEWS_DIFFER, VALIDATION_FAILED, NOT_ENOUGH_SIGNERS, TIMEOUT)
LOCAL_CODES = (CONNECTION, WRONG_NODE_KEY, TIMEOUT, BAD_RESPONSE)
ERROR_CODES = tuple(dict.fromkeys(REMOTE_CODES + LOCAL_CODES))

#: The HTTP API's status for each code a node sends.
HTTP_STATUS = {
    INVALID_REQUEST: 400,
    TOO_LARGE: 413,
    UNKNOWN_TOPIC: 404,
    NOT_FOUND: 404,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
    INTERNAL: 500,
    VIEWS_DIFFER: 409,
    VALIDATION_FAILED: 422,
    NOT_ENOUGH_SIGNERS: 503,
    TIMEOUT: 504,
}

#: Longest error message a node sends or a client accepts.
MAX_MESSAGE = 1024


class ClientError(Exception):
    """
    A request that did not produce a result.

    @ivar code: one of L{ERROR_CODES}.
    @ivar message: one line for a human, naming what was wrong.
    @ivar retry_after: for C{rate-limited}, seconds until a retry can succeed.
    @ivar members: the federation members this error is about, host key ->
        why (the signing codes); empty otherwise.
    """

    def __init__(self, code: str, message: str, retry_after: Optional[float] = None,
                 members: Optional[Mapping[bytes, str]] = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown client error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.members: dict[bytes, str] = dict(sorted((members or {}).items()))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_json(self) -> dict:
        """The C{error} object of the HTTP API and of C{frostnode-client --json}."""
        out: dict = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.members:
            out["members"] = {key.hex(): why for key, why in self.members.items()}
        return out


def invalid_request(message: str) -> ClientError:
    return ClientError(INVALID_REQUEST, message)


def too_large(message: str) -> ClientError:
    return ClientError(TOO_LARGE, message)


def unavailable(message: str) -> ClientError:
    return ClientError(UNAVAILABLE, message)


def rate_limited(message: str, retry_after: float) -> ClientError:
    return ClientError(RATE_LIMITED, message, retry_after)


class ConnectionFailed(ClientError):
    """Could not connect, or the connection ended with the request unanswered."""

    def __init__(self, message: str) -> None:
        super().__init__(CONNECTION, message)


class WrongNodeKey(ClientError):
    """
    The node answered the handshake with another Noise static key than the
    one its card (or C{--node-key}) names: it is not the node we meant, and
    the handshake was abandoned before our own static key was sent.
    """

    def __init__(self, expected: bytes, got: bytes) -> None:
        super().__init__(WRONG_NODE_KEY, f"node's Noise key is {got.hex()}, expected {expected.hex()}")
        self.expected = expected
        self.got = got


class RequestTimeout(ClientError):
    def __init__(self, command: str, seconds: float) -> None:
        super().__init__(TIMEOUT, f"no answer to {command!r} within {seconds:g}s")


class BadResponse(ClientError):
    """The node's answer is malformed or does not match what was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(BAD_RESPONSE, message)
