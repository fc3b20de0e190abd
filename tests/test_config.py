"""
Tests for L{frostnode.config} and the key-file checks of L{frostnode.keys}:
configurations as data, and for every kind of mistake, the one line an
operator would read.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from frostnode.cli import init_member
from frostnode.config import (
    Config,
    ConfigError,
    check_data_dir,
    config_from_string,
    derive_address,
    load_config,
    parse_duration,
    parse_size,
)
from frostnode.identity import AddressCard, HostKeypair
from frostnode.keys import NoiseKeypair, check_membership, load_node_keys, own_card


def make_card(port: int = 9000) -> AddressCard:
    """A valid card for a fresh, throw-away member."""
    return AddressCard.create(HostKeypair.generate(), NoiseKeypair.generate().public, [f"tcp:host=127.0.0.1:port={port}"])


def make_federation(base: Path, n: int, threshold: int, log_format: str = "text") -> list[Path]:
    """
    C{n} members initialised by C{frostnode init} under C{base}, each config
    listing every member's card file: a federation ready to start.

    @return: the members' config files.
    """
    base = base.absolute()
    configs = []
    for i in range(n):
        port = 20000 + (os.getpid() % 1000) * 10 + i
        configs.append(init_member(base / f"m{i}", f"tcp:{port}:interface=127.0.0.1", [],
                                   f"tcp:{port + 5000}:interface=127.0.0.1", io.StringIO()))
    cards = []
    for i, path in enumerate(configs):
        config = load_config(path)
        card_path = base / f"m{i}.card.json"
        card_path.write_text(own_card(config, load_node_keys(config)).to_json())
        cards.append(str(card_path))
    for path in configs:
        text = path.read_text()
        text = text.replace("members = []", f"members = {json.dumps(cards)}\nthreshold = {threshold}")
        text = text.replace('format = "text"', f'format = "{log_format}"')
        path.write_text(text)
    return configs


class ValueTests(SynchronousTestCase):
    """Durations, sizes and derived addresses, as an operator writes them."""

    def test_durations(self) -> None:
        for text, seconds in [(90, 90.0), (0.5, 0.5), ("30s", 30.0), ("14d", 14 * 86400.0),
                              ("1h30m", 5400.0), ("250ms", 0.25), ("2w", 14 * 86400.0), ("1.5h", 5400.0)]:
            self.assertEqual(parse_duration(text), seconds, text)

    def test_bad_durations(self) -> None:
        for bad in ["", "14", "14 days", "d", "-3s", True, -1, [1]]:
            self.assertRaises(ValueError, parse_duration, bad)

    def test_sizes(self) -> None:
        for text, size in [(65536, 65536), ("64KiB", 65536), ("1MiB", 2**20), ("1MB", 10**6), ("512B", 512),
                           ("2 GiB", 2 * 2**30)]:
            self.assertEqual(parse_size(text), size, text)

    def test_bad_sizes(self) -> None:
        for bad in ["1.5MiB", "1 parsec", "", -5, 1.0, False]:
            self.assertRaises(ValueError, parse_size, bad)

    def test_derive_address(self) -> None:
        self.assertEqual(derive_address("tcp:9000:interface=10.1.2.3"), "tcp:host=10.1.2.3:port=9000")
        self.assertEqual(derive_address("tcp:port=9000:interface=127.0.0.1"), "tcp:host=127.0.0.1:port=9000")
        self.assertIsNone(derive_address("tcp:9000"))
        self.assertIsNone(derive_address("tcp:9000:interface=0.0.0.0"))
        self.assertIsNone(derive_address("unix:/tmp/sock"))


class GoodConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "node.toml"

    def load(self, text: str) -> Config:
        self.path.write_text(text)
        return load_config(self.path)

    def test_defaults(self) -> None:
        """An empty file is a valid (if not yet runnable) configuration."""
        c = self.load("")
        self.assertEqual(c.source, str(self.path))
        self.assertEqual(c.node.data_dir, self.dir.absolute())
        self.assertEqual(c.node.host_key_file, self.dir.absolute() / "host.key")
        self.assertEqual(c.node.noise_key_file, self.dir.absolute() / "noise.key")
        self.assertEqual(c.peer.listen, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(c.peer.addresses, ("tcp:host=127.0.0.1:port=9000",))
        self.assertEqual(c.federation.members, ())
        self.assertIsNone(c.federation.threshold)
        self.assertEqual(c.federation.ciphersuite, "bip445")
        self.assertEqual(c.dkg.min_spacing, 14 * 86400)
        self.assertEqual(c.client.max_request_size, 2**20)
        self.assertFalse(c.http.enabled)
        self.assertEqual(c.http.listen, "tcp:8080:interface=127.0.0.1")
        self.assertFalse(c.metrics.enabled)
        self.assertFalse(c.tor.enabled)
        self.assertIsNone(c.tor.control_port)
        self.assertEqual(c.tor.onion_key_file, self.dir.absolute() / "onion.key")
        self.assertEqual((c.log.format, c.log.level), ("text", LogLevel.info))
        self.assertEqual(c.validation.schemes, ())
        self.assertEqual((c.limits.max_message_size, c.limits.peer_queue_size), (16 * 2**20, 65536))
        self.assertEqual(c.limits.max_broadcast_size, 2 * 2**20)
        self.assertEqual((c.store.map_size, c.store.max_map_size), (2**30, 64 * 2**30))
        self.assertEqual((c.store.max_payload, c.store.max_range), (2**20, 10_000))
        self.assertEqual((c.store.retention_age, c.store.retention_per_origin, c.store.prune_interval),
                         (None, None, 600.0))

    def test_everything_set(self) -> None:
        cards = [make_card(9000 + i) for i in range(4)]
        (self.dir / "cards").mkdir()
        for i, card in enumerate(cards[:3]):
            (self.dir / "cards" / f"{i}.json").write_text(card.to_json())
        inline = cards[3].to_dict()
        inline_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in inline.items())
        c = self.load(f"""
