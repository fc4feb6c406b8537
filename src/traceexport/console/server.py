"""The console's listener: the page's static files at ``/ui/``, its JSON API at ``/api/``.

Its own listener (``console.listen``), apart from ingest, so it can be kept on loopback or behind a
proxy while ingest faces Dify. With a token configured every ``/api/`` call needs ``Authorization:
Bearer``; without one the API answers only requests addressed to a loopback name (DNS rebinding); nothing
uses cookies, and a POST must declare ``application/json`` (which a page on another site
cannot send without a CORS preflight, refused here), so a cross-site request can neither ride on a login nor,
without a token, act unasked. Every answer
carries a strict Content-Security-Policy: the page runs only its own script, loads nothing from
elsewhere and cannot be framed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from traceexport import _json
from traceexport.console.api import ConsoleApi
from traceexport.errors import RequestError
from traceexport.http_base import BEARER_CHALLENGE, JSON_TYPE, JsonRequestHandler, JsonServer
from traceexport.logs import log_event

log = logging.getLogger("traceexport.console")

UI_PATH = "/ui/"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
_ENTRY = re.compile(r"^/api/dead-letters/([^/]+)$")


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """Where the console listens and what it asks of callers."""

    host: str = "127.0.0.1"
    port: int = 4320
    token: str | None = None
    max_body_bytes: int = 1024 * 1024


def static_files() -> dict[str, tuple[bytes, str]]:
    """``{name: (content, content type)}`` of the page's files, read once from the package."""
    folder = resources.files("traceexport.console").joinpath("static")
    files: dict[str, tuple[bytes, str]] = {}
    if not folder.is_dir():
        return files
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            files[item.name] = (item.read_bytes(), _TYPES[suffix])
    return files


class ConsoleServer:
    """Start it beside the daemon's pipeline; stop it before the pipeline closes."""

    def __init__(self, settings: ConsoleSettings, api: ConsoleApi) -> None:
        self.settings = settings
        self.api = api
        self.files = static_files()
        self.draining = False
        self._thread: threading.Thread | None = None
        self._server = _Server((settings.host, settings.port), _Handler)
        self._server.console = self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's address, with the real port."""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{UI_PATH}"

    def start(self) -> None:
        self.api.history.start()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="traceexport-console", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.draining = True
        self.api.history.stop()
        if self._thread is not None:  # shutdown() waits for serve_forever: never started, it would wait forever
            self._server.shutdown()
        self._server.server_close()
        self.api.playground.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


class _Server(JsonServer):
    console: ConsoleServer


Route = Callable[[ConsoleApi, dict[str, list[str]], Any], Any]
_GET: dict[str, Route] = {
    "/api/status": lambda api, query, body: api.status(),
    "/api/history": lambda api, query, body: api.history_points(),
    "/api/dead-letters": lambda api, query, body: api.dead_letters(query),
    "/api/playground": lambda api, query, body: api.playground_info(),
    "/api/playground/mapping": lambda api, query, body: api.playground_mapping(query),
}
_POST: dict[str, Route] = {
    "/api/dead-letters/replay": lambda api, query, body: api.replay(body),
    "/api/dead-letters/purge": lambda api, query, body: api.purge(body),
    "/api/playground/map": lambda api, query, body: api.playground_map(body),
}


