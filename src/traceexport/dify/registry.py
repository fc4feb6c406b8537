"""Make ``traceexport`` a provider name Dify's closed tracing registry resolves, with the least patching.

Dify keeps its providers in ``core.ops.ops_trace_manager``, in one of two shapes:

* **class registry** (Dify ≥ 1.3, both the older ``core.ops.<provider>`` modules and the newer
  ``dify_trace_<name>`` packages): ``OpsTraceProviderConfigMap.__getitem__`` is a closed ``match``. The
  module and ``services.ops_service`` share one instance, so the *class* method is wrapped: our name
  returns our entry, every other name goes to Dify's original.
* **dict registry** (older releases): ``provider_config_map`` is a plain dict; our entry is added to it.

Where Dify validates against ``TracingProviderEnum`` (newer releases compute a set of supported names
from it), the enum learns the ``traceexport`` value too. Anything else is an unrecognised layout: one clear
log line, nothing patched, nothing raised.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from types import ModuleType
from typing import Any

from traceexport.dify import importhook
from traceexport.dify.names import OTHER_KEYS, PROVIDER_NAME, SECRET_KEYS
from traceexport.dify.stored_config import patch_decrypt, unpatch_decrypt

log = logging.getLogger("traceexport.dify")

REGISTRY_MODULE = "core.ops.ops_trace_manager"
CONFIG_MODULE = "core.ops.entities.config_entity"
BASE_INSTANCE_MODULE = "core.ops.base_trace_instance"
SERVICE_MODULE = "services.ops_service"
_MARK = "_traceexport_original"
_state: dict[str, Any] = {"installed": None}


def provider_entry() -> dict[str, Any]:
    """The registry entry Dify expects, with Dify's base classes mixed in when they are loaded."""
    from traceexport.dify.config import TraceExportConfig
    from traceexport.dify.provider import TraceExportTrace

    config_base = getattr(sys.modules.get(CONFIG_MODULE), "BaseTracingConfig", None)
    instance_base = getattr(sys.modules.get(BASE_INSTANCE_MODULE), "BaseTraceInstance", None)
    key = (config_base, instance_base)
    cached = _state.get("entry")
    if cached is None or cached[0] != key:
        config_class: type = TraceExportConfig
        instance_class: type = TraceExportTrace
        if isinstance(config_base, type) and not issubclass(TraceExportConfig, config_base):
            config_class = type("TraceExportConfig", (TraceExportConfig, config_base), {"__module__": __name__})
        if isinstance(instance_base, type):
            instance_class = type("TraceExportTrace", (TraceExportTrace, instance_base), {"__module__": __name__})
        entry = {"config_class": config_class, "secret_keys": list(SECRET_KEYS), "other_keys": list(OTHER_KEYS),
                 "trace_instance": instance_class}
        cached = _state["entry"] = (key, entry)
    return dict(cached[1])


