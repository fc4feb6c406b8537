"""Stand-in of dify_trace_langfuse.langfuse_trace."""

from tests.dify_standin.common.builtin import LangFuseDataTrace

__all__ = ["LangFuseDataTrace"]
