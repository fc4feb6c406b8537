"""PyYAML's errors as one line: the line of the text they point at and their reason, for the problem a config
or mapping file's reader reports as ``file:line: reason``.

A character YAML does not allow in a document (NUL, BEL, other C0 controls but tab and newlines) is refused by
PyYAML's reader with a message over two lines and no line number, before any parsing: it gets its line here.
"""

from __future__ import annotations

import yaml


def yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """The 1-based line ``exc`` points at in ``text`` (None when it names none) and its reason on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return line, f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    return (mark.line + 1 if mark is not None else None), " ".join(str(reason).split())


__all__ = ["yaml_error"]
