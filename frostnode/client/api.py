# -*- test-case-name: tests.test_client_server -*-
"""
L{NodeAPI}: what clients may ask a node, behind both doors (the Noise client
port and the local HTTP API), answered from the sync service, the log and
the key store.

Decisions:

  - B{One command table.}  The Noise port hands every request to
    L{NodeAPI.call} with the command's name and its still-encoded arguments;
    the handler registered under that name decodes them, does the work and
    returns the encoded result (or a Deferred of it).  The built-ins
    (C{submit}, C{get}, C{topic}, C{status}, C{pubkey}) are registered the
    same way a later layer registers its own (the signing service's
    C{sign}, C{checkpoint} and C{checkpoints}, see
    L{frostnode.signing.commands}): C{api.register_command("sign",
    handler)}; a layer adds its section to C{status} with L{add_status}.
    Typed methods (L{submit}, L{get}, ...) serve the HTTP API, which speaks
    JSON; the signing layer's are C{api.signing}.
  - B{The client key of a record} is the key the node authenticated: the
    client's Noise static key, taken from the handshake, never from the
    request, so a client cannot file records under another client's key.
    Over HTTP (loopback, the operator's own applications) the caller names
    a key or gets the all-zero I{anonymous local client} key.
  - B{Errors}: every failure reaches the client as a L{ClientError}
    (L{as_client_error}); anything unexpected becomes C{internal}, logged
    here once with its traceback, and the client sees a generic message.
  - B{Acknowledgement} is the sync service's: C{submit} answers when the
    service's Deferred fires, which it does after the fsync.  Its refusals
    map to C{unavailable} (L{SyncUnavailable}: not running) and
    C{rate-limited} (L{SyncOverloaded}: too many submissions waiting for the
    disk, retry after L{OVERLOADED_RETRY} seconds).
  - B{Reads} go straight to the data log (the sync service's
    C{datalog}), synchronously: LMDB reads are snapshot reads of
    microseconds and never see a write that was not acknowledged.
  - B{Big answers}: a C{topic} page is read from the log a few records at
    a time and stops at L{ClientLimits.max_answer_size} bytes (always at
    least one record), so a page of large records cannot make the node
    load thousands of megabytes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from frostnode.client.errors import (
    INTERNAL, NOT_FOUND, REMOTE_CODES, UNKNOWN_TOPIC, ClientError, invalid_request, rate_limited, too_large,
    unavailable,
)
from frostnode.client.limits import ClientLimits
from frostnode.client.messages import (
    Accepted, PublicKeys, Record, SubmitArgs, TopicArgs, TopicPage, check_command, decode_get_args, encode_status,
)
from frostnode.crypto.bip340 import p2tr_address
from frostnode.store.errors import CorruptStore, RecordTooLarge, StoreError
from frostnode.store.log import MAX_TOPIC
from frostnode.sync.errors import SyncOverloaded, SyncUnavailable
from frostnode.wire import DecodeError

#: The record client key of HTTP submissions that name none.
ANONYMOUS_CLIENT_KEY = bytes(32)
#: Records read from the log per step while a topic page is built.
_PAGE_STEP = 32
#: What a client is told to wait when the sync service is overloaded.
OVERLOADED_RETRY = 0.5
#: The sections L{NodeAPI.status} fills itself.
_STATUS_SECTIONS = ("node", "time", "log", "sync", "members", "threshold", "links_up", "epoch")


class ClientContext(NamedTuple):
    """
    Who is asking.

    @ivar client_key: the authenticated Noise static key (or the HTTP caller's key).
    @ivar address: the remote address, for logs.
    @ivar via: C{"noise"} or C{"http"}.
    """

    client_key: bytes
    address: str
    via: str


#: C{handler(context, encoded_arguments) -> encoded result, or a Deferred of it}.
CommandHandler = Callable[[ClientContext, bytes], Union[bytes, Deferred]]


def as_client_error(error: BaseException) -> Optional[ClientError]:
    """
    The client-facing error for C{error}, or C{None} if it is a bug
    (C{internal}).  Other layers opt in with a C{client_error_code}
    attribute (and optionally C{retry_after}).
    """
    if isinstance(error, ClientError):
        return error
    if isinstance(error, RecordTooLarge):
        return too_large(str(error))
    if isinstance(error, DecodeError):
        return invalid_request(str(error))
    if isinstance(error, StoreError) and not isinstance(error, CorruptStore):
        return unavailable(f"the node's store cannot serve this now: {error}")
    if isinstance(error, SyncUnavailable):
        return unavailable(f"the node cannot take records now: {error}")
    if isinstance(error, SyncOverloaded):
        return rate_limited(f"the node is overloaded: {error}", OVERLOADED_RETRY)
    code = getattr(error, "client_error_code", None)
    if code in REMOTE_CODES:
        return ClientError(code, str(error), getattr(error, "retry_after", None))
    return None


def xonly(key: bytes) -> bytes:
    """A 32-byte x-only key from a 32-byte x-only or 33-byte compressed one."""
    if len(key) == 33 and key[0] in (2, 3):
        return key[1:]
    if len(key) == 32:
        return key
    raise ValueError(f"a {len(key)}-byte key is neither x-only nor compressed")


class NodeAPI:
    """
    @param sync: the sync service (C{submit(body)}, C{status()}, C{datalog}).
    @param clock: for the status report's time.
    @param datalog: the data log to read; by default the sync service's
        C{datalog} (or C{log}, for a stand-in that names it so).
    @param keystore: the key store (C{newest_certified()} for C{pubkey},
        C{newest_usable()} for the status's epoch); C{None} until a node has
        one, and then C{pubkey} is C{unavailable}.
    @param directory: the current members, for C{status}.
    @param threshold: the configured signing threshold, for C{status}.
    @param links: the peer links (C{connected()}), for C{status}.
    @param network: Bitcoin network of the P2TR address.
    @param limits: the client port's limits (for the answer size cap).
    """

    log = Logger()

    def __init__(
        self,
        sync: Any,
        clock: IReactorTime,
        *,
        keystore: Any = None,
        directory: Any = None,
        threshold: Optional[int] = None,
        links: Any = None,
        network: str = "mainnet",
        limits: Optional[ClientLimits] = None,
        datalog: Any = None,
    ) -> None:
        p2tr_address(bytes(32), network)  # an unknown network fails here, not at the first pubkey
        self.sync = sync
        if datalog is None:
            datalog = getattr(sync, "datalog", None)
        self.datalog = datalog if datalog is not None else sync.log
        self.clock = clock
        self.keystore = keystore
        self.directory = directory
        self.threshold = threshold
        self.links = links
        self.network = network
        self.limits = limits or ClientLimits()
        self.commands: dict[str, CommandHandler] = {}
        #: Sections other layers add to L{status}: name -> report function.
        self.status_sources: dict[str, Callable[[], Any]] = {}
        #: The signing commands' typed operations, once registered
        #: (L{frostnode.signing.commands.register_signing_commands}); the
        #: HTTP API's signing routes answer C{unavailable} until then.
        self.signing: Any = None
        self.register_command("submit", self._cmd_submit)
        self.register_command("get", self._cmd_get)
        self.register_command("topic", self._cmd_topic)
        self.register_command("status", self._cmd_status)
        self.register_command("pubkey", self._cmd_pubkey)

    @property
    def host_key(self) -> bytes:
        return self.datalog.local

    def register_command(self, name: str, handler: CommandHandler) -> None:
        """
        Answer requests for command C{name} with C{handler}.  It receives the
        caller's L{ClientContext} and the raw argument bytes, decodes them
        with its own strict decoder (a L{DecodeError} becomes
        C{invalid-request}), and returns its encoded result.

        @raise ValueError: a malformed name, or one already taken.
        """
        check_command(name)
        if name in self.commands:
            raise ValueError(f"client command {name!r} is already registered")
        self.commands[name] = handler

    def add_status(self, name: str, report: Callable[[], Any]) -> None:
        """
        Add section C{name} to the C{status} report, filled by C{report()}
        (anything JSON-able; bytes become hex) each time status is asked.
        A report that raises is logged and shown as C{{"error": ...}}, so
        one layer's bug does not hide the others' state.

        @raise ValueError: the name is taken (by a built-in section too).
        """
        if name in self.status_sources or name in _STATUS_SECTIONS:
            raise ValueError(f"status section {name!r} is already taken")
        self.status_sources[name] = report

    # -- dispatch ------------------------------------------------------------------------

    def run(self, context: ClientContext, what: str, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call C{fn(*args)}; its failure, whatever it was, reaches the caller as a L{ClientError}."""
        d = maybeDeferred(fn, *args)
        d.addErrback(self._client_error, context, what)
        return d

    def call(self, context: ClientContext, command: str, args: bytes) -> Deferred:
        """Run one request from the Noise port: a Deferred of the encoded result."""
        handler = self.commands.get(command)
        if handler is None:
            known = ", ".join(sorted(self.commands))
            return fail(invalid_request(f"unknown command {command!r} (this node knows: {known})"))
        return self.run(context, command, handler, context, args)

    def _client_error(self, failure: Failure, context: ClientContext, what: str) -> None:
        error = as_client_error(failure.value)
        if error is None:
            self.log.failure("internal error serving {command} to client {client} at {address} (via {via})",
                             failure, command=what, client=context.client_key.hex(), address=context.address,
                             via=context.via)
            error = ClientError(INTERNAL, f"internal error serving {what!r}; the node logged the details")
        raise error

    # -- typed operations ---------------------------------------------------------------------

    def submit(self, client_key: bytes, topic: str, payload: bytes, timestamp: int, nonce: bytes) -> Deferred:
        """
        File a client's record through the sync service; a Deferred of
        L{Accepted}, fired once the record is durable on this node.
        """
        body = SubmitArgs(topic, payload, timestamp, nonce).body(client_key)  # InvalidRecord: invalid-request
        self.datalog.limits.check_body(body)                                # RecordTooLarge: too-large
        d = maybeDeferred(self.sync.submit, body)
        d.addCallback(lambda r: Accepted(r.record_id, bool(r.created), r.origin, r.seq))
        return d

    def get(self, record_id: bytes) -> Record:
        entry = self.datalog.get(record_id)
        if entry is None:
            raise ClientError(NOT_FOUND, f"no record {record_id.hex()} on this node")
        return Record.from_entry(entry)

    def topic(self, topic: str, from_position: int, limit: int) -> TopicPage:
        """
        Up to C{limit} records of C{topic} from local position C{from_position}
        (capped by the log's C{max_range} and the answer size).
        """
        raw = topic.encode("utf-8") if isinstance(topic, str) else b""
        if not 1 <= len(raw) <= MAX_TOPIC:
            raise invalid_request(f"topic must be 1..{MAX_TOPIC} bytes of UTF-8")
        if limit < 1:
            raise invalid_request(f"limit must be at least 1, not {limit}")
        log = self.datalog
        last = log.topic_last(topic)
        if last == 0:
            raise ClientError(UNKNOWN_TOPIC, f"no record was ever filed under topic {topic!r} on this node")
        limit = min(limit, log.limits.max_range)
        position = max(from_position, 1)
        records: list[Record] = []
        size = 0
        while len(records) < limit and position <= last:
            step = log.topic_range(topic, position, min(_PAGE_STEP, limit - len(records)))
            if not step:
                break
            for entry in step:
                record = Record.from_entry(entry)
                size += len(record.body.canonical) + 128
                if records and size > self.limits.max_answer_size:
                    return TopicPage(topic, last, records[-1].position + 1, records)
                records.append(record)
            position = records[-1].position + 1
        nxt = records[-1].position + 1 if records else max(from_position, 1)
        return TopicPage(topic, last, nxt, records)

    def status(self) -> dict:
        """The node's report: members, links up, epoch, log position and digest, sync state."""
        log = self.datalog
        digest = log.digest()
        report: dict[str, Any] = {
            "node": self.host_key.hex(),
            "time": self.clock.seconds(),
            "log": {
                "count": digest.count,
                "digest": digest.hex(),
                "origins": {origin.hex(): {"have": st.have, "max_seq": st.max_seq, "floor": st.floor}
                            for origin, st in log.origins().items()},
            },
            "sync": self.sync.status(),
        }
        if self.directory is not None:
            report["members"] = [key.hex() for key in self.directory.host_keys()]
            report["threshold"] = self.threshold
        if self.links is not None:
            report["links_up"] = sorted(key.hex() for key in self.links.connected())
        epoch = self.keystore.newest_usable() if self.keystore is not None else None
        report["epoch"] = None if epoch is None else epoch.epoch
        for name, source in self.status_sources.items():
            try:
                report[name] = source()
            except Exception:
                self.log.failure("status section {section} failed", section=name)
                report[name] = {"error": "this section failed; the node logged the details"}
        return report

    def pubkey(self) -> PublicKeys:
        """
        The federation's current key: the newest certified one, ours or not
        (L{frostnode.store.keys.KeyStore.newest_certified}).  Not the newest
        key I{we} can sign with: a member that the last key generation
        excluded would otherwise keep handing out an older epoch's key,
        which the federation no longer uses.  C{holds_share} tells the
        caller which case it is.
        """
        epoch = self.keystore.newest_certified() if self.keystore is not None else None
        if epoch is None:
            raise unavailable("this node knows no federation key yet: the first key generation (DKG) has not completed")
        output = xonly(epoch.output_key)
        return PublicKeys(epoch.epoch, xonly(epoch.internal_key), output, p2tr_address(output, self.network),
                          self.network, epoch.usable)

    # -- the built-in commands ------------------------------------------------------------------

    def _cmd_submit(self, context: ClientContext, args: bytes) -> Deferred:
        a = SubmitArgs.decode(args)
        return self.submit(context.client_key, a.topic, a.payload, a.timestamp, a.nonce).addCallback(Accepted.encode)

    def _cmd_get(self, context: ClientContext, args: bytes) -> bytes:
        return self.get(decode_get_args(args)).encode()

    def _cmd_topic(self, context: ClientContext, args: bytes) -> bytes:
        a = TopicArgs.decode(args)
        return self.topic(a.topic, a.from_position, a.limit).encode()

    def _cmd_status(self, context: ClientContext, args: bytes) -> bytes:
        _no_args("status", args)
        return encode_status(self.status())

    def _cmd_pubkey(self, context: ClientContext, args: bytes) -> bytes:
        _no_args("pubkey", args)
        return self.pubkey().encode()


def _no_args(command: str, args: bytes) -> None:
    if args:
        raise invalid_request(f"{command} takes no arguments ({len(args)} bytes given)")
