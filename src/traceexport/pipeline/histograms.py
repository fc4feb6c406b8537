"""Latency and request histograms per sink: gathered per batch in memory, added up in the spool.

A batch's :class:`Observations` (each delivered record's end-to-end and delivery latency, each request's
duration and outcome) are added to the spool's ``counters`` rows in the transaction that commits the
batch (:func:`counter_increments`): per sink, ``<metric>:<upper bound>`` counts per bucket,
``<metric>:sum_us`` the sum in microseconds, and ``requests_<outcome>``. The counters table's pages are
written by that commit anyway, so this costs no extra page in the write-ahead log; and whichever
process delivers, the process serving ``/metrics`` reads the same totals, which survive restarts as
Prometheus counters should.

Buckets resolve 5 ms to one hour, finer around the targets of 1 s (delivery) and 5 s (end to end)
(:data:`BOUNDS`; counts stored under a bound no longer listed join the next listed one up);
:func:`quantile` estimates a quantile from them the way Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from traceexport.sinks.request_meter import OUTCOMES

# Upper bounds in seconds; a last bucket (+Inf) takes the rest.
BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5,
                             10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
E2E = "e2e_latency_seconds"
DELIVERY = "delivery_latency_seconds"
REQUEST = "request_duration_seconds"
HELP = {
    E2E: "Seconds from a record's end time in Dify to the sink's acknowledgement.",
    DELIVERY: "Seconds from a record's acceptance into the spool to the sink's acknowledgement.",
    REQUEST: "Seconds each request to the sink's backend took, answered or not.",
}
METRICS = tuple(HELP)
REQUEST_COUNTERS = {outcome: f"requests_{outcome}" for outcome in OUTCOMES}

class Histogram:
    """Counts per bucket of :data:`BOUNDS` (the last one is +Inf) and the sum of what was observed."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0  # the sum of the observations

    def add(self, seconds: float) -> None:
        """One observation (negative ones, from clocks that disagree, count as 0)."""
        seconds = max(seconds, 0.0)
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """Observations in all buckets."""
        return sum(self.counts)


class Observations:
    """What one batch adds to the histograms and request counters (used by one thread)."""

    __slots__ = ("histograms", "requests")

    def __init__(self) -> None:
        self.histograms: dict[str, Histogram] = {}
        self.requests: dict[str, int] = {}

    def add(self, metric: str, seconds: float) -> None:
        """One observation of ``metric``."""
        histogram = self.histograms.get(metric)
        if histogram is None:
            histogram = self.histograms[metric] = Histogram()
        histogram.add(seconds)

    def acknowledged(self, received: float, end: float | None, at: float) -> None:
        """A record accepted at ``received`` (ended in Dify at ``end``) was acknowledged ``at``."""
        self.add(DELIVERY, at - received)
        if end is not None:
            self.add(E2E, at - end)

    def request(self, seconds: float, outcome: str) -> None:
        """One request (the sinks' meter, see :mod:`traceexport.sinks.request_meter`)."""
        self.add(REQUEST, seconds)
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.histograms or self.requests)


def counter_increments(sink: str, observations: Observations) -> Iterator[tuple[str, str, int]]:
    """``(sink, counter, increment)`` rows adding ``observations`` to the spool's counters."""
    for metric, histogram in observations.histograms.items():
        for bound, n in zip(_LABELS, histogram.counts, strict=True):
            if n:
                yield sink, f"{metric}:{bound}", n
        yield sink, f"{metric}:sum_us", round(histogram.total * 1e6)
    for outcome, n in observations.requests.items():
        yield sink, REQUEST_COUNTERS[outcome], n


def from_counters(counters: Mapping[str, int]) -> dict[str, Histogram]:
    """One sink's histograms from its stored counters (the other counters are ignored)."""
    out: dict[str, Histogram] = {}
    for name, value in counters.items():
        metric, sep, part = name.partition(":")
        if not sep or metric not in HELP:
            continue
        histogram = out.get(metric)
        if histogram is None:
            histogram = out[metric] = Histogram()
        if part == "sum_us":
            histogram.total = value / 1e6
            continue
        try:
            bound = float(part)
        except ValueError:
            continue
        histogram.counts[bisect.bisect_left(BOUNDS, bound)] += int(value)
    return out


def quantile(q: float, histogram: Histogram) -> float | None:
    """The ``q`` quantile estimated as Prometheus does (linear within a bucket; the highest finite bound
    when it falls in +Inf); None without observations."""
    total = histogram.count
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram.counts):
        if count and seen + count >= rank:
            if index == len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[index - 1] if index else 0.0
            return lower + (BOUNDS[index] - lower) * (rank - seen) / count
        seen += count
    return BOUNDS[-1]


def summary(histograms: Mapping[str, Histogram]) -> dict[str, Any]:
    """p50 and p95 of every metric, plus the count (``status`` and the hook's ``stats()``)."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        histogram = histograms.get(metric)
        if histogram is None:
            continue
        name = metric.removesuffix("_seconds")
        out[name] = {"count": histogram.count,
                     "p50_seconds": _round(quantile(0.5, histogram)),
                     "p95_seconds": _round(quantile(0.95, histogram))}
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def prometheus_lines(metric: str, per_sink: Iterable[tuple[str, Histogram | None]],
                     label: Callable[[str], str], prefix: str = "") -> list[str]:
    """``traceexport_<prefix><metric>`` as a Prometheus histogram, one series set per sink (``label`` escapes
    a label value)."""
    name = f"traceexport_{prefix}{metric}"
    what = "The Dify hook's pipelines: " + HELP[metric][0].lower() + HELP[metric][1:] if prefix else HELP[metric]
    lines = [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
    for sink, histogram in per_sink:
        histogram = histogram or Histogram()
        sink_label = f'sink="{label(sink)}"'
        cumulative = 0
        for bound, count in zip((*BOUNDS, math.inf), histogram.counts, strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{{sink_label},le="{_le(bound)}"}} {cumulative}')
        lines.append(f"{name}_sum{{{sink_label}}} {_number(histogram.total)}")
        lines.append(f"{name}_count{{{sink_label}}} {cumulative}")
    return lines


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


_LABELS = tuple(_le(b) for b in (*BOUNDS, math.inf))  # the le label of each bucket, as stored too


def _number(value: float) -> str:
    return repr(round(value, 6))
