"""Counters and gauges of a spool, as a dict and as Prometheus text.

The text format is written by hand: it is a handful of series with one label, the format is stable
and line-based, and it spares the daemon a dependency (prometheus_client) and its global registry.
"""

from __future__ import annotations

import time
from typing import Any

from traceexport.pipeline.spool import COUNTER_NAMES, Spool

_HELP = {
    "accepted": "Records accepted into the spool for this sink.",
    "exported": "Records the sink's backend accepted.",
    "retried": "Failed delivery attempts scheduled for another try.",
    "deferred": "Records the enricher asked to wait for.",
    "dead_lettered": "Records moved to the dead letter.",
    "dropped": "Records dropped by the drop_oldest spool policy.",
    "skipped": "Records whose mapping produced nothing to send.",
    "replayed": "Dead letters moved back to the queue.",
}


def snapshot(spool: Spool, sinks: list[str] | None = None, now: float | None = None) -> dict[str, Any]:
    """Counters per sink plus ``queue_depth`` and ``oldest_pending_age_seconds``; and spool totals."""
    now = time.time() if now is None else now
    counters = spool.counters()
    names = sinks if sinks is not None else sorted(counters)
    out: dict[str, Any] = {"spool": str(spool.dir), "spool_bytes": spool.used_bytes(),
                           "records": spool.record_count(), "dead_letters": _dead_counts(spool), "sinks": {}}
    for name in names:
        depth, oldest = spool.backlog(name)
        entry: dict[str, Any] = dict(counters.get(name, dict.fromkeys(COUNTER_NAMES, 0)))
        entry["queue_depth"] = depth
        entry["oldest_pending_age_seconds"] = round(now - oldest, 3) if oldest is not None else 0.0
        out["sinks"][name] = entry
    return out


def _dead_counts(spool: Spool) -> dict[str, int]:
    rows = spool.conn().execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink").fetchall()
    return {sink: int(n) for sink, n in rows}


def prometheus_text(snap: dict[str, Any]) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    sinks: dict[str, dict[str, Any]] = snap["sinks"]
    for name in COUNTER_NAMES:
        metric = f"traceexport_records_{name}_total"
        lines += [f"# HELP {metric} {_HELP[name]}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{sink="{label_value(s)}"}} {v[name]}' for s, v in sinks.items()]
    gauges = {"queue_depth": ("traceexport_queue_depth", "Records pending for the sink."),
              "oldest_pending_age_seconds": ("traceexport_oldest_pending_age_seconds",
                                             "Age of the oldest record pending for the sink.")}
    for key, (metric, text) in gauges.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{sink="{label_value(s)}"}} {v[key]}' for s, v in sinks.items()]
    lines += ["# HELP traceexport_dead_letters Entries in the dead letter.",
              "# TYPE traceexport_dead_letters gauge"]
    lines += [f'traceexport_dead_letters{{sink="{label_value(s)}"}} {n}' for s, n in snap["dead_letters"].items()]
    lines += ["# HELP traceexport_spool_bytes Bytes the spool takes: pages in use, write-ahead log and its index.",
              "# TYPE traceexport_spool_bytes gauge", f"traceexport_spool_bytes {snap['spool_bytes']}"]
    return "\n".join(lines) + "\n"


def label_value(value: str) -> str:
    """``value`` escaped for a label in the Prometheus text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
