"""`audit` and `backfill` from the command line: which Dify database and which sinks (no database is reached)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from traceexport.cli import main
from traceexport.cli.backfill_cmd import Job
from traceexport.errors import SourceError
from traceexport.pipeline.spool import Spool

URL_ENV = "TRACEEXPORT_DIFY_DATABASE_URL"
REAL_OPEN = Job.open  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening Dify's database stops the command with a line naming the URL and the sinks it would audit."""
    def opened(self: Job, **_: Any) -> None:
        raise SourceError(f"would open {self.url}")

    monkeypatch.setattr(Job, "open", opened)
    for name in (URL_ENV, "TRACEEXPORT_CONFIG", "TRACEEXPORT_TO", "TRACEEXPORT_SPOOL"):
        monkeypatch.delenv(name, raising=False)


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "traceexport.yaml"
    config.write_text(f"spool:\n  dir: {tmp_path / 'spool'}\nsinks:\n  dbg:\n    type: file\n"
                      f"    path: {tmp_path / 'out'}\nenrich:\n  database_url: postgresql://ro@confighost/dify\n",
                      encoding="utf-8")
    return config


@pytest.mark.parametrize("command", ["audit", "backfill"])
def test_the_database_comes_from_flag_then_variable_then_config(command: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config` alone gives its enrich.database_url (as the periodic audit reads it); the variable beats it and
    --dify-db beats both; with none, one line names all three."""
    config = str(_config(tmp_path))
    assert main([command, "--since", "7d", "--config", config]) == 2
    assert capsys.readouterr().err == "error: would open postgresql://ro@confighost/dify\n"
    monkeypatch.setenv(URL_ENV, "postgresql://ro@envhost/dify")
    assert main([command, "--since", "7d", "--config", config]) == 2
    assert capsys.readouterr().err == "error: would open postgresql://ro@envhost/dify\n"
    assert main([command, "--since", "7d", "--config", config, "--dify-db", "postgresql://ro@flaghost/dify"]) == 2
    assert capsys.readouterr().err == "error: would open postgresql://ro@flaghost/dify\n"
    monkeypatch.delenv(URL_ENV)
    assert main([command, "--since", "7d", "--to", "file", "--spool", str(tmp_path / "spool")]) == 2
    assert capsys.readouterr().err == ("error: no Dify database: pass --dify-db URL, set "
                                       "TRACEEXPORT_DIFY_DATABASE_URL, or set enrich.database_url in the config "
                                       "file (--config)\n")


def test_audit_without_config_audits_the_sinks_the_spool_recorded(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without --config, `audit --sink langfuse` finds the spool's langfuse sink (the README example); a name the
    spool never had, or a sink only a config file defines, is one line naming what to pass."""
    spool = Spool(tmp_path / "spool")
    spool.register_sinks(["langfuse", "dbg"])
    spool.close()
    base = ["audit", "--since", "7d", "--dify-db", "postgresql://ro@db/dify", "--spool", str(tmp_path / "spool")]
    assert main([*base, "--sink", "langfuse", "--json"]) == 2
    assert capsys.readouterr().err == "error: would open postgresql://ro@db/dify\n"
    assert main([*base, "--sink", "opik"]) == 2
    assert "error: --sink opik: spool " in capsys.readouterr().err
    assert main([*base, "--sink", "dbg"]) == 2
    assert "is defined by a config file (its type and mapping are not in the spool): pass --config" in \
        capsys.readouterr().err
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("audit: not auditing dbg (defined by a config file") and "would open" in err


def test_audit_fix_json_has_one_shape_also_when_nothing_is_missing(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit --fix --json` prints the object with "before", "fixed" and "after" (the README's shape) even when
    the audit found nothing to fix, so a script reads one shape whatever the audit found."""
    import traceexport.cli.audit_cmd as audit_cmd
    from traceexport.audit.reconcile import AuditReport

    monkeypatch.setattr(Job, "open", lambda self, **_: None)
    monkeypatch.setattr(audit_cmd, "audit", lambda config, job: AuditReport())
    code = main(["audit", "--since", "7d", "--dify-db", "postgresql://ro@db/dify", "--to", "file", "--spool",
                 str(tmp_path / "spool"), "--fix", "--json"])
    assert code == 0
    outcome = json.loads(capsys.readouterr().out)
    assert sorted(outcome) == ["after", "before", "fixed"] and outcome["fixed"] == {}
    assert outcome["before"]["exit_code"] == outcome["after"]["exit_code"] == 0


@pytest.mark.parametrize("command", ["audit", "backfill"])
def test_a_schema_check_past_the_statement_timeout_says_to_raise_it(command: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement timeout while checking Dify's schema (a busy catalog) says what a timeout on a page says:
    raise --statement-timeout (it said only "reading Dify's database failed")."""
    import psycopg

    import traceexport.difydb as difydb

    class Conn:
        def close(self) -> None:
            pass

    def slow(conn: object, layout: object = None) -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    monkeypatch.setattr(Job, "open", REAL_OPEN)
    monkeypatch.setattr(difydb, "connect", lambda url, **_: Conn())
    monkeypatch.setattr(difydb, "inspect", slow)
    assert main([command, "--since", "7d", "--dify-db", "postgresql://ro@db/dify", "--to", "file", "--spool",
                 str(tmp_path / "spool")]) == 2
    assert capsys.readouterr().err == ("error: a query on Dify's database ran past the statement timeout: canceling "
                                       "statement due to statement timeout; raise --statement-timeout or read a "
                                       "smaller window\n")


def test_audit_fix_says_what_is_still_pending_after_its_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """When the re-sent records are not delivered within --timeout (the sink is down), `audit --fix` says how many
    are still pending and that the spool keeps them, besides the audit that still finds them missing (it said
    only "sent 1 record(s)", as if they had been delivered)."""
    from types import SimpleNamespace

    import traceexport.cli.audit_cmd as audit_cmd
    import traceexport.cli.spool_delivery as spool_delivery
    from traceexport.audit.reconcile import Expected, reconcile

    class NothingAcked:
        def acknowledged(self, sink_name: str, keys: Any, /) -> dict[str, tuple[str, int]]:
            return {}

        def dead_letters(self, sink_name: str, keys: Any, /) -> dict[str, str]:
            return {}

    class DownSink:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.accepted: list[Any] = []

        def accept(self, records: list[Any]) -> list[tuple[int, str]]:
            self.accepted += records
            return []

        def finish(self, timeout: float) -> tuple[bool, dict[str, Any], list[Any]]:
            return False, {"sinks": {"file": {"queue_depth": len(self.accepted)}}}, []

        def close(self) -> None:
            pass

    record = SimpleNamespace(key="message:0b7a")
    monkeypatch.setattr(Job, "open", lambda self, **_: None)
    monkeypatch.setattr(Job, "open_reader", lambda self: SimpleNamespace(
        pages=lambda window: iter([SimpleNamespace(records=[record])])))
    monkeypatch.setattr(audit_cmd, "audit", lambda config, job: reconcile(
        [Expected(record.key, "app-1", "message", "2026-12-05", {"file": "h"})], NothingAcked()))
    monkeypatch.setattr(spool_delivery, "SpoolDelivery", DownSink)
    code = main(["audit", "--since", "7d", "--dify-db", "postgresql://ro@db/dify", "--to", "file", "--spool",
                 str(tmp_path / "spool"), "--fix", "--timeout", "3"])
    assert code == 3
    err = capsys.readouterr().err
    assert "audit --fix: re-sent 1 record(s) to file; auditing again\n" in err
    assert (f"audit --fix: 1 record(s) for file still pending after --timeout 3s; the spool {tmp_path / 'spool'} "
            "keeps them ('traceexport serve' delivers them)\n") in err


def test_audit_says_which_rows_it_could_not_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A row no record can be made of (backfill's "bad record") is not in the report: the audit says so, one line
    per row, instead of reporting "nothing missing" as if it had checked it."""
    import traceexport.audit.window as window
    from traceexport.audit.reconcile import AuditReport

    def audited(config: Any, ledger: Any, source: Any, span: Any, on_problem: Any = None) -> AuditReport:
        if on_problem is not None:
            on_problem("message 0b7a: a time or duration out of range (Python int too large to convert to C int)")
        return AuditReport()

    monkeypatch.setattr(Job, "open", lambda self, **_: None)
    monkeypatch.setattr(window, "audit", audited)
    assert main(["audit", "--since", "7d", "--dify-db", "postgresql://ro@db/dify", "--to", "file", "--spool",
                 str(tmp_path / "spool")]) == 0
    assert ("audit: not audited (cannot be rebuilt): message 0b7a: a time or duration out of range (Python int too "
            "large to convert to C int)\n") in capsys.readouterr().err


def test_the_window_hands_each_unbuildable_row_to_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """audit.window.records yields the pages' records and passes each page's problems to on_problem."""
    from types import SimpleNamespace

    import traceexport.audit.window as window

    pages = [SimpleNamespace(records=["r1"], problems=["row 1: bad"]), SimpleNamespace(records=["r2"], problems=[])]
    monkeypatch.setattr(window, "connect", lambda url, **_: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(window, "inspect", lambda conn, layout: None)
    monkeypatch.setattr(window, "DifyReader", lambda conn, schema, **_: SimpleNamespace(pages=lambda w: iter(pages)))
    problems: list[str] = []
    got = list(window.records(window.Source("postgresql://ro@db/dify"), window.Window(), problems.append))
    assert got == ["r1", "r2"] and problems == ["row 1: bad"]


def test_backfill_into_a_spool_that_cannot_hold_its_checkpoint_is_one_line(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file given as --spool, or where the spool's backfill/ folder should be, is one line (exit 2), not
    a NotADirectoryError or FileExistsError traceback from making the checkpoint's folder."""
    monkeypatch.setattr(Job, "open", lambda self, **_: object())
    base = ["backfill", "--dify-db", "postgresql://ro@db/dify", "--to", "file", "--spool"]
    (tmp_path / "afile").write_text("")
    assert main([*base, str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == f"cannot open spool: spool {tmp_path / 'afile'}: not a directory\n"
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "backfill").write_text("")
    assert main([*base, str(tmp_path / "spool")]) == 2
    assert capsys.readouterr().err == (f"error: cannot keep a backfill checkpoint in {tmp_path / 'spool' / 'backfill'}"
                                       ": File exists\n")
