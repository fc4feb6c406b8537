"""A compiled mapping: record type → entities → payloads. Pure: no I/O after load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceexport.errors import ConfigError, Problem, RecordError
from traceexport.mapping.compiler import (
    Compiled,
    Compiler,
    Const,
    Getter,
    MappingRuntimeError,
    Scope,
    Where,
    as_getter,
)
from traceexport.mapping.loader import (
    ALL,
    BACKEND_KINDS,
    BACKENDS,
    LineDict,
    builtin_mapping_path,
    is_selector,
    overlay,
    resolve,
)
from traceexport.records.normalize import DERIVED_KEYS
from traceexport.records.parse import Record
from traceexport.records.types import RECORD_TYPES
from traceexport.sinks.base import Payload

_TOP_KEYS = frozenset({"backend", "description", "definitions", "options", "tables", "records"})
_ENTITY_KEYS = frozenset({"kind", "when", "each", "key", "body"})
_CONTEXT_ROOTS = frozenset({"derived", "app_id", "record_type"})
_SELECTOR_NEEDS_BASE = "a selector ('*', 'kind:K') overrides entities of a base: use it in a file with 'extends'"


@dataclass(frozen=True, slots=True)
class Entity:
    """One compiled entity of a record type: a trace, span or event template."""

    name: str
    kind: str
    when: Getter | None
    each: Getter | None
    key: Getter | None
    body: Getter
    # The key is the same expression as this top-level body field: read it from the body, not recomputed.
    key_field: str | None = None


class Mapping:
    """A loaded, compiled mapping for one backend.

    ``fingerprint`` names what the mapping does (its merged document and options): two processes that
    loaded the same configuration get the same one, so payloads one mapped serve the other.
    """

    def __init__(self, backend: str, entities: dict[str, list[Entity]], files: Sequence[str],
                 document: LineDict | None = None, fingerprint: str | None = None) -> None:
        self.backend = backend
        self.entities = entities
        self.files = list(files)
        self.document = document  # the merged source, with each key's file and line (the console's provenance)
        self.fingerprint = fingerprint

    def record_types(self) -> list[str]:
        return sorted(self.entities)

    def map(self, record: Record, ref: int = -1) -> list[Payload]:
        """The payloads for ``record``; RecordError when it cannot be mapped (others are unaffected)."""
        entities = self.entities.get(record.type)
        if entities is None:
            raise RecordError(f"the {self.backend} mapping has no section for record type {record.type!r}")
        ctx = record.data
        payloads: list[Payload] = []
        try:
            for entity in entities:
                if entity.when is not None and not entity.when(ctx):
                    continue
                if entity.each is None:
                    payloads.append(self._payload(entity, ctx, ref))
                    continue
                items = entity.each(ctx)
                for item in items if isinstance(items, list) else []:
                    payloads.append(self._payload(entity, {**ctx, "item": item}, ref))
        except MappingRuntimeError as exc:
            raise RecordError(f"{self.backend} mapping {exc}") from exc
        except Exception as exc:  # defensive: a mapping must never take the pipeline down
            raise RecordError(f"{self.backend} mapping failed for {record.type}: {type(exc).__name__}: {exc}") from exc
        return payloads

    def map_entities(self, record: Record) -> list[tuple[str, Payload]]:
        """:meth:`map`'s payloads, each with the name of the entity that made it (the console's playground)."""
        payloads = self.map(record)  # first: a record it cannot map is a RecordError, as for map
        entities = [e for e in self.entities.get(record.type, []) if e.when is None or e.when(record.data)]
        names: list[str] = []
        for entity in entities:
            items = entity.each(record.data) if entity.each is not None else [None]
            names += [entity.name] * (len(items) if isinstance(items, list) else 0)
        return list(zip(names, payloads, strict=True))

    @staticmethod
    def _payload(entity: Entity, ctx: dict[str, Any], ref: int) -> Payload:
        if entity.key_field is not None:
            body = entity.body(ctx)
            key = body.get(entity.key_field)
            return Payload(entity.kind, body, "" if key is None else str(key), ref)
        key = entity.key(ctx) if entity.key is not None else ""
        return Payload(entity.kind, entity.body(ctx), "" if key is None else str(key), ref)


def _where(doc: LineDict, key: Any, path: str) -> str:
    file, line = doc.lines.get(key, (doc.file, doc.line))
    return f"{file}:{line}: {path}" if file else path


def compile_document(document: LineDict, files: Sequence[str], options: dict[str, Any] | None = None,
                     earlier: Sequence[Problem] = ()) -> Mapping:
    """Compile a resolved mapping document, collecting every problem before raising ConfigError.

    ``options`` override the document's ``options`` section (switches such as Amplitude node events);
    ``earlier`` are the problems found while merging its files, reported with the rest.
    """
    problems: list[Problem] = list(earlier)
    backend = document.get("backend")
    if backend not in BACKENDS:
        problems.append(Problem(_where(document, "backend", "backend"), f"must be one of {', '.join(BACKENDS)}"))
        raise ConfigError(problems, title="invalid mapping")
    for key in document:
        if key not in _TOP_KEYS:
            allowed = ", ".join(sorted(_TOP_KEYS))
            problems.append(Problem(_where(document, key, str(key)), f"unknown key (allowed: {allowed})"))
    tables = document.get("tables") or {}
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        problems.append(Problem(_where(document, "tables", "tables"), "must map table names to objects"))
        tables = {}
    declared = document.get("options") or {}
    if not isinstance(declared, dict):
        problems.append(Problem(_where(document, "options", "options"), "must map option names to values"))
        declared = {}
    declared = {name: _switch(value) for name, value in declared.items()}
    given: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            message = f"not an option of the {backend} mapping (options: {known})"
            problems.append(Problem(f"mapping option {name!r}", message))
            continue
        given[name] = _switch(value)
        if isinstance(declared[name], bool) and not isinstance(given[name], bool):
            problems.append(Problem(f"mapping option {name!r}", f"must be true or false, got {value!r}"))
    compiler = Compiler(tables, {**declared, **given})
    entities: dict[str, list[Entity]] = {}
    records = document.get("records")
    if not isinstance(records, LineDict):
        problems.append(Problem(_where(document, "records", "records"), "must be an object of record types"))
        raise ConfigError(problems, title="invalid mapping")
    for record_type, section in records.items():
        path = f"records.{record_type}"
        if record_type == ALL:
            problems.append(Problem(_where(records, record_type, 'records."*"'), _SELECTOR_NEEDS_BASE))
            continue
        if record_type not in RECORD_TYPES:
            known = ", ".join(RECORD_TYPES)
            problems.append(Problem(_where(records, record_type, path), f"unknown record type (known: {known})"))
            continue
        if section is None:
            continue
        if not isinstance(section, LineDict):
            problems.append(Problem(_where(records, record_type, path), "must be an object of entities"))
            continue
        fields = frozenset(RECORD_TYPES[record_type][1].model_fields) | _CONTEXT_ROOTS
        entities[record_type] = _compile_entities(section, path, str(backend), fields, compiler, problems)
    for where, message in compiler.problems:
        problems.append(Problem(where, message))
    if problems:
        raise ConfigError(problems, title="invalid mapping")
    return Mapping(str(backend), entities, files, document, _fingerprint(document, given))


_SWITCH_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _switch(value: Any) -> Any:
    """An option's value, with the text of a YAML boolean (``"false"``, from a quoted value or an environment
    variable) read as that boolean: as text it would be truthy and turn a switch on."""
    if isinstance(value, str):
        return _SWITCH_WORDS.get(value.strip().lower(), value)
    return value


def _fingerprint(document: LineDict, options: dict[str, Any] | None) -> str:
    """A hash of the merged document and the options: equal for equal mappings (file names and lines left out)."""
    text = json.dumps(_sortable([document, options or {}]), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _sortable(value: Any) -> Any:
    """``value`` with every key text, so keys sort: a YAML key that is not text (``1``, ``true``, ``~`` in a table)
    becomes its type and value, kept apart from the text key that looks the same (``lookup`` tells them apart)."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else f"\u0000{type(k).__name__}:{k!r}": _sortable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sortable(item) for item in value]
    return value


