# -*- test-case-name: tests.test_config -*-
"""
A node's configuration: one TOML file, parsed once, validated completely, and
turned into frozen dataclasses that the rest of the node reads.

Decisions, documented for operators in C{docs/configuration.rst}:

 - Every problem is a L{ConfigError} naming the file and the key
   (C{node.toml: [federation] threshold must be <= number of members (3)}),
   so the twistd plugin can print one line and exit.  Unknown sections and
   keys are errors too: a misspelt option silently falling back to its
   default is worse than refusing to start.
 - Relative paths in the file are resolved against the directory holding the
   file, never against the working directory (twistd may C{chdir} when it
   daemonises).  Key files left unset default to names inside C{data_dir}.
 - Durations are seconds (a number) or strings such as C{"30s"}, C{"14d"},
   C{"1h30m"}; sizes are bytes or strings such as C{"64KiB"}, C{"1MiB"}.
 - Parsing reads the config file and the address-card files it names, and
   nothing else: key files are read by L{frostnode.keys}, so that a command
   that needs no secret (or a test) can load a config on its own.
 - Listen addresses are Twisted server endpoint strings and are checked with
   C{serverFromString}, which builds an endpoint object without using the
   reactor it is given (none exists yet while twistd parses options).

Later layers that need options add a section here: a dataclass, a C{_read_*}
function, its keys in L{SECTIONS} and a paragraph in the documentation.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import InvalidLogLevelError, LogLevel

from frostnode.crypto.bip340 import NETWORK_HRP
from frostnode.identity import AddressCard, InvalidCard, MemberDirectory

CIPHERSUITES = ("bip445", "rfc9591")
#: Bitcoin networks for the federation's P2TR address.
NETWORKS = tuple(NETWORK_HRP)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = tuple(level.name for level in LogLevel.iterconstants())
#: How far ahead of its acknowledged messages a peer's link accepts message
#: ids (L{frostnode.net.peers.LinkConfig.receive_window}): no member may
#: queue more than this many messages for one peer.
PEER_RECEIVE_WINDOW = 131072
#: Bytes of a link message around one broadcast payload (batch header, record
#: header, tag), kept free by C{[limits] max_broadcast_size}.
BROADCAST_FRAMING = 1024
#: Bytes of a broadcast around one log record's payload (the sync batch's
#: header and signature, the record's envelope), kept free by C{[store] max_payload}.
RECORD_FRAMING = 4096
#: The smallest LMDB map the store accepts (L{frostnode.store.db}).
MIN_MAP_SIZE = 64 * 1024


class ConfigError(ValueError):
    """
    A configuration that cannot be used, with the file and key at fault.

    @ivar file: the config file as the operator named it.
    @ivar key: where in the file, e.g. C{"[federation] threshold"}; C{None}
        when the problem is the whole file (missing, not TOML).
    @ivar problem: what is wrong, phrased to follow the key.
    """

    def __init__(self, file: str, key: Optional[str], problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(file, key, problem)

    def __str__(self) -> str:
        if self.key is None:
            return f"{self.file}: {self.problem}"
        return f"{self.file}: {self.key} {self.problem}"


# -- the parsed configuration ------------------------------------------------


@dataclass(frozen=True)
class NodeSection:
    """Where this node keeps its state and its secrets."""

    data_dir: Path
    host_key_file: Path
    noise_key_file: Path


@dataclass(frozen=True)
class PeerSection:
    """The member-to-member port and the link timers."""

    listen: str
    addresses: tuple[str, ...]
    handshake_timeout: float
    idle_timeout: float
    keepalive_interval: float
    max_reconnect_delay: float


@dataclass(frozen=True)
class FederationSection:
    """Who the members are and how many of them must sign."""

    threshold: Optional[int]
    members: tuple[AddressCard, ...]
    ciphersuite: str
    network: str = "mainnet"


@dataclass(frozen=True)
class DkgSection:
    """When key generation runs again and how long its rounds may take."""

    interval: float
    min_spacing: float
    round_timeout: float
    join_grace: float = 600.0
    retry_delay: float = 3600.0
    max_attempts: int = 8


@dataclass(frozen=True)
class ClientSection:
    """The Noise client port and what one client may ask of it."""

    enabled: bool
    listen: str
    max_request_size: int
    max_in_flight: int
    rate: float
    burst: int


@dataclass(frozen=True)
class HttpSection:
    """The local JSON-over-HTTP API."""

    enabled: bool
    listen: str


@dataclass(frozen=True)
class MetricsSection:
    """The Prometheus metrics endpoint."""

    enabled: bool
    listen: str


@dataclass(frozen=True)
class TorSection:
    """
    Onion services and dialing C{.onion} peers.  With no C{control_port} the
    node launches its own C{tor}.
    """

    enabled: bool
    control_port: Optional[str]
    tor_binary: Optional[str]
    data_directory: Path
    socks_port: Optional[str]
    onion_key_file: Path
    onion_port: int
    publish_client: bool
    client_onion_port: int = 9001


@dataclass(frozen=True)
class LogSection:
    """Format and minimum level of the node's log events."""

    format: str
    level: LogLevel


