"""Secrets are masked as they are sent and in every form an echo or a setting gives them."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote

import httpx
import pytest

from traceexport.errors import ConfigError
from traceexport.logs import secrets_in
from traceexport.redaction import (
    add_secrets,
    describe_error,
    masked_url,
    redact,
    registered_secrets,
    url_without_userinfo,
)
from traceexport.sinks import create_sink
from traceexport.sinks.headers import header_secrets, url_secrets
from traceexport.sinks.http import excerpt
from traceexport.sinks.http_client import make_client
from traceexport.sinks.otlp.config import otlp_settings
from traceexport.sinks.otlp.transport import HttpTransport
from traceexport.sources.celery.settings import CelerySourceSettings
from traceexport.sources.storage import S3Storage, S3StorageSettings

DECODED = "SECRET+PLUS888/slash"
ENV = {"OTEL_EXPORTER_OTLP_HEADERS": "x-custom=SECRET%2BPLUS888%2Fslash", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
       "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}


def echo(status: int) -> httpx.MockTransport:
    """A receiver answering ``status`` with the x-custom header in its body, as text and as a repr."""
    return httpx.MockTransport(lambda request: httpx.Response(
        status, text=f"you sent x-custom={request.headers.get('x-custom')} {dict(request.headers)!r}"))


@pytest.mark.parametrize("status", [400, 500])
def test_url_encoded_env_header_is_masked_as_sent(status: int) -> None:
    """A header from OTEL_EXPORTER_OTLP_HEADERS is masked in its decoded form, the one a receiver echoes."""
    settings = otlp_settings("o", {}, ENV)
    assert settings.headers["x-custom"] == DECODED and DECODED in settings.secrets
    failure = HttpTransport(settings, "otlp", echo(status)).send(b"", 0).failure
    assert failure is not None and failure.permanent == (status == 400)
    assert "PLUS888" not in failure.reason
    assert "x-custom=***" in failure.reason and "'x-custom': '***'" in failure.reason


@pytest.mark.parametrize("status", [400, 500])
def test_config_header_under_any_name_is_masked(status: int) -> None:
    """A config-file header whose name does not look secret (x-custom) is masked in failure reasons too."""
    settings = otlp_settings("o", {"endpoint": "http://127.0.0.1:9", "headers": {"x-custom": "hdrsecret-777"}}, {})
    failure = HttpTransport(settings, "otlp", echo(status)).send(b"", 0).failure
    assert failure is not None and "hdrsecret-777" not in failure.reason


@pytest.mark.parametrize("status", [400, 500])
def test_url_userinfo_is_masked_in_the_basic_auth_httpx_builds(status: int) -> None:
    """httpx sends an endpoint's user:password@ as Basic auth: the token, the pair and the password are masked."""
    settings = otlp_settings("o", {"endpoint": "http://user:SECRET%2FURLPW222@127.0.0.1:9"}, {})
    token = base64.b64encode(b"user:SECRET/URLPW222").decode()
    assert {"SECRET%2FURLPW222", "SECRET/URLPW222", "user:SECRET/URLPW222", token} <= set(settings.secrets)
    body = httpx.MockTransport(lambda request: httpx.Response(status, text=f"got {request.headers['authorization']} "
                                                                         f"{token} for user:SECRET/URLPW222"))
    failure = HttpTransport(settings, "otlp", body).send(b"", 0).failure
    assert failure is not None and "URLPW222" not in failure.reason and token not in failure.reason


def test_redact_masks_every_form_a_secret_takes() -> None:
    """A secret is masked as sent, percent-encoded, JSON-escaped and inside a repr of text or bytes."""
    secret = 'abc+/"\\\n=xyz'
    texts = [secret, f"h={quote(secret, safe='')}", json.dumps({"h": secret}),
             json.dumps({"h": secret}).replace("/", "\\/"), repr(secret), repr(secret.encode())]
    for text in texts:
        assert "xyz" not in redact(text, [secret]), text


def test_an_excerpt_cut_through_a_secret_keeps_no_part_of_it() -> None:
    """A response body is masked before it is cut to an excerpt, so a secret at the cut leaves nothing behind."""
    body = "x" * 290 + " secret-at-the-cut-12345 and more"
    text = excerpt(httpx.Response(400, text=body), ["secret-at-the-cut-12345"])
    assert "secret" not in text and "***" in text


def test_longer_secrets_are_masked_before_their_prefixes() -> None:
    """When one secret begins another, the longer goes first, so no tail of it is left behind."""
    assert redact("value=tokentail-9999 end", ["tokentail", "tokentail-9999"]) == "value=*** end"


