"""Parsing and normalising Dify trace records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel
from tests.conftest import SAMPLES

from traceexport.errors import RecordError
from traceexport.records import COMMUNITY_TYPES, Record, parse_records, record_from_obj, record_from_trace_info


def _sample(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def test_all_seven_sample_types_parse(sample_records: list[Record]) -> None:
    """Each community sample parses to its canonical record type."""
    assert sorted(r.type for r in sample_records) == sorted(COMMUNITY_TYPES)


def test_naive_datetimes_become_utc() -> None:
    """Dify's naive timestamps are read as UTC."""
    record = record_from_obj(_sample("05-message-chat.json"))
    start = record.data["start_time"]
    assert start.tzinfo is UTC
    assert start == datetime(2026, 3, 14, 13, 5, 44, 771902, tzinfo=UTC)


def test_empty_error_means_success() -> None:
    """``error == ""`` is normalised to no error and status ok."""
    record = record_from_obj(_sample("01-workflow-ok.json"))
    assert record.data["error"] is None
    assert record.data["derived"]["failed"] is False
    assert record.data["derived"]["status"] == "ok"


def test_decimal_strings_become_numbers() -> None:
    """Decimal strings in message_data (total_price, unit prices) become floats."""
    record = record_from_obj(_sample("05-message-chat.json"))
    assert isinstance(record.data["message_data"]["total_price"], float)
    usage = record.data["message_data"]["message_metadata"]["usage"]
    assert usage["prompt_unit_price"] == pytest.approx(0.15)
    assert record.data["derived"]["cost"] == pytest.approx(0.0001194)


def test_model_comes_from_metadata_not_conversation_model() -> None:
    """conversation_model is an app mode; the model and provider come from ls_model_name / ls_provider."""
    record = record_from_obj(_sample("05-message-chat.json"))
    assert record.data["conversation_model"] == "chat"
    assert record.data["derived"]["model"] == "gpt-4o-mini"
    assert record.data["derived"]["provider"] == "openai"
    assert record.data["derived"]["provider_id"] == "langgenius/openai/openai"


def test_null_end_time_falls_back_to_latency() -> None:
    """A null end_time is inferred from the recorded latency and flagged, never a crash."""
    envelope = _sample("05-message-chat.json")
    envelope["trace_info"]["end_time"] = None
    record = record_from_obj(envelope)
    derived = record.data["derived"]
    assert derived["end_time_inferred"] is True
    assert derived["duration_ms"] == pytest.approx(2384.117, rel=1e-3)


def test_end_before_start_is_clamped() -> None:
    """An end time before the start is clamped to the start."""
    envelope = _sample("07-tool-call.json")
    envelope["trace_info"]["end_time"] = "2026-03-14T14:12:09.000000"
    record = record_from_obj(envelope)
    assert record.data["end_time"] == record.data["start_time"]
    assert record.data["derived"]["duration_ms"] == 0


def test_trace_info_null_envelope_is_rejected_with_reason() -> None:
    """Dify's ``trace_info_type: dict`` / ``trace_info: null`` envelope is a one-line RecordError."""
    with pytest.raises(RecordError) as caught:
        record_from_obj({"app_id": "a", "trace_info_type": "dict", "trace_info": None})
    assert "trace_info null" in caught.value.reason
    assert "\n" not in str(caught.value)


def test_unknown_type_is_rejected() -> None:
    """An unknown trace_info_type is rejected, naming the type."""
    with pytest.raises(RecordError, match="unknown record type 'FancyTraceInfo'"):
        record_from_obj({"app_id": "a", "trace_info_type": "FancyTraceInfo", "trace_info": {"metadata": {}}})


def test_missing_required_field_is_rejected() -> None:
    """A workflow without workflow_run_id is rejected, naming the field."""
    envelope = _sample("01-workflow-ok.json")
    del envelope["trace_info"]["workflow_run_id"]
    with pytest.raises(RecordError, match="workflow_run_id: Field required"):
        record_from_obj(envelope)


def test_unknown_keys_are_ignored() -> None:
    """Keys from newer Dify versions are ignored in the envelope and the record."""
    envelope = _sample("07-tool-call.json")
    envelope["brand_new"] = 1
    envelope["trace_info"]["brand_new_field"] = {"x": 1}
    assert record_from_obj(envelope).type == "tool"


def test_older_dify_record_without_optional_keys_parses() -> None:
    """A record lacking trace_id, token split and invoked_by (Dify ≤ 1.9) still parses."""
    envelope = _sample("01-workflow-ok.json")
    for key in ("trace_id", "prompt_tokens", "completion_tokens", "invoked_by", "workflow_data", "query"):
        envelope["trace_info"].pop(key)
    record = record_from_obj(envelope)
    assert record.data["derived"]["input_tokens"] is None
    assert record.data["derived"]["total_tokens"] == 1873


def test_json_array_and_json_lines_inputs() -> None:
    """A JSON array and JSON lines both yield every record, and a bad line is reported with its number."""
    a, b = _sample("05-message-chat.json"), _sample("07-tool-call.json")
    as_array = json.dumps([a, b])
    as_lines = json.dumps(a) + "\n" + "{not json\n" + json.dumps(b) + "\n"
    assert [r.type for r in parse_records(as_array)] == ["message", "tool"]  # type: ignore[union-attr]
    results = list(parse_records(as_lines, "x.jsonl"))
    assert [getattr(r, "type", None) for r in results] == ["message", None, "tool"]
    assert isinstance(results[1], RecordError) and str(results[1]).startswith("x.jsonl:line 2: not valid JSON")


