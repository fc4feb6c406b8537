"""The web console in a real headless Chromium against a running ``traceexport serve`` with fake backends.

Screenshots of each view land in the test's tmp dir; with ``TRACEEXPORT_SAVE_SCREENSHOTS=1`` the status
page with traffic is also written to ``docs/console-status.png`` (kept out of CI runs so the tree stays clean).
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import REPO, SAMPLES
from tests.fakes.opik_server import OpikFake
from tests.fakes.otlp_server import OtlpFake
from tests.support.browser import chromium, missing, severe_console_messages, wait
from tests.support.daemon import Served

MISSING = missing()
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

if MISSING is None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

CONSOLE_TOKEN = "console-token-0123456789abcdef"
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '"><img src=x onerror="window.__pwned=1">'
MAX_BODY = 100_000  # the playground's bound, small enough to paste past
SAVE_SCREENSHOTS = os.environ.get("TRACEEXPORT_SAVE_SCREENSHOTS") == "1"


def sample(name: str = "01-workflow-ok") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def fresh(record: dict[str, Any], shift: float = 0.0) -> dict[str, Any]:
    """``record`` as if it ended a second ago (so end-to-end latency is the daemon's, not the sample's age)."""
    record = copy.deepcopy(record)
    info = record["trace_info"]
    start, end = (datetime.fromisoformat(info[key]) for key in ("start_time", "end_time"))
    now = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1 + shift)
    info["start_time"], info["end_time"] = (now - (end - start)).isoformat(), now.isoformat()
    return record


def hostile_record() -> dict[str, Any]:
    """The workflow sample with an HTML injection in its inputs, outputs and app name."""
    record = copy.deepcopy(sample())
    info = record["trace_info"]
    info["workflow_run_inputs"] = {"question": SCRIPT, "note": IMG}
    info["workflow_run_outputs"] = {"answer": SCRIPT + IMG}
    info["metadata"]["app_name"] = SCRIPT
    return record


def config(tmp_path: Path, otlp: OtlpFake, opik: OpikFake | None = None) -> str:
    sinks = f"  otlp:\n    type: otlp\n    traces_endpoint: {otlp.traces_url}\n"
    if opik is not None:
        sinks += f"  opik:\n    type: opik\n    url: {opik.url}\n"
    return (f"spool:\n  dir: {tmp_path / 'spool'}\n"
            f"retry:\n  initial_backoff: 0.2\n  max_backoff: 0.5\n"
            f"sources:\n  http:\n    token: ${{TEST_TOKEN}}\n"
            f"console:\n  token: ${{CONSOLE_TOKEN}}\n  max_body_bytes: {MAX_BODY}\n"
            f"sinks:\n{sinks}")


def serve(tmp_path: Path, otlp: OtlpFake, opik: OpikFake | None = None) -> Served:
    served = Served(tmp_path, config(tmp_path, otlp, opik), env={"CONSOLE_TOKEN": CONSOLE_TOKEN})
    assert served.console
    return served


def api(served: Served, path: str, token: str | None = CONSOLE_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{served.console}{path}", headers=headers, timeout=10)


@pytest.fixture
def otlp() -> Iterator[OtlpFake]:
    with OtlpFake() as fake:
        yield fake


@pytest.fixture
def opik() -> Iterator[OpikFake]:
    with OpikFake() as fake:
        yield fake


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver
    # (quit happens in chromium(); nothing else to clean)


# ---- page helpers -----------------------------------------------------------------------------------
def css(driver: Any, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def visible_text(driver: Any, selector: str) -> str:
    element = css(driver, selector)
    return str(element.text) if element.is_displayed() else ""


def give_token(driver: Any, token: str) -> None:
    wait(lambda: css(driver, "#token-dialog").is_displayed(), what="the token form")
    field = css(driver, "#token-input")
    field.clear()
    field.send_keys(token)
    css(driver, "#token-submit").click()


def open_console(driver: Any, served: Served, view: str = "status") -> None:
    """Load the page and log in with the console token (the form appears on the first 401)."""
    driver.get(f"{served.console}/ui/#{view}")
    give_token(driver, CONSOLE_TOKEN)
    wait(lambda: not css(driver, "#token-dialog").is_displayed(), what="the token form to close")


def sink_field(driver: Any, sink: str, field: str) -> str:
    return str(css(driver, f'[data-sink="{sink}"] [data-field="{field}"]').text)


def paste(driver: Any, selector: str, text: str) -> None:
    """Set a textarea's value as a paste would, and fire its input event."""
    driver.execute_script(
        "const t = document.querySelector(arguments[0]); t.value = arguments[1];"
        "t.dispatchEvent(new Event('input', {bubbles: true}));", selector, text)


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def assert_not_pwned(driver: Any) -> None:
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert severe_console_messages(driver) == []


