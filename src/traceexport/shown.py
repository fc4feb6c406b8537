"""A name from outside (a file name, a record key) as one printable line, for a message that must stay one line.

File names may hold a newline, a tab or bytes that are not UTF-8 (Python reads those as lone surrogates,
``\\udcff``); a record key is built from record data. :func:`shown` escapes those characters the way Python
writes them in a string (``\\n``, ``\\t``, ``\\x1b``) and an undecodable byte as ``\\xff``, so a one-line
problem naming the file stays one line and the terminal is not driven by what the name holds.
"""

from __future__ import annotations

import os

_BYTE_SURROGATES = range(0xDC80, 0xDD00)  # os.fsdecode's surrogateescape form of the bytes 0x80-0xff


def shown(name: str | os.PathLike[str]) -> str:
    """``name`` with every non-printable character escaped (see the module's docstring)."""
    text = os.fspath(name)
    if text.isprintable():
        return text
    parts = []
    for char in text:
        if char.isprintable():
            parts.append(char)
        elif ord(char) in _BYTE_SURROGATES:
            parts.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            parts.append(repr(char)[1:-1])
    return "".join(parts)


__all__ = ["shown"]
