"""What Langfuse's server checks in one ``POST /api/public/ingestion`` event (../shared/contracts/README.md §2.2).

These are the server's own (zod) rules, written from ``packages/shared/src/server/ingestion/types.ts``; they
are stricter than the OpenAPI spec in places (date-times need ``Z`` or an offset; observation events need
``body.id``) and laxer in others (every usage field may be null). :func:`event_problem` answers one event
with the reason the server would give in its 207 ``errors`` list, or ``None`` when it accepts the event.
"""

from __future__ import annotations

import re
from typing import Any

# event type -> the observation type it creates or updates (None: not an observation)
OBSERVATION_TYPES: dict[str, str | None] = {
    "trace-create": None, "score-create": None, "sdk-log": None,
    "span-create": "SPAN", "span-update": "SPAN", "event-create": "EVENT",
    "generation-create": "GENERATION", "generation-update": "GENERATION",
    "observation-create": None, "observation-update": None,  # legacy: the type is in body.type
    # accepted by the server's zod though absent from the public spec (body = CreateGenerationBody)
    "agent-create": "AGENT", "tool-create": "TOOL", "chain-create": "CHAIN", "retriever-create": "RETRIEVER",
    "evaluator-create": "EVALUATOR", "embedding-create": "EMBEDDING", "guardrail-create": "GUARDRAIL",
}
UPDATE_TYPES = frozenset({"span-update", "generation-update", "observation-update"})
LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})
UNITS = frozenset({"CHARACTERS", "TOKENS", "MILLISECONDS", "SECONDS", "IMAGES", "REQUESTS"})
LEGACY_OBSERVATION_TYPES = frozenset({"GENERATION", "SPAN", "EVENT"})
# zod ``z.string().datetime({offset: true})``: a date, ``T``, a time and ``Z`` or an offset (never naive)
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$")
TIME_FIELDS = ("timestamp", "startTime", "endTime", "completionStartTime")
INT_USAGE = ("input", "output", "total", "promptTokens", "completionTokens", "totalTokens")
COST_USAGE = ("inputCost", "outputCost", "totalCost")


def is_event_id(value: Any) -> bool:
    """The server's ``idSchema``: a string of 1..800 characters without a carriage return."""
    return isinstance(value, str) and 1 <= len(value) <= 800 and "\r" not in value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def event_problem(event: Any) -> str | None:
    """Why the server rejects this event with 400 "Invalid request data", or None if it accepts it."""
    if not isinstance(event, dict):
        return "event must be an object"
    if not is_event_id(event.get("id")):
        return "id: must be a non-empty string of at most 800 characters"
    if not isinstance(event.get("timestamp"), str) or not DATETIME.match(event["timestamp"]):
        return f"timestamp: invalid ISO datetime with offset: {event.get('timestamp')!r}"
    kind = event.get("type")
    if kind not in OBSERVATION_TYPES:
        return f"type: invalid event type {kind!r}"
    body = event.get("body")
    if not isinstance(body, dict):
        return "body: expected an object"
    if kind == "sdk-log":
        return None if "log" in body else "body.log: required"
    if kind == "score-create":
        return _score_problem(body)
    return _entity_problem(kind, body)


def _entity_problem(kind: str, body: dict[str, Any]) -> str | None:
    for key in TIME_FIELDS:
        value = body.get(key)
        if value is not None and not (isinstance(value, str) and DATETIME.match(value)):
            return f"body.{key}: invalid ISO datetime with offset: {value!r}"
    for key in ("id", "traceId"):
        if body.get(key) is not None and not is_event_id(body[key]):
            return f"body.{key}: must be a non-empty string of at most 800 characters"
    if kind == "trace-create":
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 1000):
            return "body.name: must be a string of at most 1000 characters"
        tags = body.get("tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            return "body.tags: must be a list of strings"
        return None
    if kind.startswith("observation-"):
        if body.get("type") not in LEGACY_OBSERVATION_TYPES:
            return f"body.type: must be one of {sorted(LEGACY_OBSERVATION_TYPES)}"
    elif body.get("id") is None:
        return "body.id: Required"  # span/generation/event events must name their observation
    if body.get("level") is not None and body["level"] not in LEVELS:
        return f"body.level: must be one of {sorted(LEVELS)}, not {body['level']!r}"
    for key in ("name", "statusMessage", "parentObservationId", "version", "model"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"body.{key}: expected a string"
    return _generation_problem(body)


def _generation_problem(body: dict[str, Any]) -> str | None:
    usage = body.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            return "body.usage: expected an object"
        for key in INT_USAGE:
            if usage.get(key) is not None and not _is_int(usage[key]):
                return f"body.usage.{key}: expected an integer, got {usage[key]!r}"
        for key in COST_USAGE:
            if usage.get(key) is not None and not _is_number(usage[key]):
                return f"body.usage.{key}: expected a number, got {usage[key]!r}"
        if usage.get("unit") is not None and usage["unit"] not in UNITS:
            return f"body.usage.unit: must be one of {sorted(UNITS)}, not {usage['unit']!r}"
    details = body.get("usageDetails")
    if details is not None and not (isinstance(details, dict) and all(
            v is None or isinstance(v, dict) or (_is_int(v) and v >= 0) for v in details.values())):
        return "body.usageDetails: values must be non-negative integers"
    costs = body.get("costDetails")
    if costs is not None and not (isinstance(costs, dict) and all(
            v is None or (_is_number(v) and v >= 0) for v in costs.values())):
        return "body.costDetails: values must be non-negative numbers"
    if bool(body.get("promptName")) != bool(body.get("promptVersion")):
        return "body: promptName and promptVersion must be set together"
    return None


def _score_problem(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("name"), str) or not body["name"]:
        return "body.name: Required"
    value, data_type = body.get("value"), body.get("dataType")
    if data_type == "CATEGORICAL" and not isinstance(value, str):
        return "body.value: expected a string for data type CATEGORICAL"
    if data_type in ("NUMERIC", "BOOLEAN") and not _is_number(value):
        return f"body.value: expected a number for data type {data_type}"
    if data_type == "BOOLEAN" and value not in (0, 1):
        return "body.value: Value must be a number equal to either 0 or 1 for data type BOOLEAN"
    if data_type is None and not (isinstance(value, str) or _is_number(value)):
        return "body.value: expected a string or a number"
    if not any(body.get(k) for k in ("traceId", "observationId", "sessionId", "datasetRunId")):
        return "body: a score needs a traceId, observationId, sessionId or datasetRunId"
    return None
