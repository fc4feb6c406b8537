"""HTTP ingest: ``POST /v1/dify/traces`` puts Dify trace records into the spool; health, readiness, metrics.

The body is a TaskData envelope, a bare TraceInfo (type in ``trace_info_type`` or ``?type=``), a JSON
array of those, or NDJSON. ``202 {"accepted": n}`` is sent only after ``accept`` returned, i.e. the
records are durable. Bad records are listed with a one-line reason while the good ones of the same
request are still accepted (then the status is 400); parsing is in :mod:`.http_body`. Built on the
standard library's ``ThreadingHTTPServer`` (:mod:`traceexport.http_base`). Every answer
is JSON (the standard library's own refusals too); other methods get 405 with ``Allow``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from traceexport.errors import RecordTooLargeError, SpoolFullError
from traceexport.http_base import BEARER_CHALLENGE, JsonRequestHandler, JsonServer
from traceexport.logs import log_event
from traceexport.records import Record, RecordHead
from traceexport.sources.http_body import JSON_TYPES, NDJSON_TYPES, parse_body

log = logging.getLogger("traceexport.sources.http")

INGEST_PATH = "/v1/dify/traces"
ALLOWED_METHODS = {INGEST_PATH: "POST", "/healthz": "GET, HEAD", "/readyz": "GET, HEAD", "/metrics": "GET, HEAD"}

# Stores the records (or what a stager made of each); returns the (index, reason) of any that can never fit
# (None: all stored).
AcceptFn = Callable[[list[Any]], "list[tuple[int, str]] | None"]


class Stage(Protocol):
    """Turns each record of one request into what ``accept`` takes, as soon as it is parsed."""

    full: bool  # whole records wanted; else record heads (validated the same) are enough

    def __call__(self, record: Record | RecordHead, /) -> Any:
        ...


# Called once per request for its Stage.
StagerFn = Callable[[], Stage]


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Where to listen and what to allow."""

    host: str = "127.0.0.1"
    port: int = 4319
    token: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_grace: float = 10.0


class IngestServer:
    """The HTTP source: start it, point Dify's hook at it, stop it with a bounded grace period."""

    def __init__(self, settings: IngestSettings, accept: AcceptFn, *, stager: StagerFn | None = None,
                 ready: Callable[[], str | None] = lambda: None,
                 metrics_text: Callable[[], str] = lambda: "") -> None:
        self.settings = settings
        self.accept = accept
        self.stager = stager
        self.ready = ready
        self.metrics_text = metrics_text
        self.draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self._refusal: tuple[str, float] | None = None  # why posts are refused, and until when (monotonic)
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
        if self._thread is not None:  # shutdown() waits for serve_forever: never started, it would wait forever
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

    def not_ready_reason(self) -> str | None:
        """What /readyz reports: shutting down, the daemon's own reason, or posts being refused right now."""
        if self.draining:
            return "shutting down"
        reason = self.ready()
        if reason:
            return reason
        refusal = self._refusal
        if refusal is not None and time.monotonic() < refusal[1]:
            return f"cannot accept: {refusal[0]}"
        return None

    def refused(self, reason: str, retry_after: float) -> None:
        """A post was refused for want of room or resources: not ready until ``retry_after`` passed."""
        self._refusal = (reason, time.monotonic() + retry_after)

    def accepted(self) -> None:
        """A post was accepted: whatever refused earlier ones is over."""
        self._refusal = None


class _Server(JsonServer):
    ingest: IngestServer


class _Handler(JsonRequestHandler):
    server: _Server

    # -- GET -------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        """Health, readiness and metrics."""
        ingest = self.server.ingest
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, {"status": "ok"})
        elif path == "/readyz":
            reason = ingest.not_ready_reason()
            self._send(503 if reason else 200, {"status": "not ready", "reason": reason} if reason
                       else {"status": "ready"})
        elif path == "/metrics":
            try:
                text = ingest.metrics_text()
            except Exception as exc:  # e.g. a spool SQLite cannot read now: said, not a dropped connection
                log_event(log, "http.metrics_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                self._error(500, "the metrics cannot be read now; the daemon log has details")
                return
            self._send(200, text)
        else:
            self._not_allowed()

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        """405 with ``Allow`` on a known path, 404 elsewhere; the connection closes (a body may follow)."""
        self.close_connection = True
        allowed = ALLOWED_METHODS.get(urlsplit(self.path).path)
        if allowed is None:
            self._error(404, f"no such endpoint; post records to {INGEST_PATH}")
        elif allowed == "POST":
            self._error(405, f"use POST {INGEST_PATH}", {"Allow": allowed})
        else:
            self._error(405, f"{self.command} is not allowed here; use {allowed}", {"Allow": allowed})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

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
            self._not_allowed()
            return
        if ingest.draining:
            self.close_connection = True
            self._error(503, "shutting down; retry shortly", {"Retry-After": "5"})
            return
        if not ingest.settings.token and self.headers.get("Origin") is not None:
            # Browsers send Origin with every POST, same-site, cross-site or after DNS rebinding; programs
            # (Dify's hook, Celery, curl) do not. A tokenless listener would take any web page's records.
            self.close_connection = True
            self._error(403, "records from a web page (the request carries Origin) are not taken without a "
                             "token: set sources.http.token to post from a browser")
            return
        if not self._authorised(ingest.settings.token):
            self.close_connection = True
            self._error(401, "missing or wrong bearer token", BEARER_CHALLENGE)
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
        if ingest.stager is not None:
            stage = ingest.stager()
            parsed = parse_body(body, content_type, type_name, app_id, stage, heads=not stage.full)
        else:
            parsed = parse_body(body, content_type, type_name, app_id)
        del body
        if not parsed.records and not parsed.rejected_total:
            self._send(400, {"accepted": 0, "rejected": [{"index": 0, "reason": "no records in the body"}]})
            return
        too_large: list[tuple[int, str]] = []
        if parsed.records:
            try:
                too_large = ingest.accept(parsed.records) or []
            except SpoolFullError as exc:  # over the size limit, a full disk, no descriptor: retryable
                wait = max(1, math.ceil(exc.retry_after))
                ingest.refused(str(exc), wait)
                full: dict[str, Any] = {"error": f"{exc}; retry after {wait}s", "accepted": len(exc.stored)}
                if exc.stored:  # stored in order, a record at a time, until the spool filled: say where it stopped
                    where, number = parsed.places[min(set(range(len(parsed.records))) - set(exc.stored))]
                    full["resend_from"] = {where: number}
                self._send(503, full, {"Retry-After": str(wait)})
                return
            except RecordTooLargeError as exc:  # can never fit in the spool: retrying cannot help
                self._send(413, {"error": exc.reason, "accepted": 0})
                return
            ingest.accepted()
            for index, reason in too_large:
                parsed.reject(*parsed.places[index], reason)
            if too_large and len(too_large) == parsed.rejected_total == len(parsed.records):
                self._send(413, {"error": too_large[0][1], "accepted": 0})
                return
        accepted = len(parsed.records) - len(too_large)
        if not parsed.rejected_total:
            self._send(202, {"accepted": accepted})
            return
        answer: dict[str, Any] = {"accepted": accepted, "rejected": parsed.rejected}
        if parsed.rejected_total > len(parsed.rejected):
            answer["rejected_total"] = parsed.rejected_total
        self._send(400, answer)


__all__ = ["INGEST_PATH", "IngestServer", "IngestSettings", "parse_body"]
