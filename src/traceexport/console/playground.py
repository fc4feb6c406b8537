"""The console's mapping playground: one record through a backend's mapping (and an override typed in the
page) to its payloads, their fields' provenance and the exact request bodies — nothing is ever sent.

The request bodies are what ``traceexport map`` prints (its sinks, with placeholder credentials, only
build bodies). An override is compiled as ``--mapping`` compiles a file; its problems come back with
their line numbers in ``override.yaml``.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from traceexport import _json
from traceexport.cli.map_cmd import placeholder_sink
from traceexport.cli.map_output import documents_for
from traceexport.console.provenance import field_sources
from traceexport.errors import ConfigError, Problem, RecordError, RequestError
from traceexport.mapping import BACKENDS, Mapping, load_mapping
from traceexport.mapping.loader import builtin_mapping_path
from traceexport.records import Record
from traceexport.records.parse import parse_records
from traceexport.sinks import Sink

OVERRIDE_NAME = "override.yaml"
_WHERE = re.compile(r"^(?P<file>.*?):(?P<line>\d+)(?::\s*(?P<path>.*))?$")


def samples_dir() -> Path:
    """The bundled sample records (inside the wheel, or the repository's ``tests/data/samples``)."""
    packaged = resources.files("traceexport").joinpath("samples")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "tests" / "data" / "samples"


@functools.cache
def samples() -> tuple[dict[str, Any], ...]:
    """``{name, record_type, record}`` for each bundled sample, by file name."""
    out = []
    for path in sorted(samples_dir().glob("*.json")):
        text = path.read_text(encoding="utf-8")
        parsed = next(iter(parse_records(text)), None)
        record_type = parsed.type if isinstance(parsed, Record) else None
        out.append({"name": path.stem, "record_type": record_type, "record": json.loads(text)})
    return tuple(out)


def _backend(name: Any) -> str:
    if name not in BACKENDS:
        raise RequestError(f"backend must be one of {', '.join(BACKENDS)}")
    return str(name)


def builtin_mapping(backend: Any) -> dict[str, Any]:
    """The built-in mapping an override extends, as text."""
    path = builtin_mapping_path(_backend(backend))
    return {"backend": backend, "file": path.name, "text": path.read_text(encoding="utf-8")}


def _problem(problem: Problem, folder: str) -> dict[str, Any]:
    """A mapping problem as ``{file, line, path, message}``, the temporary folder left out."""
    where = problem.where.replace(folder + "/", "")
    if where.endswith(".yaml"):  # the file as a whole (e.g. YAML it cannot read): no line
        return {"file": Path(where).name, "line": None, "path": None, "message": problem.message}
    match = _WHERE.match(where)
    if match is None:
        return {"file": None, "line": None, "path": where or None, "message": problem.message}
    return {"file": Path(match["file"]).name, "line": int(match["line"]), "path": match["path"],
            "message": problem.message}


class Playground:
    """Maps one record at a time; the built-in mappings and the placeholder sinks are built once each."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._mappings: dict[str, Mapping] = {}
        self._sinks: dict[str, Sink] = {}

    def info(self) -> dict[str, Any]:
        """The backends, the bundled samples and the input bound."""
        return {"backends": list(BACKENDS), "samples": list(samples()), "max_body_bytes": self.max_body_bytes}

    def close(self) -> None:
        with self._lock:
            for sink in self._sinks.values():
                sink.shutdown(timeout=0)
            self._sinks.clear()

    def _sink(self, backend: str) -> Sink:
        with self._lock:
            if backend not in self._sinks:
                self._sinks[backend] = placeholder_sink(backend, {})
            return self._sinks[backend]

    def _mapping(self, backend: str, override: str) -> Mapping:
        """The backend's mapping, with ``override`` (YAML text) laid over it; ConfigError when invalid."""
        if not override.strip():
            with self._lock:
                if backend not in self._mappings:
                    self._mappings[backend] = load_mapping(backend)
                return self._mappings[backend]
        with tempfile.TemporaryDirectory(prefix="traceexport-playground-") as folder:
            path = Path(folder) / OVERRIDE_NAME
            path.write_text(override, encoding="utf-8")
            try:
                return load_mapping(backend, [path], follow_extends=False)
            except ConfigError as exc:
                raise ConfigError([Problem(p.where.replace(folder + "/", ""), p.message) for p in exc.problems],
                                  title=exc.title) from None

    def map(self, request: Any) -> dict[str, Any]:
        """``{"backend", "record", "override"}`` → ``{ok, record_type, error, problems, payloads, requests}``
        (see docs/console-api.md); RequestError when the request itself is malformed."""
        if not isinstance(request, dict):
            raise RequestError("the body must be a JSON object with backend, record and override")
        backend = _backend(request.get("backend"))
        record_text = request.get("record")
        if isinstance(record_text, dict | list):
            record_text = json.dumps(record_text, ensure_ascii=False)
        if not isinstance(record_text, str) or not record_text.strip():
            raise RequestError("record must be the record as JSON text (or a JSON object)")
        override = request.get("override") or ""
        if not isinstance(override, str):
            raise RequestError("override must be YAML text (or empty)")
        answer: dict[str, Any] = {"ok": False, "record_type": None, "error": None, "problems": [],
                                  "payloads": [], "requests": []}
        try:
            mapping = self._mapping(backend, override)
        except ConfigError as exc:
            answer["problems"] = [_problem(p, "") for p in exc.problems]
            return answer
        parsed = next(iter(parse_records(record_text)), None)
        if parsed is None:
            answer["error"] = "no record in the input"
            return answer
        if isinstance(parsed, RecordError):
            answer["error"] = parsed.reason
            return answer
        answer["record_type"] = parsed.type
        try:
            named = mapping.map_entities(parsed)
            documents = documents_for(self._sink(backend))
            bodies = documents.take(documents.encode([payload for _, payload in named])) + documents.close()
        except RecordError as exc:
            answer["error"] = exc.reason
            return answer
        answer["payloads"] = [
            {"entity": entity, "kind": payload.kind, "key": payload.key, "body": payload.body,
             "provenance": self._provenance(mapping, parsed.type, entity)}
            for entity, payload in named]
        answer["requests"] = [_json.loads(body) for body in bodies]
        answer["ok"] = True
        return answer

    @staticmethod
    def _provenance(mapping: Mapping, record_type: str, entity: str) -> list[dict[str, Any]]:
        builtin = str(builtin_mapping_path(mapping.backend))
        sources = field_sources(mapping.document, record_type, entity)
        return [{**entry, "file": Path(entry["file"]).name, "builtin": entry["file"] == builtin} for entry in sources]


__all__ = ["OVERRIDE_NAME", "Playground", "builtin_mapping", "samples", "samples_dir"]
