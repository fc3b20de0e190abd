# -*- test-case-name: tests.test_tor -*-
"""
Tor for a node: publish the peer port (and optionally the client port) as a
v3 onion service whose address survives restarts, and dial members whose
card address is a C{.onion} through Tor's SOCKS port.

Decisions:

  - B{The onion key is ours, made here.}  L{generate_onion_key} expands a
    random seed exactly as Tor does (RFC 8032 5.1.5: SHA-512, then clamp),
    and L{onion_address} derives the address (rend-spec-v3 6,
    C{encode_onion_address}).  So the address is known before Tor runs (for
    the operator's address card) and Tor's answer to C{ADD_ONION} is checked
    against it.  The key file is created owner-only with C{O_EXCL} and
    refused when group or others can read it, like the node's other keys
    (L{frostnode.keys}).
  - B{Ephemeral service, persisted key.}  C{ADD_ONION ED25519-V3:<key>} on
    our control connection, not detached: the service disappears with the
    connection (node stops, Tor restarts) and nothing lingers in a system
    Tor's configuration.  The address is the same at every start.
  - B{Nothing waits for the Tor network.}  C{txtorcon.launch} returns only
    after a 100% bootstrap, and C{create_onion_service} only after a
    descriptor upload: offline that is never.  So L{TorService} spawns
    C{tor} itself (the options C{launch} would use: cookie authentication,
    C{__OwningControllerProcess}, then C{TAKEOWNERSHIP}), connects with
    C{txtorcon.connect} as soon as Tor says its control listener is open,
    and issues C{ADD_ONION} at once, which answers at once.  The descriptor
    upload is then followed through C{HS_DESC} events, bootstrap through
    C{STATUS_CLIENT} events, and both are logged, with a reminder every
    C{progress_interval} while the service is unpublished.  Its parent node
    serves its other endpoints meanwhile: nothing in C{startService} blocks.
  - B{Dialling}: L{TorService.endpoint_factory} is the C{endpoint_factory}
    of L{frostnode.net.peers.PeerNetwork}.  C{.onion} hosts get a txtorcon
    C{TorClientEndpoint} whose SOCKS endpoint is resolved at connect time
    (C{[tor] socks_port}, else the Tor's own listener from
    C{GETINFO net/listeners/socks}), so a dial made while Tor is still
    starting waits for it, and one made after Tor failed fails (and the
    links' backoff retries).  Every other address goes direct, through
    L{frostnode.net.peers.tcp_endpoint}: Tor here is for reachability, not
    for hiding that this host is a member.
  - B{A Tor failure is not a node failure}: it is logged as an error, the
    Deferreds of L{TorService} fail with L{TorError}, and the node keeps
    serving on its other endpoints.  A lost control connection is logged;
    it is not re-established (restart the node).
  - The launched Tor's control socket lives in its data directory, unless
    that path is too long for a Unix socket (about 100 bytes), in which
    case it goes in a private temporary directory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import txtorcon
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    TimeoutError,
    ensureDeferred,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint, clientFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from txtorcon.util import SingleObserver, find_keywords
from zope.interface import implementer

from frostnode.config import Config, TorSection, format_duration
from frostnode.keys import KeyFileError, read_key_file, write_key_file
from frostnode.net.peers import parse_tcp_address, tcp_endpoint

ONION_KEY_KIND = "onion-key"
#: Bytes of an expanded ED25519-V3 key (scalar, then nonce prefix).
ONION_KEY_LENGTH = 64
#: Onion service protocol version in the address (rend-spec-v3 6).
ONION_VERSION = b"\x03"
#: How long a launched tor may take to open its control listener.
LAUNCH_TIMEOUT = 60.0
#: How long a stopping tor may take to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: How often an unpublished onion service is reported.
PROGRESS_INTERVAL = 60.0
#: Longest control socket path used (sun_path holds 108 bytes, NUL included).
MAX_SOCKET_PATH = 100
_TOR_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class TorError(Exception):
    """Tor could not do what the node needed; the message says what, and where."""


# -- onion keys and addresses ------------------------------------------------------


def generate_onion_key(seed: Optional[bytes] = None) -> bytes:
    """
    A new ED25519-V3 onion service key in the form C{ADD_ONION} takes: the
    64-byte expanded secret key (clamped scalar, then the nonce prefix).

    @param seed: 32 secret random bytes; default C{os.urandom(32)}.
    """
    if seed is None:
        seed = os.urandom(32)
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def check_onion_key(key: bytes) -> None:
    """@raise ValueError: C{key} is not a 64-byte expanded key with a clamped scalar."""
    if len(key) != ONION_KEY_LENGTH:
        raise ValueError(f"an expanded ED25519-V3 key is {ONION_KEY_LENGTH} bytes, not {len(key)}")
    if key[0] & 7 or key[31] & 128 or not key[31] & 64:
        raise ValueError("the key's scalar is not clamped: not an expanded Ed25519 key")


def onion_address(key: bytes) -> str:
    """
    The C{<56 characters>.onion} address of the service with expanded key
    C{key}: base32(PUBKEY | CHECKSUM | VERSION), CHECKSUM being the first two
    bytes of SHA3-256(".onion checksum" | PUBKEY | VERSION).
    """
    check_onion_key(key)
    public = crypto_scalarmult_ed25519_base_noclamp(key[:32])
    checksum = hashlib.sha3_256(b".onion checksum" + public + ONION_VERSION).digest()[:2]
    return base64.b32encode(public + checksum + ONION_VERSION).decode("ascii").lower() + ".onion"


def onion_card_address(config: TorSection) -> str:
    """
    This member's card address under Tor, C{tcp:<onion>:<onion_port>},
    known before Tor runs (the key file is created if there is none).

    @raise KeyFileError: the key file cannot be read or created.
    """
    return f"tcp:{onion_address(load_or_create_onion_key(config.onion_key_file))}:{config.onion_port}"


def is_onion_host(host: str) -> bool:
    return host.lower().rstrip(".").endswith(".onion")


def write_onion_key(path: Path, key: bytes) -> None:
    """
    Create C{path} holding C{key}, owner-only, never replacing a file (a
    replaced key is a changed address that every member would have to learn).

    @raise KeyFileError: if the file exists or cannot be created.
    """
    check_onion_key(key)
    write_key_file(path, ONION_KEY_KIND, key,
                   comment=f"frostnode onion service key (Tor ED25519-V3, expanded): it fixes this member's\n"
                           f"address {onion_address(key)}. Keep this file secret.")


def read_onion_key(path: Path) -> bytes:
    """
    The key in C{path}, after the same checks as the node's other key files.

    @raise KeyFileError: naming the file and what is wrong with it.
    """
    key = read_key_file(path, ONION_KEY_KIND, ONION_KEY_LENGTH, name="onion key")
    try:
        check_onion_key(key)
    except ValueError as e:
        raise KeyFileError(path, f"has a malformed onion key ({e})") from None
    return key


def load_or_create_onion_key(path: Path) -> bytes:
    """The key in C{path}, created there first if there is no file."""
    if not os.path.lexists(path):
        try:
            write_onion_key(path, generate_onion_key())
        except KeyFileError:
            if not os.path.lexists(path):  # lost a creation race: read the winner's
                raise
    return read_onion_key(path)


# -- talking to tor (pure) -----------------------------------------------------------


class OnionPort(NamedTuple):
    """
    One port of the onion service: C{virtual_port} on the C{.onion}, served
    by the local port that C{listening()} fires with (an C{IListeningPort},
    e.g. C{PeerNetwork.when_listening}).  Called at start, so the node's
    listeners may be created after this.
    """

    virtual_port: int
    listening: Callable[[], Deferred]


def onion_target(address: Any) -> str:
    """
    Where Tor should forward the onion port to, for a listener bound at
    C{address}: wildcard binds become loopback.

    @raise ValueError: an address Tor cannot forward to.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host.partition("%")[0]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{address.port}"
    if isinstance(address, UNIXAddress) and address.name:
        name = os.fsdecode(address.name)
        if any(c.isspace() or c == '"' for c in name):
            raise ValueError(f"cannot publish the unix socket {name!r}: its path has spaces or quotes")
        return f"unix:{name}"
    raise ValueError(f"cannot publish a listener at {address!r} as an onion service")


