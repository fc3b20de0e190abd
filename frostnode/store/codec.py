# -*- test-case-name: tests.test_store_log -*-
"""
Helpers shared by the stores' encodings, on top of L{frostnode.wire}.

Values the store writes use the same codec as messages (one encoding per
value, limits checked before slicing), so a record read back from disk and
the same record received from a peer go through one decoder.  Two additions:

- Times.  The codec has no floats, and a float has several encodings of one
  value (C{-0.0}); times are stored as u64 microseconds since the epoch.  The
  API keeps float seconds, rounded to whole microseconds when a record is
  built, so a record equals itself after a round trip.
- L{stored}: bytes read back from LMDB that fail to decode are not a peer's
  fault but a bug or damage, reported as L{CorruptStore}.
"""

from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from typing import Iterator

from frostnode.store.errors import CorruptStore
from frostnode.wire import MAX_U64, DecodeError

U64 = struct.Struct(">Q")
_MAX_SECONDS = MAX_U64 // 1_000_000


def u64(n: int) -> bytes:
    """Big-endian u64, so LMDB's bytewise key order is numeric order."""
    return U64.pack(n)


def check_time(t: float, what: str, error: type[Exception] = ValueError) -> float:
    """C{t} as float seconds rounded to whole microseconds; finite and non-negative."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= _MAX_SECONDS:
        raise error(f"{what} must be a finite, non-negative time in seconds, not {t!r}")
    return round(t * 1_000_000) / 1_000_000


def micros(t: float) -> int:
    """A time already passed through L{check_time}, as integer microseconds."""
    return round(t * 1_000_000)


def seconds(us: int) -> float:
    return us / 1_000_000


@contextmanager
def stored(what: str) -> Iterator[None]:
    """Turn a decoding failure of bytes read from disk into L{CorruptStore}."""
    try:
        yield
    except DecodeError as e:
        raise CorruptStore(f"stored {what} does not decode: {e}") from None
