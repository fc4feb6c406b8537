"""Stand-in of dify_trace_langfuse.config."""

from tests.dify_standin.common.config_base import LangfuseConfig

__all__ = ["LangfuseConfig"]
