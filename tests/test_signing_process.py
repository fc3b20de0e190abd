"""
Signing across separate node processes: four members (t = 3) as real
C{twistd -n frostnode} processes set up as operators do (L{Federation} of
L{tests.test_e2e_federation}), over loopback TCP with Noise, with their
first key from a real DKG, used through the client library.

 - A record submitted to member A is signed at member C; the signature
   verifies with coincurve's BIP340 against the output key from C{pubkey}.
 - kill -9 of a signer while C coordinates a burst of requests: every
   request ends with a verified signature or a typed error; the signer
   restarts on its data directory and signs again (a retry at C succeeds,
   and so does a request it coordinates itself, where its own share comes
   first).  Its nonce store then shows that no nonce was used twice: every
   nonce it logged as spent, before and after the kill, is spent on disk,
   and no nonce was spent in both lives.

Nodes log at debug level, where the signing service names each nonce it
spends (after the spent mark is on disk, before the share leaves).  Waits
are on log events of the nodes and on the client library's answers; every
child is killed in cleanup.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

from coincurve import PublicKeyXOnly
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred, gatherResults
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from frostnode.client.errors import SIGNING_CODES, ClientError
from frostnode.client.library import FrostnodeClient, connect
from frostnode.config import load_config
from frostnode.store.db import Database
from frostnode.store.nonces import NonceStore
from tests.test_e2e_federation import Federation, NodeProcess, _key_certified, with_timeout

N, T = 4, 3
SIGNING = "frostnode.signing.service.SigningService"


def asynctest(f: Callable) -> Callable:
    def run(self: Any) -> Any:
        return ensureDeferred(f(self))
    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run


def spent(event: dict) -> bool:
    """A signer's debug event: a nonce is spent on disk and its share may leave."""
    return event.get("namespace") == SIGNING and "nonce_id" in event and event.get("text", "").startswith(
        "signing: nonce ")


def spent_ids(proc: NodeProcess) -> list[str]:
    return [e["nonce_id"] for e in proc.events if spent(e)]


class SigningProcessTests(TestCase):
    timeout = 150

    def setUp(self) -> None:
        self.fed = Federation(Path(self.mktemp()), N, T)
        for path in self.fed.configs:
            path.write_text(path.read_text().replace('level = "info"', 'level = "debug"'))

    def running(self, i: int) -> Any:
        text = f"frostnode {self.fed.cards[i].host_key.hex()} running"
        return with_timeout(self.fed.processes[i].when(lambda e: e.get("text", "").startswith(text)), 60,
                            f"member {i} to log that it runs")

    async def client(self, i: int) -> FrostnodeClient:
        c = await connect(reactor, self.fed.target(i), connect_timeout=10.0, timeout=30.0)
        self.addCleanup(c.close)
        return c

    async def held_everywhere(self, clients: list[FrostnodeClient], record_id: bytes, within: float = 20.0) -> None:
        """Ask every node for the record until each has it (another process's state: polled)."""
        deadline = reactor.seconds() + within
        for c in clients:
            while True:
                try:
                    await c.get(record_id)
                    break
                except ClientError as e:
                    if e.code != "not-found" or reactor.seconds() > deadline:
                        raise
                await deferLater(reactor, 0.05, lambda: None)

    @asynctest
    async def test_sign_and_kill_9_of_a_signer(self) -> None:
        fed = self.fed
        fed.start(self)
        certified = await with_timeout(gatherResults([p.when(_key_certified) for p in fed.processes]), 60,
                                       "every node to log its first certified key")
        epoch = certified[0]["epoch"]
        clients = [await self.client(i) for i in range(N)]
        a, c = 0, 2
        accepted = await clients[a].submit("invoices", b"invoice 17: 250 sat")
        await self.held_everywhere(clients, accepted.record_id)
        request = {"records": [accepted.record_id.hex()]}

        keys = await clients[c].pubkey()
        result = await clients[c].sign("record", request)
        self.assertTrue(PublicKeyXOnly(keys.output_key).verify(result.signature, result.message))
        self.assertEqual((result.key, len(result.signers)), (keys.output_key, T))
        self.assertIn(fed.cards[c].host_key, result.signers)

        # The victim: the first member C picks after itself once every pool is warm (the next host key).
        order = sorted(card.host_key for card in fed.cards)
        victim_key = order[(order.index(fed.cards[c].host_key) + 1) % N]
        v = next(i for i, card in enumerate(fed.cards) if card.host_key == victim_key)
        first_life = fed.processes[v]

        # A burst of requests at C; kill -9 the victim once it has spent three more nonces.
        baseline = len(spent_ids(first_life))
        count = [0]

        def three_more(event: dict) -> bool:
            count[0] += spent(event)
            return count[0] >= baseline + 3

        burst = [clients[c].sign("record", request) for _ in range(40)]
        await with_timeout(first_life.when(three_more), 30, "the victim to spend three nonces of the burst")
        fed.transports[v].signalProcess("KILL")
        reason = await with_timeout(first_life.ended, 30, "the victim to die")
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)

        outcomes = await with_timeout(DeferredList(burst, consumeErrors=True), 60, "every request of the burst")
        signed = [value for ok, value in outcomes if ok]
        errors = [value.value for ok, value in outcomes if not ok]
        for e in errors:  # a clear, typed error, never a bad or missing answer
            self.assertIsInstance(e, ClientError)
            self.assertIn(e.code, SIGNING_CODES, str(e))
        for r in signed:
            self.assertTrue(PublicKeyXOnly(keys.output_key).verify(r.signature, r.message))
        self.assertTrue(signed, [str(e) for e in errors])
        # The kill hit sessions in flight: some request gave up a session with the victim and started another.
        self.assertTrue(errors or any(r.sessions > 1 for r in signed))

        # The victim restarts on its data directory.  A retry at C succeeds, and so does a request the
        # victim coordinates itself (its own share first: a nonce from its store after the restart).
        second_life = fed.spawn(self, v)
        await self.running(v)
        retry = await clients[c].sign("record", request)
        self.assertTrue(PublicKeyXOnly(keys.output_key).verify(retry.signature, retry.message))
        clients[v] = await self.client(v)
        own = await clients[v].sign("record", request)
        self.assertTrue(PublicKeyXOnly(keys.output_key).verify(own.signature, own.message))
        self.assertIn(victim_key, own.signers)

        # No nonce was used twice: stop the victim and read its nonce store.
        fed.transports[v].signalProcess("TERM")
        await with_timeout(second_life.ended, 30, "the victim to stop")
        before, after = spent_ids(first_life), spent_ids(second_life)
        self.assertTrue(before and after)
        self.assertEqual(len(set(before)), len(before))
        self.assertEqual(len(set(after)), len(after))
        self.assertEqual(set(before) & set(after), set())
        db = Database.open(load_config(fed.configs[v]).node.data_dir)
        self.addCleanup(db.close_sync)
        nonces = NonceStore(db)
        for nonce_id in before + after:
            self.assertIs(nonces.status(epoch, bytes.fromhex(nonce_id)), True, nonce_id)
