"""Workflow node executions → normalised node dicts and the iteration/loop tree (records/nodes.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import NODE_ROWS

from traceexport.records import record_from_trace_info
from traceexport.records.nodes import (
    node_from_ee_record,
    node_from_row,
    node_kind,
    nodes_from_rows,
    parse_json_field,
)

SAMPLE = NODE_ROWS / "01-workflow-ok.node_executions.json"


@pytest.fixture
def sample_rows() -> list[dict[str, Any]]:
    """The five node rows of sample 01 (JSON string columns, naive UTC times)."""
    return list(json.loads(SAMPLE.read_text(encoding="utf-8")))


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "row-1",
        "node_execution_id": "exec-1",
        "node_id": "n1",
        "node_type": "if-else",
        "title": "Branch",
        "index": 1,
        "status": "succeeded",
        "error": None,
        "elapsed_time": 0.5,
        "created_at": "2026-03-14T09:00:00",
        "finished_at": "2026-03-14T09:00:00.500000",
        "inputs": None,
        "outputs": None,
        "process_data": None,
        "execution_metadata": None,
        "predecessor_node_id": None,
    }
    row.update(overrides)
    return row


def test_sample_rows_become_five_nodes_of_the_right_kinds(sample_rows: list[dict[str, Any]]) -> None:
    """Sample 01 yields start, retriever, llm, code and end nodes in execution order with their kinds."""
    nodes = nodes_from_rows(reversed(sample_rows))
    assert [n["node_type"] for n in nodes] == ["start", "knowledge-retrieval", "llm", "code", "end"]
    assert [n["kind"] for n in nodes] == ["chain", "retriever", "llm", "tool", "chain"]
    assert [n["index"] for n in nodes] == [1, 2, 3, 4, 5]
    assert all(n["parent_id"] is None and not n["failed"] and n["error"] is None for n in nodes)


def test_llm_node_has_model_provider_tokens_cost_and_prompts(sample_rows: list[dict[str, Any]]) -> None:
    """The llm node carries model, short provider, tokens 1590/283/1873, cost 0.0004083 USD and prompts."""
    llm = nodes_from_rows(sample_rows)[2]
    assert (llm["model"], llm["provider"], llm["provider_id"]) == (
        "gpt-4o-mini",
        "openai",
        "langgenius/openai/openai",
    )
    assert (llm["input_tokens"], llm["output_tokens"], llm["total_tokens"]) == (1590, 283, 1873)
    assert llm["cost"] == pytest.approx(0.0004083) and isinstance(llm["cost"], float)
    assert llm["currency"] == "USD"
    assert llm["model_mode"] == "chat" and llm["finish_reason"] == "stop"
    assert [p["role"] for p in llm["prompts"]] == ["system", "user"]
    assert llm["outputs"]["text"].startswith("• 服务范围")


def test_times_are_aware_utc_and_end_is_created_plus_elapsed(sample_rows: list[dict[str, Any]]) -> None:
    """start is created_at as UTC, end is created_at + elapsed_time, with ns and ms forms agreeing."""
    llm = nodes_from_rows(sample_rows)[2]
    start = datetime(2026, 3, 14, 9, 21, 8, 79225, tzinfo=UTC)
    assert llm["start"] == start
    assert llm["end"] == start + timedelta(seconds=3.604519)
    assert llm["duration_ms"] == pytest.approx(3604.519)
    assert llm["end_ns"] - llm["start_ns"] == 3_604_519_000
    assert llm["start_ns"] == int(start.timestamp()) * 1_000_000_000 + 79_225_000


def test_retriever_documents_come_from_outputs_result(sample_rows: list[dict[str, Any]]) -> None:
    """The knowledge-retrieval node lists its documents as {id, content, score, metadata}."""
    retriever = nodes_from_rows(sample_rows)[1]
    (doc,) = retriever["documents"]
    assert doc["id"] == "5e0f8a61-2c1b-4d3e-8f7a-6b9c0d1e2f34"
    assert doc["score"] == pytest.approx(0.8123)
    assert doc["content"].startswith("逾期付款")
    assert doc["metadata"]["dataset_name"] == "条款库"
    assert retriever["total_tokens"] is None  # a 0 from execution_metadata is no usage


def test_code_node_is_a_tool_named_by_its_title(sample_rows: list[dict[str, Any]]) -> None:
    """A code node is kind tool, and without tool_info its tool_name is the node title."""
    code = nodes_from_rows(sample_rows)[3]
    assert code["kind"] == "tool" and code["tool_name"] == "Format bullet list"


def test_json_columns_parse_and_bad_json_becomes_none() -> None:
    """JSON text and mappings become dicts; invalid JSON, lists and blanks become None."""
    assert parse_json_field('{"a": 1}') == {"a": 1}
    assert parse_json_field({"a": 1}) == {"a": 1}
    assert parse_json_field(b'{"a": 1}') == {"a": 1}
    assert parse_json_field("{oops") is None
    assert parse_json_field("[1, 2]") is None
    assert parse_json_field("  ") is None
    assert parse_json_field(None) is None


@pytest.mark.parametrize(
    ("node_type", "process_data", "kind"),
    [
        ("llm", None, "llm"),
        ("parameter-extractor", {"model_mode": "chat", "model_name": "gpt-4o"}, "llm"),
        ("question-classifier", {"usage": {"total_tokens": 3}, "model_name": "qwen"}, "llm"),
        ("agent", {"model_mode": "chat", "model_name": "claude"}, "llm"),
        ("agent", None, "tool"),
        ("tool", None, "tool"),
        ("http-request", {"request": "GET /"}, "tool"),
        ("knowledge-retrieval", None, "retriever"),
        ("iteration", None, "chain"),
        ("if-else", {"model_mode": "chat"}, "chain"),
        ("answer", None, "chain"),
    ],
)
def test_node_kind_follows_type_and_model_use(node_type: str, process_data: Any, kind: str) -> None:
    """llm for llm nodes and any node that called a model; retriever, tool, else chain."""
    assert node_kind(node_type, process_data) == kind


def test_failed_node_keeps_its_own_error_and_blank_errors_are_none() -> None:
    """A failed/exception/stopped node is failed with its own message; a blank error is None."""
    failed = node_from_row(_row(status="failed", error="division by zero"))
    assert failed["failed"] and failed["error"] == "division by zero"
    assert node_from_row(_row(status="exception", error=""))["error"] is None
    assert node_from_row(_row(status="exception"))["failed"]
    assert not node_from_row(_row(status="succeeded", error="  "))["failed"]


def test_end_is_clamped_and_falls_back_to_finished_at() -> None:
    """A negative or missing elapsed_time uses finished_at, and an end before the start is clamped."""
    node = node_from_row(_row(elapsed_time=None, finished_at="2026-03-14T09:00:02"))
    assert node["duration_ms"] == 2000.0
    clamped = node_from_row(_row(elapsed_time=-1, finished_at="2026-03-14T08:59:00"))
    assert clamped["end"] == clamped["start"] and clamped["duration_ms"] == 0.0


def test_usage_from_outputs_and_totals_from_metadata() -> None:
    """Without process_data usage, outputs.usage counts; total and cost fall back to execution_metadata."""
    node = node_from_row(
        _row(
            node_type="agent",
            outputs=json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_price": "0.5"}}),
            execution_metadata=json.dumps({"total_tokens": 7, "currency": "RMB"}),
        )
    )
    assert (node["input_tokens"], node["output_tokens"], node["total_tokens"]) == (5, 2, 7)
    assert node["cost"] == 0.5 and node["currency"] == "RMB"


def test_tool_name_comes_from_tool_info() -> None:
    """A tool node names its tool from execution_metadata.tool_info and keeps the provider id."""
    meta = {"tool_info": {"tool_name": "google_search", "provider_id": "langgenius/google/google"}}
    node = node_from_row(_row(node_type="tool", execution_metadata=json.dumps(meta)))
    assert node["tool_name"] == "google_search" and node["tool_provider"] == "langgenius/google/google"


def _iteration_rows() -> list[dict[str, Any]]:
    def child(n: int, index: int, second: int, meta: dict[str, Any]) -> dict[str, Any]:
        return _row(
            id=f"child-{n}",
            node_id="inner-llm",
            node_type="llm",
            index=index,
            created_at=f"2026-03-14T09:00:{second:02d}",
            execution_metadata=json.dumps(meta),
        )

    return [
        _row(id="start", node_id="s", node_type="start", index=1, created_at="2026-03-14T09:00:00"),
        _row(id="iter", node_id="it", node_type="iteration", index=2, created_at="2026-03-14T09:00:01"),
        child(1, 3, 2, {"iteration_id": "it", "iteration_index": 0}),
        child(2, 4, 3, {"iteration_id": "it", "iteration_index": 1}),
        _row(id="loop", node_id="lp", node_type="loop", index=5, created_at="2026-03-14T09:00:04"),
        child(3, 6, 5, {"loop_id": "lp", "loop_index": 0}),
        _row(id="end", node_id="e", node_type="end", index=7, created_at="2026-03-14T09:00:06"),
    ]


def test_iteration_and_loop_children_nest_under_their_container() -> None:
    """Children with iteration_id/loop_id get the container's row id as parent_id; others stay at the top."""
    nodes = {n["id"]: n for n in nodes_from_rows(_iteration_rows())}
    assert nodes["child-1"]["parent_id"] == "iter" and nodes["child-1"]["iteration_index"] == 0
    assert nodes["child-2"]["parent_id"] == "iter" and nodes["child-2"]["iteration_index"] == 1
    assert nodes["child-3"]["parent_id"] == "loop" and nodes["child-3"]["loop_index"] == 0
    assert nodes["child-1"]["parent_node_id"] == "it"
    assert all(nodes[i]["parent_id"] is None for i in ("start", "iter", "loop", "end"))


