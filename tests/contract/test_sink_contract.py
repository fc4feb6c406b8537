"""Every registered sink honours the Sink protocol: pure request bodies, classified outcomes, idempotent shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from traceexport.errors import ConfigError
from traceexport.sinks import SINK_MODULES, Sink, create_sink
from traceexport.sinks.base import ExportResult, Payload

# Minimal settings per sink type, all pointing at a closed loopback port (nothing listens on 9).
CLOSED = "http://127.0.0.1:9"
SETTINGS: dict[str, dict[str, Any]] = {
    "opik": {"url": CLOSED},
    "amplitude": {"api_key": "k-123456", "server_url": f"{CLOSED}/2/httpapi"},
    "otlp": {"endpoint": CLOSED},
    "langfuse": {"host": CLOSED, "public_key": "pk-lf-1", "secret_key": "sk-lf-1"},
    "forward": {"url": CLOSED},
    "file": {},
}
PAYLOADS: dict[str, Payload] = {
    "opik": Payload("span", {"id": "019ceba6-415a-7727-9557-e6d117e8aadc", "start_time": "2026-03-14T09:21:07Z",
                             "trace_id": "019ceba6-415a-71c1-b825-bab6ba022cbc"}, "k"),
    "amplitude": Payload("event", {"event_type": "e", "user_id": "user-1", "time": 1, "insert_id": "i"}, "k"),
    "otlp": Payload("span", {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "n", "startTimeUnixNano": 1,
                             "endTimeUnixNano": 2, "attributes": {}}, "k"),
    "forward": Payload("envelope", {"app_id": "a", "trace_info_type": "MessageTraceInfo", "trace_info": {}}, "k"),
    "file": Payload("span", {"x": 1}, "k"),
}
PAYLOADS["langfuse"] = PAYLOADS["otlp"]


def _sink(sink_type: str, tmp_path: Path) -> Sink:
    options = dict(SETTINGS[sink_type])
    if sink_type == "file":
        options["path"] = str(tmp_path / "out")
    return create_sink(sink_type, f"test-{sink_type}", options, env={})


def test_every_registered_sink_is_covered() -> None:
    """The contract suite knows every sink type in the registry."""
    assert set(SETTINGS) == set(SINK_MODULES)


@pytest.mark.parametrize("sink_type", sorted(SINK_MODULES))
def test_sink_lifecycle_and_outcome_classes(sink_type: str, tmp_path: Path) -> None:
    """A sink builds from settings, bodies are pure, a dead backend is retryable, and shutdown is idempotent."""
    sink = _sink(sink_type, tmp_path)
    assert isinstance(sink, Sink)
    assert sink.name == f"test-{sink_type}" and sink.limits.max_items >= 1
    assert sink.request_bodies([]) == []
    assert sink.request_bodies([PAYLOADS[sink_type]])  # no I/O: nothing listens, yet bodies come back
    result = sink.export([PAYLOADS[sink_type]])
    assert isinstance(result, ExportResult)
    if sink_type == "file":
        assert result.ok
    else:  # nothing listens on the port: one attempt, classified retryable, never raised
        assert not result.failures[0].permanent
    sink.shutdown(1.0)
    sink.shutdown(1.0)


@pytest.mark.parametrize("sink_type", sorted(set(SINK_MODULES) - {"file"}))
def test_bad_settings_are_one_config_error_without_secrets(sink_type: str) -> None:
    """An unknown option is a ConfigError naming the key path; secret values never appear in the message."""
    options = {**SETTINGS[sink_type], "no_such_option": "x", "api_key": "super-secret-value-1"}
    if sink_type in ("otlp", "langfuse", "forward"):
        options.pop("api_key")
    with pytest.raises(ConfigError) as caught:
        create_sink(sink_type, "s", options, env={})
    text = caught.value.render()
    assert "no_such_option" in text
    assert "super-secret-value-1" not in text
