"""The real ``langfuse`` SDKs, called the way Dify's own Langfuse providers call them, against the Langfuse fake.

Each SDK lives in its own throwaway venv (its pins clash with ours), given by an environment variable or
found at the default path, else these tests skip saying how to make one:

* ``TRACEEXPORT_LANGFUSE2_VENV`` (default ``/tmp/lf2``): ``langfuse`` 2.51.x, Dify 1.10.1's pin;
* ``TRACEEXPORT_LANGFUSE4_VENV`` (default ``/tmp/lf4``): ``langfuse`` 4.x, Dify 1.14.1's pin.

Without either, the real-Dify suite's venv of that Dify version is used (``tests/realdify/dify.py``).

A venv is used only when its ``langfuse`` has the major version Dify pins, and, when ``../shared`` is beside
the repository, exactly the version in that Dify tree's ``uv.lock``. ``langfuse_dify_driver.py`` runs in
the venv and makes the calls; the fake checks them against the server's rules and the published spec.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.langfuse_server import INGESTION_PATH, PROJECTS_PATH, LangfuseFake
from tests.fakes.langfuse_spec import load_spec

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "langfuse_dify_driver.py"
REAL = HERE.parents[1].parent / "shared" / "dify" / "real"
PK, SK = "pk-lf-dify-0123", "sk-lf-dify-4567"
SDKS = {  # major -> (environment variable, default venv, Dify tree whose uv.lock pins it)
    2: ("TRACEEXPORT_LANGFUSE2_VENV", "/tmp/lf2", "dify-1.10.1"),
    4: ("TRACEEXPORT_LANGFUSE4_VENV", "/tmp/lf4", "dify-1.14.1"),
}
ALL = ["message", "workflow", "generate_name"]
pytestmark = pytest.mark.integration  # each test starts the SDK in its venv (about 2 s of imports)


def _pinned(tree: str) -> str | None:
    """The langfuse version in ``../shared/dify/real/<tree>/api/uv.lock``, or None without ../shared."""
    lock = REAL / tree / "api" / "uv.lock"
    if not lock.is_file():
        return None
    found = re.search(r'^name = "langfuse"\nversion = "([^"]+)"', lock.read_text(encoding="utf-8"), re.M)
    return found.group(1) if found else None


def _dify_venv(tree: str) -> Path | None:
    """The real-Dify suite's venv of that Dify version (it pins the same SDK), built if need be."""
    from tests.realdify.dify import prepare

    outcome = prepare((tree.removeprefix("dify-"),))[tree.removeprefix("dify-")]
    return None if isinstance(outcome, str) else outcome.venv


@cache
def sdk_python(major: int) -> str:
    """The python of a venv holding Dify's langfuse SDK of this major version, or skip saying why."""
    variable, default, tree = SDKS[major]
    venv = Path(os.environ.get(variable) or default)
    if variable not in os.environ and not venv.exists():
        venv = _dify_venv(tree) or venv
    python = venv if venv.is_file() else venv / "bin" / "python"
    pin = _pinned(tree) or f"{major}.x"
    how = (f"make one: python3 -m venv {default} && {default}/bin/pip install 'langfuse=={pin}' "
           f"(or set {variable})")
    if not python.is_file():
        pytest.skip(f"no langfuse {pin} venv at {venv}: {how}")
    probe = subprocess.run([str(python), "-c", "import langfuse; print(langfuse.__version__)"],
                           capture_output=True, text=True, timeout=60)
    version = probe.stdout.strip()
    if probe.returncode != 0 or not version.startswith(f"{major}."):
        pytest.skip(f"{python} has no langfuse {major}.x (found {version or 'none'}): {how}")
    if _pinned(tree) not in (None, version):
        pytest.skip(f"{python} has langfuse {version}, but {tree} pins {pin}: {how}")
    return str(python)


def drive(major: int, fake: LangfuseFake, scenario: list[str], ids: dict[str, str],
          secret_key: str = SK) -> dict[str, Any]:
    """Run the driver in the SDK venv against ``fake``; returns its one-line JSON report."""
    job = {"host": fake.url, "public_key": PK, "secret_key": secret_key, "scenario": scenario, "ids": ids}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "PYTHON", "OTEL_"))}
    done = subprocess.run([sdk_python(major), str(DRIVER)], input=json.dumps(job), capture_output=True,
                          text=True, timeout=120, env=env, cwd=HERE)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def fake() -> Any:
    """A Langfuse fake that accepts only (PK, SK)."""
    with LangfuseFake(PK, SK) as server:
        yield server


@pytest.fixture
def ids() -> dict[str, str]:
    """Fresh Dify-style ids (uuid4) for one run of the driver."""
    names = ("app", "conversation", "message", "wf_message", "run", "llm_node", "code_node")
    return {name: str(uuid.uuid4()) for name in names}


@pytest.mark.parametrize("major", sorted(SDKS))
def test_api_check_and_project_key_pass_with_the_right_keys(major: int, fake: LangfuseFake,
                                                            ids: dict[str, str]) -> None:
    """auth_check() and the project lookup (Dify's api_check / get_project_key) succeed with Basic auth."""
    report = drive(major, fake, [], ids)
    assert report["auth_check"] is True and report["project"] == "project-fake-1"
    calls = fake.requests_to(PROJECTS_PATH)
    assert len(calls) == 2 and all(r.status == 200 and r.headers["authorization"].startswith("Basic ")
                                   for r in calls)
    assert calls[0].headers["x-langfuse-public-key"] == PK


