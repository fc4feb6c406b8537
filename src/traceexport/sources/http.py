"""HTTP ingest: ``POST /v1/dify/traces`` puts Dify trace records into the spool; health, readiness, metrics.

The body is a TaskData envelope, a bare TraceInfo (type in ``trace_info_type`` or ``?type=``), a JSON
array of those, or NDJSON. ``202 {"accepted": n}`` is sent only after ``accept`` returned, i.e. the
records are durable. Bad records are listed with a one-line reason while the good ones of the same
request are still accepted (then the status is 400). Built on the standard library's
``ThreadingHTTPServer``: no extra dependency, one thread per connection.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from traceexport import _json
from traceexport.errors import RecordError, RecordTooLargeError, SpoolFullError
from traceexport.logs import log_event
from traceexport.records import Record, record_from_obj, record_from_trace_info

log = logging.getLogger("traceexport.sources.http")

INGEST_PATH = "/v1/dify/traces"
JSON_TYPES = frozenset({"application/json", ""})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/json-lines"})
MAX_REJECTIONS_LISTED = 100
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

AcceptFn = Callable[[list[Record]], None]


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Where to listen and what to allow."""

    host: str = "127.0.0.1"
    port: int = 4319
    token: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_grace: float = 10.0


def parse_body(body: bytes, content_type: str, type_name: str | None = None,
               app_id: str | None = None) -> tuple[list[Record], list[dict[str, Any]]]:
    """The records of a request body and the rejections (``{"index"|"line": n, "reason": ...}``)."""
    # (where, value, the value's own JSON text when it has one: an envelope is stored as received)
    items: list[tuple[dict[str, int], Any, str | None]] = []
    if content_type in NDJSON_TYPES:
        text = body.decode("utf-8-sig", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append(({"line": number}, _json.loads(line), line))
                except ValueError as exc:
                    items.append(({"line": number}, RecordError(f"not valid JSON: {exc}"), None))
    else:
        try:
            text = body.decode("utf-8-sig")
            value = _json.loads(text)
        except UnicodeDecodeError as exc:
            return [], [{"index": 0, "reason": f"body is not UTF-8 ({exc.reason} at byte {exc.start})"}]
        except ValueError as exc:
            return [], [{"index": 0, "reason": f"body is not valid JSON: {exc}"}]
        if isinstance(value, list):
            items = [({"index": i}, v, None) for i, v in enumerate(value)]
        else:
            items = [({"index": 0}, value, text)]
    records: list[Record] = []
    rejected: list[dict[str, Any]] = []
    for where, value, raw in items:
        try:
            records.append(_record(value, type_name, app_id, raw))
        except RecordError as exc:
            rejected.append({**where, "reason": exc.reason})
        except Exception as exc:  # a parser bug must cost one record, not the request
            rejected.append({**where, "reason": f"could not read this record ({type(exc).__name__})"})
    return records, rejected


def _record(value: Any, type_name: str | None, app_id: str | None, raw: str | None) -> Record:
    if isinstance(value, RecordError):
        raise value
    if app_id and isinstance(value, dict) and "trace_info" not in value:
        return record_from_trace_info(value, type_name, app_id)
    return record_from_obj(value, type_name, raw=raw)


class IngestServer:
    """The HTTP source: start it, point Dify's hook at it, stop it with a bounded grace period."""

    def __init__(self, settings: IngestSettings, accept: AcceptFn, *,
                 ready: Callable[[], str | None] = lambda: None,
                 metrics_text: Callable[[], str] = lambda: "") -> None:
        self.settings = settings
        self.accept = accept
        self.ready = ready
        self.metrics_text = metrics_text
        self.draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._server = _Server((settings.host, settings.port), _Handler)
        self._server.ingest = self

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="traceexport-http", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new posts (503), wait up to ``timeout`` for in-flight ones, close; True if none was cut."""
        self.draining = True
        grace = self.settings.shutdown_grace if timeout is None else timeout
        with self._idle:
            finished = self._idle.wait_for(lambda: self._in_flight == 0, timeout=grace)
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        return finished

    def enter(self) -> None:
        """A request started (used to let in-flight requests finish on shutdown)."""
        with self._idle:
            self._in_flight += 1

    def leave(self) -> None:
        """A request finished."""
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ingest: IngestServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log_event(log, "http.connection_error", logging.WARNING, client=str(client_address[0]))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "traceexport"
    timeout = 30  # seconds a client may stall mid-request
    server: _Server

    def version_string(self) -> str:
        """The Server header: no Python version on the wire."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request access lines: logs carry events, not traffic."""

    # -- responses -------------------------------------------------------------------------------
    def _send(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        is_text = isinstance(body, str)
        data = (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", PROMETHEUS_TYPE if is_text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers)

    # -- GET -------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        """Health, readiness and metrics."""
        ingest = self.server.ingest
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, {"status": "ok"})
        elif path == "/readyz":
            reason = "shutting down" if ingest.draining else ingest.ready()
            self._send(503 if reason else 200, {"status": "not ready", "reason": reason} if reason
                       else {"status": "ready"})
        elif path == "/metrics":
            self._send(200, ingest.metrics_text())
        elif path == INGEST_PATH:
            self._error(405, f"use POST {INGEST_PATH}", {"Allow": "POST"})
        else:
            self._error(404, f"no such endpoint; post records to {INGEST_PATH}")

    do_HEAD = do_GET

    # -- POST ------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        """Ingest records; every outcome is a JSON answer, never a traceback."""
        ingest = self.server.ingest
        ingest.enter()
        try:
            self._ingest(ingest)
        except Exception as exc:
            log_event(log, "http.internal_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            self.close_connection = True
            self._error(500, "internal error; the daemon log has details")
        finally:
            ingest.leave()

    def _ingest(self, ingest: IngestServer) -> None:
        url = urlsplit(self.path)
        if url.path != INGEST_PATH:
            self._error(404, f"no such endpoint; post records to {INGEST_PATH}")
            return
        if ingest.draining:
            self.close_connection = True
            self._error(503, "shutting down; retry shortly", {"Retry-After": "5"})
            return
        if not self._authorised(ingest.settings.token):
            self.close_connection = True
            challenge = {"WWW-Authenticate": 'Bearer realm="traceexport"'}
            self._error(401, "missing or wrong bearer token", challenge)
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES | NDJSON_TYPES:
            self.close_connection = True
            self._error(415, f"content type {content_type!r} not supported: send application/json "
                        "or application/x-ndjson")
            return
        body = self._read_body(ingest.settings.max_body_bytes)
        if body is None:
            return
        query = parse_qs(url.query)
        type_name = query["type"][0] if query.get("type") else None
        app_id = query["app_id"][0] if query.get("app_id") else None
        records, rejected = parse_body(body, content_type, type_name, app_id)
        if not records and not rejected:
            self._send(400, {"accepted": 0, "rejected": [{"index": 0, "reason": "no records in the body"}]})
            return
        if records:
            try:
                ingest.accept(records)
            except SpoolFullError as exc:  # over the size limit, or a full disk: retryable
                wait = max(1, math.ceil(exc.retry_after))
                self._send(503, {"error": f"{exc}; retry after {wait}s", "accepted": 0},
                           {"Retry-After": str(wait)})
                return
            except RecordTooLargeError as exc:  # can never fit in the spool: retrying cannot help
                self._send(413, {"error": exc.reason, "accepted": 0})
                return
        if not rejected:
            self._send(202, {"accepted": len(records)})
            return
        answer: dict[str, Any] = {"accepted": len(records), "rejected": rejected[:MAX_REJECTIONS_LISTED]}
        if len(rejected) > MAX_REJECTIONS_LISTED:
            answer["rejected_total"] = len(rejected)
        self._send(400, answer)

    def _authorised(self, token: str | None) -> bool:
        if not token:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def _read_body(self, limit: int) -> bytes | None:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            self._error(411, "Content-Length is required (chunked bodies are not accepted)")
            return None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self.close_connection = True
            self._error(400, "Content-Length is not a number")
            return None
        if length > limit:
            self.close_connection = True
            self._error(413, f"body of {length} bytes is over the {limit}-byte limit; send smaller batches")
            return None
        return self.rfile.read(length)


__all__ = ["INGEST_PATH", "IngestServer", "IngestSettings", "parse_body"]
