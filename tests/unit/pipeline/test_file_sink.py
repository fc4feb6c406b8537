"""The file sink: JSON lines per mapping, rotation by size, configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _keys(directory: Path) -> list[str]:
    """The keys of every line in the directory's JSON lines files (a broken line fails the test)."""
    return [json.loads(line)["key"] for path in sorted(directory.glob("*.jsonl"))
            for line in path.read_text().splitlines()]


_FILLING_DISK = """
import os, resource, signal, sys
from pathlib import Path
from traceexport.sinks.base import Payload
from traceexport.sinks.file import FileSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
sink = FileSink("file", Path(sys.argv[1]), fsync=False)
result = sink.export([Payload("span", {"pad": "x" * 900}, str(i)) for i in range(10)])
print(sorted(result.failures), all(not f.permanent for f in result.failures.values()))
"""


def test_a_disk_filling_up_keeps_only_whole_lines(tmp_path: Path) -> None:
    """A write cut short (a full disk; here a file size limit) leaves no broken line: the lines that fitted are
    written, the rest fail retryably."""
    done = subprocess.run([sys.executable, "-c", _FILLING_DISK, str(tmp_path)], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["[5,", "6,", "7,", "8,", "9]", "True"]
    assert _keys(tmp_path) == ["0", "1", "2", "3", "4"]


def test_a_deleted_file_is_begun_anew(tmp_path: Path) -> None:
    """A file deleted while the sink runs is created again by the next batch, not written where nobody reads."""
    sink = FileSink("file", tmp_path, fsync=False)
    assert sink.export([Payload("span", {}, "1")]).ok
    sink.current_path.unlink()
    assert sink.export([Payload("span", {}, "2")]).ok
    sink.shutdown()
    assert _keys(tmp_path) == ["2"]


def test_a_file_renamed_aside_is_left_alone(tmp_path: Path) -> None:
    """logrotate renaming the file (without copytruncate): the next batch begins a new file at the path."""
    sink = FileSink("file", tmp_path, fsync=True)
    assert sink.export([Payload("span", {}, "1")]).ok
    sink.current_path.rename(tmp_path / "otlp.jsonl.1")
    assert sink.export([Payload("span", {}, "2")]).ok
    sink.shutdown()
    assert [json.loads(line)["key"] for line in sink.current_path.read_text().splitlines()] == ["2"]
    assert (tmp_path / "otlp.jsonl.1").read_text().count("\n") == 1


def test_a_file_in_the_directorys_place_is_named(tmp_path: Path) -> None:
    """A path that is a file is said to be no directory (mkdir's words were 'File exists')."""
    (tmp_path / "out").write_text("")
    result = FileSink("file", tmp_path / "out", fsync=False).export([Payload("span", {}, "k")])
    assert result.failures[0].reason.endswith(f"otlp.jsonl: {tmp_path / 'out'}: Not a directory")


_WRITER = """
import sys
from pathlib import Path
from traceexport.sinks.base import Payload
from traceexport.sinks.file import FileSink
sink = FileSink("file", Path(sys.argv[1]), max_file_bytes=1, fsync=False)
for i in range(int(sys.argv[3])):
    assert sink.export([Payload("span", {}, f"{sys.argv[2]}-{i}-{j}") for j in range(3)]).ok
"""


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    """Two writers on one path, each batch rotating the file: every line is kept whole, in some file, once."""
    batches = 600
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(batches)])
               for name in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    keys = _keys(tmp_path)
    assert len(keys) == len(set(keys)) == 2 * batches * 3


@pytest.mark.parametrize(("value", "fsync"), [(False, False), ("false", False), ("no", False), ("0", False),
                                              (True, True), ("True", True), ("on", True)])
def test_fsync_as_yaml_or_environment_text(value: object, fsync: bool) -> None:
    """`fsync: ${VAR}` arrives as text: 'false' or 'no' turns fsync off, as a YAML false does (it was true)."""
    assert from_config("file", {"fsync": value}, {}).fsync is fsync


def test_fsync_that_is_no_yes_or_no_is_a_config_error() -> None:
    """An fsync value that says neither yes nor no is named, not taken as true."""
    with pytest.raises(ConfigError) as err:
        from_config("out", {"fsync": "sometimes"}, {})
    assert [p.message for p in err.value.problems] == ["sinks.out.fsync: must be true or false, got 'sometimes'"]


def test_a_fifo_in_the_files_place_fails_at_once(tmp_path: Path) -> None:
    """A FIFO where the file should be is a retryable failure naming it, not a sink hung until a reader comes
    (export's --timeout and serve's stop waited on it for good)."""
    os.mkfifo(tmp_path / "otlp.jsonl")
    done = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from traceexport.sinks.base import Payload; from traceexport.sinks.file import FileSink; "
                           "r = FileSink('file', Path(sys.argv[1])).export([Payload('span', {}, 'k')]); "
                           "print(r.failures[0].reason, r.failures[0].permanent)", str(tmp_path)],
                          capture_output=True, text=True, timeout=20, check=True)
    assert done.stdout == f"file sink file: cannot write {tmp_path}/otlp.jsonl: not a regular file False\n"
