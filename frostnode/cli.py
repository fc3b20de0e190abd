# -*- test-case-name: tests.test_cli -*-
"""
The C{frostnode} command: set up a member and inspect its configuration.

 - C{frostnode init --dir DIR}: new keys and a commented C{node.toml}.
 - C{frostnode card --config node.toml}: this member's signed address card,
   the JSON other operators list under C{[federation] members}.
 - C{frostnode check --config node.toml}: everything twistd would check
   before starting, without starting.
 - C{frostnode devnet}: a local federation of separate twistd processes
   (L{frostnode.devnet}).

Running the node is twistd's job (C{twistd -n frostnode --config node.toml}),
so that daemonising, pid files and logging stay twistd's standard options.
Errors are one line on stderr and exit status 1 (2 for command-line usage).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from twisted.python import usage

from frostnode.config import Config, ConfigError, config_from_string, derive_address, load_config
from frostnode.identity import AddressCard
from frostnode.keys import KeyFileError, create_host_key, create_noise_key, load_node_keys, own_card

CONFIG_NAME = "node.toml"
HOST_KEY_NAME = "host.key"
NOISE_KEY_NAME = "noise.key"

_TEMPLATE = """\
# frostnode member configuration, written by `frostnode init`.
# Every option and its default is described in docs/configuration.rst.
# Relative paths are relative to the directory holding this file.

[node]
# This member's state (LMDB environments) and, by default, its key files.
data_dir = "."
# host_key_file = "{host_key}"     # secp256k1 identity key (default: data_dir/{host_key})
# noise_key_file = "{noise_key}"   # X25519 Noise static key (default: data_dir/{noise_key})

[peer]
# Where this member accepts connections from the other members (a Twisted
# server endpoint string).
listen = {listen}
# Where the other members dial this one (Twisted client endpoint strings).
# They go on this member's address card: `frostnode card` prints it.
addresses = {addresses}

[federation]
# Every member's address card (this one's included): card file names
# (relative to this file) or inline tables.  Collect them from the operators;
# each prints its own with `frostnode card --config node.toml`.
members = []
# How many members must take part in a signature; required once members
# are listed, at most their number.
# threshold = 2
# ciphersuite = "bip445"           # BIP 445 (Taproot) or "rfc9591"

[client]
# The Noise port clients connect to.
listen = {client_listen}

