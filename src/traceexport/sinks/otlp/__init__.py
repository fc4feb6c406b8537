"""The ``otlp`` sink: OTLP/HTTP (protobuf or JSON) or OTLP/gRPC to any OTLP backend or Collector.

Options (config file, win over the environment) and their environment variables:

=====================  =========================================================  ============================
option                 environment                                                 default
=====================  =========================================================  ============================
``endpoint``           ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended)  ``http://localhost:4318``
``traces_endpoint``    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is)
``protocol``           ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``                   ``http/protobuf``
``headers``            ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`` (``k=v,k=v``)
``compression``        ``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``                none (the OTLP default)
``timeout`` (s)        ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` (ms)               10 s
``insecure``           ``OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`` (gRPC, no scheme) false
``service_name``       ``OTEL_SERVICE_NAME``                                       ``dify``
``resource_attributes``  ``OTEL_RESOURCE_ATTRIBUTES``
``project_name``       (resource ``openinference.project.name``, Phoenix)
``certificate``        ``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`` (PEM)           the default roots
``client_certificate``, ``client_key``  ``..._CLIENT_CERTIFICATE``, ``..._CLIENT_KEY`` (PEM, mutual TLS)
``max_spans``, ``max_bytes``, ``linger_seconds``                                  512, 4 MiB, 1 s
``max_bisect_requests`` (extra requests per batch to isolate refused records)     64
=====================  =========================================================  ============================

Outcomes: a 400/413/422 (gRPC ``INVALID_ARGUMENT``, or ``RESOURCE_EXHAUSTED`` for a message over the
receiver's size limit) refuses the request for its content, so the sink bisects it by record until the
refused records stand alone. A ``partial_success`` that rejected spans
fails every payload of its request permanently, with the counts (see :meth:`OtlpSink.export`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traceexport.sinks.otlp.config import OtlpOptions, OtlpSettings, otlp_settings
from traceexport.sinks.otlp.sink import OtlpSink


def from_config(name: str, options: Mapping[str, Any], env: Mapping[str, str]) -> OtlpSink:
    """An :class:`OtlpSink` from config-file ``options`` and ``OTEL_*`` environment variables."""
    return OtlpSink(name, otlp_settings(name, options, env))


__all__ = ["OtlpOptions", "OtlpSettings", "OtlpSink", "from_config"]
