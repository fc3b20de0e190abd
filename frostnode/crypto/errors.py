"""
The two kinds of cryptographic failure, kept apart as the BIP reference code does.

- C{ValueError} (and its subclass L{InvalidEncoding}): the I{caller} broke a
  precondition, or bytes from an unknown source were malformed.  Nobody is
  blamed.
- L{ProtocolError} subclasses: a I{participant} misbehaved.  Each carries the
  culprit(s) so the network layer can log and exclude them by name.

Culprits are whatever identifies a participant in the calling context: a FROST
identifier (int), a 0-based BIP 445 signer id, or a host key.  The crypto
layer never guesses; it attaches the identifier it was given.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional, Sequence


class InvalidEncoding(ValueError):
    """Bytes that do not decode to a valid object of the expected kind."""


class ProtocolError(Exception):
    """A participant sent something that proves it (or its link) misbehaved."""

    def __init__(self, culprit: Optional[Hashable], message: str = "") -> None:
        self.culprit = culprit
        super().__init__(culprit, message)
        self.message = message

    @property
    def culprits(self) -> list[Any]:
        return [] if self.culprit is None else [self.culprit]

    def __str__(self) -> str:
        who = "unknown participant" if self.culprit is None else f"participant {self.culprit!r}"
        return f"{type(self).__name__}: {who}: {self.message}" if self.message else f"{type(self).__name__}: {who}"


class InvalidContributionError(ProtocolError):
    """
    BIP 445's error: signer C{signer_index} (None if unknown) sent a bad
    C{contrib} ("pubnonce", "aggnonce", "aggothernonce" or "psig").
    """

    def __init__(self, signer_index: Optional[int], contrib: str) -> None:
        super().__init__(signer_index, f"invalid {contrib}")
        self.signer_index = signer_index
        self.contrib = contrib


class InvalidProofOfKnowledge(ProtocolError):
    """A DKG round-1 package whose Schnorr proof of knowledge does not verify."""


class InvalidSecretShare(ProtocolError):
    """A DKG round-2 share that does not match its sender's commitments."""


class InvalidCommitment(ProtocolError):
    """A malformed or wrongly sized commitment or nonce commitment."""


class InvalidSignatureShare(ProtocolError):
    """One or more signature shares failed verification; all culprits are named."""

    def __init__(self, culprits: Sequence[Hashable], message: str = "") -> None:
        super().__init__(culprits[0] if culprits else None, message)
        self._culprits = list(culprits)

    @property
    def culprits(self) -> list[Any]:
        return list(self._culprits)

    def __str__(self) -> str:
        return f"InvalidSignatureShare: participants {self._culprits!r}" + (f": {self.message}" if self.message else "")


class NonceReuseError(Exception):
    """A single-use secret nonce was asked for a second time."""
