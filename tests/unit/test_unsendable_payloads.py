"""A payload a sink cannot send is reported by `map` and the console playground, never left out in silence."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest
from tests.conftest import SAMPLE_FILES, SAMPLES

from traceexport.cli import main
from traceexport.cli.map_cmd import placeholder_sink
from traceexport.cli.map_output import documents_for
from traceexport.console.playground import Playground
from traceexport.errors import RecordError
from traceexport.mapping import BACKENDS, Mapping
from traceexport.sinks import Payload

KINDS = {"opik": "trace", "amplitude": "event"}
LONE = "\ud83d"  # a lone surrogate in a Python text (the Dify hook's objects): UTF-8 cannot carry it


def _strict_lines(text: str) -> list[Any]:
    """The printed documents, refusing NaN and Infinity as strict JSON readers do."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the output")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_prints_a_record_with_a_nan_timing_for_every_backend(backend: str, tmp_path: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The tester's record (time to first token NaN) is printed by every backend, exit 0, strict JSON."""
    text = (SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")
    path = tmp_path / "rec.json"
    path.write_text(text.replace('"gen_ai_server_time_to_first_token":0.611207',
                                 '"gen_ai_server_time_to_first_token":NaN'), encoding="utf-8")
    code = main(["map", "--to", backend, str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert _strict_lines(out)


@pytest.mark.parametrize("backend", ["opik", "amplitude"])
def test_request_bodies_name_the_payload_that_cannot_be_sent(backend: str) -> None:
    """Opik's and Amplitude's request_bodies raise a RecordError naming the payload, as OTLP's does."""
    sink = placeholder_sink(backend, {})
    good = Payload(KINDS[backend], {"name": "ok"})
    with pytest.raises(RecordError, match=r"^payload 1: .*kind 'bogus'"):
        sink.request_bodies([good, Payload("bogus", {})])
    with pytest.raises(RecordError, match=r"^payload 0: "):
        sink.request_bodies([Payload(KINDS[backend], {"name": LONE}), good])


@pytest.mark.parametrize("backend", ["opik", "amplitude"])
def test_a_free_form_nan_is_sent_as_null_like_every_json_traceexport_writes(backend: str) -> None:
    """NaN or Infinity inside a body (an input value) is written as null, not a refusal in Python's words."""
    sink = placeholder_sink(backend, {})
    payload = Payload(KINDS[backend], {"name": "x", "input": {"a": math.nan, "b": [math.inf]}})
    documents = documents_for(sink)
    printed = documents.take(documents.encode([payload])) + documents.close()
    assert "null" in printed[0].decode() and _strict_lines(b"\n".join(printed).decode())


@pytest.fixture
def unsendable_message() -> Iterator[None]:
    """Every mapping gives the message record one payload no sink can encode (a lone surrogate)."""
    real_map, real_entities = Mapping.map, Mapping.map_entities

    def spoil(payload: Payload, record_type: str) -> Payload:
        return Payload(payload.kind, {**payload.body, "name": LONE}, payload.key) if record_type == "message" \
            else payload

    def fake_map(self: Mapping, record: Any) -> list[Payload]:
        return [spoil(p, record.type) for p in real_map(self, record)]

    def fake_entities(self: Mapping, record: Any) -> list[tuple[str, Payload]]:
        return [(entity, spoil(p, record.type)) for entity, p in real_entities(self, record)]

    with patch.object(Mapping, "map", fake_map), patch.object(Mapping, "map_entities", fake_entities):
        yield


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("unsendable_message")
def test_map_reports_a_record_the_sink_cannot_send_and_prints_the_rest(backend: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """One `rejected:` line with the record's file and key and exit 2; the other six samples are still printed."""
    code = main(["map", "--jobs", "1", "--to", backend, *map(str, SAMPLE_FILES)])
    out, err = capsys.readouterr()
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"rejected: {SAMPLES / '05-message-chat.json'}: "
                           "record message:34f376f0-0dc2-4eff-8e89-6381f0f4ed94: ")
    assert LONE not in out and _strict_lines(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("unsendable_message")
def test_the_playground_reports_a_record_the_sink_cannot_send(backend: str) -> None:
    """The console playground answers ok false with the sink's reason, not ok true with no requests."""
    playground = Playground(max_body_bytes=1 << 20)
    try:
        record = (SAMPLES / "05-message-chat.json").read_text(encoding="utf-8")
        answer = playground.map({"backend": backend, "record": record})
    finally:
        playground.close()
    assert answer["ok"] is False and answer["requests"] == []
    assert answer["error"] and "\n" not in answer["error"]
