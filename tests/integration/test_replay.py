"""``python -m traceexport replay`` as a real process: a Dify ops_trace tree with a broken file, resumed runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import SAMPLE_FILES
from tests.support.processes import python_env

pytestmark = pytest.mark.integration


def ops_trace_tree(root: Path) -> Path:
    """``ops_trace/{app_id}/{file_id}.json`` like Dify's storage, plus one truncated file."""
    tree = root / "storage" / "ops_trace"
    for index, path in enumerate(SAMPLE_FILES):
        app_dir = tree / f"app-{index % 2}"
        app_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, app_dir / f"{index:032x}.json")
    (tree / "app-1" / "broken.json").write_text('{"app_id": "x", "trace_info_type": "Mess', encoding="utf-8")
    return tree


def replay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = python_env({"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "out")})
    return subprocess.run([sys.executable, "-m", "traceexport", "replay", *args, "--to", "file",
                           "--spool", str(tmp_path / "spool"), "--timeout", "60", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def out_lines(tmp_path: Path) -> int:
    path = tmp_path / "out" / "otlp.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def test_replay_delivers_the_tree_reports_the_broken_file_and_resumes(tmp_path: Path) -> None:
    """The good files are delivered, the broken one is named with a reason, and a second run sends nothing."""
    tree = ops_trace_tree(tmp_path)
    first = replay(tmp_path, str(tree))
    assert first.returncode == 2, first.stderr  # bad input reported, everything else delivered
    assert "broken.json" in first.stderr and "not valid JSON" in first.stderr
    assert f"{len(SAMPLE_FILES)} sent to the spool" in first.stderr
    assert "Traceback" not in first.stderr
    delivered = out_lines(tmp_path)
    assert delivered >= len(SAMPLE_FILES)

    second = replay(tmp_path, str(tree))
    assert f"{len(SAMPLE_FILES)} already sent" in second.stderr and "0 sent to the spool" in second.stderr
    assert out_lines(tmp_path) == delivered


def test_dry_run_maps_and_counts_but_sends_nothing(tmp_path: Path) -> None:
    """--dry-run parses and maps every record, reports counts and bad files, and writes no output."""
    tree = ops_trace_tree(tmp_path)
    result = replay(tmp_path, str(tree), "--dry-run")
    assert result.returncode == 2
    assert "(1 broken)" in result.stderr and f"{len(SAMPLE_FILES)} would send" in result.stderr
    assert "payloads: file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_clean_input_exits_zero(tmp_path: Path) -> None:
    """A replay with only good files and everything delivered exits 0."""
    result = replay(tmp_path, str(SAMPLE_FILES[0]), str(SAMPLE_FILES[1]))
    assert result.returncode == 0, result.stderr
    assert out_lines(tmp_path) >= 2
