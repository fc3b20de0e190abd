"""
The ledger scheme: strict commands, an order-independent replay, refusals
with reasons (overdraft, bad signature, double-apply, ...) on every member,
and signed balances that match an independent replay.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.bip340 import pubkey_xonly, schnorr_verify
from frostnode.crypto.hashes import tagged_hash
from frostnode.store.db import Database
from frostnode.store.log import DataLog, Envelope, RecordBody, Retention
from frostnode.validation import ledger
from frostnode.validation.interface import DataLogView, MissingData, Rejection
from frostnode.validation.ledger import (
    Command,
    LedgerScheme,
    decode_request,
    encode_request,
    ledger_id,
    ledger_message,
    replay,
    request_from_json,
    sign_mint,
    sign_transfer,
)
from frostnode.validation.registry import load_scheme
from frostnode.wire import DecodeError

AUX = bytes(32)
CLIENT = b"\x11" * 32
O1, O2, O3 = (bytes([x]) * 32 for x in (0x01, 0x02, 0x03))


def sk(i: int) -> bytes:
    return i.to_bytes(32, "big")


ISSUER_SK = sk(1000)
ISSUER = pubkey_xonly(ISSUER_SK)
ALICE_SK, BOB_SK, CAROL_SK = sk(1001), sk(1002), sk(1003)
ALICE, BOB, CAROL = (pubkey_xonly(k) for k in (ALICE_SK, BOB_SK, CAROL_SK))


def ordered(balances: dict[bytes, int]) -> dict[bytes, int]:
    return dict(sorted(balances.items()))


def rec(payload: bytes, n: int = 0, topic: str = "ledger") -> RecordBody:
    return RecordBody(CLIENT, topic, payload, timestamp=n, nonce=b"n%d" % n)


def mint(to: bytes, amount: int, seq: int) -> bytes:
    return sign_mint(ISSUER_SK, to, amount, seq, aux_rand=AUX)


def pay(seckey: bytes, to: bytes, amount: int, seq: int) -> bytes:
    return sign_transfer(seckey, to, amount, seq, issuer=ISSUER, aux_rand=AUX)


class CommandTests(SynchronousTestCase):
    def test_layout_and_signature(self) -> None:
        payload = pay(ALICE_SK, BOB, 25, 3)
        self.assertEqual(len(payload), ledger.COMMAND_SIZE)
        cmd = Command.decode(payload)
        self.assertEqual(cmd[:5], (ledger.TRANSFER, ALICE, BOB, 25, 3))
        self.assertEqual(payload[:2], b"\x01\x01")
        self.assertEqual(payload[66:74], (25).to_bytes(8, "big"))
        self.assertEqual(cmd.encode(), payload)
        lid = tagged_hash("frostnode/ledger/id", (6).to_bytes(4, "big") + b"ledger" + ISSUER)
        self.assertEqual(ledger_id("ledger", ISSUER), lid)
        self.assertTrue(schnorr_verify(tagged_hash("frostnode/ledger/command", lid + payload[:82]), ALICE, cmd.signature))

    def test_decode_is_strict(self) -> None:
        good = pay(ALICE_SK, BOB, 25, 3)
        bad = {
            "short": good[:-1],
            "long": good + b"\x00",
            "version": b"\x02" + good[1:],
            "kind": good[:1] + b"\x07" + good[2:],
            "zero amount": good[:66] + bytes(8) + good[74:],
            "zero seq": good[:74] + bytes(8) + good[82:],
            "self transfer": good[:34] + ALICE + good[66:],
            "recipient above p": good[:34] + b"\xff" * 32 + good[66:],
            "recipient not on the curve": good[:34] + (5).to_bytes(32, "big") + good[66:],
        }
        for what, payload in bad.items():
            with self.subTest(what):
                self.assertRaises(DecodeError, Command.decode, payload)

    def test_helpers_refuse_nonsense(self) -> None:
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, ALICE, 1, 1, issuer=ISSUER)
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, BOB, 0, 1, issuer=ISSUER)
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, BOB, 1, 0, issuer=ISSUER)
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, BOB, 1 << 64, 1, issuer=ISSUER)
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, b"\xff" * 32, 1, 1, issuer=ISSUER)
        self.assertRaises(ValueError, sign_transfer, ALICE_SK, BOB, 1, 1, issuer=b"\x00" * 31)


class ReplayTests(SynchronousTestCase):
    def test_mints_and_transfers(self) -> None:
        bodies = [
            rec(mint(ALICE, 100, 1), 1),
            rec(pay(ALICE_SK, BOB, 30, 1), 2),
            rec(pay(BOB_SK, CAROL, 10, 1), 3),
            rec(mint(ISSUER, 5, 2), 4),
            rec(pay(ISSUER_SK, CAROL, 5, 3), 5),
        ]
        state = replay(bodies, ISSUER)
        self.assertEqual(state.balances, ordered({ALICE: 70, BOB: 20, CAROL: 15, ISSUER: 0}))
        self.assertEqual(state.seqs, {**{a: 0 for a in state.balances}, ALICE: 1, BOB: 1, ISSUER: 3})
        self.assertEqual(state.supply, 105)
        self.assertTrue(all(o.applied for o in state.outcomes.values()))

    def test_order_of_records_does_not_matter(self) -> None:
        """
        Bob pays Carol with money Alice sends him: processing records in
        arrival (or origin) order would see Bob's transfer first.
        """
        bodies = [rec(pay(BOB_SK, CAROL, 40, 1), 1), rec(pay(ALICE_SK, BOB, 50, 1), 2), rec(mint(ALICE, 50, 1), 3)]
        states = [replay(order, ISSUER) for order in (bodies, bodies[::-1], [bodies[1], bodies[0], bodies[2]])]
        self.assertEqual(states[0].balances, ordered({ALICE: 0, BOB: 10, CAROL: 40, ISSUER: 0}))
        for s in states[1:]:
            self.assertEqual(s, states[0])

    def test_other_topics_and_other_ledgers_are_ignored(self) -> None:
        other_issuer_sk = sk(2000)
        foreign = sign_mint(other_issuer_sk, ALICE, 1000, 1, aux_rand=AUX)  # a mint of another ledger
        bodies = [rec(mint(ALICE, 10, 1), 1), rec(mint(ALICE, 10, 2), 2, topic="notes"), rec(foreign, 3)]
        state = replay(bodies, ISSUER)
        self.assertEqual(state.balances, ordered({ALICE: 10, ISSUER: 0}))
        self.assertNotIn(bodies[1].record_id, state.outcomes)
        self.assertEqual(state.outcomes[bodies[2].record_id].code, "not-issuer")
        # A transfer signed for topic "eur" is not valid on "ledger".
        eur = sign_transfer(ALICE_SK, BOB, 5, 1, issuer=ISSUER, topic="eur", aux_rand=AUX)
        state = replay([bodies[0], rec(eur, 4)], ISSUER)
        self.assertEqual(state.outcomes[rec(eur, 4).record_id].code, "bad-signature")
        self.assertEqual(state.balances, ordered({ALICE: 10, ISSUER: 0}))

    def test_bad_signature(self) -> None:
        good = pay(ALICE_SK, BOB, 5, 1)
        forged = good[:66] + (500).to_bytes(8, "big") + good[74:]  # amount raised after signing
        bodies = [rec(mint(ALICE, 10, 1), 1), rec(forged, 2)]
        state = replay(bodies, ISSUER)
        outcome = state.outcomes[bodies[1].record_id]
        self.assertEqual(outcome.code, "bad-signature")
        self.assertIn(ALICE.hex()[:16], outcome.reason)
        self.assertEqual(state.balances, ordered({ALICE: 10, ISSUER: 0}))

    def test_a_replayed_command_applies_once(self) -> None:
        transfer = pay(ALICE_SK, BOB, 7, 1)
        bodies = [rec(mint(ALICE, 10, 1), 1), rec(transfer, 2), rec(transfer, 3)]
        self.assertNotEqual(bodies[1].record_id, bodies[2].record_id)
        state = replay(bodies, ISSUER)
        self.assertEqual(state.balances, ordered({ALICE: 3, BOB: 7, ISSUER: 0}))
        self.assertEqual(state.outcomes[bodies[1].record_id], state.outcomes[bodies[2].record_id])
        self.assertTrue(state.outcomes[bodies[2].record_id].applied)

    def test_two_commands_with_one_sequence_number(self) -> None:
        to_bob, to_carol = pay(ALICE_SK, BOB, 6, 1), pay(ALICE_SK, CAROL, 6, 1)
        bodies = [rec(mint(ALICE, 10, 1), 1), rec(to_bob, 2), rec(to_carol, 3)]
        state = replay(bodies, ISSUER)
        lid = ledger_id("ledger", ISSUER)
        winner, loser = sorted([bodies[1], bodies[2]], key=lambda b: Command.decode(b.payload).sighash(lid))
        self.assertTrue(state.outcomes[winner.record_id].applied)
        self.assertEqual(state.outcomes[loser.record_id].code, "double-apply")
        self.assertEqual(state.balances[ALICE], 4)
        self.assertEqual(state.supply, 10)

    def test_overdraft_waits_and_blocks_later_commands(self) -> None:
        bodies = [rec(mint(ALICE, 10, 1), 1), rec(pay(ALICE_SK, BOB, 11, 1), 2), rec(pay(ALICE_SK, BOB, 1, 2), 3)]
        state = replay(bodies, ISSUER)
        self.assertEqual(state.outcomes[bodies[1].record_id].code, "overdraft")
        self.assertIn("holds 10", state.outcomes[bodies[1].record_id].reason)
        self.assertEqual(state.outcomes[bodies[2].record_id].code, "blocked")
        self.assertEqual(state.balances, ordered({ALICE: 10, ISSUER: 0}))
        # Once Alice receives enough, the same records apply.
        state = replay(bodies + [rec(mint(ALICE, 2, 2), 4)], ISSUER)
        self.assertEqual(state.balances[BOB], 12)
        self.assertEqual(state.seqs[ALICE], 2)

    def test_malformed_and_gaps(self) -> None:
        bodies = [rec(b"hello", 1), rec(mint(ALICE, 3, 2), 2)]  # issuer's seq 1 is missing
        state = replay(bodies, ISSUER)
        self.assertEqual(state.outcomes[bodies[0].record_id].code, "malformed-command")
        self.assertEqual(state.outcomes[bodies[1].record_id].code, "blocked")
        self.assertEqual(state.balances, {})


def _oracle(bodies: list[RecordBody], rng: random.Random) -> dict[bytes, int]:
    """
    The ledger rules applied the slow way: keep sweeping every winning
    command in a random order until a sweep applies nothing.
    """
    lid = ledger_id("ledger", ISSUER)
    slots: dict[tuple[bytes, int], bytes] = {}
    cmds: dict[bytes, Command] = {}
    for b in bodies:
        try:
            c = Command.decode(b.payload)
        except ValueError:
            continue
        h = c.sighash(lid)
        if (c.kind == ledger.MINT and c.sender != ISSUER) or not schnorr_verify(h, c.sender, c.signature):
            continue
        cmds[h] = c
        key = (c.sender, c.seq)
        slots[key] = min(slots.get(key, h), h)
    balance: dict[bytes, int] = {}
    done: dict[bytes, int] = {}
    applied: set[bytes] = set()
    progress = True
    while progress:
        progress = False
        order = sorted(slots.values())
        rng.shuffle(order)
        for h in order:
            c = cmds[h]
            if h in applied or done.get(c.sender, 0) + 1 != c.seq:
                continue
            if c.kind == ledger.TRANSFER:
                if balance.get(c.sender, 0) < c.amount:
                    continue
                balance[c.sender] -= c.amount
            balance.setdefault(c.sender, 0)
            balance[c.recipient] = balance.get(c.recipient, 0) + c.amount
            done[c.sender] = c.seq
            applied.add(h)
            progress = True
    return dict(sorted(balance.items()))


_KEYS = [ISSUER_SK, ALICE_SK, BOB_SK, CAROL_SK]
_command = st.tuples(
    st.sampled_from(["mint", "mint", "pay", "pay", "pay", "forged"]),
    st.integers(0, 3),  # sender
    st.integers(0, 3),  # recipient
    st.integers(1, 40),  # amount
    st.sampled_from([0] * 8 + [-1, 1]),  # seq: the sender's next, a reused one, or a gap
)


class ReplayPropertyTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(st.lists(_command, max_size=20), st.randoms(use_true_random=False))
    def test_replay_is_order_independent_and_matches_the_oracle(self, spec, rng) -> None:
        bodies = []
        signed = [0] * len(_KEYS)
        for n, (kind, s, r, amount, skew) in enumerate(spec):
            if kind == "mint":
                s = 0
            elif s == r:
                r = (r + 1) % len(_KEYS)
            recipient = pubkey_xonly(_KEYS[r])
            seq = max(1, signed[s] + 1 + skew)
            if kind == "mint":
                payload = mint(recipient, amount, seq)
            else:
                payload = sign_transfer(_KEYS[s], recipient, 1 + amount // 4, seq, issuer=ISSUER, aux_rand=AUX)
            if kind == "forged":  # someone else's attempt: the sender's real command may still come
                payload = payload[:-1] + bytes([payload[-1] ^ 1])
            else:
                signed[s] = seq
            bodies.append(rec(payload, n))
            if n % 5 == 0:
                bodies.append(rec(payload, 1000 + n))  # the same command relayed again
        state = replay(bodies, ISSUER)
        shuffled = list(bodies)
        rng.shuffle(shuffled)
        self.assertEqual(replay(shuffled + shuffled[:3], ISSUER), state)
        self.assertEqual(state.balances, _oracle(bodies, rng))
        minted = {state.outcomes[b.record_id].command: Command.decode(b.payload) for b in bodies
                  if state.outcomes[b.record_id].applied}
        self.assertEqual(state.supply, sum(c.amount for c in minted.values() if c.kind == ledger.MINT))
        self.assertTrue(all(v >= 0 for v in state.balances.values()))


class RequestTests(SynchronousTestCase):
    def test_round_trip_and_canonical_form(self) -> None:
        r1, r2 = b"\x05" * 32, b"\x04" * 32
        req = encode_request(issuer=ISSUER, cut={O2: 3, O1: 5, O3: 0}, require=[r1, r2])
        self.assertEqual(req, encode_request(issuer=ISSUER, cut={O1: 5, O2: 3}, require=[r2, r1]))
        self.assertEqual(decode_request(req), ("ledger", ISSUER, {O1: 5, O2: 3}, (r2, r1)))
        self.assertEqual(
            request_from_json({"issuer": ISSUER.hex(), "cut": {O1.hex(): 5, O2.hex(): 3}, "require": [r1.hex(), r2.hex()]}),
            req,
        )

    def test_decode_refuses_other_encodings(self) -> None:
        req = encode_request(issuer=ISSUER, cut={O1: 5, O2: 3})
        o2_at = 1 + 4 + 6 + 32 + 4 + 40
        swapped = req[:o2_at - 40] + req[o2_at:o2_at + 40] + req[o2_at - 40:o2_at] + req[o2_at + 40:]
        zero_seq = req[:o2_at - 8] + bytes(8) + req[o2_at:]
        for what, bad in {"trailing": req + b"\x00", "unsorted cut": swapped, "zero seq": zero_seq,
                          "version": b"\x09" + req[1:], "truncated": req[:-1]}.items():
            with self.subTest(what):
                self.assertRaises(DecodeError, decode_request, bad)

    def test_bad_json(self) -> None:
        for obj in ([], {"cut": {}}, {"issuer": "zz", "cut": {}}, {"issuer": ISSUER.hex(), "cut": []},
                    {"issuer": ISSUER.hex(), "cut": {}, "extra": 1}, {"issuer": ISSUER.hex(), "cut": {"00": 1}}):
            with self.subTest(obj=obj):
                self.assertRaises(ValueError, request_from_json, obj)


class _Logs:
    def open_log(self, local: bytes = O1, **kw) -> DataLog:
        db = Database.open(self.mktemp())
        self.addCleanup(db.close_sync)
        return DataLog(db, local, **kw)


class LedgerSchemeTests(_Logs, SynchronousTestCase):
    """The scheme over real logs, as each member runs it."""

    def setUp(self) -> None:
        self.scheme = load_scheme("ledger")
        # Three origins; Bob's transfer reached the smallest origin first.
        self.bodies = {
            "mint": rec(mint(ALICE, 100, 1), 1),
            "alice->bob": rec(pay(ALICE_SK, BOB, 60, 1), 2),
            "bob->carol": rec(pay(BOB_SK, CAROL, 50, 1), 3),
            "carol overdraft": rec(pay(CAROL_SK, ALICE, 51, 1), 4),
            "note": rec(b"not a command", 5, topic="notes"),
        }
        b = self.bodies
        self.envelopes = [
            Envelope(O1, 1, 10.0, b["bob->carol"]),
            Envelope(O1, 2, 11.0, b["note"]),
            Envelope(O2, 1, 12.0, b["mint"]),
            Envelope(O2, 2, 13.0, b["carol overdraft"]),
            Envelope(O3, 1, 14.0, b["alice->bob"]),
        ]
        self.cut = {O1: 2, O2: 2, O3: 1}

    def fill(self, log: DataLog, envelopes) -> DataLogView:
        for env in envelopes:
            log.insert_remote_sync(env)
        return DataLogView(log)

    def request(self, *required: str, cut=None) -> bytes:
        return encode_request(issuer=ISSUER, cut=cut or self.cut, require=[self.bodies[r].record_id for r in required])

    def test_members_with_the_same_records_sign_the_same_message(self) -> None:
        v1 = self.fill(self.open_log(O1), self.envelopes)
        v2 = self.fill(self.open_log(O2), self.envelopes[::-1])
        shuffled = list(self.envelopes)
        random.Random(7).shuffle(shuffled)
        v3 = self.fill(self.open_log(O3), shuffled)
        req = self.request("alice->bob", "bob->carol")
        m1 = self.scheme.message(req, v1)
        self.assertEqual(len(m1), 32)
        self.assertEqual(self.scheme.message(req, v2), m1)
        self.assertEqual(self.scheme.message(req, v3), m1)

    def test_signed_balances_match_an_independent_replay(self) -> None:
        view = self.fill(self.open_log(), self.envelopes)
        req = self.request("bob->carol")
        # A client that kept its own copy of the records, in any order:
        mine = replay(list(self.bodies.values())[::-1], ISSUER)
        self.assertEqual(mine.balances, ordered({ALICE: 40, BOB: 10, CAROL: 50, ISSUER: 0}))
        self.assertEqual(self.scheme.message(req, view), ledger_message(decode_request(req), mine))
        statement = ledger.scheme.statement(req, view)
        self.assertTrue(statement.startswith(req))
        self.assertEqual(statement[len(req):], mine.encode())
        self.assertEqual(int.from_bytes(statement[len(req) + 4 + 32:len(req) + 4 + 48], "big"), mine.balances[min(mine.balances)])

    def test_overdraft_is_refused_by_every_member_with_the_same_reason(self) -> None:
        views = [self.fill(self.open_log(O1), self.envelopes), self.fill(self.open_log(O2), self.envelopes[::-1])]
        reasons = []
        for view in views:
            e = self.assertRaises(Rejection, self.scheme.message, self.request("carol overdraft"), view)
            self.assertEqual(e.code, "overdraft")
            reasons.append(e.reason)
        self.assertEqual(reasons[0], reasons[1])
        self.assertIn(CAROL.hex()[:16], reasons[0])
        self.assertIn("holds 50", reasons[0])
        # Without requiring the overdraft, the balances are signed; it simply did not apply.
        self.scheme.message(self.request(), views[0])

    def test_bad_signature_and_double_apply_are_refused(self) -> None:
        forged_payload = pay(ALICE_SK, CAROL, 1, 2)[:-1] + b"\x00"
        double = pay(ALICE_SK, CAROL, 1, 1)  # Alice's sequence 1 again, to someone else
        self.bodies["forged"] = rec(forged_payload, 6)
        self.bodies["double"] = rec(double, 7)
        log = self.open_log()
        view = self.fill(log, self.envelopes + [Envelope(O3, 2, 15.0, self.bodies["forged"]),
                                                Envelope(O3, 3, 16.0, self.bodies["double"])])
        cut = {O1: 2, O2: 2, O3: 3}
        e = self.assertRaises(Rejection, self.scheme.message, self.request("forged", cut=cut), view)
        self.assertEqual(e.code, "bad-signature")
        lid = ledger_id("ledger", ISSUER)
        pair = [self.bodies["alice->bob"], self.bodies["double"]]
        loser = max(pair, key=lambda b: Command.decode(b.payload).sighash(lid))
        name = "double" if loser is self.bodies["double"] else "alice->bob"
        e = self.assertRaises(Rejection, self.scheme.message, self.request(name, cut=cut), view)
        self.assertEqual(e.code, "double-apply")
        self.assertIn(f"account {ALICE.hex()[:16]} sequence 1 is already taken", e.reason)

    def test_records_outside_the_cut_or_the_topic(self) -> None:
        view = self.fill(self.open_log(), self.envelopes)
        e = self.assertRaises(Rejection, self.scheme.message, self.request("alice->bob", cut={O1: 2, O2: 2}), view)
        self.assertEqual(e.code, "not-in-cut")
        e = self.assertRaises(Rejection, self.scheme.message, self.request("note"), view)
        self.assertEqual(e.code, "wrong-topic")

    def test_a_cut_not_held_yet_is_missing_data_until_catch_up(self) -> None:
        log = self.open_log()
        view = self.fill(log, self.envelopes[:3])  # O1 1..2, O2 1 only; nothing from O3
        req = self.request("alice->bob")
        e = self.assertRaises(MissingData, self.scheme.message, req, view)
        self.assertEqual(e.cut, {O2: 2, O3: 1})
        self.fill(log, self.envelopes[3:])
        self.scheme.message(req, view)

    def test_a_divergent_member_signs_a_different_message(self) -> None:
        honest = self.fill(self.open_log(O1), self.envelopes)
        # Another member holds a different record in slot (O1, 1): its origin equivocated.
        altered = [Envelope(O1, 1, 10.0, rec(pay(BOB_SK, CAROL, 5, 1), 99))] + self.envelopes[1:]
        divergent = self.fill(self.open_log(O2), altered)
        req = self.request()
        self.assertNotEqual(self.scheme.message(req, honest), self.scheme.message(req, divergent))

    def test_pruned_history_is_refused(self) -> None:
        log = self.open_log(retention=Retention(max_per_origin=1))
        view = self.fill(log, self.envelopes)
        log.prune_sync(100.0)
        e = self.assertRaises(Rejection, self.scheme.message, self.request(), view)
        self.assertEqual(e.code, "pruned")

    def test_malformed_request(self) -> None:
        view = self.fill(self.open_log(), self.envelopes[:1])
        e = self.assertRaises(Rejection, self.scheme.message, self.request() + b"\x00", view)
        self.assertEqual(e.code, "malformed-request")

    def test_pinned_scheme(self) -> None:
        view = self.fill(self.open_log(), self.envelopes)
        pinned = LedgerScheme("ledger-main", issuer=ISSUER, topic="ledger")
        req = pinned.request_from_json({"cut": {o.hex(): s for o, s in self.cut.items()}})
        self.assertEqual(req, self.request())
        self.assertEqual(pinned.statement(req, view), ledger.scheme.statement(req, view))
        other = encode_request(issuer=ALICE, cut=self.cut)
        e = self.assertRaises(Rejection, pinned.statement, other, view)
        self.assertEqual(e.code, "wrong-ledger")