def _compile_entities(section: LineDict, path: str, backend: str, fields: frozenset[str], compiler: Compiler,
                      problems: list[Problem]) -> list[Entity]:
    out: list[Entity] = []
    for name, spec in section.items():
        epath = f"{path}.{name}"
        where = _where(section, name, epath)
        if is_selector(name):
            problems.append(Problem(where, _SELECTOR_NEEDS_BASE))
            continue
        if not isinstance(spec, LineDict):
            problems.append(Problem(where, "an entity must be an object with kind and body"))
            continue
        for key in spec:
            if key not in _ENTITY_KEYS:
                problems.append(Problem(_where(spec, key, f"{epath}.{key}"),
                                        f"unknown entity key (allowed: {', '.join(sorted(_ENTITY_KEYS))})"))
        kind = spec.get("kind")
        if kind not in BACKEND_KINDS[backend]:
            allowed = ", ".join(sorted(BACKEND_KINDS[backend]))
            problems.append(Problem(_where(spec, "kind", f"{epath}.kind"), f"must be one of: {allowed} for {backend}"))
        body = spec.get("body")
        if not isinstance(body, dict):
            problems.append(Problem(_where(spec, "body", f"{epath}.body"), "must be an object"))
            continue
        scope = Scope(fields, DERIVED_KEYS, in_each="each" in spec)
        when = _optional(compiler, spec, "when", epath, Scope(fields, DERIVED_KEYS))
        each = _optional(compiler, spec, "each", epath, Scope(fields, DERIVED_KEYS))
        key = _optional(compiler, spec, "key", epath, scope)
        body_getter = compiler.object(body, _located(spec, "body", epath), scope)
        out.append(Entity(str(name), str(kind), when, each, key, body_getter, _key_field(spec.get("key"), body)))
    return out


