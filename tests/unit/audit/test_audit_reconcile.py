"""Reconciliation against a real spool's ledger: missing, mismatched, dead-lettered, and the report's shapes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.unit.pipeline.pipeline_helpers import ScriptedSink, StandInMapping, make_records

from traceexport.audit import AuditReport, Expected, reconcile
from traceexport.audit.reconcile import CHUNK, EXIT_MISSING, EXIT_OK
from traceexport.audit.render import to_json, to_text
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.ledger import payload_hash
from traceexport.pipeline.ledger_reader import LedgerReader
from traceexport.records import Record

FAST = PipelineSettings(fsync=False, poll_interval=0.01)
DAY = "2026-12-05"


def _expected(records: Iterable[Record], sinks: Iterable[str] = ("a", "b")) -> Iterator[Expected]:
    for record in records:
        digest = payload_hash(StandInMapping().map(record))
        yield Expected(record.key, record.app_id, record.type, DAY, dict.fromkeys(sinks, digest))


def _reconcile(pipe: Pipeline, expected: Iterable[Expected]) -> AuditReport:
    with LedgerReader(pipe.spool) as reader:
        return reconcile(expected, reader)


@pytest.fixture
def delivered(tmp_path: Path) -> Iterator[tuple[Pipeline, list[Record]]]:
    """A spool whose two sinks a and b delivered four message records (app "app-1")."""
    pipe = Pipeline(tmp_path / "spool", [Route(ScriptedSink("a"), StandInMapping()),
                                         Route(ScriptedSink("b"), StandInMapping())], FAST)
    records = make_records(4, app_id="app-1")
    pipe.accept(records)
    for worker in pipe.workers:
        worker.step()
    yield pipe, records
    pipe.close()


def test_everything_acknowledged_exits_0(delivered: tuple[Pipeline, list[Record]]) -> None:
    """When every sink acknowledged every record with the hash it maps to, nothing is missing and the exit is 0."""
    pipe, records = delivered
    report = _reconcile(pipe, _expected(records))
    assert report.exit_code == EXIT_OK
    assert report.missing_count == report.mismatched_count == 0
    assert report.keys_to_fix() == {}
    assert list(report.groups) == [("a", "app-1", "message", DAY), ("b", "app-1", "message", DAY)]
    assert all((g.held, g.acknowledged) == (4, 4) for g in report.groups.values())


def test_a_removed_ledger_row_is_missing(delivered: tuple[Pipeline, list[Record]]) -> None:
    """A record with no ledger row for a sink is missing there (no dead-letter reason) and the exit is 3."""
    pipe, records = delivered
    with pipe.spool.transaction() as conn:
        conn.execute("DELETE FROM ledger WHERE sink = ? AND record_key = ?", (pipe.bits["b"], records[2].key))
    report = _reconcile(pipe, _expected(records))
    assert report.exit_code == EXIT_MISSING
    group = report.groups[("b", "app-1", "message", DAY)]
    assert (group.held, group.acknowledged, group.missing) == (4, 3, [(records[2].key, None)])
    assert report.groups[("a", "app-1", "message", DAY)].missing == []
    assert report.keys_to_fix() == {"b": {records[2].key}}


def test_a_changed_hash_is_mismatched(delivered: tuple[Pipeline, list[Record]]) -> None:
    """A record acknowledged with another payload hash than it maps to now is mismatched, not missing."""
    pipe, records = delivered
    expected = list(_expected(records))
    expected[1] = Expected(records[1].key, "app-1", "message", DAY, {"a": "0" * 16, "b": expected[1].hashes["b"]})
    report = _reconcile(pipe, expected)
    group = report.groups[("a", "app-1", "message", DAY)]
    assert (group.acknowledged, group.missing, group.mismatched) == (4, [], [records[1].key])
    assert report.exit_code == EXIT_MISSING
    assert report.missing_count == 0 and report.mismatched_count == 1
    assert report.keys_to_fix() == {"a": {records[1].key}}


def test_a_dead_lettered_record_is_missing_with_its_reason(tmp_path: Path) -> None:
    """A record the sink dead-lettered counts as not delivered, listed with the dead letter's reason."""
    records = make_records(3, app_id="app-1")
    pipe = Pipeline(tmp_path / "spool", [Route(ScriptedSink("a"), StandInMapping(bad=frozenset({records[0].key})))],
                    FAST)
    pipe.accept(records)
    pipe.workers[0].step()
    report = _reconcile(pipe, _expected(records, ["a"]))
    group = report.groups[("a", "app-1", "message", DAY)]
    assert group.missing == [(records[0].key, "stand-in mapping refuses this record")]
    assert group.acknowledged == 2
    pipe.close()


def test_a_sink_whose_route_skips_the_record_is_not_counted(delivered: tuple[Pipeline, list[Record]]) -> None:
    """A sink absent from a record's hashes (its route would not take it) holds nothing for that record."""
    pipe, records = delivered
    report = _reconcile(pipe, _expected(records[:1], ["a"]))
    assert list(report.groups) == [("a", "app-1", "message", DAY)]
    assert report.groups[("a", "app-1", "message", DAY)].held == 1


