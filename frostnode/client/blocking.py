# -*- test-case-name: tests.test_client_cli -*-
"""
A synchronous wrapper around L{FrostnodeClient} for scripts that do not use
Twisted::

    from frostnode.client.blocking import BlockingClient
    from frostnode.client.library import NodeTarget

    with BlockingClient.connect(NodeTarget.from_card_file("node.json")) as node:
        accepted = node.submit("prices/btc", b"64000")
        print(node.get(accepted.record_id).payload)
        signed = node.sign("record", {"records": [accepted.record_id.hex()]})
        print(signed.signature.hex(), "under", signed.key.hex())

How: every call is handed to the reactor thread with
C{blockingCallFromThread} and waits for its Deferred.  If no reactor is
running, the first connection starts one in a daemon thread (without signal
handlers) that lives as long as the process; a program that already runs a
reactor in another thread just passes it.  Calling from the reactor thread
itself would deadlock, so it raises C{RuntimeError} instead: use
L{FrostnodeClient} there.  Errors are the library's L{ClientError}s.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

from frostnode.client.library import DEFAULT_MAX_ANSWER, FrostnodeClient, NodeTarget, connect
from frostnode.client.messages import Accepted, PublicKeys, Record, TopicPage
from frostnode.signing.checkpoint import Checkpoint
from frostnode.signing.commands import CheckpointPage, SignResult
from frostnode.signing.suites import BIP445

_start_lock = threading.Lock()


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def ensure_reactor_running(reactor: Any, timeout: float = 10.0) -> None:
    """Start C{reactor} in a daemon thread unless it runs already."""
    with _start_lock:
        if reactor.running:
            if isInIOThread():
                raise RuntimeError("BlockingClient blocks the calling thread: it cannot be used from the reactor "
                                   "thread (use FrostnodeClient's Deferreds there)")
            return
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                  name="frostnode-client-reactor", daemon=True)
        thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the reactor thread did not start")


class BlockingClient:
    """A connection to one node whose methods block until the node answers."""

    def __init__(self, client: FrostnodeClient, reactor: Any) -> None:
        self._client = client
        self._reactor = reactor

    @classmethod
    def connect(cls, target: NodeTarget, private_key: Optional[bytes] = None, *, reactor: Any = None,
                connect_timeout: float = 10.0, timeout: float = 30.0,
                max_answer_size: int = DEFAULT_MAX_ANSWER) -> "BlockingClient":
        """Connect and handshake (see L{frostnode.client.library.connect}); blocks."""
        reactor = reactor or _default_reactor()
        ensure_reactor_running(reactor)
        client = blockingCallFromThread(reactor, connect, reactor, target, private_key,
                                        connect_timeout=connect_timeout, timeout=timeout,
                                        max_answer_size=max_answer_size)
        return cls(client, reactor)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return blockingCallFromThread(self._reactor, fn, *args, **kwargs)

    @property
    def client(self) -> FrostnodeClient:
        """The underlying Deferred-based client (use it only from the reactor thread)."""
        return self._client

    @property
    def client_key(self) -> bytes:
        return self._client.client_key

    @property
    def node_host_key(self) -> bytes:
        return self._client.node_host_key

    def submit(self, topic: str, payload: bytes, *, timestamp: Optional[int] = None,
               nonce: Optional[bytes] = None) -> Accepted:
        return self._call(self._client.submit, topic, payload, timestamp=timestamp, nonce=nonce)

    def get(self, record_id: bytes) -> Record:
        return self._call(self._client.get, record_id)

    def topic(self, topic: str, from_position: int = 1, limit: int = 100) -> TopicPage:
        return self._call(self._client.topic, topic, from_position, limit)

    def status(self) -> dict:
        return self._call(self._client.status)

    def pubkey(self) -> PublicKeys:
        return self._call(self._client.pubkey)

    def sign(self, scheme: str, request: Any, ciphersuite: str = BIP445, audit: bool = False) -> SignResult:
        """See L{FrostnodeClient.sign}: C{request} is the scheme's bytes or its JSON form."""
        return self._call(self._client.sign, scheme, request, ciphersuite, audit)

    def checkpoint(self) -> Checkpoint:
        return self._call(self._client.checkpoint)

    def checkpoints(self, from_seq: int = 1, limit: int = 100) -> CheckpointPage:
        return self._call(self._client.checkpoints, from_seq, limit)

    def call(self, command: str, args: bytes = b"") -> bytes:
        return self._call(self._client.call, command, args)

    def close(self) -> None:
        self._call(self._client.close)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