def test_nested_iteration_runs_pick_the_enclosing_execution() -> None:
    """An inner iteration run once per outer round: each child nests under the inner run before it."""
    rows = [
        _row(id="outer", node_id="o", node_type="iteration", index=1, created_at="2026-03-14T09:00:00"),
        _row(id="inner-0", node_id="i", node_type="iteration", index=2, created_at="2026-03-14T09:00:01",
             execution_metadata=json.dumps({"iteration_id": "o", "iteration_index": 0})),
        _row(id="leaf-0", node_id="c", node_type="code", index=3, created_at="2026-03-14T09:00:02",
             execution_metadata=json.dumps({"iteration_id": "i", "iteration_index": 0})),
        _row(id="inner-1", node_id="i", node_type="iteration", index=4, created_at="2026-03-14T09:00:03",
             execution_metadata=json.dumps({"iteration_id": "o", "iteration_index": 1})),
        _row(id="leaf-1", node_id="c", node_type="code", index=5, created_at="2026-03-14T09:00:04",
             execution_metadata=json.dumps({"iteration_id": "i", "iteration_index": 0})),
    ]  # fmt: skip
    parents = {n["id"]: n["parent_id"] for n in nodes_from_rows(rows)}
    assert parents == {"outer": None, "inner-0": "outer", "leaf-0": "inner-0", "inner-1": "outer", "leaf-1": "inner-1"}


