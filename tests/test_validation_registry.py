"""
Loading schemes by name, entry point or dotted path, the errors an operator
sees for bad configuration, and the domain separation of every message.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import EntryPoint

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.bip340 import pubkey_xonly
from frostnode.validation import ledger, record
from frostnode.validation.interface import MissingData, Rejection, SchemeFailed, scheme_message
from frostnode.validation.registry import (
    BUILTIN_SCHEMES,
    ENTRY_POINT_GROUP,
    SchemeLoadError,
    available,
    load_scheme,
    load_schemes,
)

HERE = __name__


class EchoScheme:
    """Attests the request itself (a scheme needs nothing more)."""

    name = "echo"

    def statement(self, request: bytes, view: object) -> bytes:
        return request


echo = EchoScheme()


class Echo2(EchoScheme):
    name = "echo2"


class Impostor(EchoScheme):
    name = "record"


class NeedsArguments(EchoScheme):
    def __init__(self, topic: str) -> None:
        self.topic = topic


class BadName(EchoScheme):
    name = "Not A Name"


class OldStyle:
    name = "old"

    def message(self, request: bytes, view: object) -> bytes:
        return request


class Broken(EchoScheme):
    name = "broken"

    def statement(self, request: bytes, view: object) -> bytes:
        raise KeyError("oops")


class ReturnsText(EchoScheme):
    name = "text"

    def statement(self, request: bytes, view: object) -> bytes:
        return "not bytes"  # type: ignore[return-value]


class Refuses(EchoScheme):
    name = "refuses"

    def statement(self, request: bytes, view: object) -> bytes:
        if request == b"missing":
            raise MissingData(record_ids=[b"\x01" * 32])
        raise Rejection("no", code="nope")


def ep(name: str, value: str, group: str = ENTRY_POINT_GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


def bip340_tagged(tag: str, msg: bytes) -> bytes:
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()


class LoadingTests(SynchronousTestCase):
    def test_builtins_without_any_entry_points(self) -> None:
        schemes = load_schemes([], entry_points=[])
        self.assertEqual(sorted(schemes), ["ledger", "record"])
        self.assertIs(schemes["record"].scheme, record.scheme)
        self.assertIs(schemes["ledger"].scheme, ledger.scheme)
        # And with whatever is installed (the entry points, once setup.cfg declares them).
        self.assertIs(load_scheme("ledger").scheme, ledger.scheme)

    def test_builtin_entry_points_pointing_at_the_builtins_are_fine(self) -> None:
        eps = [ep(name, path) for name, path in BUILTIN_SCHEMES.items()]
        self.assertIs(load_scheme("record", entry_points=eps).scheme, record.scheme)
        self.assertEqual(sorted(load_schemes(["record", "ledger"], entry_points=eps)), ["ledger", "record"])

    def test_entry_point(self) -> None:
        eps = [ep("echo", f"{HERE}:echo"), ep("echo", f"{HERE}:Echo2", group="other.group")]
        s = load_scheme("echo", entry_points=eps)
        self.assertIs(s.scheme, echo)
        self.assertIn("entry point echo", s.source)
        self.assertEqual(available(eps), {"record", "ledger", "echo"})

    def test_dotted_path_to_an_instance_or_a_class(self) -> None:
        self.assertIs(load_scheme(f"{HERE}:echo", entry_points=[]).scheme, echo)
        s = load_scheme(f"{HERE}:Echo2", entry_points=[])
        self.assertIsInstance(s.scheme, Echo2)
        self.assertEqual(s.name, "echo2")
        schemes = load_schemes([f"{HERE}:echo", f"{HERE}:Echo2", f"{HERE}:Echo2"], entry_points=[])
        self.assertEqual(sorted(schemes), ["echo", "echo2", "ledger", "record"])

    def assertLoadError(self, spec: str, *fragments: str, entry_points=()) -> SchemeLoadError:
        e = self.assertRaises(SchemeLoadError, load_scheme, spec, entry_points=list(entry_points))
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        self.assertEqual(e.spec, spec)
        self.assertTrue(str(e).startswith(f"validation scheme {spec!r}: "))
        return e

    def test_unknown_name(self) -> None:
        self.assertLoadError("escrow", "no such scheme", ENTRY_POINT_GROUP, "available: echo, ledger, record",
                             "package.module:attribute", entry_points=[ep("echo", f"{HERE}:echo")])

    def test_not_a_name(self) -> None:
        self.assertLoadError("Escrow Scheme", "neither a scheme name nor a dotted path")
        self.assertLoadError("pkg.mod:", "is not a dotted path")
        self.assertLoadError("pkg mod:x", "is not a dotted path")

    def test_import_failures(self) -> None:
        self.assertLoadError("nosuchpackage.mod:scheme", "module 'nosuchpackage.mod' not found")
        self.assertLoadError(f"{HERE}:nothing", f"{HERE}:nothing does not exist", "no attribute 'nothing'")
        self.assertLoadError(f"{HERE}:EchoScheme.nothing.deeper", "no attribute 'nothing'")

    def test_objects_that_are_not_schemes(self) -> None:
        self.assertLoadError(f"{HERE}:HERE", "is not a validation scheme", "'name'")
        self.assertLoadError(f"{HERE}:OldStyle", "no statement(request, view) method")
        self.assertLoadError(f"{HERE}:BadName", "'name' is unusable", "'Not A Name'")
        self.assertLoadError(f"{HERE}:NeedsArguments", "cannot be instantiated without arguments", "point at an instance")

    def test_entry_point_problems(self) -> None:
        self.assertLoadError("echo", "is named 'echo2', not 'echo'", entry_points=[ep("echo", f"{HERE}:Echo2")])
        self.assertLoadError("record", "claims the name of the built-in scheme",
                             entry_points=[ep("record", f"{HERE}:Impostor")])
        self.assertLoadError("echo", "ambiguous", f"{HERE}:echo", f"{HERE}:EchoScheme",
                             entry_points=[ep("echo", f"{HERE}:echo"), ep("echo", f"{HERE}:EchoScheme")])

    def test_one_name_two_schemes(self) -> None:
        e = self.assertRaises(SchemeLoadError, load_schemes, [f"{HERE}:Impostor"], entry_points=[])
        self.assertIn("is named 'record', which built-in frostnode.validation.record:scheme already uses", str(e))
        e = self.assertRaises(SchemeLoadError, load_schemes, ["echo", f"{HERE}:EchoScheme"],
                              entry_points=[ep("echo", f"{HERE}:echo")])
        self.assertIn("already uses", str(e))


class MessageTests(SynchronousTestCase):
    def load(self, attr: str):
        return load_scheme(f"{HERE}:{attr}", entry_points=[])

    def test_message_is_the_statement_hashed_under_the_scheme_name(self) -> None:
        msg = self.load("echo").message(b"pay 5 to bob", view=None)
        self.assertEqual(msg, bip340_tagged("frostnode/validation/echo", b"pay 5 to bob"))
        self.assertEqual(msg, scheme_message("echo", b"pay 5 to bob"))

    def test_same_statement_under_two_schemes_gives_two_messages(self) -> None:
        req = record.encode_request([b"\x07" * 32])
        by_echo = self.load("echo").message(req, None)
        by_echo2 = self.load("Echo2").message(req, None)
        self.assertNotEqual(by_echo, by_echo2)
        # The record scheme's statement for this request is the request too.
        self.assertNotIn(scheme_message("record", req), {by_echo, by_echo2})

    def test_a_request_for_one_scheme_is_malformed_for_the_other(self) -> None:
        ledger_req = ledger.encode_request(issuer=pubkey_xonly((5).to_bytes(32, "big")), cut={})
        e = self.assertRaises(Rejection, load_scheme("record").message, ledger_req, None)
        self.assertEqual(e.code, "malformed-request")
        record_req = record.encode_request([b"\x07" * 32])
        e = self.assertRaises(Rejection, load_scheme("ledger").message, record_req, None)
        self.assertEqual(e.code, "malformed-request")

    def test_refusals_pass_through(self) -> None:
        s = self.load("Refuses")
        self.assertEqual(self.assertRaises(Rejection, s.message, b"x", None).code, "nope")
        self.assertEqual(self.assertRaises(MissingData, s.message, b"missing", None).record_ids, (b"\x01" * 32,))

    def test_a_broken_scheme_is_a_refusal_and_is_logged(self) -> None:
        e = self.assertRaises(SchemeFailed, self.load("Broken").message, b"x", None)
        self.assertIsInstance(e, Rejection)
        self.assertEqual(e.code, "scheme-failed")
        self.assertIn("KeyError", e.reason)
        self.assertIsInstance(e.__cause__, KeyError)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        e = self.assertRaises(SchemeFailed, self.load("ReturnsText").message, b"x", None)
        self.assertIn("returned str", e.reason)
        self.assertRaises(TypeError, self.load("echo").message, "text", None)

    def test_request_from_json(self) -> None:
        self.assertEqual(self.load("echo").request_from_json("0a0b"), b"\x0a\x0b")
        self.assertRaises(ValueError, self.load("echo").request_from_json, {"x": 1})
        self.assertRaises(ValueError, self.load("echo").request_from_json, "zz")
        rid = b"\x07" * 32
        self.assertEqual(load_scheme("record").request_from_json({"records": [rid.hex()]}), record.encode_request([rid]))

    def test_missing_data_must_name_something(self) -> None:
        self.assertRaises(ValueError, MissingData)
        e = MissingData(record_ids=[b"\x02" * 32, b"\x01" * 32, b"\x02" * 32], cut={b"\x09" * 32: 4})
        self.assertEqual(e.record_ids, (b"\x01" * 32, b"\x02" * 32))
        self.assertIn("0909090909090909 up to 4", str(e))