def _key_field(key_spec: Any, body: dict[Any, Any]) -> str | None:
    """The top-level body field whose spec is textually the key's spec (never when a $merge could override it)."""
    if not isinstance(key_spec, str) or "$merge" in body:
        return None
    return next((str(field) for field, spec in body.items() if spec == key_spec), None)


def _located(doc: LineDict, key: str, path: str) -> Where:
    file, line = doc.lines.get(key, (doc.file, doc.line))
    return Where(file, line, f"{path}.{key}")


def _optional(compiler: Compiler, spec: LineDict, key: str, path: str, scope: Scope) -> Getter | None:
    if key not in spec:
        return None
    compiled: Compiled = compiler.value(spec[key], _located(spec, key, path), scope)
    if isinstance(compiled, Const) and key == "when":
        return None if compiled.value else (lambda ctx: False)
    return as_getter(compiled)


def load_mapping(backend_or_path: str | Path, extra_files: Sequence[str | Path] = (),
                 options: dict[str, Any] | None = None, *, follow_extends: bool = True) -> Mapping:
    """The built-in mapping for a backend (or a mapping file), extended by ``extra_files`` in order.

    Each extra file says ``extends: builtin`` (implied when absent) or extends another file, whose chain is
    followed (see :func:`~traceexport.mapping.loader.overlay`); its overrides win.
    """
    text = str(backend_or_path)
    base_path = builtin_mapping_path(text) if text in BACKENDS else Path(text)
    problems: list[Problem] = []  # an override that reaches nothing: reported with the compiler's problems
    document = resolve(base_path, problems=problems)
    files = [str(base_path)]
    for extra in extra_files:
        document = overlay(document, Path(extra), follow_extends=follow_extends, problems=problems)
        files.append(str(extra))
    return compile_document(document, files, options, problems)
