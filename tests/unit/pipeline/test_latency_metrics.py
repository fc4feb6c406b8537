"""Latency histograms and request counters: measured where a batch is acknowledged, kept in the spool,
rendered for Prometheus, and carried across the delivery process boundary."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from pipeline_helpers import ScriptedSink, StandInMapping, make_records
from tests.fakes.otlp_server import OtlpFake

from traceexport.mapping import load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.histograms import (
    BOUNDS,
    DELIVERY,
    E2E,
    Histogram,
    Observations,
    from_counters,
    quantile,
)
from traceexport.sinks import create_sink
from traceexport.sinks.base import ExportResult, ItemFailure, Payload
from traceexport.sinks.http_client import make_client
from traceexport.sinks.request_meter import metered, status_outcome

FAST = PipelineSettings(poll_interval=0.02, delivery_process=False)
parser = pytest.importorskip("prometheus_client.parser")


def otlp_routes(url: str) -> list[Route]:
    """One OTLP route to ``url`` (module level, so a delivery process can rebuild it)."""
    sink = create_sink("otlp", "otlp", {"traces_endpoint": url, "linger_seconds": 0}, env={})
    return [Route(sink, load_mapping("otlp"))]


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in ``text``, by its sorted labels."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    """histogram_quantile's estimate: linear inside the bucket holding the rank, the top bound past the last."""
    histogram = Histogram()
    for seconds in (0.3, 0.4, 0.45, 0.6):  # three in (0.25, 0.5], one in (0.5, 0.75]
        histogram.add(seconds)
    assert quantile(0.5, histogram) == pytest.approx(0.25 + 0.25 * 2 / 3)
    assert quantile(1.0, histogram) == pytest.approx(0.75)
    histogram.add(10_000.0)
    assert quantile(1.0, histogram) == BOUNDS[-1]
    assert quantile(0.5, Histogram()) is None


def test_an_observation_on_a_bound_counts_in_that_bound_s_bucket() -> None:
    """Buckets are ``le``: exactly 1 s falls in the 1 s bucket, and a negative time (clock skew) in the first."""
    histogram = Histogram()
    histogram.add(1.0)
    histogram.add(-3.0)
    assert histogram.counts[BOUNDS.index(1.0)] == 1 and histogram.counts[0] == 1 and histogram.total == 1.0


def test_each_acknowledged_record_is_observed_once_with_both_latencies(tmp_path: Path) -> None:
    """After delivery, /metrics has e2e and delivery histograms whose counts equal the records acknowledged."""
    with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping())], FAST) as pipe:
        pipe.start()
        pipe.accept(make_records(5))
        assert pipe.flush(30)
        text = pipe.prometheus_text()
        sink = pipe.metrics()["sinks"]["opik"]
    families = _families(text)
    for metric in ("traceexport_e2e_latency_seconds", "traceexport_delivery_latency_seconds",
                   "traceexport_request_duration_seconds"):
        assert families[metric].type == "histogram"
    assert _samples(text, "traceexport_delivery_latency_seconds_count") == {(("sink", "opik"),): 5.0}
    assert _samples(text, "traceexport_e2e_latency_seconds_count") == {(("sink", "opik"),): 5.0}
    buckets = [v for k, v in _samples(text, "traceexport_delivery_latency_seconds_bucket").items()]
    assert len(buckets) == len(BOUNDS) + 1 and max(buckets) == 5.0
    assert sink["latency"]["delivery_latency"]["count"] == 5
    assert sink["latency"]["delivery_latency"]["p95_seconds"] is not None
    # The sample records ended in 2024: their end-to-end latency is past the top bucket.
    assert sink["latency"]["e2e_latency"]["p50_seconds"] == BOUNDS[-1]
    assert "traceexport_spool_max_bytes" in families


def test_records_not_acknowledged_are_not_observed(tmp_path: Path) -> None:
    """A refused batch adds no latency observation: the histograms measure acknowledgements only."""
    refuse = ItemFailure("nope", permanent=True, status_code=400)

    def plan(payloads: Sequence[Payload], n: int) -> ExportResult:
        return ExportResult.all_failed(len(payloads), refuse)

    with Pipeline(tmp_path, [Route(ScriptedSink("opik", plan), StandInMapping())], FAST) as pipe:
        pipe.start()
        pipe.accept(make_records(3))
        assert pipe.flush(30)
        latency = pipe.metrics()["sinks"]["opik"]["latency"]
    assert "delivery_latency" not in latency and "e2e_latency" not in latency


