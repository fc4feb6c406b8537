"""The mapping language: compilation, evaluation, errors, extension and determinism."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import SAMPLES, load_records

from traceexport.errors import ConfigError, RecordError
from traceexport.mapping import BACKENDS, REGISTRY, function_names, load_mapping
from traceexport.mapping.ids import span_id_hex, trace_id_hex, uuid7_from
from traceexport.records import Record, record_from_obj


def _write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _message() -> Record:
    return load_records(SAMPLES / "05-message-chat.json")[0]


MINIMAL = """\
backend: otlp
tables:
  names: {chat: Chat app}
records:
  message:
    span:
      kind: span
      key: "$derived.message_id | span_id('x')"
      body:
        name: "mode {{ $conversation_mode | lookup(names) }}"
        tokens: $message_tokens
        missing: $trace_id
        both: "coalesce($trace_id, $message_id)"
        upper: "$conversation_mode | upper"
        literal: "$$not a path"
        tags: [a, $trace_id, $conversation_mode]
        nested: {x: 1, y: "$derived.model"}
        choice: {$if: $derived.failed, then: bad, else: good}
        raw: {$literal: {"$if": 1}}
        $merge: "$inputs | oi_messages('m') "
"""


def test_paths_templates_functions_and_directives(tmp_path: Path) -> None:
    """Every value form evaluates as documented, and null fields are left out."""
    mapping = load_mapping(_write(tmp_path, MINIMAL))
    (payload,) = mapping.map(_message())
    body = payload.body
    assert body["name"] == "mode Chat app"
    assert body["tokens"] == 412
    assert "missing" not in body
    assert body["both"] == "34f376f0-0dc2-4eff-8e89-6381f0f4ed94"
    assert body["upper"] == "CHAT"
    assert body["literal"] == "$not a path"
    assert body["tags"] == ["a", "chat"]
    assert body["nested"] == {"x": 1, "y": "gpt-4o-mini"}
    assert body["choice"] == "good"
    assert body["raw"] == {"$if": 1}
    assert body["m.0.message.role"] == "system"
    assert payload.key == span_id_hex("34f376f0-0dc2-4eff-8e89-6381f0f4ed94", "x")


def test_broken_mapping_lists_every_problem_with_file_line_and_key(tmp_path: Path) -> None:
    """A broken mapping fails at load with each problem as file:line: key.path."""
    path = _write(tmp_path, """\
backend: otlp
records:
  message:
    span:
      kind: trace
      body:
        a: $nope
        b: "$message_id | frobnicate"
        c: "$message_id | truncate(many)"
        d: "$message_id | lookup(no_table)"
        e: "$derived.modl"
        f: "$message_id |"
        g: "$item.x"
        h: {$bogus: 1}
        i: "$options.nope"
  nonsense: {}
""")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    text = caught.value.render()
    expected = [
        ":5: records.message.span.kind: must be one of: span for otlp",
        ":7: records.message.span.body.a: $nope: unknown field 'nope'",
        ":8: records.message.span.body.b: unknown function 'frobnicate'",
        ":9: records.message.span.body.c: truncate: argument must be an integer",
        ":10: records.message.span.body.d: lookup: unknown table 'no_table'",
        ":11: records.message.span.body.e: $derived.modl: unknown derived field 'modl'",
        ":12: records.message.span.body.f: bad expression",
        ":13: records.message.span.body.g: $item.x: $item is only available inside an entity with 'each'",
        ":14: records.message.span.body.h: bad directive '$bogus'",
        ":15: records.message.span.body.i: $options.nope: unknown option",
        ":16: records.nonsense: unknown record type",
    ]
    for fragment in expected:
        assert fragment in text, f"missing {fragment!r} in:\n{text}"
    assert len(caught.value.problems) == len(expected)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError with the file and line."""
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message: [unclosed\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:\d+: YAML syntax"):
        load_mapping(path)


def test_wrong_argument_count_is_a_load_error(tmp_path: Path) -> None:
    """Calling a function with the wrong number of arguments fails at load, not per record."""
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n"
                            "      body: {a: \"$message_id | replace('x')\"}\n")
    with pytest.raises(ConfigError, match="replace takes 2 argument"):
        load_mapping(path)


