# -*- test-case-name: tests.test_client_cli -*-
"""
C{frostnode-client}: talk to any federation node from a shell.

::

    frostnode-client --card node.json submit prices/btc payload.bin
    echo 64000 | frostnode-client --card node.json submit prices/btc
    frostnode-client --card node.json get 3f2a...          # one record
    frostnode-client --card node.json get --topic prices/btc --from 1 --limit 50
    frostnode-client --node 192.0.2.7:9001 --node-key 5c1f... status
    frostnode-client --card node.json --json pubkey
    frostnode-client --card node.json sign --scheme record --request '{"records": ["3f2a..."]}'
    frostnode-client --card node.json checkpoint           # the newest (--all: list them)
    frostnode-client key                                   # this client's public key

The node is named by its address card file (C{--card}; the client port's
address from the card's C{client_addresses} or C{--node}), or by
C{--node HOST:PORT --node-key HEX}.  The client's key is the stored one
(L{frostnode.client.keys}; C{--key FILE} to choose the file) or, with
C{--ephemeral}, a fresh one for this call.

Output is for people by default; C{--json} prints one JSON object (bytes as
hex, payloads and nonces as base64), the same shapes as the HTTP API.
Exit status: 0 success, 1 the request failed (a typed error, printed as
C{frostnode-client: CODE: message} or, with C{--json}, as
C{{"error": {"code": ..., "message": ...}}} on stdout; an error naming
members, such as C{views-differ}, lists them one per line, or under
C{"members"}), 2 usage.

L{run} does the work and returns a Deferred of the exit status, so that tests
drive it in their own reactor; L{main} is the console script, which parses
the command line before it starts a reactor.
"""

from __future__ import annotations

import json
import string
import sys
from datetime import datetime, timezone
from typing import IO, Any, Optional, Sequence, TextIO

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.python import usage

from frostnode.client.errors import ClientError, invalid_request, too_large
from frostnode.client.keys import client_public_key, default_key_path, load_or_create_client_key
from frostnode.client.library import FrostnodeClient, NodeTarget, connect
from frostnode.client.messages import Accepted, PublicKeys, Record, TopicPage, b64
from frostnode.keys import KeyFileError
from frostnode.signing.checkpoint import Checkpoint, decode_statement
from frostnode.signing.commands import CheckpointPage, SignResult, checkpoint_to_json
from frostnode.signing.messages import MAX_SCHEME_REQUEST

PROG = "frostnode-client"


def _positive_float(value: str) -> float:
    f = float(value)
    if not f > 0:
        raise ValueError("must be positive")
    return f


class SubmitOptions(usage.Options):
    synopsis = "TOPIC [FILE]"
    longdesc = "Submit FILE (or standard input, also with FILE '-') as a record under TOPIC; prints its id."
    optParameters = [
        ["timestamp", None, None, "The record's client timestamp (default: now, in microseconds).", int],
        ["nonce", None, None, "The record's nonce in hex (default: 16 random bytes). Reuse timestamp and "
                              "nonce to resubmit the same record idempotently."],
    ]

    def parseArgs(self, topic: str, file: Optional[str] = None) -> None:
        self["topic"] = topic
        self["file"] = file

    def postOptions(self) -> None:
        if self["nonce"] is not None:
            try:
                self["nonce"] = bytes.fromhex(self["nonce"])
            except ValueError:
                raise usage.UsageError("--nonce must be hex") from None


