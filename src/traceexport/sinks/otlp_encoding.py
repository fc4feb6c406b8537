"""OTLP span dicts -> ``ExportTraceServiceRequest`` (protobuf) and its OTLP/JSON form. Pure, no I/O.

A span dict is what the ``otlp`` and ``langfuse`` mappings produce (see ARCHITECTURE.md): hex ``traceId``
/ ``spanId`` / ``parentSpanId``, ``name``, ``kind``, ``startTimeUnixNano`` / ``endTimeUnixNano``, a flat
``attributes`` dict and ``status``. Ids and times are copied as given: nothing here invents an id or
reads the clock. Dict attribute values are JSON-encoded to a string; ``None`` values are dropped.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]  # no stubs in the test extra
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from traceexport.errors import RecordError

SCOPE_NAME = "traceexport"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_INT64 = (-(2**63), 2**63 - 1)
_KINDS = {"UNSPECIFIED": 0, "INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
_STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_PER_SPAN_OVERHEAD = 8  # field tag + length prefix of one span inside ScopeSpans (protobuf), or ",\n" (JSON)


def any_value(value: Any) -> AnyValue | None:
    """One attribute value as an ``AnyValue``; dicts become JSON strings, ``None`` gives None (dropped)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list | tuple):
        result = AnyValue()
        items = [v for v in (any_value(item) for item in value) if v is not None]
        result.array_value.values.extend(items)
        return result
    if isinstance(value, Mapping):
        return AnyValue(string_value=json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))
    return AnyValue(string_value=str(value))


def key_values(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    """A flat attribute dict as a KeyValue list, in the dict's order, without ``None`` values."""
    result = []
    for key, value in (attributes or {}).items():
        encoded = any_value(value)
        if encoded is not None:
            result.append(KeyValue(key=str(key), value=encoded))
    return result


def _hex_id(body: Mapping[str, Any], field: str, digits: int, *, required: bool) -> bytes:
    value = body.get(field)
    if value in (None, "") and not required:
        return b""
    if not isinstance(value, str) or len(value) != digits:
        raise RecordError(f"span {field} must be {digits} hex digits, got {value!r}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise RecordError(f"span {field} must be {digits} hex digits, got {value!r}") from None
    if not any(raw):
        raise RecordError(f"span {field} must not be all zeros")
    return raw


def _enum(value: Any, table: Mapping[str, int], prefix: str, field: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        return value
    if isinstance(value, str):
        name = value.upper().removeprefix(prefix)
        if name in table:
            return table[name]
    raise RecordError(f"span {field} {value!r} is not one of {', '.join(table)}")


def _nanos(body: Mapping[str, Any], field: str) -> int:
    value = body.get(field)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**64:
        raise RecordError(f"span {field} must be a positive integer (nanoseconds), got {value!r}")
    return value


def encode_span(body: Mapping[str, Any]) -> Span:
    """One OTLP span dict as a protobuf ``Span``; raises :class:`RecordError` for an invalid dict."""
    status = body.get("status") or {}
    if not isinstance(status, Mapping):
        raise RecordError(f"span status must be an object, got {status!r}")
    start, end = _nanos(body, "startTimeUnixNano"), _nanos(body, "endTimeUnixNano")
    if end < start:
        raise RecordError("span endTimeUnixNano is before startTimeUnixNano")
    span = Span(
        trace_id=_hex_id(body, "traceId", 32, required=True),
        span_id=_hex_id(body, "spanId", 16, required=True),
        parent_span_id=_hex_id(body, "parentSpanId", 16, required=False),
        name=str(body.get("name") or "span"),
        kind=_enum(body.get("kind"), _KINDS, "SPAN_KIND_", "kind", default=1),  # type: ignore[arg-type]
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=key_values(body.get("attributes")),
        status=Status(code=_enum(status.get("code"), _STATUS, "STATUS_CODE_", "status.code", default=0),  # type: ignore[arg-type]
                      message=str(status.get("message") or "")),
    )
    for event in body.get("events") or ():
        span.events.add(name=str(event.get("name", "event")), time_unix_nano=_nanos(event, "timeUnixNano"),
                        attributes=key_values(event.get("attributes")))
    return span


def encode_resource(attributes: Mapping[str, Any]) -> Resource:
    """The resource every exported span shares (``service.name``, ``openinference.project.name`` ...)."""
    return Resource(attributes=key_values(attributes))


def build_request(spans: Iterable[Span], resource: Resource,
                  scope_version: str = "") -> ExportTraceServiceRequest:
    """One ``ExportTraceServiceRequest``: a single ResourceSpans with a single ``traceexport`` scope."""
    scope = InstrumentationScope(name=SCOPE_NAME, version=scope_version)
    scope_spans = ScopeSpans(scope=scope, spans=list(spans))
    resource_spans = ResourceSpans(resource=resource, scope_spans=[scope_spans])
    return ExportTraceServiceRequest(resource_spans=[resource_spans])


def _hexify(obj: dict[str, Any]) -> None:
    for field in _ID_FIELDS:
        if isinstance(obj.get(field), str):
            obj[field] = base64.b64decode(obj[field]).hex()


def to_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The OTLP/JSON form: lowerCamelCase keys, enums as integers, ids as hex (not base64)."""
    data: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hexify(span)
                for link in span.get("links", ()):
                    _hexify(link)
    return data


def serialize(request: ExportTraceServiceRequest, *, json_body: bool,
              compress: bool) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and its content headers for ``request``."""
    if json_body:
        body = json.dumps(to_json(request), separators=(",", ":")).encode()
        headers = {"Content-Type": JSON}
    else:
        body = request.SerializeToString()
        headers = {"Content-Type": PROTOBUF}
    if compress:
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def wire_size(span: Span, *, json_body: bool) -> int:
    """Bytes one span adds to an uncompressed request body in the chosen encoding (an upper-ish bound)."""
    if json_body:
        scope_spans = ScopeSpans(spans=[span])
        wrapper = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[scope_spans])])
        return len(json.dumps(to_json(wrapper), separators=(",", ":"))) + _PER_SPAN_OVERHEAD
    return int(span.ByteSize()) + _PER_SPAN_OVERHEAD