[node]
data_dir = "state"
host_key_file = "/etc/frostnode/host.key"
noise_key_file = "secrets/noise.key"

[peer]
listen = "tcp:9000"
addresses = ["tcp:host=192.0.2.7:port=9000", "tor:host=abc.onion:port=9000"]
handshake_timeout = 5
idle_timeout = "2m"
keepalive_interval = "20s"
max_reconnect_delay = "5m"

[federation]
members = ["cards/0.json", "cards/1.json", "cards/2.json", {{ {inline_toml} }}]
threshold = 3
ciphersuite = "rfc9591"

[dkg]
interval = "60d"
min_spacing = "1w"
round_timeout = "1h30m"

[client]
enabled = false
listen = "unix:/tmp/frostnode-client.sock"
max_request_size = "256KiB"
max_in_flight = 4
rate = 2.5
burst = 10

[http]
enabled = true
listen = "tcp:8081:interface=127.0.0.1"

[metrics]
enabled = true
listen = "tcp:9103"

[tor]
enabled = true
control_port = "unix:/run/tor/control"
tor_binary = "/usr/sbin/tor"
data_directory = "tor-state"
socks_port = "tcp:127.0.0.1:9050"
onion_key_file = "onion.key"
onion_port = 19000
publish_client = true

[log]
format = "json"
level = "debug"

[limits]
max_message_size = "4MiB"
peer_queue_size = 50
max_pending_broadcasts = 60
max_buffered_messages = 70
max_broadcast_size = "1MiB"

[store]
map_size = "256MiB"
max_map_size = "8GiB"
max_payload = "512KiB"
max_range = 500
retention_age = "90d"
retention_per_origin = 1000000
prune_interval = "1h"

