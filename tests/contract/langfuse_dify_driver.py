"""Drive a ``langfuse`` SDK the way Dify's own Langfuse provider does; run with the SDK's venv, not ours.

``python langfuse_dify_driver.py < job.json`` with ``{"host", "public_key", "secret_key", "scenario", "ids"}``
prints one JSON line: what the SDK calls returned or raised. It imports nothing from traceexport or Dify
(their dependencies are not in an SDK-only venv), so the calls are copied from Dify:

* ``langfuse`` 2.51.x (Dify 1.10.1, ``core/ops/langfuse_trace/langfuse_trace.py``): ``Langfuse(public_key=,
  secret_key=, host=)``; ``api_check`` is ``auth_check()``; ``get_project_key`` reads
  ``client.projects.get().data[0].id``; ``add_trace/add_span/add_generation`` call ``trace/span/generation``
  with ``filter_none_values(model.model_dump())``, which the SDK queues for its background thread.
* ``langfuse`` 4.x (Dify 1.14.1, ``providers/trace/trace-langfuse``): the same constructor and checks through
  ``api.projects.get()``; each add_* builds ``TraceBody`` / ``CreateSpanBody`` / ``CreateGenerationBody``
  (usage as ``Usage``) in an ``IngestionEvent_*Create`` with a uuid4 id and ``datetime.now(UTC).isoformat()``
  and posts it alone with ``api.ingestion.batch(batch=[event])``; Dify ignores the 207 ``errors``.

The data dicts below are what ``filter_none_values(Langfuse*.model_dump())`` gives for Dify's records:
top-level datetimes already turned into **naive** ISO strings (Dify's times come from the database without
a zone), string inputs/outputs wrapped as chat messages, ``GenerationUsage`` dumped with its ``None`` keys.
Dify never flushes (its Celery worker lives on and the 2.x thread sends every 0.5 s); the driver flushes so
the test need not wait.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

T0, T1, T2 = "2026-11-21T13:26:58.677171", "2026-11-21T13:26:59.100000", "2026-11-21T13:27:01.250000"


def usage(prompt: int, completion: int, unit: str = "TOKENS", total_cost: float | None = None) -> dict[str, Any]:
    """``GenerationUsage(...).model_dump()``: every field, ``None`` ones included (filtering is top-level only)."""
    return {"promptTokens": None, "completionTokens": None, "total": prompt + completion, "input": prompt,
            "output": completion, "unit": unit, "inputCost": None, "outputCost": None, "totalCost": total_cost}


def message_record(ids: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """``message_trace`` then ``moderation_trace``, ``dataset_retrieval_trace`` and ``tool_trace`` of one message."""
    meta = {"app_id": ids["app"], "conversation_id": ids["conversation"], "message_id": ids["message"]}
    return [
        ("trace", {"id": ids["message"], "user_id": "end-user-1", "name": "message",
                   "input": {"message": [{"role": "user", "content": "hi"}], "files": [], "message_tokens": 7,
                             "answer_tokens": 5, "total_tokens": 12, "error": "",
                             "provider_response_latency": 0.42, "created_at": T0},
                   "output": [{"role": "assistant", "content": "hello"}], "metadata": meta,
                   "session_id": ids["conversation"], "tags": ["message", "chat"]}),
        ("generation", {"trace_id": ids["message"], "name": "llm", "start_time": T0, "completion_start_time": T1,
                        "end_time": T2, "model": "gpt-4o-mini", "input": [{"role": "user", "content": "hi"}],
                        "output": [{"role": "assistant", "content": "hello"}], "usage": usage(7, 5, total_cost=1e-4),
                        "metadata": meta, "level": "DEFAULT", "status_message": ""}),
        ("span", {"trace_id": ids["message"], "name": "moderation", "start_time": T0, "end_time": T0,
                  "input": {"query": "hi"}, "metadata": meta,
                  "output": {"action": "direct_output", "flagged": False, "preset_response": "", "inputs": {}}}),
        ("span", {"trace_id": ids["message"], "name": "dataset_retrieval", "start_time": T0, "end_time": T1,
                  "input": {"query": "hi"}, "output": {"documents": []}, "metadata": meta}),
        ("span", {"trace_id": ids["message"], "name": "web_search", "start_time": T1, "end_time": T2,
                  "input": {"q": "hi"}, "output": "found", "metadata": meta, "level": "DEFAULT"}),
    ]


def workflow_record(ids: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """``workflow_trace`` of an advanced-chat run: trace, workflow span, an LLM node and a code node."""
    meta = {"app_id": ids["app"], "workflow_app_log_id": None, "user_id": "end-user-1"}
    node_meta = {"workflow_run_id": ids["run"], "app_id": ids["app"], "status": "succeeded"}
    return [
        ("trace", {"id": ids["wf_message"], "user_id": "end-user-1", "name": "message", "input": {"q": "hi"},
                   "output": {"answer": "hello"}, "metadata": meta, "session_id": ids["conversation"],
                   "tags": ["message", "workflow"], "version": "2026-11-01 10:00:00.000000"}),
        ("span", {"id": ids["run"], "name": "workflow", "input": {"q": "hi"}, "output": {"answer": "hello"},
                  "trace_id": ids["wf_message"], "start_time": T0, "end_time": T2, "metadata": meta,
                  "level": "DEFAULT", "status_message": ""}),
        ("generation", {"id": ids["llm_node"], "name": "LLM", "trace_id": ids["wf_message"], "model": "gpt-4o-mini",
                        "start_time": T0, "completion_start_time": T1, "end_time": T2, "input": [],
                        "output": {"text": "hello"}, "metadata": {**node_meta, "node_type": "llm"},
                        "level": "DEFAULT", "status_message": "", "parent_observation_id": ids["run"],
                        "usage": usage(7, 5)}),
        ("span", {"id": ids["code_node"], "name": "Code", "input": {"x": 1}, "output": {"y": 2},
                  "trace_id": ids["wf_message"], "start_time": T1, "end_time": T2,
                  "metadata": {**node_meta, "node_type": "code"}, "level": "DEFAULT", "status_message": "",
                  "parent_observation_id": ids["run"]}),
    ]


def generate_name_record(ids: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """``generate_name_trace``: a trace without an id, then a span whose trace id is the conversation id."""
    meta = {"app_id": ids["app"]}
    return [
        ("trace", {"name": "generate_conversation_name", "input": {"q": "hi"}, "output": {"name": "Greeting"},
                   "user_id": "tenant-1", "metadata": meta, "session_id": ids["conversation"]}),
        ("span", {"name": "generate_conversation_name", "input": {"q": "hi"}, "output": {"name": "Greeting"},
                  "trace_id": ids["conversation"], "start_time": T0, "end_time": T1, "metadata": meta}),
    ]


SCENARIOS = {"message": message_record, "workflow": workflow_record, "generate_name": generate_name_record}


def send_v2(client: Any, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Dify 1.10.1: ``client.trace/span/generation(**data)``, queued; the driver then flushes."""
    for kind, data in calls:
        getattr(client, kind)(**data)
    client.flush()
    return []


