"""
C{frostnode-client} and the synchronous wrapper against a node's client port
on real loopback: the CLI in-process (its L{run}) for every command and its
errors, as a real subprocess of the venv's console script (stdin payload,
C{--json}, C{--raw}), and L{BlockingClient} from a script thread.  The
client's stored key is created owner-only and refused when it is not.
C{status} in front of a real sync service prints one short row per peer.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from frostnode.client.api import NodeAPI
from frostnode.client.blocking import BlockingClient, ensure_reactor_running
from frostnode.client.cli import format_status, run
from frostnode.client.errors import ClientError
from frostnode.client.keys import client_public_key, default_key_path, load_or_create_client_key
from frostnode.client.library import NodeTarget, connect
from frostnode.client.server import ClientPortService
from frostnode.keys import KeyFileError
from frostnode.net.noise import generate_noise_private_key, noise_public_key

from tests.test_client_support import TestNode, add_epoch, listening_socket
from tests.test_sync_support import MemoryFederation, until, wait_converged


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback((reason.value.exitCode, self.out, self.err))


def spawn_cli(args: list[str], stdin: bytes, env: dict) -> Deferred:
    """The venv's frostnode-client console script (or python -m, if it is not installed) as a subprocess."""
    script = Path(sys.executable).parent / "frostnode-client"
    argv = [str(script)] + args if script.exists() else [sys.executable, "-m", "frostnode.client.cli"] + args
    proto = _Collect(stdin)
    full_env = dict(os.environ, **env)
    reactor.spawnProcess(proto, argv[0], argv, env=full_env)
    return proto.done


class CliTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> None:
        self.node = TestNode(self)
        yield self.node.service.when_listening()
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.card = self.dir / "node.json"
        self.card.write_text(json.dumps(self.node.card_json()))
        self.key = self.dir / "keys" / "client.key"

    @inlineCallbacks
    def cli(self, *argv: str, stdin: bytes = b"", key: bool = True) -> Any:
        out, err = io.StringIO(), io.StringIO()
        args = ["--card", str(self.card)] + (["--key", str(self.key)] if key else []) + list(argv)
        status = yield run(reactor, args, io.BytesIO(stdin), out, err)
        return status, out.getvalue(), err.getvalue()

    @inlineCallbacks
    def test_every_command(self) -> None:
        status, out, err = yield self.cli("submit", "prices/btc", stdin=b"64000\n")
        self.assertEqual((status, err), (0, ""))
        record_id = out.split()[1]
        self.assertEqual(len(bytes.fromhex(record_id)), 32)
        self.assertIn(f"origin {self.node.host.public.hex()} seq 1", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.key.parent).st_mode), 0o700)
        me = client_public_key(load_or_create_client_key(self.key))

        payload_file = self.dir / "payload.bin"
        payload_file.write_bytes(b"\x00\x01binary")
        status, out, err = yield self.cli("--json", "submit", "prices/btc", str(payload_file))
        self.assertEqual(status, 0)
        second = json.loads(out)
        self.assertEqual((second["created"], second["seq"]), (True, 2))

        status, out, err = yield self.cli("--json", "get", record_id)
        record = json.loads(out)
        self.assertEqual(base64.b64decode(record["payload"]), b"64000\n")
        self.assertEqual((record["client_key"], record["topic"]), (me.hex(), "prices/btc"))
        status, out, err = yield self.cli("get", record_id)
        self.assertIn("payload    6 bytes: 64000\\n", out)
        self.assertIn(f"client     {me.hex()}", out)

        status, out, err = yield self.cli("get", "--topic", "prices/btc", "--from", "2")
        self.assertEqual(status, 0)
        self.assertIn(second["record_id"][:16], out)
        self.assertNotIn(record_id[:16], out)
        status, out, err = yield self.cli("--json", "get", "--topic", "prices/btc", "--limit", "1")
        page = json.loads(out)
        self.assertEqual(([r["record_id"] for r in page["records"]], page["next"], page["last"]), ([record_id], 2, 2))

        status, out, err = yield self.cli("status")
        self.assertEqual(status, 0)
        self.assertIn(f"log        2 records, digest {self.node.log.digest().hex()}", out)
        self.assertIn("epoch      none", out)
        status, out, err = yield self.cli("--json", "status")
        self.assertEqual(json.loads(out)["log"]["count"], 2)

        status, out, err = yield self.cli("pubkey")
        self.assertEqual(status, 1)
        self.assertIn("frostnode-client: unavailable:", err)
        status, out, err = yield self.cli("--json", "pubkey")
        self.assertEqual((status, json.loads(out)["error"]["code"]), (1, "unavailable"))
        epoch = add_epoch(self.node.keystore, (self.node.host.public,))
        status, out, err = yield self.cli("pubkey")
        self.assertEqual(status, 0)
        self.assertIn(f"output key    {epoch.output_key.hex()}", out)
        self.assertIn("address       bcrt1p", out)
        self.assertIn("this node     holds a share (can sign)", out)
        status, out, err = yield self.cli("--json", "pubkey")
        self.assertEqual((json.loads(out)["epoch"], json.loads(out)["holds_share"]), (1, True))

        status, out, err = yield self.cli("--json", "key")
        self.assertEqual(json.loads(out), {"client_key": me.hex(), "path": str(self.key)})

    @inlineCallbacks
    def test_errors_and_usage(self) -> None:
        status, out, err = yield self.cli("get", "ab" * 32)
        self.assertEqual(status, 1)
        self.assertIn("not-found", err)
        status, out, err = yield self.cli("get", "xyz")
        self.assertEqual(status, 2)
        self.assertIn("64 hex digits", err)
        status, out, err = yield self.cli("get")
        self.assertEqual(status, 2)
        out, err = io.StringIO(), io.StringIO()
        status = yield run(reactor, ["status"], io.BytesIO(), out, err)
        self.assertEqual(status, 2)
        self.assertIn("--card FILE", err.getvalue())
        wrong = noise_public_key(generate_noise_private_key()).hex()
        out, err = io.StringIO(), io.StringIO()
        status = yield run(reactor, ["--ephemeral", "--node", f"127.0.0.1:{self.node.port}", "--node-key", wrong,
                                     "--json", "status"], io.BytesIO(), out, err)
        self.assertEqual((status, json.loads(out.getvalue())["error"]["code"]), (1, "wrong-node-key"))
        big = b"x" * (self.node.limits.max_request_size + 10)
        status, out, err = yield self.cli("submit", "t", stdin=big)
        self.assertEqual(status, 1)
        self.assertIn("too-large", err)
        self.assertEqual(self.node.log.digest().count, 0)

    @inlineCallbacks
    def test_ephemeral_keys_differ_per_call(self) -> None:
        keys = []
        for _ in range(2):
            status, out, err = yield self.cli("--ephemeral", "--json", "submit", "t", stdin=b"same", key=False)
            self.assertEqual(status, 0)
            keys.append(self.node.log.get(bytes.fromhex(json.loads(out)["record_id"])).envelope.body.client_key)
        self.assertNotEqual(keys[0], keys[1])
        self.assertFalse(self.key.exists())

    @inlineCallbacks
    def test_unprotected_key_file_is_refused(self) -> None:
        load_or_create_client_key(self.key)
        os.chmod(self.key, 0o644)
        status, out, err = yield self.cli("status")
        self.assertEqual(status, 1)
        self.assertIn("chmod 600", err)
        self.assertRaises(KeyFileError, load_or_create_client_key, self.key)

    def test_key_file_format(self) -> None:
        """One comment line and the key line, as the member key files (frostnode.keys); never overwritten."""
        secret = load_or_create_client_key(self.key)
        lines = self.key.read_text().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("# frostnode client key (X25519"))
        self.assertEqual(lines[1], f"client-key {secret.hex()}")
        self.assertEqual(load_or_create_client_key(self.key), secret)
        self.key.write_text("host-key " + "11" * 32 + "\n")
        e = self.assertRaises(KeyFileError, load_or_create_client_key, self.key)
        self.assertIn("not a frostnode client-key file", str(e))

    def test_default_key_path(self) -> None:
        self.assertEqual(default_key_path({"FROSTNODE_CLIENT_KEY": "/k/c.key", "HOME": "/h"}), Path("/k/c.key"))
        self.assertEqual(default_key_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}), Path("/x/frostnode/client.key"))
        self.assertEqual(default_key_path({"HOME": "/h"}), Path("/h/.config/frostnode/client.key"))

    @inlineCallbacks
    def test_console_script_subprocess(self) -> None:
        """The installed frostnode-client: payload on stdin, --json get, --raw payload bytes unchanged."""
        env = {"FROSTNODE_CLIENT_KEY": str(self.key), "HOME": str(self.dir)}
        payload = bytes(range(256)) * 4
        code, out, err = yield spawn_cli(["--card", str(self.card), "--json", "submit", "bin/blob", "-"], payload, env)
        self.assertEqual((code, err), (0, b""))
        accepted = json.loads(out)
        self.assertTrue(accepted["created"])
        self.assertTrue(self.key.exists())  # created via $FROSTNODE_CLIENT_KEY
        code, out, err = yield spawn_cli(["--card", str(self.card), "get", "--raw", accepted["record_id"]], b"", env)
        self.assertEqual((code, out), (0, payload))
        code, out, err = yield spawn_cli(["--node", f"127.0.0.1:{self.node.port}", "--node-key", "00" * 32,
                                          "status"], b"", env)
        self.assertEqual(code, 1)
        self.assertIn(b"wrong-node-key", err)


