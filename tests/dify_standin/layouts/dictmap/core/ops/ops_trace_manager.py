"""Oldest layout: provider_config_map is a plain dict keyed by enum values."""

from tests.dify_standin.common.builtin import LangFuseDataTrace
from tests.dify_standin.common.manager import OpsTraceManager

from core.ops.base_trace_instance import BaseTraceInstance  # noqa: F401 - imported here as in Dify
from core.ops.entities.config_entity import LangfuseConfig, TracingProviderEnum

provider_config_map = {
    TracingProviderEnum.LANGFUSE.value: {"config_class": LangfuseConfig, "secret_keys": ["public_key", "secret_key"],
                                         "other_keys": ["host"], "trace_instance": LangFuseDataTrace},
}

__all__ = ["OpsTraceManager", "provider_config_map"]
