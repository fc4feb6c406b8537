"""A lone-surrogate escape (valid JSON, what json.dumps writes) is read as U+FFFD and the record goes on."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SAMPLES

from traceexport import _json
from traceexport.cli import main
from traceexport.cli.map_cmd import placeholder_sink
from traceexport.mapping import BACKENDS, load_mapping
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.records import Record, parse_records
from traceexport.records.compact import compact_bytes, record_from_compact
from traceexport.records.stream import stream_records
from traceexport.sinks.base import BatchLimits, ExportResult, Payload

QUERY = "Plan a 2-day trip to Kyoto in April, I like temples and ramen."


def _text() -> str:
    """The message sample with a lone high surrogate escape in its query (as json.dumps writes one)."""
    text = (SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")
    return text.replace('"query":"Plan a 2-day trip', '"query":"\\ud83dPlan a 2-day trip', 1)


@pytest.mark.parametrize(("text", "value"), [
    ('"\\ud83d"', "\ufffd"),
    ('"a\\ud83dx"', "a\ufffdx"),
    ('"\\udc00"', "\ufffd"),
    ('"\\ud83d\\u0041"', "\ufffdA"),
    ('{"\\ud83d": ["\\ude00", 1.5]}', {"\ufffd": ["\ufffd", 1.5]}),
    ('"\\ud83d\\ude00"', "\U0001f600"),  # a pair: the fast parser's own answer
])
def test_loads_reads_a_lone_surrogate_as_the_replacement_character(text: str, value: Any) -> None:
    """Lone surrogates in values and keys become U+FFFD; a proper pair stays the character it encodes."""
    assert _json.loads(text) == value
    assert _json.loads(text.encode()) == value


def test_json_that_is_invalid_keeps_the_fast_parsers_reason() -> None:
    """Invalid JSON, with or without a surrogate escape, is still refused with the fast parser's message."""
    for text in ('{"a": "\\ud83d"', '{"a": nope}', '"\\ud83d'):
        with pytest.raises(ValueError, match="line 1 column"):
            _json.loads(text)


def _strict_utf8(bodies: Any, *, shown: bool = True) -> None:
    """The bodies are strict JSON that UTF-8 can carry, with the replacement character where the surrogate was
    (``shown``: Amplitude's events carry the query's length, not its text)."""
    text = json.dumps(bodies, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert ("\ufffd" in text) is shown


def test_the_record_goes_on_through_parse_compact_and_every_sink() -> None:
    """Parsed, read back from its envelope text and its compact form, and encoded by every sink alike."""
    [record] = parse_records(_text())
    assert isinstance(record, Record), record
    assert record.data["message_data"]["query"] == "\ufffd" + QUERY
    assert "\\ud83d" in record.envelope_text()  # stored as received: the spool keeps the sender's text
    [again] = parse_records(record.envelope_text())
    back = record_from_compact(compact_bytes(record), record.envelope_text())
    assert isinstance(again, Record) and back is not None
    assert again.data == record.data == back.data
    for backend in BACKENDS:
        _strict_utf8(placeholder_sink(backend, {}).request_bodies(load_mapping(backend).map(record)),
                     shown=backend != "amplitude")


@pytest.mark.parametrize("form", ["object", "lines", "array"])
def test_every_input_form_of_map_keeps_the_record(form: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`map` reads the record from one object, JSON lines and an array: printed, exit 0."""
    text = _text()
    one = json.dumps(json.loads(text))  # the escape survives json.dumps as an escape
    body = {"object": text, "lines": one + "\n" + one + "\n", "array": f"[{one}]"}[form]
    path = tmp_path / "rec.json"
    path.write_text(body, encoding="utf-8")
    assert main(["map", "--to", "otlp", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "\ufffd" + QUERY in out
    assert all(isinstance(r, Record) for r in stream_records(io.BytesIO(body.encode())))


class _Capture:
    """A sink that keeps what it is handed, after the real Opik sink encoded it."""

    name = "capture"
    backend = "opik"
    limits = BatchLimits(max_items=10)

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self._opik = placeholder_sink("opik", {})

    def request_bodies(self, payloads: list[Payload], /) -> list[Any]:
        return self._opik.request_bodies(payloads)

    def export(self, payloads: list[Payload], /) -> ExportResult:
        self.bodies += self.request_bodies(payloads)
        return ExportResult.success()

    def shutdown(self, timeout: float = 30.0) -> None:
        pass


def test_the_record_survives_the_spool(tmp_path: Path) -> None:
    """Accepted into the spool, read back by the delivery worker and delivered with U+FFFD in its query."""
    [record] = parse_records(_text())
    assert isinstance(record, Record)
    sink = _Capture()
    settings = PipelineSettings(fsync=False, poll_interval=0.01)
    with Pipeline(tmp_path, [Route(sink, load_mapping("opik"))], settings) as pipe:
        pipe.accept([record])
        pipe.start()
        assert pipe.wait_idle(10)
        assert pipe.metrics()["sinks"]["capture"]["exported"] == 1
    _strict_utf8(sink.bodies)
