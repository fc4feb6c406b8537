"""Newer layout: the registry imports built-ins from dify_trace_<name> packages, ImportError re-raised."""

import collections
from typing import Any, TypedDict

from tests.dify_standin.common.manager import OpsTraceManager

from core.ops.entities.config_entity import TracingProviderEnum


class TracingProviderConfigEntry(TypedDict):
    config_class: Any
    secret_keys: list[str]
    other_keys: list[str]
    trace_instance: Any


class OpsTraceProviderConfigMap(collections.UserDict[str, TracingProviderConfigEntry]):
    def __getitem__(self, key: str) -> TracingProviderConfigEntry:
        try:
            match key:
                case TracingProviderEnum.LANGFUSE:
                    from dify_trace_langfuse.config import LangfuseConfig
                    from dify_trace_langfuse.langfuse_trace import LangFuseDataTrace

                    return {"config_class": LangfuseConfig, "secret_keys": ["public_key", "secret_key"],
                            "other_keys": ["host"], "trace_instance": LangFuseDataTrace}
                case TracingProviderEnum.LANGSMITH:
                    from dify_trace_langsmith.config import LangSmithConfig  # not installed here
                    from dify_trace_langsmith.langsmith_trace import LangSmithDataTrace

                    return {"config_class": LangSmithConfig, "secret_keys": ["api_key"],
                            "other_keys": ["project", "endpoint"], "trace_instance": LangSmithDataTrace}
                case _:
                    raise KeyError(f"Unsupported tracing provider: {key}")
        except ImportError:
            raise ImportError(f"Provider {key} is not installed.") from None


provider_config_map = OpsTraceProviderConfigMap()

__all__ = ["OpsTraceManager", "OpsTraceProviderConfigMap", "TracingProviderConfigEntry", "provider_config_map"]