# ---- tests --------------------------------------------------------------------------------------------
def test_status_page_shows_the_sinks_and_moves_when_records_flow(tmp_path: Path, otlp: OtlpFake, opik: OpikFake,
                                                                 browser: Any) -> None:
    """The status page shows both configured sinks and its counts, latencies and plot follow posted records."""
    with serve(tmp_path, otlp, opik) as served:
        open_console(browser, served)
        wait(lambda: sink_field(browser, "otlp", "counts") and sink_field(browser, "opik", "counts"),
             what="a card per sink")
        assert sink_field(browser, "otlp", "counts") == "0 / 0"
        assert sink_field(browser, "otlp", "rate_limit") == "unlimited"
        assert css(browser, "#ready").get_attribute("data-ready") == "true"

        records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(SAMPLES.glob("*.json"))]
        rounds = 12 if SAVE_SCREENSHOTS else 1  # a minute of traffic for the README's picture
        for round_ in range(rounds):
            for record in records:
                assert served.post(fresh(record)).status_code == 202
            if round_ < rounds - 1:
                time.sleep(5)

        def counts(sink: str) -> tuple[int, int]:
            accepted, exported = sink_field(browser, sink, "counts").replace(",", "").split(" / ")
            return int(accepted), int(exported)

        for sink in ("otlp", "opik"):
            # A repeated record is one record (its key), so later rounds may add nothing new.
            wait(lambda sink=sink: counts(sink)[0] >= len(records) and counts(sink)[0] == counts(sink)[1],
                 timeout=60, what=f"{sink}'s counts to cover every record")
            wait(lambda sink=sink: sink_field(browser, sink, "delivery").split(" / ")[1] != "—",
                 what=f"{sink}'s delivery p95")
        assert counts("otlp") == (len(records), len(records)) or SAVE_SCREENSHOTS
        e2e_p95 = sink_field(browser, "otlp", "e2e").split(" / ")[1]
        assert e2e_p95.endswith(" s") or e2e_p95.endswith(" ms"), e2e_p95  # seconds, not the samples' age
        assert sink_field(browser, "otlp", "dead_letters") == "0"
        assert "ok" in sink_field(browser, "otlp", "requests")
        # The history holds a point every few seconds: the throughput plot draws the sinks' rate once it has one.
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, '#plot-rate [data-series="otlp:rate"], #plot-rate circle'),
             timeout=30, what="the throughput plot")
        screenshot(browser, tmp_path, "status")
        if SAVE_SCREENSHOTS:
            browser.save_screenshot(str(REPO / "docs" / "console-status.png"))
        assert_not_pwned(browser)


def test_dead_letter_is_replayed_from_the_page_after_the_backend_is_fixed(tmp_path: Path, otlp: OtlpFake,
                                                                           browser: Any) -> None:
    """A record the fake refuses (400) shows in the dead-letter view, and Replay sends it once the fake is fixed."""
    otlp.fail_next(1, 400, body={"code": 3, "message": "span is invalid"})
    with serve(tmp_path, otlp) as served:
        open_console(browser, served)
        assert served.post(sample()).status_code == 202
        wait(lambda: sink_field(browser, "otlp", "dead_letters") == "1", timeout=60,
             what="the status page to count the dead letter")
        assert not otlp.spans

        css(browser, '[data-sink="otlp"] a[data-field="dead_letters"]').click()  # the list, filtered by sink
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#dl-rows tr"), what="the dead letter's row")
        assert Select(css(browser, "#dl-sink")).first_selected_option.get_attribute("value") == "otlp"
        row = css(browser, "#dl-rows tr")
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[2:4] == ["otlp", "workflow"] and "400" in cells[4] and cells[5] == "400", cells
        row.click()
        wait(lambda: "span is invalid" in visible_text(browser, "#dl-entry"), what="the entry")
        record = json.loads(css(browser, "#dl-entry-record").text)
        assert record["trace_info"]["workflow_run_id"] == sample()["trace_info"]["workflow_run_id"]
        screenshot(browser, tmp_path, "dead-letters")

        row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
        css(browser, "#dl-replay-selected").click()
        wait(lambda: css(browser, "#confirm-dialog").is_displayed(), what="the confirmation")
        assert "1 entry" in css(browser, "#confirm-text").text and "It goes back" in css(browser, "#confirm-text").text
        assert browser.switch_to.active_element.get_attribute("id") == "confirm-cancel"  # Enter does not act
        screenshot(browser, tmp_path, "dead-letters-confirm")
        css(browser, "#confirm-ok").click()
        wait(lambda: "Replayed 1" in css(browser, "#dl-result").text, what="the replay's result")

        wait(lambda: len(otlp.spans) > 0, timeout=60, what="the replayed record at the fake")
        wait(lambda: not browser.find_elements(By.CSS_SELECTOR, "#dl-rows tr"), what="the emptied list")
        browser.get(f"{served.console}/ui/#status")
        wait(lambda: sink_field(browser, "otlp", "dead_letters") == "0", what="the status count to follow")
        assert api(served, "/api/dead-letters").json()["total"] == 0
        assert_not_pwned(browser)


