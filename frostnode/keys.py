# -*- test-case-name: tests.test_config,tests.test_cli -*-
"""
A member's secret key files: the host key (secp256k1, the member's identity)
and the Noise static key (X25519, bound to the host key by the address card).

File format, chosen so that a human can tell the files apart and a swapped or
truncated file fails with a clear message::

    # frostnode host key (secp256k1). Keep this file secret.
    host-key 5f1c...64 hex digits...

Comment and blank lines are ignored; exactly one C{<kind> <hex>} line must
remain.  L{read_key_file} and L{write_key_file} serve every secret file in
this format, whatever the key's length (the onion service key of
L{frostnode.tor} is 64 bytes).  Files are created with C{O_EXCL} and mode 0600 (never overwritten),
and on load a file that group or others may read or write is I{refused}, as
OpenSSH refuses an unprotected private key: starting a node whose identity
may already have leaked would hide the problem.  The check is made on the
opened file (C{fstat}), so it tests the bytes actually read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from coincurve import PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from frostnode.config import Config
from frostnode.identity import AddressCard, HostKeypair

HOST_KEY_KIND = "host-key"
NOISE_KEY_KIND = "noise-key"
_MAX_KEY_FILE = 4096

_COMMENTS = {
    HOST_KEY_KIND: "frostnode host key (secp256k1): this member's identity. Keep this file secret.",
    NOISE_KEY_KIND: "frostnode Noise static key (X25519), bound to the host key by the address card. Keep this file secret.",
}


class KeyFileError(ValueError):
    """
    A key file that cannot be created or used.

    @ivar path: the file.
    @ivar problem: what is wrong, phrased to follow the path.
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(path, problem)

    def __str__(self) -> str:
        return f"{self.path} {self.problem}"


@dataclass(frozen=True)
class NoiseKeypair:
    """A member's X25519 static key for Noise handshakes (raw 32-byte secret)."""

    secret: bytes

    @classmethod
    def generate(cls) -> "NoiseKeypair":
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @property
    def public(self) -> bytes:
        """The 32-byte public key that goes on the address card."""
        return X25519PrivateKey.from_private_bytes(self.secret).public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"NoiseKeypair(public={self.public.hex()}, secret=<redacted>)"


@dataclass(frozen=True)
class NodeKeys:
    """Both secret keys of this node."""

    host: HostKeypair
    noise: NoiseKeypair