def test_the_one_http_client_reports_every_request_with_its_outcome() -> None:
    """Requests through make_client inside a metered block are counted as ok, retryable or permanent."""
    statuses = iter([200, 429, 400, 503])

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    observed = Observations()
    client = make_client(timeout=5, transport=httpx.MockTransport(answer))
    broken = make_client(timeout=5, transport=httpx.MockTransport(refuse))
    with metered(observed.request):
        for _ in range(4):
            client.post("http://backend.invalid/x")
        with pytest.raises(httpx.ConnectError):
            broken.post("http://backend.invalid/x")
    assert observed.requests == {"ok": 1, "retryable": 3, "permanent": 1}
    assert observed.histograms["request_duration_seconds"].count == 5


def test_requests_outside_a_metered_block_are_not_counted() -> None:
    """Without a meter (``traceexport map``, tests) a request is only a request."""
    observed = Observations()
    client = make_client(timeout=5, transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    with metered(observed.request):
        pass
    client.post("http://backend.invalid/x")
    assert not observed


def test_otlp_grpc_requests_are_counted_with_their_outcome() -> None:
    """The OTLP/gRPC transport reports each export call: OK ok, UNAVAILABLE retryable, UNAUTHENTICATED permanent."""
    pytest.importorskip("grpc", reason="grpc extra not installed")
    from tests.fakes.otlp_server import OtlpGrpcFake

    from traceexport.sinks.otlp import from_config

    body = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "0000000000000001", "name": "s",
            "kind": "CLIENT", "startTimeUnixNano": 1_700_000_000_000_000_000,
            "endTimeUnixNano": 1_700_000_000_500_000_000, "attributes": {}, "status": {"code": "OK"}}
    observed = Observations()
    with OtlpGrpcFake() as fake:
        fake.fail_next(1, "UNAVAILABLE")
        fake.fail_next(1, "UNAUTHENTICATED")
        sink = from_config("g", {"protocol": "grpc", "endpoint": fake.url, "timeout": 5}, {})
        with metered(observed.request):
            for _ in range(3):
                sink.export([Payload("span", body, "k")])
        sink.shutdown()
    assert observed.requests == {"retryable": 1, "permanent": 1, "ok": 1}


def test_status_outcomes_follow_the_shared_classifier() -> None:
    """2xx ok; 408, 425, 429 and 5xx retryable; every other answer permanent."""
    assert [status_outcome(s) for s in (200, 204, 408, 429, 500, 504, 400, 401, 404, 413, 302)] == [
        "ok", "ok", "retryable", "retryable", "retryable", "retryable",
        "permanent", "permanent", "permanent", "permanent", "permanent"]


def test_histograms_and_request_counts_cross_the_delivery_process_boundary(tmp_path: Path) -> None:
    """With delivery in a child process, the parent's /metrics shows the child's requests and latencies."""
    with OtlpFake() as fake:
        fake.fail_next(1, 429, headers={"Retry-After": "0"})
        factory = functools.partial(otlp_routes, fake.traces_url)
        settings = PipelineSettings(delivery_process=True, poll_interval=0.05)
        with Pipeline(tmp_path, factory(), settings, route_factory=factory) as pipe:
            pipe.start()
            pipe.accept(make_records(4))
            assert pipe.flush(60)
            text = pipe.prometheus_text()
    requests = _samples(text, "traceexport_requests_total")
    assert requests[(("outcome", "retryable"), ("sink", "otlp"))] == 1.0
    assert requests[(("outcome", "ok"), ("sink", "otlp"))] >= 1.0
    assert requests[(("outcome", "permanent"), ("sink", "otlp"))] == 0.0
    assert _samples(text, "traceexport_delivery_latency_seconds_count") == {(("sink", "otlp"),): 4.0}
    count = _samples(text, "traceexport_request_duration_seconds_count")[(("sink", "otlp"),)]
    assert count == sum(v for (labels, v) in requests.items())


def test_counts_stored_under_a_bound_no_longer_listed_join_the_next_one_up() -> None:
    """Stored counters name their bucket by its bound: a bound dropped from BOUNDS later folds into the next."""
    stored = {"delivery_latency_seconds:0.3": 2, "delivery_latency_seconds:1.0": 1,
              "delivery_latency_seconds:+Inf": 4, "delivery_latency_seconds:sum_us": 2_500_000, "exported": 9}
    histogram = from_counters(stored)[DELIVERY]
    assert histogram.counts[BOUNDS.index(0.5)] == 2 and histogram.counts[BOUNDS.index(1.0)] == 1
    assert histogram.counts[-1] == 4 and histogram.total == 2.5 and histogram.count == 7


def test_observations_survive_a_restart_as_counters_should(tmp_path: Path) -> None:
    """The totals live in the spool: a new pipeline on the same spool goes on from them."""
    for round_ in range(2):
        with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping())], FAST) as pipe:
            pipe.start()
            pipe.accept(make_records(2, start=2 * round_))
            assert pipe.flush(30)
            histograms = pipe.metrics(with_histograms=True)["histograms"]["opik"]
    assert histograms[DELIVERY].count == 4 and histograms[E2E].count == 4