class _Handler(JsonRequestHandler):
    server: _Server
    extra_headers = SECURITY_HEADERS

    def do_GET(self) -> None:
        """The page's files, or an API reading."""
        path = urlsplit(self.path).path
        if path.startswith("/api/"):
            self._api(_GET)
        elif path in ("/", "/ui"):
            self._send(302, {"location": UI_PATH}, {"Location": UI_PATH})
        elif path.startswith(UI_PATH):
            name = path[len(UI_PATH):] or "index.html"
            found = self.server.console.files.get(name)
            if found is None:
                self._error(404, f"no such file: {path}")
            else:
                self._send_bytes(200, *found)
        else:
            self._error(404, f"no such page: the console is at {UI_PATH}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        """An API action."""
        self._api(_POST)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._error(405, f"{self.command} is not allowed here", {"Allow": _allowed(urlsplit(self.path).path)})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _api(self, routes: dict[str, Route]) -> None:
        console = self.server.console
        url = urlsplit(self.path)
        try:
            if console.draining:
                self.close_connection = True
                self._error(503, "the daemon is stopping", {"Retry-After": "5"})
                return
            if not console.settings.token and not self._addressed_to_loopback():
                self.close_connection = True
                self._error(403, "without a console token the API answers only requests addressed to this "
                                 "machine's loopback (Host 127.0.0.1, localhost or [::1]); to reach it by another "
                                 "name, set console.token")
                return
            if not self._authorised(console.settings.token):
                self.close_connection = True
                self._error(401, "missing or wrong bearer token: the console's API needs "
                                 "'Authorization: Bearer <console token>'", BEARER_CHALLENGE)
                return
            route, args = self._route(routes, url.path)
            body = None
            if self.command == "POST":
                if not self._json_content_type():
                    self.close_connection = True
                    self._error(415, "send the body as Content-Type: application/json")
                    return
                raw = self._read_body(console.settings.max_body_bytes)
                if raw is None:
                    return
                body = _json_body(raw)
            self._send(200, route(console.api, parse_qs(url.query), body if args is None else args))
        except RequestError as exc:
            self._error(exc.status, str(exc), {"Allow": exc.allow} if exc.allow else None)
        except Exception as exc:
            log_event(log, "console.internal_error", logging.ERROR, path=url.path,
                      error=f"{type(exc).__name__}: {exc}")
            self.close_connection = True
            self._error(500, "internal error; the daemon log has details")

    def _addressed_to_loopback(self) -> bool:
        """Whether the request names a loopback host (or none, as HTTP/1.0 may). A web page that rebinds its own
        name to 127.0.0.1 (DNS rebinding) reaches a tokenless console from the operator's browser, but its
        requests still carry that name in Host: refused, it can read no dead letter (prompts, outputs)."""
        host = (self.headers.get("Host") or "").strip()
        if not host:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _json_content_type(self) -> bool:
        """Whether the body is declared JSON. A page on another site can POST text/plain (or a form) here
        without asking; application/json makes the browser ask first (a CORS preflight, which this server
        refuses), so no other site can replay or purge dead letters, also without a token."""
        declared = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return declared == JSON_TYPE

    def _route(self, routes: dict[str, Route], path: str) -> tuple[Route, Any]:
        """The route for ``path`` (and, for one dead letter, its id); RequestError 404/405 otherwise."""
        if path in routes:
            return routes[path], None
        entry = _ENTRY.match(path)
        if entry is not None and entry.group(1) not in ("replay", "purge") and routes is _GET:
            return (lambda api, query, entry_id: api.dead_letter(entry_id)), entry.group(1)
        if path in _GET or path in _POST or entry is not None:
            allowed = _allowed(path)
            raise RequestError(f"use {allowed} for {path}", status=405, allow=allowed)
        raise RequestError(f"no such API endpoint: {path} (see docs/console-api.md)", status=404)


def _allowed(path: str) -> str:
    """The methods ``path`` takes, for a 405's ``Allow``: the API's actions POST, everything else GET."""
    if path in _POST:
        return "POST"
    if path in _GET or _ENTRY.match(path) is not None or not path.startswith("/api/"):
        return "GET, HEAD"
    return "GET, HEAD, POST"


def _json_body(raw: bytes) -> Any:
    """The body's JSON value; RequestError (400) when it is not JSON, nested too deeply included (the fast
    parser stops at a depth the standard library's recursion would have died of, a 500)."""
    try:
        return _json.loads(raw or b"null")
    except ValueError as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None


__all__ = ["SECURITY_HEADERS", "UI_PATH", "ConsoleServer", "ConsoleSettings", "static_files"]
