"""traceexport: Dify's LLM trace records, mapped declaratively and delivered reliably.

The small public API: parse records, load a mapping, map a record to payloads, build a sink.
Everything else is internal and may change.
"""

from traceexport.errors import (
    ConfigError,
    ExportError,
    PermanentExportError,
    RecordError,
    RetryableExportError,
    SpoolFullError,
    TraceExportError,
)
from traceexport.mapping import Mapping, load_mapping
from traceexport.records import Record, parse_records, record_from_obj, record_from_trace_info
from traceexport.sinks import Payload, Sink, create_sink

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExportError",
    "Mapping",
    "Payload",
    "PermanentExportError",
    "Record",
    "RecordError",
    "RetryableExportError",
    "Sink",
    "SpoolFullError",
    "TraceExportError",
    "__version__",
    "create_sink",
    "load_mapping",
    "parse_records",
    "record_from_obj",
    "record_from_trace_info",
]
