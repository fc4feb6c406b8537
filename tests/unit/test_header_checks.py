"""Header names, values and credentials that HTTP cannot carry are configuration errors, never send failures."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from traceexport.config.check import validate_config_file
from traceexport.errors import ConfigError
from traceexport.sinks import create_sink
from traceexport.sinks.headers import header_problems, name_problem, value_problem
from traceexport.sinks.otlp.config import OtlpSettings
from traceexport.sinks.otlp.transport import HttpTransport

URL = "http://127.0.0.1:9"
BAD_VALUES = {"newline": "Bearer SECRETNL333\nX-Evil: 1", "carriage return": "SECRETCR333\rx",
              "nul": "SECRETNUL333\x00x", "non-ascii": "SECRET\u00e9UNI444", "trailing space": "SECRETSP333 "}


def config_error(sink_type: str, options: dict[str, Any], env: dict[str, str] | None = None) -> str:
    """The text of the ConfigError building the sink raises (the test fails if it builds)."""
    with pytest.raises(ConfigError) as info:
        create_sink(sink_type, "s", options, env or {}).shutdown(1.0)
    return str(info.value)


@pytest.mark.parametrize("kind", BAD_VALUES)
@pytest.mark.parametrize(("sink_type", "options", "env", "where"), [
    ("otlp", {"endpoint": URL, "headers": {"x-custom": "{v}"}}, {}, "sinks.s.headers.x-custom"),
    ("otlp", {"endpoint": URL, "protocol": "grpc", "headers": {"x-custom": "{v}"}}, {}, "sinks.s.headers.x-custom"),
    ("otlp", {"endpoint": URL}, {"OTEL_EXPORTER_OTLP_HEADERS": "x-custom={v}"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    ("otlp", {"endpoint": URL}, {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-custom={v}"},
     "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    ("langfuse", {"host": URL, "public_key": "pk-lf-1", "secret_key": "sk-lf-1", "headers": {"x-custom": "{v}"}},
     {}, "sinks.s.headers.x-custom"),
    ("opik", {"url": URL, "api_key": "{v}"}, {}, "sinks.s.api_key"),
    ("opik", {"url": URL}, {"OPIK_API_KEY": "{v}"}, "OPIK_API_KEY"),
    ("opik", {"url": URL, "workspace": "{v}"}, {}, "sinks.s.workspace"),
    ("forward", {"url": URL, "token": "{v}"}, {}, "sinks.s.token"),
])
def test_unsendable_values_are_config_errors_naming_the_key(kind: str, sink_type: str, options: dict[str, Any],
                                                          env: dict[str, str], where: str) -> None:
    """Every sink that builds headers refuses an unsendable value at build time, naming where it was set."""
    value = BAD_VALUES[kind]
    if options.get("protocol") == "grpc":
        pytest.importorskip("grpc")
    fill = {k: v.replace("{v}", quote(value, safe="") if k.endswith("_HEADERS") else value)  # a list: URL-encoded
            for k, v in env.items()}
    text = config_error(sink_type, _filled(options, value), fill)
    assert where in text
    assert "SECRET" not in text and "Evil" not in text and "\u00e9" not in text


def _filled(options: dict[str, Any], value: str) -> dict[str, Any]:
    return {k: (_filled(v, value) if isinstance(v, dict) else v.replace("{v}", value) if isinstance(v, str) else v)
            for k, v in options.items()}


def test_validate_catches_a_bad_value_from_an_env_substitution(tmp_path: Path) -> None:
    """A ${VAR} in a config-file header is checked as substituted, and `validate` names its key path."""
    path = tmp_path / "c.yaml"
    path.write_text('sinks:\n  o:\n    type: otlp\n    endpoint: "http://127.0.0.1:9"\n'
                    '    headers: {x-api-key: "${MY_KEY}"}\n', encoding="utf-8")
    problems = validate_config_file(path, env={"MY_KEY": "SECRETENV555\r\nX-Evil: 1"})
    text = " | ".join(str(p) for p in problems)
    assert [p.where for p in problems] == ["sinks.o.headers.x-api-key"]
    assert "line break" in text and "SECRETENV555" not in text


def test_bad_header_names_are_refused_without_echoing_them() -> None:
    """A header name that is not an HTTP token (or not a gRPC metadata key) is a problem naming its position."""
    problems = header_problems({"good": "v", "bad name": "v"}, {"good": "ENV", "bad name": "ENV"})
    assert [(p.where, "number 2" in p.message, "bad name" in p.message) for p in problems] == [("ENV", True, False)]
    assert name_problem("x!y") is None and name_problem("x!y", grpc=True) is not None


def test_sendable_values_pass() -> None:
    """Visible ASCII with inner spaces or tabs, and an empty value, are sendable; a tab is not gRPC metadata."""
    for value in ("Bearer abc.DEF-123", "a\tb", "", "x=y; z"):
        assert value_problem(value) is None, value
    assert value_problem("a\tb", grpc=True) is not None


def test_amplitude_key_travels_in_the_body_so_any_text_is_accepted() -> None:
    """Amplitude sends its key inside the JSON body, not a header: a non-ASCII key is not a header problem."""
    create_sink("amplitude", "a", {"api_key": "key-\u00e9-not-a-header"}, {}).shutdown(1.0)


def test_a_bad_header_at_send_time_shows_no_part_of_it() -> None:
    """If an unsendable header still reaches h11 (settings built by hand), the reason quotes none of it."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        settings = OtlpSettings(endpoint=f"http://127.0.0.1:{port}/v1/traces", protocol="http/json", timeout=2,
                                headers={"authorization": BAD_VALUES["newline"]})
        transport = HttpTransport(settings, "otlp")
        failure = transport.send(b"", 0).failure
        transport.close()
    finally:
        listener.close()
    assert failure is not None and "could not be sent" in failure.reason and "unreachable" not in failure.reason
    assert "SECRETNL333" not in failure.reason and "Evil" not in failure.reason


def _sent_headers(settings: OtlpSettings) -> list[tuple[str, str]]:
    """The header lines one OTLP/HTTP request with ``settings`` carries (captured before any network)."""
    seen: list[tuple[str, str]] = []

    def capture(request: httpx.Request) -> httpx.Response:
        seen.extend(request.headers.multi_items())
        return httpx.Response(200)

    transport = HttpTransport(settings, "otlp", client_transport=httpx.MockTransport(capture))
    transport.send(b"", 0)
    transport.close()
    return seen


def test_a_header_configured_in_another_case_is_sent_once() -> None:
    """HTTP header names are case-insensitive: a config header overrides the environment's and a fixed one of the
    same name in any case, and each goes out once (two spellings used to send both)."""
    otlp = create_sink("otlp", "s", {"endpoint": URL, "headers": {"authorization": "Bearer CONFIGURED1",
                                                                  "user-agent": "mine/1"}},
                       {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20FROMENV1"})
    sent = _sent_headers(otlp.settings)  # type: ignore[attr-defined]
    assert [v for k, v in sent if k == "authorization"] == ["Bearer CONFIGURED1"]
    assert [v for k, v in sent if k == "user-agent"] == ["mine/1"]
    langfuse = create_sink("langfuse", "s", {"host": URL, "public_key": "pk-lf-1", "secret_key": "sk-lf-1",
                                             "headers": {"AUTHORIZATION": "Bearer NOTUSED1"}}, {})
    sent = _sent_headers(langfuse.settings)  # type: ignore[attr-defined]
    assert [v for k, v in sent if k == "authorization"] == ["Basic cGstbGYtMTpzay1sZi0x"]
