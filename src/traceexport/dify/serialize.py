"""Dify's live TraceInfo values as JSON-safe data, the way Dify's TaskData file holds the same record.

In Dify's Celery worker, ``tasks/ops_trace_task.py`` rebuilds ``message_data`` with ``Message.from_dict``
and ``workflow_data`` with ``WorkflowRun.from_dict`` before calling the provider. Those rebuilt rows keep
``created_at`` as the string the file held, and ``Message.to_dict()`` then raises on
``created_at.isoformat()``. So a row is never serialised through its ``to_dict()``: its loaded column
values are read from SQLAlchemy's instance state (no lazy load, no database access), keyed by column name
as ``to_dict()`` keys them. ``from_dict`` JSON-encodes a few columns (``Message.message_metadata``,
``WorkflowRun.graph``/``inputs``/``outputs``); those are decoded back, so the result matches the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

# Columns that Dify's from_dict() stores JSON-encoded while the TaskData file holds them decoded.
_JSON_TEXT_COLUMNS = {"messages": frozenset({"message_metadata"}),
                      "workflow_runs": frozenset({"graph", "inputs", "outputs"})}
_MAX_DEPTH = 64


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: ORM rows by column, models dumped, datetimes ISO, Decimals as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return json_safe(value.value, depth + 1)
    if isinstance(value, Decimal | UUID):
        return str(value)
    row = orm_row(value)
    if row is not None:
        return json_safe(row, depth + 1)
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # a pydantic model, e.g. a retrieved Document
        return json_safe(dump(), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe({f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}, depth + 1)
    return None  # something Dify's own file could not hold either


def orm_row(value: Any) -> dict[str, Any] | None:
    """A SQLAlchemy row's loaded column values by column name, or None for anything else."""
    mapper = getattr(type(value), "__mapper__", None)
    state = getattr(value, "_sa_instance_state", None)
    if mapper is None or state is None:
        return None
    loaded = state.dict  # what is loaded or set; reading it never queries the database
    table = getattr(getattr(mapper, "local_table", None), "name", "")
    decode = _JSON_TEXT_COLUMNS.get(table, frozenset())
    row: dict[str, Any] = {}
    for attribute in mapper.column_attrs:
        if attribute.key not in loaded:
            continue
        name = attribute.columns[0].name
        column_value = loaded[attribute.key]
        if name in decode and isinstance(column_value, str):
            column_value = _decoded(column_value)
        row[name] = column_value
    return row


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


__all__ = ["json_safe", "orm_row"]
