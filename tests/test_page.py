"""The try-it page at GET /, in a real browser: headless Debian Chromium driven by Playwright, against the server
on a tiny joint checkpoint. .ci/run installs Chromium where it is missing; without it these tests are skipped."""
import os
import shutil
import threading
import time

import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def server(joint_checkpoint, tmp_path_factory):
    """The app on a free localhost port, serving the tiny joint checkpoint."""
    import uvicorn

    from conftest import free_port
    from inference import Predictor
    from serve import create_app

    tmp = tmp_path_factory.mktemp("page")
    port = free_port()
    app = create_app(lambda: Predictor(joint_checkpoint), max_batch=8, max_inputs=4, max_queue=16)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(400):
        if srv.started and app.state.serving.predictor:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", tmp
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page()
        dialogs = []
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        requests = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(server[0])
        tab.wait_for_function("document.getElementById('model').textContent.includes('intents')")
        tab.dialogs, tab.requests = dialogs, requests
        yield tab
        browser.close()


def parse(page, text, top_k="3"):
    page.fill("#text", text)
    page.fill("#top_k", top_k)
    with page.expect_response(lambda r: r.url.endswith("/parse")):
        page.click("#parse")
    page.wait_for_timeout(100)  # the answer's rendering


def test_the_page_shows_intent_ranking_and_slot_highlights(page, server):
    parse(page, "wake me up at five am")
    assert page.is_visible("#result") and not page.is_visible("#error")
    assert "intent alarm_" in page.text_content("#intent") and "confidence" in page.text_content("#intent")
    assert len(page.query_selector_all("#ranking tr")) == 3
    marks = page.query_selector_all("#utterance mark")
    assert marks and all(m.get_attribute("data-slot") for m in marks)
    # without the slot names, the highlighted utterance reads as typed
    shown = page.evaluate("""() => { const u = document.getElementById('utterance').cloneNode(true);
                                     u.querySelectorAll('.slot-name').forEach((e) => e.remove());
                                     return u.textContent; }""")
    assert shown == "wake me up at five am"
    page.screenshot(path=str(server[1] / "try-it.png"), full_page=True)
    assert os.path.getsize(server[1] / "try-it.png") > 5000
    assert all(url.startswith(server[0]) for url in page.requests)  # nothing loads from the network


def test_hostile_text_shows_literally_and_runs_nothing(page):
    hostile = "<img src=x onerror=alert(1)> wake me up at <b>five</b>"
    parse(page, hostile)
    assert page.text_content("#utterance").startswith("<img src=x onerror=alert(1)>")
    assert page.query_selector("#utterance img") is None and page.query_selector("#utterance b") is None
    assert page.dialogs == []


def test_errors_and_abstentions_are_readable_messages(page):
    parse(page, "wake me up", top_k="0")  # top_k below 1: the server refuses it with 422
    assert page.is_visible("#error") and not page.is_visible("#result")
    assert page.text_content("#error").startswith("The request was refused (422): top_k:")
    parse(page, "   ")
    assert "the model abstains" in page.text_content("#intent")