class GetOptions(usage.Options):
    synopsis = "RECORD_ID | --topic TOPIC [--from N] [--limit N]"
    longdesc = "Print one record by its id, or a page of a topic's records from a position on this node."
    optParameters = [
        ["topic", None, None, "List this topic's records instead."],
        ["from", None, 1, "First topic position to list.", int],
        ["limit", None, 100, "Most records to list.", int],
    ]
    optFlags = [["raw", None, "Write only the record's payload bytes to standard output."]]

    def parseArgs(self, record_id: Optional[str] = None) -> None:
        self["record_id"] = record_id

    def postOptions(self) -> None:
        if (self["record_id"] is None) == (self["topic"] is None):
            raise usage.UsageError("give either a RECORD_ID or --topic")
        if self["record_id"] is not None:
            try:
                rid = bytes.fromhex(self["record_id"])
            except ValueError:
                rid = b""
            if len(rid) != 32:
                raise usage.UsageError("a record id is 64 hex digits")
            self["record_id"] = rid
        elif self["raw"]:
            raise usage.UsageError("--raw prints one record's payload; it does not apply to --topic")
        if self["from"] < 0 or self["limit"] < 1:
            raise usage.UsageError("--from must be >= 0 and --limit >= 1")


class SignOptions(usage.Options):
    synopsis = "--scheme NAME (--request JSON | --request-file FILE | --request-hex HEX) [--ciphersuite NAME] [--audit]"
    longdesc = ("Ask the federation, through this node, to sign what a validation scheme makes of a request; "
                "each member checks the request against its own copy of the data first. The request is the "
                "scheme's JSON form (record: {\"records\": [\"<id>\", ...], \"topic\": ...}), converted here, or "
                "its raw bytes in hex.")
    optParameters = [
        ["scheme", "s", None, "The validation scheme (record, ledger, or one the node loads)."],
        ["request", "r", None, "The request in the scheme's JSON form."],
        ["request-file", None, None, "Read the JSON request from FILE ('-': standard input)."],
        ["request-hex", None, None, "The request's bytes in hex, as the scheme encodes them."],
        ["ciphersuite", None, "bip445", "bip445 (BIP340 under the Taproot output key) or rfc9591."],
    ]
    optFlags = [["audit", "a", "Wait for every member's verdict, so that every divergent member is named."]]

    def parseArgs(self) -> None:
        pass

    def postOptions(self) -> None:
        if not self["scheme"]:
            raise usage.UsageError("--scheme is required")
        given = [k for k in ("request", "request-file", "request-hex") if self[k] is not None]
        if len(given) != 1:
            raise usage.UsageError("give the request once: --request JSON, --request-file FILE or --request-hex HEX")
        if self["request"] is not None:
            self["json_request"] = _parse_json(self["request"], "--request")
        elif self["request-hex"] is not None:
            try:
                self["raw_request"] = bytes.fromhex(self["request-hex"])
            except ValueError:
                raise usage.UsageError("--request-hex must be hex") from None


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise usage.UsageError(f"{what} is not JSON: {e}") from None


class CheckpointOptions(usage.Options):
    synopsis = "[--all [--from N] [--limit N]]"
    longdesc = ("Print the newest checkpoint this node signed (the federation's signature over its log's cut, "
                "epoch and membership), or with --all this node's checkpoints from a number on. Each one's "
                "signature is checked against its statement.")
    optParameters = [
        ["from", None, 1, "First checkpoint number to list (with --all).", int],
        ["limit", None, 20, "Most checkpoints to list (with --all).", int],
    ]
    optFlags = [["all", None, "List checkpoints instead of showing the newest."]]

    def parseArgs(self) -> None:
        pass

    def postOptions(self) -> None:
        if self["from"] < 0 or self["limit"] < 1:
            raise usage.UsageError("--from must be >= 0 and --limit >= 1")


class _NoArgs(usage.Options):
    def parseArgs(self) -> None:
        pass


class StatusOptions(_NoArgs):
    longdesc = "Print the node's status: members, links up, epoch, log count and digest, sync state."


class PubkeyOptions(_NoArgs):
    longdesc = "Print the federation's internal key, Taproot output key and P2TR address."


class KeyOptions(_NoArgs):
    longdesc = "Print this client's public key (the client key of its records), creating the key if needed."