def add_onion_command(key: bytes, ports: Sequence[tuple[int, str]]) -> str:
    """The C{ADD_ONION} command publishing C{(virtual port, target)} pairs with C{key}."""
    check_onion_key(key)
    if not ports:
        raise ValueError("an onion service needs at least one port")
    for virtual, target in ports:
        if not 0 < virtual < 65536:
            raise ValueError(f"onion port {virtual} out of range 1..65535")
        if any(c.isspace() for c in target):
            raise ValueError(f"onion target {target!r} has spaces")
    spec = " ".join(f"Port={virtual},{target}" for virtual, target in ports)
    return f"ADD_ONION ED25519-V3:{base64.b64encode(key).decode('ascii')} {spec}"


def parse_service_id(reply: str) -> str:
    """
    The C{ServiceID} in Tor's reply to C{ADD_ONION}.

    @raise TorError: if there is none.
    """
    for line in reply.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "ServiceID" and value:
            return value
    raise TorError(f"tor's reply to ADD_ONION has no ServiceID: {reply!r}")


class Bootstrap(NamedTuple):
    """Tor's bootstrap phase: percent done, phase tag, and its description."""

    progress: int
    tag: str
    summary: str


def parse_bootstrap(text: str) -> Optional[Bootstrap]:
    """
    A C{BOOTSTRAP} status, from a C{STATUS_CLIENT} event or the value of
    C{GETINFO status/bootstrap-phase}
    (C{NOTICE BOOTSTRAP PROGRESS=5 TAG=conn SUMMARY="Connecting"}); C{None}
    for other statuses or text that does not parse.
    """
    try:
        args = shlex.split(text)
    except ValueError:
        return None
    if len(args) < 2 or args[1] != "BOOTSTRAP":
        return None
    kw = find_keywords(args[2:])
    try:
        return Bootstrap(int(kw["PROGRESS"]), kw.get("TAG", ""), kw.get("SUMMARY", ""))
    except (KeyError, ValueError):
        return None


