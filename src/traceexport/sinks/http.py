"""The one HTTP outcome classifier every sink shares, and secret-safe error text.

2xx ok; 408, 429 and 5xx retryable (honouring ``Retry-After`` in seconds or as an HTTP date);
other 4xx permanent; transport errors retryable. Sinks with per-item error bodies (Amplitude 400/429,
Opik 400, OTLP partial success) refine this for their own items.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping

import httpx

from traceexport.sinks.base import ItemFailure
from traceexport.sinks.http_client import deadline_exceeded
from traceexport.sinks.ratelimit import SendCancelled
from traceexport.sinks.request_meter import RETRYABLE_STATUS

MAX_RETRY_AFTER = 3600.0
_EXCERPT = 300
_SECRET_PATTERNS = [
    re.compile(
        r"(?i)(authorization|api[_-]?key|secret[_-]?key|password|token)([\"']?\s*[:=]\s*[\"']?)"
        r"((?:basic\s+|bearer\s+)?[^\s\"',}&]+)"
    ),
    re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._-]{6,}"),
    re.compile(r"\b(sk|pk)-lf-[A-Za-z0-9-]+"),
]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (or ``RateLimit-Reset``) header value; None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if "," in value or " " in value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - (time.time() if now is None else now)
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


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secret values and secret-looking tokens replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask(match: re.Match[str]) -> str:
    groups = match.groups()
    if len(groups) == 3:
        return f"{groups[0]}{groups[1]}***"
    if len(groups) == 2:
        return f"{groups[0]} ***"
    return "***"


def excerpt(response: httpx.Response, secrets: Iterable[str] = ()) -> str:
    """A short, one-line, secret-free excerpt of a response body for error messages."""
    try:
        text = response.text
    except Exception:  # undecodable body: say so rather than fail while reporting a failure
        text = "<undecodable body>"
    text = " ".join(text.split())
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "..."
    return redact(text, secrets)


def classify_response(
    response: httpx.Response, *, backend: str, secrets: Iterable[str] = (), auth_hint: str = ""
) -> ItemFailure | None:
    """None for 2xx; otherwise the failure every item of the request shares."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    body = excerpt(response, secrets)
    if status in RETRYABLE_STATUS:
        return ItemFailure(
            reason=f"{backend} answered {status}: {body}".strip(),
            permanent=False,
            status_code=status,
            retry_after=retry_after_from(response.headers),
        )
    if status in (401, 403):
        hint = f"; check {auth_hint}" if auth_hint else ""
        return ItemFailure(reason=f"{backend} refused the credentials ({status}){hint}", permanent=True,
                           status_code=status)
    return ItemFailure(reason=f"{backend} rejected the request ({status}): {body}".strip(), permanent=True,
                       status_code=status)


def classify_transport_error(exc: Exception, *, backend: str, secrets: Iterable[str] = ()) -> ItemFailure:
    """A transport-level failure (connect, timeout, protocol, the request's deadline, a request left unsent
    by a stopping sink): always retryable."""
    kind = type(exc).__name__
    if isinstance(exc, SendCancelled):  # never sent: it waited for the rate limit while the sink stopped
        return ItemFailure(reason=f"{backend}: {exc}", permanent=False, unsent=True)
    if deadline_exceeded(exc) is not None:
        return ItemFailure(reason=redact(f"{backend} too slow ({kind}): {exc}", secrets), permanent=False)
    return ItemFailure(reason=redact(f"{backend} unreachable ({kind}): {exc}", secrets), permanent=False)
