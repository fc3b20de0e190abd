# -*- test-case-name: tests.test_validation_record -*-
"""
The C{record} scheme: attest that named records are in the federation's log.

A client names one or more record ids (and optionally a topic every one of
them must be on); each member signs only if it holds every named record
itself.  The statement is the canonical request, so the signed message is

  C{tagged_hash("frostnode/validation/record", request)}

with C{request} the encoding below.  A record id is already SHA-256 of the
record's canonical body (L{frostnode.store.log.RecordBody}): committing to
the ids commits to each record's client key, topic, payload, timestamp and
nonce, and a verifier holding a record checks it against the signed id.
What the signature adds is the federation's word that at least a threshold
of members held those exact bytes.

Request encoding (version 1)
============================
::

  u8     version = 1
  u32    topic length (0: any topic), then that many bytes of UTF-8 (<= 255)
  u32    count (1 .. MAX_RECORD_IDS)
  count  x 32-byte record id, strictly ascending (sorted, no duplicates)

One request per set of ids: L{encode_request} sorts and refuses
duplicates, L{decode_request} refuses anything not in this exact form.

Refusals (L{Rejection} codes)
=============================
  - C{malformed-request}: the request bytes are not the encoding above.
  - C{wrong-topic}: a named record is held but on another topic.

A named record this member does not hold raises L{MissingData} naming it:
the signing service catches up and asks again, and refuses only when the
record still does not come.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional

from frostnode.validation.interface import LogView, MissingData, Rejection
from frostnode.wire import DecodeError, Reader, Writer

NAME = "record"
REQUEST_VERSION = 1
MAX_RECORD_IDS = 1024
MAX_TOPIC = 255
RECORD_ID_SIZE = 32


class RecordRequest(NamedTuple):
    """A decoded C{record} request: sorted unique ids, and the topic or C{None}."""

    record_ids: tuple[bytes, ...]
    topic: Optional[str]


def _check_topic(topic: Optional[str]) -> bytes:
    if topic is None:
        return b""
    if not isinstance(topic, str):
        raise ValueError(f"topic must be a str or None, not {type(topic).__name__}")
    raw = topic.encode("utf-8")
    if not 1 <= len(raw) <= MAX_TOPIC:
        raise ValueError(f"topic must be 1..{MAX_TOPIC} bytes of UTF-8, not {len(raw)}")
    return raw


def encode_request(record_ids: Iterable[bytes], topic: Optional[str] = None) -> bytes:
    """
    The canonical C{record} request for C{record_ids} (any order).

    @raise ValueError: an id is not 32 bytes, an id repeats, there are none
        or more than L{MAX_RECORD_IDS}, or the topic is not 1..255 bytes.
    """
    ids = list(record_ids)
    for rid in ids:
        if not isinstance(rid, bytes) or len(rid) != RECORD_ID_SIZE:
            raise ValueError(f"record id {rid!r} is not {RECORD_ID_SIZE} bytes")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise ValueError("a record id is named twice")
    if not 1 <= len(unique) <= MAX_RECORD_IDS:
        raise ValueError(f"name 1..{MAX_RECORD_IDS} record ids, not {len(unique)}")
    w = Writer().u8(REQUEST_VERSION).var_bytes(_check_topic(topic), MAX_TOPIC).count(len(unique), MAX_RECORD_IDS)
    for rid in unique:
        w.fixed(rid, RECORD_ID_SIZE)
    return w.to_bytes()


def decode_request(request: bytes) -> RecordRequest:
    """
    Parse a request made by L{encode_request}.

    @raise DecodeError: anything else (wrong version, unsorted or repeated
        ids, a count over the limit, a topic that is not UTF-8, trailing bytes).
    """
    r = Reader(request, "record request")
    r.version(REQUEST_VERSION)
    raw_topic = r.var_bytes(MAX_TOPIC)
    n = r.count(MAX_RECORD_IDS, RECORD_ID_SIZE)
    if n == 0:
        raise DecodeError("record request: names no records")
    ids = tuple(r.fixed(RECORD_ID_SIZE) for _ in range(n))
    r.finish()
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise DecodeError("record request: ids are not strictly ascending")
    try:
        topic = raw_topic.decode("utf-8") if raw_topic else None
    except UnicodeDecodeError:
        raise DecodeError("record request: topic is not UTF-8") from None
    return RecordRequest(ids, topic)


def request_from_json(obj: Any) -> bytes:
    """
    The request from its JSON form C{{"records": ["<hex id>", ...], "topic": "..."}}
    (C{topic} optional).

    @raise ValueError: a missing or mistyped field, bad hex, or what
        L{encode_request} refuses.
    """
    if not isinstance(obj, dict):
        raise ValueError("a record request is a JSON object")
    unknown = set(obj) - {"records", "topic"}
    if unknown:
        raise ValueError(f"unknown field(s) in record request: {', '.join(sorted(unknown))}")
    records = obj.get("records")
    if not isinstance(records, list):
        raise ValueError('"records" must be a list of hex record ids')
    ids = []
    for item in records:
        try:
            ids.append(bytes.fromhex(item))
        except (TypeError, ValueError):
            raise ValueError(f"record id {item!r} is not hex") from None
    return encode_request(ids, obj.get("topic"))


class RecordScheme:
    """
    Sign the named records if this member holds them all (on the topic, if
    one is named).

    @param name: the scheme's name; another name gives a separate message
        domain for the same logic.
    """

    def __init__(self, name: str = NAME) -> None:
        self.name = name

    def statement(self, request: bytes, view: LogView) -> bytes:
        try:
            req = decode_request(request)
        except DecodeError as e:
            raise Rejection(str(e), code="malformed-request") from None
        missing = []
        for rid in req.record_ids:
            body = view.get(rid)
            if body is None:
                missing.append(rid)
            elif req.topic is not None and body.topic != req.topic:
                raise Rejection(
                    f"record {rid.hex()[:16]} is on topic {body.topic!r}, not {req.topic!r}",
                    code="wrong-topic",
                )
        if missing:
            raise MissingData(record_ids=missing)
        return request

    request_from_json = staticmethod(request_from_json)

    def __repr__(self) -> str:
        return f"RecordScheme(name={self.name!r})"


#: The built-in instance (entry point C{record = frostnode.validation.record:scheme}).
scheme = RecordScheme()
