"""The last hour of each sink's figures, sampled in the daemon's memory for the console's plots and rates.

Every ``interval`` seconds a :class:`Sample` keeps, per sink, the acknowledged-records counter, the queue
depth and the bucket counts of the delivery and end-to-end latency histograms. Rates and windowed
latency quantiles are differences between the figures now and a sample ``window`` seconds ago (or the
oldest one, while the history is younger than the window). Nothing is written anywhere: a restart starts
the history afresh, the spool's own counters carry on.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from traceexport.pipeline import histograms
from traceexport.pipeline.histograms import Histogram

LATENCIES = {"delivery": histograms.DELIVERY, "e2e": histograms.E2E}


@dataclass(frozen=True, slots=True)
class SinkFigures:
    """One sink at one moment: what differences are taken of."""

    exported: int
    queue_depth: int
    buckets: dict[str, tuple[int, ...]]  # "delivery" / "e2e" -> histogram bucket counts


@dataclass(frozen=True, slots=True)
class Sample:
    """Every sink at one moment (epoch seconds)."""

    time: float
    sinks: dict[str, SinkFigures]


def figures_of(snapshot: Mapping[str, Any]) -> dict[str, SinkFigures]:
    """Each sink's figures from a pipeline snapshot taken ``with_histograms``."""
    stored: Mapping[str, Mapping[str, Histogram]] = snapshot.get("histograms") or {}
    out = {}
    for name, entry in snapshot["sinks"].items():
        per_metric = stored.get(name, {})
        buckets = {short: tuple(per_metric[metric].counts) if metric in per_metric else ()
                   for short, metric in LATENCIES.items()}
        out[name] = SinkFigures(int(entry.get("exported", 0)), int(entry.get("queue_depth", 0)), buckets)
    return out


def _delta(now: tuple[int, ...], then: tuple[int, ...]) -> Histogram:
    """The observations between two readings of one histogram (a reset counts from zero)."""
    histogram = Histogram()
    if now:
        grew = len(then) == len(now) and all(a >= b for a, b in zip(now, then, strict=True))
        base = then if grew else (0,) * len(now)
        histogram.counts = [a - b for a, b in zip(now, base, strict=True)]
    return histogram


def _quantiles(histogram: Histogram) -> dict[str, Any]:
    return {"p50_seconds": _round(histograms.quantile(0.5, histogram)),
            "p95_seconds": _round(histograms.quantile(0.95, histogram)), "count": histogram.count}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class History:
    """A ring of samples over ``span`` seconds, filled by a background thread (or :meth:`sample` in tests)."""

    def __init__(self, read: Callable[[], Mapping[str, Any]], *, interval: float = 5.0, span: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.interval = interval
        self._read = read
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=max(int(span / interval), 2) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- filling ---------------------------------------------------------------------------------
    def sample(self, snapshot: Mapping[str, Any] | None = None) -> Sample:
        """Take one sample now (from ``snapshot`` when given) and keep it."""
        taken = Sample(self._clock(), figures_of(snapshot if snapshot is not None else self._read()))
        with self._lock:
            self._samples.append(taken)
        return taken

    def start(self) -> None:
        """Sample now and then every ``interval`` seconds until :meth:`stop`."""
        self._safe_sample()
        self._thread = threading.Thread(target=self._run, name="traceexport-console-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._safe_sample()

    def _safe_sample(self) -> None:
        with contextlib.suppress(Exception):  # a spool busy or closing: the next sample tries again
            self.sample()

    # -- reading ---------------------------------------------------------------------------------
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def _baseline(self, now: float, window: float) -> Sample | None:
        """The oldest sample no older than ``window`` seconds (the oldest of all while the history is younger)."""
        candidates = [s for s in self.samples() if now - s.time <= window + self.interval / 2 and s.time < now]
        return candidates[0] if candidates else None

    def rate(self, sink: str, current: SinkFigures, window: float, now: float | None = None) -> float | None:
        """Records ``sink`` acknowledged per second over the last ``window`` seconds; None without a sample."""
        now = self._clock() if now is None else now
        base = self._baseline(now, window)
        if base is None or sink not in base.sinks or now <= base.time:
            return None
        done = current.exported - base.sinks[sink].exported
        return round(max(done, 0) / (now - base.time), 3)

    def latency(self, sink: str, current: SinkFigures, window: float,
                now: float | None = None) -> dict[str, dict[str, Any]] | None:
        """Delivery and e2e p50/p95 of what was acknowledged in the last ``window`` seconds; None without a
        sample to take the difference from."""
        now = self._clock() if now is None else now
        base = self._baseline(now, window)
        if base is None or sink not in base.sinks:
            return None
        then = base.sinks[sink].buckets
        return {short: _quantiles(_delta(current.buckets[short], then.get(short, ()))) for short in LATENCIES}

    def points(self) -> list[dict[str, Any]]:
        """The plot's points: per sample after the first, each sink's rate, queue depth and p95s since the
        sample before."""
        samples = self.samples()
        points = []
        for before, after in itertools.pairwise(samples):
            elapsed = after.time - before.time
            sinks = {}
            for name, now in after.sinks.items():
                then = before.sinks.get(name)
                if then is None or elapsed <= 0:
                    continue
                entry: dict[str, Any] = {"rate": round(max(now.exported - then.exported, 0) / elapsed, 3),
                                         "queue_depth": now.queue_depth}
                for short in LATENCIES:
                    entry[f"{short}_p95_seconds"] = _round(
                        histograms.quantile(0.95, _delta(now.buckets[short], then.buckets.get(short, ()))))
                sinks[name] = entry
            points.append({"time": round(after.time, 3), "sinks": sinks})
        return points


__all__ = ["History", "Sample", "SinkFigures", "figures_of"]
