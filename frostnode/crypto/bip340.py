# -*- test-case-name: tests.test_crypto_bip340 -*-
"""
BIP340 signatures and the BIP341/BIP350 pieces a Taproot key needs.

Signing and verification are libsecp256k1's, through coincurve.  coincurve's
C{PrivateKey.sign_schnorr} only takes 32-byte messages; BIP340 allows any
length (and its test vectors use 0, 1, 17 and 100 bytes), so other lengths go
through the same library's C{secp256k1_schnorrsig_sign_custom} via coincurve's
cffi binding.  Verification (C{PublicKeyXOnly.verify}) already takes any length.

Taproot (BIP341): L{taptweak} is C{hash_TapTweak(P || merkle_root)},
L{taproot_output_key} is C{lift_x(P) + t*G} in x-only form with its parity,
and L{taproot_tweak_seckey} is the matching secret-key tweak used for
key-path spends.  A key path only output (BIP86) has no merkle root.

Addresses (BIP350): python-bitcoinlib 0.12 implements only BIP173 bech32, so
the checksum constant for bech32m and the witness-version rules are here,
reusing that package's polymod, HRP expansion and base conversion.  Network
HRPs: mainnet C{bc}, testnet and signet C{tb}, regtest C{bcrt}.

Malformed keys and signatures make L{schnorr_verify} return C{False}, never
raise: a verifier is asked "is this valid?", and garbage is not.
"""

from __future__ import annotations

import enum
from typing import Optional, Sequence

from bitcoin.segwit_addr import CHARSET, bech32_hrp_expand, bech32_polymod, convertbits
from coincurve import PrivateKey, PublicKeyXOnly
from coincurve._libsecp256k1 import ffi, lib

from frostnode.crypto.group import N, base_mul, lift_x, point_sum, scalar_from_bytes_nonzero, scalar_to_bytes
from frostnode.crypto.hashes import tagged_hash

TAPTWEAK_TAG = "TapTweak"

#: scriptPubKey prefix of a segwit v1 (P2TR) output: OP_1 PUSH32.
P2TR_PREFIX = b"\x51\x20"

#: Human-readable part of segwit addresses per network.
NETWORK_HRP = {
    "mainnet": "bc",
    "testnet": "tb",
    "signet": "tb",
    "regtest": "bcrt",
}

_EXTRAPARAMS_MAGIC = b"\xda\x6f\xb3\x8c"


# -- BIP340 ---------------------------------------------------------------

def schnorr_verify(msg: bytes, pubkey: bytes, sig: bytes) -> bool:
    """
    BIP340 Verify(pk, m, sig) for a message of any length.

    @param pubkey: 32-byte x-only public key.
    @return: C{False} for an invalid signature and for any malformed input
        (wrong lengths, an x coordinate that is not on the curve).
    """
    if len(pubkey) != 32 or len(sig) != 64:
        return False
    try:
        pk = PublicKeyXOnly(bytes(pubkey))
    except (ValueError, TypeError):
        return False
    return pk.verify(bytes(sig), bytes(msg))


