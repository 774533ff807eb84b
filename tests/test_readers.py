"""Your own data: each reader on hand-written cases and bad inputs, the same data in every format, the drawn split,
check, and evaluate against what training reported."""
import json
import logging
import os
import subprocess
import sys

import pytest

import main as cli
from arguments import parse_args
from data import draw_split, load_dataset
from fileio import UserError
from formats import write_bio, write_csv, write_rasa
from model import load_tokenizer
from readers import Example, parse_annotated, read, read_massive, source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "assistant.yml")

RASA = """version: "3.1"
nlu:
- intent: book_flight
  examples: |
    - fly from [Boston]{"entity": "city", "role": "from"} to [NYC](city:New York City)
    - flights to [Paris]{"entity": "city", "role": "to", "value": "Paris, France"} please
- intent: faq/ask_price
  examples:
    - text: how much is it
      metadata: {sentiment: neutral}
    - text: what does it cost
- synonym: New York City
  examples: |
    - big apple
- regex: zipcode
  examples: |
    - [0-9]{5}
"""


def spans_of(x):
    return [(x.text[s:e], slot) for s, e, slot in x.spans]


def test_rasa_reads_every_entity_syntax_roles_synonyms_and_retrieval_intents(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "nlu.yml"
    path.write_text(RASA)
    located = source(str(path))
    data = read(located)
    assert located.format == "rasa" and [x.text for x in data.examples] == [
        "fly from Boston to NYC", "flights to Paris please", "how much is it", "what does it cost"]
    assert spans_of(data.examples[0]) == [("Boston", "city.from"), ("NYC", "city")]
    assert spans_of(data.examples[1]) == [("Paris", "city.to")]
    assert [x.labels["intent"] for x in data.examples[2:]] == ["faq/ask_price"] * 2
    assert data.synonyms == {"nyc": "New York City", "paris": "Paris, France", "big apple": "New York City"}
    assert data.examples[1].where == f"{path}:6"  # the example's own line
    assert "1 regex and 0 lookup entries not used" in caplog.text


# Every construct of Rasa's documented NLU training-data format (rasa.com/docs, "Training Data Format"), and
# brackets that form no annotation, which Rasa reads as text.
DOCUMENTED = """version: "3.1"
nlu:
- intent: greet
  metadata:
    sentiment: neutral
  examples: |
    - hey
    - hello]
    -hi there
    - [not an annotation] here
    - [x]() and [](city) stay text
    oops, a line without its dash
- intent: check_balance
  examples:
  - text: |
      how much do I have on my [savings](account) account
    metadata:
      sentiment: neutral
  - text: 'how much money is in my [checking]{"entity": "account"} account'
  - text: what's the balance on my [credit card account]{"entity":"account","value":"credit"}
- intent: book_flight
  examples: |
    - from [Berlin]{"entity": "city", "role": "departure"} to [SF]{"entity": "city", "role": "destination"}
    - a [pepperoni]{"entity": "topping", "group": "1"} pizza
    - fly to [Rome][{"entity": "city", "role": "destination"}, {"entity": "location"}]
- intent: chitchat/ask_name
  examples: |
    - what is your name?
- synonym: credit
  examples: |
    - credit account
- regex: account_number
  examples: |
    - \\d{10,12}
- lookup: banks
  examples: |
    - JPMC
    - Bank of America
responses:
  utter_chitchat/ask_name:
  - text: I am Sara
"""


def test_rasa_reads_every_documented_construct_and_stray_brackets_as_rasa_does(tmp_path):
    path = tmp_path / "nlu.yml"
    path.write_text(DOCUMENTED)
    data = read(source(str(path)))
    assert [x.text for x in data.examples] == [
        "hey", "hello]", "hi there", "[not an annotation] here", "[x]() and [](city) stay text",
        "how much do I have on my savings account", "how much money is in my checking account",
        "what's the balance on my credit card account", "from Berlin to SF", "a pepperoni pizza", "fly to Rome",
        "what is your name?"]
    assert [spans_of(x) for x in data.examples[:5]] == [[]] * 5
    assert [spans_of(x) for x in data.examples[5:8]] == [[("savings", "account")], [("checking", "account")],
                                                        [("credit card account", "account")]]
    assert spans_of(data.examples[8]) == [("Berlin", "city.departure"), ("SF", "city.destination")]
    assert spans_of(data.examples[9]) == [("pepperoni", "topping")]  # a group is not a slot type
    assert spans_of(data.examples[10]) == [("Rome", "city.destination")]  # a span has one type: the first
    assert data.examples[11].labels == {"intent": "chitchat/ask_name"}
    assert data.synonyms == {"credit card account": "credit", "credit account": "credit"}
    notes = sorted((n.removeprefix(f"{path}:") for n in data.notes), key=lambda n: int(n.split(":")[0]))
    assert notes == ["8: a bracket that is not an annotation: read as text",
                     "10: a bracket that is not an annotation: read as text",
                     "11: a bracket that is not an annotation: read as text",
                     "12: 'oops, a line without its dash' of 'greet' does not start with '-': skipped, as Rasa does",
                     "25: '[Rome]' has 2 entities: the first, 'city.destination', is read"]


def test_a_demo_style_rasa_project_trains_and_checks_as_it_is(tmp_path, tiny_model):
    project = tmp_path / "data"
    (project / "nlu" / "lookups").mkdir(parents=True)
    intents = {"greet": ["hello", "hi", "hey there", "hello]", "good morning", "hi sara"],
               "bye": ["bye", "see you", "goodbye", "ciao", "good night", "later [alligator]"],
               "chitchat/ask_name": ["what is your name", "who are you", "your name?", "name please",
                                     "how do i call you", "what are you called"]}
    (project / "nlu" / "general.yml").write_text('version: "2.0"\nnlu:\n' + "".join(
        f"- intent: {i}\n  examples: |\n" + "".join(f"    - {t}\n" for t in texts) for i, texts in intents.items()))
    (project / "nlu" / "lookups" / "products.yml").write_text("nlu:\n- lookup: product\n  examples: |\n    - rasa x\n")
    (project / "responses.yml").write_text("responses:\n  utter_chitchat/ask_name:\n  - text: I am Sara\n")
    (project / "rules.yml").write_text("rules:\n- rule: bye\n  steps:\n  - intent: bye\n  - action: utter_bye\n")
    report = cli.main(["--task", "check", "--data", str(project), "--out-dir", str(tmp_path / "out")])
    assert report["errors"] == [] and report["examples"]["train"] + report["examples"]["test"] > 0
    read_as_text = next(w for w in report["warnings"] if w["kind"] == "read_as_text")["items"]
    assert read_as_text == [f"{project / 'nlu' / 'general.yml'}:{n}: a bracket that is not an annotation: read as "
                            "text" for n in (8, 18)]
    results = cli.main(["--data", str(project), "--model", tiny_model, "--epochs", "1", "--cache-dir",
                        str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"), "--checkpoint-dir", str(tmp_path / "k")])
    assert sorted(results["labels"]) == sorted(intents)


def test_a_rasa_folder_is_searched_and_its_other_files_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "data" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "deep" / "nlu.yaml").write_text(RASA)
    (tmp_path / "data" / "stories.yml").write_text("stories:\n- story: hi\n  steps: []\n")
    (tmp_path / "data" / "domain.yml").write_text("intents:\n- greet\n")
    data = read(source(str(tmp_path / "data")))
    assert len(data.examples) == 4 and len(data.files) == 1
    assert "1 stories file(s) skipped" in caplog.text and "1 intents file(s) skipped" in caplog.text


def test_csv_with_bom_crlf_both_bracket_styles_and_splits(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("\ufefftext,intent,scenario,annotation,split\r\n"
                     "wake me at five,alarm_set,alarm,wake me at [time : five],train\r\n"
                     "fly to Rome,book,travel,fly to [Rome](city),dev\r\n"
                     "\"hello, you\",greet,general,,test\r\n".encode("utf-8"))
    data = read(source(str(path)))
    assert [(x.text, x.split) for x in data.examples] == [("wake me at five", "train"), ("fly to Rome", "validation"),
                                                          ("hello, you", "test")]
    assert spans_of(data.examples[0]) == [("five", "time")] and spans_of(data.examples[1]) == [("Rome", "city")]
    assert parse_annotated("at [time : five] [date : today]")[:2] == ("at five today", ((3, 7, "time"), (8, 13, "date")))
    assert parse_annotated("to [Rome][{\"entity\": \"city\"}]")[:2] == ("to Rome", ((3, 7, "city"),))
    assert data.examples[1].labels == {"intent": "book", "scenario": "travel"}
    tsv = tmp_path / "data.tsv"
    tsv.write_text("text\tintent\nplay jazz\tplay_music\n")
    assert read(source(str(tsv))).examples[0].labels == {"intent": "play_music"}


def test_bio_keeps_touching_spans_apart_and_multi_intent_labels(tmp_path):
    for split in ("train", "dev", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "seq.in").write_text("flights from boston to denver and dallas\n")
        (tmp_path / split / "seq.out").write_text("O O B-fromloc O B-toloc O I-toloc\n")
        (tmp_path / split / "label").write_text("atis_flight#atis_airfare\n")
    data = read(source(str(tmp_path)))
    x = data.examples[0]
    assert x.labels["intent"] == "atis_flight#atis_airfare" and x.split == "train"
    # an I- tag after O opens a span, as seqeval reads it
    assert spans_of(x) == [("boston", "fromloc"), ("denver", "toloc"), ("dallas", "toloc")]
    (tmp_path / "train" / "seq.out").write_text("O O B-fromloc O B-toloc B-toloc O\n")
    assert spans_of(read(source(str(tmp_path))).examples[0])[1:] == [("denver", "toloc"), ("and", "toloc")]


@pytest.mark.parametrize("name, content, message", [
    ("a.yml", "stories:\n- story: x\n", r"a\.yml: no 'nlu:' section"),
    ("a.yml", "nlu:\n- intent: x\n  examples: |\n    - fly to [Rome]{\"entity\": }\n", r"a\.yml:4: the annotation of "
                                                                                       r"'\[Rome\]' is not JSON"),
    ("a.yml", "nlu:\n- intent: x\n  examples: |\n    - fly to [Rome][{\"role\": \"to\"}]\n", r"a\.yml:4: .* needs"),
    ("a.yml", "nlu: [\n", r"a\.yml:2: not YAML"),
    ("a.csv", "utterance,intent\nhi,greet\n", r"a\.csv:1: the header has no 'text' column"),
    ("a.csv", "text,label\nhi,greet\n", r"a\.csv:1: the header has no 'intent' column"),
    ("a.csv", "text,intent,annotation\nfly to Rome,book,fly to [Rome](city\n", r"a\.csv:2: .* is not the text"),
    ("a.csv", "text,intent,annotation\nfly to Rome,book,fly to Rome](city)\n", r"a\.csv:2: .* is not the text"),
    ("a.csv", "text,intent\nhi,greet,extra\n", r"a\.csv:2: 3 fields, the header has 2"),
    ("a.jsonl", '{"utt": "hi", "intent": "greet", "annot_utt": "[x : hi"}\n', r"a\.jsonl:1: malformed annot_utt"),
])
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read(source(str(tmp_path / name)))


def test_bad_bio_folders_and_encodings(tmp_path):
    with pytest.raises(UserError, match="no data found"):
        read(source(str(tmp_path)))  # an empty folder
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "seq.in").write_text("a b\nc\n")
    (tmp_path / "train" / "seq.out").write_text("O O\nO\n")
    (tmp_path / "train" / "label").write_text("x\n")
    with pytest.raises(UserError, match="different line counts"):
        read(source(str(tmp_path)))
    (tmp_path / "train" / "label").write_text("x\ny\n")
    (tmp_path / "train" / "seq.out").write_text("O\nO\n")
    with pytest.raises(UserError, match=r"seq\.out:1: 1 tags for 2 words"):
        read(source(str(tmp_path)))
    (tmp_path / "train" / "seq.out").write_text("O X-city\nO\n")
    with pytest.raises(UserError, match=r"seq\.out:1: illegal tag 'X-city'"):
        read(source(str(tmp_path)))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,intent\ncaf\xe9,order\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.csv: not UTF-8"):
        read(source(str(latin)))


def test_massive_converted_to_every_format_gives_the_same_examples_and_features(tmp_path, data_file):
    massive = read_massive(data_file)
    for split in ("train", "validation", "test"):
        write_rasa([x for x in massive.examples if x.split == split], tmp_path / f"{split}.yml")
    copies = {"csv": ["--data", write_csv(massive.examples, tmp_path / "data.csv")],
              "csv-massive-brackets": ["--data", write_csv(massive.examples, tmp_path / "m.csv", massive_brackets=True)],
              "bio": ["--data", write_bio(massive.examples, tmp_path / "bio")],
              "rasa": ["--data", str(tmp_path / "train.yml"), "--val-data", str(tmp_path / "validation.yml"),
                       "--test-data", str(tmp_path / "test.yml")]}
    tok = load_tokenizer(None)
    reference = load_dataset(parse_args(["--data", data_file, "--label", "intent", "--cache-dir", str(tmp_path / "c")]),
                             tok, slots=True)
    for name, args in copies.items():
        cfg = parse_args([*args, "--label", "intent", "--cache-dir", str(tmp_path / "c")])
        got = load_dataset(cfg, tok, slots=True)
        assert (got.labels, got.features, got.info["split"]) == reference[:2] + (reference.info["split"],), name


def test_the_drawn_split_is_stable_stratified_and_keeps_small_intents_in_train(caplog):
    examples = [Example(f"{intent} {i}", {"intent": intent}, (), None, f"f:{i}")
                for intent, n in (("big", 40), ("mid", 20), ("tiny", 3)) for i in range(n)]
    fractions = {"validation": 0.1, "test": 0.1}
    splits = draw_split(examples, fractions, seed=0)
    assert splits == draw_split(examples, fractions, seed=0)
    assert splits != draw_split(examples, fractions, seed=1)
    count = lambda s, intent: sum(x.labels["intent"] == intent for x in splits[s])  # noqa: E731
    assert [count(s, "big") for s in ("train", "validation", "test")] == [32, 4, 4]
    assert [count(s, "mid") for s in ("train", "validation", "test")] == [16, 2, 2]
    assert count("train", "tiny") == 3 and "stay in train: tiny" in caplog.text
    assert splits["train"] == [x for x in examples if x in splits["train"]]  # in the data's order


def test_check_flags_a_planted_conflict_leak_and_duplicate(tmp_path):
    rows = [("wake me at five", "alarm_set", "train"), ("wake me at five", "alarm_set", "train"),
            ("play jazz", "play_music", "train"), ("play jazz", "play_music", "test"),
            ("stop", "alarm_cancel", "train"), ("stop", "audio_mute", "validation"), ("hi", "greet", "test")]
    path = tmp_path / "planted.csv"
    path.write_text("text,intent,split\n" + "".join(f"{t},{i},{s}\n" for t, i, s in rows))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--task", "check", "--data", str(path),
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: 1 error(s) in the data")
    report = json.loads((tmp_path / "out" / "check-planted.json").read_text())
    kinds = {f["kind"]: f["items"] for f in report["errors"] + report["warnings"]}
    assert kinds["conflict"] == [f'"stop": {path}:6 alarm_cancel, {path}:7 audio_mute']
    assert len(kinds["duplicate"]) == 1 and "wake me at five" in kinds["duplicate"][0]
    assert {"play jazz", "stop"} == {item.split('"')[1] for item in kinds["leak"]}
    assert report["small_intents"] == ["alarm_cancel", "alarm_set", "audio_mute", "greet", "play_music"]


def test_check_passes_the_example_data_with_warnings_at_most(tmp_path):
    report = cli.main(["--task", "check", "--data", EXAMPLE, "--out-dir", str(tmp_path)])
    assert report["errors"] == [] and report["format"] == "rasa" and len(report["intents"]) >= 15
    assert {"city.from", "city.to"} <= set(report["slot_types"]) and report["synonyms"] >= 1


def test_own_data_trains_and_evaluate_reproduces_what_training_reported(tmp_path, tiny_model):
    args = ["--data", EXAMPLE, "--model", tiny_model, "--slots", "--epochs", "3", "--lr", "3e-3", "--batch-size", "8",
            "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"),
            "--checkpoint-dir", str(tmp_path / "ck")]
    results = cli.main(args)
    cfg = parse_args(args)
    assert cfg.label == "intent" and "-assistant-" in cfg.run_name  # intent by default, the data in the name
    assert results["environment"]["data"]["format"] == "rasa" and results["environment"]["data"]["split"]["test"] > 0
    meta = json.load(open(os.path.join(cfg.run_dir, "best", "meta.json")))
    assert meta["synonyms"]["lounge"] == "living room" and "city.from" in meta["slots"]
    report = cli.main(["--task", "evaluate", "--checkpoint", cfg.run_dir, "--model", tiny_model, "--data", EXAMPLE,
                       "--split", "test", "--out-dir", str(tmp_path / "e")])
    assert report["intent_accuracy"] == results["best_test_accuracy"]
    assert report["slot_f1"] == results["best_test_slot_f1"] and report["exact_match"] == results["best_test_exact_match"]
    stem = tmp_path / "e" / f"evaluate-{cfg.run_name}-assistant-test"
    errors = [json.loads(line) for line in open(f"{stem}-errors.jsonl")]
    assert len(errors) == round((1 - report["exact_match"]) * report["examples"])
    assert set(errors[0]) >= {"text", "gold_intent", "predicted_intent", "gold_slots", "predicted_slots"}
    assert json.loads(open(f"{stem}.json").read())["per_slot"]
    import plots  # the report draws: a confusion matrix and per-slot F1

    assert plots.main([f"{stem}.json", "--out-dir", str(tmp_path / "p")]) == 0
    drawn = sorted(os.listdir(tmp_path / "p"))
    assert [f for f in drawn if f.endswith(".png")] == [f"{stem.name}-confusion.png", f"{stem.name}-slots.png"]
    # export gates on the test split training drew from the same data
    try:
        cli.main(["--task", "export", "--checkpoint", cfg.run_dir, "--model", tiny_model, "--data", EXAMPLE])
    except UserError:  # a graph that failed its gate; the report is written either way
        pass
    gate = json.load(open(os.path.join(cfg.run_dir, "best", "export.json")))
    assert gate["split"] == "test" and gate["test_utterances"] == results["environment"]["data"]["split"]["test"]


def test_evaluate_counts_labels_the_model_does_not_know_as_wrong(tmp_path, joint_checkpoint, tiny_model):
    path = tmp_path / "new.csv"
    path.write_text("text,intent,annotation\nwake me up at five am,alarm_query,wake me up at [five am](time)\n"
                    "order a pizza,takeaway_order,order a [pizza](food)\n")
    report = cli.main(["--task", "evaluate", "--checkpoint", joint_checkpoint, "--model", tiny_model,
                       "--data", str(path), "--out-dir", str(tmp_path)])
    assert report["split"] == "all" and report["examples"] == 2
    assert report["unknown_labels"] == ["takeaway_order"] and report["unknown_slot_types"] == ["food"]
    assert report["intent_accuracy"] <= 0.5


def test_study_runs_over_seeds_on_a_data_folder(tmp_path, data_file, capsys):
    import study

    folder = write_bio(read_massive(data_file).examples, tmp_path / "bio")
    assert study.main(["--data", folder, "--experiments", "baseline", "--seeds", "42,43", "--list"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all(f"--data {folder}" in c and "--label" not in c for c in commands)
    # 36 training utterances: small data's settings
    assert parse_args(["--data", folder]).run_name == "baseline-intent-bio-minilm-lr0.0003-bs16-e30-mean-s42"