class Options(usage.Options):
    synopsis = f"Usage: {PROG} [--card FILE | --node HOST:PORT --node-key HEX] [options] COMMAND [args]"
    optFlags = [
        ["json", "j", "Print JSON for scripts instead of text."],
        ["ephemeral", "e", "Use a fresh client key for this call instead of the stored one."],
    ]
    optParameters = [
        ["card", "c", None, "The node's address card (JSON file)."],
        ["node", "n", None, "The node's client port, HOST:PORT (default: the card's client_addresses)."],
        ["node-key", None, None, "The node's Noise static key in hex (the card's noise_key), with --node."],
        ["key", "k", None, "This client's key file (default: $FROSTNODE_CLIENT_KEY or "
                           "~/.config/frostnode/client.key; created on first use)."],
        ["timeout", "t", 30.0, "Seconds to wait for the node.", _positive_float],
    ]
    subCommands = [
        ["submit", None, SubmitOptions, "Submit a record."],
        ["get", None, GetOptions, "Get one record, or a topic's records."],
        ["status", None, StatusOptions, "Show the node's status."],
        ["pubkey", None, PubkeyOptions, "Show the federation's public key and address."],
        ["sign", None, SignOptions, "Have the federation sign what a validation scheme makes of a request."],
        ["checkpoint", None, CheckpointOptions, "Show the federation's newest checkpoint (or --all)."],
        ["key", None, KeyOptions, "Show this client's public key."],
    ]

    #: Set by L{parse_options}: whom to connect to (None for C{key}).
    node_target: Optional[NodeTarget] = None

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")
        if self["ephemeral"] and self["key"]:
            raise usage.UsageError("--ephemeral and --key exclude each other")
        if self.subCommand == "key":
            if self["ephemeral"]:
                raise usage.UsageError("'key' shows the stored key; --ephemeral makes no sense with it")
            return
        if self["card"] is None and (self["node"] is None or self["node-key"] is None):
            raise usage.UsageError("name the node with --card FILE, or with --node HOST:PORT and --node-key HEX")
        if self["card"] is not None and self["node-key"] is not None:
            raise usage.UsageError("--node-key comes from the card when --card is given")

    def target(self) -> NodeTarget:
        try:
            if self["card"] is not None:
                return NodeTarget.from_card_file(self["card"], self["node"])
            return NodeTarget.from_address(self["node"], self["node-key"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


# -- human-readable output ------------------------------------------------------------------


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%fZ")


_PRINTABLE = set(string.printable) - set("\x0b\x0c")


def _preview(payload: bytes, limit: int = 200) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c in _PRINTABLE for c in text):
        shown = text if len(text) <= limit else text[:limit] + "..."
        return shown.replace("\n", "\\n")
    raw = payload[: limit // 2]
    return "base64:" + b64(raw) + ("..." if len(raw) < len(payload) else "")


def format_accepted(a: Accepted) -> str:
    what = "new record" if a.created else "already held (same record submitted before)"
    return f"accepted {a.record_id.hex()}\n  {what}; origin {a.origin.hex()} seq {a.seq}\n"


def format_record(r: Record) -> str:
    b = r.body
    return (
        f"record     {r.record_id.hex()}\n"
        f"topic      {b.topic}\n"
        f"client     {b.client_key.hex()}\n"
        f"timestamp  {b.timestamp}\n"
        f"nonce      {b.nonce.hex() or '-'}\n"
        f"origin     {r.origin.hex()} seq {r.seq}, received {_when(r.received_at)}\n"
        f"position   {r.position} (on this node)\n"
        f"payload    {len(b.payload)} bytes: {_preview(b.payload)}\n"
    )


def format_page(p: TopicPage) -> str:
    lines = [f"topic {p.topic}: {len(p.records)} record(s), last position {p.last}"]
    for r in p.records:
        lines.append(f"  {r.position:>8}  {r.record_id.hex()[:16]}  {len(r.payload):>8} B  {_preview(r.payload, 60)}")
    more = f"next: --from {p.next}" if p.next <= p.last else "no more records"
    lines.append(more)
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_sync(sync: dict) -> list[str]:
    """
    The sync section for people: what is waiting, and one row per peer
    (short key, link up, its lag behind us, what it has that we lack,
    whether its last summary's digest equals ours, and that summary's age).
    Everything else the section holds is in C{--json}.
    """
    peers = sync.get("peers")
    pending = sync.get("pending")
    head = "sync      "
    if isinstance(pending, dict):
        head += (f" pending: {_cell(pending.get('submissions'))} submissions, {_cell(pending.get('batch'))} batched, "
                 f"{_cell(pending.get('unsent_batches'))} unsent batches, "
                 f"{_cell(pending.get('requests_in_flight'))} requests in flight")
    lines = [head.rstrip()]
    if not isinstance(peers, dict) or not peers:
        return lines
    ours = sync.get("digest")
    lines.append(f"  {'peer':<16}  {'up':<3}  {'lag':>6}  {'missing':>7}  {'digest':<7}  summary")
    for key in sorted(peers):
        p = peers[key] if isinstance(peers[key], dict) else {}
        digest = p.get("digest")
        same = "-" if digest is None else "equal" if digest == ours else "differs"
        age = p.get("summary_age")
        summary = "none yet" if not isinstance(age, (int, float)) else f"{age:.1f}s ago"
        lines.append(f"  {key[:16]:<16}  {'yes' if p.get('up') else 'no':<3}  {_cell(p.get('lag')):>6}  "
                     f"{_cell(p.get('missing')):>7}  {same:<7}  {summary}")
    return lines


def format_status(s: dict) -> str:
    log = s.get("log", {})
    members = s.get("members")
    links = s.get("links_up")
    lines = [f"node       {s.get('node')}"]
    if members is not None:
        lines.append(f"members    {len(members)}, threshold {s.get('threshold')}")
    if links is not None:
        lines.append(f"links up   {len(links)}" + (": " + ", ".join(k[:12] for k in links) if links else ""))
    epoch = s.get("epoch")
    lines.append(f"epoch      {epoch if epoch is not None else 'none (no key generated yet)'}")
    lines.append(f"log        {log.get('count')} records, digest {log.get('digest')}")
    for origin, st in sorted((log.get("origins") or {}).items()):
        lines.append(f"  origin {origin[:16]}  have {st.get('have')}  max {st.get('max_seq')}  floor {st.get('floor')}")
    signing = s.get("signing")
    if isinstance(signing, dict) and "signatures" in signing:
        checkpoint = signing.get("checkpoint")
        lines.append(f"signing    {signing.get('signatures')} signed, {signing.get('failures')} failed here; "
                     f"newest checkpoint {checkpoint if checkpoint is not None else 'none'}")
        for state in ("unresponsive", "misbehaving"):
            for key in signing.get(state) or []:
                detail = (signing.get("members") or {}).get(key, {}).get("detail", "")
                lines.append(f"  {state} {key[:16]}" + (f": {detail}" if detail else ""))
    sync = s.get("sync")
    if isinstance(sync, dict) and sync:
        lines += format_sync(sync)
    return "\n".join(lines) + "\n"


def format_pubkey(p: PublicKeys) -> str:
    return (
        f"epoch         {p.epoch}\n"
        f"internal key  {p.internal_key.hex()}\n"
        f"output key    {p.output_key.hex()}\n"
        f"address       {p.address} ({p.network})\n"
        f"this node     {'holds a share (can sign)' if p.holds_share else 'holds no share of this key (cannot sign)'}\n"
    )


_KEY_KIND = {"bip445": "Taproot output key, BIP340", "rfc9591": "internal group key, RFC 9591"}


def format_signature(r: SignResult) -> str:
    lines = [
        f"signature  {r.signature.hex()}",
        f"key        {r.key.hex()} ({_KEY_KIND.get(r.ciphersuite, r.ciphersuite)})",
        f"message    {r.message.hex()}",
        f"scheme     {r.scheme}, ciphersuite {r.ciphersuite}, epoch {r.epoch}, "
        f"{r.sessions} session{'s' if r.sessions != 1 else ''}",
        f"signers    {len(r.signers)}",
    ]
    lines += [f"  {s.hex()}" for s in r.signers]
    if r.divergent:
        lines.append(f"divergent  {len(r.divergent)}")
        lines += [f"  {k.hex()}  {d.kind}: {d.reason}" for k, d in r.divergent.items()]
    if r.unresponsive:
        lines.append(f"no answer  {', '.join(k.hex()[:16] for k in r.unresponsive)}")
    return "\n".join(lines) + "\n"


def format_checkpoint(cp: Checkpoint) -> str:
    st = decode_statement(cp.statement)
    lines = [
        f"checkpoint {cp.seq} (on this node), signed {_when(cp.created)}",
        f"epoch      {cp.epoch}, {len(st.members)} members",
        f"records    {st.count} in the cut, digest {st.digest.hex()}",
    ]
    lines += [f"  origin {origin.hex()[:16]}  up to {n}" for origin, n in st.cut.items()]
    lines += [
        f"signature  {cp.signature.hex()}",
        f"key        {cp.key.hex()} ({_KEY_KIND.get(cp.ciphersuite, cp.ciphersuite)})",
        f"message    {cp.message.hex()}",
        f"signers    {', '.join(s.hex()[:16] for s in cp.signers)}",
    ]
    if cp.divergent:
        lines.append(f"divergent  {', '.join(d.hex()[:16] for d in cp.divergent)}")
    return "\n".join(lines) + "\n"


def format_checkpoints(p: CheckpointPage) -> str:
    if not p.checkpoints:
        return f"no checkpoints from there (newest: {p.last})\n"
    out = "\n".join(format_checkpoint(cp) for cp in p.checkpoints)
    after = p.checkpoints[-1].seq + 1
    return out + (f"next: --from {after}\n" if after <= p.last else "")


# -- running a command ---------------------------------------------------------------------


def _read_payload(path: Optional[str], stdin: IO[bytes], limit: int) -> bytes:
    """At most C{limit} + 1 bytes: enough to know it is too large without reading it all."""
    if path is None or path == "-":
        return stdin.read(limit + 1)
    with open(path, "rb") as f:
        return f.read(limit + 1)


def _read_json_request(path: str, stdin: IO[bytes]) -> Any:
    """A JSON request from a file or standard input; a JSON form is at most a few times the bytes it encodes."""
    limit = 4 * MAX_SCHEME_REQUEST
    raw = _read_payload(path, stdin, limit)
    if len(raw) > limit:
        raise too_large(f"--request-file: over {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        raise invalid_request(f"--request-file: not JSON: {e}") from None


def _client_key(opts: Options) -> bytes:
    return load_or_create_client_key(default_key_path() if opts["key"] is None else opts["key"])


@inlineCallbacks
def _execute(reactor: Any, opts: Options, client: FrostnodeClient, stdin: IO[bytes]) -> Any:
    name = opts.subCommand
    sub = opts.subOptions
    if name == "submit":
        payload = _read_payload(sub["file"], stdin, client.max_request_size)
        if len(payload) > client.max_request_size:
            raise too_large(f"payload is over the node's request limit of {client.max_request_size} bytes (not sent)")
        result = yield client.submit(sub["topic"], payload, timestamp=sub["timestamp"], nonce=sub["nonce"])
        return result, format_accepted
    if name == "get":
        if sub["record_id"] is not None:
            record = yield client.get(sub["record_id"])
            return record, format_record
        page = yield client.topic(sub["topic"], sub["from"], sub["limit"])
        return page, format_page
    if name == "status":
        status = yield client.status()
        return status, format_status
    if name == "pubkey":
        keys = yield client.pubkey()
        return keys, format_pubkey
    if name == "sign":
        request = sub.get("raw_request")
        if request is None:
            request = sub.get("json_request")
        if request is None:
            request = _read_json_request(sub["request-file"], stdin)
        result = yield client.sign(sub["scheme"], request, sub["ciphersuite"], sub["audit"])
        return result, format_signature
    if name == "checkpoint":
        if sub["all"]:
            page = yield client.checkpoints(sub["from"], sub["limit"])
            return page, format_checkpoints
        cp = yield client.checkpoint()
        return cp, format_checkpoint
    raise AssertionError(name)  # pragma: no cover - usage checked the name


def _to_json(value: Any) -> Any:
    if isinstance(value, Checkpoint):
        return checkpoint_to_json(value)
    return value.to_json() if hasattr(value, "to_json") else value


def parse_options(argv: Sequence[str], err: TextIO) -> Any:
    """The parsed L{Options} (and the node target), or the exit status 2 after printing the usage error."""
    opts = Options()
    try:
        opts.parseOptions(list(argv))
        opts.node_target = None if opts.subCommand == "key" else opts.target()
    except usage.UsageError as e:
        err.write(f"{opts}\n{PROG}: {e}\n")
        return 2
    return opts


def run(reactor: Any, argv: Sequence[str], stdin: IO[bytes], out: TextIO, err: TextIO) -> Deferred:
    """Run one command; a Deferred of the exit status."""
    opts = parse_options(argv, err)
    if isinstance(opts, int):
        return succeed(opts)
    return run_parsed(reactor, opts, stdin, out, err)


@inlineCallbacks
def run_parsed(reactor: Any, opts: Options, stdin: IO[bytes], out: TextIO, err: TextIO) -> Any:
    """Run the command of already parsed options; a Deferred of the exit status."""
    target = opts.node_target
    as_json = opts["json"]
    try:
        if opts.subCommand == "key":
            path = default_key_path() if opts["key"] is None else opts["key"]
            public = client_public_key(load_or_create_client_key(path)).hex()
            out.write(json.dumps({"client_key": public, "path": str(path)}) + "\n" if as_json
                      else f"{public}\n")
            return 0
        private = None if opts["ephemeral"] else _client_key(opts)
        client = yield connect(reactor, target, private, connect_timeout=opts["timeout"], timeout=opts["timeout"])
        try:
            value, formatter = yield _execute(reactor, opts, client, stdin)
        finally:
            yield client.close()
    except ClientError as e:
        if as_json:
            out.write(json.dumps({"error": e.to_json()}, sort_keys=True) + "\n")
        else:
            retry = f" (retry after {e.retry_after:g}s)" if e.retry_after else ""
            err.write(f"{PROG}: {e}{retry}\n")
            for key, why in e.members.items():
                err.write(f"  {key.hex()}: {why}\n")
        return 1
    except (KeyFileError, OSError) as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    if opts.subCommand == "get" and opts.subOptions["raw"]:
        sink = getattr(out, "buffer", None)
        if sink is None:
            out.write(value.payload.decode("latin-1"))
        else:
            out.flush()
            sink.write(value.payload)
            sink.flush()
    elif as_json:
        out.write(json.dumps(_to_json(value), sort_keys=True) + "\n")
    else:
        out.write(formatter(value))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The C{frostnode-client} console script."""
    from twisted.internet.task import react

    opts = parse_options(list(sys.argv[1:] if argv is None else argv), sys.stderr)
    if isinstance(opts, int):  # usage errors (and --help) never start the reactor
        raise SystemExit(opts)

    def _main(reactor: Any) -> Deferred:
        d = run_parsed(reactor, opts, sys.stdin.buffer, sys.stdout, sys.stderr)

        def done(status: int) -> None:
            if status:
                raise SystemExit(status)

        return d.addCallback(done)

    react(_main)


if __name__ == "__main__":  # python -m frostnode.client.cli
    main()
