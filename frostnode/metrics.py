# -*- test-case-name: tests.test_metrics -*-
"""
Counters, gauges and histograms, served in the Prometheus text exposition
format (version 0.0.4) by a small C{twisted.web} resource.

Decisions:

  - B{No C{prometheus_client}.}  Its registry is process-global by default,
    its HTTP server runs in a thread, and what a node needs (three metric
    types, labels, values read at scrape time) is a page of code here.  The
    format is small and stable: C{# HELP}, C{# TYPE}, then one
    C{name{label="value"} number} line per sample; histograms add
    cumulative C{_bucket{le=...}} lines ending with C{+Inf}, then C{_sum}
    and C{_count}.
  - B{A registry per node, not a global.}  Tests and a devnet run several
    nodes in one process; each node's layers get its L{Registry} (or the
    L{NodeMetrics} made from it) from the node assembly.
  - B{Callback metrics} (L{Registry.gauge_callback},
    L{Registry.counter_callback}) are read when scraped, so a layer that
    already keeps numbers (the peer links' C{LinkCounters}) is observed
    without importing this module or paying anything per message.  A
    callback that raises is logged and its metric left out of that scrape:
    one broken layer does not blank the whole page.
  - B{Names are checked at registration} (the Prometheus name and label
    grammar, no duplicates, counters end in C{_total}), so a typo fails when
    the node is assembled rather than at the monitoring server.
  - The endpoint listens on C{[metrics] listen}, loopback by default: the
    numbers say when a node signs and whom it talks to.  Requests are not
    written to the log (a scrape every few seconds would drown it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from frostnode.net.listening import ListeningService

#: The C{Content-Type} of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets in seconds (Prometheus' defaults, widened for WAN links).
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Number = Union[int, float]
LabelValues = tuple[str, ...]
#: What a callback metric's function returns: one number, or (with labels)
#: a mapping from label-value tuples to numbers.
Sampled = Union[Number, Mapping[LabelValues, Number]]


# -- text format ---------------------------------------------------------------


def format_value(value: Number) -> str:
    """A sample value as the exposition format writes it (C{+Inf}, C{NaN}, integers without C{.0})."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def escape_help(text: str) -> str:
    """C{# HELP} text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """A label value: backslash, double quote and newline escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(names: Sequence[str], values: Sequence[str]) -> str:
    """C{{a="x",b="y"}}, or the empty string without labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values)) + "}"


# -- metrics -------------------------------------------------------------------


class _Metric:
    """
    One metric family: a name, its help text, its label names, and one child
    per label-value combination (the family itself when it has no labels).
    """

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help
        self.label_names = labels
        self._children: dict[LabelValues, Any] = {}

    def labels(self, *values: str, **named: str) -> Any:
        """
        The child for one combination of label values, given in order or by
        name (created at first use, at zero).

        @raise ValueError: wrong label names or count.
        """
        if values and named:
            raise ValueError(f"{self.name}: give label values in order or by name, not both")
        if named:
            if set(named) != set(self.label_names):
                raise ValueError(f"{self.name}: labels are {', '.join(self.label_names) or 'none'}, "
                                 f"not {', '.join(sorted(named))}")
            values = tuple(named[n] for n in self.label_names)
        if len(values) != len(self.label_names) or not self.label_names:
            raise ValueError(f"{self.name}: takes {len(self.label_names)} label values "
                             f"({', '.join(self.label_names) or 'no labels'}), got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only_child(self) -> Any:
        if self.label_names:
            raise ValueError(f"{self.name} has labels ({', '.join(self.label_names)}): use .labels(...) first")
        child = self._children.get(())
        if child is None:
            child = self._children[()] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], LabelValues, Number]]:
        """C{(suffix, extra label names, all label values, value)} per line, children sorted by labels."""
        for key in sorted(self._children):
            yield from self._child_samples(key, self._children[key])

    def _child_samples(self, key: LabelValues, child: Any) -> Iterable[tuple[str, tuple[str, ...], LabelValues, Number]]:
        yield "", (), key, child.value


class _Value:
    """A counter's or gauge's number (one label combination)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Number = 0


class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: Number = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up (got inc({amount}))")
        self.value += amount


class Counter(_Metric):
    """A total that only goes up (restarts reset it; Prometheus' C{rate()} copes)."""

    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: Number = 1) -> None:
        """Add C{amount} (>= 0) to a counter without labels."""
        self._only_child().inc(amount)

    @property
    def value(self) -> Number:
        return self._only_child().value


class _GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: Number) -> None:
        self.value = value

    def inc(self, amount: Number = 1) -> None:
        self.value += amount

    def dec(self, amount: Number = 1) -> None:
        self.value -= amount


