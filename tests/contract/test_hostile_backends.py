"""The Opik, Amplitude and Langfuse sinks against answers no real backend should give but a proxy or a
hostile host can: a body that never ends, a redirect to another host, a wait given as an HTTP date, messages
with newlines and thousands of characters. Each export ends promptly with every item classified, in one
short line, without the key."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.raw_server import RawServer, reply

from traceexport.sinks import create_sink
from traceexport.sinks.base import ExportResult, Payload, Sink

KEY = "hostile-test-secret-7c1d9e"
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
BACKENDS = ("opik", "amplitude", "langfuse")


@pytest.fixture
def server() -> Iterator[RawServer]:
    """A raw-socket server on 127.0.0.1, stopped after the test."""
    with RawServer() as raw:
        yield raw


def _sink(backend: str, url: str, timeout: float = 10.0) -> Sink:
    options: dict[str, dict[str, Any]] = {
        "opik": {"url": f"{url}/api", "api_key": KEY},
        "amplitude": {"api_key": KEY, "server_url": f"{url}/2/httpapi"},
        "langfuse": {"public_key": "pk-lf-hostile-1234", "secret_key": KEY, "host": url},
    }
    return create_sink(backend, backend, {**options[backend], "timeout": timeout}, {})


def _payloads(backend: str) -> list[Payload]:
    """Two sample records mapped for ``backend`` by its built-in mapping."""
    from traceexport.mapping import load_mapping
    from traceexport.records import record_from_obj

    mapping = load_mapping(backend)
    files = [SAMPLES / "05-message-chat.json", SAMPLES / "07-tool-call.json"]
    return [p for f in files for p in mapping.map(record_from_obj(json.loads(f.read_text(encoding="utf-8"))))]


def _export(backend: str, url: str, timeout: float = 10.0) -> tuple[ExportResult, int, float]:
    """(result, payload count, seconds taken) of one export of the sample payloads."""
    sink = _sink(backend, url, timeout)
    payloads = _payloads(backend)
    started = time.monotonic()
    try:
        result = sink.export(payloads)
    finally:
        sink.shutdown()
    return result, len(payloads), time.monotonic() - started


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_endless_error_body_is_read_only_up_to_a_cap(backend: str, server: RawServer) -> None:
    """A 502 whose body never ends is classified at once from its status and first bytes (before: the sink
    read it into memory, about a gigabyte a second, until its timeout, and reported it too slow)."""
    server.answer(server.endless_body(502))
    result, count, seconds = _export(backend, server.url, timeout=8.0)
    assert seconds < 5, f"the sink read the endless body for {seconds:.1f} s"
    assert set(result.failures) == set(range(count))
    for failure in result.failures.values():
        assert not failure.permanent and failure.status_code == 502
        assert failure.reason.startswith(f"{backend} answered 502: <html>xxx") and "\n" not in failure.reason
    assert server.bytes_sent < 64 * 1024 * 1024


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_redirect_is_not_followed_and_the_reason_names_its_target(backend: str, status: int,
                                                                     server: RawServer) -> None:
    """A redirect to another host is not followed (the other host receives nothing, so no credential
    travels there); every item fails permanently naming where it pointed, without the query or the key."""
    with RawServer() as elsewhere:
        server.answer(reply(status, headers={"Location": f"{elsewhere.url}/steal?token={KEY}"}))
        result, count, _ = _export(backend, server.url)
        assert elsewhere.requests == []
    assert len(server.requests) == 1
    assert set(result.failures) == set(range(count))
    for failure in result.failures.values():
        assert failure.permanent and failure.status_code == status
        assert f"redirected the request ({status}) to {elsewhere.url}/steal: not followed" in failure.reason
        assert KEY not in failure.reason and "token" not in failure.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_error_body_leaves_no_dangling_colon(backend: str, server: RawServer) -> None:
    """A 503 without a body reads "<backend> answered 503", not "<backend> answered 503:"."""
    server.answer(reply(503))
    result, _, _ = _export(backend, server.url)
    assert {f.reason for f in result.failures.values()} == {f"{backend} answered 503"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(backend: str, server: RawServer) -> None:
    """A 429's Retry-After given in seconds or as an HTTP date becomes every item's wait."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    server.answer(reply(429, headers={"Retry-After": "7"}))
    result, _, _ = _export(backend, server.url)
    assert {f.retry_after for f in result.failures.values()} == {7.0}
    server.answer(reply(429, headers={"Retry-After": when}))
    result, _, _ = _export(backend, server.url)
    waits = {f.retry_after for f in result.failures.values()}
    assert len(waits) == 1 and 100 < (waits.pop() or 0) <= 120
    assert all(not f.permanent and f.status_code == 429 for f in result.failures.values())


