"""Every backend and every golden case maps exactly to its reviewed expected payloads."""

from __future__ import annotations

import json

import pytest

from tests.golden.goldens import CASES, expected_path, render
from traceexport.mapping import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_mapping_matches_golden(backend: str, case) -> None:  # type: ignore[no-untyped-def]
    """The mapped payloads equal the golden file (regenerate with `python tests/golden/goldens.py`)."""
    expected = json.loads(expected_path(backend, case).read_text(encoding="utf-8"))
    assert render(backend, case) == expected


def test_every_community_type_has_a_golden_case() -> None:
    """The golden cases cover all seven community-edition record types."""
    from traceexport.records import COMMUNITY_TYPES, parse_records

    seen = {item.type for case in CASES for item in parse_records(case.read_bytes()) if hasattr(item, "type")}
    assert set(COMMUNITY_TYPES) <= seen