def test_playground_shows_the_payload_and_the_provenance_of_a_field(tmp_path: Path, otlp: OtlpFake,
                                                                    browser: Any) -> None:
    """A pasted record's OTLP payload appears, a clicked field names its mapping file and line, overrides apply."""
    with serve(tmp_path, otlp) as served:
        open_console(browser, served, "playground")
        wait(lambda: len(Select(css(browser, "#pg-sample")).options) > 1, what="the samples")
        Select(css(browser, "#pg-backend")).select_by_value("otlp")
        paste(browser, "#pg-record", json.dumps(sample(), indent=2))
        name = wait(lambda: browser.find_elements(By.CSS_SELECTOR, '#pg-payloads .field[data-path=\'["name"]\']'),
                    what="the payload's name field")[0]
        assert "invoke_workflow" in name.text
        assert "traceId" in css(browser, "#pg-requests").text  # the exact request body, as OTLP/JSON

        name.click()
        wait(lambda: css(browser, "#prov-fields").is_displayed(), what="the provenance panel")
        assert css(browser, '#prov-fields [data-field="file"]').text == "otlp.yaml"
        assert css(browser, '#prov-fields [data-field="builtin"]').text == "built-in mapping"
        line = int(css(browser, '#prov-fields [data-field="line"]').text)
        mapping_line = (REPO / "mappings" / "otlp.yaml").read_text(encoding="utf-8").splitlines()[line - 1]
        assert mapping_line.strip().startswith("name:") and "invoke_workflow" in mapping_line, mapping_line
        screenshot(browser, tmp_path, "playground")

        # An invalid override lists its problem with its line; a valid one changes the output and the provenance.
        paste(browser, "#pg-override",
              'records:\n  workflow:\n    span:\n      body:\n        name: "$derived.app_name | no_such_fn"\n')
        wait(lambda: css(browser, "#pg-problems").is_displayed(), what="the override's problems")
        problem = css(browser, "#pg-problems li")
        assert problem.get_attribute("data-line") == "5" and "no_such_fn" in problem.text
        screenshot(browser, tmp_path, "playground-problems")
        paste(browser, "#pg-override",
              'records:\n  workflow:\n    span:\n      body:\n        name: "console {{ $derived.app_name }}"\n')
        name = wait(lambda: [f for f in browser.find_elements(By.CSS_SELECTOR,
                                                              '#pg-payloads .field[data-path=\'["name"]\']')
                             if '"console ' in f.text], what="the overridden name")[0]
        assert not css(browser, "#pg-problems").is_displayed()
        name.click()
        wait(lambda: css(browser, '#prov-fields [data-field="file"]').text == "override.yaml",
             what="the override's provenance")
        assert css(browser, '#prov-fields [data-field="line"]').text == "5"
        assert css(browser, '#prov-fields [data-field="builtin"]').text == "your override"

        # The built-in mapping shows read-only beside the override.
        css(browser, "#pg-show-builtin").click()
        wait(lambda: "backend: otlp" in visible_text(browser, "#pg-builtin-text"), what="the built-in mapping")
        assert css(browser, "#pg-builtin-file").text == "otlp.yaml"

        # Input past console.max_body_bytes is refused in the page; the server would answer 413 as well.
        too_big = json.dumps({**sample(), "padding": "x" * MAX_BODY})
        paste(browser, "#pg-record", too_big)
        wait(lambda: "at most" in css(browser, "#pg-state").text, what="the size refusal")
        refused = httpx.post(f"{served.console}/api/playground/map", timeout=10,
                             headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
                             json={"backend": "otlp", "record": too_big, "override": ""})
        assert refused.status_code == 413

        # A record that cannot be read is one line of reason.
        paste(browser, "#pg-record", '{"app_id": "x", "trace_info_type": "MadeUpTraceInfo", "trace_info": {}}')
        wait(lambda: "MadeUpTraceInfo" in visible_text(browser, "#pg-error"), what="the record's error")
        assert "\n" not in css(browser, "#pg-error").text
        assert_not_pwned(browser)


