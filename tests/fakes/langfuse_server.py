"""A contract-checking fake of Langfuse's OTLP endpoint (../shared/contracts/README.md §2.3 and §6).

``POST /api/public/otel/v1/traces`` checks what the real server checks, in this order:

* HTTP Basic auth with the configured public/secret key -> 401 ``{"error":"UnauthorizedError",...}``;
* ``x-langfuse-ingestion-version`` greater than 4 -> 400;
* content type ``application/x-protobuf`` or ``application/json`` -> else 400 ``{"error":"Invalid content type"}``;
* the body parses (gzip accepted); in JSON, every ``attributes`` is a KeyValue list, not an object;
* every span has a valid, non-zero ``traceId`` (16 bytes) and ``spanId`` (8 bytes).

Any failure rejects the **whole** export with 400 ``{"error": ...}``; otherwise 200 ``{}`` and the spans are
recorded (:attr:`LangfuseFake.spans`). :attr:`LangfuseFake.ingestion_versions` keeps the header value of
every accepted request, so tests can assert the exporter sent ``4``. The deprecated
``/api/public/ingestion`` is not emulated (404) and requests to it are recorded, so tests can assert it was
never called.

Run out of process: ``python -m tests.fakes.langfuse_server --port 0 --public-key pk-lf-.. --secret-key sk-lf-..``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
from typing import Any

from tests.fakes._server import FakeServer, RecordedRequest, Response, run_main
from tests.fakes.otlp_server import request_spans
from traceexport.sinks.otlp_encoding import from_wire

OTEL_PATH = "/api/public/otel/v1/traces"
CONTENT_TYPES = ("application/x-protobuf", "application/json")


def json_shape_errors(data: Any) -> list[str]:
    """Problems the real server rejects in an OTLP/JSON body: attribute objects instead of KeyValue lists."""
    if not isinstance(data, dict):
        return ["body must be a JSON object"]
    errors = []
    for rs in data.get("resourceSpans") or []:
        if not isinstance((rs.get("resource") or {}).get("attributes", []), list):
            errors.append("resource.attributes must be a list of KeyValue")
        for ss in rs.get("scopeSpans") or []:
            for span in ss.get("spans") or []:
                if not isinstance(span.get("attributes", []), list):
                    errors.append(f"span {span.get('name')!r}: attributes must be a list of KeyValue")
    return errors


def id_errors(spans: list[dict[str, Any]]) -> list[str]:
    """Spans without a valid non-zero traceId (32 hex) or spanId (16 hex)."""
    errors = []
    for span in spans:
        for field, digits in (("traceId", 32), ("spanId", 16)):
            value = span[field]
            if len(value) != digits or not int(value or "0", 16):
                errors.append(f"span {span['name']!r} has an invalid {field} {value!r}")
    return errors


class LangfuseFake(FakeServer):
    """Langfuse's OTLP ingestion endpoint, checking auth, headers and span ids."""

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self.expected_auth = f"Basic {token}"
        self.spans: list[dict[str, Any]] = []
        self.ingestion_versions: list[str | None] = []

    def handle(self, request: RecordedRequest) -> Response:
        if request.path.split("?", 1)[0] != OTEL_PATH:
            return Response(404, {"error": f"not emulated: {request.method} {request.path}"})
        if request.method != "POST":
            return Response(405, {"error": "Method not allowed"})
        if request.headers.get("authorization") != self.expected_auth:
            return Response(401, {"error": "UnauthorizedError", "message": "Invalid credentials"})
        version = request.headers.get("x-langfuse-ingestion-version")
        if version is not None and (not version.isdigit() or int(version) > 4):
            return Response(400, {"error": f"Unsupported x-langfuse-ingestion-version {version!r}"})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            return Response(400, {"error": "Invalid content type"})
        errors, spans = self._decode(request, content_type)
        if errors:
            return Response(400, {"error": "; ".join(errors)})
        with self._lock:
            self.spans.extend(spans)
            self.ingestion_versions.append(version)
        return Response(200, {})

    @staticmethod
    def _decode(request: RecordedRequest, content_type: str) -> tuple[list[str], list[dict[str, Any]]]:
        encoding = request.headers.get("content-encoding", "")
        try:
            if content_type == "application/json":
                raw = gzip.decompress(request.body) if encoding == "gzip" else request.body
                shape = json_shape_errors(json.loads(raw))
                if shape:
                    return shape, []
            spans = request_spans(from_wire(request.body, content_type, encoding))
        except (ValueError, OSError) as exc:
            return [f"Failed to parse OTLP payload: {exc}"], []
        return id_errors(spans), spans

    def state(self) -> dict[str, Any]:
        return {"spans": self.spans, "ingestion_versions": self.ingestion_versions}

    def reset_state(self) -> None:
        self.spans.clear()
        self.ingestion_versions.clear()


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--public-key", default="pk-lf-test")
    parser.add_argument("--secret-key", default="sk-lf-test")


def main(argv: list[str] | None = None) -> int:
    """Run the fake until SIGTERM, printing its base URL first."""
    return run_main(lambda a: LangfuseFake(a.public_key, a.secret_key, host=a.host, port=a.port), argv, _configure)


if __name__ == "__main__":
    raise SystemExit(main())
