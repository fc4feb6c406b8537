"""An :class:`~traceexport.audit.reconcile.AuditReport` as a plain text table, and as JSON.

Text: one summary line, a table with one row per (sink, app, type, day) (held, acked, missing,
mismatched), then the problem keys of each group, at most ``limit`` per group ("… and N more").

JSON (:func:`to_json`), everything, no key left out::

    {"since": "2026-12-05T00:00:00Z" | null, "until": ... | null, "exit_code": 0 | 3,
     "totals": {"held": n, "acknowledged": n, "missing": n, "mismatched": n},
     "groups": [{"sink": "opik", "app_id": "..." | null, "type": "message", "day": "2026-12-05",
                 "held": n, "acknowledged": n, "missing_count": n, "mismatched_count": n,
                 "missing": [{"record_key": "...", "dead_letter_reason": "..." | null}],
                 "mismatched": ["record key", ...]}]}

``acknowledged`` includes the mismatched records; ``held`` = ``acknowledged`` + ``missing_count``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from traceexport.audit.reconcile import AuditReport, Group, GroupKey

LIST_LIMIT = 20  # problem keys listed per group in text
_HEADER = ("sink", "app", "type", "day", "held", "acked", "missing", "mismatched")


def to_text(report: AuditReport, limit: int = LIST_LIMIT) -> str:
    """The report as a table plus the listed problem keys (at most ``limit`` per group)."""
    lines = [_summary(report)]
    if report.groups:
        lines += ["", *_table(report)]
    for key, group in report.groups.items():
        where = _where(key)
        if group.missing:
            lines += ["", f"missing from {where}:"]
            lines += _capped([f"  {k}" + (f"  dead-lettered: {r}" if r else "") for k, r in group.missing], limit)
        if group.mismatched:
            lines += ["", f"delivered with other content to {where}:"]
            lines += _capped([f"  {k}" for k in group.mismatched], limit)
    return "\n".join(lines) + "\n"


def to_json(report: AuditReport) -> dict[str, Any]:
    """Everything in the report, JSON-compatible (the shape is in this module's docstring)."""
    groups = [_group_json(key, group) for key, group in report.groups.items()]
    return {
        "since": _iso(report.since), "until": _iso(report.until), "exit_code": report.exit_code,
        "totals": {"held": sum(g["held"] for g in groups), "acknowledged": sum(g["acknowledged"] for g in groups),
                   "missing": report.missing_count, "mismatched": report.mismatched_count},
        "groups": groups,
    }


def _group_json(key: GroupKey, group: Group) -> dict[str, Any]:
    sink, app_id, kind, day = key
    return {"sink": sink, "app_id": app_id, "type": kind, "day": day, "held": group.held,
            "acknowledged": group.acknowledged, "missing_count": len(group.missing),
            "mismatched_count": len(group.mismatched),
            "missing": [{"record_key": k, "dead_letter_reason": r} for k, r in group.missing],
            "mismatched": list(group.mismatched)}


def _summary(report: AuditReport) -> str:
    held = sum(g.held for g in report.groups.values())
    window = (f" {_iso(report.since) or '…'} .. {_iso(report.until) or '…'}"
              if report.since is not None or report.until is not None else "")
    verdict = (f"{report.missing_count:,} missing, {report.mismatched_count:,} delivered with other content"
               if report.exit_code else "nothing missing")
    return f"audit{window}: {held:,} record deliveries expected; {verdict}"


def _table(report: AuditReport) -> list[str]:
    rows = [_HEADER] + [
        (sink, app_id or "-", kind, day, f"{g.held:,}", f"{g.acknowledged:,}", f"{len(g.missing):,}",
         f"{len(g.mismatched):,}") for (sink, app_id, kind, day), g in report.groups.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    text = []
    for row in rows:  # names left-aligned, numbers right-aligned
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        text.append("  ".join(cells).rstrip())
    return text


def _where(key: GroupKey) -> str:
    sink, app_id, kind, day = key
    return f"{sink} (app {app_id or '-'}, {kind}, {day})"


def _capped(lines: list[str], limit: int) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  … and {len(lines) - limit:,} more"]


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"
