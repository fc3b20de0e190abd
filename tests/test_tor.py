"""
Tor: onion keys and addresses (checked against an address Tor itself
produced), the key file's protections, the control-protocol text, the
endpoint factory's routing (C{.onion} through a SOCKS server, the rest
direct), and real C{tor} processes started with C{DisableNetwork 1}: the
onion service gets its address at once, the same one at every start with the
same key, a different one with a different key, and Tor is gone after stop.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import txtorcon
from frostnode.config import ConfigError, TorSection, config_from_string
from frostnode.keys import HOST_KEY_KIND, KeyFileError, write_key_file
from frostnode.net.errors import UnsupportedAddress
from frostnode.tor import (
    DescriptorUploads,
    HsDesc,
    OnionPort,
    TorError,
    TorService,
    add_onion_command,
    check_tor_config,
    check_onion_key,
    control_socket_path,
    find_tor_binary,
    generate_onion_key,
    load_or_create_onion_key,
    onion_address,
    onion_card_address,
    onion_target,
    parse_bootstrap,
    parse_hs_desc,
    parse_service_id,
    read_onion_key,
    socks_endpoint_from_listeners,
    tor_command_line,
    write_onion_key,
)
from tests.support import OutputProcess

TOR = find_tor_binary()
NO_TOR = None if TOR else "the tor binary is not installed (apt-get install tor); Tor process tests skipped"

#: Tor 0.4.9.11's answer to ADD_ONION NEW:ED25519-V3: its key and service id.
TOR_KEY = base64.b64decode("YGIpAhkSa1xAqK5ZTqFs37Av1I5WKyFg2ODd1qywekIbzsZc/az0tJmgxajv2n7SP83DgJZJU417OP0o3WC4pA==")
TOR_SERVICE_ID = "ufvl45vptcpyytrnbcswk6parqqqkxpolt4epnr7xgjsgjlplk65jeqd"


def tor_section(base: Path, **changes: Any) -> TorSection:
    section = TorSection(enabled=True, control_port=None, tor_binary=None, data_directory=base / "tor",
                         socks_port=None, onion_key_file=base / "onion.key", onion_port=9000, publish_client=False)
    return replace(section, **changes)


def short_tempdir(test: TestCase) -> Path:
    """A private directory with a short path (Unix socket paths are limited), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="fn-tor-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


