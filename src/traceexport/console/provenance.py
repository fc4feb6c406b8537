"""Which mapping file and line produced each field of a payload body: read off the merged mapping document.

The document is the one the engine compiled (built-in mapping with the override laid over it), and
each of its keys remembers the file and line it was written on. A body spec's keys are the body's keys,
so walking the spec gives every field's source; a field the spec does not spell out (the keys of an
object a function built, a list's items, what ``$merge`` adds) belongs to its nearest listed ancestor.
"""

from __future__ import annotations

import json
from typing import Any

from traceexport.mapping.compiler import body_key, is_directive
from traceexport.mapping.loader import LineDict

_MAX_SPEC = 200  # characters of a spec shown


def _spec_text(spec: Any) -> str:
    """A spec as it reads in the file, short."""
    text = spec if isinstance(spec, str) else json.dumps(spec, ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_SPEC else text[: _MAX_SPEC - 1] + "…"


def _walk(spec: LineDict, path: list[str], out: list[dict[str, Any]]) -> None:
    for key, sub in spec.items():
        if key == "$merge":
            continue
        file, line = spec.lines.get(key, (spec.file, spec.line))
        field_path = [*path, str(body_key(key))]  # '$$set' makes '$set'
        nested = isinstance(sub, LineDict) and not any(is_directive(k) for k in sub)
        out.append({"path": field_path, "file": file, "line": line, "spec": "{…}" if nested else _spec_text(sub)})
        if nested:
            _walk(sub, field_path, out)


def field_sources(document: LineDict | None, record_type: str, entity: str) -> list[dict[str, Any]]:
    """``[{path, file, line, spec}]`` for each field an entity's body spells out, in the file's order."""
    try:
        body = document["records"][record_type][entity]["body"] if document is not None else None
    except (KeyError, TypeError):
        return []
    out: list[dict[str, Any]] = []
    if isinstance(body, LineDict):
        _walk(body, [], out)
    return out


def source_of(sources: list[dict[str, Any]], path: list[str]) -> dict[str, Any] | None:
    """The entry that produced the field at ``path``: its own, else its nearest listed ancestor's."""
    best: dict[str, Any] | None = None
    for entry in sources:
        prefix = entry["path"]
        if path[: len(prefix)] == prefix and (best is None or len(prefix) > len(best["path"])):
            best = entry
    return best


__all__ = ["field_sources", "source_of"]
