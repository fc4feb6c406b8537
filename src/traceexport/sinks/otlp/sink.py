"""The OTLP sink: span payloads -> bounded ``ExportTraceServiceRequest`` batches -> one attempt each."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from traceexport.errors import RecordError
from traceexport.sinks.base import BatchLimits, ExportResult, ItemFailure, Payload
from traceexport.sinks.bisect import Budget, send_halves
from traceexport.sinks.otlp.config import OtlpSettings
from traceexport.sinks.otlp.transport import SendOutcome, Transport, make_transport
from traceexport.sinks.otlp_encoding import SCOPE_NAME, chunk, to_json
from traceexport.sinks.otlp_wire import request_bytes, resource_bytes, scope_bytes, span_bytes

_RESOURCE_OVERHEAD = 64  # ResourceSpans/ScopeSpans framing and the scope name, on top of the resource itself
_PER_SPAN_OVERHEAD = 8  # tag and length prefix of one span inside ScopeSpans
_JSON_FACTOR = 2  # OTLP/JSON (hex ids, key names, base-10 numbers) is at most about twice the protobuf size


def _version() -> str:
    try:
        return metadata.version("traceexport")
    except metadata.PackageNotFoundError:
        return ""


_Unit = list[tuple[int, bytes]]  # the (payload index, span bytes) of one record within one request


def _units(members: list[tuple[int, bytes]], payloads: Sequence[Payload]) -> list[_Unit]:
    """``members`` grouped by record (``Payload.record_ref``), in order; a payload without one stands alone."""
    by_record: dict[int, _Unit] = {}
    units: list[_Unit] = []
    for member in members:
        ref = payloads[member[0]].record_ref
        unit = by_record.get(ref) if ref >= 0 else None
        if unit is None:
            unit = []
            units.append(unit)
            if ref >= 0:
                by_record[ref] = unit
        unit.append(member)
    return units


def _fail(result: ExportResult, units: Sequence[_Unit], failure: ItemFailure) -> None:
    result.failures.update(dict.fromkeys((index for unit in units for index, _ in unit), failure))


def encode_payload(payload: Payload) -> bytes:
    """A ``span`` payload as serialized Span bytes; raises RecordError for another kind or an invalid body."""
    if payload.kind != "span":
        raise RecordError(f"the OTLP sink only sends 'span' payloads, got {payload.kind!r}")
    return span_bytes(payload.body)


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
        self._resource = resource_bytes(settings.resource_attributes)
        self._scope = scope_bytes(SCOPE_NAME, _version())
        self._http_transport = http_transport
        self._transport: Transport | None = None
        self._closed = False

    def __repr__(self) -> str:  # never shows headers (they may hold credentials)
        return (f"OtlpSink(name={self.name!r}, endpoint={self.settings.endpoint!r}, "
                f"protocol={self.settings.protocol!r})")

    # -- pure ------------------------------------------------------------------------------------
    def _size(self, span: bytes) -> int:
        """Bytes one span adds to an uncompressed request body in the chosen encoding (an upper-ish bound)."""
        return len(span) * (_JSON_FACTOR if self._json else 1) + _PER_SPAN_OVERHEAD

    def _groups(self, spans: Sequence[bytes]) -> list[list[int]]:
        overhead = len(self._resource) + len(self._scope) + _RESOURCE_OVERHEAD
        return chunk([self._size(span) for span in spans], max_items=self.settings.max_spans,
                     max_bytes=self.settings.max_bytes, overhead=overhead)

    def _request(self, spans: Sequence[bytes]) -> bytes:
        return request_bytes(spans, self._resource, self._scope)

    def request_bodies(self, payloads: Sequence[Payload], /) -> list[Any]:
        """The OTLP/JSON form of each request of this batch (what ``traceexport map --to otlp`` prints)."""
        spans = []
        for index, payload in enumerate(payloads):
            try:
                spans.append(encode_payload(payload))
            except RecordError as exc:
                raise RecordError(f"payload {index}: {exc.reason}") from exc
        return [to_json(ExportTraceServiceRequest.FromString(self._request([spans[i] for i in group])))
                for group in self._groups(spans)]

    # -- delivery --------------------------------------------------------------------------------
    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        """Send the batch (possibly as several requests) once; classify every payload's outcome.

        A request refused for its content (400) is bisected by record until the refused records stand
        alone; a ``partial_success`` that rejected spans fails its request's payloads permanently (the
        receiver does not say which spans it dropped, and OTLP forbids re-sending that request).
        """
        result = ExportResult()
        encoded: list[tuple[int, bytes]] = []
        for index, payload in enumerate(payloads):
            try:
                encoded.append((index, encode_payload(payload)))
            except RecordError as exc:
                reason = f"{self.backend}: invalid span: {exc.reason}"
                result.failures[index] = ItemFailure(reason, permanent=True)
        budget = Budget(self.settings.max_bisect_requests)
        blocked: ItemFailure | None = None  # once the receiver is down, the rest of the batch waits too
        for group in self._groups([span for _, span in encoded]):
            members = [encoded[i] for i in group]
            failure = blocked or self._oversize(members)
            if failure is not None:
                result.failures.update(dict.fromkeys((index for index, _ in members), failure))
                continue
            blocked = self._send(_units(members, payloads), result, budget)
        return result

    def _oversize(self, members: list[tuple[int, bytes]]) -> ItemFailure | None:
        if len(members) != 1:
            return None
        size = self._size(members[0][1])
        if size + len(self._resource) + len(self._scope) + _RESOURCE_OVERHEAD <= self.settings.max_bytes:
            return None
        return ItemFailure(f"{self.backend}: span is {size} bytes, over max_bytes={self.settings.max_bytes}",
                           permanent=True)

    def _send(self, units: Sequence[_Unit], result: ExportResult, budget: Budget) -> ItemFailure | None:
        """Post the spans of ``units`` as one request; returns a failure that blocks the receiver, else None."""
        indexes = [index for unit in units for index, _ in unit]
        outcome = self._client().send(self._request([span for unit in units for _, span in unit]), len(indexes))
        failure = outcome.failure
        if failure is None:
            self._partial_success(outcome, indexes, result)
            return None
        if failure.permanent and outcome.divisible and len(units) > 1:
            if budget.take(2):
                return send_halves(units, lambda half: self._send(half, result, budget),
                                   lambda rest, why: _fail(result, rest, why))
            failure = ItemFailure(f"{failure.reason}; the refused records among these {len(units)} were not "
                                  "isolated in this attempt (max_bisect_requests)", permanent=False,
                                  status_code=failure.status_code)
            result.failures.update(dict.fromkeys(indexes, failure))
            return None
        result.failures.update(dict.fromkeys(indexes, failure))
        return None if failure.permanent else failure

    def _partial_success(self, outcome: SendOutcome, indexes: list[int], result: ExportResult) -> None:
        """Make a ``partial_success`` visible: rejected spans fail their request's payloads, a note is a warning.

        The receiver says how many spans it dropped, never which, so every payload of the request goes to
        the dead letter with the counts; a replay re-sends the accepted spans too (receivers keyed by span
        id, such as Phoenix and Langfuse, keep one copy).
        """
        message = outcome.message or "no message"
        if outcome.rejected <= 0:
            if outcome.message:
                result.warnings.append(f"{self.backend} accepted all {len(indexes)} spans with a note: {message}")
            return
        total, rejected = len(indexes), min(outcome.rejected, len(indexes))
        if rejected == total:
            reason = f"{self.backend} rejected all {total} spans of this batch: {message}"
        else:
            reason = (f"{self.backend} accepted {total - rejected} and rejected {rejected} of the {total} spans "
                      f"of this batch without saying which: {message}")
        result.failures.update(dict.fromkeys(indexes, ItemFailure(reason, permanent=True)))
        result.warnings.append(f"{reason}; their records go to the dead letter")

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