def chunk(sizes: Sequence[int], *, max_items: int, max_bytes: int, overhead: int = 0) -> list[list[int]]:
    """Split item indexes, in order, into groups of at most ``max_items`` and ``max_bytes`` each.

    An item larger than ``max_bytes`` on its own still gets a group of its own: the caller decides.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    used = overhead
    for index, size in enumerate(sizes):
        if current and (len(current) >= max_items or used + size > max_bytes):
            groups.append(current)
            current, used = [], overhead
        current.append(index)
        used += size
    if current:
        groups.append(current)
    return groups


def decode_partial_success(content: bytes, content_type: str) -> tuple[int, str]:
    """``(rejected_spans, error_message)`` of an export response body; ``(0, "")`` if absent or unreadable."""
    if not content:
        return 0, ""
    try:
        if "json" in content_type.lower():
            data = json.loads(content)
            partial = data.get("partialSuccess") or data.get("partial_success") or {}
            rejected = int(partial.get("rejectedSpans") or partial.get("rejected_spans") or 0)
            return rejected, str(partial.get("errorMessage") or partial.get("error_message") or "")
        response = ExportTraceServiceResponse.FromString(content)
    except Exception:  # a receiver's odd success body must not turn a delivered batch into a failure
        return 0, ""
    return int(response.partial_success.rejected_spans), response.partial_success.error_message


def from_wire(body: bytes, content_type: str, content_encoding: str = "") -> ExportTraceServiceRequest:
    """Parse a request body as a receiver would (used by the test fakes); raises ValueError if invalid."""
    if content_encoding.lower() == "gzip":
        body = gzip.decompress(body)
    if "json" in content_type.lower():
        return parse_json_request(json.loads(body))
    try:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
    except Exception as exc:  # protobuf's DecodeError: report as ValueError to the caller
        raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from exc
    return request


def parse_json_request(data: Any) -> ExportTraceServiceRequest:
    """An OTLP/JSON body (hex ids) as a protobuf request; raises ValueError if it does not parse."""
    data = json.loads(json.dumps(data))  # private copy we may rewrite
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for field in _ID_FIELDS:
                    if isinstance(span.get(field), str):
                        span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return request