@dataclass(frozen=True)
class LimitsSection:
    """Bounds that keep a hostile or lagging peer from exhausting memory."""

    max_message_size: int
    peer_queue_size: int
    max_pending_broadcasts: int
    max_buffered_messages: int
    max_broadcast_size: int = 2 * 2**20


@dataclass(frozen=True)
class StoreSection:
    """
    The node's LMDB environment and what the replicated log keeps.

    @ivar retention_age: seconds a record is kept after its origin received
        it, or C{None} to keep records regardless of age.
    @ivar retention_per_origin: newest records kept per origin, or C{None}.
    """

    map_size: int
    max_map_size: int
    max_payload: int
    max_range: int
    retention_age: Optional[float]
    retention_per_origin: Optional[int]
    prune_interval: float


@dataclass(frozen=True)
class SigningSection:
    """
    How long signing may take, and the federation's own checkpoints.

    @ivar checkpoint_interval: seconds between checkpoints, or C{None} for none.
    """

    session_timeout: float
    request_timeout: float
    checkpoint_interval: Optional[float]
    misbehaving_for: float = 3600.0
    sign_request_rate: float = 1000.0
    sign_request_burst: int = 2000
    nonce_reuse_after: float = 300.0


@dataclass(frozen=True)
class ValidationSection:
    """The validation schemes this node runs before it signs."""

    schemes: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """
    The whole validated configuration of one node.

    @ivar source: the file as the operator named it, for error messages.
    @ivar path: the same file, absolute.
    """

    source: str
    path: Path
    node: NodeSection
    peer: PeerSection
    federation: FederationSection
    dkg: DkgSection
    client: ClientSection
    http: HttpSection
    metrics: MetricsSection
    tor: TorSection
    log: LogSection
    limits: LimitsSection
    store: StoreSection
    signing: SigningSection
    validation: ValidationSection

    def member_directory(self) -> MemberDirectory:
        """The members named in C{[federation] members} (verified at load)."""
        return MemberDirectory(self.federation.members)

    def error(self, key: Optional[str], problem: str) -> ConfigError:
        """A L{ConfigError} about this file, for checks made after parsing."""
        return ConfigError(self.source, key, problem)


# -- value converters --------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
               "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_duration(value: Any) -> float:
    """
    Seconds from a number of seconds or a string like C{"1h30m"}.

    @raise ValueError: for anything else, negative numbers and booleans included.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration (seconds, or a string like \"30s\" or \"14d\"), not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"must not be negative ({value})")
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        pos, total = 0, 0.0
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if m is None:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
        raise ValueError(f"must be a duration like \"30s\", \"5m\", \"2h\", \"14d\" or \"1h30m\", not {value!r}")
    raise ValueError(f"must be a duration (seconds, or a string like \"30s\" or \"14d\"), not {_kind(value)}")


def parse_size(value: Any) -> int:
    """
    Bytes from an integer or a string like C{"64KiB"} or C{"1MB"}.

    @raise ValueError: for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a size (bytes, or a string like \"64KiB\" or \"1MiB\"), not {_kind(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative ({value})")
        return value
    m = _SIZE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"must be a size like \"65536\", \"64KiB\" or \"1MiB\", not {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def format_size(size: int) -> str:
    """C{size} in the largest binary unit that states it exactly (C{"4KiB"}, C{"1000B"})."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def format_duration(seconds: float) -> str:
    """C{seconds} in the largest unit that states it exactly (C{"14d"}, C{"90s"})."""
    for unit in ("w", "d", "h", "m", "s", "ms"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def _kind(value: Any) -> str:
    """How TOML would name the type of C{value}, for error messages."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    for t, name in names.items():
        if type(value) is t:
            return f"{name} ({value!r})" if t in (bool, int, float, str) else name
    return type(value).__name__


