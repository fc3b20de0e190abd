"""
Tests for the C{frostnode} command (L{frostnode.cli}): a member created with
C{init} has protected keys and a config that loads, and the card that
C{card} prints verifies and names those keys.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from frostnode.cli import Options, main
from frostnode.config import load_config
from frostnode.identity import AddressCard
from frostnode.keys import load_host_key, load_noise_key

from tests.test_config import make_federation


def run(*argv: str) -> tuple[int, str, str]:
    """Run the command in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class InitCardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()
        self.base.mkdir()
        self.dir = self.base / "member"

    def test_init_then_card(self) -> None:
        """The card printed for a new member verifies and carries its keys and address."""
        status, out, err = run("init", "--dir", str(self.dir), "--listen", "tcp:9300:interface=127.0.0.1")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(mode(self.dir), 0o700)
        self.assertEqual(mode(self.dir / "host.key"), 0o600)
        self.assertEqual(mode(self.dir / "noise.key"), 0o600)
        host = load_host_key(self.dir / "host.key")
        noise = load_noise_key(self.dir / "noise.key")
        self.assertIn(host.public.hex(), out)

        status, out, err = run("card", "--config", str(self.dir / "node.toml"))
        self.assertEqual((status, err), (0, ""))
        card = AddressCard.from_json(out)  # verifies the binding signature
        self.assertEqual(card.host_key, host.public)
        self.assertEqual(card.noise_key, noise.public)
        self.assertEqual(card.addresses, ("tcp:host=127.0.0.1:port=9300",))
        # Unsigned, for frostnode-client --card: where the client port is.
        self.assertEqual(json.loads(out)["client_addresses"], ["tcp:host=127.0.0.1:port=9001"])

    def test_card_without_client_address(self) -> None:
        """A client port on every interface says nothing about where to connect: no client_addresses."""
        run("init", "--dir", str(self.dir), "--client-listen", "tcp:9301")
        status, out, err = run("card", "--config", str(self.dir / "node.toml"))
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn("client_addresses", json.loads(out))

    def test_init_config_loads(self) -> None:
        run("init", "--dir", str(self.dir), "--address", "tcp:host=192.0.2.7:port=9000",
            "--address", "tor:host=abc.onion:port=9000", "--client-listen", "tcp:9301")
        config = load_config(self.dir / "node.toml")
        self.assertEqual(config.node.data_dir, self.dir)
        self.assertEqual(config.node.host_key_file, self.dir / "host.key")
        self.assertEqual(config.peer.addresses, ("tcp:host=192.0.2.7:port=9000", "tor:host=abc.onion:port=9000"))
        self.assertEqual(config.client.listen, "tcp:9301")
        self.assertEqual(config.federation.members, ())

    def test_init_refuses_to_overwrite(self) -> None:
        run("init", "--dir", str(self.dir))
        before = {p.name: p.read_bytes() for p in self.dir.iterdir()}
        status, out, err = run("init", "--dir", str(self.dir))
        self.assertEqual(status, 1)
        self.assertEqual(err, f"frostnode: {self.dir / 'node.toml'} already exists; "
                              "refusing to overwrite a member's files\n")
        self.assertEqual({p.name: p.read_bytes() for p in self.dir.iterdir()}, before)

    def test_init_refuses_any_existing_key(self) -> None:
        self.dir.mkdir()
        (self.dir / "host.key").write_text("precious\n")
        status, out, err = run("init", "--dir", str(self.dir))
        self.assertEqual(status, 1)
        self.assertIn("host.key already exists", err)
        self.assertEqual((self.dir / "host.key").read_text(), "precious\n")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["host.key"])

    def test_init_needs_an_address(self) -> None:
        """A wildcard listen address says nothing about where to dial: nothing is created."""
        status, out, err = run("init", "--dir", str(self.dir), "--listen", "tcp:9000")
        self.assertEqual(status, 1)
        self.assertEqual(err, f"frostnode: {self.dir / 'node.toml'}: [peer] addresses cannot be derived from "
                              "--listen 'tcp:9000': give --address (where members dial this one)\n")
        self.assertFalse(self.dir.exists())

    def test_init_bad_listen(self) -> None:
        status, out, err = run("init", "--dir", str(self.dir), "--listen", "tcp:nine:interface=127.0.0.1",
                               "--address", "tcp:host=127.0.0.1:port=9")
        self.assertEqual(status, 1)
        self.assertIn("[peer] listen is not a valid listen endpoint", err)
        self.assertFalse(self.dir.exists())

    def test_card_refuses_exposed_key(self) -> None:
        run("init", "--dir", str(self.dir))
        os.chmod(self.dir / "host.key", 0o644)
        status, out, err = run("card", "--config", str(self.dir / "node.toml"))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("[node] host_key_file", err)
        self.assertIn("mode 0644", err)

    def test_card_without_addresses(self) -> None:
        run("init", "--dir", str(self.dir))
        path = self.dir / "node.toml"
        path.write_text(path.read_text().replace('addresses = ["tcp:host=127.0.0.1:port=9000"]', "addresses = []"))
        status, out, err = run("card", "--config", str(path))
        self.assertEqual(status, 1)
        self.assertIn(f"{path}: [peer] addresses is empty", err)

    def test_check(self) -> None:
        paths = make_federation(self.base, 3, 2)
        status, out, err = run("check", "--config", str(paths[1]))
        self.assertEqual((status, err), (0, ""))
        host = load_host_key(paths[1].parent / "host.key")
        self.assertEqual(out, f"{paths[1]}: OK: member {host.public.hex()}, one of 3, threshold 2, "
                              "validation schemes ledger, record\n")

    def test_check_locked_store(self) -> None:
        """A store held by a running node (here: this test) is one line naming the data directory."""
        from frostnode.store.db import Database

        paths = make_federation(self.base, 3, 2)
        db = Database.open(paths[0].parent)
        self.addCleanup(db.close_sync)
        status, out, err = run("check", "--config", str(paths[0]))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"frostnode: {paths[0]}: [node] data_dir store cannot be opened: "
                              f"{paths[0].parent / 'state.lmdb'} is in use by another frostnode process or open store\n")

    def test_check_unknown_scheme(self) -> None:
        paths = make_federation(self.base, 3, 2)
        paths[0].write_text(paths[0].read_text() + '\n[validation]\nschemes = ["record", "tests.nowhere:scheme"]\n')
        status, out, err = run("check", "--config", str(paths[0]))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"frostnode: {paths[0]}: [validation] schemes[1] ('tests.nowhere:scheme') "
                              "module 'tests.nowhere' not found\n")

    def test_check_fresh_member(self) -> None:
        """A member that has no federation yet is told what to add."""
        run("init", "--dir", str(self.dir))
        status, out, err = run("check", "--config", str(self.dir / "node.toml"))
        self.assertEqual(status, 1)
        self.assertIn("[federation] members is empty", err)

    def test_devnet_listed(self) -> None:
        status, out, err = run("devnet", "--nodes", "1")
        self.assertEqual(status, 2)
        self.assertTrue(err.endswith("frostnode: --nodes must be between 2 and 100\n"), err)
        self.assertIn("Start a local federation of twistd processes on loopback.", str(Options()))

    def test_usage_errors(self) -> None:
        for argv, message in [((), "a command is required"), (("init",), "--dir is required"),
                              (("card",), "--config is required"), (("fly",), "Unknown command: fly")]:
            status, out, err = run(*argv)
            self.assertEqual(status, 2, argv)
            self.assertTrue(err.endswith(f"frostnode: {message}\n"), err)


class ConsoleScriptTests(TestCase):
    """The installed C{frostnode} script, as an operator runs it."""

    def test_round_trip(self) -> None:
        script = Path(sys.executable).parent / "frostnode"
        if not script.exists():
            raise SkipTest(f"no frostnode console script beside {sys.executable}")
        member = Path(self.mktemp()).absolute() / "m"
        env = dict(os.environ)

        d = getProcessOutputAndValue(str(script), ["init", "--dir", str(member)], env=env)

        def card(result: tuple[bytes, bytes, int]):
            out, err, code = result
            self.assertEqual((code, err), (0, b""))
            return getProcessOutputAndValue(str(script), ["card", "--config", str(member / "node.toml")], env=env)

        def verify(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual((code, err), (0, b""))
            card = AddressCard.from_json(out.decode())
            self.assertEqual(card.host_key, load_host_key(member / "host.key").public)

        return d.addCallback(card).addCallback(verify)
