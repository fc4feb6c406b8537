"""HTTP header names and values from configuration: whether they can be sent, and the secrets they carry.

httpx encodes a header given as text in ASCII and h11 refuses a value with a line break, NUL or whitespace
at either end; gRPC metadata takes printable ASCII only. A value that breaks these rules would fail every
request at send time, so sinks check their headers and credentials when they are configured (``validate``,
start-up) with :func:`header_problems` and :func:`value_problem`, whose messages never quote the value, and
:func:`url_problem` a URL to send to (its user info becomes the Basic credential: a password with an unencoded
``#``, ``?`` or ``/`` would end it early, and httpx would quote its start in every failure;
:func:`checked_http_url` the same for a sink setting's validator).
:func:`header_secrets` and :func:`url_secrets` list what a sink's configured headers and a URL's
``user:password@`` send that must be masked wherever it could show (:mod:`traceexport.redaction`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from traceexport.errors import Problem
from traceexport.redaction import USERINFO_PASSWORD

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110 token)
_GRPC_NAME = re.compile(r"[-_.0-9A-Za-z]+")  # gRPC metadata keys (sent lowercased)
_SECRET_NAME = re.compile(r"(?i)auth|key|token|secret|password|cookie|signature|credential")
SHORTEST_SECRET = 8  # a value under another header name is a setting below this length ("gzip", "v4")
FIX = "fix it (it is not shown)"
ENCODE_PASSWORD = "percent-encode # ? / @ in a password as %23 %3F %2F %40"


def value_problem(value: str, *, grpc: bool = False) -> str | None:
    """Why ``value`` cannot be sent as a header value (one line, never quoting it), or None if it can."""
    if any(c in "\r\n" for c in value):
        return f"has a line break (CR or LF), which cannot go into a header; {FIX}"
    if "\x00" in value:
        return f"has a NUL character, which cannot go into a header; {FIX}"
    if any(ord(c) > 0x7E for c in value):
        return f"has a non-ASCII character, which cannot go into a header (printable ASCII only); {FIX}"
    if any((ord(c) < 0x20 and (grpc or c != "\t")) or c == "\x7f" for c in value):
        return f"has a control character, which cannot go into a header; {FIX}"
    if value != value.strip(" \t"):
        return f"starts or ends with whitespace, which cannot go into a header; {FIX}"
    return None


def name_problem(name: str, *, grpc: bool = False) -> str | None:
    """Why ``name`` cannot be sent as a header name (never quoting it), or None if it can."""
    if grpc and not _GRPC_NAME.fullmatch(name):
        return "is not a valid gRPC metadata key: use letters, digits, '-', '_' and '.' only"
    if grpc and name.lower().endswith("-bin"):
        return "ends in -bin, which makes it a binary gRPC metadata key; a header carries text, so rename it"
    if not _TOKEN.fullmatch(name):
        return "is not a valid HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ only"
    return None


def header_problems(headers: Mapping[str, str], where: Mapping[str, str], *, grpc: bool = False) -> list[Problem]:
    """Problems with ``headers`` as they will be sent. ``where`` maps a header name to where it was set: a
    config map (``sinks.<name>.headers``, the problem then names ``sinks.<name>.headers.<header>``) or an
    environment variable (the message names the header). A valid name is named, a value never is."""
    problems = []
    for position, (name, value) in enumerate(headers.items(), start=1):
        origin = where.get(name, "headers")
        bad_name = name_problem(name, grpc=grpc)
        if bad_name:
            problems.append(Problem(origin, f"the name of header number {position} {bad_name}"))
            continue
        bad_value = value_problem(value, grpc=grpc)
        if bad_value and origin.endswith("headers") and "." in origin:
            problems.append(Problem(f"{origin}.{name}", f"the value {bad_value}"))
        elif bad_value:
            problems.append(Problem(origin, f"the value of header {name!r} {bad_value}"))
    return problems


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """The headers of ``layers``, a later layer's header replacing an earlier one of the same name in any case
    (HTTP names are case-insensitive: two spellings would send the header twice)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for name, value in layer.items():
            for existing in [key for key in merged if key.lower() == name.lower()]:
                del merged[existing]
            merged[name] = value
    return merged


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """What configured ``headers`` send that may be a credential: the value of every header whose name
    looks secret and of any other of 8+ characters; a ``Scheme credential`` value's credential alone; and
    for ``Basic``, the decoded ``user:password`` and each of its halves."""
    found: list[str] = []
    for name, value in headers.items():
        if not _SECRET_NAME.search(name) and len(value) < SHORTEST_SECRET:
            continue
        found.append(value)
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if credential:
            found.append(credential)
            if scheme.lower() == "basic":
                found.extend(_basic_parts(credential))
    return tuple(dict.fromkeys(v for v in found if v))


def url_problem(url: str) -> str | None:
    """Why httpx cannot send to ``url`` as an http(s) URL (one line, never quoting it), or None if it can."""
    import httpx  # here, not at the top: `map` builds a sink's settings but never sends

    try:
        parsed = httpx.URL(url)
    except Exception:  # httpx raises several types for malformed URLs
        parsed = None
    if parsed is not None and parsed.scheme in ("http", "https") and parsed.host:
        return None
    return "is not an http:// or https:// URL" + (f" ({ENCODE_PASSWORD})" if "@" in url else "")


def checked_http_url(url: str, wrong_scheme: str) -> str:
    """``url`` when it starts with http:// or https:// and httpx can send to it (a sink setting's validator);
    ValueError otherwise: ``wrong_scheme`` (saying what to write) or :func:`url_problem`'s reason."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(wrong_scheme)
    problem = url_problem(url)
    if problem:
        raise ValueError(problem)
    return url


def url_secrets(url: str) -> tuple[str, ...]:
    """What a URL's ``user:password@`` sends: httpx turns it into ``Authorization: Basic <token>``, so the
    password (as written and decoded), the decoded pair and the token; nothing for a URL without one. Never
    raises: a URL that cannot be split has its password taken as all up to the last ``@``."""
    try:
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
    except ValueError:
        found = USERINFO_PASSWORD.match(url)
        userinfo = found.group(0).split("://", 1)[1][:-1] if found else ""
    written_user, sep, written = userinfo.partition(":")
    if not sep or not written:
        return ()
    user, password = unquote(written_user), unquote(written)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return tuple(dict.fromkeys((written, password, f"{user}:{password}", token)))


def _basic_parts(credential: str) -> list[str]:
    try:
        pair = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    user, _, password = pair.partition(":")
    return [pair, user, password]


__all__ = ["ENCODE_PASSWORD", "checked_http_url", "header_problems", "header_secrets", "merge_headers", "name_problem",
           "url_problem", "url_secrets", "value_problem"]
