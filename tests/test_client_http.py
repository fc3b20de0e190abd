"""
The local HTTP API over real loopback with twisted.web's Agent: every route
round trip, typed errors with their HTTP status, body limits enforced before
the body is read, rate limits with Retry-After, and docs/openapi.yaml
checked against the server (routes, methods, statuses, error codes, and the
shape of every body the tests received).  Also the layer's service as a
node builds it from its config, and its C{when_listening} after a failed
listen or a stop before the port was bound.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from io import BytesIO
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from frostnode.client.errors import REMOTE_CODES
from frostnode.client.http import ApiResource, HttpApiService, max_body_size
from frostnode.client.limits import ClientLimits
from frostnode.client.service import build_client_service
from frostnode.config import config_from_string
from frostnode.store.log import RecordBody

from tests.test_client_support import FakeSync, TestNode, add_epoch, listening_socket
from tests.test_net_support import RawClient

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def load_openapi() -> dict:
    """The document is YAML in JSON-compatible style after its comment lines."""
    text = "\n".join(line for line in OPENAPI.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))
    return json.loads(text)


def resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}


def check_schema(test: TestCase, doc: dict, schema: dict, value: Any, where: str = "body") -> None:
    """A small validator for the keywords the document uses."""
    schema = resolve(doc, schema)
    if value is None:
        test.assertTrue(schema.get("nullable"), f"{where} is null but not nullable")
        return
    kind = schema.get("type")
    if kind is not None:
        test.assertIsInstance(value, _TYPES[kind], f"{where} should be {kind}: {value!r}")
        if kind in ("integer", "number"):
            test.assertFalse(isinstance(value, bool), f"{where} is a boolean, not a number")
    if "enum" in schema:
        test.assertIn(value, schema["enum"], where)
    if "pattern" in schema:
        test.assertRegex(value, schema["pattern"], where)
    if "minimum" in schema:
        test.assertGreaterEqual(value, schema["minimum"], where)
    if kind == "object":
        for name in schema.get("required", ()):
            test.assertIn(name, value, f"{where} lacks {name}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                check_schema(test, doc, props[name], item, f"{where}.{name}")
            elif extra is False:
                test.fail(f"{where} has undocumented property {name}")
            elif isinstance(extra, dict):
                check_schema(test, doc, extra, item, f"{where}.{name}")
    if kind == "array":
        for i, item in enumerate(value):
            check_schema(test, doc, schema.get("items", {}), item, f"{where}[{i}]")


class HttpTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> None:
        self.limits = ClientLimits(max_request_size=64 * 1024, rate=1000.0, burst=1000)
        self.node = TestNode(self, self.limits)
        self.http, self.port = yield self.start_http(self.limits)
        self.agent = Agent(reactor)
        self.doc = load_openapi()

    @inlineCallbacks
    def start_http(self, limits: ClientLimits) -> Any:
        endpoint, port = listening_socket()
        http = HttpApiService(self.node.api, endpoint, reactor, limits)
        http.startService()
        self.addCleanup(http.stopService)
        yield http.when_listening()
        return http, port

    def template(self, path: str) -> str:
        for documented in self.doc["paths"]:
            pattern = "^" + re.sub(r"\{[^}]+\}", ".+", documented) + "$"
            if re.match(pattern, path.split("?")[0]):
                return documented
        return path

    @inlineCallbacks
    def call(self, method: str, path: str, body: Optional[Any] = None, raw: Optional[bytes] = None) -> Any:
        """One request; its status and JSON body, checked against the document's schema for that status."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        producer = None if data is None else FileBodyProducer(BytesIO(data))
        response = yield self.agent.request(method.encode(), f"http://127.0.0.1:{self.port}{path}".encode(),
                                            Headers({b"content-type": [b"application/json"]}), producer)
        payload = json.loads((yield readBody(response)))
        template = self.template(path)
        operation = self.doc["paths"].get(template, {}).get(method.lower())
        if operation is not None:
            documented = operation["responses"].get(str(response.code))
            self.assertIsNotNone(documented, f"{method} {template} answered {response.code}, not documented")
            schema = resolve(self.doc, documented)["content"]["application/json"]["schema"]
            check_schema(self, self.doc, schema, payload)
        else:
            check_schema(self, self.doc, {"$ref": "#/components/schemas/Error"}, payload)
        return response, payload

    @inlineCallbacks
    def test_round_trips(self) -> None:
        body = {"topic": "prices/btc", "payload": base64.b64encode(b"64000").decode(), "timestamp": 7,
                "nonce": base64.b64encode(b"n").decode(), "client_key": "ab" * 32}
        response, accepted = yield self.call("POST", "/v1/records", body)
        self.assertEqual((response.code, accepted["created"], accepted["seq"]), (201, True, 1))
        expected = RecordBody(b"\xab" * 32, "prices/btc", b"64000", 7, b"n")
        self.assertEqual(accepted["record_id"], expected.record_id.hex())
        self.assertIsNotNone(self.node.log.get(expected.record_id))
        response, again = yield self.call("POST", "/v1/records", body)
        self.assertEqual((response.code, again["record_id"], again["created"]), (200, accepted["record_id"], False))
        response, anonymous = yield self.call("POST", "/v1/records", {"topic": "prices/btc", "payload": ""})
        self.assertEqual(response.code, 201)

        response, record = yield self.call("GET", f"/v1/records/{accepted['record_id']}")
        self.assertEqual((base64.b64decode(record["payload"]), record["client_key"]), (b"64000", "ab" * 32))
        response, record = yield self.call("GET", f"/v1/records/{anonymous['record_id']}")
        self.assertEqual(record["client_key"], "00" * 32)

        response, page = yield self.call("GET", "/v1/topics/prices/btc?from=1&limit=10")
        self.assertEqual([r["record_id"] for r in page["records"]], [accepted["record_id"], anonymous["record_id"]])
        response, page = yield self.call("GET", f"/v1/topics/{quote('prices/btc', safe='')}?from=2")
        self.assertEqual((page["last"], page["next"], len(page["records"])), (2, 3, 1))

        response, status = yield self.call("GET", "/v1/status")
        self.assertEqual((status["log"]["count"], status["log"]["digest"]), (2, self.node.log.digest().hex()))

        response, error = yield self.call("GET", "/v1/pubkey")
        self.assertEqual((response.code, error["error"]["code"]), (503, "unavailable"))
        epoch = add_epoch(self.node.keystore, (self.node.host.public,))
        response, keys = yield self.call("GET", "/v1/pubkey")
        self.assertEqual((response.code, keys["output_key"], keys["network"], keys["holds_share"]),
                         (200, epoch.output_key.hex(), "regtest", True))

    @inlineCallbacks
    def test_typed_errors(self) -> None:
        cases = [
            ("POST", "/v1/records", b"{not json", 400, "invalid-request"),
            ("POST", "/v1/records", b"[]", 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "t", "payload": "", "extra": 1}).encode(), 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "t", "payload": "***"}).encode(), 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "", "payload": ""}).encode(), 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "t", "payload": "", "timestamp": -1}).encode(), 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "t", "payload": "", "client_key": "zz"}).encode(), 400, "invalid-request"),
            ("POST", "/v1/records", json.dumps({"topic": "t", "payload": "", "nonce": base64.b64encode(b"n" * 100).decode()}).encode(), 413, "too-large"),
            ("GET", "/v1/records/" + "00" * 32, None, 404, "not-found"),
            ("GET", "/v1/records/nothex", None, 400, "invalid-request"),
            ("GET", "/v1/topics/never-used", None, 404, "unknown-topic"),
            ("GET", "/v1/topics/t?limit=0", None, 400, "invalid-request"),
            ("GET", "/v1/topics/t?from=-1", None, 400, "invalid-request"),
            ("GET", "/v2/anything", None, 404, "not-found"),
            ("DELETE", "/v1/status", None, 405, "invalid-request"),
            ("GET", "/v1/records", None, 405, "invalid-request"),
            # A node whose signing service is not registered (tests.test_signing_commands has one that is).
            ("POST", "/v1/sign", json.dumps({"scheme": "record", "request": {}}).encode(), 503, "unavailable"),
            ("GET", "/v1/checkpoints/latest", None, 503, "unavailable"),
            ("GET", "/v1/checkpoints", None, 503, "unavailable"),
        ]
        yield self.call("POST", "/v1/records", {"topic": "t", "payload": ""})
        for method, path, raw, status, code in cases:
            response, body = yield self.call(method, path, raw=raw)
            self.assertEqual((response.code, body["error"]["code"]), (status, code), f"{method} {path}")
        response, _ = yield self.call("GET", "/v1/records")
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertEqual(self.node.log.digest().count, 1)

    @inlineCallbacks
    def test_body_over_the_limit_is_refused_before_it_is_read(self) -> None:
        limit = max_body_size(self.limits)
        declared = RawClient(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Expect: 100-continue\r\nContent-Length: 104857600\r\n\r\n" + b"{" * 1000)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), declared)
        yield declared.lost
        self.assertTrue(declared.received.startswith(b"HTTP/1.1 413 "), declared.received[:100])
        self.assertNotIn(b"100 Continue", declared.received)
        self.assertEqual(json.loads(declared.received.split(b"\r\n\r\n", 1)[1])["error"]["code"], "too-large")

        chunked = RawClient(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + b"%x\r\n" % (limit + 10) + b"x" * (limit + 10) + b"\r\n0\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), chunked)
        yield chunked.lost
        self.assertTrue(chunked.received.startswith(b"HTTP/1.1 413 "), chunked.received[:100])
        self.assertEqual(self.http.site.refused, 2)
        # A payload just over max_request_size fits the body limit but not the payload limit.
        big = base64.b64encode(b"x" * (self.limits.max_request_size + 1)).decode()
        response, body = yield self.call("POST", "/v1/records", {"topic": "t", "payload": big})
        self.assertEqual((response.code, body["error"]["code"]), (413, "too-large"))
        response, status = yield self.call("GET", "/v1/status")
        self.assertEqual(status["log"]["count"], 0)

    @inlineCallbacks
    def test_rate_limited_with_retry_after(self) -> None:
        self.http, self.port = yield self.start_http(ClientLimits(rate=0.5, burst=2))
        codes = []
        for _ in range(3):
            response, body = yield self.call("GET", "/v1/status")
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(body["error"]["code"], "rate-limited")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"2"])

    def test_document_matches_the_routes(self) -> None:
        doc = load_openapi()
        served = set()
        for prefix, method, _ in ApiResource(None, reactor, ClientLimits()).routes:  # the table needs no node
            path = prefix.decode()
            served.add((path, method.lower()))
        documented = set()
        for path, operations in doc["paths"].items():
            for method in operations:
                documented.add((re.sub(r"\{[^}]+\}$", "", path), method))
        self.assertEqual(served, documented)
        codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        self.assertEqual(set(codes), set(REMOTE_CODES))


class ServiceTests(TestCase):
    @inlineCallbacks
    def test_built_from_config(self) -> None:
        """[client] on by default, [http] only when enabled; both listen where configured."""
        base = Path(self.mktemp())
        base.mkdir()
        text = ('[client]\nlisten = "tcp:0:interface=127.0.0.1"\n'
                '[http]\nenabled = true\nlisten = "tcp:0:interface=127.0.0.1"\n')
        config = config_from_string(text, str(base / "node.toml"))
        node = TestNode(self)
        service = build_client_service(config, node.noise_private, node.sync, reactor, keystore=node.keystore)
        service.startService()
        self.addCleanup(service.stopService)
        client_port = yield service.port.when_listening()
        http_port = yield service.http.when_listening()
        self.assertEqual(service.port.factory.limits.max_request_size, config.client.max_request_size)
        agent = Agent(reactor)
        response = yield agent.request(b"GET", b"http://127.0.0.1:%d/v1/status" % http_port.getHost().port)
        status = json.loads((yield readBody(response)))
        self.assertEqual(status["node"], node.host.public.hex())
        self.assertNotEqual(client_port.getHost().port, http_port.getHost().port)

        off = build_client_service(config_from_string("", str(base / "other.toml")), node.noise_private,
                                   FakeSync(node.log, reactor), reactor)
        self.assertIsNone(off.http)
        self.assertIsNotNone(off.port)

    def test_when_listening_after_a_failed_listen(self) -> None:
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        node = TestNode(self)
        http = HttpApiService(node.api, TCP4ServerEndpoint(reactor, busy.getsockname()[1], interface="127.0.0.1"),
                              reactor)
        early = http.when_listening()
        http.startService()
        self.addCleanup(http.stopService)
        self.failureResultOf(early, CannotListenError)
        self.failureResultOf(http.when_listening(), CannotListenError)

    def test_stopped_before_the_port_is_bound(self) -> None:
        class Slow:
            def listen(self, factory: Any) -> Deferred:
                return Deferred()

        http = HttpApiService(TestNode(self).api, Slow(), reactor)
        http.startService()
        waiting = http.when_listening()
        http.stopService()
        self.failureResultOf(waiting, CancelledError)
        self.assertIsNone(http.port)
