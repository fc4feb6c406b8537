"""Normalise a parsed TraceInfo once, so no mapping has to know Dify's quirks (RECORDS.md §1.3, §3.5).

The record's own fields are cleaned in place (naive datetimes become UTC, ``error == ""`` becomes
``None``, Decimal strings in ``message_data`` become numbers) and a ``derived`` dict is added with the
facts every mapping needs: identity keys, start/end in several units, failure status, model and
provider, user and session, tokens, cost, and retrieval documents.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from math import isfinite
from typing import Any

from traceexport import _json as fastjson
from traceexport.errors import RecordError
from traceexport.records.nodes import node_from_ee_record
from traceexport.records.types import float_fields
from traceexport.records.values import (
    TIME_RANGE,
    as_utc,
    in_range,
    message_pairs,
    none_if_blank,
    shifted,
    short_provider,
    timing,
    to_number,
)

_PRICE_KEYS = (
    "total_price",
    "prompt_unit_price",
    "prompt_price_unit",
    "prompt_price",
    "completion_unit_price",
    "completion_price_unit",
    "completion_price",
)
_FAILED_WORKFLOW_STATUSES = frozenset({"failed", "stopped", "partial-succeeded", "exception"})


def _clean_usage(usage: Any) -> None:
    if isinstance(usage, dict):
        for key in _PRICE_KEYS:
            if key in usage:
                usage[key] = to_number(usage[key])


def _clean_message_data(message_data: Any) -> dict[str, Any] | None:
    if not isinstance(message_data, dict):
        return None
    if "total_price" in message_data:
        message_data["total_price"] = to_number(message_data["total_price"])
    meta = message_data.get("message_metadata")
    if isinstance(meta, str):  # the column's JSON text, as Dify's Message row holds it
        meta = message_data["message_metadata"] = _json_object(meta)
    if isinstance(meta, dict):
        _clean_usage(meta.get("usage"))
    return message_data


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = fastjson.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _user_from_invoked_by(invoked_by: Any) -> str | None:
    text = none_if_blank(invoked_by)
    if text is None or text == "anonymous":
        return None
    return text.split(":", 1)[1] if ":" in text else text


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None and value != "":
            return value
    return None


class _Facts:
    """Per-type facts gathered before building ``derived``."""

    __slots__ = (
        "cost",
        "currency",
        "error",
        "failed",
        "fallback_seconds",
        "input_tokens",
        "model",
        "output_tokens",
        "provider",
        "span_key",
        "total_tokens",
        "trace_key",
    )

    def __init__(self) -> None:
        self.trace_key: str | None = None
        self.span_key: str = ""
        self.error: str | None = None
        self.failed = False
        self.model: str | None = None
        self.provider: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.total_tokens: int | None = None
        self.cost: float | None = None
        self.currency: str | None = None
        self.fallback_seconds: float | None = None


class Identity:
    """What ``normalize`` works out first, and all ingest needs to store and route a record: its keys, its
    app, its time (a record without one is refused), and the facts the rest of ``derived`` is built from."""

    __slots__ = ("anchor", "app_id", "conversation_id", "end", "end_inferred", "facts", "md", "message_id", "meta",
                 "record_key", "start", "trace_key")

    def __init__(self, record_type: str, data: dict[str, Any], app_id: str | None) -> None:
        self.meta: dict[str, Any] = data.get("metadata") or {}
        meta = self.meta
        message_data = _clean_message_data(data.get("message_data"))
        data["message_data"] = message_data
        md: dict[str, Any] = message_data or {}
        self.md = md
        if "error" in data:
            data["error"] = none_if_blank(data["error"])
        for name in float_fields(record_type):  # NaN, ±Infinity, 1e400: no sink can carry them
            value = data[name]
            if value is not None and not isfinite(value):
                data[name] = None

        facts = self.facts = _Facts()
        _TYPE_FACTS[record_type](data, meta, md, facts)

        start = as_utc(data.get("start_time")) or as_utc(md.get("created_at"))
        end = as_utc(data.get("end_time"))
        if end is not None and not in_range(end):
            end = None  # a bogus end is left out: the record's fallback end applies
        if start is None:
            start = end
        if start is None:
            raise RecordError(f"{record_type} record has no start_time or end_time"
                              + (f" (its end_time is out of range: every sink needs a time {TIME_RANGE})"
                                 if data.get("end_time") is not None else ""))
        if not in_range(start):
            raise RecordError(f"{record_type} record's start_time {start.isoformat()} is out of range: every sink "
                              f"needs a time {TIME_RANGE}")
        self.end_inferred = end is None
        if end is None:
            end = _fallback_end(start, facts.fallback_seconds, md)
        self.start, self.end = start, end

        self.message_id = _first(data.get("message_id"), meta.get("message_id"), md.get("id"))
        self.conversation_id = _first(data.get("conversation_id"), meta.get("conversation_id"),
                                      md.get("conversation_id"))
        anchor = as_utc(md.get("created_at"))
        self.anchor = anchor if anchor is not None and in_range(anchor) else start
        self.trace_key: str = (_first(data.get("trace_id"), facts.trace_key, self.message_id)
                               or f"{record_type}:{facts.span_key}")
        self.record_key = f"{record_type}:{facts.span_key}"
        self.app_id: str | None = _first(app_id, meta.get("app_id"), md.get("app_id"), data.get("app_id"))


def normalize(record_type: str, data: dict[str, Any], app_id: str | None) -> dict[str, Any]:
    """Clean ``data`` in place and attach ``derived``; raise RecordError if it has no usable time."""
    ident = Identity(record_type, data, app_id)
    meta, md, facts = ident.meta, ident.md, ident.facts
    times = timing(ident.start, ident.end)
    data["start_time"], data["end_time"] = times["start"], times["end"]
    conversation_id = ident.conversation_id
    derived = {
        "record_type": record_type,
        "trace_key": ident.trace_key,
        "span_key": facts.span_key,
        "record_key": ident.record_key,
        "anchor_time": ident.anchor,
        **times,
        "end_time_inferred": ident.end_inferred,
        "failed": facts.failed or facts.error is not None,
        "error": facts.error,
        "status": "error" if (facts.failed or facts.error is not None) else "ok",
        "model": facts.model,
        "provider": short_provider(facts.provider),
        "provider_id": none_if_blank(facts.provider),
        "input_tokens": facts.input_tokens,
        "output_tokens": facts.output_tokens,
        "total_tokens": facts.total_tokens,
        "cost": facts.cost,
        "currency": facts.currency,
        "cost_usd": facts.cost if facts.currency in (None, "USD") else None,
        "app_id": ident.app_id,
        "app_name": meta.get("app_name"),
        "tenant_id": _first(data.get("tenant_id"), meta.get("tenant_id")),
        "workflow_id": _first(data.get("workflow_id"), meta.get("workflow_id")),
        "workflow_run_id": _first(data.get("workflow_run_id"), meta.get("workflow_run_id"), md.get("workflow_run_id")),
        "conversation_id": conversation_id,
        "message_id": ident.message_id,
        "session_id": conversation_id,
        "user_id": _first(
            meta.get("from_end_user_id"),
            md.get("from_end_user_id"),
            meta.get("from_account_id"),
            md.get("from_account_id"),
            data.get("from_account_id"),
            meta.get("user_id"),
            data.get("user_id"),
            _user_from_invoked_by(data.get("invoked_by")),
        ),
    }
    inputs = data.get("inputs")
    if isinstance(inputs, (list, str)):  # the prompt as [{role, content}], once for every mapping
        derived["messages"] = [{"role": role, "content": content if isinstance(content, str) else _text(content)}
                               for role, content in message_pairs(inputs, "user")]
    if record_type in _FILE_FIELDS:
        derived["files"] = _files(data, _FILE_FIELDS[record_type])
    if record_type == "dataset_retrieval":
        derived.update(_documents(data.get("documents")))
    elif record_type == "workflow_node":
        derived["nodes"] = [node_from_ee_record(data)]
    data["derived"] = derived
    data["app_id"] = derived["app_id"]
    data["record_type"] = record_type
    return data


_FILE_FIELDS = {"workflow": "file_list", "message": "file_list", "tool": "file_url"}


def _files(data: dict[str, Any], field: str) -> list[Any] | None:
    """The record's files as one list (URL texts or file objects), or None when it has none.

    Dify types ``file_list`` as a list, a text or an object, and ``file_url`` as a text or a list; a
    message's ``message_file_data`` (an object when it serialises at all) adds its ``url`` unless the
    list already holds it (Dify puts ``FILES_URL/<url>`` there).
    """
    value = data.get(field)
    if isinstance(value, str) and value.lstrip().startswith("["):
        with contextlib.suppress(ValueError):  # else a text that only starts like a list: one file name
            value = fastjson.loads(value)
    items = value if isinstance(value, list) else [value]
    files = [item.strip() if isinstance(item, str) else item for item in items
             if (isinstance(item, dict) and item) or (isinstance(item, str) and item.strip())]
    extra = data.get("message_file_data")
    url = none_if_blank(extra.get("url")) if isinstance(extra, dict) else None
    if url is not None and not any(isinstance(f, str) and f.endswith(url) for f in files):
        files.append(url)
    return files or None


def _fallback_end(start: datetime, seconds: float | None, md: dict[str, Any]) -> datetime:
    """Dify's documented fallback for a null end_time: known duration, else the message's update time
    (either only when it ends in range), else the start."""
    if seconds is not None and seconds >= 0:
        end = shifted(start, seconds)
        if end is not None and in_range(end):
            return end
    updated = as_utc(md.get("updated_at"))
    return updated if updated is not None and start <= updated and in_range(updated) else start


def _usage_latency(md: dict[str, Any]) -> float | None:
    usage = (md.get("message_metadata") or {}).get("usage") if isinstance(md.get("message_metadata"), dict) else None
    return to_number(usage.get("latency")) if isinstance(usage, dict) else None


def _usage_currency(md: dict[str, Any]) -> str | None:
    meta = md.get("message_metadata")
    usage = meta.get("usage") if isinstance(meta, dict) else None
    return usage.get("currency") if isinstance(usage, dict) else None


def _workflow(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    f.trace_key = _first(data.get("message_id"), data["workflow_run_id"])
    f.span_key = data["workflow_run_id"]
    f.error = data.get("error")
    f.failed = str(data.get("workflow_run_status") or "").lower() in _FAILED_WORKFLOW_STATUSES
    if f.failed and f.error is None:
        f.error = f"workflow {data.get('workflow_run_status')}"
    f.input_tokens = data.get("prompt_tokens")
    f.output_tokens = data.get("completion_tokens")
    f.total_tokens = data.get("total_tokens")
    f.fallback_seconds = to_number(data.get("workflow_run_elapsed_time"))


def _message(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    f.span_key = _first(data.get("message_id"), md.get("id")) or ""
    f.error = data.get("error") or none_if_blank(md.get("error"))
    f.failed = md.get("status") == "error"
    if f.failed and f.error is None:
        f.error = "message status is error"
    f.model = _first(meta.get("ls_model_name"), md.get("model_id"))
    f.provider = meta.get("ls_provider")
    f.input_tokens = data.get("message_tokens")
    f.output_tokens = data.get("answer_tokens")
    f.total_tokens = data.get("total_tokens")
    f.cost = md.get("total_price")
    f.currency = _usage_currency(md) or ("USD" if f.cost is not None else None)
    f.fallback_seconds = _usage_latency(md)


def _message_child() -> Any:
    def facts(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
        message_id = _first(data.get("message_id"), meta.get("message_id"), md.get("id")) or ""
        start = data.get("start_time")
        stamp = start.isoformat() if isinstance(start, datetime) else str(start)
        f.span_key = f"{message_id}:{stamp}"
        f.error = data.get("error")

    return facts


def _tool(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    _message_child()(data, meta, md, f)
    f.span_key = f"{f.span_key}:{data['tool_name']}"
    f.fallback_seconds = to_number(data.get("time_cost"))


def _suggested_question(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    message_id = _first(data.get("message_id"), md.get("id")) or ""
    f.span_key = message_id
    f.error = data.get("error") or none_if_blank(data.get("status_message") if data.get("status") == "error" else None)
    f.model = data.get("model_id")
    f.provider = data.get("model_provider")
    # total_tokens belongs to the answered message, not to the suggestion call (RECORDS.md §1.3).


def _generate_name(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    conversation_id = _first(data.get("conversation_id"), meta.get("conversation_id")) or ""
    f.trace_key = f"generate_name:{conversation_id}" if conversation_id else None
    start = data.get("start_time")
    stamp = start.isoformat() if isinstance(start, datetime) else str(start)
    f.span_key = f"{conversation_id}:{stamp}"


def _workflow_node(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    f.trace_key = _first(data.get("message_id"), data["workflow_run_id"])
    f.span_key = data["node_execution_id"]
    f.error = data.get("error")
    f.failed = str(data.get("status") or "").lower() in _FAILED_WORKFLOW_STATUSES
    f.model = data.get("model_name")
    f.provider = data.get("model_provider")
    f.input_tokens = data.get("prompt_tokens")
    f.output_tokens = data.get("completion_tokens")
    f.total_tokens = data.get("total_tokens") or None
    f.cost = to_number(data.get("total_price")) or None
    f.currency = data.get("currency")
    f.fallback_seconds = to_number(data.get("elapsed_time"))


def _prompt_generation(data: dict[str, Any], meta: dict[str, Any], md: dict[str, Any], f: _Facts) -> None:
    start = data.get("start_time")
    stamp = start.isoformat() if isinstance(start, datetime) else str(start)
    f.span_key = f"{data.get('tenant_id')}:{data.get('operation_type')}:{stamp}"
    f.error = data.get("error")
    f.model = data.get("model_name")
    f.provider = data.get("model_provider")
    f.input_tokens = data.get("prompt_tokens")
    f.output_tokens = data.get("completion_tokens")
    f.total_tokens = data.get("total_tokens")
    f.cost = to_number(data.get("total_price"))
    f.currency = data.get("currency")
    f.fallback_seconds = to_number(data.get("latency"))


_TYPE_FACTS = {
    "workflow": _workflow,
    "message": _message,
    "tool": _tool,
    "dataset_retrieval": _message_child(),
    "moderation": _message_child(),
    "suggested_question": _suggested_question,
    "generate_name": _generate_name,
    "workflow_node": _workflow_node,
    "prompt_generation": _prompt_generation,
}


def _text(value: Any) -> str:
    return fastjson.dumps(value)


def _documents(documents: Any) -> dict[str, Any]:
    """Retrieval documents as ``[{id, content, score, metadata}]`` plus count and top score."""
    out: list[dict[str, Any]] = []
    for doc in documents if isinstance(documents, list) else []:
        if not isinstance(doc, dict):
            continue
        raw_meta = doc.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        out.append(
            {
                "id": _first(meta.get("doc_id"), meta.get("document_id"), meta.get("segment_id")),
                "content": doc.get("page_content") if doc.get("page_content") is not None else doc.get("content"),
                "score": to_number(_first(meta.get("score"), doc.get("score"))),
                "metadata": meta,
            }
        )
    scores = [d["score"] for d in out if d["score"] is not None]
    return {"documents": out, "document_count": len(out), "top_score": max(scores) if scores else None}


# Every key normalize() may put in ``derived`` (mappings are checked against this at load time).
DERIVED_KEYS = frozenset(
    {
        "record_type", "trace_key", "span_key", "record_key", "anchor_time", "start", "end", "start_ns",
        "end_ns", "start_ms", "duration_ms", "end_time_inferred", "failed", "error", "status", "model",
        "provider", "provider_id", "input_tokens", "output_tokens", "total_tokens", "cost", "currency", "cost_usd",
        "app_id", "app_name", "tenant_id", "workflow_id", "workflow_run_id", "conversation_id", "message_id",
        "session_id", "user_id", "documents", "document_count", "top_score",
        # workflow node spans (enrichment / Enterprise node records)
        "nodes", "nodes_missing", "nodes_incomplete", "nodes_source",
        # the prompt (inputs) as [{role, content}]
        "messages",
        # workflow / message file_list, tool file_url (+ message_file_data's url) as one list
        "files",
    }
)
