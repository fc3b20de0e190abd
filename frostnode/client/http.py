# -*- test-case-name: tests.test_client_http -*-
"""
The local JSON-over-HTTP API: the client commands for applications written
in other languages.  Described, route by route, in C{docs/openapi.yaml}.

::

    POST /v1/records                      {"topic": ..., "payload": base64, ...}  -> 201 / 200
    GET  /v1/records/{record_id}          -> the record
    GET  /v1/topics/{topic}?from=&limit=  -> a page of the topic
    GET  /v1/status                       -> the status report
    GET  /v1/pubkey                       -> keys and address (503 before the first DKG)
    POST /v1/sign                         {"scheme": ..., "request": {...}, ...}  -> the signature
    GET  /v1/checkpoints?from=&limit=     -> this node's checkpoints, oldest first
    GET  /v1/checkpoints/latest           -> the newest checkpoint (404 before the first)

Decisions:

  - B{Off unless configured} (C{[http] enabled}), and bound where
    C{[http] listen} says, C{127.0.0.1} by default.  There is no
    authentication: whoever reaches the port is trusted as the operator's own
    application.  A non-loopback address is allowed (behind a proxy that
    controls access) but logged as a warning.
  - B{Record client key}: HTTP callers have no Noise key.  A submission
    names its C{client_key} (64 hex digits) or is filed under the all-zero
    I{anonymous local client} key; either way it is the caller's word, not
    an authenticated identity as on the Noise port.
  - B{Errors} are the client port's typed errors with an HTTP status
    (L{frostnode.client.errors.HTTP_STATUS}), as C{{"error": {"code",
    "message", "retry_after"?}}}; C{rate-limited} also sets C{Retry-After}.
    An unknown path is C{404 not-found}, a wrong method C{405
    invalid-request} with C{Allow}.
  - B{Size}: the body limit is C{max_request_size} grown by base64's 4/3
    plus 4 KiB of JSON.  A declared C{Content-Length} over it is answered
    C{413 too-large} and the connection closed before the body is read; a
    chunked body is counted as it arrives and refused the same way when it
    crosses the limit (nothing beyond the limit is kept).
  - B{Limits}: the Noise port's token bucket and in-flight count, keyed by
    the caller's address (the HTTP API has no client keys).
  - Topics may contain C{/}: everything after C{/v1/topics/},
    percent-decoded, is the topic.
  - B{Signing} (L{frostnode.signing.commands}, once the node registered it;
    C{503 unavailable} before): a request is the scheme's JSON form
    (C{request}), converted by the node's scheme, or its bytes
    (C{request_base64}).  A failed signature is one of the signing codes
    (C{409 views-differ}, C{422 validation-failed}, C{503
    not-enough-signers}, C{504 timeout}) with the members at fault in the
    error's C{members}.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Callable, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from frostnode.client.api import ANONYMOUS_CLIENT_KEY, ClientContext, NodeAPI
from frostnode.client.errors import (
    HTTP_STATUS, INTERNAL, NOT_FOUND, ClientError, invalid_request, too_large, unavailable,
)
from frostnode.client.limits import ClientLimits, ClientRegistry
from frostnode.client.messages import jsonable, nonnegative_int, optional_hex, unb64
from frostnode.net.listening import ListeningService, describe_address
from frostnode.signing.commands import checkpoint_to_json
from frostnode.wire import MAX_U32

#: JSON fields a submission may carry.
SUBMIT_FIELDS = ("topic", "payload", "timestamp", "nonce", "client_key")
#: JSON fields of a signing request.
SIGN_FIELDS = ("scheme", "request", "request_base64", "ciphersuite", "audit")
_LOOPBACK = ("127.", "::1", "localhost")


def max_body_size(limits: ClientLimits) -> int:
    """The largest request body accepted: a C{max_request_size} payload in base64, plus JSON."""
    return limits.max_request_size * 4 // 3 + 4096


def _error_body(error: ClientError) -> bytes:
    return json.dumps({"error": error.to_json()}, sort_keys=True).encode("utf-8")


class LimitedRequest(server.Request):
    """
    A request that refuses a body over the site's C{max_body} before reading
    it (declared length) or as soon as it crosses it (chunked).
    """

    _refused = False
    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        limit = self.channel.site.max_body
        if length is not None and length > limit:
            self._refuse(f"request body of {length} bytes is over the limit of {limit} bytes")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.max_body
        if self._received > limit:
            self._refuse(f"request body is over the limit of {limit} bytes")
            return
        super().handleContentChunk(data)

    def _refuse(self, message: str) -> None:
        self._refused = True
        self.content = io.BytesIO()
        # No "100 Continue" after this answer: the channel checks Expect after gotLength.
        self.requestHeaders.removeHeader(b"expect")
        body = _error_body(too_large(message))
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        self.channel.site.refused += 1
        self.channel.loseConnection()

    def process(self) -> None:
        if self._refused:
            return  # answered already; the connection is closing
        super().process()


class ApiSite(server.Site):
    """A L{server.Site} whose requests are L{LimitedRequest}s with C{max_body}."""

    def __init__(self, resource: Resource, max_body: int) -> None:
        super().__init__(resource, requestFactory=LimitedRequest)
        self.max_body = max_body
        self.refused = 0


class ApiResource(Resource):
    """Every route of the API, dispatched by path and method."""

    isLeaf = True
    log = Logger()

    def __init__(self, api: NodeAPI, clock: IReactorTime, limits: Optional[ClientLimits] = None) -> None:
        super().__init__()
        self.api = api
        self.clock = clock
        self.limits = limits or api.limits
        self.registry = ClientRegistry(self.limits)
        self.routes: list[tuple[bytes, str, Callable[..., Any]]] = [
            (b"/v1/records", "POST", self._submit),
            (b"/v1/records/", "GET", self._get),
            (b"/v1/topics/", "GET", self._topic),
            (b"/v1/status", "GET", self._status),
            (b"/v1/pubkey", "GET", self._pubkey),
            (b"/v1/sign", "POST", self._sign),
            (b"/v1/checkpoints", "GET", self._checkpoints),
            (b"/v1/checkpoints/latest", "GET", self._latest_checkpoint),
        ]

    # -- dispatch ---------------------------------------------------------------------------

    def _route(self, path: bytes) -> tuple[list[tuple[str, Callable[..., Any]]], Optional[bytes]]:
        """The (method, handler) pairs matching C{path}, and the path parameter if any."""
        found = []
        param = None
        for prefix, method, handler in self.routes:
            if prefix.endswith(b"/"):
                if path.startswith(prefix) and len(path) > len(prefix):
                    found.append((method, handler))
                    param = path[len(prefix):]
            elif path == prefix:
                found.append((method, handler))
        return found, param

    def render(self, request: server.Request) -> Any:
        path = request.path
        routes, param = self._route(path)
        if not routes:
            return self._finish(request, ClientError(NOT_FOUND, f"no such endpoint {path.decode('latin-1')[:200]!r}"))
        method = request.method.decode("ascii", "replace")
        handler = next((h for m, h in routes if m == method), None)
        if handler is None:
            allowed = ", ".join(sorted({m for m, _ in routes}))
            request.setHeader(b"allow", allowed.encode("ascii"))
            return self._finish(request, invalid_request(f"{method} is not allowed here (allowed: {allowed})"), 405)
        address = describe_address(request.getClientAddress())
        host = getattr(request.getClientAddress(), "host", address)
        now = self.clock.seconds()
        state = self.registry.get(host, now)
        refused = self.registry.admit(state, now)
        if refused is not None:
            self.registry.release(state, now)
            return self._finish(request, refused)
        context = ClientContext(ANONYMOUS_CLIENT_KEY, address, "http")
        d = self.api.run(context, f"HTTP {method} {path.decode('latin-1')[:64]}", handler, request, context, param)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(result: Any) -> None:
            self.registry.done(state, self.clock.seconds())
            if finished[0]:
                return  # the caller went away
            if isinstance(result, Failure):
                error = result.value if isinstance(result.value, ClientError) else ClientError(INTERNAL, "internal error")
                self._write(request, *self._error(request, error))
            else:
                self._write(request, *result)

        d.addBoth(answer)
        return server.NOT_DONE_YET

    def _error(self, request: server.Request, error: ClientError, status: Optional[int] = None) -> tuple[int, Any]:
        if error.retry_after is not None and error.retry_after > 0:
            request.setHeader(b"retry-after", str(max(1, math.ceil(error.retry_after))).encode("ascii"))
        return status or HTTP_STATUS.get(error.code, 500), {"error": error.to_json()}

    def _finish(self, request: server.Request, error: ClientError, status: Optional[int] = None) -> bytes:
        code, body = self._error(request, error, status)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @staticmethod
    def _write(request: server.Request, status: int, body: Any) -> None:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(jsonable(body), sort_keys=True).encode("utf-8"))
        request.finish()

    # -- routes -----------------------------------------------------------------------------

    def _submit(self, request: server.Request, context: ClientContext, _: Any) -> Deferred:
        doc = _json_object(request)
        unknown = sorted(set(doc) - set(SUBMIT_FIELDS))
        if unknown:
            raise invalid_request(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(SUBMIT_FIELDS)})")
        try:
            topic = doc.get("topic")
            if not isinstance(topic, str):
                raise ValueError("topic must be a string")
            if "payload" not in doc:
                raise ValueError("payload (base64) is required")
            payload = unb64(doc["payload"], "payload")
            timestamp = doc.get("timestamp")
            timestamp = (int(self.clock.seconds() * 1_000_000) if timestamp is None
                         else nonnegative_int(timestamp, "timestamp"))
            nonce = os.urandom(16) if doc.get("nonce") is None else unb64(doc["nonce"], "nonce")
            client_key = optional_hex(doc.get("client_key"), "client_key", 32) or ANONYMOUS_CLIENT_KEY
        except ValueError as e:
            raise invalid_request(str(e)) from None
        if len(payload) > self.limits.max_request_size:
            raise too_large(f"payload of {len(payload)} bytes is over the limit of {self.limits.max_request_size}")
        d = self.api.submit(client_key, topic, payload, timestamp, nonce)
        return d.addCallback(lambda a: (201 if a.created else 200, a.to_json()))

    def _get(self, request: server.Request, context: ClientContext, param: bytes) -> tuple[int, Any]:
        text = param.decode("latin-1")
        try:
            record_id = optional_hex(text, "record id", 32)
        except ValueError as e:
            raise invalid_request(str(e)) from None
        assert record_id is not None
        return 200, self.api.get(record_id).to_json()

    def _topic(self, request: server.Request, context: ClientContext, param: bytes) -> tuple[int, Any]:
        try:
            topic = unquote_to_bytes(param).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_request("topic is not UTF-8") from None
        try:
            start = nonnegative_int(_query(request, b"from", "1"), "from")
            limit = nonnegative_int(_query(request, b"limit", "100"), "limit", MAX_U32)
        except ValueError as e:
            raise invalid_request(str(e)) from None
        return 200, self.api.topic(topic, start, limit).to_json()

    def _status(self, request: server.Request, context: ClientContext, _: Any) -> tuple[int, Any]:
        return 200, self.api.status()

    def _pubkey(self, request: server.Request, context: ClientContext, _: Any) -> tuple[int, Any]:
        return 200, self.api.pubkey().to_json()

    def _signing(self) -> Any:
        if self.api.signing is None:
            raise unavailable("this node does not offer signing (no signing service is registered)")
        return self.api.signing

    def _sign(self, request: server.Request, context: ClientContext, _: Any) -> Deferred:
        signing = self._signing()
        doc = _json_object(request)
        unknown = sorted(set(doc) - set(SIGN_FIELDS))
        if unknown:
            raise invalid_request(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(SIGN_FIELDS)})")
        scheme = doc.get("scheme")
        ciphersuite = doc.get("ciphersuite", "bip445")
        audit = doc.get("audit", False)
        if not isinstance(scheme, str) or not isinstance(ciphersuite, str) or not isinstance(audit, bool):
            raise invalid_request("scheme and ciphersuite must be strings, audit a boolean")
        if ("request" in doc) == ("request_base64" in doc):
            raise invalid_request("give the request once: request (the scheme's JSON form) or request_base64")
        if "request" in doc:
            raw = signing.request_from_json(scheme, doc["request"])
        else:
            try:
                raw = unb64(doc["request_base64"], "request_base64")
            except ValueError as e:
                raise invalid_request(str(e)) from None
        return signing.sign(scheme, raw, ciphersuite, audit).addCallback(lambda r: (200, r.to_json()))

    def _checkpoints(self, request: server.Request, context: ClientContext, _: Any) -> tuple[int, Any]:
        signing = self._signing()
        try:
            start = nonnegative_int(_query(request, b"from", "1"), "from")
            limit = nonnegative_int(_query(request, b"limit", "20"), "limit", MAX_U32)
        except ValueError as e:
            raise invalid_request(str(e)) from None
        return 200, signing.checkpoints(start, limit).to_json()

    def _latest_checkpoint(self, request: server.Request, context: ClientContext, _: Any) -> tuple[int, Any]:
        return 200, checkpoint_to_json(self._signing().latest_checkpoint())


def _json_object(request: server.Request) -> dict:
    try:
        doc = json.loads(request.content.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise invalid_request(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid_request("body must be a JSON object")
    return doc


def _query(request: server.Request, name: bytes, default: str) -> str:
    values = request.args.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"{name.decode()} is given more than once")
    return values[0].decode("ascii", "replace")


def make_site(api: NodeAPI, clock: IReactorTime, limits: Optional[ClientLimits] = None) -> ApiSite:
    limits = limits or api.limits
    return ApiSite(ApiResource(api, clock, limits), max_body_size(limits))


class HttpApiService(ListeningService):
    """Listens with the API's site while running (add it only when C{[http] enabled})."""

    what = "HTTP API"

    def __init__(self, api: NodeAPI, endpoint: IStreamServerEndpoint, clock: IReactorTime,
                 limits: Optional[ClientLimits] = None) -> None:
        super().__init__(endpoint, make_site(api, clock, limits))
        self.site = self.factory

    def listened(self, port: IListeningPort) -> None:
        host = getattr(port.getHost(), "host", "")
        if not any(host.startswith(p) for p in _LOOPBACK):
            self.log.warn("HTTP API is bound to {host}, not loopback: it has no authentication of its own", host=host)