def schnorr_sign(msg: bytes, seckey: bytes, aux_rand: bytes) -> bytes:
    """
    BIP340 Sign(sk, m, a) with explicit auxiliary randomness.

    Deterministic given its inputs, which is what lets the BIP340 vectors be
    reproduced; callers that sign for real pass 32 fresh random bytes.

    @raise ValueError: C{seckey} is not in [1, n-1] or C{aux_rand} is not 32
        bytes.
    """
    if len(aux_rand) != 32:
        raise ValueError("aux_rand must be 32 bytes")
    if len(seckey) != 32:
        raise ValueError("the secret key must be 32 bytes")
    scalar_from_bytes_nonzero(bytes(seckey))  # range check with a clear error
    key = PrivateKey(bytes(seckey))
    if len(msg) == 32:
        return key.sign_schnorr(bytes(msg), bytes(aux_rand))
    # Variable-length message: same library, the "custom" entry point.
    keypair = ffi.new("secp256k1_keypair *")
    if not lib.secp256k1_keypair_create(key.context.ctx, keypair, key.secret):
        raise ValueError("invalid secret key")
    aux = ffi.new("unsigned char[32]", bytes(aux_rand))
    extraparams = ffi.new("secp256k1_schnorrsig_extraparams *")
    extraparams.magic = list(_EXTRAPARAMS_MAGIC)
    extraparams.noncefp = ffi.NULL
    extraparams.ndata = aux
    sig = ffi.new("unsigned char[64]")
    # cffi rejects a NULL pointer built from b"", so an empty message gets a
    # one-byte buffer with length 0.
    msgbuf = ffi.new("unsigned char[]", bytes(msg) or b"\x00")
    if not lib.secp256k1_schnorrsig_sign_custom(key.context.ctx, sig, msgbuf, len(msg), keypair, extraparams):
        raise ValueError("signing failed")
    out = bytes(ffi.buffer(sig))
    if not schnorr_verify(msg, pubkey_xonly(seckey), out):
        raise ValueError("produced signature does not verify")
    return out


def pubkey_xonly(seckey: bytes) -> bytes:
    """The 32-byte x-only public key of C{seckey}."""
    return PublicKeyXOnly.from_secret(bytes(seckey)).format()


# -- BIP341 ---------------------------------------------------------------

def taptweak(internal_key_xonly: bytes, merkle_root: Optional[bytes] = None) -> bytes:
    """
    BIP341 tweak C{hash_TapTweak(internal_key || merkle_root)}.

    With no merkle root (key-path only, BIP86, or the unspendable script
    path commitment of a Taproot-safe DKG key) only the key is hashed.

    @raise ValueError: wrong lengths, or the hash is not below the group
        order (BIP341 says the output key is then undefined).
    """
    if len(internal_key_xonly) != 32:
        raise ValueError("the internal key must be a 32-byte x-only key")
    data = bytes(internal_key_xonly)
    if merkle_root is not None:
        if len(merkle_root) != 32:
            raise ValueError("the merkle root must be 32 bytes")
        data += bytes(merkle_root)
    t = tagged_hash(TAPTWEAK_TAG, data)
    if int.from_bytes(t, "big") >= N:
        raise ValueError("TapTweak hash is not below the group order")
    return t


def taproot_output_key(internal_key_xonly: bytes, merkle_root: Optional[bytes] = None) -> tuple[bytes, int]:
    """
    BIP341 taproot_tweak_pubkey: C{(xbytes(Q), parity of Q)} with
    C{Q = lift_x(internal) + t*G}.

    The parity is what a script-path control block carries.

    @raise ValueError: the internal key is not a valid x coordinate.
    """
    t = int.from_bytes(taptweak(internal_key_xonly, merkle_root), "big")
    Q = point_sum((lift_x(bytes(internal_key_xonly)), base_mul(t)))
    if Q.is_infinity:  # needs a discrete log of the internal key; BIP341 says fail
        raise ValueError("tweaked output key is the point at infinity")
    return Q.xbytes(), 0 if Q.has_even_y() else 1


def taproot_tweak_seckey(seckey: bytes, merkle_root: Optional[bytes] = None) -> bytes:
    """
    BIP341 taproot_tweak_seckey: the secret key of L{taproot_output_key}.

    The internal secret is negated first if its public key has odd y, since
    the internal key is used in x-only (even-y) form.
    """
    d = scalar_from_bytes_nonzero(bytes(seckey))
    P = base_mul(d)
    if not P.has_even_y():
        d = N - d
    t = int.from_bytes(taptweak(P.xbytes(), merkle_root), "big")
    tweaked = (d + t) % N
    if tweaked == 0:
        raise ValueError("tweaked secret key is zero")
    return scalar_to_bytes(tweaked)


