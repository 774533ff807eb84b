"""Slot values: Duckling's resolution of hand cases at a fixed reference time and zone, synonyms, the context's bad
input, and the API around them (predict, /parse, the checkpoint's synonyms)."""
import json
import os
import subprocess
import sys

import pytest

from resolver import ContextError, Resolver, context, engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW, ZONE = "2026-12-05T10:00:00+01:00", "Europe/Berlin"  # a Saturday
pytestmark = pytest.mark.skipif(engine() is None, reason="the Duckling wheel is not installed on this platform")


def resolve(text, value, slot, strategy="utterance", now=NOW, future=True):
    start = text.index(value)
    found = Resolver(strategy=strategy, future=future)(text, [{"slot": slot, "value": value, "start": start,
                                                               "end": start + len(value)}], context(now, ZONE))
    return found[0].get("resolved")


@pytest.mark.parametrize("strategy", ["utterance", "slot"])
def test_hand_cases(strategy):
    assert resolve("wake me up at five am", "five am", "time", strategy) == {
        "dim": "time", "value": "2026-12-06T05:00:00.000+01:00", "grain": "hour"}  # the next 05:00
    assert resolve("what's the weather tomorrow", "tomorrow", "date", strategy) == {
        "dim": "time", "value": "2026-12-06T00:00:00.000+01:00", "grain": "day"}
    assert resolve("remind me in twenty minutes", "in twenty minutes", "time", strategy)["value"] == \
        "2026-12-05T10:20:00.000+01:00"
    assert resolve("set a timer for ten minutes", "ten minutes", "time", strategy) == {
        "dim": "duration", "seconds": 600, "value": 10, "unit": "minute"}
    assert resolve("set the heating to seventy two degrees", "seventy two degrees", "temperature", strategy) == {
        "dim": "temperature", "value": 72, "unit": "degree"}  # a slot type named as a dimension maps itself
    assert resolve("turn the volume up by twenty percent", "twenty percent", "change_amount", strategy) == {
        "dim": "number", "value": 20}
    assert resolve("call me back soon", "soon", "time", strategy) is None  # nothing to act on: no key at all
    assert resolve("play jazz by miles davis", "miles davis", "artist_name", strategy) is None


def test_intervals_carry_from_and_to_and_roles_map_as_their_entity():
    r = resolve("what is on this weekend", "this weekend", "date")  # Duckling's weekend: Friday 18:00 to Monday
    assert r["dim"] == "time" and r["from"].startswith("2026-12-04T18:00") and r["to"].startswith("2026-12-07T00:00")
    assert resolve("book a room for monday", "monday", "time.start")["value"].startswith("2026-12-07")


THURSDAY_9 = "2026-12-10T09:00:00+01:00"


@pytest.mark.parametrize("strategy", ["utterance", "slot"])
def test_a_bare_hour_in_a_time_slot_is_a_time_and_a_part_of_the_day_alone_is_not(strategy):
    assert resolve("set an alarm for five", "five", "time", strategy, THURSDAY_9)["value"].startswith(
        "2026-12-10T17:00")  # latent to Duckling; the slot's type settles it
    assert resolve("turn my morning alarm on", "morning", "timeofday", strategy) is None
    assert resolve("turn the volume to five", "five", "change_amount", strategy) == {"dim": "number", "value": 5}


def test_a_time_of_day_already_over_today_is_the_next_one_unless_the_past_is_spoken_of():
    morning = "wake me up at twenty past six in the morning"
    assert resolve(morning, "twenty past six in the morning", "time", now=THURSDAY_9)["value"].startswith(
        "2026-12-11T06:20")  # a day on: the morning was said
    assert resolve(morning, "twenty past six in the morning", "time", now=THURSDAY_9, future=False)[
        "value"].startswith("2026-12-10T06:20")  # --keep-past-times: Duckling's reading
    assert resolve("i want an alarm for three today", "three today", "time")["value"].startswith(
        "2026-12-05T15:00")  # no half of the day said: 12 hours on, and still today
    assert resolve("what did i have at eight this morning", "eight this morning", "time", now=THURSDAY_9)[
        "value"].startswith(
        "2026-12-10T08:00")  # the past spoken of: as Duckling reads it
    assert resolve("send the email he sent this morning", "this morning", "timeofday")["from"].startswith(
        "2026-12-05T04:00")  # a morning not over yet stays today's, from 04:00


def test_an_interval_has_its_exclusive_end_and_its_last_grain():
    r = resolve("i'm busy from two to three thirty", "from two to three thirty", "time", now=THURSDAY_9)
    assert r["from"].startswith("2026-12-10T14:00") and r["to"].startswith("2026-12-10T15:31")
    assert r["last"].startswith("2026-12-10T15:30") and r["grain"] == "minute"
    r = resolve("remind me tomorrow morning", "tomorrow morning", "timeofday", now=THURSDAY_9)
    assert r["from"].startswith("2026-12-11T04:00") and r["last"].startswith("2026-12-11T11:00")


