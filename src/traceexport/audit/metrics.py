"""The last audit as Prometheus gauges, appended to the daemon's ``/metrics`` once an audit has run.

* ``traceexport_audit_missing{sink,type}``: records Dify holds that the sink did not acknowledge
  (dead-lettered ones included);
* ``traceexport_audit_mismatched{sink,type}``: records the sink acknowledged with other content than
  they map to now;
* ``traceexport_audit_last_run_timestamp_seconds``: when the last audit finished.

Two series rather than one sum: "never arrived" and "arrived different" call for different looks
(a backfill fixes both). Every sink and type the audit held records of has a series, 0 included, so
an alert can tell "nothing missing" from "not audited".
"""

from __future__ import annotations

from traceexport.audit.reconcile import AuditReport
from traceexport.pipeline.metrics import label_value

_GAUGES = (
    ("traceexport_audit_missing", "Records Dify holds that the sink has not acknowledged (dead-lettered "
                                  "included), at the last audit."),
    ("traceexport_audit_mismatched", "Records the sink acknowledged with other content than they map to now, "
                                     "at the last audit."),
)


def prometheus_text(report: AuditReport, finished_at: float) -> str:
    """The report's gauges and the time it finished (Unix seconds), in the text exposition format 0.0.4."""
    figures = report.by_sink_type()
    lines: list[str] = []
    for index, (metric, text) in enumerate(_GAUGES):
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{sink="{label_value(sink)}",type="{label_value(kind)}"}} {values[index]}'
                  for (sink, kind), values in sorted(figures.items())]
    metric = "traceexport_audit_last_run_timestamp_seconds"
    lines += [f"# HELP {metric} When the last audit finished (Unix time).", f"# TYPE {metric} gauge",
              f"{metric} {finished_at:.3f}"]
    return "\n".join(lines) + "\n"