class Gauge(_Metric):
    """A number that goes up and down, set by the layer that knows it."""

    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: Number) -> None:
        self._only_child().set(value)

    def inc(self, amount: Number = 1) -> None:
        self._only_child().inc(amount)

    def dec(self, amount: Number = 1) -> None:
        self._only_child().dec(amount)

    @property
    def value(self) -> Number:
        return self._only_child().value


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)      # per bucket, not cumulative
        self.sum: float = 0.0
        self.count = 0

    def observe(self, value: Number) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1


class Histogram(_Metric):
    """
    Observations counted into fixed buckets (cumulative on output, as the
    format requires), with their sum and count.
    """

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: Sequence[float]) -> None:
        super().__init__(name, help, labels)
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing numbers, got {list(buckets)!r}")
        if not math.isinf(bounds[-1]):
            bounds += (math.inf,)
        self.buckets = bounds

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: Number) -> None:
        """Record one observation (seconds, for the latency histograms here)."""
        self._only_child().observe(value)

    @property
    def count(self) -> int:
        return self._only_child().count

    @property
    def sum(self) -> float:
        return self._only_child().sum

    def _child_samples(self, key: LabelValues, child: _HistogramChild) -> Iterable[tuple[str, tuple[str, ...], LabelValues, Number]]:
        running = 0
        for bound, n in zip(self.buckets, child.counts):
            running += n
            yield "_bucket", ("le",), key + (format_value(bound),), running
        yield "_sum", (), key, child.sum
        yield "_count", (), key, child.count


class _Callback(_Metric):
    """A gauge or counter whose value a function reports at scrape time."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], kind: str, fn: Callable[[], Sampled]) -> None:
        super().__init__(name, help, labels)
        self.kind = kind
        self.fn = fn

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], LabelValues, Number]]:
        result = self.fn()
        if not self.label_names:
            if isinstance(result, Mapping):
                raise TypeError(f"callback of {self.name} (no labels) returned a mapping")
            return [("", (), (), result)]
        if not isinstance(result, Mapping):
            raise TypeError(f"callback of {self.name} (labels {', '.join(self.label_names)}) must return a mapping")
        out = []
        for key, value in sorted((tuple(str(v) for v in k), v) for k, v in result.items()):
            if len(key) != len(self.label_names):
                raise ValueError(f"callback of {self.name} returned label values {key!r} for labels {self.label_names!r}")
            out.append(("", (), key, value))
        return out


class Registry:
    """
    The metrics of one node, in registration order.

    Every C{name} must match the Prometheus grammar and be new to this
    registry; counters' names end in C{_total}.
    """

    log = Logger()

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, self._check(name, labels, counter=True)))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, self._check(name, labels)))

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, self._check(name, labels, histogram=True), buckets))

    def gauge_callback(self, name: str, help: str, fn: Callable[[], Sampled], labels: Sequence[str] = ()) -> None:
        """
        Report C{fn()} as a gauge at every scrape: a number, or with
        C{labels} a mapping from label-value tuples to numbers.
        """
        self._add(_Callback(name, help, self._check(name, labels), "gauge", fn))

    def counter_callback(self, name: str, help: str, fn: Callable[[], Sampled], labels: Sequence[str] = ()) -> None:
        """Like L{gauge_callback}, for a total the caller keeps and only increases."""
        self._add(_Callback(name, help, self._check(name, labels, counter=True), "counter", fn))

    def get(self, name: str) -> Optional[_Metric]:
        """The metric registered as C{name}, if any."""
        return self._metrics.get(name)

    def _check(self, name: str, labels: Sequence[str], counter: bool = False, histogram: bool = False) -> tuple[str, ...]:
        if isinstance(labels, str):
            raise ValueError(f"{name}: labels must be a sequence of names, not the string {labels!r}")
        labels = tuple(labels)
        if not _METRIC_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        if name in self._metrics:
            raise ValueError(f"metric {name} is already registered")
        if counter and not name.endswith("_total"):
            raise ValueError(f"counter {name} must be named ..._total")
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: {label!r} is not a valid label name")
            if histogram and label == "le":
                raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{name}: repeated label name in {labels!r}")
        return labels

    def _add(self, metric: Any) -> Any:
        self._metrics[metric.name] = metric
        if not metric.label_names and not isinstance(metric, _Callback):
            metric._only_child()  # exposed at zero from the start, so rate() sees the first increment
        return metric

    def render(self) -> str:
        """The whole registry in the text exposition format 0.0.4."""
        lines: list[str] = []
        for metric in self._metrics.values():
            try:
                samples = list(metric.samples())
            except Exception:
                self.log.failure("metric {metric} left out of the scrape: its callback failed", metric=metric.name)
                continue
            lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for suffix, extra, values, value in samples:
                names = metric.label_names + extra
                lines.append(f"{metric.name}{suffix}{format_labels(names, values)} {format_value(value)}")
        return "\n".join(lines) + "\n" if lines else ""


# -- what the node reports -----------------------------------------------------


@dataclass(frozen=True)
class NodeMetrics:
    """
    The metrics the node's layers update as things happen; each layer is
    given the attributes it needs.  Numbers a layer already keeps are
    registered as callbacks instead (L{watch_peer_network},
    L{watch_sync_lag}).

    @ivar registry: where these (and the callback metrics) live.
    @ivar broadcast_latency: seconds from a broadcast's start to its
        delivery at this node.
    @ivar dkg_runs: key generations started.
    @ivar dkg_failures: key generations that ended without a key.
    @ivar signatures_issued: signing sessions that produced a signature.
    @ivar signatures_failed: signing sessions that did not.
    """

    registry: Registry
    broadcast_latency: Histogram
    dkg_runs: Counter
    dkg_failures: Counter
    signatures_issued: Counter
    signatures_failed: Counter


def node_metrics(registry: Optional[Registry] = None) -> NodeMetrics:
    """Register the node's event-driven metrics in C{registry} (a new one by default)."""
    r = registry if registry is not None else Registry()
    return NodeMetrics(
        registry=r,
        broadcast_latency=r.histogram("frostnode_broadcast_latency_seconds",
                                      "Seconds from the start of a reliable broadcast to its delivery here."),
        dkg_runs=r.counter("frostnode_dkg_runs_total", "Distributed key generations started."),
        dkg_failures=r.counter("frostnode_dkg_failures_total", "Distributed key generations that ended without a key."),
        signatures_issued=r.counter("frostnode_signatures_issued_total", "Signing sessions that produced a signature."),
        signatures_failed=r.counter("frostnode_signatures_failed_total", "Signing sessions that ended without a signature."),
    )


