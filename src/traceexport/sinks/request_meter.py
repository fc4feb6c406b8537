"""Every request a sink sends, counted with its outcome and duration, without the sinks knowing.

The delivery worker puts a meter (a function of seconds and outcome) in a context variable around each
export attempt (:func:`metered`); the two places every request goes through report to it: the one HTTP
client (:class:`traceexport.sinks.http_client.DeadlineClient`) and the OTLP/gRPC transport. Outside a
metered block (``traceexport map``, tests) :func:`observe` does nothing.

Outcomes follow the shared classifier (``sinks/http.py``): ``ok`` for 2xx, ``retryable`` for 408, 425,
429, every 5xx (a CDN's 520-524 too) and transport failures, ``permanent`` for every other answer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

OUTCOMES = ("ok", "retryable", "permanent")
RETRYABLE_4XX = frozenset({408, 425, 429})

Meter = Callable[[float, str], None]
_METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("traceexport_request_meter", default=None)


@contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """Report every request sent by this thread inside the block to ``meter(seconds, outcome)``."""
    token = _METER.set(meter)
    try:
        yield
    finally:
        _METER.reset(token)


def observe(seconds: float, outcome: str) -> None:
    """One request took ``seconds`` and ended with ``outcome`` (one of :data:`OUTCOMES`)."""
    meter = _METER.get()
    if meter is not None:
        meter(seconds, outcome)


def retryable_status(status: int) -> bool:
    """Whether an answer with this status may succeed later: 408, 425, 429 and every 5xx."""
    return status in RETRYABLE_4XX or 500 <= status <= 599


def status_outcome(status: int) -> str:
    """The outcome of an HTTP answer with this status code."""
    if 200 <= status < 300:
        return "ok"
    return "retryable" if retryable_status(status) else "permanent"
