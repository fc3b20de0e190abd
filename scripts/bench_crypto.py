#!/usr/bin/env python3
"""
Per-operation cost of frostnode's FROST core, both ciphersuites.

Prints milliseconds (median of repeated runs) for DKG work per participant
(round 1, round 2, finalize), signing round 1 (commit), round 2 (share),
aggregate (final-signature check only) and aggregate with per-share
verification, for 2-of-3, 7-of-10 and 67-of-100 (``--full`` adds
667-of-1000), plus the floor on this machine: t times one coincurve
variable-base multiplication, and each operation's ratio to it.

Usage: python scripts/bench_crypto.py [--full] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from frostnode.crypto import bip445, keygen, rfc9591  # noqa: E402
from frostnode.crypto.group import G, N, scalar_to_bytes  # noqa: E402


def median_ms(fn, repeat: int, setup=None) -> float:
    times = []
    for _ in range(repeat):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def one_mul_ms() -> float:
    P = G * 0x1234567
    k = int.from_bytes(os.urandom(32), "big") % N
    # The best of several rounds: the floor is what the CPU can do, and a
    # single round is easily inflated by other work on a shared machine.
    best = float("inf")
    for _ in range(9):
        reps = 300
        t0 = time.perf_counter()
        for _ in range(reps):
            P * k
        best = min(best, (time.perf_counter() - t0) / reps * 1000)
    return best


def bench_dkg(t: int, n: int, repeat: int) -> dict[str, float]:
    """One participant's work; the others' messages are prepared once."""
    ctx = b"bench-session"
    # Only t+... packages are needed for realism: a participant handles all n.
    pkgs, secrets = {}, {}
    for i in range(1, n + 1):
        secrets[i], pkgs[i] = keygen.keygen_round1(i, t, n, ctx)
    me = 1

    def round1():
        keygen.keygen_round1(me, t, n, ctx)

    def round2():
        # Verify everyone's proof of knowledge, then compute a share for each.
        for j, p in pkgs.items():
            if j != me:
                keygen.verify_proof_of_knowledge(j, p, ctx)
        for j in range(1, n + 1):
            keygen.keygen_share(secrets[me], j)

    received = {j: keygen.keygen_share(secrets[j], me) for j in range(1, n + 1)}

    def finalize():
        keygen.keygen_finalize(me, t, received, pkgs)

    r = max(1, repeat // (10 if n >= 100 else 1))
    return {
        "dkg round 1": median_ms(round1, repeat),
        "dkg round 2": median_ms(round2, r),
        "dkg finalize": median_ms(finalize, max(1, r if n < 1000 else 1)),
    }


def bench_rfc(t: int, n: int, pkgs: dict, group_key, repeat: int) -> dict[str, float]:
    msg = b"frostnode benchmark message"
    signers = list(range(1, t + 1))
    vshares = pkgs[1].verification_shares
    nonces, comms = {}, []
    for i in signers:
        nonces[i], c = rfc9591.commit(i, pkgs[i].secret_share)
        comms.append(c)

    def commit():
        rfc9591.commit(1, pkgs[1].secret_share)

    def fresh_nonce():
        nonce, c = rfc9591.commit(1, pkgs[1].secret_share)
        return nonce, [c] + comms[1:]

    def share(arg):
        nonce, cl = arg
        sess = rfc9591.session_context(group_key, msg, cl)
        rfc9591.sign(1, pkgs[1].secret_share, nonce, sess)

    session = rfc9591.session_context(group_key, msg, comms)
    shares = [rfc9591.sign(i, pkgs[i].secret_share, nonces[i], session) for i in signers]

    def aggregate():
        s = rfc9591.session_context(group_key, msg, comms)
        rfc9591.aggregate(s, shares, vshares)

    def aggregate_verified():
        s = rfc9591.session_context(group_key, msg, comms)
        rfc9591.aggregate_verified(s, shares, vshares)

    sig = rfc9591.aggregate(session, shares, vshares)
    assert rfc9591.verify(group_key, msg, sig)
    return {
        "sign round 1 (commit)": median_ms(commit, repeat),
        "sign round 2 (share)": median_ms(share, repeat, setup=fresh_nonce),
        "aggregate": median_ms(aggregate, repeat),
        "aggregate + verify shares": median_ms(aggregate_verified, repeat),
    }


def bench_bip445(t: int, n: int, pkgs: dict, group_key, repeat: int) -> dict[str, float]:
    from coincurve import PublicKeyXOnly

    msg = b"frostnode benchmark message".ljust(32, b"\0")
    ids = list(range(t))  # BIP 445 ids are 0-based: FROST identifier - 1
    pubshares = [pkgs[i + 1].verification_shares[i + 1].encode() for i in ids]
    secshares = {i: scalar_to_bytes(pkgs[i + 1].secret_share) for i in ids}
    thresh_pk = group_key.encode()
    signers = bip445.SignersContext(n, t, ids, pubshares, thresh_pk)
    out_key = bip445.get_xonly_pk(bip445.taproot_tweak_ctx(thresh_pk))
    secn, pubn = {}, []
    for i in ids:
        secn[i], p = bip445.nonce_gen(secshares[i], pubshares[i], out_key, msg, None)
        pubn.append(p)
    aggnonce = bip445.nonce_agg(pubn)
    session = bip445.taproot_session_ctx(signers, aggnonce, msg)

    def commit():
        bip445.nonce_gen(secshares[0], pubshares[0], out_key, msg, None)

    def fresh_nonce():
        s, p = bip445.nonce_gen(secshares[0], pubshares[0], out_key, msg, None)
        return s, bip445.nonce_agg([p] + pubn[1:])

    def share(arg):
        s, agg = arg
        bip445.sign(s, secshares[0], 0, bip445.taproot_session_ctx(signers, agg, msg))

    psigs = [bip445.sign(secn[i], secshares[i], i, session) for i in ids]

    def aggregate():
        bip445.partial_sig_agg_verified(psigs, pubn, bip445.taproot_session_ctx(signers, aggnonce, msg))

    def aggregate_verified():
        bip445.partial_sig_agg_verified(psigs, pubn, bip445.taproot_session_ctx(signers, aggnonce, msg), verify_each=True)

    sig = bip445.partial_sig_agg(psigs, session)
    assert PublicKeyXOnly(out_key).verify(sig, msg), "final signature must verify as BIP340"
    return {
        "sign round 1 (commit)": median_ms(commit, repeat),
        "sign round 2 (share)": median_ms(share, repeat, setup=fresh_nonce),
        "aggregate": median_ms(aggregate, repeat),
        "aggregate + verify shares": median_ms(aggregate_verified, repeat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="add 667-of-1000 (takes a few minutes)")
    ap.add_argument("--repeat", type=int, default=15, help="runs per operation (median reported)")
    args = ap.parse_args()
    sizes = [(2, 3), (7, 10), (67, 100)] + ([(667, 1000)] if args.full else [])
    mul = one_mul_ms()
    print(f"one coincurve variable-base multiplication: {mul * 1000:.1f} us")
    print(f"{'suite':8} {'t-of-n':>9}  {'operation':28} {'ms':>9} {'floor ms':>9} {'ratio':>6}")
    for t, n in sizes:
        repeat = args.repeat if n < 1000 else 3
        floor = t * mul
        group_key, pkgs = keygen.trusted_dealer_keygen(t, n)
        rows = [("dkg", k, v) for k, v in bench_dkg(t, n, repeat).items()]
        rows += [("rfc9591", k, v) for k, v in bench_rfc(t, n, pkgs, group_key, repeat).items()]
        rows += [("bip445", k, v) for k, v in bench_bip445(t, n, pkgs, group_key, repeat).items()]
        for suite, op, ms in rows:
            print(f"{suite:8} {f'{t}-of-{n}':>9}  {op:28} {ms:9.3f} {floor:9.3f} {ms / floor:6.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
