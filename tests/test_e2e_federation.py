"""
End to end: three members as three real C{twistd -n frostnode} processes,
configured as operators would (C{frostnode init}, cards, one TOML file
each), talking over loopback TCP with Noise.  The test waits for their
first key, uses the federation through the client library as a client
would, and stops them with SIGTERM.

Nothing here waits on wall-clock sleeps: each step waits for a log event
of a node (JSON lines on its standard output) or for an answer of the
client library; each wait is bounded, and every child is killed in
cleanup whatever happened.
"""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Generator, Optional

from coincurve import PublicKeyXOnly
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from frostnode.cli import init_member
from frostnode.client.library import FrostnodeClient, NodeTarget, connect
from frostnode.config import load_config
from frostnode.crypto.bip340 import p2tr_address
from frostnode.keys import load_node_keys, own_card
from tests.support import EventProcess, with_timeout  # with_timeout: also imported from here

#: Runs twistd with this test's Python (so this virtualenv and this checkout).
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]

#: Demo timers, as `frostnode devnet` writes them.
FAST_DKG = """
[dkg]
interval = "1d"
min_spacing = "1h"
round_timeout = "15s"
retry_delay = "5s"
"""


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now (the kernel's choice; a child binds them a moment later)."""
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class NodeProcess(EventProcess):
    """A node's C{twistd -n} (JSON log on standard output): its log events, as they come."""


class Federation:
    """
    C{n} members set up with C{frostnode init} in C{base}, each config
    listing every card and the threshold, with demo DKG timers and JSON logs.
    """

    def __init__(self, base: Path, n: int, threshold: int) -> None:
        self.base = base.absolute()
        self.n = n
        ports = free_ports(2 * n + 2)
        self.peer_ports = ports[:n]
        self.client_ports = ports[n:2 * n]
        #: Member 0 also serves metrics and the HTTP API.
        self.metrics_port, self.http_port = ports[2 * n:]
        self.configs: list[Path] = []
        self.cards = []
        for i in range(n):
            self.configs.append(init_member(self.base / f"m{i}", f"tcp:{self.peer_ports[i]}:interface=127.0.0.1", [],
                                            f"tcp:{self.client_ports[i]}:interface=127.0.0.1", _Null()))
        card_files = []
        for i, path in enumerate(self.configs):
            config = load_config(path)
            card = own_card(config, load_node_keys(config))
            self.cards.append(card)
            card_path = self.base / f"m{i}.card.json"
            card_path.write_text(card.to_json())
            card_files.append(str(card_path))
        for i, path in enumerate(self.configs):
            text = path.read_text()
            text = text.replace("members = []", f"members = {json.dumps(card_files)}\nthreshold = {threshold}\n"
                                                'network = "regtest"')
            text = text.replace('format = "text"', 'format = "json"')
            text = text.replace("[peer]\n", '[peer]\nmax_reconnect_delay = "1s"\n')
            if i == 0:
                text += (f'\n[metrics]\nenabled = true\nlisten = "tcp:{self.metrics_port}:interface=127.0.0.1"\n'
                         f'\n[http]\nenabled = true\nlisten = "tcp:{self.http_port}:interface=127.0.0.1"\n')
            path.write_text(text + FAST_DKG)
        self.processes: list[NodeProcess] = []
        self.transports: list[Any] = []

    def target(self, i: int) -> NodeTarget:
        return NodeTarget.from_card(self.cards[i], f"127.0.0.1:{self.client_ports[i]}")

    def start(self, test: TestCase) -> None:
        for i in range(self.n):
            self.spawn(test, i)

    def spawn(self, test: TestCase, i: int) -> NodeProcess:
        """Start member C{i}'s twistd (again, after it exited); killed in C{test}'s cleanup."""
        proto = NodeProcess(f"m{i}")
        config = self.configs[i]
        argv = TWISTD + ["-n", "--pidfile=", "frostnode", "--config", str(config)]
        transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ), path=str(config.parent))
        if i < len(self.processes):
            self.processes[i], self.transports[i] = proto, transport
        else:
            self.processes.append(proto)
            self.transports.append(transport)
        test.addCleanup(self._kill, proto, transport)
        return proto

    @staticmethod
    def _kill(proto: NodeProcess, transport: Any) -> Optional[Deferred]:
        """Cleanup: a child still running is killed, and its exit awaited."""
        if not proto.running:
            return None
        transport.signalProcess("KILL")
        return proto.ended.addErrback(lambda _: None)

    def terminate(self) -> Deferred:
        """SIGTERM every node; fires with how each ended."""
        for proto, transport in zip(self.processes, self.transports):
            if proto.running:
                transport.signalProcess("TERM")
        return gatherResults([p.ended for p in self.processes])


def http_get(url: str) -> Deferred:
    """The body of a GET of C{url} (which must answer 200)."""
    from twisted.web.client import Agent, readBody

    def check(response: Any) -> Deferred:
        if response.code != 200:
            raise AssertionError(f"GET {url}: HTTP {response.code}")
        return readBody(response)

    return with_timeout(Agent(reactor).request(b"GET", url.encode()).addCallback(check), 10, f"GET {url}")


class _Null:
    def write(self, text: str) -> None:
        pass


def _key_certified(event: dict) -> bool:
    return event.get("log_namespace", event.get("namespace")) == "frostnode.dkg.driver.DkgService" and \
        "new key certified" in event.get("text", "")


