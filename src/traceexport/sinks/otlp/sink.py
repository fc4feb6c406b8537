"""The OTLP sink: span payloads -> bounded ``ExportTraceServiceRequest`` batches -> one attempt each."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

import httpx
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from traceexport.errors import RecordError
from traceexport.sinks.base import BatchLimits, ExportResult, ItemFailure, Payload
from traceexport.sinks.otlp.config import OtlpSettings
from traceexport.sinks.otlp.transport import Transport, make_transport
from traceexport.sinks.otlp_encoding import (
    build_request,
    chunk,
    encode_resource,
    encode_span,
    to_json,
    wire_size,
)

_RESOURCE_OVERHEAD = 64  # ResourceSpans/ScopeSpans framing and the scope name, on top of the resource itself


def _version() -> str:
    try:
        return metadata.version("traceexport")
    except metadata.PackageNotFoundError:
        return ""


def encode_payload(payload: Payload) -> Span:
    """A ``span`` payload as a protobuf Span; raises RecordError for another kind or an invalid body."""
    if payload.kind != "span":
        raise RecordError(f"the OTLP sink only sends 'span' payloads, got {payload.kind!r}")
    return encode_span(payload.body)


class OtlpSink:
    """Exports OTLP span payloads over OTLP/HTTP (protobuf or JSON) or OTLP/gRPC.

    ``request_bodies`` and ``export`` split the batch the same way: at most ``max_spans`` spans and
    about ``max_bytes`` uncompressed bytes per request. Ids and timestamps come from the payloads.
    """

    def __init__(self, name: str, settings: OtlpSettings, *, backend: str = "otlp",
                 http_transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.backend = backend
        self.settings = settings
        self.limits = BatchLimits(max_items=settings.max_spans, max_bytes=settings.max_bytes,
                                  linger_seconds=settings.linger_seconds)
        self._json = settings.protocol == "http/json"
        self._resource = encode_resource(settings.resource_attributes)
        self._scope_version = _version()
        self._http_transport = http_transport
        self._transport: Transport | None = None
        self._closed = False

    def __repr__(self) -> str:  # never shows headers (they may hold credentials)
        return (f"OtlpSink(name={self.name!r}, endpoint={self.settings.endpoint!r}, "
                f"protocol={self.settings.protocol!r})")

    # -- pure ------------------------------------------------------------------------------------
    def _groups(self, spans: Sequence[Span]) -> list[list[int]]:
        sizes = [wire_size(span, json_body=self._json) for span in spans]
        overhead = self._resource.ByteSize() + _RESOURCE_OVERHEAD
        return chunk(sizes, max_items=self.settings.max_spans, max_bytes=self.settings.max_bytes,
                     overhead=overhead)

    def request_bodies(self, payloads: Sequence[Payload], /) -> list[Any]:
        """The OTLP/JSON form of each request of this batch (what ``traceexport map --to otlp`` prints)."""
        spans = []
        for index, payload in enumerate(payloads):
            try:
                spans.append(encode_payload(payload))
            except RecordError as exc:
                raise RecordError(f"payload {index}: {exc.reason}") from exc
        return [to_json(build_request([spans[i] for i in group], self._resource, self._scope_version))
                for group in self._groups(spans)]

    # -- delivery --------------------------------------------------------------------------------
    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        """Send the batch (possibly as several requests) once; classify every payload's outcome."""
        result = ExportResult()
        encoded: list[tuple[int, Span]] = []
        for index, payload in enumerate(payloads):
            try:
                encoded.append((index, encode_payload(payload)))
            except RecordError as exc:
                reason = f"{self.backend}: invalid span: {exc.reason}"
                result.failures[index] = ItemFailure(reason, permanent=True)
        blocked: ItemFailure | None = None  # once the receiver is down, the rest of the batch waits too
        for group in self._groups([span for _, span in encoded]):
            indexes = [encoded[i][0] for i in group]
            failure = blocked or self._oversize(group, encoded)
            if failure is None:
                failure = self._send_group([encoded[i][1] for i in group], result)
                if failure is not None and not failure.permanent:
                    blocked = failure
            if failure is not None:
                result.failures.update(dict.fromkeys(indexes, failure))
        return result

    def _oversize(self, group: list[int], encoded: list[tuple[int, Span]]) -> ItemFailure | None:
        if len(group) != 1:
            return None
        size = wire_size(encoded[group[0]][1], json_body=self._json)
        if size + self._resource.ByteSize() + _RESOURCE_OVERHEAD <= self.settings.max_bytes:
            return None
        return ItemFailure(f"{self.backend}: span is {size} bytes, over max_bytes={self.settings.max_bytes}",
                           permanent=True)

    def _send_group(self, spans: list[Span], result: ExportResult) -> ItemFailure | None:
        outcome = self._client().send(build_request(spans, self._resource, self._scope_version))
        if outcome.failure is None and (outcome.rejected > 0 or outcome.message):
            result.warnings.append(
                f"{self.name}: {self.backend} rejected {outcome.rejected} of {len(spans)} spans"
                + (f": {outcome.message}" if outcome.message else ""))
        return outcome.failure

    def _client(self) -> Transport:
        if self._closed:
            raise RuntimeError(f"sink {self.name!r} is shut down")
        if self._transport is None:
            self._transport = make_transport(self.settings, self.backend, self._http_transport)
        return self._transport

    def shutdown(self, timeout: float = 30.0) -> None:
        """Close connections; idempotent. Nothing is buffered here, so there is nothing to flush."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None
