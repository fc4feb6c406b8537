"""Reconciliation: the records Dify holds against what each sink acknowledged, per app, type and day.

:func:`reconcile` reads the expected records as a stream, :data:`CHUNK` at a time, and asks the ledger
about each chunk in one batched lookup per sink, so memory stays constant apart from the keys it
reports (missing or mismatched). Per (sink, app, type, day) a :class:`Group` counts:

* ``held``: the records Dify holds that the sink's route takes (a sink absent from a record's
  ``hashes`` is not counted for it);
* ``acknowledged``: those in the sink's ledger, mismatched ones included;
* ``missing``: the rest, each with the reason of the sink's dead letter when it has one (dead-lettered
  records count as not delivered), else None;
* ``mismatched``: acknowledged with a payload hash other than the one the record maps to now.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from traceexport.chunked import chunked

CHUNK = 500  # expected records looked up together (the ledger reader's chunk size)
EXIT_OK = 0
EXIT_MISSING = 3  # something is missing or was delivered with other content


@dataclass(frozen=True, slots=True)
class Expected:
    """One record as Dify's database has it: its key, app, type, UTC day (YYYY-MM-DD), and per sink the
    payload hash (:func:`traceexport.pipeline.ledger.payload_hash`) that sink's mapping gives it now."""

    record_key: str
    app_id: str | None
    type: str
    day: str
    hashes: dict[str, str]


class Ledger(Protocol):
    """The lookups the audit needs (:class:`traceexport.pipeline.ledger_reader.LedgerReader`, or a fake)."""

    def acknowledged(self, sink_name: str, keys: Iterable[str], /) -> dict[str, tuple[str, int]]:
        """``{record_key: (hash_hex, acked_at)}`` for the keys the sink acknowledged."""
        ...

    def dead_letters(self, sink_name: str, keys: Iterable[str], /) -> dict[str, str]:
        """``{record_key: reason}`` for the keys in the sink's dead letter."""
        ...


GroupKey = tuple[str, str | None, str, str]  # sink, app_id, type, day


@dataclass(slots=True)
class Group:
    """The figures of one (sink, app, type, day) and its problem keys."""

    held: int = 0
    acknowledged: int = 0
    missing: list[tuple[str, str | None]] = field(default_factory=list)  # (record key, dead-letter reason)
    mismatched: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AuditReport:
    """What an audit found; ``groups`` ordered by sink, app, type and day once :func:`reconcile` returns."""

    groups: dict[GroupKey, Group] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None

    @property
    def missing_count(self) -> int:
        """Records some sink should have and did not acknowledge (counted once per sink)."""
        return sum(len(g.missing) for g in self.groups.values())

    @property
    def mismatched_count(self) -> int:
        """Records some sink acknowledged with other content than they map to now (once per sink)."""
        return sum(len(g.mismatched) for g in self.groups.values())

    @property
    def exit_code(self) -> int:
        """0 when nothing is missing or mismatched, else 3."""
        return EXIT_MISSING if self.missing_count or self.mismatched_count else EXIT_OK

    def keys_to_fix(self) -> dict[str, set[str]]:
        """Per sink, the record keys to send again (missing and mismatched); sinks with none are left out."""
        out: dict[str, set[str]] = {}
        for (sink, *_), group in self.groups.items():
            keys = {key for key, _ in group.missing} | set(group.mismatched)
            if keys:
                out.setdefault(sink, set()).update(keys)
        return out

    def by_sink_type(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``{(sink, type): (missing, mismatched)}`` for every sink and type the audit held records of:
        the data of the ``traceexport_audit_*`` gauges."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for (sink, _, kind, _), group in self.groups.items():
            missing, mismatched = out.get((sink, kind), (0, 0))
            out[(sink, kind)] = (missing + len(group.missing), mismatched + len(group.mismatched))
        return out


def reconcile(expected: Iterable[Expected], ledger: Ledger, *, since: datetime | None = None,
              until: datetime | None = None) -> AuditReport:
    """Compare ``expected`` (streamed; each record once) with ``ledger``; ``since``/``until`` are only
    carried into the report, for its reader."""
    report = AuditReport(since=since, until=until)
    for chunk in chunked(expected, CHUNK):
        for sink in sorted({sink for record in chunk for sink in record.hashes}):
            _check(report, sink, [r for r in chunk if sink in r.hashes], ledger)
    report.groups = dict(sorted(report.groups.items(), key=lambda item: _order(item[0])))
    return report


def _check(report: AuditReport, sink: str, records: list[Expected], ledger: Ledger) -> None:
    """Count one chunk's records for one sink."""
    acked = ledger.acknowledged(sink, [r.record_key for r in records])
    absent = [r.record_key for r in records if r.record_key not in acked]
    reasons = ledger.dead_letters(sink, absent) if absent else {}
    for record in records:
        group = report.groups.get((sink, record.app_id, record.type, record.day))
        if group is None:
            group = report.groups[(sink, record.app_id, record.type, record.day)] = Group()
        group.held += 1
        found = acked.get(record.record_key)
        if found is None:
            group.missing.append((record.record_key, reasons.get(record.record_key)))
            continue
        group.acknowledged += 1
        if found[0] != record.hashes[sink]:
            group.mismatched.append(record.record_key)


def _order(key: GroupKey) -> tuple[str, str, str, str]:
    sink, app_id, kind, day = key
    return sink, app_id or "", kind, day
