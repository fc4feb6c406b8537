"""Stand-in of the newer services/ops_service.py: a supported-name set computed from the enum at import."""

from core.ops.entities.config_entity import TracingProviderEnum
from core.ops.ops_trace_manager import OpsTraceManager, provider_config_map
from tests.dify_standin.common.manager import create_tracing_app_config

_SUPPORTED_TRACING_PROVIDERS = frozenset(provider.value for provider in TracingProviderEnum)


def configured_providers(names: list[str]) -> list[str]:
    """Like OpsService._canonical_provider_names: unknown names are filtered out."""
    return [name for name in names if name in _SUPPORTED_TRACING_PROVIDERS]


__all__ = ["OpsTraceManager", "configured_providers", "create_tracing_app_config", "provider_config_map"]