[validation]
schemes = ["accept-all", "utxo"]
""")
        base = self.dir.absolute()
        self.assertEqual(c.node.data_dir, base / "state")
        self.assertEqual(c.node.host_key_file, Path("/etc/frostnode/host.key"))
        self.assertEqual(c.node.noise_key_file, base / "secrets" / "noise.key")
        self.assertEqual(c.peer.addresses, ("tcp:host=192.0.2.7:port=9000", "tor:host=abc.onion:port=9000"))
        self.assertEqual((c.peer.handshake_timeout, c.peer.idle_timeout, c.peer.keepalive_interval,
                          c.peer.max_reconnect_delay), (5.0, 120.0, 20.0, 300.0))
        self.assertEqual(set(c.federation.members), set(cards))
        self.assertEqual(c.member_directory().host_keys(), sorted(card.host_key for card in cards))
        self.assertEqual((c.federation.threshold, c.federation.ciphersuite), (3, "rfc9591"))
        self.assertEqual((c.dkg.interval, c.dkg.min_spacing, c.dkg.round_timeout), (60 * 86400.0, 7 * 86400.0, 5400.0))
        self.assertEqual(c.client.listen, "unix:/tmp/frostnode-client.sock")
        self.assertEqual((c.client.enabled, c.client.max_request_size, c.client.max_in_flight, c.client.rate,
                          c.client.burst), (False, 256 * 1024, 4, 2.5, 10))
        self.assertEqual((c.http.enabled, c.http.listen), (True, "tcp:8081:interface=127.0.0.1"))
        self.assertEqual((c.metrics.enabled, c.metrics.listen), (True, "tcp:9103"))
        self.assertEqual(c.tor.control_port, "unix:/run/tor/control")
        self.assertEqual(c.tor.data_directory, base / "tor-state")
        self.assertEqual(c.tor.onion_key_file, base / "onion.key")
        self.assertEqual((c.tor.enabled, c.tor.tor_binary, c.tor.socks_port, c.tor.onion_port, c.tor.publish_client),
                         (True, "/usr/sbin/tor", "tcp:127.0.0.1:9050", 19000, True))
        self.assertEqual((c.log.format, c.log.level), ("json", LogLevel.debug))
        self.assertEqual((c.limits.max_message_size, c.limits.peer_queue_size, c.limits.max_pending_broadcasts,
                          c.limits.max_buffered_messages, c.limits.max_broadcast_size), (4 * 2**20, 50, 60, 70, 2**20))
        self.assertEqual((c.store.map_size, c.store.max_map_size, c.store.max_payload, c.store.max_range),
                         (256 * 2**20, 8 * 2**30, 512 * 1024, 500))
        self.assertEqual((c.store.retention_age, c.store.retention_per_origin, c.store.prune_interval),
                         (90 * 86400.0, 1_000_000, 3600.0))
        self.assertEqual(c.validation.schemes, ("accept-all", "utxo"))

    def test_key_defaults_follow_data_dir(self) -> None:
        c = self.load('[node]\ndata_dir = "/var/lib/frostnode"\n')
        self.assertEqual(c.node.host_key_file, Path("/var/lib/frostnode/host.key"))
        self.assertEqual(c.tor.onion_key_file, Path("/var/lib/frostnode/onion.key"))

    def test_frozen(self) -> None:
        c = self.load("")
        self.assertRaises(AttributeError, setattr, c.peer, "listen", "tcp:1")


class BadConfigTests(SynchronousTestCase):
    """Each mistake gives exactly one line naming the file and the key."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "node.toml"
        self.cards = [make_card(9000 + i) for i in range(3)]
        for i, card in enumerate(self.cards):
            (self.dir / f"card{i}.json").write_text(card.to_json())
        self.members = 'members = ["card0.json", "card1.json", "card2.json"]'

    def assertBad(self, text: str | bytes, key: str | None, problem: str) -> ConfigError:
        """C{text} as node.toml is refused with exactly this key and problem."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.path.write_bytes(text)
        e = self.assertRaises(ConfigError, load_config, self.path)
        self.assertEqual((e.file, e.key, e.problem), (str(self.path), key, problem))
        self.assertIsInstance(e, ValueError)
        line = str(e)
        self.assertNotIn("\n", line)
        self.assertTrue(line.startswith(f"{self.path}: "), line)
        if key is not None:
            self.assertIn(key, line)
        return e

    def test_missing_file(self) -> None:
        missing = self.dir / "nope.toml"
        e = self.assertRaises(ConfigError, load_config, missing)
        self.assertEqual(str(e), f"{missing}: cannot read config file: No such file or directory")

    def test_directory_as_file(self) -> None:
        e = self.assertRaises(ConfigError, load_config, self.dir)
        self.assertEqual(str(e), f"{self.dir}: cannot read config file: Is a directory")

    def test_toml_syntax(self) -> None:
        e = self.assertBad("[peer]\nlisten = tcp:9000\n", None,
                           "is not valid TOML: Invalid value (at line 2, column 10)")
        self.assertEqual(str(e), f"{self.path}: is not valid TOML: Invalid value (at line 2, column 10)")

    def test_not_utf8(self) -> None:
        self.assertBad(b"[peer]\nlisten = \"\xff\"\n", None, "is not UTF-8 text (invalid start byte at byte 17)")

    def test_threshold_above_members(self) -> None:
        e = self.assertBad(f"[federation]\n{self.members}\nthreshold = 4\n", "[federation] threshold",
                           "must be <= number of members (3)")
        self.assertEqual(str(e), f"{self.path}: [federation] threshold must be <= number of members (3)")

    def test_threshold_zero(self) -> None:
        self.assertBad(f"[federation]\n{self.members}\nthreshold = 0\n", "[federation] threshold",
                       "must be >= 1 (got 0)")

    def test_threshold_missing(self) -> None:
        self.assertBad(f"[federation]\n{self.members}\n", "[federation] threshold",
                       "must be set when members are listed (there are 3)")

    def test_threshold_without_members(self) -> None:
        self.assertBad("[federation]\nthreshold = 2\n", "[federation] threshold",
                       "is set but [federation] members is empty")

    def test_wrong_types(self) -> None:
        cases = [
            (f'[federation]\n{self.members}\nthreshold = "2"\n', "[federation] threshold",
             "must be an integer, not a string ('2')"),
            (f"[federation]\n{self.members}\nthreshold = 2.0\n", "[federation] threshold",
             "must be an integer, not a float (2.0)"),
            (f"[federation]\n{self.members}\nthreshold = true\n", "[federation] threshold",
             "must be an integer, not a boolean (True)"),
            ("[peer]\nlisten = 9000\n", "[peer] listen", "must be a string, not an integer (9000)"),
            ('[peer]\naddresses = "tcp:host=h:port=1"\n', "[peer] addresses",
             "must be an array of strings, not a string ('tcp:host=h:port=1')"),
            ("[peer]\naddresses = [1]\n", "[peer] addresses[0]", "must be a non-empty string, not an integer (1)"),
            ('[http]\nenabled = "yes"\n', "[http] enabled", "must be true or false, not a string ('yes')"),
            ('[federation]\nmembers = "card0.json"\n', "[federation] members",
             "must be an array of card files or inline cards, not a string ('card0.json')"),
            ("[federation]\nmembers = [3]\n", "[federation] members[0]",
             "must be a card file name or an inline card table, not an integer (3)"),
            ("[dkg]\nmin_spacing = true\n", "[dkg] min_spacing",
             'must be a duration (seconds, or a string like "30s" or "14d"), not a boolean'),
            ('[dkg]\nround_timeout = "soon"\n', "[dkg] round_timeout",
             'must be a duration like "30s", "5m", "2h", "14d" or "1h30m", not \'soon\''),
            ("[dkg]\nround_timeout = 0\n", "[dkg] round_timeout", "must be longer than zero"),
            ("[dkg]\nround_timeout = -5\n", "[dkg] round_timeout", "must not be negative (-5)"),
            ('[limits]\nmax_message_size = "lots"\n', "[limits] max_message_size",
             "must be a size like \"65536\", \"64KiB\" or \"1MiB\", not 'lots'"),
            ("[limits]\nmax_message_size = 10\n", "[limits] max_message_size", "must be at least 1024 bytes (got 10)"),
            ('[client]\nrate = "fast"\n', "[client] rate", "must be a number, not a string ('fast')"),
            ("[client]\nrate = 0\n", "[client] rate", "must be > 0 (got 0)"),
            ("[tor]\nonion_port = 70000\n", "[tor] onion_port", "must be <= 65535 (got 70000)"),
            ("[limits]\npeer_queue_size = 200000\n", "[limits] peer_queue_size", "must be <= 131072 (got 200000)"),
            ('[log]\nlevel = "verbose"\n', "[log] level",
             "must be one of 'debug', 'info', 'warn', 'error', 'critical', not 'verbose'"),
            ('[log]\nformat = "xml"\n', "[log] format", "must be one of 'text', 'json', not 'xml'"),
            ('[federation]\nciphersuite = "ed25519"\n', "[federation] ciphersuite",
             "must be one of 'bip445', 'rfc9591', not 'ed25519'"),
            ('[node]\ndata_dir = ""\n', "[node] data_dir", "must not be empty"),
            ("threshold = 3\n", None, "key 'threshold' must be inside a section such as [federation]"),
            ("peer = 3\n", "[peer]", "must be a table, not an integer (3)"),
            ("[log]\n[log.extra]\nx = 1\n", "[log]", "has unknown key 'extra'"),
        ]
        for text, key, problem in cases:
            self.assertBad(text, key, problem)

    def test_unknown_key(self) -> None:
        e = self.assertBad(f"[federation]\n{self.members}\ntreshold = 2\n", "[federation]",
                           "has unknown key 'treshold' (did you mean 'threshold'?)")
        self.assertEqual(str(e), f"{self.path}: [federation] has unknown key 'treshold' (did you mean 'threshold'?)")

    def test_unknown_section(self) -> None:
        self.assertBad("[nodes]\ndata_dir = '.'\n", "[nodes]", "is not a known section (did you mean [node]?)")
        self.assertBad("[bitcoin]\nrpc = 1\n", "[bitcoin]", "is not a known section")

    def test_invalid_endpoints(self) -> None:
        self.assertBad('[peer]\nlisten = "tcpp:9000"\n', "[peer] listen",
                       "is not a valid listen endpoint ('tcpp:9000': Unknown endpoint type: 'tcpp')")
        self.assertBad('[http]\nlisten = "tcp:http"\n', "[http] listen",
                       "is not a valid listen endpoint ('tcp:http': invalid literal for int() with base 10: 'http')")
        self.assertBad('[tor]\ncontrol_port = "carrier-pigeon:1"\n', "[tor] control_port",
                       "is not a valid client endpoint ('carrier-pigeon:1': Unknown endpoint type: 'carrier-pigeon')")

    def test_inconsistent_sizes(self) -> None:
        """Sizes that cannot nest (a record in a broadcast in a link message) name the key to change."""
        self.assertBad('[limits]\nmax_message_size = "64KiB"\nmax_broadcast_size = "64KiB"\n',
                       "[limits] max_broadcast_size",
                       "must be at most max_message_size minus 1KiB (64512), so that a broadcast fits in one link "
                       "message (got 65536)")
        self.assertBad('[store]\nmax_payload = "2MiB"\n', "[store] max_payload",
                       "must be at most [limits] max_broadcast_size minus 4KiB (2093056), so that a record fits in "
                       "one broadcast (got 2097152)")
        self.assertBad('[store]\nmap_size = "2GiB"\nmax_map_size = "1GiB"\n', "[store] max_map_size",
                       "must not be smaller than map_size (1073741824 < 2147483648)")
        self.assertBad('[store]\nmap_size = 4096\n', "[store] map_size", "must be at least 65536 bytes (got 4096)")
        self.assertBad('[store]\nretention_per_origin = -1\n', "[store] retention_per_origin", "must be >= 0 (got -1)")

    def test_sizes_follow_smaller_messages(self) -> None:
        """Shrinking the link messages shrinks the defaults under them instead of failing."""
        self.path.write_text('[limits]\nmax_message_size = "64KiB"\n')
        c = load_config(self.path)
        self.assertEqual((c.limits.max_broadcast_size, c.store.max_payload), (63 * 1024, 59 * 1024))

    def test_inconsistent_timers(self) -> None:
        self.assertBad('[peer]\nidle_timeout = "10s"\nkeepalive_interval = "10s"\n', "[peer] keepalive_interval",
                       "must be shorter than idle_timeout (10s >= 10s)")
        self.assertBad('[dkg]\ninterval = "7d"\n', "[dkg] interval", "must not be shorter than min_spacing (1w < 2w)")

    def test_card_problems(self) -> None:
        self.assertBad('[federation]\nmembers = ["card0.json", "gone.json"]\nthreshold = 1\n',
                       "[federation] members[1]",
                       f"card file '{self.dir.absolute() / 'gone.json'}' cannot be read: No such file or directory")
        (self.dir / "junk.json").write_text("not json")
        self.assertBad('[federation]\nmembers = ["junk.json"]\nthreshold = 1\n', "[federation] members[0]",
                       f"card file '{self.dir.absolute() / 'junk.json'}' is not a valid card: "
                       "card is not JSON: Expecting value: line 1 column 1 (char 0)")
        forged = dict(self.cards[0].to_dict(), addresses=["tcp:host=evil:port=1"])
        inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in forged.items())
        self.assertBad(f"[federation]\nmembers = [{{ {inline} }}]\nthreshold = 1\n", "[federation] members[0]",
                       f"is not a valid card: card for host key {self.cards[0].host_key.hex()} "
                       "has an invalid binding signature")
        self.assertBad('[federation]\nmembers = ["card0.json", "card0.json"]\nthreshold = 1\n',
                       "[federation] members",
                       f"are inconsistent: two cards for host key {self.cards[0].host_key.hex()}")


class NodeFilesTests(SynchronousTestCase):
    """The data directory, key files and membership, as checked at start."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.paths = make_federation(self.base, 3, 2)
        self.config = load_config(self.paths[0])
        self.member = self.base / "m0"

    def assertKeyError(self, config: Config, key: str, problem: str) -> None:
        e = self.assertRaises(ConfigError, load_node_keys, config)
        self.assertEqual(str(e), f"{config.source}: {key} {problem}")

    def test_good(self) -> None:
        check_data_dir(self.config)
        keys = load_node_keys(self.config)
        check_membership(self.config, keys)
        self.assertIn(keys.host.public, self.config.member_directory())
        self.assertNotIn(keys.host.secret.hex(), repr(keys))
        self.assertNotIn(keys.noise.secret.hex(), repr(keys))

    def test_missing_data_dir(self) -> None:
        config = config_from_string('[node]\ndata_dir = "elsewhere"\n', str(self.paths[0]))
        e = self.assertRaises(ConfigError, check_data_dir, config)
        where = self.member.absolute() / "elsewhere"
        self.assertEqual(str(e), f"{self.paths[0]}: [node] data_dir '{where}' does not exist "
                                 f"(create it with: frostnode init --dir {where})")

    def test_missing_key_file(self) -> None:
        (self.member / "host.key").unlink()
        self.assertKeyError(self.config, "[node] host_key_file",
                            f"{self.config.node.host_key_file} cannot be read: No such file or directory")

    def test_unreadable_key_file(self) -> None:
        """
        A key path that cannot be read as a file.  (A mode-000 file would do
        for most users, but not for root, who runs these tests in CI.)
        """
        (self.member / "noise.key").unlink()
        (self.member / "noise.key").mkdir()
        self.assertKeyError(self.config, "[node] noise_key_file",
                            f"{self.config.node.noise_key_file} is not a regular file")

    def test_group_readable_key_file(self) -> None:
        path = self.config.node.host_key_file
        for mode in (0o640, 0o604, 0o620):
            os.chmod(path, mode)
            self.assertKeyError(self.config, "[node] host_key_file",
                                f"{path} is accessible by group or others (mode {mode:04o}); "
                                f"protect it with: chmod 600 {path}")

    def test_garbage_key_file(self) -> None:
        path = self.config.node.host_key_file
        for content, problem in [
            (b"\x00\xff" * 20, "is not a frostnode host-key file (not text)"),
            (b"hello\n", "is not a frostnode host-key file (it holds a 'hello' line; "
                         "expected a single line 'host-key <64 hex digits>')"),
            (b"host-key abcd\n", "has a malformed host-key (expected a single line 'host-key <64 hex digits>')"),
            (b"host-key " + b"zz" * 32 + b"\n", "has a malformed host-key "
                                               "(expected a single line 'host-key <64 hex digits>')"),
            (b"# nothing\n", "is not a frostnode host-key file "
                             "(expected a single line 'host-key <64 hex digits>')"),
            (b"host-key " + b"00" * 32 + b"\n", "does not hold a valid secp256k1 secret key"),
            (b"host-key " + b"ff" * 32 + b"\n", "does not hold a valid secp256k1 secret key"),
            (b"x" * 5000, "is too large to be a host-key file"),
        ]:
            path.write_bytes(content)
            self.assertKeyError(self.config, "[node] host_key_file", f"{path} {problem}")

    def test_swapped_key_files(self) -> None:
        config = config_from_string('[node]\nhost_key_file = "noise.key"\n', str(self.paths[0]))
        self.assertKeyError(config, "[node] host_key_file",
                            f"{config.node.host_key_file} is not a frostnode host-key file (it holds a 'noise-key' "
                            "line; expected a single line 'host-key <64 hex digits>')")

    def test_no_members(self) -> None:
        config = config_from_string("", str(self.paths[0]))
        e = self.assertRaises(ConfigError, check_membership, config, load_node_keys(config))
        self.assertEqual(e.key, "[federation] members")
        self.assertIn("is empty", str(e))

    def test_not_a_member(self) -> None:
        """A node whose card is missing from its own member list."""
        others = load_config(self.paths[1])
        keys = load_node_keys(self.config)
        members = [c for c in others.federation.members if c.host_key != keys.host.public]
        config = _with_members(self.config, members, 2)
        e = self.assertRaises(ConfigError, check_membership, config, keys)
        self.assertEqual(str(e), f"{self.paths[0]}: [federation] members has no card for this node's host key "
                                 f"{keys.host.public.hex()} (add the output of: frostnode card --config {self.paths[0]})")

    def test_card_with_another_noise_key(self) -> None:
        keys = load_node_keys(self.config)
        stale = AddressCard.create(keys.host, NoiseKeypair.generate().public, ["tcp:host=127.0.0.1:port=1"])
        members = [c for c in self.config.federation.members if c.host_key != keys.host.public] + [stale]
        e = self.assertRaises(ConfigError, check_membership, _with_members(self.config, members, 2), keys)
        self.assertEqual(e.key, "[node] noise_key_file")
        self.assertIn(stale.noise_key.hex(), str(e))


def _with_members(config: Config, members: Sequence[AddressCard], threshold: int) -> Config:
    inline = ", ".join("{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c.to_dict().items()) + " }"
                       for c in members)
    return config_from_string(f"[federation]\nmembers = [{inline}]\nthreshold = {threshold}\n", config.source)

