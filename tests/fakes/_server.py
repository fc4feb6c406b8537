"""A small threaded HTTP server base for contract-checking fakes (stdlib ``http.server`` only).

Usage in-thread (tests)::

    class MyFake(FakeServer):
        def handle(self, request: RecordedRequest) -> Response:
            return Response(204)

    with MyFake() as fake:            # binds 127.0.0.1 on a free port (port 0) and starts a thread
        httpx.post(fake.url + "/x", json={})
        fake.requests                 # every request the fake answered, in order (RecordedRequest)
        fake.fail_next(2, 503)        # the next 2 requests get 503 before any contract check
        fake.fail_next(1, 429, headers={"Retry-After": "7"})
        fake.drop_next(1)             # the next request's connection is closed without an answer
        fake.wait_for(lambda: len(fake.requests) >= 3, timeout=5)   # poll with a bound, no sleep
    # leaving the block calls fake.stop(); stop() is idempotent

Usage out of process (daemon tests)::

    python -m tests.fakes.opik_server --port 0      # first stdout line is the base URL

and drive it over HTTP through the control endpoints (never recorded as requests):

* ``GET  /_fake/requests``  recorded requests as JSON (method, path, headers, json or text body, status)
* ``GET  /_fake/state``     the subclass's stored state (:meth:`FakeServer.state`)
* ``POST /_fake/faults``    ``{"count": N, "status": 503, "headers": {...}, "body": ..., "drop": false}``
* ``POST /_fake/reset``     forget requests, faults and state

Faults are applied in order, before the subclass sees the request; a fault's ``count`` is how many
consecutive requests it answers. ``path_prefix`` limits a fault to matching paths.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

CONTROL_PREFIX = "/_fake/"


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake received: method, path (with query), headers (lower-cased names), raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # the status the fake answered with; 0 for a dropped connection

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(self.body)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible view for the control endpoint."""
        try:
            body: Any = {"json": self.json()}
        except ValueError:
            body = {"text": self.body.decode("utf-8", "replace")}
        return {"method": self.method, "path": self.path, "headers": self.headers, "status": self.status,
                **body}


@dataclass(slots=True)
class Response:
    """What the fake answers: status, a JSON-compatible body (or raw bytes, or None) and headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body bytes and headers, with Content-Type set for JSON bodies."""
        headers = dict(self.headers)
        if self.body is None:
            return b"", headers
        if isinstance(self.body, bytes):
            return self.body, headers
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode(), headers


@dataclass(slots=True)
class Fault:
    """Answer the next ``count`` requests (matching ``path_prefix``) with this response, or drop them."""

    count: int
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    path_prefix: str = ""


class FakeServer:
    """Threaded HTTP fake on 127.0.0.1; subclasses implement :meth:`handle` (and :meth:`state`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._httpd = _Httpd((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopped = False
        self._scheme = "http"

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121`` (no trailing slash)."""
        host, port = self._httpd.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def use_tls(self, context: ssl.SSLContext) -> Self:
        """Answer over TLS from now on (call before :meth:`start`): :attr:`url` becomes ``https://``; a client
        whose handshake fails (an untrusted server, no client certificate) gets no answer."""
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._scheme = "https"
        return self

    def start(self) -> Self:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, name=type(self).__name__,
                                            kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (used by the subprocess entry point)."""
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._serving:
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault plan ------------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        """Queue a fault after those already planned."""
        with self._lock:
            self._faults.append(fault)

    def fail_next(self, count: int, status: int = 503, *, body: Any = None,
                  headers: Mapping[str, str] | None = None, path_prefix: str = "") -> None:
        """Answer the next ``count`` requests with ``status`` (e.g. 429 with ``{"Retry-After": "3"}``)."""
        self.add_fault(Fault(count, status, body, dict(headers or {}), path_prefix=path_prefix))

    def drop_next(self, count: int = 1, *, path_prefix: str = "") -> None:
        """Close the next ``count`` connections without answering (a transport error for the client)."""
        self.add_fault(Fault(count, drop=True, path_prefix=path_prefix))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- observation -----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return predicate()
            time.sleep(0.01)
        return True

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path (without query) equals ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def reset(self) -> None:
        """Forget recorded requests, planned faults and stored state."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.reset_state()

    # -- subclass hooks --------------------------------------------------------------------------
    def handle(self, request: RecordedRequest) -> Response:
        """Answer one (non-control, non-faulted) request; subclasses override."""
        return Response(404, {"error": f"no route for {request.method} {request.path}"})

    def state(self) -> Any:
        """JSON-compatible stored state for ``GET /_fake/state``; subclasses override."""
        return {}

    def reset_state(self) -> None:
        """Forget stored state; subclasses override."""

    # -- dispatch (called from handler threads) --------------------------------------------------
    def _dispatch(self, request: RecordedRequest) -> Response | None:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        fault = self._take_fault(request.path)
        if fault is not None and fault.drop:
            response = None
        elif fault is not None:
            response = Response(fault.status, fault.body, dict(fault.headers))
        else:
            try:
                response = self.handle(request)
            except Exception as exc:  # a bug in a fake must show up as a 500, not a hung client
                response = Response(500, {"error": f"fake server error: {type(exc).__name__}: {exc}"})
        request.status = 0 if response is None else response.status
        with self._lock:
            self.requests.append(request)
        return response

    def _control(self, request: RecordedRequest) -> Response:
        route = request.path[len(CONTROL_PREFIX):].split("?", 1)[0]
        if request.method == "GET" and route == "requests":
            with self._lock:
                return Response(200, [r.as_dict() for r in self.requests])
        if request.method == "GET" and route == "state":
            with self._lock:
                return Response(200, self.state())
        if request.method == "POST" and route == "faults":
            spec = request.json()
            self.add_fault(Fault(int(spec.get("count", 1)), int(spec.get("status", 503)), spec.get("body"),
                                 dict(spec.get("headers") or {}), bool(spec.get("drop", False)),
                                 str(spec.get("path_prefix", ""))))
            return Response(204)
        if request.method == "POST" and route == "reset":
            self.reset()
            return Response(204)
        return Response(404, {"error": f"unknown control route {route!r}"})


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not block stop()
    allow_reuse_address = True


def _make_handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # idle keep-alive connections end by themselves

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = fake._dispatch(RecordedRequest(self.command, self.path, headers, body))
            if response is None:
                self.close_connection = True
                return
            payload, extra = response.encoded()
            self.send_response(response.status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests instead
            return

    return Handler


def run_main(factory: Callable[[argparse.Namespace], FakeServer], argv: Sequence[str] | None = None,
             configure: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Entry point for ``python -m tests.fakes.<fake> --port 0``: print the URL, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="Run a contract-checking fake server on 127.0.0.1.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    fake = factory(args)

    def _terminate(signum: int, frame: object) -> None:
        threading.Thread(target=fake.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    print(fake.url, flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    sys.stdout.flush()
    return 0