def test_bare_trace_info_with_type_name_or_inference() -> None:
    """A bare TraceInfo dict parses with an explicit type name or by inferring the type from its fields."""
    trace_info = _sample("10-moderation-flagged.json")["trace_info"]
    assert record_from_trace_info(dict(trace_info), "ModerationTraceInfo").type == "moderation"
    assert record_from_obj(dict(trace_info)).type == "moderation"


def test_dify_pydantic_object_is_accepted_via_model_dump() -> None:
    """An object with model_dump() (Dify's own TraceInfo) parses, its class name giving the type."""

    class GenerateNameTraceInfo(BaseModel):
        metadata: dict  # type: ignore[type-arg]
        conversation_id: str
        tenant_id: str
        start_time: datetime
        end_time: datetime

    obj = GenerateNameTraceInfo(metadata={}, conversation_id="c-1", tenant_id="t-1",
                                start_time=datetime(2026, 1, 1), end_time=datetime(2026, 1, 1, 0, 0, 1))
    record = record_from_trace_info(obj)
    assert record.type == "generate_name"
    assert record.trace_key == "generate_name:c-1"


def test_record_keys_are_stable() -> None:
    """Parsing the same record twice yields the same record key and trace key."""
    one, two = (record_from_obj(_sample("07-tool-call.json")) for _ in range(2))
    assert (one.key, one.trace_key) == (two.key, two.trace_key)
    assert one.trace_key == "74edd9ad-8d13-45a0-af8d-de1cedb8e233"


def test_message_children_share_the_message_anchor_time() -> None:
    """Tool, retrieval, moderation and suggested-question records anchor on their message's created_at."""
    message = record_from_obj(_sample("05-message-chat.json"))
    suggestion = record_from_obj(_sample("11-suggested-question.json"))
    assert message.trace_key == suggestion.trace_key
    assert message.data["derived"]["anchor_time"] == suggestion.data["derived"]["anchor_time"]


def test_enterprise_types_are_accepted() -> None:
    """Enterprise-only WorkflowNodeTraceInfo and PromptGenerationTraceInfo parse where possible."""
    node = {"app_id": "a", "trace_info_type": "WorkflowNodeTraceInfo", "trace_info": {
        "metadata": {}, "workflow_id": "w", "workflow_run_id": "23118a95-bb79-41c1-b825-bab6ba022cbc",
        "tenant_id": "t", "node_execution_id": "n-1", "node_id": "1", "node_type": "llm", "title": "LLM",
        "status": "succeeded", "elapsed_time": 1.5, "index": 1, "start_time": "2026-03-14T09:21:08"}}
    prompt = {"app_id": "a", "trace_info_type": "PromptGenerationTraceInfo", "trace_info": {
        "metadata": {}, "tenant_id": "t", "operation_type": "rule_generate", "instruction": "x",
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "model_name": "gpt-4o",
        "model_provider": "openai", "latency": 0.5, "start_time": "2026-03-14T09:21:08"}}
    assert record_from_obj(node).type == "workflow_node"
    record = record_from_obj(prompt)
    assert record.type == "prompt_generation"
    assert record.data["derived"]["total_tokens"] == 3


def test_prompt_generation_without_times_ends_on_receipt_and_keeps_those_times() -> None:
    """Dify never times PromptGenerationTraceInfo: it ends on receipt, starts `latency` earlier, and the stored
    envelope carries those times so a retry maps to the same ids."""
    text = json.dumps({"app_id": "a", "trace_info_type": "PromptGenerationTraceInfo", "trace_info": {
        "metadata": {}, "tenant_id": "t", "user_id": "u", "operation_type": "rule_generate", "instruction": "x",
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "model_name": "gpt-4o",
        "model_provider": "openai", "latency": 2.5, "start_time": None, "end_time": None}})
    before = datetime.now(UTC)
    [record] = parse_records(text)
    assert isinstance(record, Record)
    derived = record.data["derived"]
    assert derived["end"] >= before and (derived["end"] - derived["start"]).total_seconds() == 2.5
    [again] = parse_records(record.envelope_text())
    assert isinstance(again, Record) and again.data["derived"]["start"] == derived["start"]


@pytest.mark.parametrize(("file_list", "message_file_data", "files"), [
    ([], None, None),
    ("", None, None),
    ("https://x/files/a.png", None, ["https://x/files/a.png"]),
    ('["https://x/files/a.png", ""]', None, ["https://x/files/a.png"]),
    ("[not json", None, ["[not json"]),
    ({"type": "image", "url": "u"}, None, [{"type": "image", "url": "u"}]),
    (["https://x/files/a.png", None, "  "], None, ["https://x/files/a.png"]),
    (["https://x/files/a.png"], {"url": "files/a.png"}, ["https://x/files/a.png"]),
    ([], {"id": "f1", "url": "files/b.png"}, ["files/b.png"]),
    ([], "<MessageFile object>", None),
])
def test_message_files_are_one_list(file_list: object, message_file_data: object, files: object) -> None:
    """A message's file_list in any of Dify's shapes, plus message_file_data's url, becomes derived.files."""
    sample = _sample("05-message-chat.json")
    sample["trace_info"].update(file_list=file_list, message_file_data=message_file_data)
    assert record_from_obj(sample).data["derived"]["files"] == files


@pytest.mark.parametrize(("file_url", "files"), [("", None), (None, None), ("https://x/t.png", ["https://x/t.png"]),
                                                 (["https://x/1.png", "https://x/2.png"],
                                                  ["https://x/1.png", "https://x/2.png"])])
def test_tool_file_url_becomes_files(file_url: object, files: object) -> None:
    """A tool's file_url (text, list or empty) becomes derived.files."""
    sample = _sample("07-tool-call.json")
    sample["trace_info"]["file_url"] = file_url
    assert record_from_obj(sample).data["derived"]["files"] == files
