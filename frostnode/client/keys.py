# -*- test-case-name: tests.test_client_cli -*-
"""
A client's own Noise static key, and where it lives.

A client is its X25519 static key: the node authenticates it in the Noise
handshake and files the client's records under it (the record's C{client
key}), and per-client limits are counted against it.  Hence:

  - B{Stored key (default).}  Generated on first use and kept in an
    owner-only file, so that a client's records carry one key over time and
    its limits follow it.  The file is C{$FROSTNODE_CLIENT_KEY} if set,
    else C{$XDG_CONFIG_HOME/frostnode/client.key} (C{~/.config/...}); its
    directory is created 0700, the file 0600 with C{O_EXCL}, in the same
    one-line format as a member's key files (C{client-key <64 hex>}), and a
    file that group or others can read is refused, as for the member keys
    (L{frostnode.keys.read_key_file}).
  - B{Ephemeral key} (C{frostnode-client --ephemeral}, or no key file given
    to the library): a fresh key per connection.  Nothing is written; the
    records of two calls cannot be linked by their client key, and each
    call starts with a full rate bucket on the node's side, which is why
    nodes also cap connections.

The key does not sign records: the node vouches for the client key it
authenticated when it files the record, and the replicated log carries the
origin's proof for the slot.  A separate signing key would need a signature
field in the record body that the log does not have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from frostnode.keys import KeyFileError, read_key_file, write_key_file
from frostnode.net.noise import generate_noise_private_key, noise_public_key

CLIENT_KEY_KIND = "client-key"
_COMMENT = "frostnode client key (X25519 Noise static key): this client's identity to nodes. Keep it secret."


def default_key_path(environ: Optional[Mapping[str, str]] = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get("FROSTNODE_CLIENT_KEY")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "frostnode" / "client.key"


def generate_client_key() -> bytes:
    """A fresh X25519 secret (the ephemeral mode)."""
    return generate_noise_private_key()


def client_public_key(private_key: bytes) -> bytes:
    return noise_public_key(private_key)


def load_or_create_client_key(path: Path) -> bytes:
    """
    The client secret in C{path}, creating the file (and its directory,
    owner-only) first if it does not exist.

    @raise KeyFileError: the file is unreadable, malformed or not owner-only.
    """
    path = Path(path)
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise KeyFileError(path.parent, f"cannot be created: {e.strerror}") from None
        secret = generate_client_key()
        try:
            write_key_file(path, CLIENT_KEY_KIND, secret, _COMMENT)
        except KeyFileError:
            if not path.exists():
                raise
            # Another process created it first: use theirs (read below, with every check).
        else:
            return secret
    secret = read_key_file(path, CLIENT_KEY_KIND)
    try:
        X25519PrivateKey.from_private_bytes(secret)
    except ValueError:
        raise KeyFileError(path, "does not hold an X25519 secret key") from None
    return secret