def test_a_record_that_cannot_be_mapped_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime failure is a one-line RecordError naming the file, line and key path; the next record still maps."""

    def failing_uuid7(value: object, moment: object, role: object = "") -> str:
        if moment != moment:  # NaN: a function that fails on one record's data
            raise ValueError("cannot use\nthis moment")
        return "ok"

    monkeypatch.setitem(REGISTRY, "uuid7", dataclasses.replace(REGISTRY["uuid7"], impl=failing_uuid7))
    path = _write(tmp_path, "backend: opik\nrecords:\n  message:\n    s:\n      kind: span\n"
                            "      body:\n        id: \"$message_id | uuid7($gen_ai_server_time_to_first_token)\"\n"
                            "        soft: \"$inputs | get(0) | get('role') | mul(2)\"\n")
    mapping = load_mapping(path)
    good = _message()
    assert "soft" not in mapping.map(good)[0].body  # mul on text gives null, not an error
    failing = _message()
    failing.data["gen_ai_server_time_to_first_token"] = float("nan")
    with pytest.raises(RecordError) as caught:
        mapping.map(failing)
    reason = caught.value.reason
    assert f"{path}:7: records.message.s.body.id: uuid7 failed: ValueError: cannot use this moment" in reason
    assert "\n" not in caught.value.reason
    assert mapping.map(good)  # the mapping goes on


def test_text_grown_past_the_bound_fails_its_record_not_the_process(tmp_path: Path) -> None:
    """Chained replace() calls that would grow one record's text to billions of characters (a playground override
    or a mapping typo) fail that record with a one-line reason at once; ordinary replace and join still work."""
    blow_up = "replace('', '" + "x" * 100 + "')"
    path = _write(tmp_path, "backend: opik\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            f"        big: \"$message_id | {blow_up} | {blow_up} | {blow_up}\"\n"
                            "        ok: \"$message_id | replace('-', '__') | split('_') | join('--')\"\n")
    mapping = load_mapping(path)
    with pytest.raises(RecordError) as caught:
        mapping.map(_message())
    reason = caught.value.reason
    assert f"{path}:7: records.message.s.body.big: replace failed: ValueError: replace would make" in reason
    assert "at most 33,554,432" in reason
    text = _write(tmp_path, "backend: opik\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        ok: \"$message_id | replace('-', '__') | split('_') | join('--')\"\n", "ok.yaml")
    message_id = _message().data["message_id"]
    assert load_mapping(text).map(_message())[0].body["ok"] == "----".join(message_id.split("-"))


def test_record_type_without_section_is_a_record_error(tmp_path: Path) -> None:
    """A record type the mapping does not mention is rejected with a reason, not dropped silently."""
    mapping = load_mapping(_write(tmp_path, MINIMAL))
    tool = load_records(SAMPLES / "07-tool-call.json")[0]
    with pytest.raises(RecordError, match="no section for record type 'tool'"):
        mapping.map(tool)


def test_user_file_overrides_drops_and_wildcards(tmp_path: Path) -> None:
    """An extending file overrides a field, drops fields with ~, and '*' reaches every record type."""
    path = _write(tmp_path, """\
extends: builtin
backend: opik
records:
  "*":
    span:
      body:
        input: ~
        output: ~
  message:
    trace:
      body:
        thread_id: "$derived.session_id | sha256(16)"
        input: ~
    llm: ~
