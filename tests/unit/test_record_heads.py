"""Record heads: validated exactly like records, with the same identity and stored form, no mapping context."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.conftest import SAMPLES
from tests.golden.goldens import CASES

from traceexport import _json
from traceexport.errors import RecordError
from traceexport.records import (
    RecordHead,
    head_from_obj,
    head_from_trace_info,
    iter_json_values,
    record_from_obj,
    record_from_trace_info,
)


def _inputs() -> list[tuple[str, Any, str | None]]:
    """Every sample and golden input value, with its own JSON text when it has one."""
    out = []
    for path in sorted(SAMPLES.glob("*.json")) + CASES:
        for location, value, raw in _values(path.read_text(encoding="utf-8")):
            out.append((f"{path.name}{location}", value, raw))
    return out


def _values(text: str) -> list[tuple[str, Any, str | None]]:
    whole = [value for _, value in iter_json_values(text)]
    if len(whole) == 1 and not isinstance(_json.loads(text), list):
        return [("", whole[0], text)]
    return [(f"[{i}]", value, None) for i, value in enumerate(whole)]


INPUTS = _inputs()


@pytest.mark.parametrize(("name", "value", "raw"), INPUTS, ids=[name for name, _, _ in INPUTS])
def test_a_head_has_the_records_identity_and_stored_form(name: str, value: Any, raw: str | None) -> None:
    """Type, app, key, trace key and the stored envelope text are the record's, for every sample and case."""
    record = record_from_obj(value, raw=raw)
    head = head_from_obj(json.loads(json.dumps(value)), raw=raw)
    assert isinstance(head, RecordHead)
    assert (head.type, head.app_id, head.key, head.trace_key) == (record.type, record.app_id, record.key,
                                                                  record.trace_key)
    assert head.envelope_text() == record.envelope_text()


def _sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    return data


def _without_times() -> dict[str, Any]:
    envelope = _sample("05-message-chat.json")
    envelope["trace_info"]["start_time"] = envelope["trace_info"]["end_time"] = None
    envelope["trace_info"]["message_data"] = None
    return envelope


def _without_run_id() -> dict[str, Any]:
    envelope = _sample("01-workflow-ok.json")
    del envelope["trace_info"]["workflow_run_id"]
    return envelope


BAD = {
    "trace_info null": {"app_id": "a", "trace_info_type": "dict", "trace_info": None},
    "unknown type": {"app_id": "a", "trace_info_type": "FancyTraceInfo", "trace_info": {"metadata": {}}},
    "required field missing": _without_run_id(),
    "no time at all": _without_times(),
    "not an object": [1, 2],
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_head_is_refused_exactly_when_the_record_is(name: str) -> None:
    """Bad input is refused as a head with the very reason the whole record is refused with."""
    with pytest.raises(RecordError) as as_record:
        record_from_obj(json.loads(json.dumps(BAD[name])))
    with pytest.raises(RecordError) as as_head:
        head_from_obj(json.loads(json.dumps(BAD[name])))
    assert as_head.value.reason == as_record.value.reason


def test_a_bare_trace_info_head_takes_the_app_given() -> None:
    """A bare TraceInfo with its type and app given becomes the head of the record it would be."""
    trace_info = _sample("07-tool-call.json")["trace_info"]
    record = record_from_trace_info(json.loads(json.dumps(trace_info)), "ToolTraceInfo", "app-1")
    head = head_from_trace_info(json.loads(json.dumps(trace_info)), "ToolTraceInfo", "app-1")
    assert (head.app_id, head.key, head.envelope_text()) == (record.app_id, record.key, record.envelope_text())
