"""The ``otlp`` sink over TLS with its own trusted certificate and a client certificate (mutual TLS), set by the
OpenTelemetry specification's OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE / CLIENT_CERTIFICATE / CLIENT_KEY or by
the options of the same names, against the fakes on 127.0.0.1 serving a certificate from a throwaway CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.contract.test_otlp_sink import span
from tests.fakes.otlp_server import OtlpFake, OtlpGrpcFake
from tests.support.tls import Pki, make_pki

from traceexport.errors import ConfigError
from traceexport.sinks.otlp import from_config

pytest.importorskip("cryptography", reason="the test extra's cryptography makes the certificates")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki, *, mutual: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=pki.ca)
    return context


@pytest.fixture(params=[False, True], ids=["tls", "mutual-tls"])
def https_fake(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[OtlpFake, bool]]:
    with OtlpFake().use_tls(server_context(pki, mutual=request.param)) as server:
        yield server, request.param


def tls_env(pki: Pki, *, mutual: bool, prefix: str = "OTEL_EXPORTER_OTLP_") -> dict[str, str]:
    env = {f"{prefix}CERTIFICATE": str(pki.ca)}
    if mutual:
        env |= {f"{prefix}CLIENT_CERTIFICATE": str(pki.client_cert), f"{prefix}CLIENT_KEY": str(pki.client_key)}
    return env


def export_one(options: dict[str, Any], env: dict[str, str]) -> Any:
    sink = from_config("o", options, env)
    try:
        return sink.export([span(0)])
    finally:
        sink.shutdown()


def test_https_trusts_the_certificate_the_environment_names(https_fake: tuple[OtlpFake, bool], pki: Pki) -> None:
    """OTLP/HTTP to a receiver whose certificate a private CA signed delivers with OTEL_EXPORTER_OTLP_CERTIFICATE
    (and, for mutual TLS, the client certificate and key) set (before: the variables were ignored, every request
    failed the handshake and the records went to the dead letter)."""
    fake, mutual = https_fake
    result = export_one({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": fake.url, **tls_env(pki, mutual=mutual)})
    assert result.ok, result.failures
    assert [s["spanId"] for s in fake.spans] == ["0000000000000001"]


def test_https_without_the_certificate_is_refused_and_retryable(https_fake: tuple[OtlpFake, bool]) -> None:
    """Without the trusted certificate the handshake fails: a retryable failure, nothing delivered."""
    fake, _ = https_fake
    failure = export_one({"endpoint": fake.url}, {}).failures[0]
    assert not failure.permanent and not fake.spans


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_grpc_over_tls_uses_the_configured_files(pki: Pki, mutual: bool) -> None:
    """OTLP/gRPC to https:// uses the options certificate, client_certificate and client_key (before: gRPC's
    default roots only, and the options were unknown keys)."""
    pytest.importorskip("grpc", reason="grpc extra not installed")
    tls = (pki.server_key.read_bytes(), pki.server_cert.read_bytes(), pki.ca.read_bytes() if mutual else None)
    with OtlpGrpcFake(tls=tls) as fake:
        options: dict[str, Any] = {"protocol": "grpc", "endpoint": fake.url, "timeout": 5, "certificate": str(pki.ca)}
        if mutual:
            options |= {"client_certificate": str(pki.client_cert), "client_key": str(pki.client_key)}
        result = export_one(options, {})
    assert result.ok, result.failures
    assert len(fake.spans) == 1


def test_per_signal_variables_win(pki: Pki, tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE wins over OTEL_EXPORTER_OTLP_CERTIFICATE, as for every setting."""
    with OtlpFake().use_tls(server_context(pki, mutual=False)) as fake:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": fake.url, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "none.pem"),
               **tls_env(pki, mutual=False, prefix="OTEL_EXPORTER_OTLP_TRACES_")}
        assert export_one({}, env).ok


@pytest.mark.parametrize(("files", "where", "says"), [
    ({"CERTIFICATE": "missing"}, "OTEL_EXPORTER_OTLP_CERTIFICATE", "cannot be read"),
    ({"CERTIFICATE": "not-pem"}, "OTEL_EXPORTER_OTLP_CERTIFICATE", "not a PEM certificate"),
    ({"CLIENT_CERTIFICATE": "client_cert"}, "sinks.o.client_key", "needs both"),
    ({"CLIENT_CERTIFICATE": "client_cert", "CLIENT_KEY": "not-pem"}, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
     "must be a matching"),
])
def test_unusable_files_are_config_errors_naming_the_variable(pki: Pki, tmp_path: Path, files: dict[str, str],
                                                              where: str, says: str) -> None:
    """A file that is missing or not PEM, or half of the client pair, is a ConfigError at validate and start-up
    naming where it was set (before: ignored, then a TLS failure on every request)."""
    (tmp_path / "not-pem").write_text("hello\n")
    paths = {"missing": str(tmp_path / "missing.pem"), "not-pem": str(tmp_path / "not-pem"),
             "client_cert": str(pki.client_cert)}
    env = {f"OTEL_EXPORTER_OTLP_{name}": paths[value] for name, value in files.items()}
    with pytest.raises(ConfigError) as caught:
        from_config("o", {"endpoint": "https://127.0.0.1:1"}, env)
    assert f"{where}: " in str(caught.value) and says in str(caught.value)