""")
    mapping = load_mapping("opik", [path])
    payloads = mapping.map(_message())
    assert [p.kind for p in payloads] == ["trace"]
    trace = payloads[0].body
    assert "input" not in trace and "output" in trace
    assert len(trace["thread_id"]) == 16 and trace["thread_id"] != "ab6854be-ee76-4c99-932e-088af3fc5804"
    tool_span = mapping.map(load_records(SAMPLES / "07-tool-call.json")[0])[0].body
    assert "input" not in tool_span and "output" not in tool_span and tool_span["type"] == "tool"


def test_options_switch_content_off_and_node_events_on() -> None:
    """Mapping options turn content off everywhere and Amplitude node events on."""
    quiet = load_mapping("otlp", options={"send_content": False})
    for payload in quiet.map(_message()):
        assert "input.value" not in payload.body["attributes"]
        assert "output.value" not in payload.body["attributes"]
    record = _message()
    workflow = load_records(SAMPLES / "01-workflow-ok.json")[0]
    workflow.data["derived"]["nodes"] = [
        {"id": "n1", "kind": "llm", "title": "LLM", "start": record.data["start_time"]},
        {"id": "n2", "kind": "chain", "title": "Start"},
    ]
    assert [p.body["event_type"] for p in load_mapping("amplitude").map(workflow)] == ["Dify Workflow Run"]
    loud = load_mapping("amplitude", options={"node_events": True})
    assert [p.body["event_type"] for p in loud.map(workflow)] == ["Dify Workflow Run", "Dify Workflow Node"]
    with pytest.raises(ConfigError, match="not an option"):
        load_mapping("amplitude", options={"nodes_events": True})


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_record_always_maps_to_same_ids(backend: str, sample_records: list[Record]) -> None:
    """Mapping the same records twice (freshly parsed) yields identical keys and bodies."""
    mapping = load_mapping(backend)
    first = [(p.kind, p.key, json.dumps(p.body, sort_keys=True, default=str)) for r in sample_records
             for p in mapping.map(r)]
    again = [record_from_obj(r.envelope) for r in sample_records]
    second = [(p.kind, p.key, json.dumps(p.body, sort_keys=True, default=str)) for r in again for p in mapping.map(r)]
    assert first == second
    assert all(key for _, key, _ in first)


def test_opik_ids_are_uuid7_and_message_children_join_the_message_trace(sample_records: list[Record]) -> None:
    """Every Opik id is a UUIDv7, and the suggested-question span shares its message's trace id."""
    mapping = load_mapping("opik")
    by_type = {r.type: mapping.map(r) for r in sample_records}
    for payloads in by_type.values():
        for payload in payloads:
            for field in ("id", "trace_id", "parent_span_id"):
                if field in payload.body:
                    assert uuid.UUID(payload.body[field]).version == 7
    message_trace = by_type["message"][0].body["id"]
    assert by_type["suggested_question"][0].body["trace_id"] == message_trace


def test_id_helpers() -> None:
    """Trace ids keep the Dify UUID's digits; uuid7 carries the instant; span ids are 16 hex digits."""
    assert trace_id_hex("34f376f0-0dc2-4eff-8e89-6381f0f4ed94") == "34f376f00dc24eff8e896381f0f4ed94"
    assert len(trace_id_hex("generate_name:abc")) == 32
    value = uuid.UUID(uuid7_from("34f376f0-0dc2-4eff-8e89-6381f0f4ed94", 1773493544771))
    assert value.version == 7 and int(value.hex[:12], 16) == 1773493544771
    assert len(span_id_hex("x", "y")) == 16 and span_id_hex("x", "y") != span_id_hex("x", "z")


def test_builtin_mappings_cover_every_record_type() -> None:
    """Each built-in mapping has a section for all nine record types."""
    for backend in BACKENDS:
        assert len(load_mapping(backend).record_types()) == 9, backend


def test_function_registry_is_documented() -> None:
    """Every registry function appears in mappings/README.md."""
    readme = (Path(__file__).resolve().parents[2] / "mappings" / "README.md").read_text(encoding="utf-8")
    missing = [name for name in function_names() if f"`{name}" not in readme]
    assert not missing, f"undocumented functions: {missing}"


def _field(tmp_path: Path, expression: str, record: Record) -> object:
    """What one body field with ``expression`` gives for ``record`` (absent: None)."""
    path = _write(tmp_path, "backend: otlp\ntables:\n  kinds: {llm: true}\nrecords:\n  message:\n    s:\n"
                            f"      kind: span\n      body:\n        v: {json.dumps(expression)}\n")
    return load_mapping(path).map(record)[0].body.get("v")


def _with_value(value: object) -> Record:
    record = _message()
    record.data["metadata"] = {**record.data["metadata"], "v": value}
    return record


def test_quoted_text_keeps_non_ascii_beside_escapes_and_an_unknown_escape_is_a_load_error(tmp_path: Path) -> None:
    """Quoted arguments read \\n, \\t, \\', \\\\ and \\uXXXX and keep other characters as written ('·' stayed
    mojibake beside an escape); an escape such as \\x is one load problem at its line, not a traceback."""
    record = _with_value(["a", "b"])
    assert _field(tmp_path, r"$metadata.v | join(' · \n')", record) == "a · \nb"
    assert _field(tmp_path, r"$metadata.v | join('\u00e9\t\'\\')", record) == "aé\t'\\b"
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        v: \"$message_id | prefix('\\\\x')\"\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert f"{path}:7: records.message.s.body.v: bad expression" in str(caught.value)
    assert "unknown escape '\\x'" in str(caught.value)


