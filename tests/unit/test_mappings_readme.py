"""The examples in mappings/README.md, read from the README itself, do what their text says on every golden case."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import NODE_ROWS, REPO
from tests.golden.goldens import CASES

from traceexport.mapping import BACKENDS, Mapping, load_mapping
from traceexport.records import Record, parse_records
from traceexport.records.nodes import nodes_from_rows

README = REPO / "mappings" / "README.md"
_BLOCK = re.compile(r"((?:[^\n]+\n)+)\n```yaml\n(.*?)```", re.S)
# Fields whose text is user content (prompts, answers, tool I/O, documents) in a Dify record.
_CONTENT_FIELDS = ("inputs", "outputs", "query", "workflow_run_inputs", "workflow_run_outputs", "tool_inputs",
                   "tool_outputs", "documents", "preset_response", "suggested_question", "instruction")
_NODE_CONTENT = ("inputs", "outputs", "process_data", "prompts", "documents")
_FILE_FIELDS = ("file_list", "file_url", "files")


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _examples() -> dict[str, str]:
    """The YAML examples of "Extending a built-in mapping", keyed by the sentence that introduces each."""
    found = _BLOCK.findall(_section("Extending a built-in mapping").replace("```\n", "```\n\n"))
    return {" ".join(intro.split()).rstrip(":"): block for intro, block in found}


def _load_example(tmp_path: Path, intro: str, options: dict[str, Any] | None = None) -> Mapping:
    example = _examples()[intro]
    backend = re.search(r"^backend: (\w+)$", example, re.M)
    assert backend is not None, f"example {intro!r} names no backend"
    path = tmp_path / "example.yaml"
    path.write_text(example, encoding="utf-8")
    return load_mapping(backend.group(1), [path], options)


def _records() -> list[Record]:
    """Every record of every golden case; the workflow runs also carry the sample's workflow node spans."""
    nodes = nodes_from_rows(json.loads((NODE_ROWS / "01-workflow-ok.node_executions.json").read_text("utf-8")))
    records = []
    for case in CASES:
        for item in parse_records(case.read_bytes(), case.name):
            assert isinstance(item, Record), str(item)
            if item.type == "workflow":
                item.data["derived"]["nodes"] = nodes
            records.append(item)
    return records


def _strings(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, str):
        text = value.strip()
        # prose, not an id, a time or a tag: long enough, and with a space or a non-ASCII letter
        if len(text) >= 12 and (" " in text or not text.isascii()):
            out.add(text)
            if text[:1] in "[{":
                with contextlib.suppress(ValueError):
                    _strings(json.loads(text), out)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)
    return out


def _content(record: Record, *, files: bool) -> set[str]:
    """The content texts of a record: what a 'no content' setting must keep out of every payload."""
    data = record.data
    out: set[str] = set()
    for field in _CONTENT_FIELDS + (_FILE_FIELDS if files else ()):
        _strings(data.get(field), out)
    message_data = data.get("message_data") or {}
    for field in ("query", "answer", "message", "inputs"):
        _strings(message_data.get(field), out)
    for node in data["derived"].get("nodes") or ():
        for field in _NODE_CONTENT:
            _strings(node.get(field), out)
    if files:
        _strings(data["derived"].get("files"), out)
    return out


def _leaks(mapping: Mapping, *, files: bool) -> list[str]:
    leaks = []
    for record in _records():
        text = json.dumps([p.body for p in mapping.map(record)], ensure_ascii=False)
        leaks += [f"{record.type}: {s[:60]!r}" for s in sorted(_content(record, files=files)) if s in text
                  or json.dumps(s, ensure_ascii=False)[1:-1] in text]
    return leaks


def test_every_extension_example_has_a_test() -> None:
    """Each YAML example of "Extending a built-in mapping" is one this file checks (a new one needs a test)."""
    assert set(_examples()) == {
        "Stop sending inputs and outputs to Opik (every trace and span, the `llm` span and workflow node spans "
        "included; file URLs in metadata stay, `send_content=false` below drops them too)",
        "Hash the user id in every entity's metadata and truncate long answers in Opik (a workflow's `sys.user_id` "
        "input stays: drop inputs as above to hide it too)",
        "Add a field to every OTLP span",
    }


