# -*- test-case-name: tests.test_demo -*-
"""
A self-contained demonstration of the cryptographic core, for newcomers: a
real t-of-n FROST KeyGen (Pedersen DKG with proofs of knowledge) among n
simulated members in one process, then a BIP 445 threshold signature by t of
them under the federation's Taproot output key, checked with libsecp256k1's
own BIP340 verification.  Nothing is faked: every member runs the same
functions the networked DKG and signing service run; only the network is
missing.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

from coincurve import PublicKeyXOnly

from frostnode.crypto import bip340, bip445, keygen
from frostnode.crypto.group import scalar_to_bytes


def run_demo(n: int, t: int, message: bytes, out: TextIO, network: str = "regtest") -> bool:
    """Run the DKG and one signature; print what happened; return whether it verified."""
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= threshold <= members, got {t}-of-{n}")
    started = time.perf_counter()
    context = b"frostnode-demo/" + os.urandom(16)
    ids = range(1, n + 1)
    out.write(f"FROST KeyGen among {n} members, threshold {t}\n")
    secrets, packages = {}, {}
    for i in ids:
        secrets[i], packages[i] = keygen.keygen_round1(i, t, n, context)
    for i in ids:
        for j in ids:
            keygen.verify_proof_of_knowledge(j, packages[j], context)
    shares = {i: {j: keygen.keygen_share(secrets[j], i) for j in ids} for i in ids}
    for i in ids:
        for j in ids:
            keygen.verify_share(j, i, shares[i][j], packages[j])
    keys = {i: keygen.keygen_finalize(i, t, shares[i], packages) for i in ids}
    internal = keys[1].group_key
    assert all(k.group_key == internal for k in keys.values()), "members disagree on the group key"
    out.write(f"  every member holds the same key; DKG took {time.perf_counter() - started:.3f} s\n")

    output_key = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(internal.encode()))
    out.write(f"  internal key (Taproot-safe): {internal.encode().hex()}\n")
    out.write(f"  Taproot output key:          {output_key.hex()}\n")
    out.write(f"  P2TR address ({network}):    {bip340.p2tr_address(output_key, network)}\n")

    signer_ids = list(range(t))  # BIP 445 ids: FROST identifier - 1
    pubshares = [keys[i].verification_shares[i].encode() for i in ids]
    signers = bip445.SignersContext(n, t, signer_ids, [pubshares[i] for i in signer_ids], internal.encode())
    secnonces, pubnonces = [], []
    for i in signer_ids:
        secshare = scalar_to_bytes(keys[i + 1].secret_share)
        s, p = bip445.nonce_gen(secshare, pubshares[i], output_key, None, None)
        secnonces.append(s)
        pubnonces.append(p)
    session = bip445.taproot_session_ctx(signers, bip445.nonce_agg(pubnonces), message)
    psigs = [bip445.sign(secnonces[k], scalar_to_bytes(keys[i + 1].secret_share), i, session)
             for k, i in enumerate(signer_ids)]
    sig = bip445.partial_sig_agg_verified(psigs, pubnonces, session)
    ok = PublicKeyXOnly(output_key).verify(sig, message)
    out.write(f"BIP 445 signature by members {[i + 1 for i in signer_ids]} over {message!r}:\n")
    out.write(f"  {sig.hex()}\n")
    out.write(f"  verifies as an ordinary BIP340 signature under the output key: {ok}\n")
    return ok
