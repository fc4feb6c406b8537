"""What the Langfuse fake stores: traces and observations by id, whichever way they arrived.

Both ingestion paths end in the same two dicts, so a test can compare what Dify's own provider sent
(legacy ``/api/public/ingestion`` events) with what traceexport sent (OTLP spans):

* ``traces[id]``: the trace body in the ingestion API's camelCase (``id``, ``name``, ``userId``,
  ``sessionId``, ``input``, ``output``, ``metadata``, ``tags``, ...);
* ``observations[id]``: the observation body plus ``type`` (``SPAN``, ``GENERATION``, ``EVENT``, ...) and
  ``source`` (``ingestion`` or ``otel``; OTLP ones also keep their raw ``attributes``). Keys the server's
  schema does not know are dropped, as zod does (the raw envelopes stay in the fake's ``events``).

An event for an existing id is an upsert, as on the server: later non-null fields win, ``metadata`` is
merged, and the keys the server treats as immutable (trace ``id``/``timestamp``, observation
``id``/``traceId``/``startTime``) keep their first value. OTLP spans are read with the first rules of
Langfuse's ``ObservationTypeMapper`` and attribute table (../shared/contracts/README.md §2.3), enough to
compare shapes, not a full port.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes.langfuse_ingestion import OBSERVATION_TYPES

IMMUTABLE = {"trace": ("id", "timestamp"), "observation": ("id", "traceId", "startTime")}
# the keys the server's zod bodies know; z.object drops the rest (langfuse 2.x sends e.g. "trace": {...})
TRACE_KEYS = frozenset({"id", "timestamp", "name", "externalId", "input", "output", "sessionId", "userId",
                        "environment", "metadata", "release", "version", "public", "tags"})
OBSERVATION_KEYS = frozenset({"id", "traceId", "type", "environment", "name", "startTime", "endTime", "metadata",
                              "input", "output", "level", "statusMessage", "parentObservationId", "version",
                              "completionStartTime", "model", "modelParameters", "usage", "usageDetails",
                              "costDetails", "promptName", "promptVersion"})
LANGFUSE_TYPES = ("span", "generation", "event", "embedding", "agent", "tool", "chain", "retriever",
                  "guardrail", "evaluator")
OPENINFERENCE_TYPES = {"CHAIN": "CHAIN", "RETRIEVER": "RETRIEVER", "LLM": "GENERATION", "EMBEDDING": "EMBEDDING",
                       "AGENT": "AGENT", "TOOL": "TOOL", "GUARDRAIL": "GUARDRAIL", "EVALUATOR": "EVALUATOR"}
GEN_AI_OPERATIONS = {"chat": "GENERATION", "completion": "GENERATION", "text_completion": "GENERATION",
                     "generate_content": "GENERATION", "generate": "GENERATION", "embeddings": "EMBEDDING",
                     "invoke_agent": "AGENT", "create_agent": "AGENT", "execute_tool": "TOOL"}
MODEL_KEYS = ("langfuse.observation.model.name", "gen_ai.response.model", "gen_ai.request.model",
              "llm.response.model", "llm.model_name", "model")
USER_KEYS = ("langfuse.user.id", "user.id")
SESSION_KEYS = ("langfuse.session.id", "session.id", "gen_ai.conversation.id")
TAG_KEYS = ("langfuse.trace.tags", "langfuse.tags", "tag.tags")


def merge(old: dict[str, Any] | None, body: dict[str, Any], kind: str) -> dict[str, Any]:
    """``body`` upserted onto ``old`` the way the server merges events for one entity."""
    merged = dict(old or {})
    for key, value in body.items():
        if value is None or (key in IMMUTABLE[kind] and merged.get(key) is not None):
            continue
        if key == "metadata" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class LangfuseStore:
    """Traces, observations, scores and SDK logs; not locked itself (the fake holds its lock)."""

    def __init__(self) -> None:
        self.traces: dict[str, dict[str, Any]] = {}
        self.observations: dict[str, dict[str, Any]] = {}
        self.scores: list[dict[str, Any]] = []
        self.sdk_logs: list[Any] = []

    def clear(self) -> None:
        """Forget everything."""
        self.traces.clear()
        self.observations.clear()
        self.scores.clear()
        self.sdk_logs.clear()

    def apply(self, event: dict[str, Any]) -> None:
        """Store one accepted ingestion event."""
        kind, body = event["type"], event["body"]
        if kind == "sdk-log":
            self.sdk_logs.append(body.get("log"))
        elif kind == "score-create":
            self.scores.append(dict(body))
        elif kind == "trace-create":
            key = str(body.get("id") or uuid.uuid4())  # the server names a trace sent without an id
            known = {k: v for k, v in body.items() if k in TRACE_KEYS}
            self.traces[key] = merge(self.traces.get(key), {**known, "id": key}, "trace")
        else:
            key = str(body.get("id") or uuid.uuid4())  # only legacy observation-* events may lack an id
            known = {k: v for k, v in body.items() if k in OBSERVATION_KEYS}
            old = self.observations.get(key)
            if old is not None and kind.endswith("-update"):
                kind_type = old["type"]  # an update does not change the type
            else:
                kind_type = OBSERVATION_TYPES.get(kind) or str(known.get("type") or "SPAN")
            extra = {"id": key, "type": kind_type, "source": "ingestion"}
            self.observations[key] = merge(old, {**known, **extra}, "observation")

    def add_otel_span(self, span: dict[str, Any]) -> None:
        """Store one decoded OTLP span (the ``request_spans`` shape) as an observation and its trace."""
        attrs = span["attributes"]
        status = span.get("status") or {}
        observation = {
            "id": span["spanId"], "traceId": span["traceId"], "parentObservationId": span.get("parentSpanId"),
            "name": span["name"], "type": otel_type(attrs), "source": "otel",
            "startTime": _iso(span["startTimeUnixNano"]), "endTime": _iso(span["endTimeUnixNano"]),
            "level": attrs.get("langfuse.observation.level") or ("ERROR" if status.get("code") == "ERROR"
                                                                  else "DEFAULT"),
            "statusMessage": attrs.get("langfuse.observation.status_message") or status.get("message") or None,
            "model": _first(attrs, MODEL_KEYS),
            "input": _json(_first(attrs, ("langfuse.observation.input", "input.value"))),
            "output": _json(_first(attrs, ("langfuse.observation.output", "output.value"))),
            "attributes": attrs,
        }
        self.observations[span["spanId"]] = merge(self.observations.get(span["spanId"]), observation, "observation")
        trace = {"id": span["traceId"], "name": attrs.get("langfuse.trace.name"),
                 "userId": _first(attrs, USER_KEYS), "sessionId": _first(attrs, SESSION_KEYS),
                 "tags": _tags(_first(attrs, TAG_KEYS))}
        if trace["name"] is None and not span.get("parentSpanId"):
            trace["name"] = span["name"]  # the root span names the trace
        self.traces[span["traceId"]] = merge(self.traces.get(span["traceId"]), trace, "trace")


def otel_type(attrs: dict[str, Any]) -> str:
    """The observation type Langfuse gives an OTLP span with these attributes (first matching rule)."""
    explicit = str(attrs.get("langfuse.observation.type", "")).lower()
    if explicit in LANGFUSE_TYPES:
        return explicit.upper()
    for value, table in ((attrs.get("openinference.span.kind"), OPENINFERENCE_TYPES),
                         (attrs.get("gen_ai.operation.name"), GEN_AI_OPERATIONS)):
        if isinstance(value, str) and value in table:
            return table[value]
    if "gen_ai.tool.name" in attrs or "gen_ai.tool.call.id" in attrs:
        return "TOOL"
    return "GENERATION" if _first(attrs, MODEL_KEYS) is not None else "SPAN"


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((attrs[k] for k in keys if attrs.get(k) not in (None, "")), None)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _tags(value: Any) -> list[str] | None:
    value = _json(value)
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value] if isinstance(value, list) else None


def _iso(nanos: int) -> str:
    stamp = datetime.fromtimestamp(nanos // 1_000_000_000, tz=UTC).replace(microsecond=nanos // 1000 % 1_000_000)
    return stamp.isoformat().replace("+00:00", "Z")
