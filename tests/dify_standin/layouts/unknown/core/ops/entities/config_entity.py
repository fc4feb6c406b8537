"""Stand-in of core/ops/entities/config_entity.py."""

from tests.dify_standin.common.config_base import (
    BaseTracingConfig,
    LangfuseConfig,
    LangSmithConfig,
    TracingProviderEnum,
)

__all__ = ["BaseTracingConfig", "LangSmithConfig", "LangfuseConfig", "TracingProviderEnum"]
