"""Fixtures for the contract suite: the fake backends, started on 127.0.0.1:0 and stopped after each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.fakes` must import under plain `pytest` too, not only `python -m pytest`
    sys.path.insert(0, str(ROOT))

from tests.fakes.amplitude_server import AmplitudeFake  # noqa: E402  (needs the path above)
from tests.fakes.opik_server import OpikFake  # noqa: E402

SHARED = ROOT.parent / "shared"


@pytest.fixture
def opik_fake() -> Iterator[OpikFake]:
    """An open (no auth) Opik fake."""
    with OpikFake() as fake:
        yield fake


@pytest.fixture
def amplitude_fake() -> Iterator[AmplitudeFake]:
    """An Amplitude fake that accepts only the key ``amp-test-key-0123456789``."""
    with AmplitudeFake(api_key="amp-test-key-0123456789") as fake:
        yield fake