class HsDesc(NamedTuple):
    """
    One C{HS_DESC} event: C{action} (C{UPLOAD}, C{UPLOADED}, C{FAILED},
    ...), the service address without C{.onion} (or C{UNKNOWN}), the
    directory (C{$fingerprint~nickname}), and C{REASON=} if given.
    """

    action: str
    address: str
    hsdir: str
    reason: Optional[str]


def parse_hs_desc(text: str) -> Optional[HsDesc]:
    """An C{HS_DESC} event's fields (control-spec 4.1.25); C{None} if it does not parse."""
    args = text.split()
    if len(args) < 4:
        return None
    return HsDesc(args[0], args[1], args[3], find_keywords(args[4:]).get("REASON"))


class DescriptorUploads:
    """
    The descriptor uploads of one onion service, from C{HS_DESC} events.
    One upload accepted by one directory makes the service reachable.

    @ivar address: the service's address, without C{.onion}.
    """

    def __init__(self, address: str) -> None:
        self.address = address.removesuffix(".onion")
        self.attempted: set[str] = set()
        self.uploaded: set[str] = set()
        self.failed: set[str] = set()

    @property
    def published(self) -> bool:
        return bool(self.uploaded)

    def receive(self, event: HsDesc) -> Optional[str]:
        """
        Account for C{event}; its action if it concerns this service
        (C{"UPLOAD"}, C{"UPLOADED"}, C{"FAILED"}), else C{None}.  An
        C{UPLOADED} event with an unknown address counts if it comes from a
        directory we are uploading to (older Tors leave the address out).
        """
        ours = event.address == self.address
        if event.action == "UPLOAD" and ours:
            self.attempted.add(event.hsdir)
            return "UPLOAD"
        if event.action == "UPLOADED" and (ours or (event.address == "UNKNOWN" and event.hsdir in self.attempted)):
            self.uploaded.add(event.hsdir)
            self.failed.discard(event.hsdir)
            return "UPLOADED"
        if event.action == "FAILED" and ours and event.hsdir in self.attempted:
            self.failed.add(event.hsdir)
            return "FAILED"
        return None


