"""
End to end: C{frostnode devnet} as a newcomer runs it, in its own process,
starting its own twistd processes.  It must print the federation key and
commands that work, stop every node on SIGTERM, restart the same federation
from its directory, and leave no node behind even when it is killed with
SIGKILL.

"No node left" is checked through the nodes' stores: each node holds an
exclusive lock on its LMDB environment while it runs, so opening every
member's store succeeds only once every node process is gone.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Generator, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from frostnode.devnet import DevnetError, DevnetOptions, Layout, busy_ports, resolve_layout
from frostnode.store.db import Database
from frostnode.store.errors import DataDirLocked

from tests.support import OutputProcess, with_timeout

DEVNET = [sys.executable, "-c", "import sys; from frostnode.cli import main; sys.exit(main())", "devnet"]
READY = b"Press Ctrl-C to stop every node."


def free_base_port(nodes: int) -> int:
    """A base port whose 2 * C{nodes} ports are all free now."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        if base + 2 * nodes < 65536 and not busy_ports(Layout(Path("."), nodes, 1, base)):
            return base
    raise AssertionError("no free range of ports")


def stores_free(layout: Layout) -> bool:
    """Whether no process holds any member's store (every node has exited)."""
    for i in range(layout.nodes):
        try:
            db = Database.open(layout.member(i))
        except DataDirLocked:
            return False
        db.close_sync()
    return True


class DevnetTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.base_port = free_base_port(3)
        self.layout = Layout(self.dir, 3, 2, self.base_port)

    def spawn(self, *extra: str) -> tuple[OutputProcess, Any]:
        proto = OutputProcess("devnet")
        argv = DEVNET + ["--dir", str(self.dir), *extra]
        transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ))
        self.addCleanup(self._kill, proto, transport)
        return proto, transport

    @inlineCallbacks
    def _kill(self, proto: OutputProcess, transport: Any) -> Generator[Deferred, Any, None]:
        """Cleanup: kill devnet if it runs; then wait (bounded) until its nodes have died with it."""
        if proto.running:
            transport.signalProcess("KILL")
            yield proto.ended
        yield self.nodes_gone(within=20)

    @inlineCallbacks
    def nodes_gone(self, within: float) -> Generator[Deferred, Any, bool]:
        """Whether every node has exited within C{within} seconds (asked every 0.1 s)."""
        deadline = reactor.seconds() + within
        while not stores_free(self.layout):
            if reactor.seconds() > deadline:
                return False
            yield deferLater(reactor, 0.1, lambda: None)
        return True

    @inlineCallbacks
    def test_start_use_stop_restart_kill(self) -> Generator[Deferred, Any, None]:
        # 1. A new federation: set up, started, key printed with working commands.
        proto, transport = self.spawn("--nodes", "3", "--threshold", "2", "--base-port", str(self.base_port))
        yield with_timeout(proto.when_output(READY), 60, "devnet to report the federation key")
        out = proto.out.decode()
        self.assertIn(f"==> creating 3 members in {self.dir}", out)
        self.assertIn("Federation key (epoch 1, 2-of-3, all 3 nodes agree):", out)
        output_key = re.search(r"output key     ([0-9a-f]{64})", out).group(1)
        address = re.search(r"P2TR address   (bcrt1p[0-9a-z]+)", out).group(1)
        self.assertTrue(address.startswith("bcrt1p"))

        # The printed status command works as printed (when the console script is installed).
        command = re.search(r"^  (\S+) --key (\S+) --card (\S+node1\.json) status$", out, re.M)
        self.assertIsNotNone(command, out)
        if Path(command.group(1)).exists():
            text, err, code = yield getProcessOutputAndValue(
                command.group(1), ["--key", command.group(2), "--card", command.group(3), "--json", "pubkey"],
                env=dict(os.environ))
            self.assertEqual((code, err), (0, b""))
            self.assertIn(output_key.encode(), text)

        # 2. SIGTERM: every node stops, devnet says so and exits 0.
        transport.signalProcess("TERM")
        reason = yield with_timeout(proto.ended, 30, "devnet to stop its nodes and exit")
        self.assertIsInstance(reason, ProcessDone, proto.out.decode() + proto.err.decode())
        self.assertIn(b"==> stopping 3 node(s)", proto.out)
        self.assertIn(f"==> all nodes stopped; keys, configs and logs are in {self.dir}".encode(), proto.out)
        self.assertEqual(proto.err, b"")
        self.assertTrue(stores_free(self.layout), "a node still holds its store after devnet exited")
        for i in range(3):
            self.assertTrue(self.layout.log(i).read_text().rstrip().endswith("Server Shut Down."))

        # 3. The same directory restarts the same federation: same key, no new DKG needed.
        proto, transport = self.spawn()
        yield with_timeout(proto.when_output(READY), 60, "the restarted devnet to report the key")
        self.assertNotIn(b"==> creating", proto.out)
        self.assertIn(f"output key     {output_key}".encode(), proto.out)

        # 4. SIGKILL of devnet: its nodes notice (PR_SET_PDEATHSIG) and stop by themselves.
        transport.signalProcess("KILL")
        reason = yield proto.ended
        self.assertIsInstance(reason, ProcessTerminated)
        gone = yield self.nodes_gone(within=20)
        self.assertTrue(gone, "nodes outlived a killed devnet")


class LayoutTests(SynchronousTestCase):
    """What devnet refuses before it starts anything."""

    def options(self, *argv: str) -> DevnetOptions:
        opts = DevnetOptions()
        opts.parseOptions(list(argv))
        return opts

    def test_defaults(self) -> None:
        d = Path(self.mktemp()).absolute()
        layout, new = resolve_layout(self.options("--dir", str(d)))
        self.assertTrue(new)
        self.assertEqual((layout.nodes, layout.threshold, layout.base_port), (5, 3, 19500))
        self.assertEqual((layout.peer_port(0), layout.client_port(0), layout.peer_port(4)), (19500, 19501, 19508))

    def test_not_empty(self) -> None:
        d = Path(self.mktemp()).absolute()
        d.mkdir()
        (d / "precious.txt").write_text("mine")
        e = self.assertRaises(DevnetError, resolve_layout, self.options("--dir", str(d)))
        self.assertEqual(str(e), f"{d} is not empty and holds no devnet.json: give a new or empty --dir")

    def test_existing_devnet_keeps_its_shape(self) -> None:
        d = Path(self.mktemp()).absolute()
        d.mkdir()
        (d / "devnet.json").write_text('{"nodes": 4, "threshold": 3, "base_port": 20000}')
        layout, new = resolve_layout(self.options("--dir", str(d)))
        self.assertEqual((new, layout.nodes, layout.threshold, layout.base_port), (False, 4, 3, 20000))
        e = self.assertRaises(DevnetError, resolve_layout, self.options("--dir", str(d), "--nodes", "5"))
        self.assertEqual(str(e), f"{d} holds a devnet with --nodes 4, not 5 (use another --dir for a new federation)")

    def test_usage(self) -> None:
        from twisted.python.usage import UsageError

        for argv in (["--nodes", "1"], ["--nodes", "3", "--threshold", "4"], ["--threshold", "0"],
                     ["--base-port", "80"], ["--timeout", "0"]):
            self.assertRaises(UsageError, self.options, *argv)
