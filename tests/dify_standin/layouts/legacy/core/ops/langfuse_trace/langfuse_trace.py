"""Stand-in of core/ops/langfuse_trace/langfuse_trace.py."""

from tests.dify_standin.common.builtin import LangFuseDataTrace

__all__ = ["LangFuseDataTrace"]
