"""The ``otlp`` sink against receivers that answer as the OTLP specification allows but the happy path never
shows: every retryable gRPC status code, a request over the receiver's message size limit, a RetryInfo delay,
a hung receiver at shutdown, an OTLP/HTTP failure answered with a protobuf Status; and gRPC settings it
cannot use (an endpoint with a path or a password, a binary metadata key)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import any_pb2
from tests.contract.test_otlp_sink import T0, span
from tests.fakes.otlp_server import OtlpFake, OtlpGrpcFake
from tests.fakes.raw_server import RawServer, reply

from traceexport.errors import ConfigError, RecordError
from traceexport.sinks.base import Payload
from traceexport.sinks.http import MAX_RETRY_AFTER
from traceexport.sinks.otlp import from_config


def require_grpc() -> None:
    """Skip the calling test when the grpc extra is not installed."""
    pytest.importorskip("grpc", reason="grpc extra not installed")


@pytest.fixture
def grpc_fake() -> Iterator[OtlpGrpcFake]:
    require_grpc()
    with OtlpGrpcFake() as server:
        yield server


def grpc_sink(url: str, **options: Any) -> Any:
    return from_config("g", {"protocol": "grpc", "endpoint": url, "timeout": 5, **options}, {})


@pytest.mark.parametrize("code", ["CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "DATA_LOSS"])
def test_every_code_the_spec_calls_retryable_is_retried(grpc_fake: OtlpGrpcFake, code: str) -> None:
    """The OTLP specification's retryable gRPC codes are retried (before: CANCELLED, OUT_OF_RANGE and DATA_LOSS,
    a receiver going away or a transient read error, sent every record of that request to the dead letter)."""
    grpc_fake.fail_next(1, code)
    sink = grpc_sink(grpc_fake.url)
    failure = sink.export([span(0)]).failures[0]
    assert not failure.permanent and code in failure.reason
    assert sink.export([span(0)]).ok
    sink.shutdown()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_request_over_the_receivers_size_limit_is_split_until_it_fits(compression: str) -> None:
    """A request over the receiver's max_receive_message_length (gRPC's RESOURCE_EXHAUSTED "larger than max")
    is halved until it fits, and a record too large alone goes to the dead letter saying so (before: it was a
    throttle, retried whole until every record of it was dead-lettered, the good ones too)."""
    require_grpc()
    with OtlpGrpcFake(max_receive_bytes=100_000) as fake:
        sink = grpc_sink(fake.url, compression=compression)
        fitting = [span(i, attributes={"blob": f"{i}" * 30_000}) for i in range(6)]
        result = sink.export([*fitting, span(6, attributes={"blob": "z" * 200_000})])
        sink.shutdown()
    assert list(result.failures) == [6]
    failure = result.failures[6]
    assert failure.permanent and "RESOURCE_EXHAUSTED" in failure.reason and "message size limit" in failure.reason
    assert sorted(s["spanId"] for s in fake.spans) == [f"{i + 1:016x}" for i in range(6)]


@pytest.mark.parametrize(("delay", "expected"), [(7, 7.0), (10**9, MAX_RETRY_AFTER)])
def test_a_retry_info_delay_is_the_wait_up_to_the_cap(grpc_fake: OtlpGrpcFake, delay: int, expected: float) -> None:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo waits its delay, held to the hour an HTTP Retry-After is
    held to (before: a delay of years parked the records, neither delivered nor dead-lettered)."""
    grpc_fake.fail_next(1, "RESOURCE_EXHAUSTED", "slow down", retry_delay=delay)
    sink = grpc_sink(grpc_fake.url)
    failure = sink.export([span(0)]).failures[0]
    sink.shutdown()
    assert not failure.permanent and failure.retry_after == expected


