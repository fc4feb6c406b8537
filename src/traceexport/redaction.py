"""Secret-free text: the secret values this process knows, the forms they can take, and :func:`redact`.

Secrets (tokens, keys, the header values a sink sends) are registered once with :func:`add_secrets`: by
the daemon for its own tokens and by :func:`traceexport.sinks.create_sink` for what each sink sends. Then
:func:`redact` masks them, plus any ``secrets`` it is given and secret-looking tokens, in any text: log
lines, failure reasons, dead letters. A secret is masked as sent and in the forms an echo or a setting can
give it: percent-encoded (as written in ``OTEL_EXPORTER_OTLP_HEADERS``), escaped in JSON or in a Python
``repr`` of text or bytes, with its whitespace runs collapsed as one-line messages collapse them. Longer forms
are masked first, so no tail of a secret outlives a shorter one.
:func:`describe_error` is an exception as one line that never quotes the values it failed on.
:func:`masked_url` is a URL to quote in a message, its ``user:password@`` password as ``***`` (also one written
with an unencoded ``#``, ``?``, ``/`` or ``@``, which a URL parser would take for the end of the user info);
:func:`url_without_userinfo` one to show as a link; :func:`url_passwords` the password it carries, to mask.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

MIN_LENGTH = 4  # shorter values are masked nowhere: "***" for every "true" would hide the message instead

_REGISTERED: set[str] = set()
_registered_forms: tuple[str, ...] = ()

_SECRET_PATTERNS = [
    re.compile(
        r"(?i)(authorization|api[_-]?key|secret[_-]?key|password|token)([\"']?\s*[:=]\s*[\"']?)"
        r"((?:basic\s+|bearer\s+)?[^\s\"',}&]+)"
    ),
    re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._-]{6,}"),
    re.compile(r"\b(sk|pk)-lf-[A-Za-z0-9-]+"),
]
# A URL's password: after "scheme://user:" up to the last "@", so a password with an unencoded "/", "?", "#" or "@"
# in it is still all of it (over-masking a URL whose query holds an "@" hides nothing secret).
USERINFO_PASSWORD = re.compile(r"^(\s*[A-Za-z][\w+.-]*://[^:/?#@\s]*:)(.*)@", re.DOTALL)
# A value quoted in a protocol library's error (h11: "Illegal header value b'...'"): never shown.
_QUOTED_BYTES = re.compile(r"""b(['"]).*\1""", re.DOTALL)


def add_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values that must be masked wherever :func:`redact` runs in this process."""
    global _registered_forms
    new = {v for v in values if v and len(v) >= MIN_LENGTH} - _REGISTERED
    if new:
        _REGISTERED.update(new)
        _registered_forms = _longest_first(_REGISTERED)


def registered_secrets() -> frozenset[str]:
    """Every secret registered with :func:`add_secrets` (for a spawned process to register as well)."""
    return frozenset(_REGISTERED)


@functools.lru_cache(maxsize=4096)
def secret_forms(secret: str) -> tuple[str, ...]:
    """``secret`` as sent and as it reads percent-encoded, JSON-escaped or inside a ``repr``; and with each run of
    whitespace as one space, as a one-line message shows it (a tab or two spaces in a key)."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
        " ".join(secret.split()),
    }
    return tuple(f for f in forms if len(f) >= MIN_LENGTH)


def _longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    forms = {form for s in secrets if s and len(s) >= MIN_LENGTH for form in secret_forms(s)}
    return tuple(sorted(forms, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets``, the registered secrets (each in every form) and secret-looking tokens
    replaced by ``***``."""
    extra = tuple(secrets)
    forms = _longest_first((*extra, *_REGISTERED)) if extra else _registered_forms
    for form in forms:
        if form in text:
            text = text.replace(form, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask(match: re.Match[str]) -> str:
    groups = match.groups()
    if len(groups) == 3:
        return f"{groups[0]}{groups[1]}***"
    if len(groups) == 2:
        return f"{groups[0]} ***"
    return "***"


def masked_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` replaced by ``***`` (user, host, port and path stay
    readable); a URL without one unchanged."""
    return USERINFO_PASSWORD.sub(r"\1***@", url, count=1)


def url_passwords(url: str) -> list[str]:
    """The password of ``url``'s ``user:password@``, as written and percent-decoded (to mask where a message
    echoes it); none for a URL without one."""
    found = USERINFO_PASSWORD.match(url)
    password = found.group(2) if found else ""
    return list(dict.fromkeys((password, unquote(password)))) if password else []


def url_without_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` (a link shown to others); one that cannot be parsed as a URL, or whose
    password has an unencoded ``#``, ``?`` or ``/``, with the password masked instead."""
    try:
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        pass
    return masked_url(url)


def describe_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """``exc`` as one secret-free line: a text it could not encode or decode is not quoted, nor is a
    value a protocol library quotes in its message (h11's illegal header value), and the rest is redacted."""
    if isinstance(exc, UnicodeError):
        what = "encoded" if isinstance(exc, UnicodeEncodeError) else "decoded"
        encoding = getattr(exc, "encoding", "") or "the expected encoding"
        return f"a value has a character that cannot be {what} as {encoding} (not shown: it may be part of a secret)"
    text = _QUOTED_BYTES.sub("<value not shown>", str(exc))
    return redact(" ".join(text.split()), secrets)


__all__ = ["USERINFO_PASSWORD", "add_secrets", "describe_error", "masked_url", "redact", "registered_secrets",
           "secret_forms", "url_passwords", "url_without_userinfo"]