class CountingLedger:
    """A ledger that acknowledges every key with hash "h" and remembers the size of every lookup."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def acknowledged(self, sink_name: str, keys: Iterable[str], /) -> dict[str, tuple[str, int]]:
        keys = list(keys)
        self.sizes.append(len(keys))
        return {k: ("h", 0) for k in keys if not k.endswith("7")}

    def dead_letters(self, sink_name: str, keys: Iterable[str], /) -> dict[str, str]:
        keys = list(keys)
        self.sizes.append(len(keys))
        return {}


def test_input_is_streamed_in_chunks_with_batched_lookups() -> None:
    """A long stream is looked up at most CHUNK keys at a time, and only the problem keys are kept."""
    consumed = 0

    def stream() -> Iterator[Expected]:
        nonlocal consumed
        for i in range(2 * CHUNK + 7):
            consumed += 1
            yield Expected(f"k{i}", None, "workflow", DAY, {"s": "h"})

    ledger = CountingLedger()
    report = reconcile(stream(), ledger)
    assert consumed == 2 * CHUNK + 7
    assert max(ledger.sizes) <= CHUNK
    group = report.groups[("s", None, "workflow", DAY)]
    assert group.held == 2 * CHUNK + 7
    assert len(group.missing) == sum(1 for i in range(2 * CHUNK + 7) if str(i).endswith("7"))


def _report_with_problems(n_missing: int) -> AuditReport:
    class Ledger:
        def acknowledged(self, sink_name: str, keys: Iterable[str], /) -> dict[str, tuple[str, int]]:
            return {k: ("old", 5) for k in keys if k.startswith("changed")}

        def dead_letters(self, sink_name: str, keys: Iterable[str], /) -> dict[str, str]:
            return {k: "400 bad payload" for k in keys if k == "gone-0"}

    expected = [Expected(f"gone-{i}", "app-1", "message", DAY, {"opik": "new"}) for i in range(n_missing)]
    expected += [Expected("changed-1", None, "workflow", DAY, {"opik": "new"})]
    since, until = datetime(2026, 12, 5, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC)
    return reconcile(expected, Ledger(), since=since, until=until)


def test_text_lists_a_row_per_group_and_caps_the_keys() -> None:
    """The text has a summary, a table row per sink, app, type and day, and at most 20 keys per group."""
    text = to_text(_report_with_problems(25))
    lines = text.splitlines()
    assert lines[0] == ("audit 2026-12-05T00:00:00Z .. 2026-12-06T00:00:00Z: 26 record deliveries expected; "
                        "25 missing, 1 delivered with other content")
    assert lines[2].split() == ["sink", "app", "type", "day", "held", "acked", "missing", "mismatched"]
    assert lines[3].split() == ["opik", "-", "workflow", DAY, "1", "1", "0", "1"]
    assert lines[4].split() == ["opik", "app-1", "message", DAY, "25", "0", "25", "0"]
    assert "delivered with other content to opik (app -, workflow, 2026-12-05):" in lines
    assert "  changed-1" in lines
    assert "missing from opik (app app-1, message, 2026-12-05):" in lines
    assert "  gone-0  dead-lettered: 400 bad payload" in lines
    assert "  … and 5 more" in lines
    assert sum(1 for line in lines if line.startswith("  gone-")) == 20


def test_text_of_a_clean_audit_says_nothing_is_missing() -> None:
    """An audit that found nothing wrong says so on its first line and lists no keys."""
    report = reconcile([Expected("k", "a", "tool", DAY, {"s": "h"})], CountingLedger())
    assert to_text(report).splitlines()[0] == "audit: 1 record deliveries expected; nothing missing"
    assert "missing from" not in to_text(report)


def test_json_holds_everything() -> None:
    """to_json gives the window, exit code, totals and every group with all of its problem keys."""
    data = json.loads(json.dumps(to_json(_report_with_problems(25))))
    assert data["since"] == "2026-12-05T00:00:00Z" and data["until"] == "2026-12-06T00:00:00Z"
    assert data["exit_code"] == 3
    assert data["totals"] == {"held": 26, "acknowledged": 1, "missing": 25, "mismatched": 1}
    first, second = data["groups"]
    assert first == {"sink": "opik", "app_id": None, "type": "workflow", "day": DAY, "held": 1, "acknowledged": 1,
                     "missing_count": 0, "mismatched_count": 1, "missing": [], "mismatched": ["changed-1"]}
    assert second["missing_count"] == len(second["missing"]) == 25
    assert second["missing"][0] == {"record_key": "gone-0", "dead_letter_reason": "400 bad payload"}
    assert second["missing"][1] == {"record_key": "gone-1", "dead_letter_reason": None}


def test_gauge_data_is_per_sink_and_type() -> None:
    """by_sink_type sums missing and mismatched over apps and days, per sink and type."""
    assert _report_with_problems(3).by_sink_type() == {("opik", "workflow"): (0, 1), ("opik", "message"): (3, 0)}


def _keys(value: object) -> object:
    """The key structure of a JSON value: objects by their keys, lists by their first item."""
    if isinstance(value, dict):
        return {key: _keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return None


def test_the_readme_documents_the_json_shape() -> None:
    """The `audit --json` example in the README has exactly the keys to_json gives, at every level, so the shape
    scripts rely on is written down and cannot drift from the code."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("`--json` prints the same report as one object"):]
    documented = json.loads(section[section.index("```json\n") + 8:section.index("\n```", section.index("```json"))])
    actual = json.loads(json.dumps(to_json(_report_with_problems(1))))
    actual["groups"] = [g for g in actual["groups"] if g["missing"]]
    assert _keys(documented) == _keys(actual)
