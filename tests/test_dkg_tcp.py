# -*- test-case-name: tests.test_dkg_tcp -*-
"""
The DKG end to end over real loopback TCP with Noise: n members, each with
its own L{PeerNetwork}, L{ReliableBroadcast} and L{DkgService} in one reactor.
"""

from __future__ import annotations

import random
import time
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from frostnode.broadcast.service import ReliableBroadcast
from frostnode.crypto.bip340 import schnorr_verify
from frostnode.dkg.driver import DkgResult, DkgService
from frostnode.dkg.messages import Reason
from frostnode.dkg.run import RunConfig
from frostnode.dkg.scheduler import SchedulePolicy
from frostnode.dkg.session import Timeouts
from frostnode.dkg.storage import KeyStoreDkgStorage, MemoryDkgStorage
from frostnode.identity import MemberDirectory
from frostnode.net.peers import PeerNetwork
from frostnode.store.db import Database
from frostnode.store.keys import EpochStatus, KeyStore
from tests.test_dkg_session import bip445_sign
from tests.test_net_support import fast_config, listening_socket, make_member


class TcpFederation:
    def __init__(self, test: TestCase, n: int, keystore: bool = False, timeouts: Optional[Timeouts] = None) -> None:
        sockets = [listening_socket(reactor) for _ in range(n)]
        self.members = [make_member(f"tcp:127.0.0.1:{port}") for _, port in sockets]
        self.directory = MemberDirectory(m.card for m in self.members)
        self.nets: list[PeerNetwork] = []
        self.broadcasts: list[ReliableBroadcast] = []
        self.services: list[DkgService] = []
        self.stores: list = []
        config = RunConfig(timeouts or Timeouts(round1=5.0, round2=5.0, reveal=3.0, agreement=5.0))
        for m, (endpoint, _) in zip(self.members, sockets):
            net = PeerNetwork(reactor, m.host, m.noise_private, self.directory, endpoint, fast_config())
            bc = ReliableBroadcast(net, self.directory.host_keys(), reactor)
            if keystore:
                db = Database.open(test.mktemp(), reactor=reactor)
                test.addCleanup(db.close)
                storage = KeyStoreDkgStorage(KeyStore(db))
            else:
                storage = MemoryDkgStorage()
            svc = DkgService(m.host, self.directory, net, bc, storage, reactor,
                             SchedulePolicy(interval=None), config, schedule=False)
            self.nets.append(net)
            self.broadcasts.append(bc)
            self.services.append(svc)
            self.stores.append(storage)
        for svc in self.services:
            test.addCleanup(svc.stopService)
        for bc in self.broadcasts:
            test.addCleanup(bc.stopService)
        for net in self.nets:
            test.addCleanup(net.stopService)
        for net, bc, svc in zip(self.nets, self.broadcasts, self.services):
            net.startService()
            bc.startService()
            svc.startService()


class TcpDkgTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def run_dkg(self, n: int, keystore: bool = False) -> None:
        fed = TcpFederation(self, n, keystore)
        start = time.monotonic()
        results: list[DkgResult] = yield gatherResults([svc.request_dkg() for svc in fed.services])
        elapsed = time.monotonic() - start
        certs = {r.certificate.encode() for r in results}
        self.assertEqual(len(certs), 1)
        for r in results:
            self.assertTrue(r.ok)
            self.assertTrue(r.member)
            self.assertEqual(r.excluded, {})
        t = results[0].certificate.params.threshold
        self.assertEqual(t, -(-2 * n // 3))
        kps = [r.key_package for r in results]
        signers = sorted(random.Random(n).sample(kps, t), key=lambda kp: kp.identifier)
        sig, out_key = bip445_sign(signers, b"loopback")
        self.assertEqual(out_key, results[0].output_key)
        self.assertTrue(schnorr_verify(b"loopback", out_key, sig))
        if keystore:
            for st in fed.stores:
                rec = st.keys.get(1)
                self.assertEqual(rec.status, EpochStatus.CERTIFIED)
                self.assertEqual(rec.output_key, out_key)
        # Not a timing assertion that could flake: just far from any timeout.
        self.assertLess(elapsed, 5.0)

    def test_n4_keystore(self):
        return self.run_dkg(4, keystore=True)

    def test_n7(self):
        return self.run_dkg(7)

    def test_n10(self):
        return self.run_dkg(10)

    @inlineCallbacks
    def test_silent_member_over_tcp(self):
        fed = TcpFederation(self, 4, timeouts=Timeouts(round1=1.0, round2=1.0, reveal=0.5, agreement=1.0))
        # Member 3's process never starts its DKG service: its links are up,
        # it relays broadcasts, but it never sends a round-1 package.
        yield fed.services[3].stopService()
        d = gatherResults([svc.request_dkg() for svc in fed.services[:3]])
        results = yield d
        for r in results:
            self.assertTrue(r.ok)
            self.assertEqual(r.excluded, {fed.members[3].key: Reason.SILENT_ROUND1})
