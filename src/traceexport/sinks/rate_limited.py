"""A sink whose requests keep to a :class:`~traceexport.sinks.ratelimit.RateLimiter`; otherwise the same sink.

The wrapper only puts its limiter in reach of the thread running an export
(:func:`~traceexport.sinks.ratelimit.limiting`); the places every request goes through do the rest:
the one HTTP client (:class:`traceexport.sinks.http_client.RateLimitedClient`) waits before each request
and reports throttling, and so does the OTLP/gRPC transport. So a sink that splits a batch into several
requests (OTLP ``max_spans``/``max_bytes``, Opik traces then spans, Amplitude) or bisects a refused one
spends one request token per request it really sends, and the items each request carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from traceexport.sinks.base import ExportResult, Payload, Sink
from traceexport.sinks.ratelimit import RateLimiter, limiting


class RateLimitedSink:
    """``inner`` with its requests paced by ``limiter`` (``rate_limiter``)."""

    def __init__(self, inner: Sink, limiter: RateLimiter) -> None:
        self.inner = inner
        self.rate_limiter = limiter
        self.name = inner.name
        self.backend = inner.backend
        self.limits = inner.limits

    def request_bodies(self, payloads: Sequence[Payload], /) -> list[Any]:
        """The wrapped sink's request bodies (pure: nothing to pace)."""
        return self.inner.request_bodies(payloads)

    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        """One export attempt of the wrapped sink, each of its requests waiting for the limiter."""
        with limiting(self.rate_limiter):
            return self.inner.export(payloads)

    def shutdown(self, timeout: float = 30.0) -> None:
        """End any wait for the limiter, then shut the wrapped sink down."""
        self.rate_limiter.cancel()
        self.inner.shutdown(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RateLimitedSink({self.inner!r})"


def limiter_of(sink: Sink) -> RateLimiter | None:
    """The rate limiter of ``sink`` (through wrappers such as the Dify hook's), if it has one."""
    limiter = getattr(sink, "rate_limiter", None)
    return limiter if isinstance(limiter, RateLimiter) else None


def cancel_waits(sink: Sink) -> None:
    """End the waits of ``sink``'s requests for its rate limit: it is stopping (nothing if it has no limit)."""
    limiter = limiter_of(sink)
    if limiter is not None:
        limiter.cancel()


__all__ = ["RateLimitedSink", "cancel_waits", "limiter_of"]
