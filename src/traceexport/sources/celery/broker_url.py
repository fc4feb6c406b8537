"""Check a broker URL the way kombu's Redis transport will read it, and mask its password for log lines.

kombu parses ``broker_url`` only when the source connects: a URL it cannot read (a password with a raw ``#``,
``?`` or ``/``, a port or database that is not a number, a ``password`` query parameter) raised from deep inside
kombu at start-up, as a traceback quoting a piece of the URL, often the password's head. :func:`broker_url_problem`
finds those while the config is validated and says what is wrong in one line that never quotes the URL.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

SCHEMES = ("redis", "rediss", "sentinel")  # kombu's Redis transports
SOCKET_SCHEME = "redis+socket"  # a Unix socket path instead of host:port: redis+socket:///path/to/redis.sock
_SOCKET_FORM = "write a Unix socket as redis+socket:///path/to/redis.sock"
_ENCODE_HINT = "percent-encode # ? / @ in the password as %23 %3F %2F %40"


def broker_url_problem(url: str) -> str | None:
    """Why kombu's Redis transport cannot use ``url`` (one line, the URL not quoted); None when it can."""
    for part in url.split(";"):  # sentinel: several URLs separated by ";"
        problem = _part_problem(part.strip())
        if problem is not None:
            return problem
    return None


def _part_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here, as in kombu
    except ValueError:
        return f"is not a URL kombu can read: its port is not a number from 0 to 65535 ({_ENCODE_HINT})"
    scheme = parts.scheme.lower()
    if scheme == SOCKET_SCHEME:
        return None if _socket_path(url) else f"names no socket: {_SOCKET_FORM}"
    if scheme in ("socket", "unix"):
        return f"starts with {scheme}://, which kombu has no transport for: {_SOCKET_FORM}"
    if scheme == "rediss+socket":
        return f"asks for TLS over a Unix socket, which kombu cannot open: {_SOCKET_FORM}"
    if scheme not in SCHEMES:
        return "must start with redis://, rediss:// or sentinel:// (Dify's CELERY_BROKER_URL)"
    if parts.fragment or "#" in url:
        return f"has a '#', which ends a URL: {_ENCODE_HINT}"
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return f"path must be the database number, e.g. /1 ({_ENCODE_HINT})"
    if "password" in parse_qs(parts.query):
        return "has a password query parameter, which kombu refuses: write redis://:PASSWORD@host:port/db"
    return None


def _socket_path(url: str) -> str:
    """The socket path of a ``redis+socket://`` URL, as kombu reads it (what follows the host part)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    return rest.rsplit("@", 1)[-1]


def mask_url(url: str) -> str:
    """``redis://:secret@host:6379/1`` -> ``redis://:***@host:6379/1`` (each of sentinel's ``;``-separated URLs);
    URLs without a password unchanged."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable url>"
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))


__all__ = ["SCHEMES", "broker_url_problem", "mask_url"]