def test_order_is_created_at_then_index() -> None:
    """Nodes sort by start time, and rows created in the same microsecond by index."""
    rows = [
        _row(id="b", index=2, created_at="2026-03-14T09:00:00"),
        _row(id="c", index=1, created_at="2026-03-14T09:00:01"),
        _row(id="a", index=1, created_at="2026-03-14T09:00:00"),
    ]
    assert [n["id"] for n in nodes_from_rows(rows)] == ["a", "b", "c"]


def _ee_trace_info() -> dict[str, Any]:
    return {
        "workflow_run_id": "run-1",
        "workflow_id": "wf-1",
        "tenant_id": "t-1",
        "node_execution_id": "exec-9",
        "node_id": "llm-1",
        "node_type": "llm",
        "title": "Summarise",
        "status": "succeeded",
        "error": "",
        "elapsed_time": 1.5,
        "index": 3,
        "predecessor_node_id": "start-1",
        "total_tokens": 30,
        "total_price": 0.002,
        "currency": "USD",
        "model_provider": "langgenius/openai/openai",
        "model_name": "gpt-4o-mini",
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "iteration_id": "it-1",
        "iteration_index": 2,
        "node_inputs": {"q": "hi"},
        "node_outputs": {"text": "hello"},
        "process_data": {"model_mode": "chat", "prompts": [{"role": "user", "text": "hi"}]},
        "start_time": "2026-03-14T09:00:00",
        "end_time": "2026-03-14T09:00:01.500000",
    }


def test_ee_record_gives_the_same_node_shape() -> None:
    """node_from_ee_record on a normalised WorkflowNodeTraceInfo has the row node's keys and its facts."""
    record = record_from_trace_info(_ee_trace_info(), "WorkflowNodeTraceInfo")
    node = node_from_ee_record(record.data)
    assert set(node) == set(node_from_row(_row()))
    assert node["id"] == node["node_execution_id"] == "exec-9"
    assert (node["kind"], node["model"], node["provider"]) == ("llm", "gpt-4o-mini", "openai")
    assert (node["input_tokens"], node["output_tokens"], node["total_tokens"]) == (20, 10, 30)
    assert node["cost"] == 0.002 and node["currency"] == "USD"
    assert node["inputs"] == {"q": "hi"} and node["outputs"] == {"text": "hello"}
    assert node["prompts"] == [{"role": "user", "text": "hi"}]
    assert node["duration_ms"] == 1500.0 and node["start"].tzinfo is not None
    assert node["error"] is None and not node["failed"]
    assert node["parent_id"] is None and node["parent_node_id"] == "it-1" and node["iteration_index"] == 2


def test_ee_record_with_zero_price_has_no_cost() -> None:
    """Dify's default total_price 0.0 on a non-model node does not become a cost."""
    info = _ee_trace_info() | {"node_type": "code", "total_price": 0.0, "model_name": None, "model_provider": None}
    info["process_data"] = None
    node = node_from_ee_record(record_from_trace_info(info, "WorkflowNodeTraceInfo").data)
    assert node["cost"] is None and node["kind"] == "tool" and node["tool_name"] == "Summarise"