def test_registered_secrets_are_masked_by_every_redact_call() -> None:
    """A value registered once is masked by redact() without being passed again (dead letters, logs)."""
    add_secrets(["registered-value-31337"])
    assert "registered-value-31337" in registered_secrets()
    assert "31337" not in redact("boom: registered-value-31337")


def test_header_secrets_include_the_forms_a_scheme_hides() -> None:
    """A Bearer credential alone, a Basic credential decoded and its halves count; short settings do not."""
    basic = base64.b64encode(b"user-1234:pass-5678").decode()
    found = header_secrets({"Authorization": f"Basic {basic}", "x-api-key": "Bearer tok-abcdef",
                            "x-custom": "long-enough-value", "x-version": "4"})
    assert {f"Basic {basic}", basic, "user-1234:pass-5678", "user-1234", "pass-5678", "tok-abcdef",
            "long-enough-value"} <= set(found)
    assert "4" not in found


def test_secrets_in_finds_the_decoded_header_list_values() -> None:
    """The log masks an OTEL_EXPORTER_OTLP_HEADERS value both as written (encoded) and as sent (decoded)."""
    found = secrets_in(ENV)
    assert "SECRET%2BPLUS888%2Fslash" in found and DECODED in found


def test_create_sink_registers_what_the_sink_sends() -> None:
    """Building a Langfuse sink registers its keys and the Basic token made from them, masked from then on."""
    public, secret = "pk-lf-registered-1", "sk-lf-registered-2"
    token = base64.b64encode(f"{public}:{secret}".encode()).decode()
    sink = create_sink("langfuse", "lf", {"host": "http://127.0.0.1:9", "public_key": public, "secret_key": secret},
                       {})
    try:
        assert {public, secret, token} <= registered_secrets()
        assert token not in redact(f"echoed {token}")
    finally:
        sink.shutdown(1.0)


def test_describe_error_never_quotes_the_value_it_failed_on() -> None:
    """An encoding error and h11's illegal header value are described without any part of the value."""
    try:
        "SECRET\u00e9UNI444".encode("ascii")
    except UnicodeEncodeError as exc:
        text = describe_error(exc)
    assert "\u00e9" not in text and "\\xe9" not in text and "ascii" in text
    protocol = httpx.LocalProtocolError("Illegal header value b'Bearer SECRETNL333\\nX-Evil: 1'")
    text = describe_error(protocol)
    assert "Illegal header value" in text and "SECRETNL333" not in text and "Evil" not in text


@pytest.mark.parametrize("options, env", [
    ({"endpoint": "http://u:url#pw-91bd@127.0.0.1:4318"}, {}),
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:url#pw-91bd@127.0.0.1:4318"}),
])
def test_a_bad_otlp_endpoint_is_quoted_with_its_password_masked(options: dict[str, str], env: dict[str, str]) -> None:
    """A refused OTLP endpoint is quoted as written but with its user:password@ password as ***, never in clear."""
    with pytest.raises(ConfigError) as refused:
        otlp_settings("o", options, env)
    assert "91bd" not in str(refused.value) and "u:***@127.0.0.1" in str(refused.value)
    assert "%23" in str(refused.value)  # says how to write the password


def test_a_bad_langfuse_host_is_quoted_with_its_password_masked() -> None:
    """Langfuse's host goes through the same check: its password is masked where the problem quotes it."""
    with pytest.raises(ConfigError) as refused:
        create_sink("langfuse", "lf", {"host": "http://u:host?pw-91bd@127.0.0.1:3000", "public_key": "pk-lf-1",
                                       "secret_key": "sk-lf-2"}, {})
    assert "91bd" not in str(refused.value) and "***" in str(refused.value)


@pytest.mark.parametrize("sink_type, options", [
    ("opik", {"url": "http://u:opik#pw-91bd@127.0.0.1:9/api", "api_key": "k-123456"}),
    ("amplitude", {"server_url": "http://u:amp/pw#91bd@127.0.0.1:9/2/httpapi", "api_key": "k-123456"}),
])
def test_a_password_httpx_cannot_send_is_refused_when_configured(sink_type: str, options: dict[str, str]) -> None:
    """A URL password with an unencoded # ? or / is a ConfigError naming how to fix it, never quoting it; it used to
    pass, and every request then failed with httpx's "Invalid port: '<start of the password>'" in its dead letter."""
    with pytest.raises(ConfigError) as refused:
        create_sink(sink_type, sink_type, options, {})
    assert "pw" not in str(refused.value).replace("password", "") and "%23" in str(refused.value)


