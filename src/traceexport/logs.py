"""Structured logs: one line per event worth a human's attention (logfmt or JSON lines), never per record.

Call ``log_event(logger, "serve.started", listen="127.0.0.1:4319")``; the event name is the message and
keyword fields become ``key=value`` pairs. Every rendered line passes through
:func:`traceexport.redaction.redact`, which masks the secret values registered with :func:`add_secrets`
(in every form they can take), so a secret cannot reach the log by accident. A spawned process (the delivery
process) starts with logging unconfigured: hand it :func:`current_settings` and call :func:`apply_settings`
first thing there, so its lines have the same level, format and masking.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import unquote

from traceexport.redaction import add_secrets, redact, registered_secrets

_FIELDS = "te_fields"
_SETUP: dict[str, str] = {}  # level and format of the last setup_logging() call in this process


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """How this process logs, picklable, for a spawned process to log the same way (secrets kept out of repr)."""

    level: str | None  # None: logging was never set up here, so the other process leaves it alone as well
    fmt: str = "logfmt"
    secrets: frozenset[str] = dataclasses.field(default=frozenset(), repr=False)


_SECRET_NAME = re.compile(r"(?i)(key|secret|token|password|passwd|authorization|headers|credential)")


def secrets_in(options: Mapping[str, Any]) -> list[str]:
    """Values of secret-looking entries (``api_key``, ``*_SECRET_KEY``, header maps and ``k=v,...`` header
    lists such as ``OTEL_EXPORTER_OTLP_HEADERS``), for :func:`add_secrets`."""
    found: list[str] = []
    for name, value in options.items():
        if not _SECRET_NAME.search(str(name)):
            continue
        if isinstance(value, Mapping):
            found.extend(str(v) for v in value.values())
        elif isinstance(value, str):
            found.append(value)
            if "headers" in str(name).lower():  # k=v,k2=v2: each value as written and as sent (URL-decoded),
                for _, _, header in (part.partition("=") for part in value.split(",")):  # and its credential
                    for text in {header.strip(), unquote(header.strip())}:
                        found.append(text)
                        found.extend(text.split()[1:2])
    return [v for v in found if len(v) >= 8]  # shorter values ("true", "none") are settings, not secrets


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    logger.log(level, event, extra={_FIELDS: fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    out: dict[str, Any] = {
        "ts": stamp.replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    out.update(getattr(record, _FIELDS, None) or {})
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    if text == "" or any(c in text for c in ' ="\\'):
        return json.dumps(text, ensure_ascii=False)
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=traceexport.daemon event=serve.started listen=127.0.0.1:4319``."""

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt form."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(json.dumps(_fields(record), default=str, ensure_ascii=False))


def setup_logging(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Send traceexport's logs to ``stream`` (stderr) at ``level``; third-party loggers at warning."""
    _SETUP.update(level=level, fmt=fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("traceexport").setLevel(level.upper())


def current_settings() -> LogSettings:
    """This process's log level, format and registered secrets, to hand to a spawned process."""
    return LogSettings(_SETUP.get("level"), _SETUP.get("fmt", "logfmt"), registered_secrets())


def apply_settings(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Log as the process that sent ``settings`` does: same secrets masked, same level and format (on stderr)."""
    add_secrets(settings.secrets)
    if settings.level is not None:
        setup_logging(settings.level, settings.fmt, stream)


__all__ = ["JsonFormatter", "LogSettings", "LogfmtFormatter", "add_secrets", "apply_settings", "current_settings",
           "log_event", "secrets_in", "setup_logging"]