[log]
format = "text"                    # or "json" (one JSON object per line)
level = "info"                     # debug, info, warn, error, critical
"""


def _toml_string(value: str) -> str:
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(value)


def render_config(listen: str, addresses: Sequence[str], client_listen: str) -> str:
    """The commented C{node.toml} that C{init} writes."""
    return _TEMPLATE.format(
        host_key=HOST_KEY_NAME,
        noise_key=NOISE_KEY_NAME,
        listen=_toml_string(listen),
        addresses="[" + ", ".join(_toml_string(a) for a in addresses) + "]",
        client_listen=_toml_string(client_listen),
    )


def init_member(directory: Path, listen: str, addresses: Sequence[str], client_listen: str,
                out: TextIO) -> Path:
    """
    Create C{directory} (mode 0700) with a new member's key files (0600) and
    a commented config.  Nothing is written unless everything can be: the
    config is validated first and no existing file is replaced.

    @return: the config file's path.
    @raise ConfigError: if the options make an invalid config.
    @raise KeyFileError: if a key file exists or cannot be created.
    """
    config_path = directory / CONFIG_NAME
    if not addresses:
        derived = derive_address(listen)
        if derived is None:
            raise ConfigError(str(config_path), "[peer] addresses",
                              f"cannot be derived from --listen {listen!r}: give --address (where members dial this one)")
        addresses = [derived]
    text = render_config(listen, addresses, client_listen)
    config_from_string(text, str(config_path))  # the options make a valid config, or nothing is written
    for name in (CONFIG_NAME, HOST_KEY_NAME, NOISE_KEY_NAME):
        if (directory / name).exists():
            raise KeyFileError(directory / name, "already exists; refusing to overwrite a member's files")
    if not directory.exists():
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
    host = create_host_key(directory / HOST_KEY_NAME)
    create_noise_key(directory / NOISE_KEY_NAME)
    with open(config_path, "x", encoding="utf-8") as f:
        f.write(text)
    out.write(
        f"Created member {host.public.hex()} in {directory}\n"
        f"  {HOST_KEY_NAME}, {NOISE_KEY_NAME}: secret keys (mode 0600); back up {HOST_KEY_NAME}, it is this member\n"
        f"  {CONFIG_NAME}: configuration\n"
        f"Next: frostnode card --config {config_path} > card.json; exchange cards with the other members,\n"
        f"list them under [federation] members with a threshold, then run:\n"
        f"  twistd -n frostnode --config {config_path}\n"
    )
    return config_path


class InitOptions(usage.Options):
    synopsis = "--dir DIR [--listen ENDPOINT] [--address ADDRESS ...] [--client-listen ENDPOINT]"
    longdesc = "Create a new member: its host and Noise keys (owner-only) and a commented node.toml."
    optParameters = [
        ["dir", "d", None, "Directory to create the member in (created with mode 0700)."],
        ["listen", None, "tcp:9000:interface=127.0.0.1", "Peer port: a Twisted server endpoint string."],
        ["client-listen", None, "tcp:9001:interface=127.0.0.1", "Client port: a Twisted server endpoint string."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["address"] = []

    def opt_address(self, address: str) -> None:
        """Where other members dial this one (repeatable; default: derived from --listen)."""
        self["address"].append(address)

    def postOptions(self) -> None:
        if not self["dir"]:
            raise usage.UsageError("--dir is required")


class _ConfigOptions(usage.Options):
    optParameters = [["config", "c", None, "The node's TOML configuration file (required)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


class CardOptions(_ConfigOptions):
    synopsis = "--config node.toml"
    longdesc = "Print this member's signed address card (JSON) for the other members' configs."


class CheckOptions(_ConfigOptions):
    synopsis = "--config node.toml"
    longdesc = "Check a node's config, data directory, keys and membership, as twistd would, without starting."


class DemoOptions(usage.Options):
    synopsis = "[--members N] [--threshold T] [--message TEXT]"
    longdesc = "Run a real t-of-n DKG and a BIP 445 threshold signature in one process (no network)."
    optParameters = [
        ["members", "n", 5, "Number of members.", int],
        ["threshold", "t", 3, "Signing threshold.", int],
        ["message", "m", "hello from frostnode", "Message to sign."],
    ]

    def postOptions(self) -> None:
        if not 1 <= self["threshold"] <= self["members"] <= 1000:
            raise usage.UsageError("need 1 <= threshold <= members <= 1000")


def _devnet_options() -> usage.Options:
    # Imported when used: frostnode.devnet builds on this module.
    from frostnode.devnet import DevnetOptions

    return DevnetOptions()


class Options(usage.Options):
    synopsis = "Usage: frostnode COMMAND [options]"
    subCommands = [
        ["devnet", None, _devnet_options, "Start a local federation of twistd processes on loopback."],
        ["demo", None, DemoOptions, "Run a DKG and a threshold signature in one process."],
        ["init", None, InitOptions, "Create a new member: keys and a commented node.toml."],
        ["card", None, CardOptions, "Print this member's address card."],
        ["check", None, CheckOptions, "Check a node's configuration without starting it."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def _card(opts: CardOptions, out: TextIO) -> None:
    config = load_config(opts["config"])
    keys = load_node_keys(config)
    out.write(json.dumps(card_document(config, own_card(config, keys)), sort_keys=True) + "\n")


def card_document(config: Config, card: AddressCard) -> dict:
    """
    The card as C{frostnode card} prints it: the signed card, plus an
    unsigned C{client_addresses} list when C{[client] listen} names one
    interface, for C{frostnode-client --card} (the Noise key, which is
    signed, authenticates the node; members ignore the extra field).
    """
    document = card.to_dict()
    client = derive_address(config.client.listen) if config.client.enabled else None
    if client is not None:
        document["client_addresses"] = [client]
    return document


def _check(opts: CheckOptions, out: TextIO) -> None:
    from frostnode.tap import load_node

    config, keys, schemes = load_node(opts["config"])
    directory = config.member_directory()
    out.write(f"{config.source}: OK: member {keys.host.public.hex()}, one of {len(directory)}, "
              f"threshold {config.federation.threshold}, validation schemes {', '.join(sorted(schemes))}\n")


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The C{frostnode} console script; returns the exit status."""
    opts = Options()
    try:
        opts.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        err.write(f"{opts}\nfrostnode: {e}\n")
        return 2
    try:
        if opts.subCommand == "init":
            sub = opts.subOptions
            init_member(Path(sub["dir"]), sub["listen"], sub["address"], sub["client-listen"], out)
        elif opts.subCommand == "card":
            _card(opts.subOptions, out)
        elif opts.subCommand == "check":
            _check(opts.subOptions, out)
        elif opts.subCommand == "devnet":
            from frostnode.devnet import run_devnet

            return run_devnet(opts.subOptions, out, err)
        elif opts.subCommand == "demo":
            from frostnode.demo import run_demo

            sub = opts.subOptions
            if not run_demo(sub["members"], sub["threshold"], sub["message"].encode(), out):
                return 1
    except (ConfigError, KeyFileError) as e:
        err.write(f"frostnode: {e}\n")
        return 1
    return 0

