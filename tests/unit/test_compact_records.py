"""The compact normalised form a delivery process reads instead of parsing the envelope again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tests.golden.goldens import CASES

from traceexport.mapping import BACKENDS, load_mapping
from traceexport.records import Record, parse_records, record_from_obj
from traceexport.records.compact import FORMAT, compact_bytes, record_from_compact

ENTERPRISE = [
    {"app_id": "a", "trace_info_type": "WorkflowNodeTraceInfo", "trace_info": {
        "metadata": {}, "workflow_id": "w", "workflow_run_id": "23118a95-bb79-41c1-b825-bab6ba022cbc",
        "tenant_id": "t", "node_execution_id": "n-1", "node_id": "1", "node_type": "llm", "title": "LLM",
        "status": "succeeded", "elapsed_time": 1.5, "index": 1, "start_time": "2026-03-14T09:21:08"}},
    {"app_id": "a", "trace_info_type": "PromptGenerationTraceInfo", "trace_info": {
        "metadata": {}, "tenant_id": "t", "operation_type": "rule_generate", "instruction": "x",
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "model_name": "gpt-4o",
        "model_provider": "openai", "latency": 0.5, "start_time": "2026-03-14T09:21:08"}},
]


def _records(case: Path) -> list[Record]:
    records = [r for r in parse_records(case.read_bytes(), case.name)]
    assert all(isinstance(r, Record) for r in records)
    return records  # type: ignore[return-value]


def _payloads(backend: str, record: Record) -> list[tuple[str, str, object]]:
    return [(p.kind, p.key, p.body) for p in load_mapping(backend).map(record)]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_compact_form_maps_exactly_like_the_parsed_record(case: Path) -> None:
    """Every golden case read back from its compact form has equal data and maps to equal payloads."""
    for record in _records(case):
        back = record_from_compact(compact_bytes(record), record.envelope_text())
        assert back is not None and back.type == record.type and back.app_id == record.app_id
        assert back.data == record.data and back.key == record.key
        for backend in BACKENDS:
            assert _payloads(backend, back) == _payloads(backend, record), backend


def test_enterprise_records_keep_their_node_times() -> None:
    """Workflow-node and prompt-generation records (datetimes inside derived.nodes) round-trip too."""
    for envelope in ENTERPRISE:
        record = record_from_obj(envelope)
        back = record_from_compact(compact_bytes(record), record.envelope_text())
        assert back is not None and back.data == record.data
        assert _payloads("otlp", back) == _payloads("otlp", record)


def test_not_a_number_survives_the_round_trip() -> None:
    """A NaN in a record (Python's json writes them) comes back as NaN, not as null."""
    record = record_from_obj(ENTERPRISE[0])
    record.data["metadata"]["score"] = float("nan")
    back = record_from_compact(compact_bytes(record), record.envelope_text())
    assert back is not None and math.isnan(back.data["metadata"]["score"])


def test_a_form_from_another_version_or_damaged_is_not_used() -> None:
    """Another traceexport version's form, or bytes that are not the form, give None: the caller parses."""
    record = record_from_obj(ENTERPRISE[1])
    blob = compact_bytes(record)
    assert record_from_compact(blob.replace(FORMAT.encode(), b"traceexport-compact/1/0.0.0"), "{}") is None
    assert record_from_compact(b"\x00not json", "{}") is None
    assert record_from_compact(b'{"format": "%s", "type": "tool"}' % FORMAT.encode(), "{}") is None


def test_the_envelope_of_a_compact_record_is_read_only_when_asked_for() -> None:
    """A record read back from its compact form parses its envelope text lazily, and equals the original."""
    record = record_from_obj(ENTERPRISE[1])
    back = record_from_compact(compact_bytes(record), record.envelope_text())
    assert back is not None and back.raw == record.envelope_text()
    assert back.envelope == record.envelope