class FederationTests(TestCase):
    """Three twistd processes: key generation, the client library, records, clean shutdown."""

    timeout = 90

    def setUp(self) -> None:
        self.fed = Federation(Path(self.mktemp()), 3, 2)

    @inlineCallbacks
    def clients(self) -> Generator[Deferred, Any, list[FrostnodeClient]]:
        clients = []
        for i in range(self.fed.n):
            c = yield connect(reactor, self.fed.target(i), connect_timeout=10.0, timeout=10.0)
            self.addCleanup(c.close)
            clients.append(c)
        return clients

    @inlineCallbacks
    def test_key_records_and_shutdown(self) -> Generator[Deferred, Any, None]:
        """
        The three members agree on one key, which every node reports
        through the client library; a record submitted to one member is
        served by another; SIGTERM stops each node cleanly.
        """
        fed = self.fed
        fed.start(self)
        certified = yield with_timeout(gatherResults([p.when(_key_certified) for p in fed.processes]), 45,
                                       "every node to log its first certified key")
        self.assertEqual(len({e["internal"] for e in certified}), 1, certified)
        self.assertEqual({e["epoch"] for e in certified}, {1})

        # Each node logged its links coming up, naming each peer by its full host key.
        for i, proto in enumerate(fed.processes):
            others = {c.host_key.hex() for j, c in enumerate(fed.cards) if j != i}
            ups = {e["peer"] for e in proto.events if e.get("namespace") == "frostnode.tap.Node"
                   and e.get("text", "").startswith(f"peer {e.get('peer')} up (")}
            self.assertEqual(ups, others, proto.name)

        clients = yield self.clients()
        keys = yield gatherResults([c.pubkey() for c in clients])
        self.assertEqual({(k.epoch, k.internal_key, k.output_key, k.address) for k in keys},
                         {(1, keys[0].internal_key, keys[0].output_key, keys[0].address)})
        self.assertEqual(keys[0].internal_key.hex(), certified[0]["internal"][2:])  # logged compressed, served x-only
        self.assertEqual(keys[0].address, p2tr_address(keys[0].output_key, "regtest"))
        PublicKeyXOnly(keys[0].output_key)  # a valid x-only key
        statuses = yield gatherResults([c.status() for c in clients])
        for i, s in enumerate(statuses):
            self.assertEqual(s["node"], fed.cards[i].host_key.hex())
            self.assertEqual((s["epoch"], len(s["members"]), s["threshold"]), (1, 3, 2))

        # Member 0's metrics and HTTP API tell the same story.
        metrics = yield http_get(f"http://127.0.0.1:{fed.metrics_port}/metrics")
        for line in ("frostnode_links_up 2", "frostnode_peers 2", "frostnode_epoch 1",
                     "frostnode_dkg_runs_total 1", "frostnode_dkg_failures_total 0"):
            self.assertIn(line + "\n", metrics.decode())
        # The DKG broadcast at least its round-1 package and agreement signature.
        count = re.search(r"^frostnode_broadcast_latency_seconds_count (\d+)$", metrics.decode(), re.M)
        self.assertGreaterEqual(int(count.group(1)), 2)
        pubkey = json.loads((yield http_get(f"http://127.0.0.1:{fed.http_port}/v1/pubkey")))
        self.assertEqual(pubkey["output_key"], keys[0].output_key.hex())

        # A record submitted to member 0 reaches member 2 (reliable broadcast, then its own log).
        accepted = yield clients[0].submit("e2e/greetings", b"hello, federation")
        self.assertTrue(accepted.created)
        record = yield self.fetch(clients[2], accepted.record_id)
        self.assertEqual(record.body.payload, b"hello, federation")

        # Member 1 coordinates a signature over that record ("record" scheme):
        # every signer validates its own copy first.  It verifies as an
        # ordinary BIP340 signature under the output key that pubkey reported.
        signed = yield clients[1].sign("record", {"records": [accepted.record_id.hex()]})
        self.assertEqual(signed.key, keys[0].output_key)
        self.assertTrue(PublicKeyXOnly(keys[0].output_key).verify(signed.signature, signed.message))
        self.assertGreaterEqual(len(signed.signers), 2)
        self.assertEqual(dict(signed.divergent), {})

        # Clean shutdown: every node stops its services and exits by SIGTERM.
        for c in clients:
            c.close()
        reasons = yield with_timeout(fed.terminate(), 30, "the nodes to exit after SIGTERM")
        for proto, reason in zip(fed.processes, reasons):
            self.assertIsInstance(reason, ProcessTerminated, proto.name)
            self.assertEqual(reason.signal, signal.SIGTERM, proto.name)
            texts = proto.texts()
            self.assertIn("Main loop terminated.", texts, proto.name)
            stopped = [t for t in texts if t.endswith(" stopped") and t.startswith("frostnode ")]
            self.assertEqual(len(stopped), 1, proto.name)
            self.assertNotIn(b"Traceback", proto.err)
            bad = [e for e in proto.events if e.get("level") in ("error", "critical", "unparsed")]
            self.assertEqual(bad, [], proto.name)

    @inlineCallbacks
    def fetch(self, client: FrostnodeClient, record_id: bytes, within: float = 15.0) -> Generator[Deferred, Any, Any]:
        """The record from C{client}'s node, asking again until it has arrived (at most C{within} seconds)."""
        deadline = reactor.seconds() + within
        while True:
            try:
                record = yield client.get(record_id)
                return record
            except Exception as e:
                if getattr(e, "code", None) != "not-found" or reactor.seconds() > deadline:
                    raise
            yield deferLater(reactor, 0.05, lambda: None)
