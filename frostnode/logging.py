# -*- test-case-name: tests.test_plugin -*-
"""
Log observers for C{[log] format} and C{[log] level}.

Text output is Twisted's own C{textFileLogObserver}.  JSON output is one
object per line (JSON Lines, no RFC 7464 record separator) with C{time},
C{level}, C{namespace}, the formatted C{text} and the event's named fields.
Twisted's C{jsonFileLogObserver} is not used: it writes the raw format string
and internal fields for re-loading into Twisted, not the rendered message an
operator searches for, and it cannot encode the C{bytes} (host keys) that our
events carry; here they become hex.

Where the lines go is twistd's business (C{--logfile}, C{-n} for stdout);
L{twistd_log_file} makes the same choice twistd would, so that only the
format and the level change.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any, Mapping, Optional

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from frostnode.config import LogSection


def _jsonable(value: Any) -> Any:
    """Field values as JSON: bytes as hex, containers recursively, the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def event_as_json(event: Mapping[str, Any]) -> str:
    """One log event as a single line of JSON (no trailing newline)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": level.name if isinstance(level, type(LogLevel.info)) else None,
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and key != "format":
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, sort_keys=False)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Write each event as one JSON line to C{out}, flushing after each."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: Mapping[str, Any]) -> None:
        self._out.write(event_as_json(event) + "\n")
        self._out.flush()


def make_observer(config: LogSection, out: IO[str]) -> ILogObserver:
    """
    The observer for C{config}: text or JSON lines to C{out}, dropping events
    below C{config.level}.
    """
    inner = JSONLinesObserver(out) if config.format == "json" else textFileLogObserver(out)
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=config.level)])


def twistd_log_file(server_options: Mapping[str, Any]) -> Optional[IO[str]]:
    """
    The file twistd would log to, given its options: C{--logfile} (C{-} for
    stdout), stdout when not daemonised, else C{twistd.log}, rotated on
    SIGUSR1 as twistd does.  C{None} when the operator chose another observer
    (C{--logger}, C{--syslog}) or a combination twistd itself refuses
    (a daemon logging to stdout): those are left to twistd.
    """
    if server_options.get("logger") or server_options.get("syslog"):
        return None
    name = server_options.get("logfile") or ""
    nodaemon = server_options.get("nodaemon")
    if name == "-" or (not name and nodaemon):
        return sys.stdout if nodaemon else None
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor
            reactor.callFromThread(log_file.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    return log_file
