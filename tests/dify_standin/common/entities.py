"""Stand-in TraceInfo models with the field names, types and defaults RECORDS.md §1.2 lists."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator


class BaseTraceInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    message_id: str | None = None
    message_data: Any | None = None
    inputs: str | dict[str, Any] | list[Any] | None = None
    outputs: str | dict[str, Any] | list[Any] | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    metadata: dict[str, Any]
    trace_id: str | None = None

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def ensure_type(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | dict | list):
            return value
        return ""

    @field_serializer("start_time", "end_time")
    def serialize_time(self, value: datetime | None) -> str | None:
        return value.isoformat() if value else None


class WorkflowTraceInfo(BaseTraceInfo):
    workflow_data: Any = None
    conversation_id: str | None = None
    workflow_app_log_id: str | None = None
    workflow_id: str
    tenant_id: str
    workflow_run_id: str
    workflow_run_elapsed_time: int | float
    workflow_run_status: str
    workflow_run_inputs: Mapping[str, Any]
    workflow_run_outputs: Mapping[str, Any]
    workflow_run_version: str
    error: str | None = None
    total_tokens: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    file_list: list[str]
    query: str
    metadata: dict[str, Any]
    invoked_by: str | None = None


class MessageTraceInfo(BaseTraceInfo):
    conversation_model: str
    message_tokens: int
    answer_tokens: int
    total_tokens: int
    error: str | None = None
    file_list: str | dict[str, Any] | list[Any] | None = None
    message_file_data: Any | None = None
    conversation_mode: str
    gen_ai_server_time_to_first_token: float | None = None
    llm_streaming_time_to_generate: float | None = None
    is_streaming_request: bool = False


class ModerationTraceInfo(BaseTraceInfo):
    flagged: bool
    action: str
    preset_response: str
    query: str


class SuggestedQuestionTraceInfo(BaseTraceInfo):
    total_tokens: int
    status: str | None = None
    error: str | None = None
    from_account_id: str | None = None
    agent_based: bool | None = None
    from_source: str | None = None
    model_provider: str | None = None
    model_id: str | None = None
    suggested_question: list[str]
    level: str
    status_message: str | None = None
    workflow_run_id: str | None = None


class DatasetRetrievalTraceInfo(BaseTraceInfo):
    documents: Any = None
    error: str | None = None


class ToolTraceInfo(BaseTraceInfo):
    tool_name: str
    tool_inputs: dict[str, Any]
    tool_outputs: str
    metadata: dict[str, Any]
    message_file_data: Any = None
    error: str | None = None
    tool_config: dict[str, Any]
    time_cost: int | float
    tool_parameters: dict[str, Any]
    file_url: str | list[str] | None = None


class GenerateNameTraceInfo(BaseTraceInfo):
    conversation_id: str | None = None
    tenant_id: str


class TaskData(BaseModel):
    app_id: str
    trace_info_type: str
    trace_info: Any = None


TRACE_INFO_TYPES: dict[str, type[BaseTraceInfo]] = {
    cls.__name__: cls
    for cls in (WorkflowTraceInfo, MessageTraceInfo, ModerationTraceInfo, SuggestedQuestionTraceInfo,
                DatasetRetrievalTraceInfo, ToolTraceInfo, GenerateNameTraceInfo)
}


__all__ = ["BaseTraceInfo", "DatasetRetrievalTraceInfo", "GenerateNameTraceInfo", "MessageTraceInfo",
           "ModerationTraceInfo", "SuggestedQuestionTraceInfo", "TaskData", "ToolTraceInfo", "WorkflowTraceInfo"]
