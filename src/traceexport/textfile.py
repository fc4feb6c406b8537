"""The one way traceexport reads a text file a person wrote (a config file, a mapping file): strict UTF-8.

A file that cannot be read, or is not UTF-8 (a Latin-1 ``é``, a UTF-16 file, binary data), is a
:class:`ConfigError` with one line naming the file and, for bad bytes, their line and offset.
"""

from __future__ import annotations

from pathlib import Path

from traceexport.errors import ConfigError, Problem


def read_text(path: Path, *, what: str = "file", title: str = "invalid configuration") -> str:
    """The text of ``path`` decoded as UTF-8; ConfigError (``title``) when it cannot be read or decoded.

    ``what`` names the file in the message, e.g. ``cannot read config file: No such file or directory``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"cannot read {what}: {exc.strerror or exc}")], title=title) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 ({exc.reason} at byte {exc.start}): save the {what} as UTF-8"
        raise ConfigError([Problem(f"{path}:{line}", message)], title=title) from None


__all__ = ["read_text"]
