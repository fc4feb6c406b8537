"""The tee: keep an app's Dify built-in provider (e.g. Langfuse) receiving its traces as well.

The built-in provider's config stays stored in Dify (one ``trace_app_config`` row per app and provider,
kept when the app switches to ``traceexport``). The tee builds that provider's instance through Dify's own
registry and decryption, caches it for a few minutes per app, and calls its ``trace()``. Whatever it
raises is counted and swallowed: the tee can never break the export or Dify.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from traceexport.dify.config import PROVIDER_NAME
from traceexport.dify.counters import RATE_LOG, STATS

REGISTRY_MODULE = "core.ops.ops_trace_manager"
CACHE_SECONDS = 300.0
CACHE_SIZE = 128

_cache: dict[tuple[str, str], tuple[float, Any]] = {}
_lock = threading.Lock()


def _build_instance(provider: str, app_id: str) -> Any:
    module = sys.modules.get(REGISTRY_MODULE)
    if module is None:
        return None
    config = module.OpsTraceManager.get_decrypted_tracing_config(app_id, provider)
    if not config:
        return None
    entry = module.provider_config_map[provider]
    return entry["trace_instance"](entry["config_class"](**config))


def tee_instance(provider: str, app_id: str) -> Any:
    """Dify's built-in provider instance for ``app_id`` (cached), or None when it has no stored config."""
    key = (provider, app_id)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    instance = _build_instance(provider, app_id)
    with _lock:
        if len(_cache) >= CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = (now + CACHE_SECONDS, instance)
    return instance


def call_tee(provider: str, app_id: str | None, trace_info: Any) -> None:
    """Hand ``trace_info`` to the built-in ``provider`` of its app; never raises."""
    if provider == PROVIDER_NAME:
        return
    try:
        if app_id is None:
            RATE_LOG("dify.hook.tee_skipped", provider=provider, reason="the record names no app_id")
            return
        instance = tee_instance(provider, app_id)
        if instance is None:
            RATE_LOG("dify.hook.tee_skipped", provider=provider, app_id=app_id,
                     reason=f"the app has no stored {provider} config")
            return
        STATS.incr("tee_calls")
        instance.trace(trace_info)
    except Exception as exc:
        STATS.incr("tee_errors")
        RATE_LOG("dify.hook.tee_failed", provider=provider, error=f"{type(exc).__name__}: {exc}")


def clear_cache() -> None:
    """Forget cached tee instances (config changes are otherwise seen after ``CACHE_SECONDS``)."""
    with _lock:
        _cache.clear()


def after_fork() -> None:
    """A new lock in a forked child; cached instances are rebuilt there (their clients may hold sockets)."""
    global _lock
    _lock = threading.Lock()
    _cache.clear()


__all__ = ["call_tee", "clear_cache", "tee_instance"]