def test_stop_sending_inputs_and_outputs_to_opik(tmp_path: Path) -> None:
    """The 'stop sending inputs and outputs' example leaves no input/output field and no content text in Opik."""
    mapping = _load_example(tmp_path, next(k for k in _examples() if k.startswith("Stop sending inputs")))
    bodies = [p.body for record in _records() for p in mapping.map(record)]
    assert {b.get("type") for b in bodies} >= {"llm", "tool", "general", "guardrail"}
    assert [b["name"] for b in bodies if "input" in b or "output" in b] == []
    assert _leaks(mapping, files=False) == []


def test_hash_user_ids_and_truncate_long_answers_in_opik(tmp_path: Path) -> None:
    """The 'hash the user id' example hashes it in every entity's metadata and cuts answers to 2000 characters."""
    mapping = _load_example(tmp_path, next(k for k in _examples() if k.startswith("Hash the user id")))
    seen_users = truncated = 0
    for record in _records():
        user = record.data["derived"]["user_id"]
        for payload in mapping.map(record):
            text = json.dumps(payload.body.get("metadata"), ensure_ascii=False)
            assert user is None or user not in text, f"{record.type} {payload.body['name']} carries the user id"
            hashed = payload.body.get("metadata", {}).get("user_id")
            if user is not None:
                assert re.fullmatch(r"[0-9a-f]{16}", hashed), payload.body["name"]
                seen_users += 1
            output = payload.body.get("output") or {}
            answer = output.get("answer") or output.get("content")
            if record.type == "message" and isinstance(answer, str):
                assert len(answer) <= 2001
                truncated += answer.endswith("…")
    assert seen_users > 10 and truncated == 2  # the 200 KB answer: its trace and its llm span


def test_add_a_field_to_every_otlp_span(tmp_path: Path) -> None:
    """The 'add a field to every OTLP span' example reaches every span: llm and workflow node spans included."""
    mapping = _load_example(tmp_path, "Add a field to every OTLP span")
    spans = [p.body for record in _records() for p in mapping.map(record)]
    assert {s["name"] for s in spans} >= {"chat gpt-4o-mini", "retrieval 检索条款库"}
    assert [s["name"] for s in spans if s["attributes"].get("deployment.environment") != "production"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_content_false_keeps_content_out_of_every_backend(backend: str) -> None:
    """'--option send_content=false (all four mappings have it)': no prompt, answer, I/O, document or file text."""
    assert _leaks(load_mapping(backend, options={"send_content": True}), files=False)  # the check does see content
    assert _leaks(load_mapping(backend, options={"send_content": False}), files=True) == []


def test_amplitude_sends_lengths_not_text_unless_send_content() -> None:
    """Amplitude events carry lengths by default and the text only with send_content=true."""
    assert _leaks(load_mapping("amplitude"), files=True) == []
    loud = load_mapping("amplitude", options={"send_content": True})
    message = next(r for r in _records() if r.type == "message")
    (event,) = loud.map(message)
    assert event.body["event_properties"]["query"] == message.data["message_data"]["query"]


def test_amplitude_node_events_and_hashed_user_ids() -> None:
    """node_events=true adds one event per LLM/tool node; hash_user_ids=true sends SHA-256 of the user id."""
    workflow = next(r for r in _records() if r.type == "workflow")
    kinds = [n["kind"] for n in workflow.data["derived"]["nodes"]]
    events = load_mapping("amplitude", options={"node_events": True, "hash_user_ids": True}).map(workflow)
    assert len(events) == 1 + kinds.count("llm") + kinds.count("tool")
    user = workflow.data["derived"]["user_id"]
    assert all(e.body["user_id"] != user and len(e.body["user_id"]) == 32 for e in events)


def test_otlp_genai_content_adds_the_opt_in_attributes() -> None:
    """genai_content=true adds gen_ai.input/output.messages, tool call arguments/result and the retrieval query."""
    names = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments",
             "gen_ai.tool.call.result", "gen_ai.retrieval.query.text"}

    def sent(options: dict[str, Any]) -> set[str]:
        mapping = load_mapping("otlp", options=options)
        return {k for r in _records() for p in mapping.map(r) for k in p.body["attributes"] if k in names}

    assert sent({}) == set()
    assert sent({"genai_content": True}) == names


def test_file_layout_example_is_a_valid_mapping(tmp_path: Path) -> None:
    """The 'File layout' example uses only keys and values the loader accepts."""
    (block,) = re.findall(r"```yaml\n(.*?)```", _section("File layout"), re.S)
    path = tmp_path / "layout.yaml"
    path.write_text(block, encoding="utf-8")
    mapping = load_mapping("opik", [path])
    assert [p.kind for r in _records() if r.type == "message" for p in mapping.map(r)].count("span") >= 1
