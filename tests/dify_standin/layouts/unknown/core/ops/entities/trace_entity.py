"""Stand-in of core/ops/entities/trace_entity.py."""

from tests.dify_standin.common.entities import (
    BaseTraceInfo,
    DatasetRetrievalTraceInfo,
    GenerateNameTraceInfo,
    MessageTraceInfo,
    ModerationTraceInfo,
    SuggestedQuestionTraceInfo,
    TaskData,
    ToolTraceInfo,
    WorkflowTraceInfo,
)

__all__ = ["BaseTraceInfo", "DatasetRetrievalTraceInfo", "GenerateNameTraceInfo", "MessageTraceInfo",
           "ModerationTraceInfo", "SuggestedQuestionTraceInfo", "TaskData", "ToolTraceInfo", "WorkflowTraceInfo"]
