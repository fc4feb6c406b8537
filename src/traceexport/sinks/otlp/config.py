"""Options of the ``otlp`` sink, merged with the standard ``OTEL_*`` environment variables.

Config-file options win over the environment; ``OTEL_EXPORTER_OTLP_TRACES_*`` wins over
``OTEL_EXPORTER_OTLP_*``. Every problem is collected and raised as one :class:`ConfigError`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from traceexport.errors import ConfigError, Problem
from traceexport.redaction import masked_url
from traceexport.sinks.headers import (
    ENCODE_PASSWORD,
    header_problems,
    header_secrets,
    merge_headers,
    url_problem,
    url_secrets,
)

Protocol = Literal["http/protobuf", "http/json", "grpc"]
PROTOCOLS: tuple[str, ...] = ("http/protobuf", "http/json", "grpc")
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
AttributeValue = str | int | float | bool


class CommonOptions(BaseModel):
    """Options every OTLP-based sink (``otlp``, ``langfuse``) accepts."""

    model_config = ConfigDict(extra="forbid")

    headers: dict[str, SecretStr] | None = None
    compression: Literal["gzip", "none"] | None = None
    timeout: float | None = Field(None, gt=0, description="seconds per request", allow_inf_nan=False)
    service_name: str | None = None
    resource_attributes: dict[str, AttributeValue] | None = None
    max_spans: int = Field(512, ge=1, le=100_000)
    max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    linger_seconds: float = Field(1.0, ge=0, allow_inf_nan=False)
    max_bisect_requests: int = Field(64, ge=0, description="extra requests per export to isolate refused spans")


class OtlpOptions(CommonOptions):
    """Options of the ``otlp`` sink (names follow the Collector's ``otlphttp`` exporter)."""

    endpoint: str | None = Field(None, description="base URL; /v1/traces is appended for HTTP")
    traces_endpoint: str | None = Field(None, description="full URL, used as is")
    protocol: Protocol | None = None
    insecure: bool | None = None
    project_name: str | None = Field(None, description="resource attribute openinference.project.name")


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Everything an OTLP sink needs, resolved and validated."""

    endpoint: str
    protocol: str = "http/protobuf"
    headers: Mapping[str, str] = field(default_factory=dict)
    compression: bool = True
    timeout: float = 10.0
    insecure: bool = False
    resource_attributes: Mapping[str, Any] = field(default_factory=lambda: {"service.name": "dify"})
    max_spans: int = 512
    max_bytes: int = 4 * 1024 * 1024
    linger_seconds: float = 1.0
    max_bisect_requests: int = 64
    auth_hint: str = ""
    secrets: tuple[str, ...] = ()


def validate_options(model: type[CommonOptions], name: str,
                     options: Mapping[str, Any]) -> tuple[Any, list[Problem]]:
    """Validate ``options`` with ``model``; problems name ``sinks.<name>.<key>`` and never echo values."""
    try:
        return model.model_validate(dict(options)), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err.get("loc", ()))
            where = f"sinks.{name}.{loc}" if loc else f"sinks.{name}"
            message = ("unknown key" if err.get("type") == "extra_forbidden"
                       else str(err.get("msg", "invalid")).removeprefix("Value error, "))
            problems.append(Problem(where, message))
        return None, problems


def parse_kv_list(text: str, where: str, problems: list[Problem]) -> dict[str, str]:
    """``k=v,k2=v2`` (URL-encoded, W3C baggage style) as a dict; bad items become problems."""
    result: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(where, "expected comma-separated key=value pairs"))
            continue
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def env_first(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set (non-blank) in ``env``, as ``(name, value)``."""
    for env_name in names:
        value = env.get(env_name, "").strip()
        if value:
            return env_name, value
    return None


def otel_env(env: Mapping[str, str], suffix: str) -> tuple[str, str] | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<suffix>`` or else ``OTEL_EXPORTER_OTLP_<suffix>``."""
    return env_first(env, f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}")


def resolve_headers(options: CommonOptions, env: Mapping[str, str], problems: list[Problem], *,
                    name: str, grpc: bool = False) -> dict[str, str]:
    """Headers from ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`` (URL-decoded: as sent), overridden name by name (in
    any case) by option ``headers``; a name or value that cannot be sent (over HTTP, or gRPC) is a problem."""
    found = otel_env(env, "HEADERS")
    from_env = parse_kv_list(found[1], found[0], problems) if found else {}
    configured = {key: secret.get_secret_value() for key, secret in (options.headers or {}).items()}
    headers = merge_headers(from_env, configured)
    where = {key: f"sinks.{name}.headers" if key in configured else found[0] if found else "" for key in headers}
    problems += header_problems(headers, where, grpc=grpc)
    return headers


def resolve_resource(options: CommonOptions, env: Mapping[str, str], problems: list[Problem],
                     project_name: str | None = None) -> dict[str, Any]:
    """Resource attributes, later sources winning: default ``service.name=dify``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, options ``resource_attributes``, ``service_name``
    and ``project_name``."""
    resource: dict[str, Any] = {"service.name": "dify"}
    if env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip():
        resource.update(parse_kv_list(env["OTEL_RESOURCE_ATTRIBUTES"], "OTEL_RESOURCE_ATTRIBUTES", problems))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    resource.update(options.resource_attributes or {})
    if options.service_name:
        resource["service.name"] = options.service_name
    if project_name:
        resource["openinference.project.name"] = project_name
    return resource


def resolve_timeout(options: CommonOptions, env: Mapping[str, str], problems: list[Problem]) -> float:
    """Seconds: option ``timeout``, else ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` (milliseconds), else 10."""
    if options.timeout is not None:
        return options.timeout
    found = otel_env(env, "TIMEOUT")
    if found is None:
        return 10.0
    try:
        millis = float(found[1])
        if not math.isfinite(millis) or millis <= 0:
            raise ValueError
    except ValueError:
        problems.append(Problem(found[0], "must be a positive number of milliseconds"))
        return 10.0
    return millis / 1000.0


def resolve_compression(options: CommonOptions, env: Mapping[str, str], problems: list[Problem],
                        default: bool) -> bool:
    """gzip on or off: the ``compression`` option, else ``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``."""
    if options.compression is not None:
        return options.compression == "gzip"
    found = otel_env(env, "COMPRESSION")
    if found is None:
        return default
    if found[1].lower() not in ("gzip", "none"):
        problems.append(Problem(found[0], "must be gzip or none"))
        return default
    return found[1].lower() == "gzip"


def check_http_url(url: str, where: str, problems: list[Problem], typed: str | None = None) -> None:
    """Add a problem unless ``url`` is an absolute http(s) URL (as httpx, which will send to it, reads it);
    the problem quotes ``typed``, what the user wrote, when ``url`` was made from it (a path appended), with the
    password of its ``user:password@`` masked."""
    problem = url_problem(url)
    if problem is not None:
        shown = masked_url(url if typed is None else typed)
        hint = f" ({ENCODE_PASSWORD})" if "@" in url else ""
        problems.append(Problem(where, f"must be an http:// or https:// URL, got {shown!r}{hint}"))


def _resolve_protocol(options: OtlpOptions, env: Mapping[str, str], problems: list[Problem]) -> str:
    if options.protocol:
        return options.protocol
    found = otel_env(env, "PROTOCOL")
    if found is None:
        return "http/protobuf"
    if found[1] not in PROTOCOLS:
        problems.append(Problem(found[0], f"must be one of {', '.join(PROTOCOLS)}, got {found[1]!r}"))
        return "http/protobuf"
    return found[1]


def _resolve_endpoint(options: OtlpOptions, env: Mapping[str, str], protocol: str,
                      name: str) -> tuple[str, str, str]:
    """``(endpoint, where it came from, what was typed there)``; HTTP base endpoints get ``/v1/traces``
    appended."""
    grpc = protocol == "grpc"
    if options.traces_endpoint:
        return options.traces_endpoint, f"sinks.{name}.traces_endpoint", options.traces_endpoint
    if options.endpoint:
        base = options.endpoint
        return (base if grpc else base.rstrip("/") + "/v1/traces"), f"sinks.{name}.endpoint", base
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        typed = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
        return typed, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", typed
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
        return (base if grpc else base.rstrip("/") + "/v1/traces"), "OTEL_EXPORTER_OTLP_ENDPOINT", base
    endpoint = DEFAULT_GRPC_ENDPOINT if grpc else DEFAULT_HTTP_ENDPOINT
    return endpoint, "default", endpoint


def _resolve_insecure(options: OtlpOptions, env: Mapping[str, str], endpoint: str) -> bool:
    """gRPC only: ``http://`` means plaintext, ``https://`` TLS; a bare ``host:port`` uses ``insecure``."""
    if endpoint.startswith("http://"):
        return True
    if endpoint.startswith("https://"):
        return False
    if options.insecure is not None:
        return options.insecure
    found = otel_env(env, "INSECURE")
    return bool(found and found[1].lower() == "true")


def otlp_settings(name: str, options: Mapping[str, Any], env: Mapping[str, str]) -> OtlpSettings:
    """Validate the ``otlp`` sink's options and environment; raises ConfigError listing every problem."""
    parsed, problems = validate_options(OtlpOptions, name, options)
    if parsed is None:
        raise ConfigError(problems, title=f"invalid options for sink {name!r}")
    opts: OtlpOptions = parsed
    protocol = _resolve_protocol(opts, env, problems)
    endpoint, where, typed = _resolve_endpoint(opts, env, protocol, name)
    if protocol != "grpc":
        check_http_url(endpoint, where, problems, typed)
    elif importlib.util.find_spec("grpc") is None:
        problems.append(Problem(f"sinks.{name}.protocol",
                                "grpc needs the grpc extra: pip install 'traceexport[grpc]'"))
    if protocol == "grpc" and "@" in endpoint.split("://", 1)[-1]:
        # gRPC takes no user info: the channel would resolve "user:password@host" as a host name and quote it in
        # every failure. Never quoted here either.
        problems.append(Problem(where, "a gRPC endpoint cannot carry user:password@ (it is not sent as Basic auth): "
                                       "remove it and send the credential as a header (authorization=Basic ...)"))
    headers = resolve_headers(opts, env, problems, name=name, grpc=protocol == "grpc")
    settings = OtlpSettings(
        endpoint=endpoint,
        protocol=protocol,
        headers=headers,
        # The OTLP exporter spec's default is no compression; gzip is one setting away for remote receivers.
        compression=resolve_compression(opts, env, problems, default=False),
        timeout=resolve_timeout(opts, env, problems),
        insecure=_resolve_insecure(opts, env, endpoint) if protocol == "grpc" else False,
        resource_attributes=resolve_resource(opts, env, problems, opts.project_name),
        max_spans=opts.max_spans,
        max_bytes=opts.max_bytes,
        linger_seconds=opts.linger_seconds,
        max_bisect_requests=opts.max_bisect_requests,
        secrets=header_secrets(headers) + url_secrets(endpoint),
    )
    if problems:
        raise ConfigError(problems, title=f"invalid options for sink {name!r}")
    return settings
