"""Each sink's adaptive rate limit, from the process that delivers to the one serving ``/metrics``.

With a delivery process (``pipeline/process.py``) the sinks' rate limiters live in the child, while the
parent answers ``/metrics``. A :class:`RateBoard` is a block of shared memory the parent makes before it
spawns the child: per sink, the limiter's :class:`~traceexport.sinks.ratelimit.AimdState` (four numbers,
written by the child at start and on every throttle) behind a sequence number, so the parent never reads
half a write and no lock is shared between the processes. From that state the parent computes the rate at
the moment of the scrape itself, ramp included. In one process, the limiters are read directly.

The gauge ``traceexport_sink_rate_limit{sink}`` is the effective requests/s; ``+Inf`` means no limit.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.context import SpawnContext
from typing import Any

from traceexport.sinks.ratelimit import AimdState, RateLimiter

_FIELDS = 5  # sequence number (odd while a write is under way; 0: never written), then the AimdState
GAUGE = "traceexport_sink_rate_limit"
HELP = ("Effective requests/s the sink may send: its rate_limit, lowered after the backend throttled; "
        "+Inf when unlimited.")


class RateBoard:
    """One slot of shared memory per sink for its :class:`AimdState`; one writer per slot, any readers."""

    def __init__(self, context: SpawnContext, sinks: Sequence[str]) -> None:
        self._slots = {name: index * _FIELDS for index, name in enumerate(sinks)}
        self._values: Any = context.RawArray(ctypes.c_double, max(len(sinks), 1) * _FIELDS)

    def publish(self, sink: str, state: AimdState) -> None:
        """Write ``sink``'s state (from the one thread that owns its limiter); unknown sinks are ignored."""
        base = self._slots.get(sink)
        if base is None:
            return
        values = self._values
        sequence = values[base] + 1.0
        values[base] = sequence  # odd: a reader retries
        values[base + 1], values[base + 2] = state.anchor, state.since
        values[base + 3], values[base + 4] = state.target, state.top
        values[base] = sequence + 1.0

    def read(self, sink: str) -> AimdState | None:
        """``sink``'s last published state; None if none was (or a write kept overlapping the read)."""
        base = self._slots.get(sink)
        if base is None:
            return None
        values = self._values
        for _ in range(100):
            sequence = values[base]
            if sequence == 0.0:
                return None
            if sequence % 2.0:
                continue
            state = AimdState(values[base + 1], values[base + 2], values[base + 3], values[base + 4])
            if values[base] == sequence:
                return state
        return None


def rate_limit_lines(rates: Mapping[str, float], label_value: Callable[[str], str]) -> list[str]:
    """The rate-limit gauge in the Prometheus text format, one line per sink."""
    lines = [f"# HELP {GAUGE} {HELP}", f"# TYPE {GAUGE} gauge"]
    lines += [f'{GAUGE}{{sink="{label_value(sink)}"}} {_number(rate)}' for sink, rate in rates.items()]
    return lines


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def watch_all(board: RateBoard, limiters: Iterable[tuple[str, RateLimiter]]) -> None:
    """Publish each ``(sink, limiter)``'s state on ``board`` now and on every change."""
    for sink, limiter in limiters:
        limiter.watch(functools.partial(board.publish, sink))


__all__ = ["GAUGE", "RateBoard", "rate_limit_lines", "watch_all"]
