"""A sink whose requests keep to a :class:`~traceexport.sinks.ratelimit.RateLimiter`; otherwise the same sink.

The wrapper only puts its limiter in reach of the thread running an export
(:func:`~traceexport.sinks.ratelimit.limiting`); the places every request goes through do the rest:
the one HTTP client (:class:`traceexport.sinks.http_client.RateLimitedClient`) waits before each request
and reports throttling, and so does the OTLP/gRPC transport. So a sink that splits a batch into several
requests (OTLP ``max_spans``/``max_bytes``, Opik traces then spans, Amplitude) or bisects a refused one
spends one request token per request it really sends, and the items each request carries.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from traceexport.sinks.base import Sink, WrappedSink
from traceexport.sinks.ratelimit import RateLimiter, limiting


class RateLimitedSink(WrappedSink):
    """``inner`` with its requests paced by ``limiter`` (``rate_limiter``)."""

    def __init__(self, inner: Sink, limiter: RateLimiter) -> None:
        super().__init__(inner)
        self.rate_limiter = limiter

    def around(self) -> AbstractContextManager[object]:
        """Each request of the export waits for the limiter."""
        return limiting(self.rate_limiter)

    def shutdown(self, timeout: float = 30.0) -> None:
        """End any wait for the limiter, then shut the wrapped sink down."""
        self.rate_limiter.cancel()
        super().shutdown(timeout)


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
