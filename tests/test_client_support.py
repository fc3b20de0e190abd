"""
Shared helpers for the tests.test_client_* modules (no tests here): a node's
client side on real loopback TCP (a real LMDB log and key store behind a
small stand-in for the sync service), and a raw Noise client that speaks the
client protocol byte by byte.

L{FakeSync} implements the three things the client layer uses of
L{frostnode.sync.service.SyncService} (C{submit}, C{status}, C{datalog})
over a real L{DataLog}: C{submit} appends locally and fires after the
fsync, as the real service does, without the replication.  (The real
service is tested through the client port in tests.test_client_server.)
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.protocols.basic import Int16StringReceiver
from twisted.trial.unittest import TestCase

from frostnode.client.api import NodeAPI
from frostnode.client.handshake import ClientHandshake, NodeHello, encode_client_hello
from frostnode.client.library import NodeTarget
from frostnode.client.limits import ClientLimits
from frostnode.client.messages import FrameReader, encode_frame, encode_request
from frostnode.client.server import ClientPortService
from frostnode.crypto.bip340 import pubkey_xonly, taproot_output_key
from frostnode.identity import AddressCard, HostKeypair, MemberDirectory
from frostnode.net.noise import generate_noise_private_key, noise_public_key
from frostnode.store.db import Database
from frostnode.store.keys import EpochRecord, KeyStore
from frostnode.store.log import DataLog, RecordBody


class SubmitResult(NamedTuple):
    record_id: bytes
    created: bool
    origin: bytes
    seq: int


class FakeSync:
    """The sync service's client-facing surface, over a real log, without peers."""

    def __init__(self, log: DataLog, clock: Any) -> None:
        self.datalog = log
        self.clock = clock
        self.submitted = 0

    def submit(self, body: RecordBody) -> Deferred:
        self.submitted += 1
        d = self.datalog.append_local(body, self.clock.seconds())

        def done(appended: Any) -> SubmitResult:
            entry = self.datalog.get(appended.record_id)
            return SubmitResult(appended.record_id, appended.created, entry.envelope.origin, entry.envelope.seq)

        return d.addCallback(done)

    def status(self) -> dict:
        digest = self.datalog.digest()
        return {"digest": digest.hex(), "count": digest.count, "lag": 0, "links_up": 0}


def listening_socket() -> tuple[AdoptedStreamServerEndpoint, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    return AdoptedStreamServerEndpoint(reactor, sock.detach(), socket.AF_INET), port


def add_epoch(keystore: KeyStore, members: tuple[bytes, ...], epoch: int = 1) -> EpochRecord:
    """A certified epoch with a real Taproot key pair, as the DKG would leave it."""
    internal = pubkey_xonly((epoch + 6).to_bytes(32, "big"))
    output, _ = taproot_output_key(internal)
    rec = EpochRecord(epoch=epoch, session_id=b"s%d" % epoch, members=tuple(sorted(members)), threshold=1,
                      identifier=1, secret_share=b"\x01" * 32, commitments=b"c",
                      verification_shares=tuple(b"\x02" * 33 for _ in members), internal_key=internal,
                      output_key=output, created=1.0)
    keystore.put_pending_sync(rec)
    return keystore.certify_sync(epoch, b"certificate", 2.0)


class TestNode:
    """
    One node's client side: log, key store, API and a listening client port.

    @ivar target: how a client reaches it (address and Noise key).
    @ivar card: its signed address card, with C{client_addresses}.
    """

    def __init__(self, test: TestCase, limits: Optional[ClientLimits] = None, sync_factory: Any = FakeSync) -> None:
        self.host = HostKeypair.generate()
        self.noise_private = generate_noise_private_key()
        self.db = Database.open(test.mktemp(), reactor=reactor)
        test.addCleanup(self.db.close)
        self.log = DataLog(self.db, self.host.public)
        self.keystore = KeyStore(self.db)
        self.sync = sync_factory(self.log, reactor)
        self.limits = limits or ClientLimits()
        endpoint, self.port = listening_socket()
        self.card = AddressCard.create(self.host, noise_public_key(self.noise_private),
                                       [f"tcp:127.0.0.1:{self.port + 1}"])  # a peer address, never dialled here
        self.directory = MemberDirectory([self.card])
        self.api = NodeAPI(self.sync, reactor, keystore=self.keystore, directory=self.directory, threshold=1,
                           limits=self.limits, network="regtest")
        self.service = ClientPortService(self.api, self.noise_private, endpoint, reactor, self.limits)
        self.service.startService()
        test.addCleanup(self.service.stopService)
        self.target = NodeTarget("127.0.0.1", self.port, noise_public_key(self.noise_private), self.host.public)

    @property
    def factory(self) -> Any:
        return self.service.factory

    def card_json(self) -> dict:
        d = self.card.to_dict()
        d["client_addresses"] = [f"tcp:127.0.0.1:{self.port}"]
        return d


class RawClient(Int16StringReceiver):
    """
    A client that does a real handshake with any key, then sends hand-made
    frames and records every answer frame (request id, body).
    """

    MAX_LENGTH = 65535

    def __init__(self, private_key: Optional[bytes] = None) -> None:
        self.private_key = private_key or generate_noise_private_key()
        self.hs = ClientHandshake(self.private_key, True, encode_client_hello(), self._hello)
        self.hello: Optional[NodeHello] = None
        self.cipher: Any = None
        self.ready: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.frames = FrameReader(1 << 30)
        self.answers: list[tuple[int, bytes]] = []
        self._waiters: list[tuple[int, Deferred]] = []

    def _hello(self, key: bytes, payload: bytes) -> None:
        self.hello = NodeHello.decode(payload)

    def connectionMade(self) -> None:
        for m in self.hs.start():
            self.sendString(m)

    def stringReceived(self, frame: bytes) -> None:
        if self.cipher is not None:
            for item in self.frames.feed(self.cipher.decrypt(frame)):
                self.answers.append((item.request_id, item.body))
            for waiter in list(self._waiters):
                if len(self.answers) >= waiter[0]:
                    self._waiters.remove(waiter)
                    waiter[1].callback(self.answers)
            return
        for m in self.hs.receive(frame):
            self.sendString(m)
        if self.hs.complete:
            self.cipher = self.hs.transport()
            self.ready.callback(self)

    def send_plaintext(self, data: bytes) -> None:
        for i in range(0, len(data), 65000):
            self.sendString(self.cipher.encrypt(data[i:i + 65000]))

    def request(self, request_id: int, command: str, args: bytes = b"") -> None:
        self.send_plaintext(encode_frame(request_id, encode_request(command, args)))

    def when_answers(self, count: int) -> Deferred:
        d: Deferred = Deferred()
        if len(self.answers) >= count:
            d.callback(self.answers)
        else:
            self._waiters.append((count, d))
        return d

    def connectionLost(self, reason: Any = None) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.lost.callback(None)