def socks_endpoint_from_listeners(reactor: Any, value: str) -> Optional[IStreamClientEndpoint]:
    """
    A SOCKS endpoint from C{GETINFO net/listeners/socks}
    (C{"127.0.0.1:9050" "unix:/run/tor/socks"}): a Unix socket if there is
    one, else the first TCP listener; C{None} if there is none.
    """
    tcp: Optional[IStreamClientEndpoint] = None
    for entry in shlex.split(value or ""):
        if entry.startswith("unix:"):
            return UNIXClientEndpoint(reactor, entry[5:])
        host, sep, port = entry.rpartition(":")
        if tcp is not None or not sep or not port.isdigit():
            continue
        if host.startswith("[") and host.endswith("]"):
            tcp = TCP6ClientEndpoint(reactor, host[1:-1], int(port))
        else:
            tcp = TCP4ClientEndpoint(reactor, host, int(port))
    return tcp


def control_socket_path(data_directory: Path) -> Optional[Path]:
    """The launched tor's control socket in C{data_directory}, or C{None} if that path is too long."""
    path = Path(os.path.abspath(data_directory)) / "control"
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def tor_command_line(binary: str, data_directory: Path, control_socket: Path,
                     options: Mapping[str, str] = {}) -> list[str]:
    """
    The arguments that launch a private tor: no torrc, a control socket with
    cookie authentication, a SOCKS port on loopback, notices on stdout (which
    L{TorProcess} reads), and exit if this process dies before taking
    ownership; C{options} are added (and override these).
    """
    settings = {
        "DataDirectory": str(data_directory),
        "ControlPort": f'unix:"{control_socket}"',
        "CookieAuthentication": "1",
        "SocksPort": "auto",
        "Log": "notice stdout",
        "__OwningControllerProcess": str(os.getpid()),
        **options,
    }
    args = [binary, "-f", os.devnull + "/none", "--ignore-missing-torrc"]
    for name, value in settings.items():
        args += [name if name.startswith("__") else f"--{name}", value]
    return args


