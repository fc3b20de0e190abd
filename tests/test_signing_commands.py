"""
Tests for L{frostnode.signing.commands}: the C{sign} and C{checkpoint}
commands as clients use them, through every door: the client library over
real loopback Noise, L{BlockingClient} from a script thread, the
C{frostnode-client} CLI and the HTTP API (checked against
docs/openapi.yaml).

The federation: five members (t = 3), each with its own LMDB store (keys,
nonces, log, checkpoints), a real L{SigningService} over in-memory links
(L{frostnode.net.memory}) and its own client port; keys from the trusted
dealer, as the signing tests do; the built-in C{record} scheme over real
data logs.  Replication is done by the test (a record copied, or not, into
each member's log) so a test decides who holds what; one test runs the real
sync service instead.  Signing timers run on a L{Clock} the test advances.
Signatures are checked with coincurve's BIP340 verification against the
output key that C{pubkey} returns, as a user would.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace
from io import BytesIO
from typing import Any, Callable, Optional

from coincurve import PublicKeyXOnly
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from frostnode.broadcast.service import ReliableBroadcast
from frostnode.client.api import NodeAPI
from frostnode.client.blocking import BlockingClient
from frostnode.client.cli import run
from frostnode.client.errors import ClientError
from frostnode.client.http import HttpApiService
from frostnode.client.library import FrostnodeClient, NodeTarget, connect
from frostnode.client.messages import b64, decode_response, encode_error
from frostnode.client.server import ClientPortService
from frostnode.crypto import bip445, rfc9591
from frostnode.crypto.group import point_from_bytes
from frostnode.crypto.keygen import trusted_dealer_keygen
from frostnode.identity import MemberDirectory
from frostnode.net.interfaces import CHANNEL_SIGN
from frostnode.net.memory import MemoryNetwork
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from frostnode.signing import messages as m
from frostnode.signing.checkpoint import Checkpoint, decode_statement
from frostnode.signing.commands import (
    CheckpointPage, Divergence, SignArgs, SignResult, check_sign_result, decode_checkpoint, encode_checkpoint,
    register_signing_commands, scheme_request, signing_error,
)
from frostnode.signing.errors import Refusal, SigningFailed
from frostnode.signing.service import SigningConfig, SigningService
from frostnode.store.checkpoints import CheckpointStore
from frostnode.store.db import Database
from frostnode.store.keys import EpochRecord, KeyStore
from frostnode.store.log import DataLog, RecordBody
from frostnode.store.nonces import NonceStore
from frostnode.sync.service import SyncService
from frostnode.validation.interface import DataLogView, scheme_message
from frostnode.validation.record import encode_request
from frostnode.validation.registry import load_schemes
from frostnode.wire import DecodeError
from tests.test_client_http import check_schema, load_openapi, resolve
from tests.test_client_support import FakeSync, listening_socket
from tests.test_signing_service import settle
from tests.test_sync_support import FAST, Member, make_member, until

EPOCH = 1
T, N = 3, 5
A, B, C, D, E = range(5)


def asynctest(f: Callable) -> Callable:
    def run_it(self: Any) -> Any:
        return ensureDeferred(f(self))
    run_it.__name__ = f.__name__
    run_it.__doc__ = f.__doc__
    return run_it


class SignNode:
    """One member: store, log, signing service, client API and client port."""

    def __init__(self, fed: "Federation", index: int, member: Member, path: str) -> None:
        self.fed = fed
        self.index = index
        self.member = member
        self.host = member.host
        self.path = path
        self.sync: Any = None
        self.extra: list = []
        #: Called after each change the real sync service reports (L{until}).
        self.watchers: list[Callable[[], None]] = []
        self.open()

    @property
    def key(self) -> bytes:
        return self.host.public

    def open(self) -> None:
        fed = self.fed
        links = fed.net.links(self.key)
        self.db = Database.open(self.path, reactor=reactor)
        self.log = DataLog(self.db, self.key)
        if fed.real_sync:
            bc = ReliableBroadcast(links, fed.keys, reactor, sweep_interval=1.0)
            self.sync = SyncService(self.log, links, bc, self.host, fed.directory, reactor, FAST)
            self.sync.add_change_observer(lambda: [watcher() for watcher in list(self.watchers)])
            bc.startService()
            self.sync.startService()
            self.extra = [self.sync, bc]
        else:
            self.sync = FakeSync(self.log, reactor)
        self.keys = KeyStore(self.db)
        if fed.with_keys and self.keys.get(EPOCH) is None:
            self.keys.put_pending_sync(fed.record(self.index))
            self.keys.certify_sync(EPOCH, b"test certificate", 0.0)
        self.nonces = NonceStore(self.db)
        self.checkpoint_store = CheckpointStore(self.db)
        links._handlers.pop(CHANNEL_SIGN, None)  # a restarted member registers again
        self.signing = SigningService(links, fed.directory, self.host, self.keys, self.nonces, DataLogView(self.log),
                                      fed.schemes, fed.clock, fed.config)
        self.signing.keep_checkpoints(self.checkpoint_store)
        self.signing.startService()
        self.api = NodeAPI(self.sync, reactor, keystore=self.keys, directory=fed.directory, threshold=T, links=links,
                           network="regtest")
        register_signing_commands(self.api, self.signing, fed.schemes)
        endpoint, port = listening_socket()
        self.port = ClientPortService(self.api, self.member.noise_private, endpoint, reactor)
        self.port.startService()
        self.target = NodeTarget("127.0.0.1", port, noise_public_key(self.member.noise_private), self.key)
        self.http: Optional[HttpApiService] = None

    async def start_http(self) -> int:
        endpoint, port = listening_socket()
        self.http = HttpApiService(self.api, endpoint, reactor)
        self.http.startService()
        await self.http.when_listening()
        return port

    async def close(self) -> None:
        for service in [self.http, self.port, self.signing, *self.extra]:
            if service is not None and service.running:
                await maybeDeferred(service.stopService)
        await self.db.close()

    async def restart(self) -> None:
        """Stop everything, close the store, open it again: memory lost, disk kept."""
        await self.fed.settle()
        await self.close()
        self.open()
        await self.port.when_listening()


class Federation:
    def __init__(self, test: TestCase, config: Optional[SigningConfig] = None, real_sync: bool = False,
                 with_keys: bool = True) -> None:
        self.test = test
        self.clock = Clock()
        self.config = config or SigningConfig()
        self.real_sync = real_sync
        self.with_keys = with_keys
        self.schemes = load_schemes()
        members = sorted((make_member() for _ in range(N)), key=lambda mem: mem.key)
        self.keys = [mem.key for mem in members]
        self.directory = MemberDirectory(mem.card for mem in members)
        self.net = MemoryNetwork(reactor, self.keys, rng=random.Random(7))
        group_key, self.packages = trusted_dealer_keygen(T, N)
        self.internal = group_key.encode()
        self.output = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(self.internal))
        self.nodes = [SignNode(self, i, mem, test.mktemp()) for i, mem in enumerate(members)]
        self.clients: list[FrostnodeClient] = []
        test.addCleanup(self.close)

    def record(self, i: int) -> EpochRecord:
        pk = self.packages[i + 1]
        return EpochRecord(
            EPOCH, b"test-dkg", tuple(self.keys), T, i + 1, pk.secret_share.to_bytes(32, "big"), b"",
            tuple(self.packages[j + 1].verification_share.encode() for j in range(N)), self.internal, self.output,
            0.0)

    def replicate(self, origin: int, to: tuple[int, ...]) -> None:
        """What sync would do, for chosen members only: copy C{origin}'s records into their logs."""
        source = self.nodes[origin].log
        envelopes = source.range(self.nodes[origin].key, 1, 1000)
        for i in to:
            for env in envelopes:
                self.nodes[i].log.insert_remote_sync(env)

    async def client(self, i: int) -> FrostnodeClient:
        client = await connect(reactor, self.nodes[i].target, timeout=20.0)
        self.clients.append(client)
        return client

    async def settle(self) -> None:
        """Let messages and store writes in flight finish (the signing clock does not move)."""
        await settle([n.signing for n in self.nodes], self.net)

    async def advance(self, seconds: float, d: Deferred, steps: int = 20) -> None:
        """Move the signing clock in C{steps} until C{d} has fired (a request waiting on timers)."""
        await self.settle()
        for _ in range(steps):
            if d.called:
                return
            self.clock.advance(seconds)
            await self.settle()
            await deferLater(reactor, 0.01, lambda: None)  # the answer's trip over TCP

    async def close(self) -> None:
        for client in self.clients:
            if client.connected:
                await client.close()
        await self.settle()
        for key in self.keys:
            self.net.silence(key)
        for node in self.nodes:
            await node.close()


