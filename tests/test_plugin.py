"""
Tests for the twistd plugin (L{frostnode.tap}) and the log observers
(L{frostnode.logging}): twistd finds the plugin, a bad setup costs one line
and a non-zero exit, and a good one starts and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Generator

from twisted.application.service import Application, IService, IServiceMaker, MultiService, Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, Logger, LogLevel, capturedLogs
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from frostnode import tap
from frostnode.config import LogSection
from frostnode.keys import load_host_key
from frostnode.logging import event_as_json, make_observer, twistd_log_file
from frostnode.net.peers import PeerNetwork
from frostnode.store.errors import StoreError
from frostnode.store.log import RecordBody, Retention

from tests.support import OutputProcess
from tests.test_config import make_federation


def twistd() -> str:
    path = Path(sys.executable).parent / "twistd"
    if not path.exists():
        raise SkipTest(f"no twistd beside {sys.executable}")
    return str(path)


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """twistd's plugin scan finds C{frostnode}, pointing at L{frostnode.tap}."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("frostnode", makers)
        maker = makers["frostnode"]
        self.assertIs(maker.options, tap.Options)
        self.assertEqual(maker.description, "FROST threshold signing node")


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.paths = make_federation(Path(self.mktemp()), 3, 2)

    def test_config_required(self) -> None:
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [])
        self.assertEqual(str(e), "--config is required: the node's TOML file (create one with: frostnode init)")

    def test_bad_config_exits_with_one_line(self) -> None:
        missing = str(self.paths[0]) + ".missing"
        e = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", missing])
        self.assertEqual(e.code, f"frostnode: {missing}: cannot read config file: No such file or directory")

    def test_good_config(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", str(self.paths[0])])
        self.assertEqual(options.node_config.federation.threshold, 2)
        self.assertEqual(options.node_keys.host, load_host_key(self.paths[0].parent / "host.key"))


class NodeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.paths = make_federation(Path(self.mktemp()), 3, 2)
        self.options = tap.Options()
        self.options.parseOptions(["--config", str(self.paths[0])])

    def build(self, reactor: Any) -> tap.Node:
        """A node whose store is closed when the test ends, whatever happens."""
        node = tap.build_node(self.options.node_config, self.options.node_keys, reactor)
        self.addCleanup(lambda: node.db.close())
        return node

    def test_make_service(self) -> None:
        """twistd gets the node, inside a root service that sets up logging."""
        service = tap.makeService(self.options)
        node = service.getServiceNamed("node")
        self.addCleanup(lambda: node.db.close())
        self.assertIsInstance(service, MultiService)
        self.assertIsInstance(node, tap.Node)
        self.assertIs(node.config, self.options.node_config)
        self.assertIs(node.keys, self.options.node_keys)
        self.assertEqual(len(node.directory), 3)

    def test_daemon_mode_refused(self) -> None:
        """twistd without -n would fork away the store's writer thread: one line, before anything starts."""
        options = tap.Options()
        options.parent = {"nodaemon": False}
        e = self.assertRaises(SystemExit, options.parseOptions, ["--config", str(self.paths[0])])
        self.assertIn("frostnode: run it in the foreground, `twistd -n frostnode --config ...`", e.code)
        self.assertNotIn("\n", e.code)

    def test_peer_network(self) -> None:
        """The node's links are built from its keys, members, [peer] and [limits]."""
        config = self.options.node_config
        node = self.build(MemoryReactorClock())
        self.assertIsInstance(node.peers, PeerNetwork)
        self.assertIs(node.peers.parent, node)
        self.assertEqual(node.peers.local, self.options.node_keys.host.public)
        self.assertEqual(sorted(node.peers.peers()),
                         sorted(k for k in node.directory.host_keys() if k != node.peers.local))
        self.assertEqual((node.peers.config.max_message_size, node.peers.config.peer_queue_size,
                          node.peers.config.idle_timeout), (16 * 2**20, 65536, 60.0))

    def test_layers(self) -> None:
        """Store, broadcast and validation schemes are built from the config, each a service of the node."""
        node = self.build(MemoryReactorClock())
        config = self.options.node_config
        self.assertEqual(node.db.path, config.node.data_dir / "state.lmdb")
        self.assertIs(node.store.parent, node)
        self.assertEqual(node.datalog.local, self.options.node_keys.host.public)
        self.assertEqual((node.datalog.limits.max_payload, node.datalog.limits.max_range), (2**20, 10_000))
        self.assertEqual(node.datalog.retention, Retention())
        self.assertIsNone(node.keystore.newest_usable())
        self.assertEqual(node.nonces.counts(), {})
        self.assertIs(node.broadcast.parent, node)
        self.assertEqual(node.broadcast.core.members, sorted(node.directory.host_keys()))
        self.assertIn(node.broadcast.core.config.max_payload, (2 * 2**20,))
        self.assertEqual(node.broadcast.max_batch_bytes, 60 * 1024)
        self.assertEqual(set(node.schemes), {"record", "ledger"})
        self.assertIsNone(node.metrics)
        self.assertIsNone(node.metrics_service)
        self.assertIsNone(node.tor)
        # The protocols share the links, the broadcast and the stores.
        self.assertEqual(node.dkg.members(), sorted(node.directory.host_keys()))
        self.assertEqual(node.dkg.threshold(3), 2)
        self.assertEqual(node.dkg.policy.min_spacing, 14 * 86400)
        self.assertIs(node.sync.datalog, node.datalog)
        self.assertEqual(node.sync.config.max_batch_bytes, 2 * 2**20)
        self.assertIs(node.signing.nonces, node.nonces)
        self.assertEqual(set(node.signing.schemes), {"record", "ledger", "checkpoint"})
        self.assertIs(node.client.api.sync, node.sync)
        self.assertIsNotNone(node.client.port)
        self.assertIsNone(node.client.http)
        for layer in (node.dkg, node.sync, node.signing, node.client):
            self.assertIs(layer.parent, node)
        # Stopped last: the store is the first child.
        self.assertIs(list(node)[0], node.store)

    def test_broadcast_limits(self) -> None:
        """[limits] max_pending_broadcasts is shared among the members; batches fit in link messages."""
        config = _with_limits(self.options.node_config, max_message_size=32 * 1024, max_pending_broadcasts=90,
                              max_broadcast_size=8 * 1024)
        core, batch = tap.broadcast_config(config, 3)
        self.assertEqual((core.max_payload, core.max_open_per_origin, core.max_unconfirmed_per_member), (8192, 30, 30))
        self.assertEqual(batch, 31 * 1024)
        core, batch = tap.broadcast_config(self.options.node_config, 5)
        self.assertEqual((core.max_open_per_origin, batch), (2000, 60 * 1024))
        core, _ = tap.broadcast_config(_with_limits(self.options.node_config, max_pending_broadcasts=1), 5)
        self.assertEqual(core.max_open_per_origin, 16)

    def test_protocol_settings(self) -> None:
        """[dkg], [signing], [store] and [limits] as the protocols' own settings."""
        from frostnode.config import config_from_string

        config = config_from_string(
            '[dkg]\ninterval = "2d"\nmin_spacing = "1d"\nround_timeout = "30s"\njoin_grace = "1m"\n'
            'retry_delay = "5m"\nmax_attempts = 3\n'
            '[signing]\nsession_timeout = "2s"\nrequest_timeout = "20s"\ncheckpoint_interval = "1h"\n'
            'misbehaving_for = "10m"\nsign_request_rate = 50\nsign_request_burst = 100\nnonce_reuse_after = "1m"\n'
            '[limits]\nmax_message_size = "1MiB"\n[store]\nprune_interval = "30s"\n', "node.toml")
        policy, run = tap.dkg_settings(config)
        self.assertEqual((policy.interval, policy.min_spacing, policy.join_grace, policy.retry_delay),
                         (2 * 86400.0, 86400.0, 60.0, 300.0))
        self.assertEqual((tuple(run.timeouts), run.max_attempts), ((30.0, 30.0, 15.0, 30.0), 3))
        signing = tap.signing_config(config)
        self.assertEqual((signing.session_timeout, signing.request_timeout, signing.checkpoint_interval),
                         (2.0, 20.0, 3600.0))
        self.assertEqual((signing.misbehaving_for, signing.sign_request_rate, signing.sign_request_burst,
                          signing.nonce_reuse_after), (600.0, 50.0, 100, 60.0))
        sync = tap.sync_config(config)
        self.assertEqual((sync.max_batch_bytes, sync.max_page_bytes, sync.prune_interval),
                         (1023 * 1024, 2**20, 30.0))

    def test_metrics_enabled(self) -> None:
        """With [metrics] enabled the endpoint serves the links' numbers."""
        from dataclasses import replace
        from frostnode.config import MetricsSection

        self.options.node_config = replace(self.options.node_config,
                                           metrics=MetricsSection(True, "tcp:0:interface=127.0.0.1"))
        reactor = MemoryReactorClock()
        node = self.build(reactor)
        self.assertIs(node.metrics_service.parent, node)
        text = node.metrics.render()
        for line in ["frostnode_links_up 0", "frostnode_peers 2", "frostnode_sync_lag_records 0",
                     "frostnode_signatures_issued_total 0", "frostnode_signatures_failed_total 0", "frostnode_epoch 0"]:
            self.assertIn(line + "\n", text)

    def test_start_and_stop(self) -> None:
        """
        The node logs each step with its host key, and "running" once the
        reactor runs and the peer port is bound; stopping closes the port.
        """
        reactor = MemoryReactorClock()
        node = self.build(reactor)
        with capturedLogs() as events:
            node.startService()
            self.assertTrue(node.running)
            self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                             [(_port_of(self.options.node_config.peer.listen), "127.0.0.1"),
                              (_port_of(self.options.node_config.client.listen), "127.0.0.1")])
            reactor.run()
            self.successResultOf(node.stopService())
        self.assertFalse(node.running)
        self.assertFalse(node.peers.running)
        self.assertFalse(node.broadcast.running)
        mine = [e for e in events if e["log_namespace"] == "frostnode.tap.Node"]
        self.assertEqual([e["log_format"] for e in mine], [
            "frostnode {host_key} starting: {members} members, threshold {threshold}, "
            "ciphersuite {ciphersuite}, data in {data_dir}",
            "frostnode {host_key} running, peer port {peer_port}, client port {client_port}",
            "frostnode {host_key} stopping", "frostnode {host_key} stopped"])
        self.assertEqual({e["host_key"] for e in mine}, {node.keys.host.public.hex()})
        self.assertEqual((mine[0]["members"], mine[0]["threshold"]), (3, 2))
        # The store is closed: a write is refused.
        self.assertRaises(StoreError, node.datalog.append_local_sync, _body(), 1.0)

    def test_tor_wiring(self) -> None:
        """With [tor], the links dial through Tor's endpoint factory and the peer port is published."""
        from dataclasses import replace

        config = self.options.node_config
        self.options.node_config = replace(config, tor=replace(config.tor, enabled=True, publish_client=True))
        node = self.build(MemoryReactorClock())
        self.assertIs(node.tor.parent, node)
        self.assertEqual(node.peers.endpoint_factory, node.tor.endpoint_factory)
        self.assertEqual([p.virtual_port for p in node.tor.onion_ports], [9000, 9001])
        self.assertFalse(node.tor.running)

    def test_store_closes_after_the_other_layers(self) -> None:
        """A layer still stopping keeps the store open for its last writes; then the store closes."""
        node = self.build(MemoryReactorClock())
        slow = _SlowService()
        slow.setServiceParent(node)
        node.startService()
        stopped = node.stopService()
        self.assertNoResult(stopped)
        keys = node.keystore
        keys.save_session_sync(b"s" * 32, b"state written while another layer stops")
        slow.done.callback(None)
        self.successResultOf(stopped)
        self.assertRaises(StoreError, keys.save_session_sync, b"t" * 32, b"too late")

    def test_links_logged_with_host_keys(self) -> None:
        """Peer up/down events carry the peer's full host key and the count of links up."""
        node = self.build(MemoryReactorClock())
        others = [k for k in node.directory.host_keys() if k != node.keys.host.public]
        with capturedLogs() as events:
            node._link_changed(others[0], True)
        self.assertEqual([(e["peer"], e["links_up"], e["peers"]) for e in events], [(others[0].hex(), 0, 2)])
        self.assertEqual(events[0]["log_format"], "peer {peer} up ({links_up} of {peers} links up)")

    def test_log_observer_for_twistd(self) -> None:
        """Under twistd, [log] picks the format of the file twistd's options name."""
        log_path = Path(self.mktemp()).absolute()
        old = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.options.node_config = _with_log(self.options.node_config, LogSection("json", LogLevel.warn))
        self.options.parent = {"logfile": str(log_path), "nodaemon": True}
        application = Application("frostnode")
        service = tap.makeService(self.options)
        self.addCleanup(lambda: service.getServiceNamed("node").db.close())
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        self.assertIsInstance(IService(application).getServiceNamed("frostnode").getServiceNamed("node"), tap.Node)
        log = Logger(namespace="test", observer=observer)
        log.info("dropped below warn")
        log.warn("peer {peer} down", peer=b"\x01\x02")
        lines = log_path.read_text().splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual((record["level"], record["text"], record["peer"]), ("warn", "peer b'\\x01\\x02' down", "0102"))

    def test_twistd_logger_option_wins(self) -> None:
        self.options.parent = {"logger": "some.module.observer", "nodaemon": True}
        application = Application("frostnode")
        service = tap.makeService(self.options)
        self.addCleanup(lambda: service.getServiceNamed("node").db.close())
        service.setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))