def find_tor_binary(name: Optional[str] = None) -> Optional[str]:
    """C{name} (default C{tor}) on C{PATH} or in the usual sbin/bin directories."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_TOR_SEARCH_PATH])
    return shutil.which(name or "tor", path=search)


# -- the tor process ---------------------------------------------------------------------


class TorProcess(ProcessProtocol):
    """
    A launched tor: its output becomes log events (tor's C{[warn]} and
    C{[err]} lines at those levels, the rest at debug), and
    L{when_control_ready} fires when it reports its control listener open.

    @ivar last_lines: tor's latest output lines, for error messages.
    @ivar problems: tor's latest warning and error lines.
    """

    log = Logger()

    def __init__(self) -> None:
        self.last_lines: deque[str] = deque(maxlen=5)
        self.problems: deque[str] = deque(maxlen=5)
        self.ended = False
        self._buffers = {1: b"", 2: b""}
        self._ready = SingleObserver()
        self._exit = SingleObserver()

    def when_control_ready(self) -> Deferred:
        """Fires once tor's control listener is open; fails if tor exits first."""
        return self._ready.when_fired()

    def when_ended(self) -> Deferred:
        """Fires with the exit reason (an exception instance) once tor is gone."""
        return self._exit.when_fired()

    def outReceived(self, data: bytes) -> None:
        self._received(1, data)

    def errReceived(self, data: bytes) -> None:
        self._received(2, data)

    def _received(self, fd: int, data: bytes) -> None:
        *lines, self._buffers[fd] = (self._buffers[fd] + data).split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    def _line(self, line: str) -> None:
        if not line:
            return
        self.last_lines.append(line)
        level = LogLevel.error if "[err]" in line else LogLevel.warn if "[warn]" in line else LogLevel.debug
        if level is not LogLevel.debug:
            self.problems.append(line[line.find("["):])
        self.log.emit(level, "tor: {line}", line=line)
        if "Opened Control listener" in line:
            self._ready.fire(None)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        for fd, rest in self._buffers.items():
            if rest:
                self._line(rest.decode("utf-8", "replace"))
        if not self._ready.has_fired():
            said = " / ".join(self.problems or self.last_lines) or "nothing"
            self._ready.fire(Failure(TorError(f"tor exited before opening its control port ({reason.value}); "
                                              f"it said: {said}")))
        self._exit.fire(reason.value)

    def terminate(self, reactor: IReactorTime, timeout: float = STOP_TIMEOUT) -> Deferred:
        """SIGTERM now, SIGKILL after C{timeout} seconds; fires once tor is gone."""
        done = self.when_ended()
        if self.ended:
            return done
        self._signal("TERM")
        kill = reactor.callLater(timeout, self._signal, "KILL")
        return done.addBoth(lambda result: (kill.cancel() if kill.active() else None, result)[1])

    def _signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


# -- the service ---------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _SocksEndpoint:
    """Tor's SOCKS port, looked up at connect time (Tor may still be starting)."""

    def __init__(self, service: "TorService") -> None:
        self._service = service

    def connect(self, factory: Any) -> Deferred:
        return self._service.socks_endpoint().addCallback(lambda endpoint: endpoint.connect(factory))