def derive_address(listen: str) -> Optional[str]:
    """
    The address peers can dial for a C{tcp:} listen endpoint bound to one
    specific IPv4 interface, as a Twisted client endpoint string; C{None} when
    the listen string does not say (wildcard interface, other transports).
    """
    parts = listen.split(":")
    if parts[0] != "tcp" or "\\" in listen:
        return None
    port, interface = None, None
    for p in parts[1:]:
        if p.startswith("port="):
            port = p[5:]
        elif p.startswith("interface="):
            interface = p[10:]
        elif "=" not in p and port is None:
            port = p
    if port is None or not port.isdigit() or interface in (None, "", "0.0.0.0"):
        return None
    return f"tcp:host={interface}:port={port}"


# -- the reader ----------------------------------------------------------------


class _Table:
    """
    One section of the file being read, with typed getters.  Its keys are
    declared up front so that a misspelt key is reported as such, before any
    check that its absence would trip.
    """

    def __init__(self, source: str, base: Path, name: str, data: Any, keys: tuple[str, ...]) -> None:
        self.source = source
        self.base = base
        self.name = name
        self.keys = keys
        if not isinstance(data, dict):
            raise ConfigError(source, f"[{name}]", f"must be a table, not {_kind(data)}")
        self.data = data
        for key in data:
            if key not in keys:
                hint = difflib.get_close_matches(key, keys, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(source, f"[{name}]", f"has unknown key {key!r}{suggestion}")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, f"[{self.name}] {key}", problem)

    def _get(self, key: str) -> Any:
        assert key in self.keys, f"[{self.name}] {key} is read but not declared"
        return self.data.get(key)

    def _convert(self, key: str, convert: Callable[[Any], Any], default: Any) -> Any:
        value = self._get(key)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def string(self, key: str, default: Optional[str], choices: Optional[Iterable[str]] = None) -> Optional[str]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_kind(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_kind(value)}")
        return value

    def integer(self, key: str, default: Optional[int], minimum: Optional[int] = None,
                maximum: Optional[int] = None) -> Optional[int]:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum} (got {value})")
        return value

    def number(self, key: str, default: float, positive: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, not {_kind(value)}")
        if value < 0 or (positive and value == 0):
            raise self.error(key, f"must be {'>' if positive else '>='} 0 (got {value})")
        return float(value)

    def duration(self, key: str, default: float, positive: bool = True) -> float:
        seconds = self._convert(key, parse_duration, default)
        if positive and seconds <= 0:
            raise self.error(key, "must be longer than zero")
        return seconds

    def size(self, key: str, default: int, minimum: int = 1) -> int:
        value = self._convert(key, parse_size, default)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum} bytes (got {value})")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list):
            raise self.error(key, f"must be an array of strings, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{key}[{i}]", f"must be a non-empty string, not {_kind(item)}")
        return tuple(value)

    def path(self, key: str, default: Optional[Path], base: Optional[Path] = None) -> Optional[Path]:
        value = self.string(key, None)
        if value is None:
            return default
        if not value:
            raise self.error(key, "must not be empty")
        return (base or self.base) / os.path.expanduser(value)

    def server_endpoint(self, key: str, default: str) -> str:
        value = self.string(key, default)
        try:
            serverFromString(None, value)  # builds, never listens: see module docstring
        except Exception as e:
            raise self.error(key, f"is not a valid listen endpoint ({value!r}: {e})") from None
        return value

    def client_endpoint(self, key: str) -> Optional[str]:
        value = self.string(key, None)
        if not value:
            return None
        try:
            clientFromString(None, value)
        except Exception as e:
            raise self.error(key, f"is not a valid client endpoint ({value!r}: {e})") from None
        return value

    def raw(self, key: str) -> Any:
        return self._get(key)


# -- sections --------------------------------------------------------------------


