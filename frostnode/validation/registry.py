# -*- test-case-name: tests.test_validation_registry -*-
"""
Finding validation schemes by name, once, at start-up.

C{[validation] schemes} in a node's configuration lists extra schemes to
load; each entry is either

  - a I{name}, looked up in the Python entry point group
    C{frostnode.validators} (L{ENTRY_POINT_GROUP}), which is how an installed
    package offers schemes::

      [options.entry_points]
      frostnode.validators =
          escrow = mypackage.escrow:scheme

  - or a I{dotted path} C{package.module:attribute} (the attribute may itself
    be dotted), for a scheme that is importable but not packaged.

The attribute is a scheme object (see L{frostnode.validation.interface}) or
a class, which is instantiated without arguments.  The built-in schemes
C{record} and C{ledger} are always loaded, entry points or not, so a node
works from a source checkout; an entry point that claims one of their names
for another object is an error rather than a silent override.

Every failure is a L{SchemeLoadError} naming the configured entry and what is
wrong with it, phrased to follow C{[validation] schemes} in a
L{frostnode.config.ConfigError}.  Loading imports the scheme's module, i.e.
runs its code: only configure schemes you trust as much as the node itself.
"""

from __future__ import annotations

import re
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points as _installed_entry_points
from typing import Any, Iterable, Optional

from twisted.logger import Logger

from frostnode.validation.interface import (
    LogView,
    MissingData,
    Rejection,
    SchemeFailed,
    check_scheme_name,
    scheme_message,
)

ENTRY_POINT_GROUP = "frostnode.validators"