class BlockingClientTests(TestCase):
    @inlineCallbacks
    def test_script_thread(self) -> None:
        """A script's thread blocks on each call while the reactor (here trial's) does the work."""
        node = TestNode(self)
        yield node.service.when_listening()
        add_epoch(node.keystore, (node.host.public,))
        key = generate_noise_private_key()

        def script() -> tuple:
            with BlockingClient.connect(node.target, key, reactor=reactor) as c:
                accepted = c.submit("script", b"from a thread")
                record = c.get(accepted.record_id)
                page = c.topic("script")
                status = c.status()
                keys = c.pubkey()
                try:
                    c.get(b"\x00" * 32)
                except ClientError as e:
                    missing = e.code
            return accepted, record, page, status, keys, missing

        accepted, record, page, status, keys, missing = yield deferToThread(script)
        self.assertEqual(record.payload, b"from a thread")
        self.assertEqual(record.client_key, noise_public_key(key))
        self.assertEqual([r.record_id for r in page.records], [accepted.record_id])
        self.assertEqual(status["log"]["count"], 1)
        self.assertEqual(keys.epoch, 1)
        self.assertEqual(missing, "not-found")

    @inlineCallbacks
    def test_not_from_the_reactor_thread(self) -> None:
        yield deferLater(reactor, 0, lambda: None)  # now running in the reactor thread
        self.assertRaises(RuntimeError, ensure_reactor_running, reactor)


class StatusOutputTests(TestCase):
    """C{frostnode-client status} against a node of a three-member federation with its real sync service."""

    @inlineCallbacks
    def test_sync_section_is_a_table_of_peers(self) -> None:
        fed = MemoryFederation(self, n=3)
        node = fed.nodes[0]
        endpoint, port = listening_socket()
        service = ClientPortService(NodeAPI(node.sync, reactor, directory=fed.directory, threshold=2,
                                            links=node.links), node.member.noise_private, endpoint, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.when_listening()
        target = ["--ephemeral", "--node", f"127.0.0.1:{port}", "--node-key",
                  noise_public_key(node.member.noise_private).hex()]
        client = yield connect(reactor, NodeTarget("127.0.0.1", port, noise_public_key(node.member.noise_private)))
        yield client.submit("t", b"x")
        yield client.close()
        yield wait_converged(fed.nodes, 1, timeout=10)

        def peers_agree() -> bool:  # every peer's last summary shows our digest
            st = node.sync.status()
            return all(p["digest"] == st["digest"] for p in st["peers"].values())

        yield until(fed.nodes, peers_agree, timeout=10)
        out, err = io.StringIO(), io.StringIO()
        code = yield run(reactor, target + ["status"], io.BytesIO(), out, err)
        self.assertEqual((code, err.getvalue()), (0, ""))
        text = out.getvalue()
        lines = text.splitlines()
        head = lines.index(next(line for line in lines if line.startswith("sync ")))
        self.assertIn("pending: 0 submissions", lines[head])
        self.assertEqual(lines[head + 1].split(), ["peer", "up", "lag", "missing", "digest", "summary"])
        others = sorted(n.key.hex() for n in fed.nodes[1:])
        rows = [line.split() for line in lines[head + 2:head + 4]]
        self.assertEqual([r[:6] for r in rows], [[k[:16], "yes", "0", "0", "equal", r[5]] for k, r in zip(others, rows)])
        for row in rows:
            self.assertRegex(" ".join(row[5:]), r"^\d+\.\ds ago$")
        for key in others:
            self.assertNotIn(key, text)  # no full keys, no flattened "peers.<key>.summary_age: 0.0123..."
        self.assertNotIn("summary_age", text)

        out = io.StringIO()
        code = yield run(reactor, target + ["--json", "status"], io.BytesIO(), out, io.StringIO())
        full = json.loads(out.getvalue())
        self.assertEqual(sorted(full["sync"]["peers"]), others)  # --json keeps everything
        self.assertIn("summary_age", full["sync"]["peers"][others[0]])

        # A peer that is behind and down, and one never heard from, as the same report would show them.
        full["sync"]["peers"][others[0]].update(up=False, lag=3, missing=1, digest="ab" * 32)
        full["sync"]["peers"][others[1]].update(up=False, lag=None, missing=None, digest=None, count=None,
                                                summary_age=None)
        rows = [line.split() for line in format_status(full).splitlines()[-2:]]
        self.assertEqual(rows, [[others[0][:16], "no", "3", "1", "differs"] + rows[0][5:],
                                [others[1][:16], "no", "-", "-", "-", "none", "yet"]])