def _entry_or_key_error() -> dict[str, Any]:
    """Our entry; a KeyError (Dify's "no such provider", handled on every path) if it cannot be built."""
    try:
        return provider_entry()
    except Exception as exc:
        log_event(log, "dify.hook.provider_unavailable", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        raise KeyError(f"traceexport provider unavailable: {type(exc).__name__}") from exc


def _patch_class(registry_class: type) -> None:
    if _MARK in registry_class.__dict__:
        return
    original_getitem = registry_class.__dict__["__getitem__"]
    original_contains = getattr(registry_class, "__contains__", None)

    def __getitem__(self: Any, key: Any) -> Any:
        if key == PROVIDER_NAME:
            return _entry_or_key_error()
        return original_getitem(self, key)

    def __contains__(self: Any, key: Any) -> bool:
        if key == PROVIDER_NAME:
            return True
        return bool(original_contains(self, key)) if original_contains is not None else False

    setattr(registry_class, _MARK, (original_getitem, registry_class.__dict__.get("__contains__")))
    setattr(registry_class, "__getitem__", __getitem__)  # noqa: B010 - patching a dunder on the class
    setattr(registry_class, "__contains__", __contains__)  # noqa: B010


def _extend_enum(enum_class: Any) -> None:
    """Let ``"traceexport" in TracingProviderEnum`` and iteration over it include our name."""
    if os.environ.get("TRACEEXPORT_DIFY_EXTEND_ENUM", "1") == "0" or not isinstance(enum_class, enum.EnumMeta):
        return
    if PROVIDER_NAME in enum_class._value2member_map_:
        return
    try:
        member: Any = str.__new__(enum_class, PROVIDER_NAME)  # type: ignore[arg-type]
        member._name_ = PROVIDER_NAME.upper()
        member._value_ = PROVIDER_NAME
        member.__objclass__ = enum_class
        member._sort_order_ = len(enum_class._member_names_)
        enum_class._member_map_[member._name_] = member
        enum_class._member_names_.append(member._name_)
        enum_class._value2member_map_[PROVIDER_NAME] = member
    except Exception as exc:  # an exotic enum: the registry patch alone still works
        log_event(log, "dify.hook.enum_not_extended", logging.DEBUG, error=f"{type(exc).__name__}: {exc}")


def _extend_service(module: ModuleType) -> None:
    """Newer ``services.ops_service`` keeps a frozenset of supported names computed at import."""
    supported = getattr(module, "_SUPPORTED_TRACING_PROVIDERS", None)
    if isinstance(supported, frozenset | set) and PROVIDER_NAME not in supported:
        module._SUPPORTED_TRACING_PROVIDERS = frozenset(supported) | {PROVIDER_NAME}  # type: ignore[attr-defined]


def patch_registry(module: ModuleType) -> bool:
    """Patch Dify's registry module; False (after one log line) when its layout is not recognised."""
    registry_class = getattr(module, "OpsTraceProviderConfigMap", None)
    registry = getattr(module, "provider_config_map", None)
    if isinstance(registry_class, type) and "__getitem__" in registry_class.__dict__:
        _patch_class(registry_class)
        layout = "class"
    elif type(registry) is dict:
        registry[PROVIDER_NAME] = provider_entry()
        layout = "dict"
    else:
        _unrecognised(f"{module.__name__} has neither OpsTraceProviderConfigMap.__getitem__ "
                      "nor a provider_config_map dict")
        return False
    if not patch_decrypt(getattr(module, "OpsTraceManager", None)):
        log_event(log, "dify.hook.decrypt_not_guarded", logging.WARNING,
                  reason=f"{module.__name__}.OpsTraceManager.decrypt_tracing_config not found; an unreadable "
                         "stored config would not be tolerated")
    _extend_enum(getattr(sys.modules.get(CONFIG_MODULE), "TracingProviderEnum", None))
    importhook.when_imported(SERVICE_MODULE, _extend_service)
    _state["installed"] = layout
    log_event(log, "dify.hook.installed", logging.INFO, provider=PROVIDER_NAME, layout=layout)
    return True


def log_event(logger: logging.Logger, event: str, level: int, **fields: Any) -> None:
    """Structured log line (imported lazily: the start-up hook must not pull in HTTP/SSL modules)."""
    from traceexport.logs import log_event as emit

    emit(logger, event, level, **fields)


def _unrecognised(detail: str) -> None:
    _state["installed"] = False
    log_event(log, "dify.hook.not_installed", logging.WARNING,
              reason=f"unrecognised Dify layout: {detail}; the traceexport provider is not available")


def _safe_patch(module: ModuleType) -> None:
    try:
        patch_registry(module)
    except Exception as exc:
        _unrecognised(f"patching {module.__name__} failed ({type(exc).__name__}: {exc})")


def install(*, defer: bool = False) -> bool:
    """Register the ``traceexport`` provider in Dify's registry; idempotent, never raises.

    With ``defer`` (what the autoload uses) a registry module that is not imported yet is patched the
    moment Dify imports it; the return value is then True while waiting. Without ``defer`` the registry
    is imported now. False (after one log line) when Dify's layout is not recognised.
    """
    try:
        module = sys.modules.get(REGISTRY_MODULE)
        if module is None and defer:
            importhook.when_imported(REGISTRY_MODULE, _safe_patch)
            return True
        if module is None:
            try:
                module = __import__(REGISTRY_MODULE, fromlist=["_"])
            except ImportError as exc:
                _unrecognised(f"{REGISTRY_MODULE} cannot be imported ({type(exc).__name__}: {exc})")
                return False
        return patch_registry(module)
    except Exception as exc:
        _unrecognised(f"{type(exc).__name__}: {exc}")
        return False


def uninstall() -> None:
    """Undo :func:`install` where possible (tests): restore the class methods, drop the dict entry."""
    importhook.forget()
    module = sys.modules.get(REGISTRY_MODULE)
    registry_class = getattr(module, "OpsTraceProviderConfigMap", None)
    if isinstance(registry_class, type) and _MARK in registry_class.__dict__:
        getitem, contains = registry_class.__dict__[_MARK]
        setattr(registry_class, "__getitem__", getitem)  # noqa: B010
        if contains is None:
            delattr(registry_class, "__contains__")
        else:
            setattr(registry_class, "__contains__", contains)  # noqa: B010
        delattr(registry_class, _MARK)
    registry = getattr(module, "provider_config_map", None)
    if type(registry) is dict:
        registry.pop(PROVIDER_NAME, None)
    unpatch_decrypt(getattr(module, "OpsTraceManager", None))
    _state["installed"] = None
    _state.pop("entry", None)


def installed() -> str | bool | None:
    """``"class"`` / ``"dict"`` when installed, False when the layout was not recognised, None if not tried."""
    value: str | bool | None = _state["installed"]
    return value


__all__ = ["install", "installed", "patch_registry", "provider_entry", "uninstall"]