def _read_node(t: _Table) -> NodeSection:
    data_dir = t.path("data_dir", t.base)
    host = t.path("host_key_file", data_dir / "host.key")
    noise = t.path("noise_key_file", data_dir / "noise.key")
    return NodeSection(data_dir=data_dir, host_key_file=host, noise_key_file=noise)


def _read_peer(t: _Table) -> PeerSection:
    listen = t.server_endpoint("listen", "tcp:9000:interface=127.0.0.1")
    derived = derive_address(listen)
    addresses = t.strings("addresses", (derived,) if derived else ())
    handshake = t.duration("handshake_timeout", 10.0)
    idle = t.duration("idle_timeout", 60.0)
    keepalive = t.duration("keepalive_interval", 15.0)
    if keepalive >= idle:
        raise t.error("keepalive_interval", f"must be shorter than idle_timeout ({format_duration(keepalive)} >= {format_duration(idle)})")
    backoff = t.duration("max_reconnect_delay", 60.0)
    return PeerSection(listen, addresses, handshake, idle, keepalive, backoff)


def _read_card(t: _Table, i: int, entry: Any) -> AddressCard:
    key = f"members[{i}]"
    if isinstance(entry, str):
        card_path = t.base / os.path.expanduser(entry)
        try:
            text = card_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise t.error(key, f"card file {str(card_path)!r} cannot be read: {reason}") from None
        try:
            return AddressCard.from_json(text)
        except InvalidCard as e:
            raise t.error(key, f"card file {str(card_path)!r} is not a valid card: {e}") from None
    if isinstance(entry, dict):
        try:
            return AddressCard.from_dict(entry)
        except InvalidCard as e:
            raise t.error(key, f"is not a valid card: {e}") from None
    raise t.error(key, f"must be a card file name or an inline card table, not {_kind(entry)}")


def _read_federation(t: _Table) -> FederationSection:
    members_raw = t.raw("members")
    if members_raw is None:
        members_raw = []
    if not isinstance(members_raw, list):
        raise t.error("members", f"must be an array of card files or inline cards, not {_kind(members_raw)}")
    cards = tuple(_read_card(t, i, entry) for i, entry in enumerate(members_raw))
    try:
        MemberDirectory(cards)
    except InvalidCard as e:
        raise t.error("members", f"are inconsistent: {e}") from None
    threshold = t.integer("threshold", None, minimum=1)
    if cards and threshold is None:
        raise t.error("threshold", f"must be set when members are listed (there are {len(cards)})")
    if threshold is not None and threshold > len(cards):
        if not cards:
            raise t.error("threshold", "is set but [federation] members is empty")
        raise t.error("threshold", f"must be <= number of members ({len(cards)})")
    ciphersuite = t.string("ciphersuite", "bip445", CIPHERSUITES)
    network = t.string("network", "mainnet", NETWORKS)
    return FederationSection(threshold, cards, ciphersuite, network)


def _read_dkg(t: _Table) -> DkgSection:
    interval = t.duration("interval", 30 * 86400.0)
    spacing = t.duration("min_spacing", 14 * 86400.0, positive=False)
    if interval < spacing:
        raise t.error("interval", f"must not be shorter than min_spacing ({format_duration(interval)} < {format_duration(spacing)})")
    grace = t.duration("join_grace", min(600.0, spacing), positive=False)
    if grace > spacing:
        raise t.error("join_grace", f"must not be longer than min_spacing ({format_duration(grace)} > {format_duration(spacing)})")
    return DkgSection(interval, spacing, t.duration("round_timeout", 120.0), grace,
                      t.duration("retry_delay", 3600.0, positive=False), t.integer("max_attempts", 8, minimum=1))


def _read_client(t: _Table) -> ClientSection:
    return ClientSection(
        enabled=t.boolean("enabled", True),
        listen=t.server_endpoint("listen", "tcp:9001:interface=127.0.0.1"),
        max_request_size=t.size("max_request_size", 2**20),
        max_in_flight=t.integer("max_in_flight", 16, minimum=1),
        rate=t.number("rate", 50.0, positive=True),
        burst=t.integer("burst", 100, minimum=1),
    )


