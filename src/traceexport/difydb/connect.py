"""A read-only connection to Dify's PostgreSQL, with a statement timeout and one-line errors.

Every session is opened read-only (``default_transaction_read_only``), so nothing traceexport sends can
change Dify's data, and with ``statement_timeout`` so that no query holds a production database for long.
Errors from psycopg become :class:`~traceexport.errors.SourceError` with the URL's password masked.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from traceexport.errors import SourceError
from traceexport.redaction import redact

DEFAULT_STATEMENT_TIMEOUT = 60.0


def masked_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for errors and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _psycopg() -> ModuleType:
    try:
        return importlib.import_module("psycopg")
    except ImportError as exc:
        raise SourceError("reading Dify's database needs psycopg: pip install 'traceexport[postgres]'") from exc


def describe(exc: BaseException, url: str | None = None) -> str:
    """A psycopg error as one line without secrets (the password is never in libpq's messages, the URL is
    masked; a DSN echoed back by libpq is cut)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if url:  # a password too short to mask (redaction.MIN_LENGTH) is left: "***" for each "p" hides the message
        text = redact(text, [urlsplit(url).password or ""])
    text = re.sub(r"password=\S+", "password=***", text)
    return text


def connect(url: str, *, statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT, application: str = "traceexport"
            ) -> Any:
    """An open read-only psycopg connection to ``url`` (autocommit; each query is its own snapshot)."""
    if not url or not url.strip():
        raise SourceError("no Dify database URL: pass --dify-db URL or set TRACEEXPORT_DIFY_DATABASE_URL")
    scheme = urlsplit(url.strip()).scheme
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        raise SourceError(f"Dify database URL {masked_url(url)!s} is not a PostgreSQL URL "
                          "(expected postgresql://user:password@host:port/dbname)")
    url = url.strip().replace("postgresql+psycopg2://", "postgresql://", 1).replace(
        "postgresql+psycopg://", "postgresql://", 1)
    psycopg = _psycopg()
    timeout_ms = max(int(statement_timeout * 1000), 1)
    options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, options=options,
                               application_name=application)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to Dify's database at {masked_url(url)}: {describe(exc, url)}") from exc
    except (ValueError, OSError) as exc:  # a malformed URL or port
        raise SourceError(f"cannot connect to Dify's database at {masked_url(url)}: {describe(exc, url)}") from exc
    return conn
