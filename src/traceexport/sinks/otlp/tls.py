"""The OTLP exporter's TLS files, as the OpenTelemetry specification names them: the receiver's trusted
certificate (``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE``, option ``certificate``) and the client's certificate
and key for mutual TLS (``..._CLIENT_CERTIFICATE`` / ``..._CLIENT_KEY``, options ``client_certificate`` /
``client_key``), all PEM files.

They are checked when the sink is configured (read and loaded, so a missing file or one that is not PEM is a
ConfigError at ``validate`` and start-up, never a TLS failure per request), then become an ``ssl.SSLContext``
for OTLP/HTTP or channel credentials for OTLP/gRPC. A trusted certificate replaces the default roots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from traceexport.errors import Problem

if TYPE_CHECKING:  # ssl is imported when files are set or a sink sends: `map` and the Dify hook never need it
    import ssl


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the PEM files; an empty path is not set."""

    certificate: str = ""
    client_certificate: str = ""
    client_key: str = ""

    def __bool__(self) -> bool:
        return bool(self.certificate or self.client_certificate or self.client_key)


def _no_password() -> bytes:
    return b""  # an encrypted key cannot be loaded without a prompt: it fails instead of asking on a terminal


def _readable(path: str, where: str, problems: list[Problem]) -> bool:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        problems.append(Problem(where, f"cannot be read ({exc.strerror or type(exc).__name__})"))
        return False
    return True


def tls_problems(files: TlsFiles, where: Mapping[str, str]) -> list[Problem]:
    """Why ``files`` cannot be used (each problem at ``where[field]``, the key path or variable); empty if they can."""
    problems: list[Problem] = []
    if not files:
        return problems
    import ssl

    if bool(files.client_certificate) != bool(files.client_key):
        missing, other = (("client_key", "certificate") if files.client_certificate
                          else ("client_certificate", "key"))
        problems.append(Problem(where[missing], f"must be set with the client's {other} (mutual TLS needs both)"))
        return problems
    context = ssl.create_default_context()
    if files.certificate and _readable(files.certificate, where["certificate"], problems):
        try:
            context.load_verify_locations(cafile=files.certificate)
        except (ssl.SSLError, ValueError):
            problems.append(Problem(where["certificate"], "is not a PEM certificate"))
    if files.client_certificate and all([_readable(files.client_certificate, where["client_certificate"], problems),
                                         _readable(files.client_key, where["client_key"], problems)]):
        try:
            context.load_cert_chain(files.client_certificate, files.client_key, password=_no_password)
        except (ssl.SSLError, ValueError):
            problems.append(Problem(where["client_certificate"], "cannot be loaded with the client key: they must be "
                                    "a matching PEM certificate and unencrypted key"))
    return problems


def ssl_context(files: TlsFiles) -> ssl.SSLContext | bool:
    """What httpx verifies with: the default (True) when no file is set, else a context with them loaded."""
    if not files:
        return True
    import ssl

    if files.certificate:
        context = ssl.create_default_context(cafile=files.certificate)
    else:
        import certifi  # httpx's own default roots

        context = ssl.create_default_context(cafile=certifi.where())
    if files.client_certificate:
        context.load_cert_chain(files.client_certificate, files.client_key, password=_no_password)
    return context


def grpc_credentials(grpc: Any, files: TlsFiles) -> Any:
    """``grpc.ssl_channel_credentials`` with the files' contents (gRPC's own roots when no certificate is set)."""

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(root_certificates=read(files.certificate),
                                        private_key=read(files.client_key),
                                        certificate_chain=read(files.client_certificate))
