"""Backends: one module per sink, looked up by type name.

Each sink module provides ``from_config(name: str, options: Mapping[str, Any], env: Mapping[str, str]) -> Sink``:
``options`` come from the config file (may be empty), ``env`` supplies the backend's usual environment
variables (``OPIK_API_KEY``, ``LANGFUSE_HOST``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` ...). Config-file values
win over the environment. A sink that sends credentials lists them, as sent, in its ``secrets`` attribute;
:func:`create_sink` registers them with :func:`traceexport.redaction.add_secrets`, so they are masked in
every log line, failure reason and dead letter of the process.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from traceexport.errors import ConfigError
from traceexport.redaction import add_secrets
from traceexport.sinks.base import BatchLimits, ExportResult, ItemFailure, Payload, Sink

# sink type -> module under traceexport.sinks
SINK_MODULES: dict[str, str] = {
    "opik": "opik",
    "amplitude": "amplitude",
    "otlp": "otlp",
    "langfuse": "langfuse",
    "file": "file",
    "forward": "forward",
}


def create_sink(sink_type: str, name: str | None = None, options: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> Sink:
    """Build a sink of ``sink_type`` from config-file ``options`` and environment variables."""
    import os

    module_name = SINK_MODULES.get(sink_type)
    if module_name is None:
        known = ", ".join(sorted(SINK_MODULES))
        raise ConfigError([f"unknown sink type {sink_type!r} (known: {known})"])
    module = importlib.import_module(f"traceexport.sinks.{module_name}")
    sink: Sink = module.from_config(name or sink_type, dict(options or {}), os.environ if env is None else env)
    add_secrets(getattr(sink, "secrets", ()))
    return sink


__all__ = ["SINK_MODULES", "BatchLimits", "ExportResult", "ItemFailure", "Payload", "Sink", "create_sink"]
