"""Stand-in OpsTraceManager / OpsService / worker task over in-memory tables (no database)."""

from __future__ import annotations

import importlib
import json
from typing import Any

APPS: dict[str, dict[str, Any]] = {}          # app_id -> {"tenant_id", "tracing"}
TRACE_CONFIGS: dict[tuple[str, str], dict[str, Any]] = {}  # (app_id, provider) -> encrypted config


def _registry() -> Any:
    return importlib.import_module("core.ops.ops_trace_manager").provider_config_map


def reset() -> None:
    APPS.clear()
    TRACE_CONFIGS.clear()


class OpsTraceManager:
    @classmethod
    def encrypt_tracing_config(cls, tenant_id: str, provider: str, config: dict[str, Any]) -> dict[str, Any]:
        entry = _registry()[provider]
        new: dict[str, Any] = {k: f"enc:{config[k]}" for k in entry["secret_keys"] if k in config}
        new.update({k: config.get(k, "") for k in entry["other_keys"]})
        return dict(entry["config_class"](**new).model_dump())

    @classmethod
    def decrypt_tracing_config(cls, tenant_id: str, provider: str, config: dict[str, Any]) -> dict[str, Any]:
        entry = _registry()[provider]
        new: dict[str, Any] = {k: str(config[k]).removeprefix("enc:") for k in entry["secret_keys"] if k in config}
        new.update({k: config.get(k, "") for k in entry["other_keys"]})
        return dict(entry["config_class"](**new).model_dump())

    @classmethod
    def get_decrypted_tracing_config(cls, app_id: str, provider: str) -> dict[str, Any] | None:
        stored = TRACE_CONFIGS.get((app_id, provider))
        if stored is None:
            return None
        return cls.decrypt_tracing_config(APPS[app_id]["tenant_id"], provider, stored)

    @classmethod
    def get_ops_trace_instance(cls, app_id: str) -> Any:
        tracing = json.loads(APPS[app_id].get("tracing") or "null")
        if not tracing or not tracing.get("enabled"):
            return None
        provider = tracing["tracing_provider"]
        try:
            entry = _registry()[provider]
        except KeyError:
            return None
        config = cls.get_decrypted_tracing_config(app_id, provider)
        if not config:
            return None
        return entry["trace_instance"](entry["config_class"](**config))

    @classmethod
    def update_app_tracing_config(cls, app_id: str, enabled: bool, provider: str | None) -> None:
        if provider is not None:
            try:
                _registry()[provider]
            except KeyError:
                raise ValueError(f"Invalid tracing provider: {provider}") from None
        APPS[app_id]["tracing"] = json.dumps({"enabled": enabled, "tracing_provider": provider})

    @staticmethod
    def check_trace_config_is_effective(config: dict[str, Any], provider: str) -> bool:
        entry = _registry()[provider]
        return bool(entry["trace_instance"](entry["config_class"](**config)).api_check())


def create_tracing_app_config(app_id: str, provider: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """What the console's POST /apps/<app_id>/trace-config does, minus the database."""
    try:
        _registry()[provider]
    except KeyError:
        return {"error": f"Invalid tracing provider: {provider}"}
    if not OpsTraceManager.check_trace_config_is_effective(dict(config), provider):
        return {"error": "Invalid Credentials"}
    if (app_id, provider) in TRACE_CONFIGS:
        return None
    tenant = APPS[app_id]["tenant_id"]
    TRACE_CONFIGS[(app_id, provider)] = OpsTraceManager.encrypt_tracing_config(tenant, provider, config)
    return {"result": "success"}


def process_trace_task(task_data: dict[str, Any]) -> None:
    """What the Celery ``ops_trace`` task does: rebuild the TraceInfo, call the app's provider."""
    from tests.dify_standin.common.entities import TRACE_INFO_TYPES

    trace_info = TRACE_INFO_TYPES[task_data["trace_info_type"]](**task_data["trace_info"])
    instance = OpsTraceManager.get_ops_trace_instance(task_data["app_id"])
    if instance is not None:
        instance.trace(trace_info)
