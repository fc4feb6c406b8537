"""A fake OTLP receiver: ``POST /v1/traces`` (OTLP/HTTP protobuf or JSON) and, optionally, OTLP/gRPC.

It decodes every ``ExportTraceServiceRequest`` like a Collector would and records each span as a plain
dict (:func:`span_dict`) with its resource attributes, so tests assert on what went over the wire:

* content type ``application/x-protobuf`` or ``application/json`` (else 415), ``Content-Encoding: gzip``
  accepted, an undecodable body -> 400;
* the answer is an ``ExportTraceServiceResponse`` in the request's encoding, carrying a
  ``partial_success`` when :meth:`OtlpFake.reject_spans` asked for one;
* :meth:`OtlpFake.refuse_spans` marks spans (by an attribute's prefix) the receiver will not take: the
  whole request is refused with 400 (gRPC ``INVALID_ARGUMENT``) and nothing of it stored, or, with
  ``partial=True``, only those spans are dropped and counted in a ``partial_success``;
* faults (503 for N requests, 429 with ``Retry-After``, dropped connections) come from the base class.

Run out of process: ``python -m tests.fakes.otlp_server --port 0 [--reject-spans N --reject-message M]``.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterable, Mapping
from concurrent import futures
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.fakes._server import FakeServer, RecordedRequest, Response, run_main
from traceexport.sinks.otlp_encoding import from_wire

TRACES_PATH = "/v1/traces"
KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(value: Any) -> Any:
    """A protobuf ``AnyValue`` as a plain Python value."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return None if which is None else getattr(value, which)


def attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    """A KeyValue list as a dict."""
    return {kv.key: any_value(kv.value) for kv in key_values}


def span_dict(span: Any, resource: Mapping[str, Any], scope: str = "") -> dict[str, Any]:
    """One received span in the sink's payload shape, plus ``resource`` and ``scope``."""
    return {
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "parentSpanId": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": KIND_NAMES.get(span.kind, str(span.kind)),
        "startTimeUnixNano": span.start_time_unix_nano,
        "endTimeUnixNano": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "status": {"code": STATUS_NAMES.get(span.status.code, str(span.status.code)),
                   "message": span.status.message},
        "events": [{"name": e.name, "timeUnixNano": e.time_unix_nano, "attributes": attributes(e.attributes)}
                   for e in span.events],
        "resource": dict(resource),
        "scope": scope,
    }


