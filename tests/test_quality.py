"""The test command also lints and type-checks the source: ruff over everything, mypy (strict) over src/."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_is_clean() -> None:
    """`ruff check` reports nothing for src, tests and bench."""
    if shutil.which("ruff") is None and _run(sys.executable, "-m", "ruff", "--version").returncode != 0:
        pytest.skip("ruff is not installed: pip install -e '.[test]'")
    result = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """`mypy` in strict mode (configured in pyproject.toml) finds no type errors in src/."""
    if _run(sys.executable, "-m", "mypy", "--version").returncode != 0:
        pytest.skip("mypy is not installed: pip install -e '.[test]'")
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