class _SlowService(Service):
    """A layer whose stop takes until the test says so."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.done


def _body() -> RecordBody:
    return RecordBody(client_key=b"c" * 32, topic="t", payload=b"p", timestamp=1)


def _port_of(listen: str) -> int:
    return int(listen.split(":")[1])


def _with_limits(config: Any, **changes: Any) -> Any:
    from dataclasses import replace
    return replace(config, limits=replace(config.limits, **changes))


def _with_log(config: Any, log: LogSection) -> Any:
    from dataclasses import replace
    return replace(config, log=log)


class LoggingTests(SynchronousTestCase):
    def test_json_lines(self) -> None:
        out = io.StringIO()
        observer = make_observer(LogSection("json", LogLevel.info), out)
        log = Logger(namespace="frostnode.test", observer=observer)
        log.debug("not shown")
        log.info("link to {peer} up after {attempts} attempts", peer=b"\xab" * 4, attempts=3)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("handler for {channel} failed", channel=2)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["level"], first["namespace"]), ("info", "frostnode.test"))
        self.assertEqual(first["text"], "link to b'\\xab\\xab\\xab\\xab' up after 3 attempts")
        self.assertEqual((first["peer"], first["attempts"]), ("abababab", 3))
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertEqual((second["level"], second["channel"]), ("critical", 2))
        self.assertIn("ZeroDivisionError", second["failure"])

    def test_text_level(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="frostnode.test", observer=make_observer(LogSection("text", LogLevel.error), out))
        log.warn("quiet")
        log.error("loud {n}", n=1)
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("[frostnode.test#error] loud 1", out.getvalue())

    def test_event_as_json_unusual_fields(self) -> None:
        line = event_as_json({"log_format": "{x}", "log_time": 0.0, "log_level": LogLevel.info,
                              "log_namespace": "n", "x": {b"k": (1, b"\x00")}, "obj": object})
        self.assertEqual(json.loads(line)["x"], {"b'k'": [1, "00"]})
        self.assertEqual(json.loads(line)["obj"], str(object))

    def test_twistd_log_file_choices(self) -> None:
        self.assertIs(twistd_log_file({"nodaemon": True}), sys.stdout)
        self.assertIs(twistd_log_file({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIsNone(twistd_log_file({"nodaemon": False, "logfile": "-"}))
        self.assertIsNone(twistd_log_file({"syslog": True}))


class TwistdProcessTests(TestCase):
    """C{twistd -n frostnode} as a separate process, as an operator runs it."""

    timeout = 60

    def setUp(self) -> None:
        self.twistd = twistd()
        self.base = Path(self.mktemp()).absolute()
        self.paths = make_federation(self.base, 3, 2, log_format="json")

    def argv(self, config: Path | str) -> list[str]:
        return [self.twistd, "-n", "--pidfile=", "frostnode", "--config", str(config)]

    @inlineCallbacks
    def assertOneLineError(self, config: Path | str, expected: str) -> Generator[Deferred[Any], Any, None]:
        argv = self.argv(config)
        out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ), path=str(self.base))
        self.assertEqual(code, 1)
        self.assertEqual(out, b"")
        self.assertEqual(err.decode(), f"frostnode: {expected}\n")

    @inlineCallbacks
    def test_bad_configs(self) -> Generator[Deferred[Any], Any, None]:
        """Each bad setup: one line on stderr naming file and key, exit status 1, no traceback."""
        missing = self.base / "missing.toml"
        yield self.assertOneLineError(missing, f"{missing}: cannot read config file: No such file or directory")

        wrong_type = self.base / "wrong-type.toml"
        wrong_type.write_text('[peer]\nlisten = 9000\n')
        yield self.assertOneLineError(wrong_type, f"{wrong_type}: [peer] listen must be a string, not an integer (9000)")

        config = self.paths[0]
        text = config.read_text()
        config.write_text(text.replace("threshold = 2", "threshold = 4"))
        yield self.assertOneLineError(config, f"{config}: [federation] threshold must be <= number of members (3)")
        config.write_text(text)

        config.write_text(text + '\n[store]\nmax_payload = "4MiB"\n')
        yield self.assertOneLineError(config, f"{config}: [store] max_payload must be at most [limits] "
                                              "max_broadcast_size minus 4KiB (2093056), so that a record fits in "
                                              "one broadcast (got 4194304)")
        config.write_text(text + '\n[validation]\nschemes = ["no-such-scheme"]\n')
        yield self.assertOneLineError(config, f"{config}: [validation] schemes[0] ('no-such-scheme') no such scheme: "
                                              "not built in and no entry point in group 'frostnode.validators' "
                                              "(available: ledger, record); for an unpackaged scheme give "
                                              "'package.module:attribute'")
        config.write_text(text)

        key = config.parent / "host.key"
        key.unlink()
        key.mkdir()
        yield self.assertOneLineError(config, f"{config}: [node] host_key_file {key} is not a regular file")

    @inlineCallbacks
    def test_start_and_sigterm(self) -> Generator[Deferred[Any], Any, None]:
        """A good config starts; SIGTERM stops every service and twistd exits by that signal."""
        config = self.paths[0]
        text = config.read_text()
        listen = [line for line in text.splitlines() if line.startswith("listen = ")][0]
        config.write_text(text.replace(listen, 'listen = "tcp:0:interface=127.0.0.1"', 1))
        host_key = load_host_key(config.parent / "host.key").public.hex()
        proto = OutputProcess("twistd")
        argv = self.argv(config)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ), path=str(self.base))
        self.addCleanup(lambda: proto.running and transport.signalProcess("KILL"))

        yield proto.when_output(f"frostnode {host_key} running".encode())
        running = [json.loads(line) for line in proto.out.decode().splitlines() if "running" in line][0]
        # The peer port is open where the log says.
        link = yield TCP4ClientEndpoint(reactor, "127.0.0.1", running["peer_port"]).connect(
            Factory.forProtocol(Protocol))
        link.transport.loseConnection()
        transport.signalProcess("TERM")
        reason = yield proto.ended

        # twistd re-raises the signal that stopped it, so its parent sees why it ended.
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGTERM)
        self.assertNotIn(b"Traceback", proto.out + proto.err)
        self.assertEqual(proto.err, b"")
        records = [json.loads(line) for line in proto.out.decode().splitlines()]
        texts = [r["text"] for r in records]
        for expected in ["Received SIGTERM, shutting down.", f"frostnode {host_key} stopping",
                         f"frostnode {host_key} stopped", "Main loop terminated."]:
            self.assertIn(expected, texts)
        self.assertLess(texts.index(f"frostnode {host_key} stopped"), texts.index("Main loop terminated."))
        self.assertFalse([r for r in records if r["level"] in ("error", "critical")])