class TorService(Service):
    """
    Tor for one node (see the module docstring): a private tor, or the one
    at C{[tor] control_port}; an ephemeral onion service for C{onion_ports};
    and L{endpoint_factory} for the peer links.

    @param reactor: spawns tor and makes connections.
    @param config: the C{[tor]} section.
    @param onion_ports: what to publish; none: Tor only for dialling.
    @param clock: the progress reminders' timer; default C{reactor}.
    @param extra_options: more tor options for a launched tor, e.g.
        C{{"DisableNetwork": "1"}} in tests.
    @param connect_timeout: for direct (non-onion) dials.
    @param launch_timeout: seconds for a launched tor to open its control port.
    @param progress_interval: seconds between reminders while the onion
        service is not yet published.
    @ivar tor: the C{txtorcon.Tor} once connected.
    @ivar process: the launched tor, if any.
    @ivar address: the C{.onion} address once the service is added.
    @ivar uploads: descriptor uploads of the service, once added.
    @ivar bootstrap: tor's latest reported bootstrap phase.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: TorSection,
        onion_ports: Sequence[OnionPort] = (),
        *,
        clock: Optional[IReactorTime] = None,
        extra_options: Optional[Mapping[str, str]] = None,
        connect_timeout: float = 10.0,
        launch_timeout: float = LAUNCH_TIMEOUT,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.setName("tor")
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.config = config
        self.onion_ports = tuple(onion_ports)
        self.extra_options = dict(extra_options or {})
        self.connect_timeout = connect_timeout
        self.launch_timeout = launch_timeout
        self.progress_interval = progress_interval
        self._configured_socks = clientFromString(reactor, config.socks_port) if config.socks_port else None
        self._found_socks: Optional[IStreamClientEndpoint] = None
        self.tor: Optional[txtorcon.Tor] = None
        self.process: Optional[TorProcess] = None
        self.address: Optional[str] = None
        self.uploads: Optional[DescriptorUploads] = None
        self.bootstrap: Optional[Bootstrap] = None
        self._starting: Optional[Deferred] = None
        self._reminder: Optional[LoopingCall] = None
        self._added_at = 0.0
        self._tmpdir: Optional[str] = None
        self._stopping = False
        self._new_observers()

    def _new_observers(self) -> None:
        self._connected = SingleObserver()
        self._address = SingleObserver()
        self._published = SingleObserver()

    # -- what the node uses ---------------------------------------------------------

    @property
    def onion_address(self) -> Deferred:
        """
        A new Deferred firing with the C{.onion} address once the service is
        added (before its descriptor is uploaded); fails with L{TorError} if
        Tor or C{ADD_ONION} fails or the service stops first.
        """
        return self._address.when_fired()

    def when_published(self) -> Deferred:
        """Fires with the address once a directory has accepted the service's descriptor."""
        return self._published.when_fired()

    def when_connected(self) -> Deferred:
        """Fires with the C{txtorcon.Tor} once its control connection is up."""
        return self._connected.when_fired()

    def endpoint_factory(self, reactor: Any, address: str) -> IStreamClientEndpoint:
        """
        For L{frostnode.net.peers.PeerNetwork}: C{.onion} card addresses via
        Tor's SOCKS port, all others direct.

        @raise frostnode.net.errors.UnsupportedAddress: a malformed address.
        """
        host, port = parse_tcp_address(address)
        if is_onion_host(host):
            return txtorcon.TorClientEndpoint(host, port, socks_endpoint=_SocksEndpoint(self), tls=False,
                                              reactor=reactor)
        return tcp_endpoint(reactor, address, timeout=self.connect_timeout)

    def socks_endpoint(self) -> Deferred:
        """
        Fires with the endpoint of Tor's SOCKS port: C{[tor] socks_port} if
        set, else the connected tor's own listener.

        @raise TorError: (in the Deferred) tor failed, or has no SOCKS listener.
        """
        if self._configured_socks is not None:
            return succeed(self._configured_socks)
        if self._found_socks is not None:
            return succeed(self._found_socks)
        d = self.when_connected()
        d.addCallback(lambda tor: tor.protocol.get_info_single("net/listeners/socks"))
        d.addCallback(self._socks_listeners)
        return d

    def _socks_listeners(self, value: str) -> IStreamClientEndpoint:
        endpoint = socks_endpoint_from_listeners(self.reactor, value)
        if endpoint is None:
            raise TorError("tor has no SOCKS listener to dial .onion addresses through "
                           "(SocksPort 0, or DisableNetwork set?); set [tor] socks_port")
        self._found_socks = endpoint
        return endpoint

    # -- starting -----------------------------------------------------------------------

    def startService(self) -> None:
        if self._address.has_fired() or self._connected.has_fired():
            self._new_observers()
        self._stopping = False
        super().startService()
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self) -> None:
        key = load_or_create_onion_key(self.config.onion_key_file) if self.onion_ports else None
        if self.config.control_port:
            where = self.config.control_port
            tor = await txtorcon.connect(self.reactor, clientFromString(self.reactor, where))
        else:
            where, tor = await self._launch()
        if self._stopping:  # stopped while connecting: the connection is ours to close
            tor.protocol.transport.loseConnection()
            return
        self.tor = tor
        tor.protocol.when_disconnected().addBoth(self._disconnected)
        await tor.protocol.add_event_listener("STATUS_CLIENT", self._status_client)
        self.bootstrap = parse_bootstrap(await tor.protocol.get_info_single("status/bootstrap-phase"))
        self._check_running()
        self.log.info("connected to tor {version} at {control}; bootstrap {progress}% ({summary})",
                      version=tor.version, control=where, progress=self._progress(), summary=self._summary())
        if key is None:
            self._connected.fire(tor)
            return
        address = onion_address(key)
        self.uploads = DescriptorUploads(address)
        await tor.protocol.add_event_listener("HS_DESC", self._hs_desc)
        self._connected.fire(tor)  # observers run now and may stop us
        self._check_running()
        try:
            ports = await gatherResults([maybeDeferred(p.listening) for p in self.onion_ports], consumeErrors=True)
        except FirstError as e:
            raise TorError(f"a port to publish did not open: {e.subFailure.getErrorMessage()}") from None
        self._check_running()
        targets = [(p.virtual_port, onion_target(port.getHost())) for p, port in zip(self.onion_ports, ports)]
        try:
            reply = await tor.protocol.queue_command(add_onion_command(key, targets))
        except txtorcon.TorProtocolError as e:
            raise TorError(f"tor refused ADD_ONION for {address}: {e}") from None
        self._check_running()
        service_id = parse_service_id(reply)
        if f"{service_id}.onion" != address:
            raise TorError(f"tor published {service_id}.onion for the key of {address}")
        self.address = address
        self._added_at = self.clock.seconds()
        self.log.info("onion service {onion} added ({ports}); waiting for tor to upload its descriptor",
                      onion=address, ports=", ".join(f"{v} -> {t}" for v, t in targets))
        if not self.uploads.published:
            self._reminder = LoopingCall(self._remind)
            self._reminder.clock = self.clock
            self._reminder.start(self.progress_interval, now=False)
        self._address.fire(address)  # last: observers run now and may stop us

    def _check_running(self) -> None:
        if self._stopping:
            raise CancelledError()

    async def _launch(self) -> tuple[str, txtorcon.Tor]:
        binary = find_tor_binary(self.config.tor_binary)
        if binary is None:
            raise TorError(f"no tor executable {self.config.tor_binary or 'tor'!r} found "
                           "(install the tor package, or set [tor] tor_binary)")
        data_directory = Path(os.path.abspath(self.config.data_directory))
        data_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        control = control_socket_path(data_directory)
        if control is None:
            self._tmpdir = tempfile.mkdtemp(prefix="frostnode-tor-")
            control = Path(self._tmpdir) / "control"
        args = tor_command_line(binary, data_directory, control, self.extra_options)
        self.process = TorProcess()
        # No working directory (every path is absolute): Twisted then uses
        # posix_spawn, and a SIGTERM sent at once cannot fall between fork
        # and exec, where Python's handler would swallow it.
        transport = self.reactor.spawnProcess(self.process, binary, args, env={"HOME": str(data_directory)})
        transport.closeStdin()
        self.log.info("launched tor (pid {pid}, data directory {data_directory})", pid=transport.pid,
                      data_directory=str(data_directory))
        try:
            await self.process.when_control_ready().addTimeout(self.launch_timeout, self.reactor)
        except TimeoutError:
            raise TorError(f"tor did not open its control socket within {format_duration(self.launch_timeout)}") from None
        tor = await txtorcon.connect(self.reactor, UNIXClientEndpoint(self.reactor, str(control)))
        # From here on tor exits when this control connection closes.
        await tor.protocol.queue_command("TAKEOWNERSHIP")
        await tor.protocol.queue_command("RESETCONF __OwningControllerProcess")
        return f"unix:{control}", tor

    def _start_failed(self, failure: Failure) -> None:
        self._starting = None
        if failure.check(CancelledError) and self._stopping:
            return
        error = failure.value if failure.check(TorError) else TorError(failure.getErrorMessage())
        self.log.error("tor is unavailable, the node runs without it: {error}", error=str(error))
        self._fail_waiters(error)

    def _fail_waiters(self, error: TorError) -> None:
        for observer in (self._connected, self._address, self._published):
            if not observer.has_fired():
                observer.fire(Failure(error))

    # -- progress ---------------------------------------------------------------------

    def _progress(self) -> Any:
        return self.bootstrap.progress if self.bootstrap else "?"

    def _summary(self) -> str:
        return self.bootstrap.summary if self.bootstrap else "unknown"

    def _status_client(self, text: str) -> None:
        phase = parse_bootstrap(text)
        if phase is None or phase == self.bootstrap:
            return
        self.bootstrap = phase
        self.log.info("tor bootstrap {progress}%: {summary}", progress=phase.progress, summary=phase.summary)

    def _hs_desc(self, text: str) -> None:
        event = parse_hs_desc(text)
        if event is None or self.uploads is None:
            return
        first = not self.uploads.published
        action = self.uploads.receive(event)
        onion = self.uploads.address + ".onion"
        if action == "UPLOAD":
            self.log.debug("uploading the descriptor of {onion} to {hsdir}", onion=onion, hsdir=event.hsdir)
        elif action == "FAILED":
            self.log.warn("descriptor upload of {onion} to {hsdir} failed: {reason}", onion=onion,
                          hsdir=event.hsdir, reason=event.reason or "no reason given")
        elif action == "UPLOADED" and first:
            self.log.info("onion service {onion} published: descriptor accepted by {hsdir}", onion=onion,
                          hsdir=event.hsdir)
            self._stop_reminder()
            self._published.fire(onion)
        elif action == "UPLOADED":
            self.log.debug("descriptor of {onion} accepted by {hsdir}", onion=onion, hsdir=event.hsdir)

    def _remind(self) -> None:
        uploads = self.uploads
        if uploads is None or uploads.published:
            self._stop_reminder()
            return
        self.log.info(
            "onion service {onion} not published yet after {waited}: tor bootstrap {progress}% ({summary}), "
            "descriptor uploads {attempted} attempted, {failed} failed",
            onion=self.address, waited=format_duration(round(self.clock.seconds() - self._added_at)),
            progress=self._progress(), summary=self._summary(), attempted=len(uploads.attempted),
            failed=len(uploads.failed),
        )

    def _stop_reminder(self) -> None:
        if self._reminder is not None and self._reminder.running:
            self._reminder.stop()
        self._reminder = None

    def _disconnected(self, reason: Any) -> None:
        self._found_socks = None
        if not self._stopping:
            self.log.error("lost the control connection to tor: onion service {onion} is down and .onion "
                           "peers cannot be dialled until the node restarts", onion=self.address or "(none)")

    # -- stopping --------------------------------------------------------------------------

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        self._stop_reminder()
        if self._starting is not None:
            self._starting.cancel()
        self._fail_waiters(TorError("the tor service stopped"))
        waits = []
        if self.process is not None:
            waits.append(self.process.terminate(self.reactor))
        if self.tor is not None:
            protocol = self.tor.protocol
            waits.append(protocol.when_disconnected().addBoth(lambda _: None))
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        self.tor = None
        self.process = None
        done = gatherResults(waits).addCallback(lambda _: None)
        done.addBoth(self._cleaned_up)
        return done

    def _cleaned_up(self, result: Any) -> Any:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        return result


# -- config check ----------------------------------------------------------------------------


def check_tor_config(config: Config) -> None:
    """
    What can be checked of C{[tor]} before starting: the onion key file
    (readable and owner-only if it exists, else its directory writable) and,
    without C{control_port}, that a tor executable exists.  For
    L{frostnode.tap.load_node}, so that a bad setup is one line at start.

    @raise frostnode.config.ConfigError: naming the C{[tor]} key at fault.
    """
    tor = config.tor
    if not tor.enabled:
        return
    if os.path.lexists(tor.onion_key_file):
        try:
            read_onion_key(tor.onion_key_file)
        except KeyFileError as e:
            raise config.error("[tor] onion_key_file", str(e)) from None
    else:
        parent = tor.onion_key_file.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise config.error("[tor] onion_key_file", f"{str(tor.onion_key_file)!r} does not exist and cannot be "
                                                       f"created ({str(parent)!r} is not a writable directory)")
    if not tor.control_port and find_tor_binary(tor.tor_binary) is None:
        raise config.error("[tor] tor_binary", f"{tor.tor_binary or 'tor'!r} is not an executable on PATH or in "
                                               "/usr/sbin (install tor, or set [tor] control_port)")
