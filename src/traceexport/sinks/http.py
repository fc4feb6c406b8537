"""The one HTTP outcome classifier every sink shares, and secret-safe error text (through :mod:`traceexport.redaction`).

2xx ok; 408, 425, 429 and every 5xx retryable (honouring ``Retry-After`` in seconds or as an HTTP date);
3xx permanent, naming where it points (redirects are never followed: they would carry the sink's
credentials to wherever the answer says); other 4xx permanent; transport errors retryable. Sinks with
per-item error bodies (Amplitude 400/429, Opik 400, OTLP partial success) refine this for their own items.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from traceexport.redaction import describe_error, redact
from traceexport.shown import shown
from traceexport.sinks.base import ItemFailure
from traceexport.sinks.http_client import deadline_exceeded
from traceexport.sinks.ratelimit import SendCancelled
from traceexport.sinks.request_meter import retryable_status

MAX_RETRY_AFTER = 3600.0
_EXCERPT = 300
_REDACT_WINDOW = 8192  # characters of a body masked for an excerpt: far more than any secret past the cut


EPOCH_SECONDS = 1e9  # a wait this long (31 years) is a Unix time (X-RateLimit-Reset's usual form), not a delay
EPOCH_MILLISECONDS = 1e12


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (or ``RateLimit-Reset``) header value: delay seconds, an HTTP date,
    or a Unix time in seconds or milliseconds; None if absent or unreadable (never an exception)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    clock = time.time() if now is None else now
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value) if "," in value or " " in value else None
        except (TypeError, ValueError, OverflowError):  # "a b", "Mon, 99 Foo 2026": not a date after all
            return None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - clock
    if not math.isfinite(seconds):
        return None
    if seconds >= EPOCH_MILLISECONDS:
        seconds = seconds / 1000 - clock
    elif seconds >= EPOCH_SECONDS:
        seconds -= clock
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for, from ``Retry-After`` or, failing that, ``RateLimit-Reset``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after", "ratelimit-reset", "x-ratelimit-reset"):
        if name in lowered:
            seconds = parse_retry_after(lowered[name])
            if seconds is not None:
                return seconds
    return None


def one_line(text: str, secrets: Iterable[str] = (), limit: int = _EXCERPT) -> str:
    """``text`` from a backend's answer (a message, a field name) as one short, secret-free, printable line:
    every run of whitespace (newlines included) one space, any other control character escaped (``\\x00``,
    ``\\x1b``: an answer cannot drive the terminal showing a log or ``dlq list``), at most ``limit``
    characters, then ``...``."""
    # Masked before it is cut: a secret straddling the cut would otherwise leave its first part behind.
    text = shown(redact(" ".join(text[:_REDACT_WINDOW].split()), secrets))
    return text[:limit] + "..." if len(text) > limit else text


def answer_object(response: httpx.Response) -> dict[str, Any]:
    """An answer's body as a JSON object; ``{}`` when it is not JSON, not an object, or nested too deeply for
    Python's parser (``[[[[...`` a megabyte deep raises RecursionError, not ValueError)."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def excerpt(response: httpx.Response, secrets: Iterable[str] = ()) -> str:
    """A short, one-line, secret-free excerpt of a response body for error messages."""
    try:
        text = response.text
    except Exception:  # undecodable body: say so rather than fail while reporting a failure
        text = "<undecodable body>"
    return one_line(text, secrets)


def redirect_target(response: httpx.Response, secrets: Iterable[str] = ()) -> str:
    """Where a 3xx answer points, as one secret-free line: scheme, host, port and path, never the query or
    a ``user:password@``; relative locations resolved against the request's URL."""
    location = response.headers.get("location", "").strip()
    if not location:
        return "no Location given"
    try:
        target = response.request.url.join(location)
    except (httpx.InvalidURL, RuntimeError):  # RuntimeError: a response built without its request
        return "an unreadable Location"
    port = f":{target.port}" if target.port else ""
    return one_line(f"{target.scheme}://{target.host}{port}{target.path}", secrets, limit=200)


def classify_response(
    response: httpx.Response, *, backend: str, secrets: Iterable[str] = (), auth_hint: str = "",
    answer: str | None = None,
) -> ItemFailure | None:
    """None for 2xx (but an HTML page: :func:`web_page_answer`); otherwise the failure every item of the request
    shares, quoting ``answer`` (what the caller read from the body, such as OTLP's protobuf Status message) or
    else an excerpt of the body."""
    status = response.status_code
    if 200 <= status < 300:
        return web_page_answer(response, backend)
    body = excerpt(response, secrets) if answer is None else one_line(answer, secrets)
    if retryable_status(status):
        return ItemFailure(
            reason=_with_body(f"{backend} answered {status}", body),
            permanent=False,
            status_code=status,
            retry_after=retry_after_from(response.headers),
        )
    if 300 <= status < 400:
        return ItemFailure(
            reason=f"{backend} redirected the request ({status}) to {redirect_target(response, secrets)}: "
                   "not followed (it would carry the credentials); set the sink's URL to that address",
            permanent=True, status_code=status)
    if status in (401, 403):
        hint = f"; check {auth_hint}" if auth_hint else ""  # after the answer, which may say more (a quota)
        return ItemFailure(reason=_with_body(f"{backend} refused the credentials ({status})", body) + hint,
                           permanent=True, status_code=status)
    return ItemFailure(reason=_with_body(f"{backend} rejected the request ({status})", body), permanent=True,
                       status_code=status)


def web_page_answer(response: httpx.Response, backend: str) -> ItemFailure | None:
    """A retryable failure for a 2xx that is an HTML page (a login portal, a web app answering every path):
    no ingestion API answers so, and taking it for success would count records delivered that went nowhere."""
    if response.headers.get("content-type", "").split(";")[0].strip().lower() != "text/html":
        return None
    return ItemFailure(reason=f"{backend} answered {response.status_code} with a web page, not its API's answer: "
                              "is the sink's URL the API's address (not a web page or a login portal)?",
                       permanent=False, status_code=response.status_code)


def _with_body(what: str, body: str) -> str:
    """``what: body``, or ``what`` alone for an empty body."""
    return f"{what}: {body}" if body else what


def classify_transport_error(exc: Exception, *, backend: str, secrets: Iterable[str] = ()) -> ItemFailure:
    """A transport-level failure (connect, timeout, protocol, the request's deadline, a request left unsent
    by a stopping sink): always retryable."""
    kind = type(exc).__name__
    if isinstance(exc, SendCancelled):  # never sent: it waited for the rate limit while the sink stopped
        return ItemFailure(reason=f"{backend}: {exc}", permanent=False, unsent=True)
    if deadline_exceeded(exc) is not None:
        return ItemFailure(reason=f"{backend} too slow ({kind}): {describe_error(exc, secrets)}", permanent=False)
    if isinstance(exc, httpx.LocalProtocolError):  # our request broke HTTP's rules (a header): not the network
        return ItemFailure(reason=f"{backend} request could not be sent ({kind}): {describe_error(exc, secrets)}; "
                                  "check the sink's headers and credentials", permanent=False)
    return ItemFailure(reason=f"{backend} unreachable ({kind}): {describe_error(exc, secrets)}", permanent=False)


__all__ = ["MAX_RETRY_AFTER", "answer_object", "classify_response", "classify_transport_error", "excerpt", "one_line",
           "parse_retry_after", "redact", "redirect_target", "retry_after_from"]