async def submit_record(fed: Federation, at: int, payload: bytes = b"invoice 17: 250 sat",
                        topic: str = "invoices") -> bytes:
    client = await fed.client(at)
    accepted = await client.submit(topic, payload)
    return accepted.record_id


def verify_bip340(key: bytes, result: Any) -> bool:
    return PublicKeyXOnly(key).verify(result.signature, result.message)


def garble_shares(fed: Federation, *members: int) -> None:
    """These members send signature shares of the right size and the wrong value."""
    def rewrite(peer: bytes, channel: int, payload: bytes) -> list:
        if channel == CHANNEL_SIGN and payload[1] == m.T_SIGN_SHARE:
            payload = payload[:-32] + bytes(31) + b"\x01"
        return [(peer, channel, payload)]
    for i in members:
        fed.net.set_byzantine(fed.keys[i], rewrite)


class LibraryTests(TestCase):
    timeout = 60

    @asynctest
    async def test_submit_to_a_sign_at_c(self) -> None:
        """
        A client submits a record to member A; it reaches the others.  The
        client asks member C for a signature over it: the signature verifies
        with coincurve's BIP340 against the output key C{pubkey} returns,
        over the record scheme's message of that very request.  RFC 9591 per
        request verifies under the internal key.
        """
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        c = await fed.client(C)
        keys = await c.pubkey()
        result = await c.sign("record", {"records": [rid.hex()], "topic": "invoices"})
        self.assertTrue(verify_bip340(keys.output_key, result))
        self.assertEqual(result.key, keys.output_key)
        self.assertEqual(result.message, scheme_message("record", encode_request([rid], "invoices")))
        self.assertEqual((result.scheme, result.ciphersuite, result.epoch), ("record", "bip445", EPOCH))
        self.assertEqual(len(set(result.signers)), T)
        self.assertIn(fed.keys[C], result.signers)

        result = await c.sign("record", encode_request([rid]), ciphersuite="rfc9591")
        self.assertEqual((result.key, len(result.signature)), (fed.internal, 65))
        self.assertTrue(rfc9591.verify(point_from_bytes(fed.internal), result.message, result.signature))
        self.assertEqual(result.message, scheme_message("record", encode_request([rid])))

    @asynctest
    async def test_through_the_real_sync_service(self) -> None:
        """The record reaches the members by the real sync service (broadcast over the same links)."""
        fed = Federation(self, real_sync=True)
        rid = await submit_record(fed, A)
        await until(fed.nodes, lambda: all(n.log.get(rid) is not None for n in fed.nodes), 10)
        c = await fed.client(C)
        keys = await c.pubkey()
        result = await c.sign("record", {"records": [rid.hex()]}, audit=True)
        self.assertTrue(verify_bip340(keys.output_key, result))
        self.assertEqual(dict(result.divergent), {})

    @asynctest
    async def test_a_member_lacking_the_record_is_named(self) -> None:
        """
        Member E never got the record: it catches up for the configured
        time, then refuses (the signing clock jumps past that time at once,
        so its refusal is in before the next session's shares); the
        signature comes from the others and the answer names E as divergent.
        """
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D))
        c = await fed.client(C)
        d = c.sign("record", {"records": [rid.hex()]}, audit=True)
        await fed.advance(fed.config.catchup_timeout, d)
        result = await d
        self.assertTrue(verify_bip340(fed.output, result))
        self.assertEqual(list(result.divergent), [fed.keys[E]])
        self.assertEqual(result.divergent[fed.keys[E]].kind, "views-differ")
        self.assertIn("missing data", result.divergent[fed.keys[E]].reason)
        self.assertNotIn(fed.keys[E], result.signers)


