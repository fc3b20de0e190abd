"""
The metrics registry and its Prometheus endpoint: what a scrape returns is
parsed back with a strict reader of the text format 0.0.4 (HELP and TYPE
before the samples, label escaping, cumulative buckets ending in +Inf), and
the endpoint is scraped over loopback HTTP with C{twisted.web.client.Agent}.
"""

from __future__ import annotations

import math
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from frostnode.metrics import (
    CONTENT_TYPE,
    MetricsService,
    Registry,
    format_value,
    node_metrics,
    watch_peer_network,
    watch_sync_lag,
)
from frostnode.net.peers import LinkCounters

_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)\Z')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|\Z)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """
    A strict reader of the text format: each family's HELP and TYPE come
    before its samples, every sample belongs to a declared family, label
    values are unescaped, and histograms are checked for cumulative buckets
    ending in +Inf with C{_count} equal to the +Inf bucket.

    @return: C{{name: {"help", "type", "samples": {(sample name, labels): value}}}}
    """
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict[str, Any]] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help = line[7:].partition(" ")
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": _unescape(help), "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            sample, _, body, value = m.groups()
            labels: list[tuple[str, str]] = []
            pos = 0
            while body and pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
            fam = families[current]
            suffixes = ("_bucket", "_sum", "_count") if fam["type"] == "histogram" else ("",)
            assert any(sample == current + s for s in suffixes), f"{sample} outside family {current}"
            fam["samples"][(sample, tuple(labels))] = float(value)
    for name, fam in families.items():
        if fam["type"] != "histogram":
            continue
        series: dict[tuple, list[tuple[float, float]]] = {}
        for (sample, labels), value in fam["samples"].items():
            if sample.endswith("_bucket"):
                le = dict(labels)["le"]
                rest = tuple(kv for kv in labels if kv[0] != "le")
                series.setdefault(rest, []).append((float(le), value))
        for rest, buckets in series.items():
            bounds = [b for b, _ in buckets]
            counts = [c for _, c in buckets]
            assert bounds == sorted(bounds) and math.isinf(bounds[-1]), f"{name} buckets {bounds}"
            assert counts == sorted(counts), f"{name} buckets not cumulative: {counts}"
            assert fam["samples"][(name + "_count", rest)] == counts[-1]
    return families


class FormatTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual([format_value(v) for v in (3, 2.0, 0.25, math.inf, -math.inf, math.nan, True)],
                         ["3", "2", "0.25", "+Inf", "-Inf", "NaN", "1"])

    def test_counters_gauges_histograms_parse_back(self) -> None:
        r = Registry()
        c = r.counter("jobs_total", "Jobs done.\nSecond line with a \\ backslash.")
        c.inc()
        c.inc(2)
        errors = r.counter("errors_total", "Errors by kind.", labels=("kind", "peer"))
        errors.labels("timeout", "a").inc()
        errors.labels(kind='bad "quote"\n', peer="b\\c").inc(5)
        g = r.gauge("queue_depth", "Items queued.")
        g.set(7)
        g.dec(2)
        h = r.histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
        for v in (0.05, 0.1, 0.5, 3.0):
            h.observe(v)
        text = r.render()
        fams = parse_exposition(text)

        self.assertEqual(list(fams), ["jobs_total", "errors_total", "queue_depth", "latency_seconds"])
        self.assertEqual(fams["jobs_total"]["help"], "Jobs done.\nSecond line with a \\ backslash.")
        self.assertEqual(fams["jobs_total"]["type"], "counter")
        self.assertEqual(fams["jobs_total"]["samples"], {("jobs_total", ()): 3.0})
        self.assertEqual(fams["errors_total"]["samples"], {
            ("errors_total", (("kind", "timeout"), ("peer", "a"))): 1.0,
            ("errors_total", (("kind", 'bad "quote"\n'), ("peer", "b\\c"))): 5.0,
        })
        self.assertEqual(fams["queue_depth"]["samples"], {("queue_depth", ()): 5.0})
        self.assertEqual(fams["latency_seconds"]["type"], "histogram")
        self.assertEqual(fams["latency_seconds"]["samples"], {
            ("latency_seconds_bucket", (("le", "0.1"),)): 2.0,
            ("latency_seconds_bucket", (("le", "1"),)): 3.0,
            ("latency_seconds_bucket", (("le", "+Inf"),)): 4.0,
            ("latency_seconds_sum", ()): 3.65,
            ("latency_seconds_count", ()): 4.0,
        })
        self.assertIn('errors_total{kind="bad \\"quote\\"\\n",peer="b\\\\c"} 5\n', text)

    def test_labelled_histogram(self) -> None:
        r = Registry()
        h = r.histogram("rtt_seconds", "Round trips.", labels=("peer",), buckets=(1, 2))
        h.labels(peer="x").observe(1.5)
        h.labels(peer="y").observe(0.5)
        samples = parse_exposition(r.render())["rtt_seconds"]["samples"]
        self.assertEqual(samples[("rtt_seconds_bucket", (("peer", "x"), ("le", "1")))], 0.0)
        self.assertEqual(samples[("rtt_seconds_bucket", (("peer", "x"), ("le", "2")))], 1.0)
        self.assertEqual(samples[("rtt_seconds_count", (("peer", "y"),))], 1.0)

    def test_callbacks_are_read_at_scrape_time(self) -> None:
        r = Registry()
        state = {"n": 1, "per": {("a",): 2, ("b",): 3}}
        r.gauge_callback("things", "Things now.", lambda: state["n"])
        r.counter_callback("per_peer_total", "Per peer.", lambda: state["per"], labels=("peer",))
        self.assertEqual(parse_exposition(r.render())["things"]["samples"], {("things", ()): 1.0})
        state["n"] = 4
        state["per"][("a",)] = 10
        fams = parse_exposition(r.render())
        self.assertEqual(fams["things"]["samples"], {("things", ()): 4.0})
        self.assertEqual(fams["per_peer_total"]["type"], "counter")
        self.assertEqual(fams["per_peer_total"]["samples"][("per_peer_total", (("peer", "a"),))], 10.0)

    def test_failing_callback_is_left_out_and_logged(self) -> None:
        r = Registry()
        r.gauge_callback("broken", "Raises.", lambda: 1 // 0)
        r.gauge("fine", "Works.").set(1)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            fams = parse_exposition(r.render())
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(list(fams), ["fine"])
        self.assertEqual([e["metric"] for e in events if e.get("log_level") == LogLevel.critical], ["broken"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_registration_errors_name_the_metric(self) -> None:
        r = Registry()
        r.counter("a_total", "A.")
        for call, fragment in [
            (lambda: r.counter("a_total", "again"), "already registered"),
            (lambda: r.counter("requests", "x"), "_total"),
            (lambda: r.gauge("bad-name", "x"), "not a valid metric name"),
            (lambda: r.gauge("g", "x", labels=("__reserved",)), "not a valid label name"),
            (lambda: r.gauge("g", "x", labels="peer"), "sequence of names"),
            (lambda: r.histogram("h", "x", labels=("le",)), "reserved"),
            (lambda: r.histogram("h", "x", buckets=(2, 1)), "increasing"),
        ]:
            e = self.assertRaises(ValueError, call)
            self.assertIn(fragment, str(e))

    def test_misuse_of_values(self) -> None:
        r = Registry()
        c = r.counter("c_total", "C.", labels=("kind",))
        self.assertIn("use .labels", str(self.assertRaises(ValueError, c.inc)))
        self.assertIn("takes 1 label values", str(self.assertRaises(ValueError, c.labels, "a", "b")))
        self.assertIn("labels are kind", str(self.assertRaises(ValueError, c.labels, peer="a")))
        self.assertRaises(ValueError, c.labels("x").inc, -1)
        self.assertRaises(ValueError, r.histogram("h", "H.").observe, math.nan)

    def test_empty_registry_renders_nothing(self) -> None:
        self.assertEqual(Registry().render(), "")

    def test_unused_metrics_without_labels_are_exposed_at_zero(self) -> None:
        r = Registry()
        r.counter("c_total", "C.")
        r.gauge("g", "G.")
        r.histogram("h_seconds", "H.", buckets=(1,))
        r.counter("by_kind_total", "By kind.", labels=("kind",))
        fams = parse_exposition(r.render())
        self.assertEqual(fams["c_total"]["samples"], {("c_total", ()): 0.0})
        self.assertEqual(fams["g"]["samples"], {("g", ()): 0.0})
        self.assertEqual(fams["h_seconds"]["samples"][("h_seconds_count", ())], 0.0)
        self.assertEqual(fams["by_kind_total"]["samples"], {})  # no label values known yet


class _FakePeers:
    """Stands in for PeerNetwork: the attributes watch_peer_network reads."""

    def __init__(self) -> None:
        self.counters = LinkCounters()
        self.up: set[bytes] = set()

    def connected(self) -> set[bytes]:
        return self.up

    def peers(self) -> list[bytes]:
        return [b"a", b"b", b"c"]


class NodeMetricsTests(SynchronousTestCase):
    def test_the_issue_s_metrics_are_exposed(self) -> None:
        m = node_metrics()
        peers = _FakePeers()
        watch_peer_network(m.registry, peers)
        watch_sync_lag(m.registry, lambda: 12)
        m.dkg_runs.inc()
        m.dkg_failures.inc()
        m.signatures_issued.inc(3)
        m.signatures_failed.inc()
        m.broadcast_latency.observe(0.02)
        peers.up = {b"a", b"b"}
        peers.counters.messages_in = 40
        peers.counters.messages_out = 41

        fams = parse_exposition(m.registry.render())

        def value(name: str) -> float:
            return fams[name]["samples"][(name, ())]

        self.assertEqual(value("frostnode_links_up"), 2)
        self.assertEqual(value("frostnode_peers"), 3)
        self.assertEqual(value("frostnode_peer_messages_in_total"), 40)
        self.assertEqual(value("frostnode_peer_messages_out_total"), 41)
        self.assertEqual(value("frostnode_dkg_runs_total"), 1)
        self.assertEqual(value("frostnode_dkg_failures_total"), 1)
        self.assertEqual(value("frostnode_signatures_issued_total"), 3)
        self.assertEqual(value("frostnode_signatures_failed_total"), 1)
        self.assertEqual(value("frostnode_sync_lag_records"), 12)
        self.assertEqual(fams["frostnode_broadcast_latency_seconds"]["samples"][
            ("frostnode_broadcast_latency_seconds_count", ())], 1)


class EndpointTests(TestCase):
    @inlineCallbacks
    def test_scrape_over_loopback(self) -> None:
        m = node_metrics()
        m.signatures_issued.inc()
        service = MetricsService(m.registry, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        port = yield service.when_listening()
        base = f"http://127.0.0.1:{port.getHost().port}".encode()
        agent = Agent(reactor)

        response = yield agent.request(b"GET", base + b"/metrics")
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [CONTENT_TYPE.encode()])
        fams = parse_exposition(body.decode("utf-8"))
        self.assertEqual(fams["frostnode_signatures_issued_total"]["samples"],
                         {("frostnode_signatures_issued_total", ()): 1.0})

        m.signatures_issued.inc()  # the next scrape sees the new value
        response = yield agent.request(b"GET", base + b"/metrics")
        fams = parse_exposition((yield readBody(response)).decode("utf-8"))
        self.assertEqual(fams["frostnode_signatures_issued_total"]["samples"],
                         {("frostnode_signatures_issued_total", ()): 2.0})

        response = yield agent.request(b"GET", base + b"/other")
        yield readBody(response)
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_port_in_use_is_reported_and_the_service_stays_up(self) -> None:
        first = MetricsService(Registry(), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        first.startService()
        self.addCleanup(first.stopService)
        port = yield first.when_listening()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        second = MetricsService(Registry(), TCP4ServerEndpoint(reactor, port.getHost().port, interface="127.0.0.1"),
                                f"tcp:{port.getHost().port}:interface=127.0.0.1")
        waiting = second.when_listening()
        second.startService()
        self.addCleanup(second.stopService)
        yield self.assertFailure(waiting, Exception)
        # Asked after the failure, it answers at once (it used to wait forever).
        yield self.assertFailure(second.when_listening(), Exception)
        self.assertTrue(second.running)
        self.assertEqual([e["listen"] for e in events if e.get("log_level") == LogLevel.error],
                         [f"tcp:{port.getHost().port}:interface=127.0.0.1"])