def send_v4(client: Any, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Dify 1.14.1: one ``api.ingestion.batch(batch=[event])`` per call, built as its add_* methods build it."""
    from langfuse.api import (
        CreateGenerationBody,
        CreateSpanBody,
        IngestionEvent_GenerationCreate,
        IngestionEvent_SpanCreate,
        IngestionEvent_TraceCreate,
        TraceBody,
    )
    from langfuse.api.commons.types.usage import Usage

    answers = []
    for kind, data in calls:
        data = dict(data)
        envelope = {"id": str(uuid.uuid4()), "timestamp": datetime.now(UTC).isoformat()}
        if kind == "trace":
            keys = ("id", "name", "user_id", "input", "output", "metadata", "session_id", "version", "release",
                    "tags", "public")
            event: Any = IngestionEvent_TraceCreate(body=TraceBody(**{k: data.get(k) for k in keys}), **envelope)
        else:
            keys = ("id", "trace_id", "name", "start_time", "end_time", "input", "output", "metadata", "level",
                    "status_message", "parent_observation_id", "version")
            if kind == "span":
                event = IngestionEvent_SpanCreate(body=CreateSpanBody(**{k: data.get(k) for k in keys}), **envelope)
            else:
                raw = data.pop("usage", None)
                used = None if not raw else Usage(
                    input=raw.get("input", 0) or 0, output=raw.get("output", 0) or 0,
                    total=raw.get("total", 0) or 0, unit=raw.get("unit"), input_cost=raw.get("inputCost"),
                    output_cost=raw.get("outputCost"), total_cost=raw.get("totalCost"))
                body = CreateGenerationBody(**{k: data.get(k) for k in keys}, model=data.get("model"),
                                            model_parameters=data.get("model_parameters"), usage=used,
                                            completion_start_time=data.get("completion_start_time"))
                event = IngestionEvent_GenerationCreate(body=body, **envelope)
        answer = client.api.ingestion.batch(batch=[event])
        answers.append({"successes": len(answer.successes), "errors": [e.dict() for e in answer.errors]})
    return answers


def main() -> int:
    """Run one job from stdin; print {"version", "auth_check" | "auth_error", "project", "answers"}."""
    import langfuse
    from langfuse import Langfuse

    job = json.load(sys.stdin)
    version = langfuse.__version__
    major = int(str(version).split(".", 1)[0])
    client = Langfuse(public_key=job["public_key"], secret_key=job["secret_key"], host=job["host"])
    result: dict[str, Any] = {"version": version}
    try:
        result["auth_check"] = client.auth_check()
        projects = (client.client if major < 3 else client.api).projects.get()
        result["project"] = projects.data[0].id
    except Exception as exc:  # what Dify's api_check turns into "LangFuse API check failed: ..."
        result["auth_error"] = f"{type(exc).__name__}: {exc}"
    calls = [c for name in job.get("scenario", []) for c in SCENARIOS[name](job["ids"])]
    result["answers"] = (send_v2 if major < 3 else send_v4)(client, calls) if calls else []
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
