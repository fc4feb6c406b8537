"""Workflow node spans in every backend's payload, enriched from a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import NODE_ROWS
from tests.support.postgres_server import create_node_table, insert_rows, running_or_skip

from traceexport.enrich import build_enricher
from traceexport.mapping import load_mapping
from traceexport.mapping.ids import span_id_hex, uuid7_from
from traceexport.records import Record, record_from_obj

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).parents[1] / "data" / "samples"
RUN_ID = "23118a95-bb79-41c1-b825-bab6ba022cbc"
LLM_ROW = "5622ec1a-51ad-41e6-a698-aaef14f29c25"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A throwaway PostgreSQL holding sample 01's node rows."""
    with running_or_skip() as server:
        with server.admin() as conn:
            create_node_table(conn)
            insert_rows(conn, json.loads((NODE_ROWS / "01-workflow-ok.node_executions.json").read_text("utf-8")))
        yield server.url()


@pytest.fixture(scope="module")
def enriched(database_url: str) -> Record:
    """Sample 01, enriched from its node rows."""
    record = record_from_obj(json.loads((SAMPLES / "01-workflow-ok.json").read_text("utf-8")))
    enricher = build_enricher({"database_url": database_url}, environ={},
                              now=lambda: record.data["derived"]["end"])
    try:
        assert enricher(record) is None
    finally:
        enricher.close()
    return record


def test_export_reads_node_rows_from_the_database_url(database_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`export` honours TRACEEXPORT_DIFY_DATABASE_URL as serve and replay do: the workflow gets its node spans."""
    from traceexport.cli import main

    monkeypatch.setenv("TRACEEXPORT_DIFY_DATABASE_URL", database_url)
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    code = main(["export", "--to", "file", "--spool", str(tmp_path / "spool"), "--timeout", "60",
                 str(SAMPLES / "01-workflow-ok.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    spans = [json.loads(line) for line in (tmp_path / "out" / "otlp.jsonl").read_text().splitlines()]
    assert len(spans) == 6  # the run and its five nodes
    assert database_url.split("@")[0].split(":")[-1] not in err  # the password never shows


def _spans(backend: str, record: Record) -> list[dict[str, Any]]:
    return [p.body for p in load_mapping(backend).map(record)]


@pytest.mark.parametrize("backend", ["otlp", "langfuse"])
def test_otlp_and_langfuse_get_a_span_tree(enriched: Record, backend: str) -> None:
    """The workflow root span has the five node spans as children, the LLM node with model, tokens and cost."""
    spans = _spans(backend, enriched)
    root = spans[0]
    assert root["spanId"] == span_id_hex(RUN_ID, "workflow")
    nodes = spans[1:]
    assert len(nodes) == 5
    assert all(n["parentSpanId"] == root["spanId"] and n["traceId"] == root["traceId"] for n in nodes)
    kinds = [n["attributes"]["openinference.span.kind"] for n in nodes]
    assert kinds == ["CHAIN", "RETRIEVER", "LLM", "TOOL", "CHAIN"]
    llm = nodes[2]
    assert llm["name"] == "chat gpt-4o-mini"
    assert llm["attributes"]["llm.token_count.prompt"] == 1590
    assert llm["attributes"]["gen_ai.usage.output_tokens"] == 283
    assert llm["attributes"]["llm.cost.total"] == pytest.approx(0.0004083)
    assert llm["startTimeUnixNano"] < llm["endTimeUnixNano"]
    if backend == "langfuse":
        assert llm["attributes"]["langfuse.observation.type"] == "generation"
        assert all(n["attributes"]["langfuse.user.id"] for n in nodes)


def test_opik_gets_node_spans_under_the_root_span(enriched: Record) -> None:
    """Opik receives the trace, the root span and five node spans parented to it, all UUIDv7."""
    bodies = _spans("opik", enriched)
    trace, root, nodes = bodies[0], bodies[1], bodies[2:]
    assert len(nodes) == 5
    anchor = enriched.data["derived"]["anchor_time"]
    assert root["id"] == uuid7_from(RUN_ID, anchor, "workflow")
    assert all(n["parent_span_id"] == root["id"] and n["trace_id"] == trace["id"] for n in nodes)
    assert all(uuid.UUID(n["id"]).version == 7 for n in nodes)
    llm = next(n for n in nodes if n["type"] == "llm")
    assert (llm["model"], llm["provider"]) == ("gpt-4o-mini", "openai")
    assert llm["usage"] == {"prompt_tokens": 1590, "completion_tokens": 283, "total_tokens": 1873}
    assert llm["total_estimated_cost"] == pytest.approx(0.0004083)
    assert root["usage"] == {}  # tokens sit on the node spans, not twice


def test_amplitude_node_events_are_one_switch_away(enriched: Record) -> None:
    """Amplitude sends one run event by default, plus one event per LLM/tool node when node_events is on."""
    assert [e["event_type"] for e in _spans("amplitude", enriched)] == ["Dify Workflow Run"]
    events = [p.body for p in load_mapping("amplitude", options={"node_events": True}).map(enriched)]
    node_events = [e for e in events if e["event_type"] == "Dify Workflow Node"]
    assert [e["event_properties"]["node_kind"] for e in node_events] == ["llm", "tool"]
    llm = node_events[0]["event_properties"]
    assert (llm["model"], llm["input_tokens"], llm["cost"]) == ("gpt-4o-mini", 1590, pytest.approx(0.0004083))
    assert len({e["insert_id"] for e in events}) == len(events)