@pytest.mark.parametrize("answer", [
    {"code": 400, "error": "Invalid field values\non some events\r\n" + "E" * 5000,
     "events_with_invalid_fields": {"time\nTraceback (most recent call last):": [0]}},
    {"code": 400, "error": "Invalid field values on some events",
     "events_with_invalid_fields": {f"field_{n}\n{KEY}": [0] for n in range(300)}},
    {"code": 400, "error": "Request missing required field", "missing_field": "api\nkey" + "k" * 3000},
])
def test_amplitude_reasons_from_its_answer_stay_one_short_line(answer: dict[str, Any], server: RawServer) -> None:
    """Amplitude's ``error``, field names and ``missing_field`` reach a dead-letter reason as one line of a few
    hundred characters without the key (before: their newlines and every one of their characters were kept)."""
    server.answer(reply(400, json.dumps(answer).encode(), {"Content-Type": "application/json"}), reply(200))
    result, _, _ = _export("amplitude", server.url)
    assert result.failures
    for failure in result.failures.values():
        assert failure.permanent and failure.status_code == 400
        assert "\n" not in failure.reason and "\r" not in failure.reason
        assert len(failure.reason) < 600 and KEY not in failure.reason


def test_a_partial_success_message_stays_one_short_line(server: RawServer) -> None:
    """Langfuse's (any OTLP receiver's) partial_success message becomes one short line in every reason and
    warning (before: its newlines and all of its text were kept)."""
    message = "span refused:\nTraceback (most recent call last):\n" + "x" * 5000
    answer = {"partialSuccess": {"rejectedSpans": 1, "errorMessage": message}}
    server.answer(reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}))
    result, count, _ = _export("langfuse", server.url)
    assert set(result.failures) == set(range(count)) and result.warnings
    for text in [*(f.reason for f in result.failures.values()), *result.warnings]:
        assert "\n" not in text and len(text) < 600