@pytest.mark.parametrize("path", ["/", "/v1/traces"])
def test_a_grpc_endpoint_written_with_a_path_dials_its_host_and_port(grpc_fake: OtlpGrpcFake, path: str) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://collector:4317/v1/traces with protocol grpc delivers to
    collector:4317, as the OpenTelemetry SDKs do (before: gRPC was asked to resolve "host:port/v1/traces", and
    every record was retried as UNAVAILABLE until the dead letter)."""
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": grpc_fake.url + path}
    sink = from_config("g", {}, env)
    result = sink.export([span(0)])
    sink.shutdown()
    assert result.ok and len(grpc_fake.spans) == 1


@pytest.mark.parametrize(("endpoint", "says"), [
    ("grpc://collector:4317", "no other scheme"),
    ("not a url", "no host"),
    ("http://collector:99999", "port"),
    ("http://ingest:hunter2-secret@collector:4317", "must not hold a user:password@"),
    ("ingest:hunter2-secret@collector:4317", "must not hold a user:password@"),  # a bare host:port too
])
def test_a_grpc_endpoint_grpc_cannot_dial_is_a_config_error(endpoint: str, says: str) -> None:
    """A gRPC endpoint with another scheme, no host, a bad port or a user:password@ (which gRPC never sends) is a
    ConfigError naming the variable, never quoting a password (before: accepted, then retried until the dead
    letter, or sent without the credentials)."""
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    with pytest.raises(ConfigError) as caught:
        from_config("g", {}, env)
    message = str(caught.value)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message and says in message and "hunter2" not in message


def test_a_binary_grpc_metadata_key_is_a_config_error() -> None:
    """A header named ``…-bin`` for gRPC (a binary metadata key, which grpcio wants as bytes) is a ConfigError
    naming the setting (before: accepted, then every export raised TypeError, retried until the dead letter)."""
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_HEADERS": "x-token-bin=abc"}
    with pytest.raises(ConfigError) as caught:
        from_config("g", {}, env)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(caught.value) and "-bin" in str(caught.value)


def test_a_shutdown_during_a_hung_export_leaves_its_records_retryable(grpc_fake: OtlpGrpcFake) -> None:
    """Stopping the sink while a gRPC export waits on a receiver that does not answer ends it as CANCELLED, a
    retryable failure (before: permanent, so a daemon stopped then sent that batch to the dead letter)."""
    grpc_fake.delay = 5
    sink = grpc_sink(grpc_fake.url, timeout=10)
    results: list[Any] = []
    exporting = threading.Thread(target=lambda: results.append(sink.export([span(0)])))
    exporting.start()
    time.sleep(0.5)
    sink.shutdown()
    exporting.join(timeout=10)
    failure = results[0].failures[0]
    assert not failure.permanent and "CANCELLED" in failure.reason


@pytest.mark.parametrize(("status", "permanent"), [(400, True), (503, False)])
def test_an_otlp_http_protobuf_status_answer_is_quoted_by_its_message(status: int, permanent: bool) -> None:
    """A failure answered, as OTLP/HTTP specifies, with a protobuf google.rpc.Status quotes its message, the key
    masked (before: the raw bytes, escaped: ``\\x08\\x03\\x12'span ...``)."""
    # google.rpc.Status {code = 1; message = 2; details = 3} written by hand: googleapis-common-protos is optional
    message = b"span 0000000000000001 refused for key sk-hostile-key-123456"
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"\x0a\x00").SerializeToString()
    body = b"\x08\x03\x12" + bytes([len(message)]) + message + b"\x1a" + bytes([len(detail)]) + detail
    with RawServer() as server:
        server.answer(reply(status, body, {"Content-Type": "application/x-protobuf"}))
        sink = from_config("o", {"endpoint": server.url, "headers": {"X-Api-Key": "sk-hostile-key-123456"}}, {})
        failure = sink.export([span(0)]).failures[0]
        sink.shutdown()
    assert failure.permanent is permanent
    assert failure.reason.endswith(": span 0000000000000001 refused for key ***"), failure.reason


