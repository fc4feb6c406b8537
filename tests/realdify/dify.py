"""Real Dify for the tests: a Python 3.12 venv per Dify version with Dify's pins and traceexport installed.

``../shared/dify/real/dify-<version>/api`` is Dify's unmodified ``api/`` tree. Its venv is built once per set
of pins (``requirements-dify-<version>.txt`` beside this file) under ``~/.cache/traceexport-tests`` (or
``$TRACEEXPORT_TEST_CACHE``) and reused while the pins do not change; traceexport itself is installed into
it from this checkout at every session, the way users deploy the hook (``pip install <checkout>``, not
editable: the wheel places the start-up ``.pth`` file). :meth:`DifyVersion.run` then runs
``dify_driver.py`` in that venv with Dify's settings pointed at the tests' PostgreSQL, Redis and storage.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REAL = REPO.parent / "shared" / "dify" / "real"
DRIVER = HERE / "dify_driver.py"
VERSIONS = ("1.10.1", "1.14.1")
PIP_TIMEOUT = 1200


class DifyUnavailable(Exception):
    """Real Dify cannot run here; the message says what is missing (the tests skip with it)."""


def find_python312() -> str | None:
    """A Python 3.12 interpreter: ``$TRACEEXPORT_TEST_PYTHON312``, ``python3.12`` on PATH, or pyenv's."""
    candidates = [os.environ.get("TRACEEXPORT_TEST_PYTHON312", ""), shutil.which("python3.12") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    candidates += sorted(glob.glob("/usr/bin/python3.12") + glob.glob("/usr/local/bin/python3.12"))
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 12)":
            return candidate
    return None


def cache_root() -> Path:
    """Where the Dify venvs are kept between runs."""
    return Path(os.environ.get("TRACEEXPORT_TEST_CACHE") or Path.home() / ".cache" / "traceexport-tests")


@dataclass
class DifyVersion:
    """One Dify version: its tree, its pins and its (cached) venv."""

    version: str
    venv: Path = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.pins.read_bytes()).hexdigest()[:12] if self.pins.is_file() else "none"
        self.venv = cache_root() / f"dify-{self.version}-py312-{digest}"

    @property
    def tree(self) -> Path:
        """Dify's ``api/`` directory."""
        return REAL / f"dify-{self.version}" / "api"

    @property
    def pins(self) -> Path:
        """The exact versions under which this Dify's trace code imports and runs."""
        return HERE / f"requirements-dify-{self.version}.txt"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def python_path(self) -> str:
        """``PYTHONPATH`` for this tree: ``api/`` and, in the new layout, the Langfuse provider package."""
        paths = [self.tree, *sorted((self.tree / "providers" / "trace").glob("trace-langfuse/src"))]
        return os.pathsep.join(str(p) for p in paths)

    def missing(self) -> str | None:
        """Why this version cannot run here, or None."""
        if not self.tree.is_dir():
            return f"{self.tree} not found: the real Dify trees are only in ../shared beside the CI checkout"
        if not self.pins.is_file():
            return f"{self.pins} not found"
        return None

    def build(self, python312: str) -> None:
        """Create the venv with Dify's pins unless a complete one for the same pins exists."""
        done_marker = self.venv / ".complete"
        if done_marker.is_file():
            return
        shutil.rmtree(self.venv, ignore_errors=True)
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        _run([python312, "-m", "venv", str(self.venv)], "create the venv")
        _run([str(self.python), "-m", "pip", "install", "-q", "-r", str(self.pins)], f"install {self.pins.name}")
        done_marker.write_text(self.pins.read_text())

    def install_traceexport(self) -> None:
        """``pip install <checkout>`` into the venv: a wheel, as users deploy the hook, with its dependencies
        resolved against Dify's pins; then ``pip check``."""
        _run([str(self.python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(REPO)],
             "install traceexport")
        _run([str(self.python), "-m", "pip", "install", "-q", str(REPO)], "install traceexport's dependencies")
        _run([str(self.python), "-m", "pip", "check"], "pip check")

    def env(self, settings: dict[str, str]) -> dict[str, str]:
        """The environment Dify runs with: its settings, ``PYTHONPATH`` at the tree, nothing of ours."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("TRACEEXPORT_", "OPIK_", "LANGFUSE_", "AMPLITUDE_", "OTEL_", "PYTHON"))}
        return {**base, "PYTHONPATH": self.python_path(), "PYTHONDONTWRITEBYTECODE": "1", **settings}

    def run(self, steps: list[dict[str, Any]], settings: dict[str, str], timeout: float = 300) -> list[Any]:
        """Run ``dify_driver.py`` with ``steps``; the list of step results (an error result ends the list)."""
        done = subprocess.run([str(self.python), str(DRIVER), json.dumps(steps)], env=self.env(settings),
                              cwd=settings.get("OPENDAL_FS_ROOT", "/"), capture_output=True, text=True,
                              timeout=timeout, check=False)
        last = done.stdout.strip().splitlines()[-1:] or [""]
        try:
            results: list[Any] = json.loads(last[0])["results"]
        except (ValueError, KeyError) as exc:
            raise AssertionError(f"Dify driver failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-5000:]}") from exc
        failed = [r for r in results if isinstance(r, dict) and "traceback" in r]
        assert not failed, f"step {len(results)} of {steps[len(results) - 1]} failed:\n{failed[0]['traceback']}" \
                           f"\n--- stderr ---\n{done.stderr[-3000:]}"
        return results

    def run_module(self, args: list[str], settings: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """``python <args>`` in this venv with Dify's environment (e.g. ``-m traceexport.dify check``)."""
        return subprocess.run([str(self.python), *args], env=self.env(settings), capture_output=True, text=True,
                              timeout=120, check=False, cwd=cwd)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        relevant = [line for line in output if not line.startswith("WARNING: Location")]
        raise DifyUnavailable(f"cannot {what}: " + " | ".join(relevant[-6:]))


def prepare(versions: tuple[str, ...] = VERSIONS) -> dict[str, DifyVersion | str]:
    """Each version's ready DifyVersion, or the reason it cannot run; venvs are built in parallel."""
    python312 = find_python312()
    out: dict[str, DifyVersion | str] = {}
    wanted = []
    for version in versions:
        dify = DifyVersion(version)
        reason = dify.missing() or (None if python312 else "no Python 3.12 found (python3.12, pyenv, or "
                                                          "$TRACEEXPORT_TEST_PYTHON312)")
        if reason:
            out[version] = reason
        else:
            wanted.append(dify)
    if wanted:
        assert python312 is not None
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            outcomes = list(pool.map(lambda d: _ready(d, python312), wanted))
        out.update(zip((d.version for d in wanted), outcomes, strict=True))
    return out


def _ready(dify: DifyVersion, python312: str) -> DifyVersion | str:
    try:
        dify.build(python312)
        dify.install_traceexport()
    except (DifyUnavailable, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return dify


if __name__ == "__main__":  # build the venvs ahead of a test run: python -m tests.realdify.dify
    for name, outcome in prepare().items():
        print(name, outcome.venv if isinstance(outcome, DifyVersion) else f"unavailable: {outcome}")
    sys.exit(0)
