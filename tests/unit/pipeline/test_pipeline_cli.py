"""The ``dlq``, ``status`` and ``export`` commands against a real spool (in-process, no network)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pipeline_helpers import SAMPLES, ScriptedSink, StandInMapping, fail_first, make_records

from traceexport.cli import build_parser, main
from traceexport.pipeline import Pipeline, PipelineSettings, RetryPolicy, Route, deadletter
from traceexport.pipeline.owner import DaemonLock
from traceexport.pipeline.spool import Spool
from traceexport.pipeline.turns import DeliveryTurn
from traceexport.sinks.base import ItemFailure

FAST = PipelineSettings(fsync=False, poll_interval=0.01, retry=RetryPolicy(max_attempts=1))


def _spool_with_dead_letters(spool: Path, n: int = 3, sink_name: str = "opik") -> None:
    refused = "opik rejected the request (422)" if sink_name == "opik" else f"{sink_name} refused (422)"
    sink = ScriptedSink(sink_name, fail_first(99, ItemFailure(refused, True, 422)))
    with Pipeline(spool, [Route(sink, StandInMapping())], FAST) as pipe:
        pipe.accept(make_records(n))
        pipe.start()
        assert pipe.wait_idle(10)


def test_dlq_list_json_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq list --json` lists entries with their reasons; `dlq show ID` prints the stored envelope."""
    _spool_with_dead_letters(tmp_path)
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 3 and entries[0]["reason"] == "opik rejected the request (422)"
    assert entries[0]["sink"] == "opik" and entries[0]["status_code"] == 422
    assert main(["dlq", "show", "--spool", str(tmp_path), str(entries[0]["id"])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["envelope"]["trace_info_type"] == "MessageTraceInfo"
    assert main(["dlq", "show", "--spool", str(tmp_path), "999"]) == 2


def test_dlq_ids_beyond_64_bits_are_unknown_ids_not_a_traceback(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` and `dlq replay` take an id SQLite cannot hold as any unknown id; text that is no id is a usage
    error; the storage functions find nothing for such ids (and a purge by them deletes nothing)."""
    _spool_with_dead_letters(tmp_path, 2)
    capsys.readouterr()  # what making them logged (the dead-letter summary), not what the commands say
    huge = str(10**23)
    for entry_id in (huge, "-5", "0"):
        assert main(["dlq", "show", "--spool", str(tmp_path), entry_id]) == 2
        assert capsys.readouterr().err == f"error: no dead letter with id {entry_id}\n"
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "show", "--spool", str(tmp_path), "seven"])
    assert exited.value.code == 2 and "not a dead-letter id: 'seven'" in capsys.readouterr().err
    assert main(["dlq", "replay", "--spool", str(tmp_path), "--to", "opik", huge]) == 0
    assert capsys.readouterr().out == f"nothing to replay: no dead letter matches id {huge}\n"
    spool = Spool(tmp_path, create=False)
    try:
        assert deadletter.get_entry(spool, 2**63) is None
        assert deadletter.list_entries(spool, after_id=10**30) == []
        assert len(deadletter.list_entries(spool, after_id=-(10**30))) == 2
        assert deadletter.count_by_sink(spool, ids=[10**23, -(10**23)]) == {}
        assert deadletter.purge(spool, ids=[10**23]) == 0
        assert deadletter.replay(spool, ids=[10**23]) == {}
        assert deadletter.count(spool) == 2
    finally:
        spool.close()


@pytest.mark.parametrize(("argv", "message"), [
    (["dlq", "replay", "--since", "99999999999999999999d"], "argument --since: '99999999999999999999d' reaches back"),
    (["dlq", "purge", "--before", "9" * 400 + "d"], "reaches back before the year 1"),
    (["dlq", "purge", "--before", "last week"], "argument --before: 'last week' is not a time"),
    (["map", "--to", "otlp", "--jobs", str(10**23), "-"], f"argument --jobs: {10**23} is not from 1 to 64"),
    (["map", "--to", "otlp", "--jobs", "0", "-"], "argument --jobs: 0 is not from 1 to 64"),
])
def test_numbers_and_times_out_of_range_are_usage_errors(argv: list[str], message: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Times and counts beyond what the command can use are a one-line usage error (exit 2), not an overflow."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, *(["--spool", str(tmp_path)] if argv[0] == "dlq" else [])])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err


def test_dlq_replay_leaves_records_to_the_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a daemon holding the spool's lock, `dlq replay` re-queues and returns; that daemon delivers."""
    _spool_with_dead_letters(tmp_path)
    lock = DaemonLock(tmp_path, ["opik"])
    try:
        assert main(["dlq", "replay", "--spool", str(tmp_path), "--sink", "opik"]) == 0
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert "3 records queued again for opik" in out
    assert f"the daemon (pid {os.getpid()}) is delivering from spool {tmp_path}: it sends them now" in out
    sink = ScriptedSink("opik")
    with Pipeline(tmp_path, [Route(sink, StandInMapping())], FAST) as pipe:
        pipe.start()
        assert pipe.wait_idle(10)
        figures = pipe.metrics()["sinks"]["opik"]
    assert len(sink.delivered) == 3
    assert figures["replayed"] == 3 and figures["dead_lettered"] == 3


def test_dlq_replay_without_daemon_needs_sinks(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With no daemon and no --to/--config, `dlq replay` moves nothing, exits 2 and prints the command to run."""
    for name in ("OPIK_API_KEY", "OPIK_URL_OVERRIDE", "TRACEEXPORT_TO", "TRACEEXPORT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    _spool_with_dead_letters(tmp_path)
    assert main(["dlq", "replay", "--spool", str(tmp_path), "--since", "2h"]) == 2
    err = capsys.readouterr().err
    assert "no daemon is delivering from spool" in err
    command = err.split("run: ", 1)[1].strip()
    assert command.startswith(f"traceexport dlq replay --spool {tmp_path} --since ")
    assert command.endswith(" --to opik")
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3  # nothing moved
    assert main(command.split()[1:]) == 2  # the printed command parses: the sink is built (no API key here)
    assert "OPIK" in capsys.readouterr().err


def test_dlq_replay_without_daemon_delivers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With no daemon, `dlq replay --to file` delivers the re-queued records itself and exits 0."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    _spool_with_dead_letters(tmp_path / "spool", 2, "file")
    assert main(["dlq", "replay", "--spool", str(tmp_path / "spool"), "--to", "file"]) == 0
    captured = capsys.readouterr()
    assert "2 records queued again for file" in captured.out
    assert "file: 2 records delivered" in captured.err
    assert (tmp_path / "out" / "otlp.jsonl").read_text().count("\n") >= 2
    assert main(["dlq", "list", "--spool", str(tmp_path / "spool"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_dlq_replay_names_sinks_it_cannot_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dead letters for a sink --to does not name stay put: exit 2 naming that sink."""
    _spool_with_dead_letters(tmp_path)
    assert main(["dlq", "replay", "--spool", str(tmp_path), "--to", "file"]) == 2
    assert "dead letters for opik, but --to/--config names no such sink" in capsys.readouterr().err
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_dlq_retire_dead_letters_what_a_removed_sink_is_owed(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq retire SINK` moves a removed sink's fresh and retrying records to its dead letter, the spool
    can then free them, and `dlq replay` brings them back if the sink returns."""
    failing = ScriptedSink("old", fail_first(1, ItemFailure("503", permanent=False, status_code=503)))
    settings = PipelineSettings(fsync=False, poll_interval=0.01, retry=RetryPolicy(initial_backoff=600))
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping()), Route(failing, StandInMapping())],
                  settings) as pipe:
        pipe.accept(make_records(2))
        pipe.workers[1].step()  # both fail once: now waiting for a retry in 10 minutes
        pipe.accept(make_records(3, start=10))  # never tried
        pipe.workers[0].step()
        assert pipe.orphaned() == {}
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping())], FAST) as pipe:
        assert pipe.orphaned() == {"old": 5}
    assert main(["dlq", "retire", "--spool", str(tmp_path), "old"]) == 0
    assert "5 records still owed to old moved to its dead letter" in capsys.readouterr().out
    assert main(["dlq", "retire", "--spool", str(tmp_path), "nope"]) == 2
    assert "no sink named 'nope'" in capsys.readouterr().err
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping())], FAST) as pipe:
        assert pipe.orphaned() == {}
        pipe.spool.sweep(every=0)
        assert pipe.spool.record_count() == 0
        entries = deadletter.list_entries(pipe.spool)
        assert len(entries) == 5 and all("retired" in e.reason for e in entries)
        assert sum("last failure: 503" in e.reason for e in entries) == 2
    lock = DaemonLock(tmp_path, ["old"])  # as if a daemon delivering to "old" were running again
    try:
        assert main(["dlq", "replay", "--spool", str(tmp_path), "--sink", "old"]) == 0
    finally:
        lock.release()
    returned = ScriptedSink("old")
    with Pipeline(tmp_path, [Route(returned, StandInMapping())], FAST) as pipe:
        pipe.start()
        assert pipe.wait_idle(10)
    assert len(returned.delivered) == 5


def test_dlq_retire_refuses_a_sink_the_running_daemon_still_delivers_to(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq retire` is for a sink taken out of the config: while a daemon still delivers to it, its worker would
    go on sending what retire dead-lettered (its queue position is in memory), leaving records both delivered
    and 'retired'. Refused (exit 2, nothing moved, what to do said); a sink that daemon does not deliver to
    is retired as before."""
    failing = ScriptedSink("old", fail_first(99, ItemFailure("503", permanent=False, status_code=503)))
    settings = PipelineSettings(fsync=False, poll_interval=0.01, retry=RetryPolicy(initial_backoff=600))
    with Pipeline(tmp_path, [Route(failing, StandInMapping()), Route(ScriptedSink("other"), StandInMapping())],
                  settings) as pipe:
        pipe.accept(make_records(2))
    lock = DaemonLock(tmp_path, ["old"])  # a daemon delivering to "old" from this spool
    try:
        assert main(["dlq", "retire", "--spool", str(tmp_path), "old"]) == 2
        err = capsys.readouterr().err
        assert "still delivers to old" in err and "nothing was moved" in err and err.count("\n") == 1
        assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert main(["dlq", "retire", "--spool", str(tmp_path), "other"]) == 0
        assert "2 records still owed to other moved" in capsys.readouterr().out
    finally:
        lock.release()


def test_dlq_retire_refuses_a_sink_a_command_is_delivering_to(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq retire` is refused (exit 2, nothing moved, one line naming the command's pid) while a command such as
    `export` or `replay` holds the sink's delivery turn: its worker would go on from its own queue position and
    send records retire dead-lettered, as a daemon's would. Once the command is done, retire goes ahead."""
    failing = ScriptedSink("old", fail_first(99, ItemFailure("503", permanent=False, status_code=503)))
    with Pipeline(tmp_path, [Route(failing, StandInMapping())], FAST) as pipe:
        pipe.accept(make_records(2))
    turn = DeliveryTurn(tmp_path, ["old"], say=None)  # a command delivering to "old" from this spool
    try:
        assert main(["dlq", "retire", "--spool", str(tmp_path), "old"]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "nothing was moved" in err and err.count("\n") == 1, err
        assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
    finally:
        turn.release()
    assert main(["dlq", "retire", "--spool", str(tmp_path), "old"]) == 0
    assert "2 records still owed to old moved" in capsys.readouterr().out
    assert main(["dlq", "retire", "--spool", str(tmp_path), "nope"]) == 2
    assert not (tmp_path / "deliver.nope.lock").exists()  # no turn file for a sink the spool never had


def test_dlq_list_shows_a_reason_s_control_characters_escaped(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A backend's error body quoted in a reason can carry terminal escapes (colours, a new title, text hidden
    or reordered by a bidi override): the table prints them as escapes, never to the terminal as they are;
    --json keeps the reason exact."""
    hostile = "bad \x1b]0;pwned\x07\x1b[8mhidden\x1b[0m \u202egnp.exe \x9b2J"
    sink = ScriptedSink("opik", fail_first(99, ItemFailure(hostile, True, 400)))
    with Pipeline(tmp_path, [Route(sink, StandInMapping())], FAST) as pipe:
        pipe.accept(make_records(1))
        pipe.start()
        assert pipe.wait_idle(10)
    assert main(["dlq", "list", "--spool", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", out), out
    assert "bad \\x1b]0;pwned\\x07\\x1b[8mhidden\\x1b[0m \\u202egnp.exe \\x9b2J" in out
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["reason"] == hostile


def test_dlq_purge_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq purge` refuses without --yes and deletes with it."""
    _spool_with_dead_letters(tmp_path, 2)
    assert main(["dlq", "purge", "--spool", str(tmp_path)]) == 2
    assert "would delete 2" in capsys.readouterr().err
    assert main(["dlq", "purge", "--spool", str(tmp_path), "--before", "2999-01-01", "--yes"]) == 0
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert "deleted 2" in capsys.readouterr().out


def test_status_json_shows_counters_from_another_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --json` reads the persisted counters, queue depth and oldest age written by a pipeline."""
    _spool_with_dead_letters(tmp_path, 2)
    with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping())], FAST) as pipe:
        pipe.accept(make_records(4, start=100))
    assert main(["status", "--spool", str(tmp_path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["sinks"]["opik"]
    assert figures["accepted"] == 6 and figures["dead_lettered"] == 2 and figures["queue_depth"] == 4
    assert figures["oldest_pending_age_seconds"] >= 0
    assert main(["status", "--spool", str(tmp_path)]) == 0
    assert "opik" in capsys.readouterr().out


def test_status_shows_p50_and_p95_delivery_latency_per_sink(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`status` prints each sink's p50/p95 delivery latency estimated from the spool's histogram ("-" before
    anything was acknowledged); `--json` carries them with the count."""
    with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping())], FAST) as pipe:
        pipe.start()
        pipe.accept(make_records(3))
        assert pipe.flush(30)
    with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping()),
                             Route(ScriptedSink("idle"), StandInMapping())], FAST):
        pass
    assert main(["status", "--spool", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-2:] == ["P50", "P95"]
    opik = next(line.split() for line in lines if line.startswith("opik"))
    idle = next(line.split() for line in lines if line.startswith("idle"))
    assert all(re.fullmatch(r"\d+ms|\d+\.\ds", cell) for cell in opik[-2:]) and idle[-2:] == ["-", "-"]
    assert main(["status", "--spool", str(tmp_path), "--json"]) == 0
    delivery = json.loads(capsys.readouterr().out)["sinks"]["opik"]["latency"]["delivery_latency"]
    assert delivery["count"] == 3 and 0 <= delivery["p50_seconds"] <= delivery["p95_seconds"]


def test_status_and_dlq_without_spool_report_nothing_accepted(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """On a spool not created yet, `status` and `dlq list` say nothing was accepted, exit 0, create nothing."""
    missing = tmp_path / "none"
    assert main(["status", "--spool", str(missing)]) == 0
    assert "nothing accepted yet" in capsys.readouterr().out
    assert main(["status", "--spool", str(missing), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["records"] == 0 and snap["sinks"] == {}
    assert main(["dlq", "list", "--spool", str(missing)]) == 0
    assert "the dead letter is empty" in capsys.readouterr().out
    assert main(["dlq", "list", "--spool", str(missing), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["dlq", "replay", "--spool", str(missing)]) == 0
    assert "nothing to replay" in capsys.readouterr().out
    assert not missing.exists()


def _spool_paths_of_the_wrong_kind(root: Path) -> dict[Path, str]:
    """Spool paths no command can use, each with the one line every command says about it."""
    afile = root / "afile"
    afile.write_text("not a spool")
    db_dir = root / "dbdir"
    (db_dir / "spool.db").mkdir(parents=True)
    return {afile: f"spool {afile}: not a directory", db_dir: f"spool {db_dir}: spool.db is not a file",
            afile / "sub": f"spool {afile / 'sub'}: {afile} is not a directory"}


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["dlq", "list"], ["dlq", "show", "1"],
                                  ["dlq", "replay"], ["dlq", "purge", "--yes"], ["dlq", "retire", "opik"],
                                  ["export", "--to", "file", str(SAMPLES / "05-message-chat.json")]])
def test_a_spool_path_of_the_wrong_kind_is_one_line_and_exit_2(argv: list[str], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A file where the spool directory should be, or a directory where spool.db should be, is named in one line
    by every command reading or writing the spool (exit 2), never "nothing accepted yet" or SQLite's words."""
    for spool, line in _spool_paths_of_the_wrong_kind(tmp_path).items():
        assert main([*argv, "--spool", str(spool)]) == 2, spool
        out, err = capsys.readouterr()
        assert line in err and "nothing accepted" not in out and "File exists" not in err, err
        assert "unable to open database" not in err


@pytest.mark.parametrize("argv", [["status"], ["dlq", "list"], ["dlq", "show", "1"], ["dlq", "replay"],
                                  ["dlq", "purge", "--yes"], ["dlq", "retire", "opik"]])
def test_a_spool_directory_this_user_cannot_look_into_is_one_line_and_exit_2(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool directory the user may not enter (root's 0700 directory, seen by an operator's account) is one
    line naming it (exit 2), not a PermissionError traceback. (The tests run as root, whom no mode stops, so
    the refusal is the one the OS would give.)"""
    _spool_with_dead_letters(tmp_path, 1)
    real_is_file = Path.is_file

    def refused(path: Path) -> bool:
        if path.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", refused)
    assert main([*argv, "--spool", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: spool {tmp_path}: Permission denied\n" and "nothing accepted" not in out


@pytest.mark.parametrize("argv", [["dlq", "purge", "--yes"], ["dlq", "retire", "opik"]])
def test_a_spool_this_user_may_only_read_is_one_line_and_exit_2(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq purge` and `dlq retire` on a spool whose files this user may only read say so in one line (exit 2),
    not with sqlite3's OperationalError traceback; `status` and `dlq list` still read it."""
    _spool_with_dead_letters(tmp_path, 1)
    real_open = Spool._open

    def read_only(spool: Spool) -> object:
        conn = real_open(spool)
        conn.execute("PRAGMA query_only=1")  # what SQLite answers a user without write permission
        return conn

    monkeypatch.setattr(Spool, "_open", read_only)
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main([*argv, "--spool", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: spool {tmp_path}: attempt to write a readonly database") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["status"], ["dlq", "list"], ["dlq", "purge", "--yes"]])
def test_a_damaged_ledger_is_named_not_blamed_on_spool_db(argv: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger.db that is not a database (the spool.db beside it is sound) is named in the one line: it said
    'spool.db: file is not a database', sending the operator to the wrong file."""
    _spool_with_dead_letters(tmp_path, 1)
    (tmp_path / "ledger.db").write_bytes(b"\x00garbage" * 1000)
    for leftover in ("ledger.db-wal", "ledger.db-shm"):
        (tmp_path / leftover).unlink(missing_ok=True)
    assert main([*argv, "--spool", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'ledger.db'}: file is not a database\n"


def test_serve_and_validate_name_a_spool_path_of_the_wrong_kind(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`serve` refuses a spool path of the wrong kind with the shared line (exit 2); `validate --config` agrees."""
    import subprocess
    import sys

    for spool, line in _spool_paths_of_the_wrong_kind(tmp_path).items():
        config = tmp_path / "c.yaml"
        config.write_text(f"spool: {{dir: '{spool}'}}\nsinks:\n  out: {{type: file, path: '{tmp_path}'}}\n"
                          "sources: {http: {listen: '127.0.0.1:0'}}\nconsole: off\n")
        served = subprocess.run([sys.executable, "-m", "traceexport", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
        assert served.returncode == 2 and line in served.stderr and "Traceback" not in served.stderr
        assert main(["validate", "--config", str(config), "--mapping", "otlp"]) == 2
        assert f"spool.dir: {line} (line 1)" in capsys.readouterr().err


def test_dlq_times_are_iso_utc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq show` and `dlq list --json` print attempt times as ISO 8601 UTC, as the table does."""
    _spool_with_dead_letters(tmp_path, 1)
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["last_attempt"])
    assert main(["dlq", "show", "--spool", str(tmp_path), str(entry["id"])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_attempt"] == entry["last_attempt"] and shown["first_attempt"].endswith("Z")
    assert main(["dlq", "list", "--spool", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert entry["last_attempt"] in out
    assert f"'traceexport dlq show --spool {tmp_path} {entry['id']}'" in out


def test_prometheus_text_has_a_series_per_sink(tmp_path: Path) -> None:
    """The Prometheus exposition carries the counters and gauges labelled by sink."""
    with Pipeline(tmp_path, [Route(ScriptedSink("opik"), StandInMapping())], FAST) as pipe:
        pipe.accept(make_records(2))
        text = pipe.prometheus_text()
    assert 'traceexport_records_accepted_total{sink="opik"} 2' in text
    assert 'traceexport_queue_depth{sink="opik"} 2' in text
    assert "# TYPE traceexport_records_exported_total counter" in text


def test_prometheus_text_keeps_a_sink_taken_out_of_the_config_while_it_is_owed_records(tmp_path: Path) -> None:
    """A sink taken out of the config (or renamed) while records are still owed to it keeps its queue depth and
    oldest pending age in /metrics, so the oldest-pending alert fires for records that would otherwise wait
    unseen; once `dlq retire` moved them, only its dead letters are counted; a removed sink owed nothing has none."""
    failing = ScriptedSink("old", fail_first(99, ItemFailure("503", permanent=False, status_code=503)))
    settings = PipelineSettings(fsync=False, poll_interval=0.01, retry=RetryPolicy(initial_backoff=600))
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping()), Route(failing, StandInMapping()),
                             Route(ScriptedSink("idle"), StandInMapping(), record_types=frozenset({"tool"}))],
                  settings) as pipe:
        pipe.accept(make_records(2))
        pipe.workers[1].step()  # both wait for a retry in 10 minutes
        pipe.accept(make_records(1, start=10))  # never tried
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping())], FAST) as pipe:
        text = pipe.prometheus_text()
        assert 'traceexport_queue_depth{sink="old"} 3' in text
        assert re.search(r'^traceexport_oldest_pending_age_seconds\{sink="old"\} [0-9.]+$', text, re.MULTILINE)
        assert 'sink="idle"' not in text
        assert 'traceexport_queue_depth{sink="new"} 3' in text
        assert set(pipe.metrics()["sinks"]) == {"new"}  # the console and the commands show their own sinks
    assert main(["dlq", "retire", "--spool", str(tmp_path), "old"]) == 0
    with Pipeline(tmp_path, [Route(ScriptedSink("new"), StandInMapping())], FAST) as pipe:
        text = pipe.prometheus_text()
    assert 'traceexport_queue_depth{sink="old"}' not in text and 'traceexport_dead_letters{sink="old"} 3' in text


def test_status_names_a_sink_the_running_daemon_does_not_deliver_to(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """With a daemon on the spool, `status` names each sink holding pending records that the daemon does not
    deliver to (taken out of its config, or renamed), and the command that retires them; without a daemon, for
    a sink it delivers to, or one a command is delivering to, it says nothing more."""
    failing = ScriptedSink("old", fail_first(99, ItemFailure("503", permanent=False, status_code=503)))
    with Pipeline(tmp_path, [Route(failing, StandInMapping()), Route(ScriptedSink("new"), StandInMapping())],
                  FAST) as pipe:
        pipe.accept(make_records(2))
    assert main(["status", "--spool", str(tmp_path)]) == 0
    assert "does not deliver" not in capsys.readouterr().out
    lock = DaemonLock(tmp_path, ["new"])
    try:
        assert main(["status", "--spool", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        turn = DeliveryTurn(tmp_path, ["old"], say=None)  # a command delivering to "old" meanwhile
        try:
            assert main(["status", "--spool", str(tmp_path)]) == 0
            assert "does not deliver" not in capsys.readouterr().out
        finally:
            turn.release()
    finally:
        lock.release()
    notes = [line for line in out.splitlines() if "does not deliver" in line]
    assert len(notes) == 1 and notes[0].startswith("old: 2 records pending"), out
    assert f"pid {os.getpid()}" in notes[0] and f"'traceexport dlq retire --spool {tmp_path} old'" in notes[0]


def test_export_to_file_sink_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --to file` delivers the valid records and exits 2 naming each invalid one on stderr."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"trace_info_type": "Nope", "trace_info": {}}\nnot json\n')
    code = main(["export", "--to", "file", "--spool", str(tmp_path / "spool"),
                 str(SAMPLES / "05-message-chat.json"), str(SAMPLES / "07-tool-call.json"), str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown record type 'Nope'" in err and "line 2: not valid JSON" in err
    assert "file: 2 records delivered" in err
    lines = (tmp_path / "out" / "otlp.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["kind"] == "span" for line in lines)


def test_export_exit_zero_when_everything_is_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export` exits 0 when every record was accepted by every named sink."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    assert main(["export", "--to", "file", "--spool", str(tmp_path / "spool"),
                 str(SAMPLES / "05-message-chat.json")]) == 0


def test_export_reads_its_files_as_they_stream(tmp_path: Path) -> None:
    """`export`'s inputs hand over records as the files are read, never a whole file in memory (a 57 MB
    JSON lines file took 500 MB), naming a file that cannot be read in one line and going on."""
    import tracemalloc

    from traceexport.cli.export_cmd import Inputs

    line = json.dumps(json.loads((SAMPLES / "07-tool-call.json").read_text(encoding="utf-8")))
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as handle:
        for index in range(3000):
            handle.write(line.replace("74edd9ad", f"{index:08x}") + "\n")
    assert big.stat().st_size > 8_000_000
    inputs = Inputs([str(tmp_path / "missing.json"), str(big)], None)
    tracemalloc.start()
    try:
        count = sum(1 for _ in inputs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, inputs.problems) == (3000, 1)
    assert peak < 4_000_000, peak


def test_export_unknown_sink_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --to sink exits 2 with the list of known sinks, never a traceback."""
    assert main(["export", "--to", "nowhere", "--spool", str(tmp_path), str(SAMPLES / "05-message-chat.json")]) == 2
    assert "unknown sink type 'nowhere'" in capsys.readouterr().err


def test_export_hands_records_to_the_daemon_holding_the_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With a daemon delivering to the same sink from the spool, `export` only accepts and leaves delivery to it;
    a sink only partly covered by that daemon is refused (two processes never deliver to one sink)."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    spool = tmp_path / "spool"
    lock = DaemonLock(spool, ["file"])
    try:
        code = main(["export", "--to", "file", "--spool", str(spool), "--timeout", "0.5",
                     str(SAMPLES / "05-message-chat.json")])
        err = capsys.readouterr().err
        assert code == 1  # nobody really delivers in this test: still pending when the timeout ends
        assert f"the daemon (pid {os.getpid()}) is delivering from spool {spool}: it sends these records" in err
        assert not (tmp_path / "out").exists()
        assert main(["export", "--to", "file,otlp", "--spool", str(spool), str(SAMPLES / "05-message-chat.json")]) == 2
        assert "not to otlp" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(["status", "--spool", str(spool), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sinks"]["file"]["queue_depth"] == 1


def test_replay_delivers_itself_to_a_sink_the_daemon_does_not_deliver_to(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside a daemon delivering to other sinks, `replay --to file` delivers itself as `export` does; a sink
    list the daemon covers only in part is refused by both with the same one line (exit 2)."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    spool = tmp_path / "spool"
    sample = str(SAMPLES / "05-message-chat.json")
    lock = DaemonLock(spool, ["dbg", "otlp"])
    try:
        assert main(["replay", sample, "--spool", str(spool), "--to", "file", "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "does not deliver to file; delivering them here" in err and "stop that daemon" not in err
        assert (tmp_path / "out" / "otlp.jsonl").is_file()
        for argv in (["replay", sample, "--no-progress"], ["export", sample]):
            assert main([*argv, "--spool", str(spool), "--to", "file,otlp"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "to dbg, otlp, not to file: deliver to otlp and to file in " \
                                             "separate runs" in err
    finally:
        lock.release()


def test_delivering_daemon_is_the_one_rule(tmp_path: Path) -> None:
    """`delivering_daemon` names the daemon when it delivers to every sink, None when to none or no daemon runs,
    and refuses a daemon delivering to some of them."""
    from traceexport.errors import DaemonConflictError
    from traceexport.pipeline.owner import delivering_daemon

    assert delivering_daemon(tmp_path, ["opik"]) is None
    lock = DaemonLock(tmp_path, ["opik", "amplitude"])
    try:
        daemon = delivering_daemon(tmp_path, ["opik"])
        assert daemon is not None and daemon.pid == os.getpid()
        assert delivering_daemon(tmp_path, ["file"]) is None
        with pytest.raises(DaemonConflictError, match="not to file"):
            delivering_daemon(tmp_path, ["opik", "file"])
    finally:
        lock.release()


def test_dlq_replay_of_a_sink_the_daemon_does_not_deliver_to(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead letters of a retired sink beside a daemon: `dlq list` suggests no command that cannot deliver,
    `dlq replay` without its sinks moves nothing (exit 2, saying why), and with them delivers it here."""
    for name in ("TRACEEXPORT_TO", "TRACEEXPORT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    _spool_with_dead_letters(tmp_path, 2, "gone")
    config = tmp_path / "gone.yaml"
    config.write_text(f"sinks:\n  gone:\n    type: file\n    path: {tmp_path / 'out'}\n", encoding="utf-8")
    lock = DaemonLock(tmp_path, ["dbg"])
    try:
        assert main(["dlq", "list", "--spool", str(tmp_path)]) == 0
        hint = capsys.readouterr().out.splitlines()[-1]
        assert f"'traceexport dlq replay --spool {tmp_path} --config FILE' sends them again (FILE: the config " \
               "file defining gone, which no daemon delivers to;" in hint
        assert main(["dlq", "replay", "--spool", str(tmp_path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "it sends them now" not in captured.err
        assert "does not deliver to gone, so 'dlq replay' delivers the records itself and needs their sinks: " \
               "add --config" in captured.err and "nothing was moved" in captured.err
        assert main(["dlq", "replay", "--spool", str(tmp_path), "--config", str(config)]) == 0
        captured = capsys.readouterr()
        assert "2 records queued again for gone" in captured.out and "does not deliver to gone: delivering " \
                                                                     "those here" in captured.out
        assert "gone: 2 records delivered" in captured.err
    finally:
        lock.release()
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "--to", "file", "--max-attempts", "0", "-"], "argument --max-attempts: 0 is not from 1 to 10000"),
    (["export", "--to", "file", "--max-attempts", "x", "-"], "argument --max-attempts: not a whole number: 'x'"),
    (["export", "--to", "file", "--max-age", "-5", "-"], "argument --max-age: -5 is not from 0 to 31536000"),
    (["export", "--to", "file", "--timeout", "nan", "-"], "argument --timeout: nan is not from 0 to 2592000"),
    (["replay", "--to", "file", "--timeout", "-1", "-"], "argument --timeout: -1 is not from 0"),
    (["replay", "--to", "file", "--batch", "0", "-"], "argument --batch: 0 is not from 1 to 100000"),
    (["dlq", "replay", "--timeout", "1e400"], "argument --timeout: 1e400 is not from 0"),
    (["backfill", "--max-rate", "0"], "argument --max-rate: 0 is not more than 0"),
    (["backfill", "--page-size", "-3"], "argument --page-size: -3 is not from 1 to 100000"),
    (["backfill", "--statement-timeout", "0"], "argument --statement-timeout: 0 is not more than 0"),
    (["backfill", "--timeout", "soon"], "argument --timeout: not a number: 'soon'"),
    (["audit", "--since", "1d", "--timeout", "-2"], "argument --timeout: -2 is not from 0"),
    (["audit", "--since", "1d", "--statement-timeout", "inf"], "argument --statement-timeout: inf is not more than 0"),
])
def test_every_numeric_flag_is_checked_for_range(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's numbers out of range (or not numbers) are a one-line usage error, exit 2, before any work."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err


def test_export_type_that_is_no_record_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`export --type NAME` with a name that is no record type is one usage error naming the known types,
    exit 2, before any input is read (it was one line per record of the input); a Dify class name is one."""
    with pytest.raises(SystemExit) as exited:
        main(["export", "--to", "file", "--type", "nonsense", "-"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --type: unknown record type 'nonsense' (known: workflow, message, tool," in err
    assert build_parser().parse_args(["export", "--to", "file", "--type", "ToolTraceInfo"]).type_name == "ToolTraceInfo"


def test_dlq_commands_name_a_sink_the_spool_never_had(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dlq list/replay/purge --sink NOSUCH` say the sink is unknown (exit 2), as `dlq retire` does, instead
    of an empty dead letter; a known sink with no dead letters is still 'empty' (exit 0)."""
    _spool_with_dead_letters(tmp_path, 1)
    for action in (["list"], ["replay", "--to", "file"], ["purge", "--yes"], ["retire"]):
        argv = ["dlq", action[0], "--spool", str(tmp_path), *action[1:]]
        assert main([*argv, "nosuch"] if action == ["retire"] else [*argv, "--sink", "nosuch"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.endswith(f"error: this spool has no sink named 'nosuch' ('traceexport status --spool "
                                     f"{tmp_path}' lists them)\n")
    assert main(["dlq", "list", "--spool", str(tmp_path / "none"), "--sink", "nosuch"]) == 0  # no spool yet


def test_export_knows_the_sink_types_serve_and_the_readme_know(capsys: pytest.CaptureFixture[str]) -> None:
    """`export --help` lists the sink types `serve --to` takes (not the hook's forward sink), and
    `export --to forward` is an unknown sink type."""
    from traceexport.config.models import SINK_TYPES

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    listed = " ".join(capsys.readouterr().out.split()).split("comma-separated: ", 1)[1].split(" --", 1)[0]
    assert sorted(name.strip() for name in listed.split(",")) == sorted(SINK_TYPES)
    assert main(["export", "--to", "forward", "-"]) == 2
    assert "unknown sink type 'forward' (known: amplitude, file, langfuse, opik, otlp)" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "typed"), [("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl"),
                                                 ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector")])
def test_a_bad_otlp_endpoint_is_quoted_as_typed(variable: str, typed: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad OTLP endpoint is quoted as the user typed it, without the /v1/traces the sink would append."""
    monkeypatch.setenv(variable, typed)
    assert main(["export", "--to", "otlp", "--spool", str(tmp_path), "-"]) == 2
    err = capsys.readouterr().err
    assert f"{variable}: must be an http:// or https:// URL, got {typed!r}\n" in err and "/v1/traces" not in err


def test_validate_config_names_the_config_it_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate --config X` says ok for X by name, then for the mappings."""
    config = tmp_path / "traceexport.yaml"
    config.write_text(f"spool:\n  dir: {tmp_path / 'spool'}\nsinks:\n  out:\n    type: file\n", encoding="utf-8")
    assert main(["validate", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: config {config}; mappings ")


def test_status_shows_the_dead_letter_as_it_is_now(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """After a successful `dlq replay`, status's IN DLQ column is 0 (the footnote says what it counts) while the
    lifetime dead_lettered counter of --json and /metrics keeps rising, never going back."""
    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    _spool_with_dead_letters(tmp_path / "spool", 3, "file")

    def dlq_cell() -> str:
        assert main(["status", "--spool", str(tmp_path / "spool")]) == 0
        lines = capsys.readouterr().out.splitlines()
        headings = re.split(r"\s{2,}", lines[1].strip())
        assert headings[5] == "IN DLQ" and "DEAD" not in headings
        assert any(line.startswith("ACCEPTED..DROPPED: totals since the spool began; IN DLQ: entries in the dead "
                                   "letter now") for line in lines)
        return next(line.split() for line in lines if line.startswith("file "))[5]

    assert dlq_cell() == "3"
    assert main(["dlq", "replay", "--spool", str(tmp_path / "spool"), "--to", "file"]) == 0
    capsys.readouterr()
    assert dlq_cell() == "0"
    assert main(["status", "--spool", str(tmp_path / "spool"), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["sinks"]["file"]["dead_lettered"] == 3 and snap["dead_letters"] == {}
    from traceexport.pipeline.metrics import prometheus_text, snapshot

    spool = Spool(tmp_path / "spool", create=False)
    try:
        text = prometheus_text(snapshot(spool))
    finally:
        spool.close()
    assert 'traceexport_records_dead_lettered_total{sink="file"} 3' in text
    assert 'traceexport_dead_letters{sink="file"} 0' in text


def test_dlq_list_holds_one_page_at_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq list` and `dlq list --json` read thousands of dead letters a page at a time (memory stays flat on
    any number) and still print every one, the JSON as one array."""
    _spool_with_dead_letters(tmp_path, 1)
    spool = Spool(tmp_path, create=False)
    try:
        with spool.write() as conn:
            conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) "
                         "INSERT INTO dead_letters(sink, record_key, record_type, app_id, reason, status_code, "
                         "permanent, attempts, first_attempt, last_attempt, envelope) SELECT sink, record_key || i, "
                         "record_type, app_id, reason, status_code, permanent, attempts, first_attempt, last_attempt, "
                         "envelope FROM dead_letters, n")
    finally:
        spool.close()
    read = deadletter.list_entries
    held: list[int] = []

    def counted(*args: object, **kwargs: object) -> list[deadletter.DeadLetterEntry]:
        entries = read(*args, **kwargs)  # type: ignore[arg-type]
        held.append(len(entries))
        return entries

    monkeypatch.setattr(deadletter, "list_entries", counted)
    capsys.readouterr()
    assert main(["dlq", "list", "--spool", str(tmp_path), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in entries] == list(range(1, 2502))
    assert main(["dlq", "list", "--spool", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2503 and out[-1].startswith("2501 entries; ")
    assert held and max(held) <= 1000


def test_a_spool_in_a_read_only_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` on a spool whose directory this process may not write (a read-only mount, another user's spool)
    names that, not SQLite's 'unable to open database file' alone."""
    import sqlite3

    from traceexport.pipeline import spool as spool_module

    _spool_with_dead_letters(tmp_path, 1)
    capsys.readouterr()

    def refused(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(spool_module.sqlite3, "connect", refused)
    monkeypatch.setattr(spool_module.os, "access", lambda path, mode: mode != os.W_OK)
    assert main(["status", "--spool", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}/spool.db: unable to open database file (the spool directory is not writable by this "
        "process: SQLite creates spool.db-wal and spool.db-shm beside spool.db, even to read it)\n")


def test_export_that_could_not_store_its_input_says_to_run_it_again(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """When the spool stays full, `export` exits 1 telling to run the same command again: the resume command it
    printed named no input files, so it would never have read the records left out."""
    from traceexport.errors import SpoolFullError

    def full(*args: object, **kwargs: object) -> list[tuple[int, str]]:
        raise SpoolFullError("spool x is full")

    monkeypatch.setenv("TRACEEXPORT_FILE_SINK_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(Pipeline, "accept_waiting", full)
    assert main(["export", "--to", "file", "--spool", str(tmp_path / "spool"), "--timeout", "0",
                 str(SAMPLES / "05-message-chat.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: spool x is full"
    assert err[-1].endswith("To resume: run the same export command again (the records it took are sent once "
                            "more, with the same ids)")
    assert "traceexport export" not in err[-1]