@pytest.mark.parametrize("value", ["in a while", "Mon, 99 Foo 2026 25:00:00 GMT", "nan", "inf"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_retry_after_leaves_the_wait_to_the_backoff(backend: str, value: str,
                                                                  server: RawServer) -> None:
    """A Retry-After that is neither seconds nor a date gives no wait (Amplitude: its documented 30 s), and the
    export still classifies every item (before: a value with a space raised ValueError out of export, and
    "nan" became a NaN wait)."""
    server.answer(reply(429, headers={"Retry-After": value}))
    result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    expected = 30.0 if backend == "amplitude" else None
    assert {(f.permanent, f.status_code, f.retry_after) for f in result.failures.values()} == {
        (False, 429, expected)}


@pytest.mark.parametrize("scale", [1, 1000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rate_limit_reset_given_as_a_unix_time_is_read_as_one(backend: str, scale: int,
                                                                 server: RawServer) -> None:
    """X-RateLimit-Reset as a Unix time (seconds or milliseconds), its usual form, waits until then (before: the
    timestamp was read as seconds to wait and held the sink for the hour-long cap)."""
    reset = int((time.time() + 90) * scale)
    server.answer(reply(429, headers={"X-RateLimit-Reset": str(reset)}))
    result, _, _ = _export(backend, server.url)
    waits = {f.retry_after for f in result.failures.values()}
    assert len(waits) == 1 and 60 < (waits.pop() or 0) <= 90


@pytest.mark.parametrize("body", [
    b"\x1b[2J\x1b[31mbackend on fire\x1b[0m\x00\x07",
    b'{"errors": ["bad \\u001b[31mspan\\u0000"], "code": 400, "error": "Invalid \\u001b]0;title\\u0007 key",'
    b' "events_with_invalid_fields": {"time\\u001b[1m": [0]}}',
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_control_characters_in_an_answer_are_escaped(backend: str, body: bytes, server: RawServer) -> None:
    """Terminal escapes and NULs in an error body (or in Opik's errors, Amplitude's error and field names) reach
    a reason escaped, so a log line or ``dlq list`` cannot be driven by the backend (before: kept as sent)."""
    server.answer(reply(400, body, {"Content-Type": "application/json"}))
    result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    for failure in result.failures.values():
        assert failure.reason.isprintable(), failure.reason
    shown_as = ("\\x1b", "\\u001b")  # escaped by the sink, or JSON's escape of a body shown as text
    assert any(form in failure.reason for failure in result.failures.values() for form in shown_as)


@pytest.mark.parametrize("backend", (*BACKENDS, "otlp"))
def test_a_web_page_answering_200_is_not_taken_for_delivery(backend: str, server: RawServer) -> None:
    """A 200 carrying an HTML page (a login portal, a web app answering every path at a mistyped URL) fails
    every record retryably, naming the URL as the thing to check: it used to count them all delivered."""
    server.answer(reply(200, b"<!doctype html><title>Sign in</title>", {"Content-Type": "text/html; charset=utf-8"}))
    if backend == "otlp":
        sink = create_sink("otlp", "otlp", {"endpoint": f"{server.url}/v1/traces", "protocol": "http/protobuf"}, {})
        payloads = _payloads("otlp")
        try:
            result, count = sink.export(payloads), len(payloads)
        finally:
            sink.shutdown()
    else:
        result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    assert all(not f.permanent and "with a web page" in f.reason for f in result.failures.values())


@pytest.mark.parametrize("status", [505, 507, 520, 522, 524, 599])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_5xx_is_retried(backend: str, status: int, server: RawServer) -> None:
    """Any 5xx, a CDN's 520-524 among them (the origin down or slow), is retryable as the README says (before:
    only 500, 502, 503 and 504 were, and the rest sent every record of an outage to the dead letter)."""
    server.answer(reply(status, b"<html>origin unreachable</html>"))
    result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    assert all(not f.permanent and f.status_code == status for f in result.failures.values())


@pytest.mark.parametrize("status", [400, 429])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_json_answer_nested_too_deeply_is_shown_not_raised(backend: str, status: int,
                                                             server: RawServer) -> None:
    """An error body nested 200,000 deep (which Python's JSON parser refuses with RecursionError) is classified
    by its status and shown as an excerpt (before: Opik's and Amplitude's export raised RecursionError)."""
    body = b'{"errors": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    server.answer(reply(status, body, {"Content-Type": "application/json"}))
    result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    assert {f.permanent for f in result.failures.values()} == {status == 400}
    assert all('{"errors": [[[' in f.reason for f in result.failures.values())


@pytest.mark.parametrize("quota", [7, "user", [{"id": 1}], None])
def test_amplitude_reads_a_malformed_daily_quota_as_none(quota: Any, server: RawServer) -> None:
    """A 429 whose exceeded_daily_quota_users is not a map of ids (a number, a text, a list of objects) throttles
    its events for 30 s instead of raising TypeError out of export (before: ``id in 7`` raised)."""
    answer = {"code": 429, "error": "Too many requests for some devices and users", "throttled_events": [0],
              "exceeded_daily_quota_users": quota}
    server.answer(reply(429, json.dumps(answer).encode(), {"Content-Type": "application/json"}), reply(200))
    result, _, _ = _export("amplitude", server.url)
    assert set(result.failures) == {0}
    assert not result.failures[0].permanent and result.failures[0].retry_after == 30.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refusal_of_the_credentials_quotes_the_answer_without_the_key(backend: str, server: RawServer) -> None:
    """A 403 saying why (Langfuse: ingestion suspended over a usage threshold) keeps that in the reason beside
    the settings to check, the key masked (before: only "check the keys", which misled for a quota)."""
    body = {"error": "ForbiddenError", "message": f"Ingestion suspended: Usage threshold exceeded ({KEY})"}
    server.answer(reply(403, json.dumps(body).encode(), {"Content-Type": "application/json"}))
    result, count, _ = _export(backend, server.url)
    assert set(result.failures) == set(range(count))
    for failure in result.failures.values():
        assert failure.permanent and failure.status_code == 403
        assert f"{backend} refused the credentials (403): " in failure.reason
        assert "Usage threshold exceeded (***)" in failure.reason and "; check " in failure.reason
        assert KEY not in failure.reason