def test_an_unclosed_template_is_a_load_error(tmp_path: Path) -> None:
    """'{{' without '}}' is a typo reported at load, not text sent as is."""
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        name: \"chat {{ $derived.model\"\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:7: records\.message\.s\.body\.name: bad expression .*"
                                          r"'\{\{' without its closing '\}\}'"):
        load_mapping(path)


@pytest.mark.parametrize(("expression", "value", "expected"), [
    ("$metadata.v | int", 2**63 - 1, 2**63 - 1),  # through a float it became 2**63
    ("$metadata.v | int", "9223372036854775807", 2**63 - 1),
    ("$metadata.v | int", "0.0001", 0),
    ("$metadata.v | int", float("inf"), None),
    ("$metadata.v | int", "nan", None),
    ("$metadata.v | int", "1e999999999", None),
    ("$metadata.v | round", float("nan"), None),
    ("$metadata.v | round(2)", float("inf"), None),
    ("$derived.start | add_seconds($metadata.v)", 2**63, None),
    ("$derived.start | add_seconds($metadata.v)", float("nan"), None),
    ("$message_id | uuid7($metadata.v)", float("nan"), None),
    ("$metadata.v | unique", [{"a": 1}, {"a": 1}, [2], [2], 3], [{"a": 1}, [2], 3]),
    ("$metadata.v | where_in('kind', kinds)", [{"kind": ["llm"]}, {"kind": "llm"}], [{"kind": "llm"}]),
    ("$metadata.v | get($metadata.v)", {"a": 1}, None),
    ("$metadata.v | split('')", "ab", ["a", "b"]),  # Python's split('') failed every record
    ("$metadata.v | truncate(0)", "abc", ""),  # at most 0 characters, not the 1 of '…'
    ("$metadata.v | truncate(2)", "abc", "a…"),
])
def test_functions_give_null_for_values_outside_their_domain(tmp_path: Path, expression: str, value: object,
                                                             expected: object) -> None:
    """Numbers at 64-bit edges, NaN, infinity, unhashable items: each function answers as documented (an exact
    integer, or null) instead of failing the whole record with an OverflowError or TypeError."""
    assert _field(tmp_path, expression, _with_value(value)) == expected


@pytest.mark.parametrize(("expression", "value", "expected"), [
    ("$metadata.v | iso8601", "2026-03-14T13:05:44.771902", "2026-03-14T13:05:44.771902Z"),  # Dify: no zone, UTC
    ("$metadata.v | iso8601", "2026-03-14T13:05:44+05:30", "2026-03-14T07:35:44.000000Z"),
    ("$metadata.v | unix_ms", "2026-03-14T13:05:44.771902Z", 1773493544771),
    ("$metadata.v | unix_nano", "2026-03-14 13:05:44.771902", 1773493544771902000),
    ("$metadata.v | add_seconds(1) | iso8601", "2026-03-14T13:05:44Z", "2026-03-14T13:05:45.000000Z"),
    ("$message_id | uuid7($metadata.v)", "2026-03-14T13:05:44.771902",
     uuid7_from("34f376f0-0dc2-4eff-8e89-6381f0f4ed94", datetime(2026, 3, 14, 13, 5, 44, 771902, tzinfo=UTC))),
    ("$metadata.v | iso8601", "not a time", None),
])
def test_time_functions_read_iso_text_as_dify_nests_it(tmp_path: Path, expression: str, value: object,
                                                       expected: object) -> None:
    """A time nested in a record ($message_data.created_at) is ISO 8601 text: the time functions read it (without
    a zone as UTC) instead of giving null in silence; text that is no time still gives null."""
    assert _field(tmp_path, expression, _with_value(value)) == expected


