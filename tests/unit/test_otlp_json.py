"""The hand-written OTLP/JSON encoder gives what protobuf's json_format made of the protobuf request before."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tests.conftest import SAMPLE_FILES, TESTS

from traceexport.errors import RecordError
from traceexport.mapping import load_mapping
from traceexport.records import Record, parse_records
from traceexport.sinks import Payload
from traceexport.sinks.otlp import OtlpSink
from traceexport.sinks.otlp.config import OtlpSettings
from traceexport.sinks.otlp_json import request_json, resource_json, scope_json, span_json
from traceexport.sinks.otlp_wire import request_bytes, resource_bytes, scope_bytes, span_bytes

CASES = sorted((TESTS / "golden" / "cases").glob("*.json"))
RESOURCE = {"service.name": "dify", "deployment.environment": "test", "replicas": 3, "ratio": 0.5, "on": True}
T0 = 1_700_000_000_000_000_000


def _reference(request: bytes) -> dict[str, Any]:
    """What traceexport printed before: json_format's dict of the protobuf request, ids turned back into hex."""
    data: dict[str, Any] = json_format.MessageToDict(ExportTraceServiceRequest.FromString(request),
                                                     use_integers_for_enums=True)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if isinstance(span.get(field), str):
                        span[field] = base64.b64decode(span[field]).hex()
    return data


def _both(bodies: list[dict[str, Any]], resource: dict[str, Any], version: str = "0.1.0") -> tuple[Any, Any]:
    """(json_format's form, the direct encoder's form, parsed) of one request holding these span dicts."""
    old = _reference(request_bytes([span_bytes(b) for b in bodies], resource_bytes(resource),
                                   scope_bytes("traceexport", version)))
    new = json.loads(request_json([span_json(b) for b in bodies], resource_json(resource),
                                  scope_json("traceexport", version)))
    return old, new


def _spans(backend: str, files: list[Path]) -> list[dict[str, Any]]:
    mapping = load_mapping(backend)
    bodies = []
    for path in files:
        for item in parse_records(path.read_bytes(), path.name):
            if isinstance(item, Record):
                bodies += [p.body for p in mapping.map(item)]
    return bodies


