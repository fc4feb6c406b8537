"""`traceexport export` as a user runs it: a real process, environment variables only, four fake backends."""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.conftest import SAMPLE_FILES
from tests.fakes.amplitude_server import AmplitudeFake
from tests.fakes.langfuse_server import LangfuseFake
from tests.fakes.opik_server import OpikFake
from tests.fakes.otlp_server import OtlpFake
from tests.support.processes import python_env

pytestmark = pytest.mark.integration

SECRET = "amp-key-0123456789"


def _export(tmp_path: Path, sinks: str, env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "traceexport", "export", "--to", sinks, "--spool", str(tmp_path / "spool"),
            "--timeout", "60", *map(str, files)]
    return subprocess.run(argv, env=python_env(env), capture_output=True, text=True, timeout=120, check=False)


def test_export_delivers_the_samples_to_all_four_backends(tmp_path: Path) -> None:
    """`export --to opik,amplitude,otlp,langfuse` delivers the seven samples everywhere and exits 0."""
    with OpikFake() as opik, AmplitudeFake(api_key=SECRET) as amplitude, OtlpFake() as otlp, \
            LangfuseFake("pk-lf-1", "sk-lf-2") as langfuse:
        env = {
            "OPIK_URL_OVERRIDE": opik.url, "OPIK_PROJECT_NAME": "dify",
            "AMPLITUDE_API_KEY": SECRET, "AMPLITUDE_SERVER_URL": f"{amplitude.url}/2/httpapi",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "LANGFUSE_HOST": langfuse.url, "LANGFUSE_PUBLIC_KEY": "pk-lf-1", "LANGFUSE_SECRET_KEY": "sk-lf-2",
        }
        result = _export(tmp_path, "opik,amplitude,otlp,langfuse", env, *SAMPLE_FILES)
        assert result.returncode == 0, result.stderr
        assert len(opik.traces) == 3  # workflow, message, conversation naming
        assert len(opik.spans) == 7  # one per record: workflow root, llm, tool, retrieval, moderation, ...
        assert all(uuid.UUID(i).version == 7 for i in [*opik.traces, *opik.spans])
        assert len(amplitude.events) == 7
        assert len(otlp.spans) == 8
        assert len(langfuse.spans) == 8
        assert set(langfuse.ingestion_versions) == {"4"}
    assert SECRET not in result.stderr + result.stdout


def test_export_exit_codes_for_bad_input_and_unreachable_backend(tmp_path: Path) -> None:
    """Bad records give exit 2 with a reason each; an unreachable backend gives exit 1 naming the spool."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"app_id": "a", "trace_info_type": "dict", "trace_info": null}\nnot json\n', encoding="utf-8")
    with OtlpFake() as otlp:
        result = _export(tmp_path / "a", "otlp", {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}, bad, SAMPLE_FILES[1])
    assert result.returncode == 2
    assert "trace_info null" in result.stderr and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    unreachable = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # discard port: nothing listens
    argv = [sys.executable, "-m", "traceexport", "export", "--to", "otlp", "--spool", str(tmp_path / "b"),
            "--max-attempts", "2", "--max-age", "2", "--timeout", "20", str(SAMPLE_FILES[1])]
    result = subprocess.run(argv, env=python_env(unreachable), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1, result.stderr
    assert str(tmp_path / "b") in result.stderr or "dlq" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_printed_resume_command_runs_as_is(tmp_path: Path) -> None:
    """After an export gives up on an unreachable backend, the command it prints delivers the records (exit 0)."""
    unreachable = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    argv = [sys.executable, "-m", "traceexport", "export", "--to", "otlp", "--spool", str(tmp_path / "spool"),
            "--max-attempts", "2", "--max-age", "2", "--timeout", "20", str(SAMPLE_FILES[1])]
    first = subprocess.run(argv, env=python_env(unreachable), capture_output=True, text=True, timeout=120,
                           check=False)
    assert first.returncode == 1, first.stderr
    command = first.stderr.split("To send them again: ", 1)[1].splitlines()[0]
    assert command.startswith(f"traceexport dlq replay --spool {tmp_path / 'spool'} --sink otlp --since ")
    assert "SINK" not in command and command.endswith("--to otlp")
    with OtlpFake() as otlp:
        again = subprocess.run([sys.executable, "-m", "traceexport", *shlex.split(command)[1:]],
                               env=python_env({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}), capture_output=True,
                               text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr
        assert "1 record queued again for otlp" in again.stdout and otlp.spans
