"""The library hook: traceexport as a Dify tracing provider named ``traceexport``.

``install()`` makes the name resolve in Dify's closed provider registry (see :mod:`.registry`); the
autoload (:mod:`.autoload`, run from a ``.pth`` file when ``TRACEEXPORT_DIFY_HOOK=1``) calls it in every
Dify process. ``stats()`` reports what the hook did. The provider's config and trace-instance classes are
:class:`TraceExportConfig` and :class:`TraceExportTrace` (imported lazily: importing this package costs
next to nothing until Dify asks for the provider).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traceexport.dify.names import PROVIDER_NAME
from traceexport.dify.registry import install, installed, uninstall

if TYPE_CHECKING:
    from traceexport.dify.config import TraceExportConfig
    from traceexport.dify.provider import TraceExportTrace


def __getattr__(name: str) -> Any:
    if name == "TraceExportConfig":
        from traceexport.dify.config import TraceExportConfig

        return TraceExportConfig
    if name == "TraceExportTrace":
        from traceexport.dify.provider import TraceExportTrace

        return TraceExportTrace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stats() -> dict[str, Any]:
    """The hook's counters (traced, queued, dropped, accepted, errors, ...) and per-exporter metrics."""
    from traceexport.dify.counters import STATS
    from traceexport.dify.runtime import runtime_metrics

    return {**STATS.snapshot(), "exporters": runtime_metrics()}


def flush(timeout: float = 5.0) -> bool:
    """Wait until every record handed to the hook is in its spool (not necessarily delivered)."""
    from traceexport.dify.runtime import flush_all

    return flush_all(timeout)


__all__ = ["PROVIDER_NAME", "TraceExportConfig", "TraceExportTrace", "flush", "install", "installed", "stats",
           "uninstall"]