@pytest.mark.parametrize("backend", ["otlp", "langfuse"])
@pytest.mark.parametrize("path", CASES + SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_golden_case_and_sample_encodes_as_json_format_did(backend: str, path: Path) -> None:
    """Each golden case's and sample's spans give, parsed, exactly the OTLP/JSON json_format produced."""
    bodies = _spans(backend, [path])
    old, new = _both(bodies, RESOURCE)
    assert new == old


def test_the_whole_sample_batch_encodes_as_json_format_did() -> None:
    """All the cases' spans in one request, with the resource the otlp sink sends, match as well."""
    bodies = _spans("otlp", CASES + SAMPLE_FILES)
    assert len(bodies) > 20
    old, new = _both(bodies, {"service.name": "dify"}, version="")
    assert new == old


EDGE_ATTRIBUTES: dict[str, Any] = {
    "text": "héllo 世界 😀 \"quoted\" \\ \n\t\x01",
    "empty": "",
    "int": 42,
    "zero": 0,
    "negative": -7,
    "int64.max": 2**63 - 1,
    "int64.min": -(2**63),
    "too.big": 2**63,
    "too.small": -(2**63) - 1,
    "float": 0.1,
    "float.zero": 0.0,
    "float.negative.zero": -0.0,
    "float.tiny": 1e-300,
    "float.huge": 1.7976931348623157e308,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "true": True,
    "false": False,
    "bytes": b"\x00\xffbytes",
    "list": ["a", 1, 2.5, True, None, ["nested", None], {"k": "v"}, []],
    "empty.list": [],
    "only.nulls": [None, None],
    "tuple": ("x", "y"),
    "dict": {"b": 1, "a": [1, 2], "c": {"d": None}, "t": datetime(2024, 1, 2, tzinfo=UTC)},
    "empty.dict": {},
    "datetime": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    "none": None,
    "": "the empty key",
    7: "an int key",
}


def _edge_span(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "traceId": "0AF7651916CD43DD8448EB211C80319C", "spanId": "00F067AA0BA902B7",
        "parentSpanId": "00000000000000aa", "name": "edge", "kind": "SPAN_KIND_SERVER",
        "startTimeUnixNano": str(T0), "endTimeUnixNano": T0 + 1, "attributes": EDGE_ATTRIBUTES,
        "events": [{"name": "exception", "timeUnixNano": T0, "attributes": {"exception.message": "boom", "n": 1}},
                   {"name": "", "timeUnixNano": str(T0 + 1), "attributes": {}},
                   {"timeUnixNano": T0 + 1}],
        "status": {"code": "STATUS_CODE_ERROR", "message": "failed: ü"},
    }
    body.update(change)
    return body


@pytest.mark.parametrize("change", [
    {},
    {"parentSpanId": ""},
    {"parentSpanId": None},
    {"kind": "UNSPECIFIED"},
    {"kind": 3},
    {"kind": None},
    {"kind": "client"},
    {"name": ""},
    {"name": None},
    {"name": 12},
    {"attributes": {}},
    {"attributes": None},
    {"events": []},
    {"status": None},
    {"status": {}},
    {"status": {"code": "OK"}},
    {"status": {"code": 0, "message": ""}},
    {"startTimeUnixNano": 1, "endTimeUnixNano": 2**64 - 1},
], ids=repr)
def test_edge_values_encode_as_json_format_did(change: dict[str, Any]) -> None:
    """Every kind of attribute value, empty keys and fields, upper-case ids, enums and events match."""
    old, new = _both([_edge_span(**change)], {**RESOURCE, "": "x", "list": [1, "a"]})
    assert new == old


@pytest.mark.parametrize("change", [
    {"traceId": "not-hex"},
    {"traceId": "00000000000000000000000000000000"},
    {"spanId": "00f067aa0ba902"},
    {"spanId": None},
    {"parentSpanId": "zz"},
    {"startTimeUnixNano": 0},
    {"startTimeUnixNano": True},
    {"endTimeUnixNano": "soon"},
    {"endTimeUnixNano": T0 - 1},
    {"kind": "SIDEWAYS"},
    {"kind": 9},
    {"status": "ok"},
    {"status": {"code": "MAYBE"}},
    {"events": [{"name": "e"}]},
], ids=repr)
def test_invalid_spans_are_refused_with_the_protobuf_encoders_reason(change: dict[str, Any]) -> None:
    """A span the protobuf encoder refuses is refused by the JSON encoder with the same reason."""
    body = _edge_span(**change)
    with pytest.raises(RecordError) as wire:
        span_bytes(body)
    with pytest.raises(RecordError) as text:
        span_json(body)
    assert text.value.reason == wire.value.reason


def test_a_lone_surrogate_is_a_record_error() -> None:
    """Text with no UTF-8 form is refused with a one-line reason, not an exception from the serializer."""
    with pytest.raises(RecordError, match="lone surrogate"):
        span_json(_edge_span(attributes={"bad": "a\ud800b"}))


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_request_bodies_match_json_format_and_keep_the_split(protocol: str) -> None:
    """A sink's request_bodies equal json_format's form of the same requests, split by span count as before."""
    bodies = _spans("otlp", CASES + SAMPLE_FILES)
    sink = OtlpSink("otlp", OtlpSettings(endpoint="http://127.0.0.1:9/v1/traces", protocol=protocol, max_spans=7))
    shown = sink.request_bodies([Payload("span", body) for body in bodies])
    groups = [bodies[i:i + 7] for i in range(0, len(bodies), 7)]
    assert shown == [_both(group, {"service.name": "dify"}, version=_version(sink))[0]
                     for group in groups]


def _version(sink: OtlpSink) -> str:
    return str(json.loads(sink._scope_json).get("version", ""))


def test_http_json_requests_stay_within_max_bytes_of_json_text() -> None:
    """With http/json a request is sized by its OTLP/JSON text: every body fits max_bytes, no span is lost."""
    bodies = _spans("otlp", CASES + SAMPLE_FILES)
    sink = OtlpSink("otlp", OtlpSettings(endpoint="http://127.0.0.1:9/v1/traces", protocol="http/json",
                                         max_bytes=16 * 1024))
    shown = sink.request_bodies([Payload("span", body) for body in bodies if len(json.dumps(body)) < 8 * 1024])
    assert len(shown) > 3
    assert all(len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()) <= 16 * 1024
               for body in shown)
    spans = [s for body in shown for s in body["resourceSpans"][0]["scopeSpans"][0]["spans"]]
    assert len(spans) == sum(1 for body in bodies if len(json.dumps(body)) < 8 * 1024)
