"""
Tests for L{frostnode.broadcast.bracha}: the pure Bracha core, no reactor.

A small simulator delivers records between cores in a random (seeded) order,
with silent and byzantine members; byzantine members have no core, the test
speaks for them with hand-made records.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Iterable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from frostnode.broadcast.bracha import (
    ECHO,
    READY,
    REQUEST,
    RESPONSE,
    SEND,
    Bracha,
    BrachaConfig,
    Deliver,
    Misbehaviour,
    Send,
    SendAll,
    decode_batch,
    encode_batch,
    encode_echo,
    encode_ready,
    encode_request,
    encode_response,
    encode_send,
    instance_key,
    payload_digest,
)
from frostnode.wire import DecodeError


def member_keys(n: int) -> list[bytes]:
    return sorted(hashlib.sha256(b"member %d" % i).digest() for i in range(n))


class Sim:
    """
    Honest cores wired through a bag of in-flight batches, drained in a
    seeded random order.  Members in C{silent} have crashed; members in
    C{byzantine} have no core and only say what the test makes them say.
    """

    def __init__(self, n: int, seed: int = 0, silent: Iterable[int] = (), byzantine: Iterable[int] = (),
                 duplicate: bool = False, config: BrachaConfig = BrachaConfig()) -> None:
        self.members = member_keys(n)
        self.silent = {self.members[i] for i in silent}
        self.byzantine = {self.members[i] for i in byzantine}
        self.honest = [m for m in self.members if m not in self.silent and m not in self.byzantine]
        self.nodes = {m: Bracha(m, self.members, config) for m in self.honest}
        self.rng = random.Random(seed)
        self.duplicate = duplicate
        self.bag: list[tuple[bytes, bytes, bytes]] = []
        self.delivered: dict[bytes, dict[tuple[bytes, bytes], bytes]] = {m: {} for m in self.honest}
        self.misbehaviour: list[tuple[bytes, Misbehaviour]] = []
        self.to_byzantine: list[tuple[bytes, bytes, bytes]] = []
        #: Batches for which C{hold(sender, to, batch)} is true wait in C{held}.
        self.hold = lambda sender, to, batch: False
        self.held: list[tuple[bytes, bytes, bytes]] = []

    def apply(self, me: bytes, actions: list) -> None:
        for a in actions:
            if isinstance(a, SendAll):
                for peer in self.members:
                    if peer != me:
                        self.post(me, peer, [a.record])
            elif isinstance(a, Send):
                self.post(me, a.to, [a.record])
            elif isinstance(a, Deliver):
                key = (a.sender, a.tag)
                assert key not in self.delivered[me], "delivered twice"
                self.delivered[me][key] = a.payload
            else:
                self.misbehaviour.append((me, a))

    def post(self, sender: bytes, to: bytes, records: list[bytes]) -> None:
        batch = encode_batch(records)
        for _ in range(2 if self.duplicate else 1):
            self.bag.append((sender, to, batch))

    def broadcast(self, who: int, tag: bytes, payload: bytes) -> None:
        me = self.members[who]
        self.apply(me, self.nodes[me].broadcast(tag, payload))

    def run(self, limit: int = 10**6) -> None:
        steps = 0
        while self.bag:
            steps += 1
            assert steps < limit
            i = self.rng.randrange(len(self.bag))
            self.bag[i], self.bag[-1] = self.bag[-1], self.bag[i]
            sender, to, batch = self.bag.pop()
            if to in self.silent or sender in self.silent:
                continue
            if to in self.byzantine:
                self.to_byzantine.append((sender, to, batch))
                continue
            if self.hold(sender, to, batch):
                self.held.append((sender, to, batch))
                continue
            self.apply(to, self.nodes[to].receive(sender, batch))

    def release(self) -> None:
        """Put every held batch back in flight and stop holding."""
        self.hold = lambda sender, to, batch: False
        self.bag += self.held
        self.held = []

    def open_instances(self) -> int:
        return sum(node.open_instances for node in self.nodes.values())

    def culprits(self) -> set[bytes]:
        return {m.culprit for _, m in self.misbehaviour}


class HonestTests(SynchronousTestCase):
    """Validity, exactly-once delivery and collection with honest (or crashed) members."""

    def check_all_broadcast(self, n: int, seed: int, silent: Iterable[int] = ()) -> Sim:
        sim = Sim(n, seed=seed, silent=silent)
        expected = {}
        for i, m in enumerate(sim.members):
            if m in sim.honest:
                payload = b"payload of %d " % i * 20
                sim.broadcast(i, b"round-1", payload)
                expected[(m, b"round-1")] = payload
        sim.run()
        for m in sim.honest:
            self.assertEqual(sim.delivered[m], expected)
        self.assertEqual(sim.misbehaviour, [])
        return sim

    def test_everyone_delivers_everything(self) -> None:
        """n = 4, 7, 10, all honest, all broadcasting at once: identical deliveries everywhere, state collected."""
        for n in (4, 7, 10):
            sim = self.check_all_broadcast(n, seed=n)
            self.assertEqual(sim.open_instances(), 0, f"n={n}")
            for node in sim.nodes.values():
                self.assertTrue(node.is_done(sim.members[0], b"round-1"))

    def test_f_silent_members(self) -> None:
        """f crashed members do not stop delivery; lingering state goes after linger_sweeps sweeps."""
        for n in (4, 7, 10):
            f = (n - 1) // 3
            sim = self.check_all_broadcast(n, seed=100 + n, silent=range(1, 1 + f))
            self.assertGreater(sim.open_instances(), 0)
            for node in sim.nodes.values():
                node.sweep()
            self.assertGreater(sim.open_instances(), 0)
            for node in sim.nodes.values():
                node.sweep()
            self.assertEqual(sim.open_instances(), 0)

    def test_more_than_f_silent_no_delivery(self) -> None:
        """With f+1 crashed members of n = 4 nothing can be delivered (the quorum is honest members)."""
        sim = Sim(4, silent=(2, 3))
        sim.broadcast(0, b"t", b"x")
        sim.run()
        self.assertEqual(sim.delivered[sim.members[0]], {})
        self.assertEqual(sim.delivered[sim.members[1]], {})

    def test_duplicates_and_reordering(self) -> None:
        """Every batch delivered twice, in random order: still exactly once, no blame."""
        for seed in range(5):
            sim = Sim(7, seed=seed, duplicate=True)
            for i in range(7):
                sim.broadcast(i, b"a", b"A%d" % i)
                sim.broadcast(i, b"b", b"B%d" % i)
            sim.run()
            for m in sim.honest:
                self.assertEqual(len(sim.delivered[m]), 14)
                self.assertEqual(sim.delivered[m][(sim.members[3], b"b")], b"B3")
            self.assertEqual(sim.misbehaviour, [])
            self.assertEqual(sim.open_instances(), 0)

    def test_late_message_after_collection_ignored(self) -> None:
        """A message for a collected instance neither revives it nor produces actions."""
        sim = Sim(4)
        sim.broadcast(0, b"t", b"x")
        sim.run()
        node = sim.nodes[sim.members[1]]
        self.assertEqual(node.open_instances, 0)
        key = instance_key(sim.members[0], b"t")
        d = payload_digest(key, b"x")
        for record in (encode_echo(key, d), encode_ready(key, d), encode_request(key, d)):
            self.assertEqual(node.receive(sim.members[2], encode_batch([record])), [])
        self.assertEqual(node.receive(sim.members[0], encode_batch([encode_send(b"t", b"x")])), [])
        self.assertEqual(node.open_instances, 0)

    def test_single_member(self) -> None:
        """n = 1 delivers its own broadcast at once."""
        me = member_keys(1)[0]
        node = Bracha(me, [me])
        actions = node.broadcast(b"t", b"solo")
        self.assertIn(Deliver(me, b"t", b"solo"), actions)
        self.assertEqual(node.open_instances, 0)

    def test_payload_pulled_when_send_withheld(self) -> None:
        """
        An originator that withholds its SEND from one member (otherwise
        honest): that member still delivers, pulling the payload from echoers.
        """
        sim = Sim(4, seed=3)
        origin, victim = sim.members[0], sim.members[3]
        actions = sim.nodes[origin].broadcast(b"t", b"the payload")
        send = [a for a in actions if isinstance(a, SendAll)]
        self.assertEqual(len(send), 1)
        for peer in sim.members[1:3]:
            sim.post(origin, peer, [send[0].record])
        sim.apply(origin, [a for a in actions if not isinstance(a, SendAll)])
        sim.run()
        for m in sim.honest:
            self.assertEqual(sim.delivered[m], {(origin, b"t"): b"the payload"})
        self.assertEqual(sim.misbehaviour, [])

    def test_broadcast_preconditions(self) -> None:
        """Our own oversize tag or payload, or a reused tag, is the caller's error."""
        ms = member_keys(4)
        node = Bracha(ms[0], ms, BrachaConfig(max_tag=8, max_payload=16))
        self.assertRaises(ValueError, node.broadcast, b"x" * 9, b"")
        self.assertRaises(ValueError, node.broadcast, b"t", b"x" * 17)
        node.broadcast(b"t", b"x")
        self.assertRaises(ValueError, node.broadcast, b"t", b"y")
        self.assertRaises(ValueError, node.receive, hashlib.sha256(b"stranger").digest(), b"")
        self.assertRaises(ValueError, node.receive, ms[0], b"")
        self.assertRaises(ValueError, Bracha, hashlib.sha256(b"stranger").digest(), ms)

    def test_own_open_quota(self) -> None:
        """We refuse to start more broadcasts than our peers would accept from us."""
        ms = member_keys(4)
        node = Bracha(ms[0], ms, BrachaConfig(max_open_per_origin=3))
        for i in range(3):
            node.broadcast(b"t%d" % i, b"x")
        self.assertRaises(ValueError, node.broadcast, b"t3", b"x")


