"""Reading the provider's stored config can never fail in Dify: a decrypt that leaves out what it cannot read.

Dify decrypts an app's stored ``tracing_config`` (``OpsTraceManager.decrypt_tracing_config``) for the
console and, through ``TraceQueueManager(app_id)``, in the request path of every chat, agent and workflow
run, unguarded. A secret key stored in plain text (an empty ``token`` written by an earlier traceexport, a
masked ``***`` Dify stored as it was) or encrypted for another key pair raises there, and the app's
requests fail. For the ``traceexport`` provider only, this wraps that classmethod: an empty secret is left
out before decrypting, and a secret that still cannot be decrypted is left out after one warning (the
provider then falls back to the environment, e.g. ``TRACEEXPORT_FORWARD_TOKEN``). Other providers are
passed through untouched.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from traceexport.dify.names import PROVIDER_NAME, SECRET_KEYS

_MARK = "_traceexport_original_decrypt"
log = logging.getLogger("traceexport.dify")


def patch_decrypt(manager_class: Any) -> bool:
    """Wrap ``manager_class.decrypt_tracing_config`` (Dify's ``OpsTraceManager``); False if it has none."""
    if not isinstance(manager_class, type) or _MARK in manager_class.__dict__:
        return isinstance(manager_class, type)
    original = manager_class.__dict__.get("decrypt_tracing_config")
    if not isinstance(original, classmethod):
        return False
    decrypt = original.__func__

    def decrypt_tracing_config(cls: Any, tenant_id: str, tracing_provider: str, tracing_config: Any) -> Any:
        if tracing_provider != PROVIDER_NAME or not isinstance(tracing_config, dict):
            return decrypt(cls, tenant_id, tracing_provider, tracing_config)
        readable = {k: v for k, v in tracing_config.items() if not (k in SECRET_KEYS and not v)}
        try:
            return decrypt(cls, tenant_id, tracing_provider, readable)
        except Exception as exc:
            return _without_secrets(cls, decrypt, tenant_id, readable, exc)

    setattr(manager_class, _MARK, original)
    setattr(manager_class, "decrypt_tracing_config", classmethod(decrypt_tracing_config))  # noqa: B010
    return True


def _without_secrets(cls: Any, decrypt: Any, tenant_id: str, config: dict[str, Any], exc: Exception) -> Any:
    """The config decrypted without its secret keys, cached where Dify caches decrypted configs."""
    from traceexport.dify.counters import RATE_LOG, STATS

    STATS.incr("unreadable_configs")
    RATE_LOG("dify.hook.stored_secret_unreadable", reason=f"{type(exc).__name__}: {exc}".splitlines()[0],
             hint="the stored token is left out (TRACEEXPORT_FORWARD_TOKEN applies); save the config again to fix")
    result = decrypt(cls, tenant_id, PROVIDER_NAME, {k: v for k, v in config.items() if k not in SECRET_KEYS})
    cache = getattr(cls, "decrypted_configs_cache", None)
    if cache is not None:
        try:  # Dify's own cache key, so later reads do not try (and fail) again
            cache[(tenant_id, PROVIDER_NAME, json.dumps(config, sort_keys=True))] = result
        except Exception as cache_exc:  # a changed cache shape only costs a retry next time
            log.debug("decrypted config not cached: %s", cache_exc)
    return dict(result) if isinstance(result, dict) else result


def is_patched(manager_class: Any) -> bool:
    """True when ``manager_class.decrypt_tracing_config`` is guarded."""
    return isinstance(manager_class, type) and _MARK in manager_class.__dict__


def original_decrypt(manager_class: Any) -> Any:
    """Dify's own ``decrypt_tracing_config`` of ``manager_class``, unguarded (bound to the class)."""
    original = manager_class.__dict__.get(_MARK) or manager_class.__dict__["decrypt_tracing_config"]
    return original.__get__(None, manager_class)


def unpatch_decrypt(manager_class: Any) -> None:
    """Restore Dify's original classmethod (tests)."""
    if isinstance(manager_class, type) and _MARK in manager_class.__dict__:
        setattr(manager_class, "decrypt_tracing_config", manager_class.__dict__[_MARK])  # noqa: B010
        delattr(manager_class, _MARK)


__all__ = ["is_patched", "original_decrypt", "patch_decrypt", "unpatch_decrypt"]
