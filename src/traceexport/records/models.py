"""Tolerant pydantic models of Dify's TraceInfo types (RECORDS.md §1.2).

Like Dify's own models they ignore unknown keys and default missing optional ones; unlike them they
also default fields that older Dify versions did not write, so records from 0.8 to 1.17 all parse.
Only the fields traceexport cannot do without are required: a record missing one is rejected.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

JsonLike = str | dict[str, Any] | list[Any] | None
_JSON_LIKE = (str, dict, list)  # a tuple: a union would be built anew on every call of the validator


class BaseTraceInfo(BaseModel):
    """Fields every TraceInfo carries (all optional in practice)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), arbitrary_types_allowed=True)

    message_id: str | None = None
    message_data: Any = None
    inputs: Any = None
    outputs: Any = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    metadata: dict[str, Any] = {}
    trace_id: str | None = None

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _ensure_json_like(cls, value: Any) -> JsonLike:
        # Dify's ensure_type: keep str/dict/list, None stays None, anything else becomes "".
        if value is None or isinstance(value, _JSON_LIKE):
            return value
        return ""

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_dict(cls, value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}


class WorkflowTraceInfo(BaseTraceInfo):
    workflow_data: Any = None
    conversation_id: str | None = None
    workflow_app_log_id: str | None = None
    workflow_id: str
    tenant_id: str
    workflow_run_id: str
    workflow_run_elapsed_time: float = 0.0
    workflow_run_status: str = ""
    workflow_run_inputs: dict[str, Any] = {}
    workflow_run_outputs: dict[str, Any] = {}
    workflow_run_version: str = ""
    error: str | None = None
    total_tokens: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    file_list: list[Any] = []
    query: str = ""
    invoked_by: str | None = None


class MessageTraceInfo(BaseTraceInfo):
    conversation_model: str = ""
    message_tokens: int = 0
    answer_tokens: int = 0
    total_tokens: int = 0
    error: str | None = None
    file_list: Any = None
    message_file_data: Any = None
    conversation_mode: str = ""
    gen_ai_server_time_to_first_token: float | None = None
    llm_streaming_time_to_generate: float | None = None
    is_streaming_request: bool = False


class ModerationTraceInfo(BaseTraceInfo):
    flagged: bool
    action: str = ""
    preset_response: str = ""
    query: str = ""


class SuggestedQuestionTraceInfo(BaseTraceInfo):
    total_tokens: int = 0
    status: str | None = None
    error: str | None = None
    from_account_id: str | None = None
    agent_based: bool | None = None
    from_source: str | None = None
    model_provider: str | None = None
    model_id: str | None = None
    suggested_question: list[str]
    level: str = ""
    status_message: str | None = None
    workflow_run_id: str | None = None


class DatasetRetrievalTraceInfo(BaseTraceInfo):
    documents: Any = None
    error: str | None = None


class ToolTraceInfo(BaseTraceInfo):
    tool_name: str
    tool_inputs: dict[str, Any] = {}
    tool_outputs: Any = ""
    message_file_data: Any = None
    error: str | None = None
    tool_config: dict[str, Any] = {}
    time_cost: float = 0.0
    tool_parameters: dict[str, Any] = {}
    file_url: str | list[str] | None = None


class GenerateNameTraceInfo(BaseTraceInfo):
    conversation_id: str | None = None
    tenant_id: str


class WorkflowNodeTraceInfo(BaseTraceInfo):
    """Enterprise-only: one workflow node execution."""

    workflow_id: str = ""
    workflow_run_id: str
    tenant_id: str = ""
    node_execution_id: str
    node_id: str = ""
    node_type: str = ""
    title: str = ""
    status: str = ""
    error: str | None = None
    elapsed_time: float = 0.0
    index: int = 0
    predecessor_node_id: str | None = None
    total_tokens: int = 0
    total_price: float = 0.0
    currency: str | None = None
    model_provider: str | None = None
    model_name: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_name: str | None = None
    iteration_id: str | None = None
    iteration_index: int | None = None
    loop_id: str | None = None
    loop_index: int | None = None
    parallel_id: str | None = None
    node_inputs: Any = None
    node_outputs: Any = None
    process_data: Any = None
    invoked_by: str | None = None


class PromptGenerationTraceInfo(BaseTraceInfo):
    """Enterprise-only: a prompt-generator LLM call."""

    tenant_id: str
    user_id: str | None = None
    app_id: str | None = None
    operation_type: str = ""
    instruction: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model_provider: str | None = None
    model_name: str | None = None
    latency: float = 0.0
    total_price: float | None = None
    currency: str | None = None
    error: str | None = None