def test_url_secrets_never_raises_on_a_url_python_cannot_split() -> None:
    """An unclosed IPv6 bracket made urlsplit raise inside the sink's constructor (a traceback from validate,
    export and serve); the password is still found and the sink builds (httpx reports the host when it sends)."""
    assert "pw-91bd" in url_secrets("http://u:pw-91bd@[bad/api")
    sink = create_sink("opik", "opik", {"url": "http://u:pw-91bd@[bad/api", "api_key": "k-123456"}, {})
    try:
        assert "pw-91bd" in registered_secrets()
    finally:
        sink.shutdown(1.0)


def test_an_otlp_sink_s_repr_masks_its_endpoint_password() -> None:
    """The sink's repr (in a debugger, a traceback's locals, an f-string) showed the endpoint with its password,
    whether the endpoint came from the options or from OTEL_EXPORTER_OTLP_ENDPOINT (sent as Basic auth)."""
    sink = create_sink("otlp", "o", {"endpoint": "http://u:repr-pw-91bd@127.0.0.1:9"}, {})
    try:
        assert "91bd" not in repr(sink) and "u:***@127.0.0.1:9" in repr(sink)
    finally:
        sink.shutdown(1.0)
    sink = create_sink("otlp", "o", {}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ingest:hunter2-secret@127.0.0.1:9"})
    try:
        assert "hunter2" not in repr(sink) and "127.0.0.1:9/v1/traces" in repr(sink)
    finally:
        sink.shutdown(1.0)


def test_masked_url_and_url_without_userinfo() -> None:
    """A URL quoted in a message keeps its user and host but not its password (also one with an unencoded # or
    /); a URL shown as a link loses its user info whole."""
    assert masked_url("http://u:p%2Fw@h:1/x") == "http://u:***@h:1/x"
    assert masked_url("http://u:pa#ss/w@h/x") == "http://u:***@h/x"
    assert masked_url("http://h:1/x") == "http://h:1/x"
    assert url_without_userinfo("https://u:pw-91bd@h:1/x?q=1") == "https://h:1/x?q=1"
    assert "91bd" not in url_without_userinfo("http://u:pw#91bd@h/x")
    assert "91bd" not in url_without_userinfo("http://u:pw-91bd@[bad/x")


def test_a_secret_with_a_tab_or_two_spaces_is_masked_where_a_line_collapses_them() -> None:
    """One-line messages turn each whitespace run into one space (logfmt values, failure excerpts, described
    errors); a key with a tab in it (HTTP allows one inside a header) then no longer matched and was shown."""
    add_secrets(["tabbed\tkey-91bd", "two  spaces-91be"])
    assert "91bd" not in describe_error(ValueError("refused tabbed\tkey-91bd"))
    assert "91be" not in excerpt(httpx.Response(401, text="bad key two  spaces-91be"), [])
    assert "91bd" not in redact("logfmt: v=\"tabbed key-91bd\"")


def test_a_url_password_is_sent_as_basic_auth_but_never_in_the_url_httpx_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs every request's URL at INFO, and Dify's processes (where the hook's sinks send) log at INFO: the
    user:password@ used to be in that line. It now goes only into the Authorization header, as httpx made it."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = make_client(timeout=5.0, transport=httpx.MockTransport(answer))
    with caplog.at_level(logging.INFO, logger="httpx"):
        client.post("http://us%40er:pw%2F91bd@127.0.0.1:9/v1/traces", content=b"")
    client.close()
    assert seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"us@er:pw/91bd").decode()
    assert "91bd" not in str(seen[0].url) and "127.0.0.1:9/v1/traces" in caplog.text
    assert "91bd" not in caplog.text


def test_an_s3_endpoint_s_password_is_masked_in_the_storage_description() -> None:
    """The Celery source logs where it reads Dify's files ("storage s3://bucket/ (endpoint)") at start: an endpoint
    with a user:password@ was logged whole; it shows ***, and the source registers that password for its logs."""
    endpoint = "http://ak:s3-pw%2F91bd@127.0.0.1:9000"
    storage = S3Storage(S3StorageSettings(type="s3", bucket="dify", endpoint_url=endpoint), client=object())
    assert "91bd" not in storage.describe() and "ak:***@127.0.0.1:9000" in storage.describe()
    settings = CelerySourceSettings.from_config({"broker_url": "redis://127.0.0.1:6379/1", "storage": {
        "type": "s3", "bucket": "dify", "endpoint_url": endpoint}}, env={})
    assert {"s3-pw%2F91bd", "s3-pw/91bd"} <= set(settings.secrets())