@pytest.mark.parametrize("major", sorted(SDKS))
def test_api_check_fails_with_a_wrong_secret_key(major: int, fake: LangfuseFake, ids: dict[str, str]) -> None:
    """A wrong secret key makes auth_check() raise on the fake's 401, as Dify's api_check expects."""
    report = drive(major, fake, [], ids, secret_key="sk-lf-wrong")
    assert "auth_check" not in report and "401" in report["auth_error"]
    assert [r.status for r in fake.requests_to(PROJECTS_PATH)] == [401]


def test_sdk2_sends_every_dify_record_as_accepted_events(fake: LangfuseFake, ids: dict[str, str]) -> None:
    """Dify 1.10.1 (langfuse 2.51): traces, spans and generations all arrive, typed and linked; none rejected."""
    drive(2, fake, ALL, ids)
    assert fake.rejected == []
    assert all(r.status == 207 for r in fake.requests_to(INGESTION_PATH))
    message = fake.trace(ids["message"])
    assert message is not None and message["sessionId"] == ids["conversation"]
    assert message["tags"] == ["message", "chat"] and message["userId"] == "end-user-1"
    observed = [(o["type"], o["name"]) for o in fake.observations_in(ids["message"])]
    assert sorted(observed) == [("GENERATION", "llm"), ("SPAN", "dataset_retrieval"), ("SPAN", "moderation"),
                                ("SPAN", "web_search")]
    (llm,) = fake.find(type="GENERATION", name="llm")
    assert llm["usage"] == {"input": 7, "output": 5, "total": 12, "unit": "TOKENS", "totalCost": 0.0001}
    assert llm["startTime"].startswith("2026-11-21T13:26:58.677171") and llm["model"] == "gpt-4o-mini"
    assert "trace" not in llm  # the SDK's extra body key {"trace": {"release": null}} is dropped, as by zod
    nodes = {o["id"]: o for o in fake.observations_in(ids["wf_message"])}
    assert nodes[ids["run"]]["type"] == "SPAN" and nodes[ids["llm_node"]]["type"] == "GENERATION"
    assert nodes[ids["llm_node"]]["parentObservationId"] == ids["run"]
    assert nodes[ids["code_node"]]["parentObservationId"] == ids["run"]
    # generate_name: the SDK names the id-less trace itself; Dify puts the span under the conversation id
    assert [o["name"] for o in fake.observations_in(ids["conversation"])] == ["generate_conversation_name"]


def test_sdk4_loses_the_observations_dify_sends_without_an_id(fake: LangfuseFake, ids: dict[str, str]) -> None:
    """Dify 1.14.1 (langfuse 4.x): id-less spans/generations get per-event 400s in the 207, which Dify ignores."""
    report = drive(4, fake, ALL, ids)
    assert all(r.status == 207 for r in fake.requests_to(INGESTION_PATH))
    assert len(report["answers"]) == 11  # one api.ingestion.batch call per add_* call
    assert {ids["message"], ids["wf_message"]} <= set(fake.traces) and len(fake.traces) == 3
    lost = sorted((r["type"], r["error"]) for r in fake.rejected)
    assert lost == [("generation-create", "body.id: Required")] + [("span-create", "body.id: Required")] * 4
    assert fake.observations_in(ids["message"]) == []  # the llm generation, moderation, retrieval and tool
    nodes = {o["id"]: o for o in fake.observations_in(ids["wf_message"])}
    assert set(nodes) == {ids["run"], ids["llm_node"], ids["code_node"]}
    assert nodes[ids["llm_node"]]["usage"]["input"] == 7 and nodes[ids["llm_node"]]["type"] == "GENERATION"


@pytest.mark.parametrize("major", sorted(SDKS))
def test_sdk_bodies_match_the_openapi_spec(major: int, fake: LangfuseFake, ids: dict[str, str]) -> None:
    """Every event each SDK sent for Dify validates against the published IngestionEvent schemas."""
    spec = load_spec()
    if isinstance(spec, str):
        pytest.skip(spec)
    drive(major, fake, ALL, ids)
    bodies = [r.json() for r in fake.requests_to(INGESTION_PATH)]
    assert bodies and all(spec.request_errors(b) == [] for b in bodies)
    events = [e for b in bodies for e in b["batch"]]
    assert {e["type"] for e in events} == {"trace-create", "span-create", "generation-create"}
    assert [spec.event_errors(e) for e in events if spec.event_errors(e)] == []


@pytest.mark.parametrize("major", sorted(SDKS))
def test_a_langfuse_v4_server_refuses_what_dify_sends(major: int, ids: dict[str, str]) -> None:
    """Against Langfuse v4 (events_only) every trace and observation Dify sends is refused per event."""
    with LangfuseFake(PK, SK, legacy_ingestion=False) as fake:
        drive(major, fake, ["message"], ids)
        assert not fake.traces and not fake.observations
        assert {r["message"] for r in fake.rejected} <= {"Event type not accepted", "Invalid request data"}
        assert any(r["message"] == "Event type not accepted" for r in fake.rejected)


if __name__ == "__main__":  # pragma: no cover - a shortcut: python tests/contract/test_langfuse_dify_sdks.py
    raise SystemExit(pytest.main([__file__, "-q", *sys.argv[1:]]))