def test_a_long_grpc_status_message_keeps_its_code(grpc_fake: OtlpGrpcFake) -> None:
    """An INVALID_ARGUMENT whose message is 100 KB (a receiver listing every bad span) stays INVALID_ARGUMENT,
    quoted in one short line, and its request is bisected (before: over gRPC's 16 KiB metadata limit it arrived
    as RESOURCE_EXHAUSTED, retried whole until every record of it was dead-lettered)."""
    long_message = "span refused; " * 7000
    grpc_fake.fail_next(1, "INVALID_ARGUMENT", long_message)
    sink = grpc_sink(grpc_fake.url)
    assert sink.export([span(0), span(1)]).ok  # the halves pass: the refusal was read as one
    grpc_fake.fail_next(1, "INVALID_ARGUMENT", long_message)
    failure = sink.export([span(2)]).failures[0]
    sink.shutdown()
    assert failure.permanent and "INVALID_ARGUMENT" in failure.reason and len(failure.reason) < 400
    assert len(grpc_fake.spans) == 2


def test_a_404_from_a_doubled_signal_path_says_how_to_write_the_endpoint() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT given with /v1/traces gets /v1/traces appended again, as the specification
    says; the receiver's 404 then says so and how to write it, in the dead letter's one line (before: only
    "rejected the request (404)")."""
    with OtlpFake() as fake:
        sink = from_config("o", {}, {"OTEL_EXPORTER_OTLP_ENDPOINT": fake.traces_url})
        failure = sink.export([span(0)]).failures[0]
        sink.shutdown()
    assert failure.permanent and "(404)" in failure.reason
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in failure.reason and "\n" not in failure.reason


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
@pytest.mark.parametrize(("change", "says"), [
    ({"attributes": ["a", "b"]}, "span attributes must be an object, got list"),
    ({"events": 7}, "span events must be a list, got int"),
    ({"events": ["boom"]}, "span events must be objects, got str"),
    ({"events": [{"timeUnixNano": T0, "attributes": "x=1"}]}, "span event attributes must be an object, got str"),
])
def test_a_misshapen_span_fails_alone_with_a_reason(protocol: str, change: dict[str, Any], says: str) -> None:
    """A span a custom mapping shaped wrongly (attributes or events not objects) fails alone and permanently with
    a one-line reason, its neighbours delivered (before: AttributeError or TypeError out of export, the whole
    batch retried until every record of it was dead-lettered)."""
    with OtlpFake() as fake:
        sink = from_config("o", {"endpoint": fake.url, "protocol": protocol}, {})
        bad = Payload("span", {**span(1).body, **change}, key="bad")
        result = sink.export([span(0), bad, span(2)])
        sink.shutdown()
    assert list(result.failures) == [1] and result.failures[1].permanent
    assert result.failures[1].reason == f"otlp: invalid span: {says}"
    assert [s["name"] for s in fake.spans] == ["span-0", "span-2"]


def test_a_span_that_is_not_an_object_fails_alone() -> None:
    """A ``span`` payload whose body is not an object is a RecordError, not an AttributeError."""
    sink = from_config("o", {}, {})
    with pytest.raises(RecordError, match="a span must be an object, got list"):
        sink.request_bodies([Payload("span", [1, 2])])  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_an_attribute_nested_too_deeply_fails_its_span_alone(protocol: str) -> None:
    """A list attribute nested thousands deep (a record's field copied into tag.tags) fails its span with a reason
    while the others are delivered (before: RecursionError out of export, the whole batch retried until every
    record of it was dead-lettered)."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    with OtlpFake() as fake:
        sink = from_config("o", {"endpoint": fake.url, "protocol": protocol}, {})
        result = sink.export([span(0), span(1, attributes={"tag.tags": ["workflow", deep]}), span(2)])
        sink.shutdown()
    assert list(result.failures) == [1] and result.failures[1].permanent
    assert result.failures[1].reason == "otlp: invalid span: a span attribute is nested too deeply to encode"
    assert [s["name"] for s in fake.spans] == ["span-0", "span-2"]
