"""The public API is small and pinned."""

from __future__ import annotations

import traceexport


def test_public_api_is_pinned() -> None:
    """`traceexport.__all__` lists exactly the supported names, and each one exists."""
    assert sorted(traceexport.__all__) == sorted([
        "ConfigError", "ExportError", "Mapping", "Payload", "PermanentExportError", "Record", "RecordError",
        "RetryableExportError", "Sink", "SpoolFullError", "TraceExportError", "__version__", "create_sink",
        "load_mapping", "parse_records", "record_from_obj", "record_from_trace_info",
    ])
    for name in traceexport.__all__:
        assert hasattr(traceexport, name), name
