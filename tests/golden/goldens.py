"""Golden files: ``cases/*.json`` inputs, ``expected/<backend>/<case>.json`` mapped payloads.

Regenerate after an intended mapping change with ``python tests/golden/goldens.py`` and review the diff.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from traceexport.mapping import BACKENDS, load_mapping
from traceexport.records import Record, parse_records

GOLDEN = Path(__file__).resolve().parent
CASES = sorted((GOLDEN / "cases").glob("*.json"))


@functools.cache
def _mapping(backend: str) -> Any:
    return load_mapping(backend)


def render(backend: str, case: Path) -> Any:
    """The JSON-ready payload list one case maps to."""
    mapping = _mapping(backend)
    out = []
    for item in parse_records(case.read_bytes(), case.name):
        assert isinstance(item, Record), str(item)
        for payload in mapping.map(item):
            out.append({"kind": payload.kind, "key": payload.key, "body": payload.body})
    return json.loads(json.dumps(out, ensure_ascii=False, default=str))


def expected_path(backend: str, case: Path) -> Path:
    return GOLDEN / "expected" / backend / case.name


def regenerate() -> None:
    for backend in BACKENDS:
        for case in CASES:
            target = expected_path(backend, case)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(render(backend, case), ensure_ascii=False, indent=1, sort_keys=True)
            target.write_text(text + "\n", encoding="utf-8")
            print(f"wrote {target.relative_to(GOLDEN.parent.parent)}")


if __name__ == "__main__":
    regenerate()
    sys.exit(0)
