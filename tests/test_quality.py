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


def _locked_versions() -> dict[str, list[str]]:
    from packaging.utils import canonicalize_name

    pins: dict[str, list[str]] = {}
    for line in (REPO / "requirements" / "test.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split(";", 1)[0].strip()
        if spec and not spec.startswith("#") and "==" in spec:
            name, version = spec.split("==", 1)
            pins.setdefault(canonicalize_name(name), []).append(version.strip())
    return pins


def test_the_test_lock_pins_every_declared_dependency() -> None:
    """requirements/test.txt pins, within its declared range, every dependency of the package and its test extra."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    wanted, todo, seen = [], ["test"], set()
    wanted.extend(Requirement(text) for text in project["dependencies"])
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in extras[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "traceexport":
                todo.extend(e for e in requirement.extras if e not in seen)
            else:
                wanted.append(requirement)
    pins = _locked_versions()
    problems = [f"{r}: locked {pins.get(canonicalize_name(r.name))}" for r in wanted
                if not any(r.specifier.contains(v, prereleases=True) for v in pins.get(canonicalize_name(r.name), []))]
    assert not problems, "refresh the lock (README, 'Refreshing the test lock'): " + "; ".join(problems)