#: C{LinkCounters} field -> (metric name, help), read at scrape time.
PEER_COUNTERS: dict[str, tuple[str, str]] = {
    "messages_in": ("frostnode_peer_messages_in_total", "Messages received from peers (duplicates excluded)."),
    "messages_out": ("frostnode_peer_messages_out_total", "Messages queued to peers."),
    "duplicates_in": ("frostnode_peer_duplicates_in_total", "Duplicate messages received and dropped."),
    "retransmits": ("frostnode_peer_retransmits_total", "Messages resent on a new link."),
    "bytes_in": ("frostnode_peer_bytes_in_total", "Bytes received on peer links."),
    "bytes_out": ("frostnode_peer_bytes_out_total", "Bytes sent on peer links."),
    "links_up": ("frostnode_peer_links_established_total", "Peer links authenticated and installed."),
    "links_refused": ("frostnode_peer_links_refused_total", "Peer connections refused (unknown key, bad handshake)."),
}


def watch_peer_network(registry: Registry, peers: Any) -> None:
    """
    Report a L{frostnode.net.peers.PeerNetwork}: links up now
    (C{frostnode_links_up}), other members (C{frostnode_peers}) and its
    C{counters} totals, all read at scrape time.
    """
    registry.gauge_callback("frostnode_links_up", "Peer links up now.", lambda: len(peers.connected()))
    registry.gauge_callback("frostnode_peers", "Other members of the federation.", lambda: len(peers.peers()))
    for field, (name, help) in PEER_COUNTERS.items():
        registry.counter_callback(name, help, lambda field=field: getattr(peers.counters, field))


def watch_sync_lag(registry: Registry, lag: Callable[[], Number]) -> None:
    """Report C{lag()}: records this node knows exist and has not yet stored."""
    registry.gauge_callback("frostnode_sync_lag_records", "Records known to exist that this node has not stored yet.", lag)


# -- serving ---------------------------------------------------------------------


class MetricsResource(Resource):
    """C{GET /metrics}: the registry, rendered at request time."""

    isLeaf = True

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return self.registry.render().encode("utf-8")


class _QuietSite(Site):
    """A C{Site} that writes no access log and no factory start/stop lines."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


def metrics_site(registry: Registry) -> Site:
    """A web site serving C{registry} at C{/metrics} (other paths: 404)."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return _QuietSite(root)


class MetricsService(ListeningService):
    """
    Serves a registry on an endpoint while running.  A port that cannot be
    bound is logged; the node runs on without metrics.
    """

    what = "metrics"

    def __init__(self, registry: Registry, endpoint: IStreamServerEndpoint, description: str = "") -> None:
        super().__init__(endpoint, metrics_site(registry), description)
        self.registry = registry