class LogCapture:
    def __init__(self, test: TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def with_field(self, field: str) -> list[dict]:
        return [e for e in self.events if field in e]


# -- keys ------------------------------------------------------------------------------


class OnionKeyTests(SynchronousTestCase):
    def test_address_of_a_key_made_by_tor(self) -> None:
        self.assertEqual(onion_address(TOR_KEY), TOR_SERVICE_ID + ".onion")

    def test_generated_keys(self) -> None:
        key = generate_onion_key(b"\x01" * 32)
        check_onion_key(key)
        self.assertEqual(key, generate_onion_key(b"\x01" * 32))
        self.assertNotEqual(onion_address(key), onion_address(generate_onion_key(b"\x02" * 32)))
        self.assertNotEqual(generate_onion_key(), generate_onion_key())
        self.assertEqual(len(onion_address(key)), 56 + len(".onion"))
        self.assertRaises(ValueError, generate_onion_key, b"short")

    def test_unclamped_key_is_refused(self) -> None:
        bad = bytes([TOR_KEY[0] | 1]) + TOR_KEY[1:]
        self.assertIn("not clamped", str(self.assertRaises(ValueError, onion_address, bad)))
        self.assertRaises(ValueError, check_onion_key, TOR_KEY[:32])

    def test_key_file_is_owner_only_and_stable(self) -> None:
        path = Path(self.mktemp())
        key = load_or_create_onion_key(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(load_or_create_onion_key(path), key)
        self.assertEqual(read_onion_key(path), key)
        self.assertIn(onion_address(key), path.read_text())  # the operator can see the address
        section = tor_section(path.parent, onion_key_file=path, onion_port=9100)
        self.assertEqual(onion_card_address(section), f"tcp:{onion_address(key)}:9100")

    def test_key_file_never_overwritten(self) -> None:
        path = Path(self.mktemp())
        write_onion_key(path, TOR_KEY)
        e = self.assertRaises(KeyFileError, write_onion_key, path, generate_onion_key())
        self.assertIn("refusing to overwrite", str(e))
        self.assertEqual(read_onion_key(path), TOR_KEY)

    def test_unprotected_key_file_refused(self) -> None:
        path = Path(self.mktemp())
        write_onion_key(path, TOR_KEY)
        os.chmod(path, 0o640)
        e = self.assertRaises(KeyFileError, load_or_create_onion_key, path)
        self.assertIn("chmod 600", str(e))
        self.assertEqual(e.path, path)

    def test_wrong_or_damaged_key_file_refused(self) -> None:
        host = Path(self.mktemp())
        write_key_file(host, HOST_KEY_KIND, b"\x11" * 32)
        self.assertIn("holds a 'host-key' line", str(self.assertRaises(KeyFileError, read_onion_key, host)))
        damaged = Path(self.mktemp())
        damaged.write_text(f"onion-key {(bytes([TOR_KEY[0] | 1]) + TOR_KEY[1:]).hex()}\n")
        os.chmod(damaged, 0o600)
        self.assertIn("malformed", str(self.assertRaises(KeyFileError, read_onion_key, damaged)))
        damaged.write_text(f"onion-key {TOR_KEY[:32].hex()}\n")
        self.assertIn("has a malformed onion key (expected a single line 'onion-key <128 hex digits>')",
                      str(self.assertRaises(KeyFileError, read_onion_key, damaged)))
        self.assertIn("cannot be read", str(self.assertRaises(KeyFileError, read_onion_key, Path(self.mktemp()))))


# -- control protocol text -----------------------------------------------------------


class ControlTextTests(SynchronousTestCase):
    def test_bootstrap_status(self) -> None:
        self.assertEqual(parse_bootstrap('NOTICE BOOTSTRAP PROGRESS=0 TAG=starting SUMMARY="Starting"'),
                         (0, "starting", "Starting"))
        self.assertEqual(parse_bootstrap('NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"').progress, 100)
        self.assertIsNone(parse_bootstrap("NOTICE CIRCUIT_ESTABLISHED"))
        self.assertIsNone(parse_bootstrap('NOTICE BOOTSTRAP PROGRESS="unterminated'))

    def test_descriptor_uploads(self) -> None:
        me = TOR_SERVICE_ID
        uploads = DescriptorUploads(me + ".onion")
        events = [parse_hs_desc(t) for t in (
            f"UPLOAD {me} UNKNOWN $AAAA~dir1 descid HSDIR_INDEX=00",
            f"UPLOAD {me} UNKNOWN $BBBB~dir2 descid HSDIR_INDEX=01",
            "UPLOAD someoneelse UNKNOWN $CCCC~dir3 descid",
            f"FAILED {me} UNKNOWN $AAAA~dir1 descid REASON=UPLOAD_REJECTED",
        )]
        self.assertEqual(events[3], HsDesc("FAILED", me, "$AAAA~dir1", "UPLOAD_REJECTED"))
        self.assertEqual([uploads.receive(e) for e in events], ["UPLOAD", "UPLOAD", None, "FAILED"])
        self.assertFalse(uploads.published)
        self.assertIsNone(uploads.receive(parse_hs_desc("UPLOADED UNKNOWN UNKNOWN $CCCC~dir3")))
        self.assertEqual(uploads.receive(parse_hs_desc("UPLOADED UNKNOWN UNKNOWN $BBBB~dir2")), "UPLOADED")
        self.assertTrue(uploads.published)
        self.assertEqual((uploads.attempted, uploads.failed), ({"$AAAA~dir1", "$BBBB~dir2"}, {"$AAAA~dir1"}))
        self.assertIsNone(parse_hs_desc("UPLOAD"))

    def test_add_onion(self) -> None:
        command = add_onion_command(TOR_KEY, [(9000, "127.0.0.1:4000"), (9001, "unix:/run/x")])
        self.assertEqual(command, "ADD_ONION ED25519-V3:" + base64.b64encode(TOR_KEY).decode()
                         + " Port=9000,127.0.0.1:4000 Port=9001,unix:/run/x")
        self.assertRaises(ValueError, add_onion_command, TOR_KEY, [])
        self.assertRaises(ValueError, add_onion_command, TOR_KEY, [(0, "127.0.0.1:1")])
        self.assertEqual(parse_service_id(f"ServiceID={TOR_SERVICE_ID}\nPrivateKey=ED25519-V3:xx"), TOR_SERVICE_ID)
        self.assertRaises(TorError, parse_service_id, "250 OK")

    def test_onion_targets(self) -> None:
        self.assertEqual(onion_target(IPv4Address("TCP", "0.0.0.0", 9000)), "127.0.0.1:9000")
        self.assertEqual(onion_target(IPv4Address("TCP", "10.1.2.3", 9000)), "10.1.2.3:9000")
        self.assertEqual(onion_target(IPv6Address("TCP", "::", 9000)), "[::1]:9000")
        self.assertEqual(onion_target(UNIXAddress(b"/run/peer.sock")), "unix:/run/peer.sock")
        self.assertRaises(ValueError, onion_target, UNIXAddress(b"/run/with space"))
        self.assertRaises(ValueError, onion_target, object())

    def test_socks_listeners(self) -> None:
        clock = Clock()
        self.assertIsNone(socks_endpoint_from_listeners(clock, ""))
        tcp = socks_endpoint_from_listeners(clock, '"127.0.0.1:9050"')
        self.assertIsInstance(tcp, TCP4ClientEndpoint)
        self.assertEqual((tcp._host, tcp._port), ("127.0.0.1", 9050))
        unix = socks_endpoint_from_listeners(clock, '"127.0.0.1:9050" "unix:/run/tor/socks"')
        self.assertIsInstance(unix, UNIXClientEndpoint)
        self.assertEqual(unix._path, "/run/tor/socks")

    def test_launch_arguments(self) -> None:
        self.assertEqual(control_socket_path(Path("/var/lib/fn/tor")), Path("/var/lib/fn/tor/control"))
        self.assertIsNone(control_socket_path(Path("/" + "x" * 120)))
        args = tor_command_line("/usr/sbin/tor", Path("/d"), Path("/d/control"), {"DisableNetwork": "1", "SocksPort": "0"})
        pairs = dict(zip(args[4::2], args[5::2]))
        self.assertEqual(args[:4], ["/usr/sbin/tor", "-f", os.devnull + "/none", "--ignore-missing-torrc"])
        self.assertEqual(pairs["--ControlPort"], 'unix:"/d/control"')
        self.assertEqual(pairs["--CookieAuthentication"], "1")
        self.assertEqual((pairs["--DisableNetwork"], pairs["--SocksPort"]), ("1", "0"))
        self.assertEqual(pairs["__OwningControllerProcess"], str(os.getpid()))


class ConfigCheckTests(SynchronousTestCase):
    def config(self, tor: str) -> Any:
        base = Path(self.mktemp())
        base.mkdir()
        return base, config_from_string(f"[tor]\nenabled = true\n{tor}\n", str(base / "node.toml"))

    def test_checks_name_the_key(self) -> None:
        base, config = self.config('tor_binary = "no-such-tor-binary"')
        e = self.assertRaises(ConfigError, check_tor_config, config)
        self.assertEqual(e.key, "[tor] tor_binary")
        base, config = self.config('control_port = "unix:/run/tor/control"\nonion_key_file = "keys/onion.key"')
        e = self.assertRaises(ConfigError, check_tor_config, config)
        self.assertEqual(e.key, "[tor] onion_key_file")
        self.assertIn("not a writable directory", str(e))
        base, config = self.config('control_port = "unix:/run/tor/control"')
        check_tor_config(config)  # no key yet: it will be created
        write_onion_key(base / "onion.key", TOR_KEY)
        check_tor_config(config)
        os.chmod(base / "onion.key", 0o644)
        e = self.assertRaises(ConfigError, check_tor_config, config)
        self.assertEqual(e.key, "[tor] onion_key_file")
        self.assertIn("chmod 600", str(e))

    def test_disabled_tor_is_not_checked(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        check_tor_config(config_from_string('[tor]\ntor_binary = "no-such-tor-binary"\n', str(base / "node.toml")))


# -- dialling ---------------------------------------------------------------------------


class _FakeSocks(Protocol):
    """A SOCKS5 server that records one CONNECT request and grants it."""

    def __init__(self, requests: list) -> None:
        self.requests = requests
        self.buffer = b""
        self.greeted = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.greeted and len(self.buffer) >= 3:
            assert self.buffer[:3] == b"\x05\x01\x00", self.buffer
            self.buffer, self.greeted = self.buffer[3:], True
            self.transport.write(b"\x05\x00")
        if self.greeted and len(self.buffer) >= 5 and len(self.buffer) >= 7 + self.buffer[4]:
            n = self.buffer[4]
            assert self.buffer[:4] == b"\x05\x01\x00\x03", self.buffer  # CONNECT to a host name
            host = self.buffer[5:5 + n].decode()
            (port,) = struct.unpack(">H", self.buffer[5 + n:7 + n])
            self.requests.append((host, port))
            self.buffer = b""
            self.transport.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")


class _Recorder(Protocol):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def connectionMade(self) -> None:
        self.seen.append(self.transport.getPeer())


class _Client(Protocol):
    def __init__(self) -> None:
        self.made: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)


class EndpointFactoryTests(TestCase):
    @inlineCallbacks
    def listen(self, factory: Factory) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def connect(self, endpoint: Any) -> Any:
        client = _Client()
        proto = yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.made
        self.addCleanup(proto.transport.loseConnection)
        return proto

    @inlineCallbacks
    def test_onion_through_socks_and_the_rest_direct(self) -> None:
        requests: list = []
        socks_port = yield self.listen(Factory.forProtocol(lambda: _FakeSocks(requests)))
        direct: list = []
        direct_port = yield self.listen(Factory.forProtocol(lambda: _Recorder(direct)))
        service = TorService(reactor, tor_section(Path(self.mktemp()), socks_port=f"tcp:127.0.0.1:{socks_port}"))

        onion = f"tcp:{TOR_SERVICE_ID}.onion:9000"
        self.assertIsInstance(service.endpoint_factory(reactor, onion), txtorcon.TorClientEndpoint)
        yield self.connect(service.endpoint_factory(reactor, onion))
        self.assertEqual(requests, [(TOR_SERVICE_ID + ".onion", 9000)])
        self.assertEqual(direct, [])

        yield self.connect(service.endpoint_factory(reactor, f"tcp:host=127.0.0.1:port={direct_port}"))
        self.assertEqual(len(direct), 1)
        self.assertEqual(requests, [(TOR_SERVICE_ID + ".onion", 9000)])  # SOCKS saw nothing new

    def test_malformed_address(self) -> None:
        service = TorService(reactor, tor_section(Path(self.mktemp())))
        self.assertRaises(UnsupportedAddress, service.endpoint_factory, reactor, "udp:x.onion:1")

    @inlineCallbacks
    def test_without_tor_onion_dials_fail_and_the_error_is_logged(self) -> None:
        logs = LogCapture(self)
        base = Path(self.mktemp())
        base.mkdir()
        service = TorService(reactor, tor_section(base, tor_binary=str(base / "no-such-tor")),
                             [OnionPort(9000, lambda: Deferred())])
        address = service.onion_address
        service.startService()
        self.addCleanup(service.stopService)
        error = yield self.assertFailure(address, TorError)
        self.assertIn("no-such-tor", str(error))
        yield self.assertFailure(service.endpoint_factory(reactor, f"tcp:{TOR_SERVICE_ID}.onion:9000")
                                 .connect(Factory.forProtocol(Protocol)), TorError)
        self.assertEqual([e["error"] for e in logs.with_field("error")], [str(error)])
        self.assertTrue(service.running)


# -- real tor ---------------------------------------------------------------------------


class RealTorTests(TestCase):
    skip = NO_TOR

    def start(self, service: TorService) -> TorService:
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    @inlineCallbacks
    def peer_port(self) -> Any:
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def spawn_tor(self) -> Any:
        """Start a tor with DisableNetwork, as an operator's system tor; killed in cleanup."""
        base = short_tempdir(self)
        (base / "data").mkdir(mode=0o700)
        control = base / "data" / "control"
        tor = OutputProcess("tor")
        transport = reactor.spawnProcess(tor, TOR, [
            TOR, "-f", "/dev/null/none", "--ignore-missing-torrc", "--DataDirectory", str(base / "data"),
            "--ControlPort", f"unix:{control}", "--CookieAuthentication", "1", "--SocksPort", "0",
            "--DisableNetwork", "1", "--Log", "notice stdout"], env={"HOME": str(base)})

        def kill() -> Deferred:
            if not tor.ended.called:
                transport.signalProcess("KILL")
            return tor.ended

        self.addCleanup(kill)
        yield tor.when_output(b"Opened Control listener")
        return control

    @inlineCallbacks
    def test_launched_tor_publishes_a_stable_address(self) -> None:
        # A data directory too deep for a Unix socket: the control socket goes elsewhere.
        base = Path(self.mktemp()) / ("deep" * 20)
        base.mkdir(parents=True)
        section = tor_section(base)
        self.assertIsNone(control_socket_path(section.data_directory))
        port = yield self.peer_port()
        logs = LogCapture(self)
        clock = Clock()

        def service() -> TorService:
            return TorService(reactor, section, [OnionPort(9000, lambda: succeed(port))],
                              clock=clock, extra_options={"DisableNetwork": "1"})

        first = self.start(service())
        published = first.when_published()
        address = yield first.onion_address
        self.assertEqual(address, onion_address(read_onion_key(section.onion_key_file)))
        self.assertEqual(stat.S_IMODE(os.stat(section.onion_key_file).st_mode), 0o600)
        self.assertEqual(first.bootstrap.progress, 0)  # offline: nothing beyond the start
        self.assertNoResult(published)  # no descriptor upload offline, and nothing waited for it

        clock.advance(60)
        reminders = [e for e in logs.with_field("waited") if e["onion"] == address]
        self.assertEqual([(e["waited"], e["progress"], e["attempted"]) for e in reminders], [("1m", 0, 0)])

        process = first.process
        yield first.stopService()
        self.assertTrue(process.ended)
        yield self.assertFailure(published, TorError)

        second = self.start(service())
        self.assertEqual((yield second.onion_address), address)
        process = second.process
        yield second.stopService()
        self.assertTrue(process.ended)

    @inlineCallbacks
    def test_stopping_while_tor_starts_kills_it(self) -> None:
        base = short_tempdir(self)
        service = TorService(reactor, tor_section(base), [OnionPort(9000, lambda: Deferred())],
                             extra_options={"DisableNetwork": "1"})
        address = service.onion_address
        service.startService()
        process = service.process
        self.assertIsNotNone(process)
        yield service.stopService()
        self.assertTrue(process.ended)
        yield self.assertFailure(address, TorError)

    @inlineCallbacks
    def test_tor_that_cannot_start_is_reported_with_its_words(self) -> None:
        logs = LogCapture(self)
        service = self.start(TorService(reactor, tor_section(short_tempdir(self)), [OnionPort(9000, lambda: Deferred())],
                                        extra_options={"NoSuchTorOption": "1"}))
        error = yield self.assertFailure(service.onion_address, TorError)
        self.assertIn("tor exited before opening its control port", str(error))
        self.assertIn("NoSuchTorOption", str(error))
        self.assertEqual([e["error"] for e in logs.with_field("error")], [str(error)])

    @inlineCallbacks
    def test_existing_tor_different_keys_different_addresses(self) -> None:
        control = yield self.spawn_tor()
        port = yield self.peer_port()
        base = short_tempdir(self)
        services = []
        for name in ("a", "b"):
            section = tor_section(base, control_port=f"unix:{control}", onion_key_file=base / f"{name}.key")
            services.append(self.start(TorService(reactor, section, [OnionPort(9000, lambda: succeed(port))])))
        addresses = []
        for service in services:
            addresses.append((yield service.onion_address))
        self.assertNotEqual(addresses[0], addresses[1])
        self.assertEqual(addresses, [onion_address(read_onion_key(base / f"{n}.key")) for n in ("a", "b")])
        self.assertIsNone(services[0].process)  # connected, not launched

        # The service lives on its control connection: stopping frees the
        # address, and the same key publishes the same address again.
        yield services[0].stopService()
        again = self.start(TorService(reactor, tor_section(base, control_port=f"unix:{control}",
                                                           onion_key_file=base / "a.key"),
                                      [OnionPort(9000, lambda: succeed(port))]))
        self.assertEqual((yield again.onion_address), addresses[0])

    @inlineCallbacks
    def test_one_key_cannot_be_published_twice(self) -> None:
        control = yield self.spawn_tor()
        port = yield self.peer_port()
        base = short_tempdir(self)
        section = tor_section(base, control_port=f"unix:{control}")
        first = self.start(TorService(reactor, section, [OnionPort(9000, lambda: succeed(port))]))
        yield first.onion_address
        logs = LogCapture(self)
        second = self.start(TorService(reactor, section, [OnionPort(9000, lambda: succeed(port))]))
        error = yield self.assertFailure(second.onion_address, TorError)
        self.assertIn("refused ADD_ONION", str(error))
        self.assertEqual([e["error"] for e in logs.with_field("error")], [str(error)])
