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


def test_redact_masks_tokens_after_their_scheme() -> None:
    """redact() hides the credential itself, including what follows 'Bearer'/'Basic' in a header."""
    from traceexport.sinks.http import redact

    for text in ("authorization: Bearer abcdefghijkl", "Authorization: Basic cGs6c2s9c2VjcmV0",
                 '{"api_key": "abcdefghijkl"}', "token=abcdefghijkl&x=1", "Bearer abcdefghijkl"):
        assert "abcdefghijkl" not in redact(text) and "cGs6c2s9c2VjcmV0" not in redact(text), text