#: Built-in schemes: name -> the same C{module:attribute} their entry points use.
BUILTIN_SCHEMES: dict[str, str] = {
    "record": "frostnode.validation.record:scheme",
    "ledger": "frostnode.validation.ledger:scheme",
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED_PATH = re.compile(rf"(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<attr>{_IDENT}(?:\.{_IDENT})*)\Z")


class SchemeLoadError(ValueError):
    """
    A configured scheme cannot be loaded.

    @ivar spec: the entry as configured (a name or a dotted path).
    @ivar problem: what is wrong, without the entry.
    """

    def __init__(self, spec: object, problem: str) -> None:
        super().__init__(spec, problem)
        self.spec = spec
        self.problem = problem

    def __str__(self) -> str:
        return f"validation scheme {self.spec!r}: {self.problem}"


class LoadedScheme:
    """
    A scheme as the signing service uses it.

    @ivar name: the scheme's name.
    @ivar scheme: the scheme object itself.
    @ivar source: where it came from, for logs and errors.
    """

    log = Logger()

    def __init__(self, scheme: Any, source: str) -> None:
        self.scheme = scheme
        self.name: str = scheme.name
        self.source = source

    def message(self, request: bytes, view: LogView) -> bytes:
        """
        The exact bytes to sign: L{scheme_message} of the scheme's statement
        for C{request} on C{view}.

        @raise Rejection: the scheme refused; L{SchemeFailed} (a
            L{Rejection}) if the scheme broke its contract, logged with its
            traceback.
        @raise MissingData: the view lacks what the request names.
        """
        if not isinstance(request, bytes):
            raise TypeError(f"a signing request is bytes, not {type(request).__name__}")
        try:
            statement = self.scheme.statement(request, view)
        except (Rejection, MissingData):
            raise
        except Exception as e:
            self.log.failure("validation scheme {scheme} ({source}) raised", scheme=self.name, source=self.source)
            raise SchemeFailed(self.name, f"{type(e).__name__}: {e}") from e
        if not isinstance(statement, bytes):
            raise SchemeFailed(self.name, f"statement() returned {type(statement).__name__}, not bytes")
        return scheme_message(self.name, statement)

    def request_from_json(self, obj: Any) -> bytes:
        """
        The scheme's request from a client's JSON form.  Schemes without
        C{request_from_json} take the raw request as a hex string.

        @raise ValueError: the JSON does not describe a request.
        """
        convert = getattr(self.scheme, "request_from_json", None)
        if convert is not None:
            request = convert(obj)
            if not isinstance(request, bytes):
                raise SchemeFailed(self.name, f"request_from_json() returned {type(request).__name__}, not bytes")
            return request
        if not isinstance(obj, str):
            raise ValueError(f"scheme {self.name!r} takes its request as a hex string")
        try:
            return bytes.fromhex(obj)
        except ValueError:
            raise ValueError(f"scheme {self.name!r}: the request is not hex") from None

    def __repr__(self) -> str:
        return f"<LoadedScheme {self.name!r} from {self.source}>"


def _entry_points(given: Optional[Iterable[EntryPoint]]) -> list[EntryPoint]:
    if given is not None:
        return [ep for ep in given if ep.group == ENTRY_POINT_GROUP]
    return list(_installed_entry_points(group=ENTRY_POINT_GROUP))


def _ep_source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{where}"


def _import(spec: str, path: str) -> Any:
    """The object at C{module:attr}, with errors that say which part failed."""
    m = _DOTTED_PATH.match(path)
    if m is None:
        raise SchemeLoadError(spec, f"{path!r} is not a dotted path of the form 'package.module:attribute'")
    module_name, attr = m.group("module"), m.group("attr")
    try:
        obj: Any = import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise SchemeLoadError(spec, f"module {module_name!r} not found") from None
        raise SchemeLoadError(spec, f"importing module {module_name!r} failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise SchemeLoadError(spec, f"importing module {module_name!r} failed: {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SchemeLoadError(spec, f"{module_name}:{attr} does not exist (no attribute {part!r})") from None
    return obj


def _adopt(spec: str, obj: Any, source: str, expected_name: Optional[str]) -> LoadedScheme:
    """Check that C{obj} is a scheme (instantiating a class) and wrap it."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise SchemeLoadError(
                spec, f"class {obj.__name__} cannot be instantiated without arguments ({e}); point at an instance"
            ) from e
    name = getattr(obj, "name", None)
    try:
        check_scheme_name(name)
    except ValueError as e:
        raise SchemeLoadError(spec, f"{source} is not a validation scheme: its 'name' is unusable: {e}") from None
    if not callable(getattr(obj, "statement", None)):
        raise SchemeLoadError(spec, f"{source} is not a validation scheme: it has no statement(request, view) method")
    convert = getattr(obj, "request_from_json", None)
    if convert is not None and not callable(convert):
        raise SchemeLoadError(spec, f"{source}: request_from_json is not callable")
    if expected_name is not None and name != expected_name:
        raise SchemeLoadError(spec, f"{source} is named {name!r}, not {expected_name!r}")
    return LoadedScheme(obj, source)


def load_scheme(spec: str, *, entry_points: Optional[Iterable[EntryPoint]] = None) -> LoadedScheme:
    """
    Load one scheme by name or dotted path (see the module docstring).

    @param entry_points: the entry points to search instead of the installed
        ones (tests, tools); only those of L{ENTRY_POINT_GROUP} count.
    @raise SchemeLoadError: unknown name, ambiguous or conflicting entry
        points, import failure, or an object that is not a scheme.
    """
    if not isinstance(spec, str) or not spec:
        raise SchemeLoadError(spec, "must be a scheme name or a dotted path 'package.module:attribute'")
    if ":" in spec:
        return _adopt(spec, _import(spec, spec), f"{spec}", None)
    try:
        check_scheme_name(spec)
    except ValueError as e:
        raise SchemeLoadError(spec, f"is neither a scheme name nor a dotted path 'package.module:attribute' ({e})") from None
    matching = [ep for ep in _entry_points(entry_points) if ep.name == spec]
    if spec in BUILTIN_SCHEMES:
        path = BUILTIN_SCHEMES[spec]
        for ep in matching:
            if ep.value != path:
                raise SchemeLoadError(spec, f"{_ep_source(ep)} claims the name of the built-in scheme ({path})")
        return _adopt(spec, _import(spec, path), f"built-in {path}", spec)
    values = sorted({ep.value for ep in matching})
    if not values:
        known = sorted(available(entry_points))
        raise SchemeLoadError(
            spec,
            f"no such scheme: not built in and no entry point in group {ENTRY_POINT_GROUP!r} "
            f"(available: {', '.join(known)}); for an unpackaged scheme give 'package.module:attribute'",
        )
    if len(values) > 1:
        raise SchemeLoadError(
            spec, "ambiguous: several entry points claim it: " + "; ".join(sorted(_ep_source(ep) for ep in matching))
        )
    ep = matching[0]
    return _adopt(spec, _import(spec, ep.value), _ep_source(ep), spec)


def available(entry_points: Optional[Iterable[EntryPoint]] = None) -> set[str]:
    """Names that L{load_scheme} may resolve: the built-ins and every entry point."""
    return set(BUILTIN_SCHEMES) | {ep.name for ep in _entry_points(entry_points)}


def load_schemes(
    specs: Iterable[str] = (), *, entry_points: Optional[Iterable[EntryPoint]] = None
) -> dict[str, LoadedScheme]:
    """
    The built-in schemes plus those configured, by name.

    Naming a built-in again, or one scheme twice, is harmless; two different
    objects with one name are refused, since the name is their message domain.

    @raise SchemeLoadError: as L{load_scheme}, or a name taken twice.
    """
    loaded: dict[str, LoadedScheme] = {}
    for spec in [*BUILTIN_SCHEMES, *specs]:
        s = load_scheme(spec, entry_points=entry_points)
        prior = loaded.get(s.name)
        if prior is not None:
            if prior.scheme is s.scheme or prior.source == s.source:
                continue
            raise SchemeLoadError(spec, f"{s.source} is named {s.name!r}, which {prior.source} already uses")
        loaded[s.name] = s
    return loaded
