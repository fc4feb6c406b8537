"""A stand-in module tree for the Dify layouts the real trees cannot show; everything else is tested against
real Dify 1.10.1 and 1.14.1 (``tests/realdify``).

Built from the shapes documented in RECORDS.md (not from Dify's code). ``activate(layout)`` puts one
layout's root on ``sys.path`` (so ``core.ops.ops_trace_manager`` etc. import from it) and removes every
stand-in module from ``sys.modules`` afterwards. Layouts:

* ``dictmap`` - the plain-dict ``provider_config_map`` of Dify releases before 1.3
* ``unknown`` - a ``core.ops.ops_trace_manager`` with no registry the hook recognises
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent
LAYOUTS = ("dictmap", "unknown")
SAMPLES = ROOT.parent / "data" / "samples"
_PREFIXES = ("core", "services", "dify_trace_", "tests.dify_standin.common")


def _standin_modules() -> list[str]:
    return [name for name in sys.modules
            if name.split(".")[0] in ("core", "services") or name.startswith(_PREFIXES[2:])]


@contextlib.contextmanager
def activate(layout: str) -> Iterator[Path]:
    """Make ``layout`` importable as Dify's modules for the duration of the block."""
    root = ROOT / "layouts" / layout
    for name in _standin_modules():
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
        for name in _standin_modules():
            del sys.modules[name]


def sample_envelopes() -> list[dict[str, Any]]:
    """The seven community-edition sample TaskData envelopes."""
    return [json.loads(path.read_text()) for path in sorted(SAMPLES.glob("*.json"))]


def trace_info_objects() -> list[Any]:
    """The samples as stand-in pydantic TraceInfo objects (what Dify's worker hands to ``trace()``)."""
    from tests.dify_standin.common.entities import TRACE_INFO_TYPES

    return [TRACE_INFO_TYPES[e["trace_info_type"]](**e["trace_info"]) for e in sample_envelopes()]
