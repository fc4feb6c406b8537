"""The file sink: JSON lines per mapping, rotation by size, configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traceexport.errors import ConfigError
from traceexport.sinks import Sink, create_sink
from traceexport.sinks.base import Payload
from traceexport.sinks.file import FileSink, from_config


def test_writes_one_json_line_per_payload(tmp_path: Path) -> None:
    """Each payload becomes one line with its kind, key and body, in <dir>/<mapping>.jsonl."""
    sink = from_config("file", {"path": str(tmp_path), "mapping": "opik"}, {})
    assert isinstance(sink, Sink) and sink.backend == "opik"
    result = sink.export([Payload("trace", {"id": "1"}, "1"), Payload("span", {"id": "2"}, "2")])
    sink.shutdown()
    sink.shutdown()
    assert result.ok
    lines = [json.loads(line) for line in (tmp_path / "opik.jsonl").read_text().splitlines()]
    assert lines == [{"kind": "trace", "key": "1", "body": {"id": "1"}},
                     {"kind": "span", "key": "2", "body": {"id": "2"}}]


def test_rotates_by_size(tmp_path: Path) -> None:
    """Once the file passes max_file_bytes it is renamed aside and a new one is started."""
    sink = FileSink("file", tmp_path, "otlp", max_file_bytes=100, fsync=False)
    for i in range(5):
        assert sink.export([Payload("span", {"n": i, "pad": "x" * 80}, str(i))]).ok
    sink.shutdown()
    rotated = sorted(tmp_path.glob("otlp.*.jsonl"))
    assert len(rotated) == 5
    total = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*.jsonl"))
    assert total == 5


def test_directory_from_environment(tmp_path: Path) -> None:
    """Without a path option the directory comes from TRACEEXPORT_FILE_SINK_DIR."""
    sink = create_sink("file", env={"TRACEEXPORT_FILE_SINK_DIR": str(tmp_path / "d")})
    assert isinstance(sink, FileSink) and sink.directory == tmp_path / "d" and sink.backend == "otlp"


def test_unwritable_directory_is_a_retryable_failure(tmp_path: Path) -> None:
    """A write error fails every item retryably, so the pipeline keeps the records."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = FileSink("file", blocker / "sub", fsync=False).export([Payload("span", {}, "k")])
    assert result.failures and not result.failures[0].permanent


def test_bad_options_are_all_reported(tmp_path: Path) -> None:
    """Unknown options and invalid values are listed together with their key paths."""
    with pytest.raises(ConfigError) as err:
        from_config("out", {"mapping": "nope", "max_file_bytes": -1, "colour": "red"}, {})
    wheres = sorted(p.message.split(":")[0] for p in err.value.problems)
    assert wheres == ["sinks.out.colour", "sinks.out.mapping", "sinks.out.max_file_bytes"]