class ByzantineTests(SynchronousTestCase):
    """Consistency and totality against up to f byzantine members."""

    def test_equivocating_sender_halves(self) -> None:
        """
        A byzantine originator sends one payload to one half of the honest
        members and another payload to the other half (n = 10, f = 3): no
        honest member delivers, and certainly no two deliver differently.
        """
        for seed in range(3):
            sim = Sim(10, seed=seed, byzantine=[0])
            bad = sim.members[0]
            for i, m in enumerate(sim.honest):
                sim.post(bad, m, [encode_send(b"t", b"left" if i % 2 else b"right")])
            sim.run()
            for m in sim.honest:
                self.assertEqual(sim.delivered[m], {})

    def test_colluding_equivocation_is_consistent(self) -> None:
        """
        f byzantine members, the originator among them, send two payloads to
        different honest members and ECHO/READY both digests at random: no two
        honest members deliver different payloads, and if one delivers, all do.
        """
        outcomes = set()
        for seed in range(12):
            for n in (4, 7, 10):
                f = (n - 1) // 3
                sim = Sim(n, seed=seed, byzantine=range(f))
                rng = random.Random(seed * 31 + n)
                origin = sim.members[0]
                key = instance_key(origin, b"t")
                payloads = [b"one", b"two"]
                digests = [payload_digest(key, p) for p in payloads]
                for m in sim.honest:
                    sim.post(origin, m, [encode_send(b"t", payloads[rng.randrange(2)])])
                    for b in sim.byzantine:
                        choice = rng.randrange(2)
                        sim.post(b, m, [encode_echo(key, digests[choice]), encode_ready(key, digests[rng.randrange(2)])])
                sim.run()
                results = {sim.delivered[m].get((origin, b"t")) for m in sim.honest}
                self.assertLessEqual(len(results), 1, f"seed={seed} n={n}: inconsistent {results}")
                outcomes |= results
        # The scenarios do exercise both outcomes.
        self.assertTrue(outcomes & {b"one", b"two"})

    def test_byzantine_echoers_cannot_forge(self) -> None:
        """
        f members ECHO and READY the digest of a forged payload before the
        honest SEND arrives: the honest payload is delivered everywhere.
        """
        for n in (4, 7, 10):
            f = (n - 1) // 3
            sim = Sim(n, seed=n, byzantine=range(n - f, n))
            origin = sim.members[0]
            key = instance_key(origin, b"t")
            forged = payload_digest(key, b"forged")
            for m in sim.honest:
                for b in sim.byzantine:
                    sim.post(b, m, [encode_echo(key, forged), encode_ready(key, forged)])
            sim.run()
            sim.broadcast(0, b"t", b"genuine")
            sim.run()
            for m in sim.honest:
                self.assertEqual(sim.delivered[m], {(origin, b"t"): b"genuine"})

    def test_lying_responder(self) -> None:
        """
        A byzantine echoer answers a payload request with the wrong payload:
        it is blamed, and the member still delivers the real payload.
        """
        sim = Sim(4, seed=1, byzantine=[3])
        origin, victim, liar = sim.members[0], sim.members[2], sim.members[3]
        key = instance_key(origin, b"t")
        d = payload_digest(key, b"real")
        # The victim never gets the SEND; the liar ECHOes and READYs d to all.
        actions = sim.nodes[origin].broadcast(b"t", b"real")
        sim.post(origin, sim.members[1], [a.record for a in actions if isinstance(a, SendAll)])
        for peer in (sim.members[1], victim):
            sim.post(liar, peer, [encode_echo(key, d), encode_ready(key, d)])
        sim.hold = lambda sender, to, batch: to == victim and decode_batch(batch, 255, 1000)[0][0] == RESPONSE
        sim.run()
        requests = [b for (s, to, b) in sim.to_byzantine if s == victim and decode_batch(b, 255, 0)[0][0] == REQUEST]
        self.assertEqual(len(requests), 1)
        self.assertEqual(len(sim.held), 1)
        self.assertEqual(sim.delivered[victim], {})
        sim.apply(victim, sim.nodes[victim].receive(liar, encode_batch([encode_response(key, b"fake")])))
        self.assertEqual(sim.culprits(), {liar})
        self.assertEqual(sim.delivered[victim], {})
        sim.hold = lambda sender, to, batch: False
        sim.bag, sim.held = sim.held, []
        sim.run()
        for m in sim.honest:
            self.assertEqual(sim.delivered[m], {(origin, b"t"): b"real"})

    def test_equivocation_is_reported(self) -> None:
        """Two ECHOs, two READYs or two SENDs that disagree name their sender."""
        ms = member_keys(4)
        node = Bracha(ms[0], ms)
        key = instance_key(ms[1], b"t")
        a, b = payload_digest(key, b"a"), payload_digest(key, b"b")
        for enc in (encode_echo, encode_ready):
            node.receive(ms[2], encode_batch([enc(key, a)]))
            self.assertEqual(node.receive(ms[2], encode_batch([enc(key, a)])), [])
            actions = node.receive(ms[2], encode_batch([enc(key, b)]))
            self.assertEqual([type(x) for x in actions], [Misbehaviour])
            self.assertEqual(actions[0].culprit, ms[2])
        node.receive(ms[1], encode_batch([encode_send(b"t", b"a")]))
        actions = node.receive(ms[1], encode_batch([encode_send(b"t", b"b")]))
        self.assertEqual([(x.culprit, type(x)) for x in actions], [(ms[1], Misbehaviour)])

    def test_unsolicited_response_blamed(self) -> None:
        ms = member_keys(4)
        node = Bracha(ms[0], ms)
        key = instance_key(ms[1], b"t")
        d = payload_digest(key, b"p")
        # Reach READY quorum without the payload: we now want d.
        actions = []
        for m in ms[1:]:
            actions += node.receive(m, encode_batch([encode_ready(key, d)]))
        self.assertEqual(node.receive(ms[2], encode_batch([encode_response(key, b"p")]))[0],
                         Misbehaviour(ms[2], "unsolicited broadcast RESPONSE"))