def request_spans(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Every span of a decoded request, flattened across resources and scopes."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            spans.extend(span_dict(s, resource, scope_spans.scope.name) for s in scope_spans.spans)
    return spans


def export_response(rejected: int, message: str, *, as_json: bool) -> Response:
    """A 200 ``ExportTraceServiceResponse`` (with a partial success when ``rejected`` or ``message``)."""
    answer = ExportTraceServiceResponse()
    if rejected or message:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = message
    if as_json:
        return Response(200, json_format.MessageToDict(answer))
    return Response(200, answer.SerializeToString(), {"Content-Type": "application/x-protobuf"})


class Refused(Exception):
    """The request holds a span the receiver refuses: nothing of it was stored."""


class _Spans:
    """Thread-safe span store with a partial-success plan, shared by the HTTP and gRPC fakes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.rejection: tuple[int, str] = (0, "")
        self.refusal: tuple[str, str, bool] | None = None  # (attribute, prefix, partial)
        self._spans_lock = threading.Lock()

    def record(self, request: ExportTraceServiceRequest) -> tuple[int, str]:
        spans = request_spans(request)
        rejected, message = self.rejection
        if self.refusal is not None:
            attribute, prefix, partial = self.refusal
            bad = [s for s in spans if str(s["attributes"].get(attribute, "")).startswith(prefix)]
            if bad and not partial:
                raise Refused(f"span {bad[0]['spanId']} is invalid ({attribute} {prefix}...)")
            if bad:
                spans = [s for s in spans if s not in bad]
                rejected, message = len(bad), f"{len(bad)} spans dropped: {attribute} {prefix}..."
        with self._spans_lock:
            self.spans.extend(spans)
        return rejected, message

    def reject_spans(self, count: int, message: str = "") -> None:
        """Answer every later export with ``partial_success{rejected_spans=count, error_message=message}``."""
        self.rejection = (count, message)

    def refuse_spans(self, attribute: str, prefix: str, *, partial: bool = False) -> None:
        """Refuse spans whose ``attribute`` starts with ``prefix``: their whole request (400), or with
        ``partial`` only them (stored: the others; answered: a partial_success counting them)."""
        self.refusal = (attribute, prefix, partial)

    def spans_named(self, name: str) -> list[dict[str, Any]]:
        """Recorded spans called ``name``."""
        with self._spans_lock:
            return [s for s in self.spans if s["name"] == name]


class OtlpFake(FakeServer, _Spans):
    """OTLP/HTTP receiver on 127.0.0.1 recording decoded spans in :attr:`spans`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        FakeServer.__init__(self, host, port)
        _Spans.__init__(self)

    @property
    def traces_url(self) -> str:
        """The full ``/v1/traces`` URL (for ``traces_endpoint``)."""
        return self.url + TRACES_PATH

    def handle(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path.split("?", 1)[0] != TRACES_PATH:
            return Response(404, {"error": f"no route for {request.method} {request.path}"})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/x-protobuf", "application/json"):
            return Response(415, {"error": f"unsupported content type {content_type!r}"})
        try:
            decoded = from_wire(request.body, content_type, request.headers.get("content-encoding", ""))
        except (ValueError, OSError) as exc:
            return Response(400, {"error": f"cannot decode ExportTraceServiceRequest: {exc}"})
        try:
            rejected, message = self.record(decoded)
        except Refused as exc:
            return Response(400, {"code": 3, "message": str(exc)})
        return export_response(rejected, message, as_json=content_type == "application/json")

    def state(self) -> dict[str, Any]:
        return {"spans": self.spans}

    def reset_state(self) -> None:
        self.spans.clear()
        self.rejection = (0, "")
        self.refusal = None


class OtlpGrpcFake(_Spans):
    """OTLP/gRPC receiver (``TraceService/Export``) on 127.0.0.1, with a fail-next-N status plan; with
    ``max_receive_bytes`` it refuses larger requests as a real server does (gRPC's own RESOURCE_EXHAUSTED);
    with ``tls`` (PEM key, certificate, and the CA client certificates must chain to, or None) it serves TLS
    (mutual TLS with a CA) at an ``https://`` url."""

    def __init__(self, max_receive_bytes: int | None = None,
                 tls: tuple[bytes, bytes, bytes | None] | None = None) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        super().__init__()
        self.metadata: list[dict[str, str]] = []
        self._failures: list[tuple[Any, str, float | None]] = []
        self.delay = 0.0  # seconds each export stalls before answering (a hung receiver)
        self._stopped = threading.Event()
        fake = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                fake.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
                if fake.delay:
                    fake._stopped.wait(fake.delay)
                if fake._failures:
                    code, details, retry_delay = fake._failures.pop(0)
                    if retry_delay is not None:
                        context.set_trailing_metadata([("grpc-status-details-bin", _retry_info(retry_delay))])
                    context.abort(code, details)
                try:
                    rejected, message = fake.record(request)
                except Refused as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                answer = ExportTraceServiceResponse()
                answer.partial_success.rejected_spans = rejected
                answer.partial_success.error_message = message
                return answer

        options = [] if max_receive_bytes is None else [("grpc.max_receive_message_length", max_receive_bytes)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        if tls is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
            self.url = f"http://127.0.0.1:{self.port}"
        else:
            key, cert, client_ca = tls
            credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                      require_client_auth=client_ca is not None)
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
            self.url = f"https://127.0.0.1:{self.port}"

    def fail_next(self, count: int, code_name: str, details: str = "injected", *,
                  retry_delay: float | None = None) -> None:
        """The next ``count`` exports end with gRPC status ``code_name`` (e.g. ``UNAVAILABLE``), with a
        ``google.rpc.RetryInfo`` of ``retry_delay`` seconds in the status details when given."""
        import grpc

        self._failures.extend([(grpc.StatusCode[code_name], details, retry_delay)] * count)

    def __enter__(self) -> OtlpGrpcFake:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._server.stop(grace=None)


def _retry_info(seconds: float) -> bytes:
    """A serialized ``google.rpc.Status`` carrying a ``RetryInfo`` of ``seconds`` (its trailer's value)."""
    from google.rpc import error_details_pb2, status_pb2

    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = int(seconds)
    status = status_pb2.Status(code=8, message="throttled")
    status.details.add().Pack(info)
    return bytes(status.SerializeToString())


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reject-spans", type=int, default=0, help="report this many spans rejected")
    parser.add_argument("--reject-message", default="", help="partial_success.error_message to report")


def _build(args: argparse.Namespace) -> OtlpFake:
    fake = OtlpFake(host=args.host, port=args.port)
    fake.reject_spans(args.reject_spans, args.reject_message)
    return fake


def main(argv: list[str] | None = None) -> int:
    """Run the fake until SIGTERM, printing its base URL first."""
    return run_main(_build, argv, _configure)


if __name__ == "__main__":
    raise SystemExit(main())

