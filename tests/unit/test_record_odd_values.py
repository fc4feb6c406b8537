"""Numbers no sink can carry and times out of every sink's range: one rule at normalisation, kept or refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.conftest import SAMPLES

from traceexport.cli.map_cmd import placeholder_sink
from traceexport.errors import RecordError
from traceexport.mapping import BACKENDS, load_mapping
from traceexport.records import Record, RecordHead, head_from_obj, parse_records, record_from_obj
from traceexport.records.compact import compact_bytes, record_from_compact
from traceexport.records.values import LATEST, as_utc, in_range, shifted, to_number

# How a non-finite number arrives: JSON's NaN/Infinity constants, a number too large for a float, or text.
NON_FINITE_JSON = ["NaN", "Infinity", "-Infinity", "1e400", '"NaN"', '"Infinity"', '"1e400"']

NODE = {"app_id": "a", "trace_info_type": "WorkflowNodeTraceInfo", "trace_info": {
    "metadata": {}, "workflow_id": "w", "workflow_run_id": "23118a95-bb79-41c1-b825-bab6ba022cbc",
    "tenant_id": "t", "node_execution_id": "n-1", "node_id": "1", "node_type": "llm", "title": "LLM",
    "status": "succeeded", "elapsed_time": 1.5, "index": 1, "total_price": 0.25, "prompt_tokens": 4,
    "start_time": "2026-03-14T09:21:08"}}
PROMPT = {"app_id": "a", "trace_info_type": "PromptGenerationTraceInfo", "trace_info": {
    "metadata": {}, "tenant_id": "t", "operation_type": "rule_generate", "instruction": "x",
    "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "model_name": "gpt-4o",
    "model_provider": "openai", "latency": 0.5, "total_price": 0.5, "start_time": "2026-03-14T09:21:08"}}


def _message_text(**fields: str) -> str:
    """The message sample's envelope with each named trace_info field set to a JSON literal."""
    text = (SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")
    envelope = json.loads(text)
    for name in fields:
        envelope["trace_info"][name] = f"@{name}@"
    text = json.dumps(envelope)
    for name, literal in fields.items():
        text = text.replace(f'"@{name}@"', literal)
    return text


def _one(text: str) -> Record | RecordError:
    [outcome] = parse_records(text)
    return outcome


def _head(text: str) -> RecordHead | RecordError:
    try:
        return head_from_obj(json.loads(text))
    except RecordError as exc:
        return exc


def _delivers_everywhere(record: Record) -> None:
    """Every backend maps the record and its request bodies are strict JSON (no NaN, no Infinity)."""
    for backend in BACKENDS:
        payloads = load_mapping(backend).map(record)
        assert payloads or (backend, record.type) == ("amplitude", "workflow_node"), backend  # no node events
        json.dumps(placeholder_sink(backend, {}).request_bodies(payloads), allow_nan=False)


@pytest.mark.parametrize("literal", NON_FINITE_JSON)
def test_a_non_finite_float_field_is_nulled_and_the_record_kept(literal: str) -> None:
    """NaN, infinities and 1e400 in a float field Dify defines read as null; the record maps for every sink."""
    record = _one(_message_text(gen_ai_server_time_to_first_token=literal, llm_streaming_time_to_generate=literal))
    assert isinstance(record, Record), record
    assert record.data["gen_ai_server_time_to_first_token"] is None
    assert record.data["llm_streaming_time_to_generate"] is None
    assert record.data["message_tokens"] == 412
    _delivers_everywhere(record)


@pytest.mark.parametrize("literal", NON_FINITE_JSON)
def test_a_non_finite_int_field_is_nulled_like_a_float_one(literal: str) -> None:
    """message_tokens NaN is no longer refused while ttft NaN is kept: both read as null, the record goes on."""
    record = _one(_message_text(message_tokens=literal, answer_tokens=literal))
    assert isinstance(record, Record), record
    assert record.data["message_tokens"] is None and record.data["answer_tokens"] is None
    assert record.data["derived"]["input_tokens"] is None and record.data["derived"]["output_tokens"] is None
    assert record.data["total_tokens"] == 508
    _delivers_everywhere(record)


def test_a_wrong_type_beside_a_non_finite_number_still_names_its_field() -> None:
    """Leaving a non-finite number out does not hide another field's error: the reason names that one."""
    record = _one(_message_text(message_tokens="NaN", answer_tokens='"many"'))
    assert isinstance(record, RecordError)
    assert "answer_tokens" in record.reason and "message_tokens" not in record.reason


@pytest.mark.parametrize("price", ['"NaN"', '"Infinity"', '"1e400"', "NaN", "1" + "0" * 400])
def test_a_non_finite_price_is_no_cost(price: str) -> None:
    """message_data.total_price and the usage prices that are no finite number become null cost."""
    text = _message_text().replace('"total_price": "0.0001194"', f'"total_price": {price}')
    record = _one(text)
    assert isinstance(record, Record), record
    assert record.data["message_data"]["total_price"] is None
    assert record.data["message_data"]["message_metadata"]["usage"]["total_price"] is None
    assert record.data["derived"]["cost"] is None and record.data["derived"]["cost_usd"] is None
    _delivers_everywhere(record)


@pytest.mark.parametrize("envelope", [NODE, PROMPT], ids=["workflow_node", "prompt_generation"])
def test_enterprise_float_fields_are_nulled_too(envelope: dict[str, Any]) -> None:
    """The Enterprise records' elapsed_time, latency and total_price follow the same rule."""
    text = json.dumps(envelope)
    for name in ("elapsed_time", "latency", "total_price"):
        text = text.replace(f'"{name}": {envelope["trace_info"].get(name)}', f'"{name}": NaN')
    record = _one(text)
    assert isinstance(record, Record), record
    assert all(record.data.get(name) is None for name in ("elapsed_time", "latency", "total_price"))
    assert record.data["derived"]["cost"] is None
    _delivers_everywhere(record)


def test_a_nulled_value_survives_the_compact_form() -> None:
    """The compact form of a record with nulled values reads back equal, so a delivery process maps the same."""
    record = _one(_message_text(gen_ai_server_time_to_first_token="NaN", message_tokens="Infinity"))
    assert isinstance(record, Record)
    back = record_from_compact(compact_bytes(record), record.envelope_text())
    assert back is not None and back.data == record.data


@pytest.mark.parametrize("start", ['"1970-01-01T00:00:00"', "-1", "0", '"0001-01-01T00:00:00"',
                                   '"0001-01-01T00:00:00+01:00"', '"2262-04-12T00:00:00"', '"9999-12-31T23:59:59"'])
def test_a_start_time_out_of_every_sinks_range_is_refused_with_a_reason(start: str) -> None:
    """A start no sink accepts is refused at parse (the record and its head alike), naming start_time."""
    text = _message_text(start_time=start)
    for outcome in (_one(text), _head(text)):
        assert isinstance(outcome, RecordError), outcome
        assert "start_time" in outcome.reason and "out of range" in outcome.reason
        assert "\n" not in outcome.reason


@pytest.mark.parametrize("end", ['"9999-12-31T23:59:59"', '"1969-12-31T00:00:00"', '"0001-01-01T00:00:00"'])
def test_an_end_time_out_of_range_is_left_out_for_the_fallback_end(end: str) -> None:
    """A bogus end_time is left out: the record ends by its recorded latency and maps for every sink."""
    record = _one(_message_text(end_time=end))
    assert isinstance(record, Record), record
    derived = record.data["derived"]
    assert derived["end_time_inferred"] is True
    assert (derived["end"] - derived["start"]).total_seconds() == pytest.approx(2.384117)
    assert isinstance(_head(_message_text(end_time=end)), RecordHead)
    _delivers_everywhere(record)


def test_an_end_time_alone_and_out_of_range_is_refused_as_no_time() -> None:
    """With no start and only an out-of-range end there is no time to keep: refused, saying so."""
    text = _message_text(start_time="null", end_time='"9999-12-31T00:00:00"')
    text = text.replace('"created_at": "2026-03-14T13:05:44.771902"', '"created_at": null')
    outcome = _one(text)
    assert isinstance(outcome, RecordError)
    assert "no start_time" in outcome.reason and "end_time is out of range" in outcome.reason


@pytest.mark.parametrize("latency", ["1e300", "1e12", "Infinity"])
def test_a_huge_duration_never_crashes_the_fallback_end(latency: str) -> None:
    """A null end_time with a latency past the calendar falls back to the start, never an OverflowError."""
    text = _message_text(end_time="null").replace('"latency": 2.384117', f'"latency": {latency}')
    record = _one(text)
    assert isinstance(record, Record), record
    assert in_range(record.data["derived"]["end"])
    _delivers_everywhere(record)


def test_huge_enterprise_durations_never_crash() -> None:
    """A node's elapsed_time and a prompt generation's latency of 1e300 seconds are parsed without overflow."""
    node = json.loads(json.dumps(NODE))
    node["trace_info"]["elapsed_time"] = 1e300
    prompt = json.loads(json.dumps(PROMPT))
    prompt["trace_info"].update(latency=1e300, start_time=None, end_time=None)
    for envelope in (node, prompt):
        record = record_from_obj(envelope)
        assert in_range(record.data["derived"]["start"]) and in_range(record.data["derived"]["end"])
        _delivers_everywhere(record)


def test_value_helpers_bound_their_results() -> None:
    """to_number refuses non-finite numbers, shifted and as_utc never overflow, in_range names the limits."""
    assert [to_number(v) for v in (float("nan"), float("inf"), "NaN", "-Infinity", "1e400", 10**400)] == [None] * 6
    assert to_number("0.5") == 0.5
    assert shifted(datetime(2026, 1, 1, tzinfo=UTC), 1e300) is None
    assert as_utc("0001-01-01T00:00:00+01:00") == datetime.min.replace(tzinfo=UTC)
    assert in_range(LATEST) and not in_range(datetime(1970, 1, 1, tzinfo=UTC))
