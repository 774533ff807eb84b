"""The try-it page at GET /, in a real browser: headless Debian Chromium driven by Playwright, against the server
on a tiny joint checkpoint. .ci/run installs Chromium where it is missing; without it these tests are skipped."""
import os
import shutil
import threading
import time

import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's)")


def serving(checkpoint):
    """The app on a free localhost port, serving a checkpoint, until the generator is closed."""
    import uvicorn

    from conftest import free_port
    from inference import Predictor
    from serve import create_app

    port = free_port()
    app = create_app(lambda: Predictor(checkpoint), max_batch=8, max_inputs=4, max_queue=16)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(400):
        if srv.started and app.state.serving.predictor:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def browsing(url):
    """A headless Chromium tab on the page, which records dialogs and requests, until the generator is closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page()
        dialogs = []
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        requests = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(url)
        tab.wait_for_function("document.getElementById('model').textContent.includes('intents')")
        tab.dialogs, tab.requests = dialogs, requests
        yield tab
        browser.close()


@pytest.fixture(scope="module")
def server(joint_checkpoint, tmp_path_factory):
    """The tiny joint checkpoint served on localhost, and a folder for screenshots."""
    yield from ((url, tmp_path_factory.mktemp("page")) for url in serving(joint_checkpoint))


@pytest.fixture(scope="module")
def page(server):
    yield from browsing(server[0])


def test_label_and_slot_names_from_users_data_render_as_text(tmp_path_factory, tiny_model):
    """Label names come from users' files now: a hostile intent and slot type show literally, and run nothing."""
    import main as cli
    from arguments import parse_args

    tmp = tmp_path_factory.mktemp("hostile")
    rows = [("wake me up at five", "<b>x</b>", "wake me up at [five](<i>y</i>)"), ("play jazz", "music", "play jazz")]
    data = tmp / "hostile.csv"
    data.write_text("text,intent,annotation,split\n" + "".join(f"{t},{i},{a},{s}\n" for s in ("train", "dev", "test")
                                                              for t, i, a in rows * 4))
    args = ["--data", str(data), "--model", tiny_model, "--slots", "--epochs", "15", "--lr", "3e-3",
            "--batch-size", "4", "--cache-dir", str(tmp / "c"), "--out-dir", str(tmp / "r"),
            "--checkpoint-dir", str(tmp / "ck")]
    cli.main(args)
    for url in serving(parse_args(args).run_dir):
        for tab in browsing(url):
            parse(tab, "wake me up at five")
            assert "<b>x</b>" in tab.text_content("#intent") and tab.query_selector("#intent b") is None
            assert "<b>x</b>" in tab.text_content("#ranking")
            marks = tab.query_selector_all("#utterance mark")
            assert [m.get_attribute("data-slot") for m in marks] == ["<i>y</i>"]
            assert tab.query_selector("#utterance i") is None and tab.dialogs == []


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
    # a time slot shows the value it resolves to under it, as text: a date and an hour
    values = [v.text_content() for v in page.query_selector_all("#utterance mark[data-slot=time] .slot-value")]
    assert values and all(v[:2] == "20" and v[-5:-3].isdigit() for v in values)
    # without the slot names, the highlighted utterance reads as typed
    shown = page.evaluate("""() => { const u = document.getElementById('utterance').cloneNode(true);
                                     u.querySelectorAll('.slot-name, .slot-value').forEach((e) => e.remove());
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


def test_highlights_slice_the_text_by_code_points_after_an_emoji(page):
    text = "\U0001F600\U0001F600 wake me up at five am tomorrow \U0001F680"
    page.fill("#text", text)
    with page.expect_response(lambda r: r.url.endswith("/parse")) as answered:
        page.click("#parse")
    answer = answered.value.json()
    page.wait_for_timeout(100)
    assert answer["slots"]  # the API's offsets count code points: each emoji is one
    marks = page.evaluate("""() => [...document.querySelectorAll('#utterance mark')].map((m) => m.firstChild.textContent)""")
    assert marks == [s["value"] for s in answer["slots"]] == [text[s["start"]:s["end"]] for s in answer["slots"]]
    shown = page.evaluate("""() => { const u = document.getElementById('utterance').cloneNode(true);
                                     u.querySelectorAll('.slot-name, .slot-value').forEach((e) => e.remove());
                                     return u.textContent; }""")
    assert shown == text