def p2tr_script_pubkey(output_key_xonly: bytes) -> bytes:
    """C{OP_1 <32-byte output key>}."""
    if len(output_key_xonly) != 32:
        raise ValueError("a P2TR output key must be 32 bytes")
    return P2TR_PREFIX + bytes(output_key_xonly)


def p2tr_address(output_key_xonly: bytes, network: str = "mainnet") -> str:
    """The bech32m address of a P2TR output on C{network}."""
    try:
        hrp = NETWORK_HRP[network]
    except KeyError:
        raise ValueError(f"unknown network {network!r}; expected one of {sorted(NETWORK_HRP)}") from None
    if len(output_key_xonly) != 32:
        raise ValueError("a P2TR output key must be 32 bytes")
    return segwit_address_encode(hrp, 1, bytes(output_key_xonly))


# -- BIP173 / BIP350 ------------------------------------------------------

class Encoding(enum.Enum):
    """Which checksum a bech32-family string uses (the value is the XOR constant)."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def bech32_encode(hrp: str, data: Sequence[int], spec: Encoding) -> str:
    """Encode 5-bit C{data} under C{hrp} with the checksum of C{spec}."""
    values = bech32_hrp_expand(hrp) + list(data)
    polymod = bech32_polymod(values + [0] * 6) ^ spec.value
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in list(data) + checksum)


def bech32_decode(bech: str) -> tuple[str, list[int], Encoding]:
    """
    Parse a bech32 or bech32m string into (hrp, 5-bit data, encoding).

    @raise ValueError: any of BIP173's string rules is broken or the checksum
        matches neither constant.
    """
    if any(ord(c) < 33 or ord(c) > 126 for c in bech):
        raise ValueError("character out of range")
    if bech.lower() != bech and bech.upper() != bech:
        raise ValueError("mixed case")
    bech = bech.lower()
    pos = bech.rfind("1")
    if pos < 1:
        raise ValueError("missing separator or empty human-readable part")
    if pos + 7 > len(bech):
        raise ValueError("checksum too short")
    if len(bech) > 90:
        raise ValueError("string too long")
    if not all(c in CHARSET for c in bech[pos + 1:]):
        raise ValueError("invalid data character")
    hrp = bech[:pos]
    data = [CHARSET.find(c) for c in bech[pos + 1:]]
    const = bech32_polymod(bech32_hrp_expand(hrp) + data)
    for spec in Encoding:
        if const == spec.value:
            return hrp, data[:-6], spec
    raise ValueError("invalid checksum")


def segwit_address_encode(hrp: str, witver: int, witprog: bytes) -> str:
    """A segwit address: bech32 for version 0, bech32m for versions 1 to 16."""
    if not 0 <= witver <= 16:
        raise ValueError("witness version must be 0..16")
    if not 2 <= len(witprog) <= 40 or (witver == 0 and len(witprog) not in (20, 32)):
        raise ValueError("invalid witness program length")
    spec = Encoding.BECH32 if witver == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [witver] + convertbits(list(witprog), 8, 5), spec)


def segwit_address_decode(hrp: str, addr: str) -> tuple[int, bytes]:
    """
    (witness version, program) of a segwit address for C{hrp}.

    @raise ValueError: wrong network, bad checksum or the wrong checksum kind
        for the version, or a program BIP141/BIP350 do not allow.
    """
    hrpgot, data, spec = bech32_decode(addr)
    if hrpgot != hrp:
        raise ValueError(f"address is for {hrpgot!r}, expected {hrp!r}")
    if not data:
        raise ValueError("empty data section")
    witver = data[0]
    if witver > 16:
        raise ValueError("invalid witness version")
    prog = convertbits(data[1:], 5, 8, False)
    if prog is None:
        raise ValueError("invalid padding")
    if not 2 <= len(prog) <= 40:
        raise ValueError("invalid witness program length")
    if witver == 0 and len(prog) not in (20, 32):
        raise ValueError("invalid witness program length for version 0")
    if (witver == 0) != (spec is Encoding.BECH32):
        raise ValueError("wrong checksum kind for the witness version")
    return witver, bytes(prog)
