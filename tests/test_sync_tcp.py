"""
The sync service over real loopback TCP with Noise (L{PeerNetwork}), five
members in this process, each on its own LMDB store: records submitted to
several members reach all of them; a member stopped during 1,000
submissions (links, services and store closed) restarts on its data
directory and catches up to the others' digest.

The links keep a per-peer queue of unacknowledged messages that outlives a
peer's restart, so a short absence is healed by the links themselves; the
restart test gives them a small queue, so that the absence overflows it (as
a long one would with the default) and catch-up has to do the work.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.test_net_support import fast_config
from tests.test_sync_support import TcpFederation, record, submit_all, until, wait_converged


class LoopbackTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_five_members_over_loopback_converge(self):
        fed = TcpFederation(self)
        yield fed.when_connected()
        nodes = fed.running()
        results = yield submit_all(nodes, [record(i, client=i % 3, size=1024) for i in range(300)], lambda i: i % 5)
        self.assertTrue(all(r.created for r in results))
        yield wait_converged(nodes, 300, timeout=60)
        self.assertTrue(all(n.sync.batches_received > 0 for n in nodes))

    @inlineCallbacks
    def test_stopped_member_restarts_and_catches_up(self):
        fed = TcpFederation(self, link_config=fast_config(peer_queue_size=8, receive_window=131072))
        yield fed.when_connected()
        yield submit_all(fed.running(), [record(i) for i in range(50)], lambda i: i % 5)
        yield wait_converged(fed.running(), 50)
        yield fed.stop_node(4)
        for r in range(10):
            bodies = [record(1000 + 100 * r + i, client=1, size=256) for i in range(100)]
            yield submit_all(fed.running(), bodies, lambda i: i % 4)
        yield wait_converged(fed.running(), 1050, timeout=60)
        back = fed.start(4)
        self.assertEqual(back.digest()[0], 50)
        yield wait_converged(fed.running(), 1050, timeout=60)
        yield until([back], lambda: back.sync.records_fetched > 500, 5, lambda: f"{back.sync.records_fetched} fetched")