def test_injected_markup_never_runs_and_shows_as_text(tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """Record fields holding <script> and an onerror <img> show literally in the entry view and the playground."""
    otlp.fail_next(1, 400, body={"code": 3, "message": f"refused {SCRIPT}{IMG}"})
    with serve(tmp_path, otlp) as served:
        assert served.post(hostile_record()).status_code == 202
        open_console(browser, served, "dead-letters")
        row = wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#dl-rows tr"), timeout=60,
                   what="the hostile record's dead letter")[0]
        row.click()
        wait(lambda: css(browser, "#dl-entry-record").text, what="the entry's record")
        record_text = css(browser, "#dl-entry-record").text
        assert SCRIPT in record_text and "<img src=x onerror=" in record_text
        assert SCRIPT in css(browser, "#dl-entry-fields").text  # the reason carries the fake's message
        assert not browser.find_elements(By.CSS_SELECTOR, "#dl-entry img, #dl-rows img, main script")
        screenshot(browser, tmp_path, "dead-letter-hostile")
        assert_not_pwned(browser)

        browser.get(f"{served.console}/ui/#playground")
        wait(lambda: len(Select(css(browser, "#pg-backend")).options) > 0, what="the backends")
        Select(css(browser, "#pg-backend")).select_by_value("otlp")
        paste(browser, "#pg-record", json.dumps(hostile_record(), indent=2))
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, '#pg-payloads .field[data-path=\'["name"]\']'),
             what="the hostile payload")
        payloads = css(browser, "#pg-payloads").text
        assert SCRIPT in payloads and "<img src=x onerror=" in payloads
        assert SCRIPT in css(browser, "#pg-requests").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#view-playground img, main script")
        screenshot(browser, tmp_path, "playground-hostile")
        assert_not_pwned(browser)


def test_the_api_needs_the_token_and_the_page_asks_for_it(tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """Without the token the API answers 401; the page asks for it, says when it is wrong and works once given."""
    with serve(tmp_path, otlp) as served:
        for token in (None, "wrong-token"):
            refused = api(served, "/api/status", token)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert refused.json()["error"]
        assert api(served, "/api/status").status_code == 200
        page = httpx.get(f"{served.console}/ui/", timeout=10)
        assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]

        browser.get(f"{served.console}/ui/#status")
        give_token(browser, "wrong-token")
        wait(lambda: "refused" in visible_text(browser, "#token-message"), what="the wrong token's message")
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-sink]")
        screenshot(browser, tmp_path, "token")
        give_token(browser, CONSOLE_TOKEN)
        wait(lambda: sink_field(browser, "otlp", "counts"), what="the status page after the token")
        assert browser.execute_script("return sessionStorage.getItem('traceexport.console.token')") == CONSOLE_TOKEN
        assert browser.execute_script("return document.cookie") == ""
        assert_not_pwned(browser)