class MemoryBoundTests(SynchronousTestCase):
    """A byzantine member cannot make an honest member remember without limit."""

    def test_invented_tags_charged_to_inventor(self) -> None:
        """
        A byzantine member ECHOs thousands of tags nobody broadcast, in the
        name of an honest originator: our state stays within the inventor's
        own share (its oldest inventions make way for its newer ones), nobody
        honest is blamed, and the honest originator can still broadcast.
        """
        config = BrachaConfig(max_unconfirmed_per_member=50, max_open_per_origin=10)
        sim = Sim(4, byzantine=[3], config=config)
        bad, honest_origin = sim.members[3], sim.members[0]
        node = sim.nodes[sim.members[1]]
        records = [encode_echo(instance_key(honest_origin, b"fake%d" % i), bytes(32)) for i in range(2000)]
        self.assertEqual(node.receive(bad, encode_batch(records)), [])
        self.assertEqual(node.open_instances, 50)
        self.assertEqual(node.evicted, 2000 - 50)
        for i in range(10):
            sim.broadcast(0, b"real%d" % i, b"x")
        sim.run()
        for m in sim.honest:
            self.assertEqual(len(sim.delivered[m]), 10)
        self.assertEqual(sim.misbehaviour, [])
        # Unconfirmed junk is abandoned eventually, and not remembered.
        for _ in range(config.abandon_sweeps):
            node.sweep()
        self.assertEqual(node.open_instances, 0)
        self.assertFalse(node.is_done(honest_origin, b"fake1999"))

    def test_lingering_instances_make_room(self) -> None:
        """
        With a member down, delivered instances linger; an honest originator's
        burst beyond the quota evicts its oldest delivered ones instead of
        being refused or blamed.
        """
        sim = Sim(4, silent=[3], config=BrachaConfig(max_open_per_origin=5))
        for i in range(20):
            sim.broadcast(0, b"t%d" % i, b"p%d" % i)
            sim.run()
        for m in sim.honest:
            self.assertEqual(len(sim.delivered[m]), 20)
            self.assertEqual(sim.nodes[m].open_instances, 5)
        self.assertEqual(sim.misbehaviour, [])

    def test_byzantine_originator_capped(self) -> None:
        """
        A byzantine originator's SENDs beyond max_open_per_origin wait, unECHOed,
        within its own share; past that its oldest waiting ones are dropped
        and remembered, so replaying them does nothing.
        """
        ms = member_keys(4)
        node = Bracha(ms[0], ms, BrachaConfig(max_open_per_origin=20, max_unconfirmed_per_member=30))
        actions = node.receive(ms[1], encode_batch([encode_send(b"t%d" % i, b"p" * 100) for i in range(100)]))
        self.assertEqual(node.open_instances, 50)
        self.assertEqual(sum(isinstance(a, SendAll) for a in actions), 20)
        self.assertEqual([a for a in actions if not isinstance(a, SendAll)], [])
        self.assertTrue(node.is_done(ms[1], b"t20"))
        self.assertEqual(node.receive(ms[1], encode_batch([encode_send(b"t20", b"p" * 100)])), [])
        self.assertEqual(node.open_instances, 50)

    def test_undelivered_abandoned(self) -> None:
        """An instance that can never deliver is abandoned after abandon_sweeps and then ignored."""
        ms = member_keys(4)
        node = Bracha(ms[0], ms, BrachaConfig(abandon_sweeps=3))
        node.receive(ms[1], encode_batch([encode_send(b"t", b"p")]))
        for _ in range(2):
            node.sweep()
        self.assertEqual(node.open_instances, 1)
        node.sweep()
        self.assertEqual(node.open_instances, 0)
        self.assertEqual(node.receive(ms[1], encode_batch([encode_send(b"t", b"p")])), [])
        self.assertEqual(node.open_instances, 0)

    def test_done_set_bounded(self) -> None:
        """An originator's own later broadcasts push its oldest keys out of the done set."""
        ms = member_keys(1)
        node = Bracha(ms[0], ms, BrachaConfig(done_capacity=5))
        for i in range(20):
            node.broadcast(b"t%d" % i, b"")
        self.assertEqual([i for i in range(20) if node.is_done(ms[0], b"t%d" % i)], list(range(15, 20)))


