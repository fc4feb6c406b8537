"""Stand-in of services/ops_service.py (older): validates through the shared registry instance."""

from core.ops.ops_trace_manager import OpsTraceManager, provider_config_map
from tests.dify_standin.common.manager import create_tracing_app_config

__all__ = ["OpsTraceManager", "create_tracing_app_config", "provider_config_map"]
