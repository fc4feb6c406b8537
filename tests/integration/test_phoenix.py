"""End to end into a real Arize Phoenix: sample records -> ``otlp`` mapping -> OTLP sink -> Phoenix REST API.

One Phoenix process serves the whole module; the records are exported once and every test reads back
what Phoenix stored. Besides the seven samples, the export holds a failed workflow (sample 01 with
``workflow_run_status: failed``) and, for the tool / retrieval / moderation samples, the message record
each belongs to, so that their parent (the message's root span) is present in the same trace.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.support.phoenix import PhoenixServer, phoenix_server, require_phoenix

from traceexport.records import Record, record_from_obj
from traceexport.sinks.base import ExportResult, Payload
from traceexport.sinks.otlp import from_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PROJECT = "traceexport-it"
SAMPLES = ["01-workflow-ok", "05-message-chat", "07-tool-call", "09-dataset-retrieval", "10-moderation-flagged",
           "11-suggested-question", "12-generate-name"]
CHILDREN = {"07-tool-call": "TOOL", "09-dataset-retrieval": "RETRIEVER", "10-moderation-flagged": "GUARDRAIL"}
FAILED_RUN_ID = "9b1f3c52-6a0e-4d0f-8d0c-3f1f0c2e7a11"
FAILED_ERROR = "Node 'LLM' run failed: [openai] Rate limit reached for gpt-4o-mini"


def samples_dir() -> Path:
    """tests/data/samples, or ../shared/dify/samples beside the repository; skip if neither exists."""
    here = Path(__file__).resolve().parents[1] / "data" / "samples"
    if here.is_dir():
        return here
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "dify" / "samples"
    if not shared.is_dir():
        pytest.skip(f"sample records not found in {here} nor {shared}")
    return shared


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((samples_dir() / f"{name}.json").read_text())
    return data


def failed_workflow() -> dict[str, Any]:
    """Sample 01 turned into a failed run with its own run id (so its spans do not collide with 01's)."""
    envelope = copy.deepcopy(load("01-workflow-ok"))
    info = envelope["trace_info"]
    info["workflow_run_id"] = FAILED_RUN_ID
    info["workflow_data"]["id"] = FAILED_RUN_ID
    info["metadata"]["workflow_run_id"] = FAILED_RUN_ID
    info["workflow_run_status"] = "failed"
    info["error"] = FAILED_ERROR
    info["workflow_run_outputs"] = {}
    return envelope


def parent_message(child: dict[str, Any]) -> dict[str, Any]:
    """The message record a tool/retrieval/moderation sample belongs to, built from sample 05."""
    envelope = copy.deepcopy(load("05-message-chat"))
    info = envelope["trace_info"]
    message_id = child["trace_info"]["message_id"]
    info["message_id"] = message_id
    info["metadata"]["message_id"] = message_id
    if isinstance(info.get("message_data"), dict):
        info["message_data"]["id"] = message_id
    return envelope


@dataclass
class Exported:
    """What was sent and what Phoenix stored."""

    records: dict[str, Record]
    payloads: dict[str, list[Payload]]  # by record name
    result: ExportResult
    stored: dict[str, dict[str, Any]]  # Phoenix spans by span id
    phoenix: PhoenixServer  # still running while the module's tests do

    def span(self, name: str, index: int = 0) -> dict[str, Any]:
        """The Phoenix span of the ``index``-th payload of record ``name``."""
        return self.stored[self.payloads[name][index].body["spanId"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    require_phoenix()
    from traceexport.mapping import load_mapping

    envelopes = {name: load(name) for name in SAMPLES}
    envelopes["failed-workflow"] = failed_workflow()
    for name in CHILDREN:
        envelopes[f"parent-of-{name}"] = parent_message(envelopes[name])
    mapping = load_mapping("otlp")
    records = {name: record_from_obj(envelope) for name, envelope in envelopes.items()}
    payloads = {name: mapping.map(record) for name, record in records.items()}
    flat = [p for group in payloads.values() for p in group]
    with phoenix_server(tmp_path_factory.mktemp("phoenix")) as phoenix:
        sink = from_config("phoenix", {"traces_endpoint": phoenix.traces_endpoint, "project_name": PROJECT}, {})
        result = sink.export(flat)
        sink.shutdown()
        stored = phoenix.wait_for_spans(PROJECT, len(flat), timeout=120) if result.ok else []
        yield Exported(records, payloads, result, {s["context"]["span_id"]: s for s in stored}, phoenix)


def test_every_span_is_stored(exported: Exported) -> None:
    """Phoenix accepts the export without failures or partial success and stores every span once."""
    assert exported.result.ok, exported.result.failures
    assert not exported.result.warnings
    sent = {p.body["spanId"] for group in exported.payloads.values() for p in group}
    assert set(exported.stored) == sent


def test_ids_times_and_names_are_kept(exported: Exported) -> None:
    """Each stored span has the payload's trace id, parent, name and start/end times."""
    for group in exported.payloads.values():
        for payload in group:
            body, stored = payload.body, exported.stored[payload.body["spanId"]]
            assert stored["context"]["trace_id"] == body["traceId"]
            assert stored["parent_id"] == body.get("parentSpanId")
            assert stored["name"] == body["name"]
            start = datetime.fromisoformat(stored["start_time"])
            assert start == datetime.fromtimestamp(body["startTimeUnixNano"] // 1000 / 1e6, tz=UTC)


def test_span_kinds(exported: Exported) -> None:
    """Phoenix shows CHAIN roots, LLM calls, and TOOL / RETRIEVER / GUARDRAIL child spans."""
    assert exported.span("01-workflow-ok")["span_kind"] == "CHAIN"
    kinds = [exported.stored[p.body["spanId"]]["span_kind"] for p in exported.payloads["05-message-chat"]]
    assert kinds == ["CHAIN", "LLM"]
    for name, kind in CHILDREN.items():
        assert exported.span(name)["span_kind"] == kind
    assert exported.span("11-suggested-question")["span_kind"] == "LLM"
    assert exported.span("12-generate-name")["span_kind"] == "LLM"


def test_children_hang_under_their_message_root(exported: Exported) -> None:
    """Tool, retrieval, moderation and suggested-question spans are children of their message's root span."""
    pairs = [(name, f"parent-of-{name}") for name in CHILDREN] + [("11-suggested-question", "05-message-chat")]
    for child_name, parent_name in pairs:
        child, root = exported.span(child_name), exported.span(parent_name)
        assert root["parent_id"] is None
        assert child["parent_id"] == root["context"]["span_id"]
        assert child["context"]["trace_id"] == root["context"]["trace_id"]
    llm = exported.span("05-message-chat", 1)
    assert llm["parent_id"] == exported.span("05-message-chat")["context"]["span_id"]


def test_llm_tokens_model_and_io(exported: Exported) -> None:
    """The chat span carries the record's token counts, model name, input and output."""
    info = exported.records["05-message-chat"].envelope["trace_info"]
    attrs = exported.span("05-message-chat", 1)["attributes"]
    assert attrs["llm.token_count.prompt"] == info["message_tokens"]
    assert attrs["llm.token_count.completion"] == info["answer_tokens"]
    assert attrs["llm.token_count.total"] == info["total_tokens"]
    assert attrs["llm.model_name"] == info["metadata"]["ls_model_name"]
    assert info["message_data"]["query"] in str(attrs["input.value"])
    assert attrs["output.value"] == info["outputs"]


def test_workflow_io(exported: Exported) -> None:
    """The workflow root carries the run's inputs and outputs."""
    info = exported.records["01-workflow-ok"].envelope["trace_info"]
    attrs = exported.span("01-workflow-ok")["attributes"]
    assert attrs["input.mime_type"] == attrs["output.mime_type"] == "application/json"
    assert json.loads(attrs["input.value"]) == info["workflow_run_inputs"]
    assert json.loads(attrs["output.value"]) == info["workflow_run_outputs"]


def test_session_and_user_ids(exported: Exported) -> None:
    """Message spans carry session.id (the conversation) and user.id (the end user)."""
    info = exported.records["05-message-chat"].envelope["trace_info"]
    for index in (0, 1):
        attrs = exported.span("05-message-chat", index)["attributes"]
        assert attrs["session.id"] == info["metadata"]["conversation_id"]
        assert attrs["user.id"] == info["metadata"]["from_end_user_id"]


def test_failed_workflow_has_error_status(exported: Exported) -> None:
    """The failed run's root span has status ERROR with the run's error message; the ok run is OK."""
    failed = exported.span("failed-workflow")
    assert failed["status_code"] == "ERROR"
    assert FAILED_ERROR in failed["status_message"]
    assert exported.span("01-workflow-ok")["status_code"] == "OK"


def test_grpc_set_up_by_the_environment_alone(exported: Exported) -> None:
    """OTLP/gRPC configured only by OTEL_EXPORTER_OTLP_* variables, as an SDK user writes them (the traces
    endpoint with its /v1/traces path, gzip, the project as a resource attribute), delivers to Phoenix's gRPC
    port (before: gRPC was asked to resolve "host:port/v1/traces" and every record was retried)."""
    pytest.importorskip("grpc", reason="grpc extra not installed")
    from tests.contract.test_otlp_sink import span

    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{exported.phoenix.grpc_port}/v1/traces",
           "OTEL_RESOURCE_ATTRIBUTES": "openinference.project.name=traceexport-grpc"}
    sink = from_config("otlp", {}, env)
    result = sink.export([span(i, trace="5e0a1c3b9d7f4e2a8b6c0d1e2f3a4b5c") for i in range(3)])
    sink.shutdown()
    assert result.ok, result.failures
    stored = exported.phoenix.wait_for_spans("traceexport-grpc", 3, timeout=120)
    assert sorted(s["context"]["span_id"] for s in stored) == [f"{i + 1:016x}" for i in range(3)]
