"""The record types traceexport understands, by canonical name and by Dify's class name."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from traceexport.records import models

# canonical name -> (Dify class name, model)
RECORD_TYPES: dict[str, tuple[str, type[BaseModel]]] = {
    "workflow": ("WorkflowTraceInfo", models.WorkflowTraceInfo),
    "message": ("MessageTraceInfo", models.MessageTraceInfo),
    "tool": ("ToolTraceInfo", models.ToolTraceInfo),
    "dataset_retrieval": ("DatasetRetrievalTraceInfo", models.DatasetRetrievalTraceInfo),
    "moderation": ("ModerationTraceInfo", models.ModerationTraceInfo),
    "suggested_question": ("SuggestedQuestionTraceInfo", models.SuggestedQuestionTraceInfo),
    "generate_name": ("GenerateNameTraceInfo", models.GenerateNameTraceInfo),
    # Enterprise-only types: accepted where possible.
    "workflow_node": ("WorkflowNodeTraceInfo", models.WorkflowNodeTraceInfo),
    "prompt_generation": ("PromptGenerationTraceInfo", models.PromptGenerationTraceInfo),
}

COMMUNITY_TYPES = (
    "workflow",
    "message",
    "tool",
    "dataset_retrieval",
    "moderation",
    "suggested_question",
    "generate_name",
)

_ALIASES: dict[str, str] = {}
for _name, (_class_name, _model) in RECORD_TYPES.items():
    _ALIASES[_name] = _name
    _ALIASES[_class_name] = _name
    _ALIASES[_class_name.lower()] = _name
# Dify's TraceTaskName values and other spellings seen in the wild.
_ALIASES.update(
    {
        "DraftNodeExecutionTrace": "workflow_node",
        "node_execution": "workflow_node",
        "draft_node_execution": "workflow_node",
        "generate_conversation_name": "generate_name",
        "conversation_name": "generate_name",
        "retrieval": "dataset_retrieval",
    }
)


def canonical_type(name: str) -> str | None:
    """The canonical record type for a Dify class name, task name or canonical name; None if unknown."""
    return _ALIASES.get(name) or _ALIASES.get(name.strip().lower())


def dify_class_name(record_type: str) -> str:
    """Dify's class name for a canonical record type (what ``TaskData.trace_info_type`` holds)."""
    return RECORD_TYPES[record_type][0]


def _is_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return float in get_args(annotation)
    return False


_FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(field for field, info in model.model_fields.items() if _is_float(info.annotation))
    for name, (_, model) in RECORD_TYPES.items()
}


def float_fields(record_type: str) -> tuple[str, ...]:
    """The fields of a record type's model that hold a float (where NaN and infinities can hide)."""
    return _FLOAT_FIELDS[record_type]