def write_key_file(path: Path, kind: str, secret: bytes, comment: Optional[str] = None) -> None:
    """
    Create C{path} holding C{secret}, owner-only, refusing to replace an
    existing file (an overwritten host key is a lost identity).

    @param kind: the tag of the key's line, which L{read_key_file} checks.
    @param comment: what the C{#} lines above it say (one per line of
        C{comment}); default: this module's text for C{kind}.
    @raise KeyFileError: if the file exists or cannot be created.
    """
    if comment is None:
        comment = _COMMENTS[kind]
    text = "".join(f"# {line}\n" for line in comment.splitlines()) + f"{kind} {secret.hex()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(path, "already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise KeyFileError(path, f"cannot be created: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits, never add them: be exact
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path, kind: str, length: int = 32, name: Optional[str] = None) -> bytes:
    """
    The C{length}-byte secret of kind C{kind} in C{path}, after the
    permission check described in the module docstring.  Only the form is
    checked here: whether the bytes make a valid key is the caller's test.

    @param kind: the tag its line must carry.
    @param name: what the error messages call the key (default C{kind}).
    @raise KeyFileError: naming the file and what is wrong with it.
    """
    if name is None:
        name = kind
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise KeyFileError(path, f"cannot be read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(path, f"is accessible by group or others (mode {mode:04o}); "
                                     f"protect it with: chmod 600 {path}")
        try:
            data = os.read(fd, _MAX_KEY_FILE + 1)
        except OSError as e:
            raise KeyFileError(path, f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        article = "an" if name[:1] in "aeiou" else "a"
        raise KeyFileError(path, f"is too large to be {article} {name} file")
    try:
        lines = [ln.strip() for ln in data.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        raise KeyFileError(path, f"is not a frostnode {name} file (not text)") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    expected = f"a single line '{kind} <{2 * length} hex digits>'"
    if len(lines) != 1:
        raise KeyFileError(path, f"is not a frostnode {name} file (expected {expected})")
    found_kind, _, value = lines[0].partition(" ")
    if found_kind != kind:
        raise KeyFileError(path, f"is not a frostnode {name} file (it holds a {found_kind!r} line; expected {expected})")
    try:
        secret = bytes.fromhex(value.strip())
    except ValueError:
        secret = b""
    if len(secret) != length:
        raise KeyFileError(path, f"has a malformed {name} (expected {expected})")
    return secret


def create_host_key(path: Path) -> HostKeypair:
    """Generate a host key and store it in a new owner-only file at C{path}."""
    host = HostKeypair.generate()
    write_key_file(path, HOST_KEY_KIND, host.secret)
    return host


def load_host_key(path: Path) -> HostKeypair:
    """@raise KeyFileError: if C{path} does not hold a usable host key."""
    secret = read_key_file(path, HOST_KEY_KIND)
    try:
        PrivateKey(secret)
    except ValueError:
        raise KeyFileError(path, "does not hold a valid secp256k1 secret key") from None
    return HostKeypair(secret)


def create_noise_key(path: Path) -> NoiseKeypair:
    """Generate a Noise static key and store it in a new owner-only file at C{path}."""
    noise = NoiseKeypair.generate()
    write_key_file(path, NOISE_KEY_KIND, noise.secret)
    return noise


def load_noise_key(path: Path) -> NoiseKeypair:
    """@raise KeyFileError: if C{path} does not hold a Noise static key."""
    return NoiseKeypair(read_key_file(path, NOISE_KEY_KIND))


def load_node_keys(config: Config) -> NodeKeys:
    """
    Both keys named by C{config}.

    @raise ConfigError: naming the config key of the file at fault.
    """
    try:
        host = load_host_key(config.node.host_key_file)
    except KeyFileError as e:
        raise config.error("[node] host_key_file", str(e)) from None
    try:
        noise = load_noise_key(config.node.noise_key_file)
    except KeyFileError as e:
        raise config.error("[node] noise_key_file", str(e)) from None
    return NodeKeys(host, noise)


def own_card(config: Config, keys: NodeKeys) -> AddressCard:
    """
    This member's signed address card: its keys and C{[peer] addresses}.

    @raise ConfigError: if no address is configured or can be derived.
    """
    if not config.peer.addresses:
        raise config.error("[peer] addresses", f"is empty and cannot be derived from [peer] listen "
                                               f"({config.peer.listen!r}); set the addresses peers should dial")
    return AddressCard.create(keys.host, keys.noise.public, config.peer.addresses)


def check_membership(config: Config, keys: NodeKeys) -> None:
    """
    Check that this node can run in the configured federation: members are
    listed, one of them is this node, and its card carries our Noise key.

    @raise ConfigError: naming C{[federation] members} or the key file.
    """
    directory = config.member_directory()
    me = keys.host.public.hex()
    if not len(directory):
        raise config.error("[federation] members", "is empty: add every member's card "
                                                   "(each member prints its own with: frostnode card --config ...)")
    card = directory.by_host_key(keys.host.public)
    if card is None:
        raise config.error("[federation] members", f"has no card for this node's host key {me} "
                                                   f"(add the output of: frostnode card --config {config.source})")
    if card.noise_key != keys.noise.public:
        raise config.error("[node] noise_key_file", f"holds Noise key {keys.noise.public.hex()} but this node's card "
                                                    f"in [federation] members has {card.noise_key.hex()}")