def kind_of(batch: bytes) -> int:
    """The kind of the first record in a batch."""
    return decode_batch(batch, 255, 2**32 - 1)[0][0]


class QuotaTotalityTests(SynchronousTestCase):
    """
    Memory quotas never cost totality: whatever byzantine members do to our
    quotas, a broadcast that one honest member delivers reaches every honest
    member, and honest members are never blamed for it.
    """

    def test_junk_from_byzantine_originators_cannot_block_an_honest_broadcast(self) -> None:
        """
        n = 7: two byzantine originators send one-off SENDs, three times the
        quotas, each to a single honest member, who echoes them: at Y they
        never confirm.  Then an honest broadcast whose SEND reaches Y after
        every other member's ECHO and READY: Y delivers it like everyone
        else, and blames nobody honest.
        """
        config = BrachaConfig(max_open_per_origin=8, max_unconfirmed_per_member=8)
        sim = Sim(7, seed=7, byzantine=[5, 6], config=config)
        origin, y = sim.members[0], sim.members[4]
        for bad in sorted(sim.byzantine):
            for h in sim.honest[:4]:
                for k in range(24):
                    sim.post(bad, h, [encode_send(b"junk %d" % k, b"")])
        sim.run()
        sim.hold = lambda sender, to, batch: sender == origin and to == y
        sim.broadcast(0, b"T", b"the payload")
        key = instance_key(origin, b"T")
        d = payload_digest(key, b"the payload")
        for bad in sorted(sim.byzantine):
            for h in sim.honest[:4]:
                sim.post(bad, h, [encode_echo(key, d), encode_ready(key, d)])
        sim.run()
        self.assertNotIn((origin, b"T"), sim.delivered[y])
        sim.release()
        sim.run()
        for m in sim.honest:
            self.assertEqual(sim.delivered[m].get((origin, b"T")), b"the payload")
        self.assertLessEqual(sim.culprits(), sim.byzantine)

    def test_withheld_member_pulls_after_the_originator_floods(self) -> None:
        """
        A byzantine originator SENDs to two honest members only, lets them
        deliver, then starts a quota's worth of new broadcasts before the
        third member's payload REQUESTs arrive: the requests are still
        answered and the third member delivers too.
        """
        sim = Sim(4, seed=2, byzantine=[3], config=BrachaConfig(max_open_per_origin=4))
        m0, m1, h = sim.honest
        bad = sim.members[3]
        key = instance_key(bad, b"X")
        d = payload_digest(key, b"payload X")
        for m in (m0, m1):
            sim.post(bad, m, [encode_send(b"X", b"payload X")])
        sim.post(bad, h, [encode_echo(key, d)])
        sim.hold = lambda sender, to, batch: sender == h and kind_of(batch) == REQUEST
        sim.run()
        self.assertEqual(sim.delivered[m0], {(bad, b"X"): b"payload X"})
        self.assertEqual(sim.delivered[h], {})
        self.assertEqual(len(sim.held), 2)
        for i in range(4):
            for m in sim.honest:
                sim.post(bad, m, [encode_send(b"Y%d" % i, b"y")])
        sim.run()
        sim.release()
        sim.run()
        self.assertEqual(sim.delivered[h].get((bad, b"X")), b"payload X")

    def test_withheld_member_pulls_after_the_instance_is_swept(self) -> None:
        """Same, but the holders sweep the delivered instance away before the REQUESTs arrive."""
        sim = Sim(4, seed=3, byzantine=[3])
        m0, m1, h = sim.honest
        bad = sim.members[3]
        key = instance_key(bad, b"X")
        for m in (m0, m1):
            sim.post(bad, m, [encode_send(b"X", b"payload X")])
        sim.post(bad, h, [encode_echo(key, payload_digest(key, b"payload X"))])
        sim.hold = lambda sender, to, batch: sender == h and kind_of(batch) == REQUEST
        sim.run()
        for m in (m0, m1):
            for _ in range(BrachaConfig().linger_sweeps):
                sim.nodes[m].sweep()
            self.assertEqual(sim.nodes[m].open_instances, 0)
        sim.release()
        sim.run()
        self.assertEqual(sim.delivered[h].get((bad, b"X")), b"payload X")

    def test_cap_filled_with_junk_only_we_saw(self) -> None:
        """
        A byzantine originator fills one member's quota with SENDs only that
        member got (they never deliver), then broadcasts normally: that
        member delivers along with everyone else.
        """
        sim = Sim(4, seed=5, byzantine=[3], config=BrachaConfig(max_open_per_origin=4))
        bad, victim = sim.members[3], sim.honest[2]
        for k in range(4):
            sim.post(bad, victim, [encode_send(b"junk%d" % k, b"j")])
        sim.run()
        key = instance_key(bad, b"X")
        for m in sim.honest:
            sim.post(bad, m, [encode_send(b"X", b"x"), encode_ready(key, payload_digest(key, b"x"))])
        sim.run()
        for m in sim.honest:
            self.assertEqual(sim.delivered[m], {(bad, b"X"): b"x"})
        self.assertEqual(sim.misbehaviour, [])

    def test_waiting_instance_echoes_when_room_frees(self) -> None:
        """
        An honest originator that is ahead of us (its quota at us is full of
        instances we have not delivered yet): its next SEND waits without
        blame, and we ECHO it as soon as one of the older ones delivers.
        """
        ms = member_keys(4)
        a, b, y = ms[0], ms[1], ms[2]
        node = Bracha(y, ms, BrachaConfig(max_open_per_origin=2))
        keys = [instance_key(a, b"t%d" % i) for i in range(3)]
        ds = [payload_digest(k, b"p%d" % i) for i, k in enumerate(keys)]
        for i in (0, 1):
            node.receive(a, encode_batch([encode_send(b"t%d" % i, b"p%d" % i)]))
        node.receive(b, encode_batch([encode_echo(keys[0], ds[0])]))
        node.receive(a, encode_batch([encode_ready(keys[0], ds[0])]))
        self.assertEqual(node.receive(a, encode_batch([encode_send(b"t2", b"p2")])), [])
        actions = node.receive(b, encode_batch([encode_ready(keys[0], ds[0])]))
        self.assertIn(Deliver(a, b"t0", b"p0"), actions)
        self.assertIn(SendAll(encode_echo(keys[2], ds[2])), actions)
        self.assertEqual([x for x in actions if isinstance(x, Misbehaviour)], [])

    def test_done_is_per_originator(self) -> None:
        """
        One originator's many broadcasts do not push another's out of the
        done set: a replayed SEND for an old tag stays ignored.
        """
        sim = Sim(4, config=BrachaConfig(done_capacity=5))
        first = sim.members[0]
        sim.broadcast(0, b"t", b"x")
        sim.run()
        for i in range(20):
            sim.broadcast(1, b"u%d" % i, b"")
            sim.run()
        node = sim.nodes[sim.members[2]]
        self.assertTrue(node.is_done(first, b"t"))
        self.assertFalse(node.is_done(sim.members[1], b"u0"))
        self.assertTrue(node.is_done(sim.members[1], b"u19"))
        self.assertEqual(node.receive(first, encode_batch([encode_send(b"t", b"another payload")])), [])