def test_a_negative_length_is_a_load_error(tmp_path: Path) -> None:
    """truncate(-3) and sha256(-1) (which gave '…' and 63 digits) are load problems, like a non-integer."""
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        a: \"$message_id | truncate(-3)\"\n        b: \"$message_id | sha256(-1)\"\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert f"{path}:7: records.message.s.body.a: truncate: argument must be 0 or more, got -3" in str(caught.value)
    assert f"{path}:8: records.message.s.body.b: sha256: argument must be 0 or more, got -1" in str(caught.value)


def test_text_functions_and_templates_print_values_as_json_not_python(tmp_path: Path) -> None:
    """true, null inside objects and times print as JSON and RFC 3339 in templates and text functions, never as
    Python's True, None or '2026-03-14 13:05:44+00:00'."""
    record = _with_value({"ok": True, "none": None})
    assert _field(tmp_path, "x {{ $metadata.v }} {{ $derived.failed }}", record) == 'x {"ok":true,"none":null} false'
    assert _field(tmp_path, "$metadata.v | str", record) == '{"ok":true,"none":null}'
    assert _field(tmp_path, "$derived.start | str", record) == "2026-03-14T13:05:44.771902Z"
    assert _field(tmp_path, "started {{ $derived.start }}", record) == "started 2026-03-14T13:05:44.771902Z"
    record = _with_value([True, None, 1.5, {"a": [1]}])
    assert _field(tmp_path, "$metadata.v | join(',')", record) == 'true,null,1.5,{"a":[1]}'
    assert _field(tmp_path, "$derived.failed | upper", record) == "FALSE"


def test_keys_yaml_reads_as_values_are_load_errors_and_tables_may_mix_key_types(tmp_path: Path) -> None:
    """A body key YAML reads as a boolean, null or date is a load problem (it was sent as 'True' or 'None');
    a table mixing number and text keys loads (its fingerprint used to fail with a TypeError traceback)."""
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        on: 1\n        null: 2\n        fine: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    text = str(caught.value)
    assert f"{path}:7: records.message.s.body.True: the key true is not text" in text
    assert f"{path}:8: records.message.s.body.None: the key null is not text" in text
    assert len(caught.value.problems) == 2
    path = _write(tmp_path, "backend: otlp\ntables:\n  codes: {200: number, '200': text, null: none}\n"
                            "records:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        v: \"$message_tokens | lookup(codes, other)\"\n")
    mapping = load_mapping(path)
    assert mapping.fingerprint and mapping.fingerprint == load_mapping(path).fingerprint
    assert mapping.map(_message())[0].body["v"] == "other"


@pytest.mark.parametrize("backend", ["otlp", "opik"])
def test_a_switch_option_given_as_text_is_read_as_a_boolean_or_refused(backend: str) -> None:
    """send_content='false' (a quoted YAML value, an environment variable in the config) turns content off, as
    false does; anything else that is no boolean (`--option send_content=flase`, a typo) is refused, naming the
    option and the value, not a truthy value that sends every prompt."""
    off = load_mapping(backend, options={"send_content": False}).map(_message())
    assert load_mapping(backend, options={"send_content": "false"}).map(_message()) == off
    assert load_mapping(backend, options={"send_content": " OFF "}).map(_message()) == off
    for value in ("flase", "maybe", 0, ""):
        with pytest.raises(ConfigError) as info:
            load_mapping(backend, options={"send_content": value})
        assert str(info.value.problems[0]) == f"mapping option 'send_content': must be true or false, got {value!r}"


def test_a_double_dollar_key_is_a_literal_key_and_a_directive_key_in_a_body_is_a_load_error(tmp_path: Path) -> None:
    """'$$set:' gives the key '$set' (Amplitude's user property operations, which had no way to be written: every
    '$' key was a directive); '$if:' among an entity body's fields is a load problem, not a key sent as is."""
    record = _message()
    path = _write(tmp_path, "backend: amplitude\nrecords:\n  message:\n    e:\n      kind: event\n      body:\n"
                            "        user_properties: {$$set: {mode: $conversation_mode}}\n")
    assert load_mapping(path).map(record)[0].body["user_properties"] == {"$set": {"mode": "chat"}}
    path = _write(tmp_path, "backend: otlp\nrecords:\n  message:\n    s:\n      kind: span\n      body:\n"
                            "        $if: $derived.failed\n        then: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert f"{path}:7: records.message.s.body.$if: '$if' is a directive, not a key: write '$$if'" in str(caught.value)