def test_synonyms_are_case_insensitive_and_resolution_keeps_other_keys():
    resolver = Resolver(synonyms={"NYC": "New York City"})
    (slot,) = resolver("fly to nyc", [{"slot": "city", "value": "nyc", "start": 7, "end": 10, "confidence": 0.9}])
    assert slot == {"slot": "city", "value": "nyc", "start": 7, "end": 10, "confidence": 0.9,
                    "normalized": "New York City"}


@pytest.mark.parametrize("reference_time, timezone, message", [
    (None, "Mars/Olympus", "timezone 'Mars/Olympus' is not an IANA time zone name"),
    ("next tuesday", ZONE, "reference_time 'next tuesday' is not an ISO 8601 date and time"),
])
def test_a_bad_context_is_named(reference_time, timezone, message):
    with pytest.raises(ContextError, match=message):
        context(reference_time, timezone)


def test_a_reference_time_without_offset_reads_in_the_zone():
    when, zone = context("2026-12-05T10:00", "America/New_York")
    assert zone == "America/New_York" and when.utcoffset().total_seconds() == -5 * 3600


SYNONYM_DATA = """nlu:
- intent: lights_on
  examples: |
    - turn on the [lounge]{"entity": "room", "value": "living room"} lights
    - lights on in the [kitchen](room)
    - switch on the [lounge]{"entity": "room", "value": "living room"} light
- intent: timer
  examples: |
    - set a timer for [ten minutes](duration)
    - timer for [five minutes](duration) please
"""


@pytest.fixture(scope="module")
def synonym_checkpoint(tmp_path_factory, tiny_model):
    """A tiny joint model fitted to a Rasa file whose entity has a synonym; its run folder."""
    import main as cli
    from arguments import parse_args

    tmp = tmp_path_factory.mktemp("synonyms")
    (tmp / "nlu.yml").write_text(SYNONYM_DATA)
    args = ["--data", str(tmp / "nlu.yml"), "--val-data", str(tmp / "nlu.yml"), "--test-data", str(tmp / "nlu.yml"),
            "--model", tiny_model, "--slots", "--epochs", "40", "--lr", "3e-3", "--batch-size", "2",
            "--cache-dir", str(tmp / "c"), "--out-dir", str(tmp / "r"), "--checkpoint-dir", str(tmp / "ck")]
    cli.main(args)
    return parse_args(args).run_dir


def test_a_rasa_synonym_reaches_parse_through_the_checkpoint(synonym_checkpoint):
    from fastapi.testclient import TestClient

    from conftest import wait_until_healthy
    from inference import Predictor, Resolution
    from serve import create_app

    app = create_app(lambda: Predictor(synonym_checkpoint, resolution=Resolution(timezone=ZONE)))
    with TestClient(app) as c:
        wait_until_healthy(c)
        got = c.post("/parse", content=json.dumps({"text": "turn on the lounge lights", "reference_time": NOW}))
        assert got.status_code == 200
        (room,) = [s for s in got.json()["slots"] if s["slot"] == "room"]
        assert room["value"] == "lounge" and room["normalized"] == "living room" and "resolved" not in room
        timer = c.post("/parse", content=json.dumps({"text": "set a timer for ten minutes"})).json()
        (duration,) = timer["slots"]
        assert duration["resolved"] == {"dim": "duration", "seconds": 600, "value": 10, "unit": "minute"}
        bad = c.post("/parse", content=json.dumps({"text": "set a timer", "timezone": "Mars/Olympus"}))
        assert bad.status_code == 422 and "not an IANA time zone" in bad.json()["detail"]
        assert "resolved" not in c.post("/parse", content=json.dumps({"text": "turn on the lounge lights"})).json()[
            "slots"][0]  # absent rather than null


def test_predict_shows_resolved_values_and_a_bad_zone_is_one_line(synonym_checkpoint, tiny_model):
    run = [sys.executable, os.path.join(ROOT, "main.py"), "--task", "predict", "--checkpoint", synonym_checkpoint,
           "--model", tiny_model, "--reference-time", NOW, "--timezone", ZONE]
    out = subprocess.run([*run, "set a timer for ten minutes", "turn on the lounge lights"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].endswith('duration="ten minutes"\u2192600s') and 'room="lounge"=living room' in out[1]
    plain = subprocess.run([*run, "--no-resolve", "set a timer for ten minutes"], capture_output=True, text=True,
                           check=True).stdout
    assert "\u2192" not in plain
    bad = subprocess.run([*run[:-2], "--timezone", "Mars/Olympus", "hi"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "error: timezone 'Mars/Olympus' is not an IANA time zone name (such as Europe/Berlin)"


def test_control_characters_leave_values_unresolved_never_crash():
    text = "wake\x00 me\x1b up\u202e at five"
    start = text.index("five")
    (slot,) = Resolver()(text, [{"slot": "time", "value": "five", "start": start, "end": start + 4}],
                         context(NOW, ZONE))
    assert slot["value"] == "five"  # resolved or not, an answer


def test_keep_past_times_turns_the_rule_off_for_predict_and_serve():
    from arguments import parse_args
    from inference import resolution_of

    assert resolution_of(parse_args(["--task", "predict", "--checkpoint", "x"])).future
    assert not resolution_of(parse_args(["--task", "serve", "--checkpoint", "x", "--keep-past-times"])).future