class ErrorTests(TestCase):
    """Each way a signature can fail reaches the client as its typed error, naming the members at fault."""

    timeout = 60

    @asynctest
    async def test_views_differ_names_the_members(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (C,))  # B, D and E never get it
        c = await fed.client(C)
        d = c.sign("record", {"records": [rid.hex()]})
        await fed.advance(fed.config.catchup_poll, d, steps=60)
        e = await self.assertFailure(d, ClientError)
        lacking = sorted(fed.keys[i] for i in (B, D, E))
        self.assertEqual(e.code, "views-differ")
        self.assertEqual(str(e), "views-differ: " + ", ".join(k.hex() for k in lacking))
        self.assertEqual(list(e.members), lacking)
        for why in e.members.values():
            self.assertIn("missing data", why)

    @asynctest
    async def test_validation_failed_carries_the_schemes_reason(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        c = await fed.client(C)
        e = await self.assertFailure(c.sign("record", {"records": [rid.hex()], "topic": "receipts"}), ClientError)
        self.assertEqual(e.code, "validation-failed")
        self.assertEqual(e.message, f"wrong-topic: record {rid.hex()[:16]} is on topic 'invoices', not 'receipts'")

    @asynctest
    async def test_not_enough_signers_names_the_misbehaving(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        garble_shares(fed, A, B, D)
        c = await fed.client(C)
        e = await self.assertFailure(c.sign("record", {"records": [rid.hex()]}), ClientError)
        self.assertEqual(e.code, "not-enough-signers")
        self.assertEqual(set(e.members), {fed.keys[i] for i in (A, B, D)})
        for why in e.members.values():
            self.assertTrue(why.startswith("misbehaved: "), why)
        status = await c.status()
        self.assertEqual(set(status["signing"]["misbehaving"]), {fed.keys[i].hex() for i in (A, B, D)})
        self.assertEqual((status["signing"]["signatures"], status["signing"]["failures"]), (0, 1))

    @asynctest
    async def test_timeout_names_the_silent(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        c = await fed.client(C)
        for i in (B, D, E):
            fed.net.silence(fed.keys[i])
        d = c.sign("record", {"records": [rid.hex()]})
        await fed.advance(fed.config.session_timeout, d, steps=15)
        e = await self.assertFailure(d, ClientError)
        self.assertEqual(e.code, "timeout")
        self.assertTrue(e.members)
        self.assertTrue(set(e.members) <= {fed.keys[i] for i in (B, D, E)})
        self.assertEqual(set(e.members.values()), {"no answer"})
        status = await c.status()
        self.assertTrue(set(status["signing"]["unresponsive"]) & {fed.keys[i].hex() for i in (B, D, E)})

    @asynctest
    async def test_unavailable_before_the_first_key(self) -> None:
        fed = Federation(self, with_keys=False)
        c = await fed.client(C)
        e = await self.assertFailure(c.sign("record", {"records": ["00" * 32]}), ClientError)
        self.assertEqual(e.code, "unavailable")

    @asynctest
    async def test_invalid_requests(self) -> None:
        fed = Federation(self)
        c = await fed.client(C)
        for scheme, request, suite, what in [
            ("nope", b"\x01", "bip445", "unknown scheme 'nope'"),
            ("record", b"\x01", "ed25519", "unknown ciphersuite 'ed25519'"),
            ("checkpoint", b"\x01", "bip445", "the federation's own"),
        ]:
            e = await self.assertFailure(c.sign(scheme, request, ciphersuite=suite), ClientError)
            self.assertEqual(e.code, "invalid-request", what)
            self.assertIn(what, e.message)
        # Converted on the client side: a JSON form the scheme refuses, or a scheme unknown here.
        e = await self.assertFailure(c.sign("record", {"records": ["xyz"]}), ClientError)
        self.assertEqual(e.code, "invalid-request")
        e = await self.assertFailure(c.sign("nope", {"a": 1}), ClientError)
        self.assertIn("pass the request's bytes", e.message)
        # Arguments that are not the strict encoding.
        args = SignArgs("record", b"r").encode()
        for bad in (args + b"\x00", args[:-1], b""):
            e = await self.assertFailure(c.call("sign", bad), ClientError)
            self.assertEqual(e.code, "invalid-request")
        # Bytes the scheme cannot read are the scheme's refusal.
        e = await self.assertFailure(c.sign("record", b"\x07garbage"), ClientError)
        self.assertEqual(e.code, "validation-failed")
        self.assertIn("malformed-request", e.message)
        self.assertEqual(fed.nodes[C].signing.signatures, 0)


class CheckpointTests(TestCase):
    timeout = 60

    @asynctest
    async def test_checkpoints_survive_a_restart(self) -> None:
        """
        Member C signs checkpoints for the federation; clients read them
        (verified against their statements), and after C restarts from its
        store it still serves them and numbers on.
        """
        fed = Federation(self)
        await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        c = await fed.client(C)
        e = await self.assertFailure(c.checkpoint(), ClientError)
        self.assertEqual(e.code, "not-found")
        page = await c.checkpoints()
        self.assertEqual((page.last, page.checkpoints), (0, []))

        signed = await fed.nodes[C].signing.checkpoint()
        cp = await c.checkpoint()
        self.assertEqual((cp.seq, cp.signature, cp.statement), (1, signed.signature, signed.statement))
        self.assertTrue(verify_bip340(fed.output, cp))
        statement = decode_statement(cp.statement)
        self.assertEqual((statement.epoch, list(statement.members)), (EPOCH, fed.keys))
        self.assertEqual((dict(statement.cut), statement.count), ({fed.keys[A]: 1}, 1))

        await fed.nodes[C].restart()
        c = await fed.client(C)
        again = await c.checkpoint()
        self.assertEqual(again, cp)
        await fed.nodes[C].signing.checkpoint()
        page = await c.checkpoints(2)
        self.assertEqual((page.last, [p.seq for p in page.checkpoints]), (2, [2]))
        page = await c.checkpoints(1, limit=1)
        self.assertEqual([p.seq for p in page.checkpoints], [1])
        self.assertEqual((await c.status())["signing"]["checkpoint"], 2)


class DoorsTests(TestCase):
    """The same commands through the CLI, a blocking script and the HTTP API."""

    timeout = 60

    async def cli(self, node: SignNode, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = ["--node", f"127.0.0.1:{node.target.port}", "--node-key", node.target.noise_key.hex(), "--ephemeral"]
        status = await run(reactor, args + list(argv), BytesIO(), out, err)
        return status, out.getvalue(), err.getvalue()

    @asynctest
    async def test_cli(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        node = fed.nodes[C]
        request = json.dumps({"records": [rid.hex()]})
        status, out, err = await self.cli(node, "sign", "--scheme", "record", "--request", request)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"key        {fed.output.hex()} (Taproot output key, BIP340)", out)
        self.assertIn(f"message    {scheme_message('record', encode_request([rid])).hex()}", out)
        status, out, err = await self.cli(node, "--json", "sign", "--scheme", "record", "--request-hex",
                                          encode_request([rid]).hex())
        doc = json.loads(out)
        self.assertTrue(PublicKeyXOnly(fed.output).verify(bytes.fromhex(doc["signature"]),
                                                         bytes.fromhex(doc["message"])))
        self.assertEqual((doc["key"], doc["scheme"], len(doc["signers"])), (fed.output.hex(), "record", T))

        status, out, err = await self.cli(node, "sign", "--scheme", "record", "--request",
                                          json.dumps({"records": [rid.hex()], "topic": "other"}))
        self.assertEqual(status, 1)
        self.assertIn("frostnode-client: validation-failed: wrong-topic: ", err)
        status, out, err = await self.cli(node, "sign", "--scheme", "record", "--request", "{not json")
        self.assertEqual(status, 2)
        self.assertIn("--request is not JSON", err)

        status, out, err = await self.cli(node, "checkpoint")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("not-found", err)
        cp = await node.signing.checkpoint()
        status, out, err = await self.cli(node, "checkpoint")
        self.assertEqual(status, 0)
        self.assertIn(f"checkpoint 1 (on this node)", out)
        self.assertIn(f"epoch      {EPOCH}, {N} members", out)
        self.assertIn(f"signature  {cp.signature.hex()}", out)
        status, out, err = await self.cli(node, "--json", "checkpoint", "--all")
        page = json.loads(out)
        self.assertEqual((page["last"], [p["seq"] for p in page["checkpoints"]]), (1, [1]))
        self.assertEqual(page["checkpoints"][0]["cut"], {fed.keys[A].hex(): 1})

        # An error naming members lists them, one per line.
        garble_shares(fed, A, B, D)
        status, out, err = await self.cli(node, "sign", "--scheme", "record", "--request", request)
        self.assertEqual(status, 1)
        self.assertIn("frostnode-client: not-enough-signers: ", err)
        for i in (A, B, D):
            self.assertIn(f"  {fed.keys[i].hex()}: misbehaved: ", err)
        status, out, err = await self.cli(node, "status")
        self.assertIn("signing    3 signed, 2 failed here; newest checkpoint 1\n", out)  # 2 + the checkpoint; 2 errors
        for i in (A, B, D):
            self.assertIn(f"  misbehaving {fed.keys[i].hex()[:16]}: invalid signature share", out)

    @asynctest
    async def test_blocking_client_from_a_script_thread(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        target = fed.nodes[C].target

        def script() -> tuple:
            with BlockingClient.connect(target, reactor=reactor) as client:
                keys = client.pubkey()
                signed = client.sign("record", {"records": [rid.hex()]})
                try:
                    client.checkpoint()
                except ClientError as e:
                    none_yet = e.code
            return keys, signed, none_yet

        keys, signed, none_yet = await deferToThread(script)
        self.assertTrue(verify_bip340(keys.output_key, signed))
        self.assertEqual(none_yet, "not-found")

    @asynctest
    async def test_http(self) -> None:
        fed = Federation(self)
        rid = await submit_record(fed, A)
        fed.replicate(A, (B, C, D, E))
        node = fed.nodes[C]
        port = await node.start_http()
        doc = load_openapi()
        agent = Agent(reactor)

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            producer = None if body is None else FileBodyProducer(BytesIO(json.dumps(body).encode()))
            response = await agent.request(method.encode(), f"http://127.0.0.1:{port}{path}".encode(),
                                           Headers({b"content-type": [b"application/json"]}), producer)
            payload = json.loads(await readBody(response))
            documented = doc["paths"][path.split("?")[0]][method.lower()]["responses"].get(str(response.code))
            self.assertIsNotNone(documented, f"{method} {path} answered {response.code}, not documented")
            schema = resolve(doc, documented)["content"]["application/json"]["schema"]
            check_schema(self, doc, schema, payload)
            return response.code, payload

        code, signed = await call("POST", "/v1/sign", {"scheme": "record", "request": {"records": [rid.hex()]}})
        self.assertEqual(code, 200)
        self.assertTrue(PublicKeyXOnly(fed.output).verify(bytes.fromhex(signed["signature"]),
                                                         bytes.fromhex(signed["message"])))
        self.assertEqual(signed["message"], scheme_message("record", encode_request([rid])).hex())
        code, signed = await call("POST", "/v1/sign", {"scheme": "record", "ciphersuite": "rfc9591", "audit": True,
                                                       "request_base64": b64(encode_request([rid]))})
        self.assertEqual((code, signed["key"], signed["ciphersuite"]), (200, fed.internal.hex(), "rfc9591"))
        self.assertTrue(rfc9591.verify(point_from_bytes(fed.internal), bytes.fromhex(signed["message"]),
                                       bytes.fromhex(signed["signature"])))
        cases = [
            ({"scheme": "record", "request": {"records": [rid.hex()], "topic": "x"}}, 422, "validation-failed"),
            ({"scheme": "nope", "request": {}}, 400, "invalid-request"),
            ({"scheme": "record"}, 400, "invalid-request"),
            ({"scheme": "record", "request": {}, "request_base64": ""}, 400, "invalid-request"),
            ({"scheme": "record", "request": {"records": "no"}}, 400, "invalid-request"),
            ({"scheme": "record", "request_base64": "***"}, 400, "invalid-request"),
            ({"scheme": "record", "request": {}, "extra": 1}, 400, "invalid-request"),
            ({"scheme": "record", "request": {}, "audit": "yes"}, 400, "invalid-request"),
        ]
        for body, status, error in cases:
            code, answer = await call("POST", "/v1/sign", body)
            self.assertEqual((code, answer["error"]["code"]), (status, error), body)

        code, answer = await call("GET", "/v1/checkpoints/latest")
        self.assertEqual((code, answer["error"]["code"]), (404, "not-found"))
        cp = await node.signing.checkpoint()
        code, latest = await call("GET", "/v1/checkpoints/latest")
        self.assertEqual((code, latest["seq"], latest["signature"]), (200, 1, cp.signature.hex()))
        code, page = await call("GET", "/v1/checkpoints?from=1&limit=5")
        self.assertEqual((page["last"], [p["statement"] for p in page["checkpoints"]]), (1, [cp.statement.hex()]))
        code, answer = await call("GET", "/v1/checkpoints?limit=0")
        self.assertEqual((code, answer["error"]["code"]), (400, "invalid-request"))

        # A failure naming members carries them; status reports the signing section.
        garble_shares(fed, A, B, D)
        code, answer = await call("POST", "/v1/sign", {"scheme": "record", "request": {"records": [rid.hex()]}})
        self.assertEqual((code, answer["error"]["code"]), (503, "not-enough-signers"))
        self.assertEqual(set(answer["error"]["members"]), {fed.keys[i].hex() for i in (A, B, D)})
        code, status = await call("GET", "/v1/status")
        self.assertEqual(set(status["signing"]["misbehaving"]), {fed.keys[i].hex() for i in (A, B, D)})


class CodecTests(SynchronousTestCase):
    def test_sign_args(self) -> None:
        args = SignArgs("record", b"\x01request", "rfc9591", True)
        self.assertEqual(SignArgs.decode(args.encode()), args)
        self.assertRaises(ValueError, SignArgs("Bad Name", b"").encode)
        self.assertRaises(ValueError, SignArgs("record", b"", "").encode)
        raw = args.encode()
        self.assertRaises(DecodeError, SignArgs.decode, raw + b"\x00")
        bad_name = raw.replace(b"record", b"Record", 1)
        self.assertRaises(DecodeError, SignArgs.decode, bad_name)

    def test_sign_result_is_checked_by_the_client(self) -> None:
        from frostnode.crypto.bip340 import pubkey_xonly, schnorr_sign

        seckey = b"\x05" * 32
        key = pubkey_xonly(seckey)
        message = scheme_message("record", b"statement")
        result = SignResult(schnorr_sign(message, seckey, b"\x00" * 32), key, message, "record", "bip445", 3,
                            (b"\x01" * 32, b"\x02" * 32), {b"\x09" * 32: Divergence("views-differ", "missing data")},
                            (b"\x07" * 32,), 2)
        decoded = SignResult.decode(result.encode())
        self.assertEqual(decoded, result)
        self.assertIs(check_sign_result(decoded, "record", "bip445"), decoded)
        forged = decoded._replace(message=scheme_message("record", b"other"))
        self.assertRaises(ValueError, check_sign_result, forged, "record", "bip445")
        self.assertRaises(ValueError, check_sign_result, decoded, "ledger", "bip445")
        self.assertRaises(ValueError, check_sign_result, decoded._replace(key=b"\x02" + key), "record", "bip445")
        twice = result._replace(signers=(b"\x01" * 32, b"\x01" * 32)).encode()
        self.assertRaises(DecodeError, SignResult.decode, twice)

    def test_signing_failures_become_client_errors(self) -> None:
        b, d, e = b"\x0b" * 32, b"\x0d" * 32, b"\x0e" * 32
        failed = SigningFailed("views-differ", "short names", divergent={
            e: Refusal("views-differ", b"x" * 32, "missing data: 1 record"),
            b: Refusal("validation-failed", b"", "wrong-topic: no")}, unresponsive=[d])
        error = signing_error(failed)
        self.assertEqual(str(error), f"views-differ: {b.hex()}, {e.hex()}")
        self.assertEqual(error.members, {b: "validation-failed: wrong-topic: no",
                                         d: "no answer", e: "views-differ: missing data: 1 record"})
        # Over the wire, members and all.
        again = self.assertRaises(ClientError, decode_response, encode_error(error))
        self.assertEqual((again.code, again.message, again.members), (error.code, error.message, error.members))
        timeout = signing_error(SigningFailed("timeout", "no answer from 0d0d", unresponsive=[d]))
        self.assertEqual((timeout.code, timeout.members), ("timeout", {d: "no answer"}))
        short = signing_error(SigningFailed("not-enough-signers", "", unavailable={
            b: Refusal("key-mismatch", b"", "epoch 3 is key 0102 here, not 0a0b"),
            d: Refusal("unavailable", b"", "nonce already used")}))
        self.assertEqual(short.members, {b: "key-mismatch: epoch 3 is key 0102 here, not 0a0b",
                                         d: "unavailable: nonce already used"})

    def test_checkpoint_codec(self) -> None:
        from frostnode.crypto.bip340 import pubkey_xonly, schnorr_sign
        from frostnode.signing.checkpoint import encode_statement

        seckey = b"\x05" * 32
        statement = encode_statement(4, [b"\x01" * 32, b"\x02" * 32], {b"\x03" * 32: 9}, 9, b"\x44" * 32)
        message = scheme_message("checkpoint", statement)
        cp = Checkpoint(4, {b"\x03" * 32: 9}, statement, message, schnorr_sign(message, seckey, bytes(32)),
                        pubkey_xonly(seckey), "bip445", (b"\x01" * 32,), 12.5, (b"\x02" * 32,), 7)
        self.assertTrue(cp.verify())
        self.assertEqual(decode_checkpoint(encode_checkpoint(cp)), cp)
        page = CheckpointPage(7, [cp])
        self.assertEqual(CheckpointPage.decode(page.encode()), page)
        self.assertFalse(replace(cp, epoch=5).verify())  # the statement says epoch 4
        self.assertFalse(replace(cp, statement=statement[:-1] + b"\x45").verify())
        self.assertRaises(DecodeError, decode_checkpoint, encode_checkpoint(replace(cp, statement=b"\x01")))

    def test_json_requests_are_converted_client_side(self) -> None:
        rid = b"\x42" * 32
        self.assertEqual(scheme_request("record", {"records": [rid.hex()], "topic": "t"}), encode_request([rid], "t"))
        self.assertEqual(scheme_request("anything", b"raw"), b"raw")
        self.assertRaises(ValueError, scheme_request, "no-such-scheme", {})
        self.assertRaises(ValueError, scheme_request, "record", {"records": [1]})
