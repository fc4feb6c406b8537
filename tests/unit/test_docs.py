"""Claims the documentation makes that a test can check: what the README and deploy/ say matches the code."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile_copies() -> list[PurePosixPath]:
    """The build-context paths the Dockerfile's COPY lines bring into the image (sources, not destinations)."""
    copied: list[PurePosixPath] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied += [PurePosixPath(source) for source in words[1:-1]]
    return copied


def test_the_dockerfile_copies_everything_the_wheel_build_includes() -> None:
    """`docker build` installs the package from what COPY brought in: every path the wheel force-includes
    (mappings, the playground's samples, the hook's .pth) must be among them, or the build fails."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    copied = _dockerfile_copies()
    assert PurePosixPath("pyproject.toml") in copied
    missing = [source for source in included
               if not any(PurePosixPath(source) == c or c in PurePosixPath(source).parents for c in copied)]
    assert missing == [], f"Dockerfile does not COPY {missing}: the wheel build in the image cannot find them"
    readme = pyproject["project"]["readme"]
    assert PurePosixPath(readme) in copied

