"""
Validation schemes: what a member checks in its own log before it signs.

- L{frostnode.validation.interface}: the contract (L{Scheme}, L{LogView},
  L{Rejection}, L{MissingData}, L{scheme_message}) and L{DataLogView}.
- L{frostnode.validation.registry}: loading schemes by name (entry point
  group C{frostnode.validators}) or dotted path; L{LoadedScheme.message}
  gives the signing service the exact bytes to sign.
- Built-in schemes: L{frostnode.validation.record} (named records exist) and
  L{frostnode.validation.ledger} (balances of a replicated ledger at a cut).

C{docs/validation.rst} explains how to write a scheme.
"""

from frostnode.validation.interface import (
    DataLogView,
    LogView,
    MissingData,
    Rejection,
    Scheme,
    SchemeFailed,
    scheme_message,
)
from frostnode.validation.registry import (
    ENTRY_POINT_GROUP,
    LoadedScheme,
    SchemeLoadError,
    load_scheme,
    load_schemes,
)

__all__ = [
    "DataLogView", "LogView", "MissingData", "Rejection", "Scheme", "SchemeFailed", "scheme_message",
    "ENTRY_POINT_GROUP", "LoadedScheme", "SchemeLoadError", "load_scheme", "load_schemes",
]
