"""
kill -9 of a full node right after it acknowledged records: five members
as five real C{twistd -n frostnode} processes (set up as operators do, see
L{tests.test_e2e_federation}), over loopback TCP with Noise, used through
the client library.  After the SIGKILL the member restarts on its data
directory: every record it acknowledged is there, and every other member
serves it.

Unlike L{tests.test_sync_process}, the node's own configuration gives no way
to hold its broadcasts back, so some records may have spread before the
kill; that test covers records that exist only on the killed member's disk.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from frostnode.client.library import FrostnodeClient, connect
from tests.test_e2e_federation import Federation, with_timeout


class FullNodeKillTests(TestCase):
    timeout = 120

    def running(self, fed: Federation, i: int) -> Deferred:
        text = f"frostnode {fed.cards[i].host_key.hex()} running"
        return with_timeout(fed.processes[i].when(lambda e: e.get("text", "").startswith(text)), 60,
                            f"member {i} to log that it runs")

    @inlineCallbacks
    def client(self, fed: Federation, i: int) -> Generator[Deferred, Any, FrostnodeClient]:
        c = yield connect(reactor, fed.target(i), connect_timeout=10.0, timeout=10.0)
        self.addCleanup(c.close)
        return c

    @inlineCallbacks
    def held_by(self, client: FrostnodeClient, record_ids: list[bytes], within: float) -> Generator[Deferred, Any, None]:
        """Ask C{client}'s node for each record until it has all of them (at most C{within} seconds)."""
        deadline = reactor.seconds() + within
        missing = list(record_ids)
        while missing:
            try:
                yield client.get(missing[0])
                missing.pop(0)
                continue
            except Exception as e:
                if getattr(e, "code", None) != "not-found" or reactor.seconds() > deadline:
                    raise AssertionError(f"{len(missing)} records not served: {e}") from None
            yield deferLater(reactor, 0.1, lambda: None)

    @inlineCallbacks
    def test_records_acknowledged_before_kill_9_are_kept_and_reach_everyone(self):
        fed = Federation(Path(self.mktemp()), 5, 3)
        for i in range(5):
            fed.spawn(self, i)
        yield gatherResults([self.running(fed, i) for i in range(5)])
        clients = yield gatherResults([self.client(fed, i) for i in range(5)])

        accepted = yield gatherResults([clients[0].submit("kill/records", b"acknowledged %d" % i) for i in range(20)])
        fed.transports[0].signalProcess("KILL")
        reason = yield with_timeout(fed.processes[0].ended, 30, "member 0 to die")
        self.assertIsInstance(reason, ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)
        ids = [a.record_id for a in accepted]
        self.assertTrue(all(a.created and a.origin == fed.cards[0].host_key for a in accepted))
        self.assertEqual(sorted(a.seq for a in accepted), list(range(1, 21)))

        fed.spawn(self, 0)
        yield self.running(fed, 0)
        clients[0] = yield self.client(fed, 0)
        yield self.held_by(clients[0], ids, within=5)
        yield gatherResults([self.held_by(c, ids, within=60) for c in clients[1:]])
        statuses = yield gatherResults([c.status() for c in clients])
        self.assertEqual(len({s["log"]["digest"] for s in statuses}), 1, [s["log"]["count"] for s in statuses])
