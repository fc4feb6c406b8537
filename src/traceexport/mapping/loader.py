"""Load mapping files: YAML that remembers line numbers, ``extends`` chains and override merging.

A user file names a base with ``extends: builtin`` (the built-in mapping of its ``backend``) or a path,
then overrides fields; a field or entity set to ``~`` (null) is dropped. Record type ``"*"`` applies
an override to every record type that has the named entity.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from traceexport.errors import ConfigError, Problem

BACKENDS = ("opik", "langfuse", "otlp", "amplitude")


class LineDict(dict[Any, Any]):
    """A dict from YAML that knows, for each key, the file and line (1-based) it was written on."""

    __slots__ = ("file", "line", "lines")

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.lines: dict[Any, tuple[str, int]] = {}  # key -> (file, line)
        self.file = ""


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings are LineDicts (merge keys ``<<`` still work)."""

    source = ""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    data = LineDict()
    data.line = node.start_mark.line + 1
    data.file = loader.source
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            ) from None
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = (loader.source, key_node.start_mark.line + 1)
    return data


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """Parse one YAML file with line numbers; a syntax error is a ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), f"cannot read: {exc.strerror or exc}")]) from exc
    loader = _LineLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(where, f"YAML syntax: {problem}")], title="invalid mapping") from exc
    finally:
        loader.dispose()


def builtin_mapping_path(backend: str) -> Path:
    """Where the built-in mapping for ``backend`` lives (inside the wheel, or the repo's mappings/)."""
    packaged = resources.files("traceexport").joinpath("mappings", f"{backend}.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[3] / "mappings" / f"{backend}.yaml"
    return repo


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``: dicts merge key by key, ``None`` deletes, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = LineDict()
    if isinstance(base, LineDict):
        merged.line, merged.file = base.line, base.file
        merged.lines.update(base.lines)
    merged.update(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
        if isinstance(override, LineDict) and key in override.lines:
            merged.lines[key] = override.lines[key]
    return merged


def merge_override(base: LineDict, override: LineDict) -> LineDict:
    """``override`` laid over ``base``; its ``records."*"`` entries go under the type-specific ones."""
    records = override.get("records")
    star = records.pop("*", None) if isinstance(records, dict) else None
    if isinstance(star, dict):
        base_records = base.get("records")
        for entities in base_records.values() if isinstance(base_records, dict) else ():
            if not isinstance(entities, dict):
                continue
            for entity_name, entity_override in star.items():
                if entity_name not in entities:
                    continue
                if entity_override is None:
                    entities.pop(entity_name)
                else:
                    entities[entity_name] = deep_merge(entities[entity_name], entity_override)
    merged = deep_merge(base, override)
    assert isinstance(merged, LineDict)
    return merged


def resolve(path: Path, _seen: tuple[Path, ...] = ()) -> LineDict:
    """The fully merged mapping document for ``path``, following its ``extends`` chain."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError([Problem(str(path), f"extends cycle: {chain}")], title="invalid mapping")
    document = read_yaml(path)
    if not isinstance(document, LineDict):
        raise ConfigError([Problem(str(path), "a mapping file must be a YAML mapping")], title="invalid mapping")
    base_ref = document.pop("extends", None)
    if base_ref is None:
        return document
    if base_ref == "builtin":
        backend = document.get("backend")
        if backend not in BACKENDS:
            where = f"{path}:{document.lines.get('backend', ('', document.line))[1]}: backend"
            raise ConfigError([Problem(where, f"'extends: builtin' needs backend one of {', '.join(BACKENDS)}")],
                              title="invalid mapping")
        base_path = builtin_mapping_path(str(backend))
    elif isinstance(base_ref, str):
        base_path = (path.parent / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
    else:
        where = f"{path}:{document.lines.get('extends', ('', document.line))[1]}: extends"
        raise ConfigError([Problem(where, "extends must be 'builtin' or a file path")], title="invalid mapping")
    return merge_override(resolve(base_path, (*_seen, path)), document)
