# -*- test-case-name: tests.test_crypto_nonces -*-
"""
Secret signing nonces that can be used once.

Reusing a FROST nonce pair for two different messages reveals the signer's
secret share, so the pair lives in an object that hands it out exactly once
(L{SecretNonce.consume}) and then forgets it.  Python cannot zeroise ints, but
it can make the object refuse to be copied, pickled or printed, so that a nonce
does not end up in a log, a core dump of a pickle, or a second code path.

Persisting nonces (the preprocessing pool) is the store's job: it keeps the
two scalars under an id and marks the id spent, durably, I{before} the share
computed with it leaves the node.  L{SecretNonce.from_persisted} exists for
that path only.
"""

from __future__ import annotations

from typing import NoReturn

from frostnode.crypto.errors import NonceReuseError


class SecretNonce:
    """
    A (k1, k2) secret nonce pair bound to its public commitment bytes.

    For RFC 9591, k1/k2 are the hiding/binding nonces (d, e) and
    C{commitment} is their 66-byte pair of compressed points; for BIP 445
    they are (k1, k2) and C{commitment} is the 66-byte pubnonce.
    """

    __slots__ = ("_k", "commitment")

    def __init__(self, k1: int, k2: int, commitment: bytes) -> None:
        self._k: tuple[int, int] | None = (k1, k2)
        self.commitment = bytes(commitment)

    @classmethod
    def from_persisted(cls, k1: int, k2: int, commitment: bytes) -> "SecretNonce":
        """
        Rebuild a nonce read back from the preprocessing store.

        Security: the caller must have checked the store's spent flag and must
        mark it spent durably before releasing any share made with it.
        """
        return cls(k1, k2, commitment)

    @property
    def spent(self) -> bool:
        return self._k is None

    def consume(self) -> tuple[int, int]:
        """Return (k1, k2) and forget them; a second call raises L{NonceReuseError}."""
        k = self._k
        if k is None:
            raise NonceReuseError(f"nonce {self.commitment[:8].hex()}... was already used")
        self._k = None
        return k

    def take_for_persistence(self) -> tuple[int, int]:
        """
        Hand the scalars to the preprocessing store and spend this object.

        After this the only usable copy is the store's, which marks it spent
        durably before any share made with it leaves the node; the in-memory
        object can no longer sign (no second live copy).
        """
        return self.consume()

    def peek_for_persistence(self) -> tuple[int, int]:
        """
        The scalars without consuming.  Deprecated: leaves two live copies
        (this object and the stored one); use L{take_for_persistence}.
        """
        if self._k is None:
            raise NonceReuseError(f"nonce {self.commitment[:8].hex()}... was already used")
        return self._k

    def __repr__(self) -> str:
        state = "spent" if self._k is None else "<redacted>"
        return f"SecretNonce({self.commitment.hex()[:16]}..., {state})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretNonce is a single-use secret and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("SecretNonce is a single-use secret and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("SecretNonce is a single-use secret and cannot be copied")