def test_the_page_says_when_the_daemon_is_unreachable(tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """Once serve stops the page shows the daemon-unreachable banner, and clears it when serve is back."""
    served = serve(tmp_path, otlp)
    try:
        open_console(browser, served)
        wait(lambda: sink_field(browser, "otlp", "counts"), what="the status page")
        assert not css(browser, "#banner").is_displayed()
    finally:
        assert served.stop() == 0
    wait(lambda: "The daemon is unreachable" in visible_text(browser, "#banner"), timeout=15, what="the banner")
    assert "retrying" in css(browser, "#banner").text
    screenshot(browser, tmp_path, "unreachable")

    assert served.console
    port = served.console.rsplit(":", 1)[1]
    with Served(tmp_path, config(tmp_path, otlp), "again", args=["--console", f"127.0.0.1:{port}"],
                env={"CONSOLE_TOKEN": CONSOLE_TOKEN}):
        wait(lambda: not css(browser, "#banner").is_displayed(), timeout=15, what="the banner to clear")
        assert sink_field(browser, "otlp", "counts") == "0 / 0"


def test_a_token_a_header_cannot_carry_is_refused_in_the_form_not_taken_for_an_outage(
        tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """A token typed with a character beyond ASCII is refused in the token form with a reason, and one already in
    the tab's storage is dropped for the form: fetch() cannot send it, and the page used to say "the daemon is
    unreachable" for good, with no way to type the token again short of a new tab."""
    with serve(tmp_path, otlp) as served:
        browser.get(f"{served.console}/ui/#status")
        give_token(browser, "tök€n-0123")
        wait(lambda: "printable ASCII" in visible_text(browser, "#token-message"), what="the token form's reason")
        assert css(browser, "#token-dialog").is_displayed() and not css(browser, "#banner").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('traceexport.console.token')") is None

        browser.execute_script("sessionStorage.setItem('traceexport.console.token', 'tök€n-0123')")
        browser.refresh()
        give_token(browser, CONSOLE_TOKEN)
        wait(lambda: sink_field(browser, "otlp", "counts"), what="the status page after the token")
        assert not css(browser, "#banner").is_displayed()
        assert_not_pwned(browser)


def _post_distinct(served: Served, n: int) -> None:
    """``n`` workflow records with their own run ids, in one NDJSON body."""
    records = []
    for _ in range(n):
        record = fresh(sample())
        record["trace_info"]["workflow_run_id"] = str(uuid.uuid4())
        records.append(json.dumps(record))
    answer = served.post("\n".join(records).encode(), content_type="application/x-ndjson")
    assert answer.status_code == 202, answer.text


def test_pages_shown_with_more_stay_while_dead_letters_keep_arriving(tmp_path: Path, otlp: OtlpFake,
                                                                     browser: Any) -> None:
    """With a sink refusing everything the list follows the count, and the entries "More" added stay: the list
    used to fall back to its first hundred at every new dead letter (each status poll), so nobody could page."""
    otlp.fail_next(100_000, 400, body={"code": 3, "message": "refused"})
    with serve(tmp_path, otlp) as served:
        _post_distinct(served, 230)
        wait(lambda: api(served, "/api/dead-letters").json()["total"] == 230, what="230 dead letters")
        open_console(browser, served, "dead-letters")
        wait(lambda: "Showing 100 of 230" in css(browser, "#dl-count").text, what="the first page")
        css(browser, "#dl-more").click()
        wait(lambda: "Showing 200 of 230" in css(browser, "#dl-count").text, what="the second page")
        css(browser, "#dl-more").click()
        wait(lambda: "Showing 230 of 230" in css(browser, "#dl-count").text, what="the third page")

        _post_distinct(served, 5)
        wait(lambda: "of 235" in css(browser, "#dl-count").text, what="the list to follow the count")
        time.sleep(2.5)  # another status poll
        assert "Showing 230 of 235" in css(browser, "#dl-count").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#dl-rows tr")) == 230
        assert not css(browser, "#dl-more").get_attribute("hidden")
        assert_not_pwned(browser)


def test_a_payload_of_thousands_of_fields_is_built_as_opened_and_the_page_stays_usable(
        tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """An object of more fields than the tree opens at once (a run with 3,000 inputs, the Opik trace's input)
    starts closed and is built when opened, its fields' provenance as before: the tree used to build every
    field of a payload at once, and a few hundred KB of record froze the page for many seconds."""
    record = fresh(sample())
    record["trace_info"]["workflow_run_inputs"] = {f"k{i}": i for i in range(3000)}
    with serve(tmp_path, otlp) as served:
        open_console(browser, served, "playground")
        wait(lambda: len(Select(css(browser, "#pg-backend")).options) > 1, what="the backends")
        Select(css(browser, "#pg-backend")).select_by_value("opik")
        paste(browser, "#pg-record", json.dumps(record))
        field = '#pg-payloads [data-entity="trace"] .field[data-path=\'["input"]\']'
        inputs = wait(lambda: browser.find_elements(By.CSS_SELECTOR, field), what="the trace's input field")[0]
        line = inputs.find_element(By.XPATH, "..")
        assert line.find_element(By.CSS_SELECTOR, ".toggle").text == "▸"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#pg-payloads .node")) < 2500

        line.find_element(By.CSS_SELECTOR, ".toggle").click()
        last = wait(lambda: browser.find_elements(By.CSS_SELECTOR, '.field[data-path=\'["input","k2999"]\']'),
                    what="the opened input's fields")[0]
        assert line.find_element(By.CSS_SELECTOR, ".toggle").text == "▾"
        browser.execute_script("arguments[0].scrollIntoView()", last)
        last.click()
        wait(lambda: css(browser, '#prov-fields [data-field="file"]').text == "opik.yaml", what="its provenance")
        assert_not_pwned(browser)


def test_characters_that_reorder_or_hide_text_show_as_escapes(tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """A bidirectional override or a zero-width space in a backend's reason or a record's field shows as its
    \\uXXXX escape in the list, the entry and the playground: shown raw, "bad \\u202egnp.exe" read "bad exe.png"
    and a zero-width space hid inside an id; other scripts' letters and emoji show as they are."""
    trick = "bad \u202egnp.exe\u202c"
    otlp.fail_next(1, 400, body={"code": 3, "message": trick})
    record = fresh(sample())
    record["trace_info"]["workflow_run_inputs"] = {"q": f"id\u200b42 {trick} שלום 👩‍💻"}
    shown_trick = "bad \\u202egnp.exe\\u202c"
    with serve(tmp_path, otlp) as served:
        assert served.post(record).status_code == 202
        open_console(browser, served, "dead-letters")
        row = wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#dl-rows tr"), timeout=60, what="the dead letter")[0]
        reason = row.find_element(By.CSS_SELECTOR, "td.reason")
        assert shown_trick in reason.get_attribute("textContent") and "\u202e" not in reason.get_attribute("title")
        row.click()
        wait(lambda: css(browser, "#dl-entry-record").text, what="the entry's record")
        assert shown_trick in css(browser, '#dl-entry-fields [data-field="reason"]').text
        record_text = css(browser, "#dl-entry-record").text
        assert f"id\\u200b42 {shown_trick} שלום 👩‍💻" in record_text and "\u202e" not in record_text

        browser.get(f"{served.console}/ui/#playground")
        wait(lambda: len(Select(css(browser, "#pg-backend")).options) > 0, what="the backends")
        Select(css(browser, "#pg-backend")).select_by_value("opik")
        paste(browser, "#pg-record", json.dumps(record))
        field = wait(lambda: browser.find_elements(By.CSS_SELECTOR, '.field[data-path=\'["input","q"]\']'),
                     what="the input's field")[0]
        assert shown_trick in field.text and "\u202e" not in css(browser, "#pg-payloads").text
        assert_not_pwned(browser)


def test_the_status_page_shows_latency_since_the_spool_began_beside_the_last_five_minutes(
        tmp_path: Path, otlp: OtlpFake, browser: Any) -> None:
    """After a restart nothing was acknowledged in the last five minutes, and the page says so ("— / —") beside
    the p50/p95 since the spool began, the figures `traceexport status` prints: the page showed one unlabelled
    pair, and the README's "since the spool began" nowhere."""
    with serve(tmp_path, otlp) as served:
        assert served.post(fresh(sample())).status_code == 202
        wait(lambda: served.metric("traceexport_records_exported_total", "otlp") == 1, what="the delivery")
    with Served(tmp_path, config(tmp_path, otlp), "again", env={"CONSOLE_TOKEN": CONSOLE_TOKEN}) as again:
        open_console(browser, again)
        wait(lambda: sink_field(browser, "otlp", "counts") == "1 / 1", what="the status page")
        assert sink_field(browser, "otlp", "delivery") == "— / —"
        total = api(again, "/api/status").json()["sinks"][0]["latency_total"]["delivery"]
        assert total["count"] == 1 and total["p95_seconds"] is not None
        assert "—" not in sink_field(browser, "otlp", "delivery_total")
        assert "—" not in sink_field(browser, "otlp", "e2e_total")
        labels = [dt.text for dt in browser.find_elements(By.CSS_SELECTOR, '[data-sink="otlp"] dt')]
        assert "Delivery p50 / p95, 5 min" in labels and "Delivery p50 / p95, all time" in labels
        assert_not_pwned(browser)
