"""The benchmark's hand-written baseline (bench/handwritten.py) must produce exactly what the mappings produce."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from traceexport.mapping import Mapping, load_mapping
from traceexport.records import record_from_obj
from traceexport.records.parse import Record

_ROOT = Path(__file__).resolve().parents[2]
_SAMPLES = sorted((_ROOT / "tests" / "data" / "samples").glob("*.json"))


def _load_handwritten() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_handwritten", _ROOT / "bench" / "handwritten.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HANDWRITTEN = _load_handwritten()
_BUILDERS: dict[str, Callable[[Record], list[Any]]] = {
    "otlp": _HANDWRITTEN.otlp_payloads,
    "opik": _HANDWRITTEN.opik_payloads,
}


def _failed(trace_info: dict[str, Any]) -> None:
    trace_info["error"] = "boom: upstream timed out"
    trace_info["workflow_run_status"] = "failed"  # ignored by the other record types' models


def _no_end(trace_info: dict[str, Any]) -> None:
    trace_info["end_time"] = None


_VARIANTS: dict[str, Callable[[dict[str, Any]], None] | None] = {"as-is": None, "failed": _failed, "no-end": _no_end}


@pytest.fixture(scope="module")
def mappings() -> dict[str, Mapping]:
    return {backend: load_mapping(backend) for backend in _BUILDERS}


def _record(sample: Path, variant: str) -> Record:
    envelope = json.loads(sample.read_text(encoding="utf-8"))
    edit = _VARIANTS[variant]
    if edit is not None:
        envelope = copy.deepcopy(envelope)
        edit(envelope["trace_info"])
    return record_from_obj(envelope)


def test_samples_cover_every_community_record_type() -> None:
    """The sample set feeds one record of each of the seven community types to the equality checks."""
    types = {record_from_obj(json.loads(p.read_text(encoding="utf-8"))).type for p in _SAMPLES}
    assert types == {"workflow", "message", "tool", "dataset_retrieval", "moderation", "suggested_question",
                     "generate_name"}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
@pytest.mark.parametrize("backend", sorted(_BUILDERS))
@pytest.mark.parametrize("sample", _SAMPLES, ids=lambda p: p.stem)
def test_handwritten_equals_mapping(sample: Path, backend: str, variant: str, mappings: dict[str, Mapping]) -> None:
    """Every sample, as-is, failed and without end time, gets the mapping's kinds, keys and bodies by hand too."""
    record = _record(sample, variant)
    expected = [(p.kind, p.key, p.body) for p in mappings[backend].map(record)]
    actual = [(p.kind, p.key, p.body) for p in _BUILDERS[backend](record)]
    assert actual == expected


def test_handwritten_rejects_workflow_nodes() -> None:
    """A workflow carrying node spans is outside the baseline and fails loudly instead of silently differing."""
    record = _record(next(p for p in _SAMPLES if "workflow" in p.name), "as-is")
    record.data["derived"]["nodes"] = [{"id": "n1"}]
    for build in _BUILDERS.values():
        with pytest.raises(ValueError, match="without node spans"):
            build(record)
