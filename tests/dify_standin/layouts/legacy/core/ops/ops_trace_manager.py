"""Older layout: a UserDict registry whose __getitem__ is a closed match over core.ops.* providers."""

import collections
from typing import Any

from tests.dify_standin.common.manager import OpsTraceManager

from core.ops.entities.config_entity import TracingProviderEnum


class OpsTraceProviderConfigMap(collections.UserDict[str, dict[str, Any]]):
    def __getitem__(self, provider: str) -> dict[str, Any]:
        match provider:
            case TracingProviderEnum.LANGFUSE:
                from core.ops.entities.config_entity import LangfuseConfig
                from core.ops.langfuse_trace.langfuse_trace import LangFuseDataTrace

                return {"config_class": LangfuseConfig, "secret_keys": ["public_key", "secret_key"],
                        "other_keys": ["host"], "trace_instance": LangFuseDataTrace}
            case _:
                raise KeyError(f"Unsupported tracing provider: {provider}")


provider_config_map = OpsTraceProviderConfigMap()

__all__ = ["OpsTraceManager", "OpsTraceProviderConfigMap", "provider_config_map"]
