"""Dify's rows as records: the pure parts of backfill (tool calls, token split, times, checkpoint, masking)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from traceexport.cli.timespec import TimeSpecError, parse_time
from traceexport.difydb import Position, Window, masked_url
from traceexport.difydb.checkpoint import Checkpoint, job_id
from traceexport.difydb.rebuild import token_split, tool_calls

T0 = datetime(2026, 11, 30, 9, 15)


def thought(position: int, tool: str) -> dict[str, object]:
    """An agent thought row with its tools."""
    return {"position": position, "tool": tool, "created_at": T0 + timedelta(seconds=position)}


def test_each_tool_is_one_call_at_the_last_thought_that_used_it() -> None:
    """A tool used by several thoughts is one record, at the last of them, as Dify's tool_trace picks it."""
    calls = tool_calls([thought(3, "weather"), thought(1, "weather;search"), thought(2, ""), thought(4, "calc")])
    assert [(name, t["position"]) for name, t in calls] == [("search", 1), ("weather", 3), ("calc", 4)]


def test_token_split_sums_usage_of_node_outputs_and_ignores_the_rest() -> None:
    """Prompt and completion tokens add up over node outputs; broken JSON, booleans and missing usage count 0."""
    outputs = ['{"usage": {"prompt_tokens": 250, "completion_tokens": 50}}', '{"usage": {"prompt_tokens": 5}}',
               "not json", None, '{"usage": {"prompt_tokens": true}}', '{"text": "x"}']
    assert token_split(outputs) == (255, 50)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-01", datetime(2026, 11, 1)),
    ("2026-11-01T08:00:00Z", datetime(2026, 11, 1, 8)),
    ("2026-11-01T10:00:00+02:00", datetime(2026, 11, 1, 8)),
    ("30d", T0 - timedelta(days=30)),
    ("90m", T0 - timedelta(minutes=90)),
])
def test_times_are_naive_utc(text: str, expected: datetime) -> None:
    """ISO dates, offsets and spans back from now all become naive UTC, as Dify stores times."""
    assert parse_time(text, now=T0) == expected


def test_a_time_it_cannot_read_is_one_line() -> None:
    """An unreadable time names the flag and the accepted forms."""
    with pytest.raises(TimeSpecError, match=r"--since 'yesterday' is not a time: use an ISO date"):
        parse_time("yesterday", flag="--since")


@pytest.mark.parametrize("text", ["99999999999999d", "9" * 400 + "d", "0001-01-01T00:00+01:00"])
def test_a_time_out_of_range_is_one_line(text: str) -> None:
    """A span reaching back before the year 1 (or a float overflow) is a TimeSpecError, not an OverflowError."""
    with pytest.raises(TimeSpecError, match=r"^--since '.*' (reaches back before|is before) the year 1"):
        parse_time(text, flag="--since")


def test_a_checkpoint_survives_a_new_process_and_belongs_to_its_job(tmp_path: Path) -> None:
    """Positions written after a page are read back by the next run of the same job only; reset forgets them."""
    window = Window(since=T0, until=T0 + timedelta(days=1))
    job = job_id("postgresql://u:***@h/d", "30d", None, window, ["otlp"])
    assert job != job_id("postgresql://u:***@h/d", "30d", None, window, ["opik"])
    first = Checkpoint(tmp_path, job)
    assert first.pin(window) == window
    first.advance("messages", Position(T0, "0b7a"), 500)
    again = Checkpoint(tmp_path, job)
    assert again.resumed and again.positions == {"messages": Position(T0, "0b7a")} and again.records == 500
    later = Window(since=T0 + timedelta(hours=1), until=T0 + timedelta(days=2))  # "30d" resolved a day later
    assert again.pin(later) == window  # the resumed job reads the window its first run began
    again.finish()
    assert Checkpoint(tmp_path, job).done
    again.reset()
    assert not Checkpoint(tmp_path, job).resumed


def test_an_unreadable_checkpoint_starts_afresh(tmp_path: Path) -> None:
    """A torn or foreign checkpoint file is ignored (ids make re-sending harmless), not a crash."""
    (tmp_path / "backfill").mkdir()
    (tmp_path / "backfill" / "job.json").write_text("{not json")
    assert not Checkpoint(tmp_path, "job").resumed


def test_urls_lose_their_password() -> None:
    """The masked URL keeps user, host and database and hides the password."""
    assert masked_url("postgresql://dify:s3cret@db:5432/dify") == "postgresql://dify:***@db:5432/dify"
    assert masked_url("postgresql://db/dify") == "postgresql://db/dify"


def test_a_connection_error_masks_the_password_but_not_the_letters_of_a_tiny_one() -> None:
    """describe() masks the URL's password in libpq's message; a one-letter password is not masked in every
    word (it turned "port" into "***ort"), a real one is."""
    from traceexport.difydb.connect import describe

    message = 'connection to server at "127.0.0.1", port 1 failed: is it accepting connections? (hunter22)'
    assert "port 1" in describe(RuntimeError(message), "postgresql://u:p@127.0.0.1:1/d")
    assert "hunter22" not in describe(RuntimeError(message), "postgresql://u:hunter22@127.0.0.1:1/d")
