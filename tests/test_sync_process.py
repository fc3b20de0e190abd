"""
kill -9 of the member that acknowledged records, with that member in a
separate process (scripts/sync_node.py: its store, links, broadcast and sync
service) and four members in this process, all over loopback TCP with
Noise.

The killed member is configured so that nothing it acknowledged can have
left it before the kill (its batch limit is below one record, so nothing is
broadcast, and it sends no summary for 30 s): the records exist only on its
disk.  After a restart on
the same data directory they are there, and every other member fetches them
from it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.trial.unittest import TestCase

from tests.support import EventProcess
from tests.test_sync_support import FAST, TcpFederation, record, temp_path, until, wait_converged

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "sync_node.py")


class KillTests(TestCase):
    timeout = 120

    def spawn(self, fed: TcpFederation, listen_fd: int, data_dir: str, sync: dict) -> EventProcess:
        m = fed.members[0]
        path = temp_path(self) + ".json"
        with open(path, "w") as f:
            json.dump({
                "data_dir": data_dir,
                "host_secret": m.host.secret.hex(),
                "noise_secret": m.noise_private.hex(),
                "cards": [x.card.to_dict() for x in fed.members],
                "listen_fd": 3,
                "links": asdict(fed.link_config),
                "sync": sync,
            }, f)
        os.chmod(path, 0o600)
        child = EventProcess("sync_node.py")
        reactor.spawnProcess(child, sys.executable, [sys.executable, SCRIPT, path], env=os.environ.copy(),
                             childFDs={0: "w", 1: "r", 2: "r", 3: listen_fd})

        def cleanup() -> Any:
            if child.running:
                child.transport.signalProcess("KILL")
                return child.ended
            return None

        self.addCleanup(cleanup)
        return child

    @inlineCallbacks
    def test_acknowledged_records_survive_kill_9_and_reach_everyone(self):
        fed = TcpFederation(self, play=[1, 2, 3, 4])
        endpoint = fed.endpoints[0]
        listen_fd = endpoint.fileno
        self.addCleanup(os.close, listen_fd)
        peers = fed.running()
        data_dir = temp_path(self)
        quiet = asdict(replace(FAST, max_batch_bytes=100, summary_interval=30.0))
        child = self.spawn(fed, listen_fd, data_dir, quiet)
        yield child.when(lambda e: e["event"] == "ready")
        yield gatherResults([p.links.when_connected(fed.keys[0]) for p in peers])

        bodies = [record(i, client=9, size=1024) for i in range(20)]
        acks = gatherResults([child.when(lambda e, rid=b.record_id.hex(): e.get("id") == rid) for b in bodies])
        for b in bodies:
            child.send(cmd="submit", topic=b.topic, payload=b.payload.hex(), client=b.client_key.hex(),
                       timestamp=b.timestamp)
        acked = yield acks
        child.transport.signalProcess("KILL")
        reason = yield child.ended
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)
        self.assertEqual([e["event"] for e in acked], ["ack"] * 20)
        self.assertTrue(all(e["created"] and e["origin"] == fed.keys[0].hex() for e in acked))
        # nothing left the killed member
        self.assertEqual([p.digest()[0] for p in peers], [0] * 4)

        child = self.spawn(fed, listen_fd, data_dir, asdict(FAST))
        yield child.when(lambda e: e["event"] == "ready")
        for b in bodies:
            child.send(cmd="get", id=b.record_id.hex())
        got = yield gatherResults([child.when(lambda e, rid=b.record_id.hex(): e.get("id") == rid) for b in bodies])
        self.assertEqual([e["held"] for e in got], [True] * 20)
        yield wait_converged(peers, 20, timeout=30)
        self.assertTrue(all(b.record_id in p.log for b in bodies for p in peers))
        yield until(peers, lambda: sum(p.sync.records_fetched for p in peers) == 4 * 20, 5)
        # the restarted member takes new records and spreads them as usual
        child.send(cmd="submit", topic="t", payload=b"after".hex(), client=(b"\x05" * 32).hex())
        yield child.when(lambda e: e["event"] == "ack")
        yield until(peers, lambda: all(p.digest()[0] == 21 for p in peers), 30)
        child.send(cmd="stop")
        yield child.ended