def _read_http(t: _Table) -> HttpSection:
    return HttpSection(t.boolean("enabled", False), t.server_endpoint("listen", "tcp:8080:interface=127.0.0.1"))


def _read_metrics(t: _Table) -> MetricsSection:
    return MetricsSection(t.boolean("enabled", False), t.server_endpoint("listen", "tcp:9102:interface=127.0.0.1"))


def _read_tor(t: _Table, data_dir: Path) -> TorSection:
    return TorSection(
        enabled=t.boolean("enabled", False),
        control_port=t.client_endpoint("control_port"),
        tor_binary=t.string("tor_binary", None) or None,
        data_directory=t.path("data_directory", data_dir / "tor"),
        socks_port=t.client_endpoint("socks_port"),
        onion_key_file=t.path("onion_key_file", data_dir / "onion.key"),
        onion_port=t.integer("onion_port", 9000, minimum=1, maximum=65535),
        publish_client=t.boolean("publish_client", False),
        client_onion_port=t.integer("client_onion_port", 9001, minimum=1, maximum=65535),
    )


def _read_log(t: _Table) -> LogSection:
    fmt = t.string("format", "text", LOG_FORMATS)
    name = t.string("level", "info", LOG_LEVELS)
    try:
        level = LogLevel.levelWithName(name)
    except InvalidLogLevelError:  # pragma: no cover: choices already checked
        raise t.error("level", f"must be one of {', '.join(LOG_LEVELS)}") from None
    return LogSection(fmt, level)


def _read_limits(t: _Table) -> LimitsSection:
    message = t.size("max_message_size", 16 * 2**20, minimum=1024)
    room = message - BROADCAST_FRAMING
    broadcast = t.size("max_broadcast_size", max(min(2 * 2**20, room), 0), minimum=0)
    if broadcast > room:
        raise t.error("max_broadcast_size", f"must be at most max_message_size minus {format_size(BROADCAST_FRAMING)} "
                                            f"({room}), so that a broadcast fits in one link message (got {broadcast})")
    return LimitsSection(
        max_message_size=message,
        peer_queue_size=t.integer("peer_queue_size", 65536, minimum=1, maximum=PEER_RECEIVE_WINDOW),
        max_pending_broadcasts=t.integer("max_pending_broadcasts", 10000, minimum=1),
        max_buffered_messages=t.integer("max_buffered_messages", 1000, minimum=1),
        max_broadcast_size=broadcast,
    )


def _read_store(t: _Table, limits: LimitsSection) -> StoreSection:
    map_size = t.size("map_size", 2**30, minimum=MIN_MAP_SIZE)
    max_map_size = t.size("max_map_size", max(64 * 2**30, map_size), minimum=MIN_MAP_SIZE)
    if max_map_size < map_size:
        raise t.error("max_map_size", f"must not be smaller than map_size ({max_map_size} < {map_size})")
    room = max(limits.max_broadcast_size - RECORD_FRAMING, 0)
    max_payload = t.size("max_payload", min(2**20, room), minimum=0)
    if max_payload > room:
        raise t.error("max_payload", f"must be at most [limits] max_broadcast_size minus {format_size(RECORD_FRAMING)} "
                                     f"({room}), so that a record fits in one broadcast (got {max_payload})")
    age = t.duration("retention_age", 0.0, positive=False)
    per_origin = t.integer("retention_per_origin", 0, minimum=0)
    return StoreSection(
        map_size=map_size,
        max_map_size=max_map_size,
        max_payload=max_payload,
        max_range=t.integer("max_range", 10_000, minimum=1),
        retention_age=age or None,
        retention_per_origin=per_origin or None,
        prune_interval=t.duration("prune_interval", 600.0),
    )


def _read_signing(t: _Table) -> SigningSection:
    session = t.duration("session_timeout", 1.0)
    request = t.duration("request_timeout", 10.0)
    if request < session:
        raise t.error("request_timeout", f"must not be shorter than session_timeout ({format_duration(request)} < {format_duration(session)})")
    checkpoint = t.duration("checkpoint_interval", 0.0, positive=False)
    return SigningSection(
        session, request, checkpoint or None,
        misbehaving_for=t.duration("misbehaving_for", 3600.0),
        sign_request_rate=t.number("sign_request_rate", 1000.0, positive=True),
        sign_request_burst=t.integer("sign_request_burst", 2000, minimum=1),
        nonce_reuse_after=t.duration("nonce_reuse_after", 300.0),
    )