class CodecTests(SynchronousTestCase):
    """The batch format is strict: every malformed batch is refused whole and blamed."""

    key = instance_key(member_keys(4)[1], b"tag")

    def test_round_trip(self) -> None:
        records = [
            encode_send(b"tag", b"payload"),
            encode_echo(self.key, b"d" * 32),
            encode_ready(self.key, b"r" * 32),
            encode_request(self.key, b"q" * 32),
            encode_response(self.key, b""),
        ]
        self.assertEqual(decode_batch(encode_batch(records), 255, 100), [
            (SEND, b"tag", b"payload"),
            (ECHO, self.key, b"d" * 32),
            (READY, self.key, b"r" * 32),
            (4, self.key, b"q" * 32),
            (5, self.key, b""),
        ])

    def test_malformed_batches_blamed_without_state(self) -> None:
        ms = member_keys(4)
        good = encode_batch([encode_echo(self.key, b"d" * 32), encode_send(b"tag", b"payload")])
        bad = {
            "empty": b"",
            "version": b"\x02" + good[1:],
            "zero count": b"\x01\x00\x00",
            "count too high": b"\x01\x00\x03" + good[3:],
            "count too low": b"\x01\x00\x01" + good[3:],
            "trailing": good + b"\x00",
            "unknown kind": encode_batch([b"\x09" + bytes(70)]),
            "tag over limit": encode_batch([encode_echo(instance_key(ms[1], b"t" * 20), bytes(32))]),
            "payload over limit": encode_batch([encode_send(b"t", b"p" * 101)]),
            "payload length lies": encode_batch([b"\x01\x01t" + struct.pack(">I", 2**32 - 1) + b"p"]),
        }
        for i in range(1, len(good)):
            bad[f"truncated at {i}"] = good[:i]
        for name, data in bad.items():
            node = Bracha(ms[0], ms, BrachaConfig(max_tag=16, max_payload=100))
            actions = node.receive(ms[2], data)
            self.assertEqual(len(actions), 1, name)
            self.assertIsInstance(actions[0], Misbehaviour, name)
            self.assertEqual(actions[0].culprit, ms[2], name)
            self.assertEqual(node.open_instances, 0, name)

    def test_non_member_originator(self) -> None:
        ms = member_keys(4)
        node = Bracha(ms[0], ms)
        stranger = instance_key(hashlib.sha256(b"stranger").digest(), b"t")
        actions = node.receive(ms[2], encode_batch([encode_echo(stranger, bytes(32))]))
        self.assertEqual([a.culprit for a in actions], [ms[2]])
        self.assertEqual(node.open_instances, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz_only_decode_error(self, data: bytes) -> None:
        """Arbitrary bytes either decode or raise the shared codec's DecodeError, nothing else."""
        try:
            decode_batch(b"\x01" + data, 64, 64)
        except DecodeError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5]), st.binary(max_size=40), st.binary(max_size=60)),
                    min_size=1, max_size=8))
    def test_fuzz_round_trip(self, recs: list[tuple[int, bytes, bytes]]) -> None:
        key = self.key
        records, expected = [], []
        for kind, tag, body in recs:
            if kind == SEND:
                records.append(encode_send(tag, body))
                expected.append((SEND, tag, body))
            elif kind == 5:
                records.append(encode_response(key, body))
                expected.append((5, key, body))
            else:
                d = hashlib.sha256(body).digest()
                records.append({2: encode_echo, 3: encode_ready, 4: encode_request}[kind](key, d))
                expected.append((kind, key, d))
        self.assertEqual(decode_batch(encode_batch(records), 64, 64), expected)