def _read_validation(t: _Table) -> ValidationSection:
    return ValidationSection(t.strings("schemes", ()))


#: Every section and its keys: the reference for unknown-key errors and for
#: C{docs/configuration.rst}.
SECTIONS: dict[str, tuple[str, ...]] = {
    "node": ("data_dir", "host_key_file", "noise_key_file"),
    "peer": ("listen", "addresses", "handshake_timeout", "idle_timeout", "keepalive_interval",
             "max_reconnect_delay"),
    "federation": ("threshold", "members", "ciphersuite", "network"),
    "dkg": ("interval", "min_spacing", "round_timeout", "join_grace", "retry_delay", "max_attempts"),
    "client": ("enabled", "listen", "max_request_size", "max_in_flight", "rate", "burst"),
    "http": ("enabled", "listen"),
    "metrics": ("enabled", "listen"),
    "tor": ("enabled", "control_port", "tor_binary", "data_directory", "socks_port", "onion_key_file",
            "onion_port", "publish_client", "client_onion_port"),
    "log": ("format", "level"),
    "limits": ("max_message_size", "peer_queue_size", "max_pending_broadcasts", "max_buffered_messages",
               "max_broadcast_size"),
    "store": ("map_size", "max_map_size", "max_payload", "max_range", "retention_age", "retention_per_origin",
              "prune_interval"),
    "signing": ("session_timeout", "request_timeout", "checkpoint_interval", "misbehaving_for",
                "sign_request_rate", "sign_request_burst", "nonce_reuse_after"),
    "validation": ("schemes",),
}


# -- entry points -------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read and validate the config file at C{path}.

    @raise ConfigError: naming the file, and the key when there is one.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(source, None, f"cannot read config file: {e.strerror or e}") from None
    return config_from_string(raw, source)


def config_from_string(text: str | bytes, source: str = "node.toml") -> Config:
    """
    Validate C{text} as if it were the file C{source}: relative paths resolve
    against C{source}'s directory.

    @raise ConfigError: naming C{source}, and the key when there is one.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(source, None, f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, None, f"is not valid TOML: {e}") from None
    path = Path(os.path.abspath(source))
    base = path.parent
    for name, value in doc.items():
        if name in SECTIONS:
            continue
        if not isinstance(value, dict):
            raise ConfigError(source, None, f"key {name!r} must be inside a section such as [federation]")
        hint = difflib.get_close_matches(name, SECTIONS, n=1)
        suggestion = f" (did you mean [{hint[0]}]?)" if hint else ""
        raise ConfigError(source, f"[{name}]", f"is not a known section{suggestion}")

    tables = {name: _Table(source, base, name, doc.get(name, {}), keys) for name, keys in SECTIONS.items()}
    node = _read_node(tables["node"])
    limits = _read_limits(tables["limits"])
    config = Config(
        source=source,
        path=path,
        node=node,
        peer=_read_peer(tables["peer"]),
        federation=_read_federation(tables["federation"]),
        dkg=_read_dkg(tables["dkg"]),
        client=_read_client(tables["client"]),
        http=_read_http(tables["http"]),
        metrics=_read_metrics(tables["metrics"]),
        tor=_read_tor(tables["tor"], node.data_dir),
        log=_read_log(tables["log"]),
        limits=limits,
        store=_read_store(tables["store"], limits),
        signing=_read_signing(tables["signing"]),
        validation=_read_validation(tables["validation"]),
    )
    return config


def check_data_dir(config: Config) -> None:
    """
    Check that C{[node] data_dir} exists and is a writable directory.  It is
    never created here: L{frostnode.cli} C{init} creates it, with the keys, so
    that a typo in the path fails loudly instead of starting a new identity.

    @raise ConfigError: naming C{[node] data_dir}.
    """
    d = config.node.data_dir
    if not d.exists():
        raise config.error("[node] data_dir", f"{str(d)!r} does not exist (create it with: frostnode init --dir {d})")
    if not d.is_dir():
        raise config.error("[node] data_dir", f"{str(d)!r} is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise config.error("[node] data_dir", f"{str(d)!r} is not writable by this user")

