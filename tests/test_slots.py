"""Slot filling: MASSIVE's annotation, sub-token alignment, the official metrics, and --slots end to end."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main as cli
import train as loop
from arguments import parse_args
from conftest import interrupt_at_epoch
from tiny import ANNOTATED, plain
from data import first_subtokens, load_features, slot_labels, word_labels
from dataloader import make_loader, token_slot_labels
from fileio import UserError
from loss import token_cross_entropy
from model import load_tokenizer
from metrics import score
from readers import massive_spans, parse_massive
from slots import crf_log_marginals, spans, to_bio, word_predictions, word_slots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    tokenizer = load_tokenizer(None)
    tokenizer.truncation_side = "left"
    return tokenizer


@pytest.mark.parametrize("annot, names", [
    ("[time : five am] please", ["time", "time", "Other"]),                          # a span at the start
    ("wake me at [time : five am]", ["Other", "Other", "Other", "time", "time"]),    # at the end
    ("[date : today] [time : noon]", ["date", "time"]),                              # adjacent, different types
    ("[person : ann] [person : bob]", ["person", "person"]),                         # adjacent, the same type
    ("call [person : o'brien's] at [time : 5:30 p.m.]", ["Other", "person", "Other", "time", "time"]),
    ("what's the weather", ["Other", "Other", "Other"]),                             # no span at all
])
def test_annotation_gives_one_slot_name_per_word(annot, names):
    assert word_labels(*parse_massive(annot), "names") == names


@pytest.mark.parametrize("annot, message", [
    ("wake me at [time : five am", "'\\[' without '\\]'"),
    ("wake me at time : five am]", "'\\]' without '\\['"),
    ("wake [time : [date : five] am]", "inside a span"),
    ("wake me at [time five am]", "no ' : '"),
    ("wake me at [time : ]", "empty slot name or value"),
])
def test_malformed_annotations_are_named(annot, message):
    with pytest.raises(ValueError, match=message):
        parse_massive(annot)


def test_word_count_must_match_the_utterance():
    row = {"utt": "wake me at five", "annot_utt": "wake me at [time : five]"}
    assert word_labels(row["utt"], massive_spans(row, "f:1"), "names") == ["Other"] * 3 + ["time"]
    with pytest.raises(UserError, match="f:1: malformed annot_utt: annot_utt has 4 words, utt has 3"):
        massive_spans({**row, "utt": "wake me five"}, "f:1")


@pytest.mark.parametrize("bad", ["wake me at [time : five", "wake me at [time five]", "wake me up at [time : five]"])
def test_a_malformed_row_names_file_and_line_and_writes_nothing(tmp_path, tok, data_file, bad):
    with open(data_file, "a") as f:
        f.write(json.dumps({"partition": "train", "utt": "wake me at five", "annot_utt": bad, "scenario": "alarm",
                            "intent": "alarm_set"}) + "\n")
    n = sum(1 for _ in open(data_file))
    with pytest.raises(UserError, match=rf"en-US.jsonl:{n}: malformed annot_utt"):
        parse_args(["--data", data_file])  # the default command counts small data's examples as it is parsed
    cfg = parse_args(["--data", data_file, "--epochs", "1", "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(UserError, match=rf"en-US.jsonl:{n}: malformed annot_utt"):
        load_features(cfg, tok, slots=True)
    assert not os.path.exists(tmp_path / "cache")
    with pytest.raises(UserError, match=rf"en-US.jsonl:{n}: malformed annot_utt"):
        load_features(cfg, tok)  # the data is malformed whether or not this run fills slots


def test_first_subtokens_of_multi_piece_words_and_left_truncation(tok):
    text = "play unbelievably   supercalifragilistic o'hare now"
    ids = tok(text)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    (full,) = first_subtokens(tok, [text], 128)
    assert [pieces[p] for p in full] == ["play", "un", "super", "o", "now"]
    # only the first sub-token of each word is labelled: the rest of "unbelievably" is not
    assert len(ids) - 2 > len(full)
    # keep [CLS] + the last 6 tokens + [SEP]: "super..." keeps later pieces but not its first, so it has none
    short = tok(text, truncation=True, max_length=8)["input_ids"]
    (cut,) = first_subtokens(tok, [text], 8)
    assert tok.convert_ids_to_tokens(short)[1] != "super" and cut[:3] == [-1, -1, -1]
    assert [tok.convert_ids_to_tokens(short)[p] for p in cut[3:]] == ["o", "now"]


def test_typing_noise_keeps_each_word_on_its_slot(tok, data_file, tmp_path):
    _, feats = load_features(parse_args(["--data", data_file, "--cache-dir", str(tmp_path)]), tok, slots=True)
    train, names = feats["train"], slot_labels(feats)
    extras = {"slot_labels": token_slot_labels(train, names)}
    noisy = make_loader(train, tok, 4, True, max_length=32, extras=extras, augment=1.0, slot_names=names).dataset
    added = same = 0
    for i, gold in enumerate(train["slot_words"]):
        row = noisy[i]
        labelled = [(tok.convert_ids_to_tokens(t), names[y]) for t, y in zip(row["input_ids"], row["slot_labels"])
                    if y != -100]
        assert len(row["slot_labels"]) == len(row["input_ids"]) and len(labelled) >= len(gold)
        assert [n for _, n in labelled if n != "Other"] == [n for n in gold if n != "Other"]  # a filler is Other
        added += len(labelled) - len(gold)
        values = [w for w, n in zip(train["texts"][i].split(), gold) if n != "Other"]
        if row["input_ids"] == tok(train["texts"][i].lower().strip())["input_ids"]:  # unchanged or upper-cased
            assert [p for p, n in labelled if n != "Other"] == [tok.tokenize(w)[0] for w in values]
            same += 1
    assert added > 0 and same > 0


def test_bio_merges_consecutive_names_as_massive_does():
    assert to_bio(["Other", "time", "time", "date", "date", "Other", "time"], "names") == \
        ["O", "B-time", "I-time", "B-date", "I-date", "O", "B-time"]
    assert to_bio(["person", "person"], "names") == ["B-person", "I-person"]  # adjacent spans of one type merge
    # BIO tags keep two touching spans apart; a word cut by truncation, predicted Other, is O
    assert to_bio(["B-city", "B-city", "Other"], "bio") == ["B-city", "B-city", "O"]


def slot_metrics(gold, pred, intent_correct):
    return score([0] * len(gold), [0 if ok else 1 for ok in intent_correct], 2, (gold, pred))


def test_slot_metrics_on_hand_built_sequences():
    gold = [["Other", "time", "time"], ["date", "Other"], ["Other", "Other"]]
    pred = [["Other", "time", "time"], ["Other", "Other"], ["Other", "date"]]  # a miss, then an over-prediction
    m = slot_metrics(gold, pred, intent_correct=[True, True, True])
    # 1 true positive of 2 gold spans and 2 predicted: precision 1/2, recall 1/2
    assert m["slot_f1"] == pytest.approx(0.5)
    assert m["exact_match_correct"] == [True, False, False] and m["exact_match"] == pytest.approx(1 / 3)
    assert m["slot_f1_per_type"]["time"] == {"f1": 1.0, "support": 1}
    assert m["slot_f1_per_type"]["date"]["f1"] == 0.0
    # an over-predicted span alone lowers precision: F1 below 1 although every gold span is found
    assert slot_metrics([["Other", "time"]], [["date", "time"]], [True])["slot_f1"] == pytest.approx(2 / 3)
    # the intent counts for exact match, not for slot F1
    wrong_intent = slot_metrics(gold[:1], pred[:1], [False])
    assert wrong_intent["slot_f1"] == 1.0 and wrong_intent["exact_match"] == 0.0


def test_words_without_a_first_subtoken_are_predicted_other():
    names = ["Other", "time", "date"]
    logits = torch.tensor([[5.0, 0, 0], [0, 0, 5], [0, 5, 0], [0, 3, 1]])  # best: Other, date, time, time
    # a first word cut by truncation (position -1) is Other, whatever the tokens say; later pieces never count
    (words, scores), = word_predictions([logits], [[-1, 1, 3]], names)
    assert words == ["Other", "date", "time"]
    assert scores[0] == 1.0 and scores[1] == pytest.approx(torch.softmax(logits[1], 0)[2].item())
    # a CRF whose transitions forbid time after date moves the last word elsewhere, the Viterbi way
    crf = torch.zeros(5, 3)
    crf[1 + 2, 1] = -100.0  # row 1 + i: transitions from slot i; date -> time
    (words, scores), = word_predictions([logits], [[-1, 1, 3]], names, crf.numpy())
    assert words == ["Other", "date", "date"] and word_slots(logits, [-1, 1, 3], names, crf.numpy()) == words
    # its probability is the CRF's marginal, which knows time cannot follow date: well above the word's own softmax
    marginals = crf_log_marginals(logits[[1, 3]][None].double(), torch.ones(1, 2, dtype=torch.bool), crf.double())
    assert scores[1:] == pytest.approx(marginals[0].exp()[[0, 1], [2, 2]].tolist())
    assert scores[2] > 0.5 > torch.softmax(logits[3], 0)[2].item()


def test_word_probabilities_of_a_batch_are_each_utterances_own():
    torch.manual_seed(0)
    names, crf = ["Other", "time", "date"], torch.randn(5, 3).numpy()
    logits = [torch.randn(6, 3).numpy() for _ in range(4)]
    positions = [[1, 2, 4], [-1, 3], [-1], [0, 1, 2, 3, 4, 5]]  # padded to 6 words; one without any
    alone = [word_predictions([t], [p], names, crf)[0] for t, p in zip(logits, positions)]
    for chunk in (32, 3):  # padded to the longest of one block, or of two
        batch = word_predictions(logits, positions, names, crf, chunk=chunk)
        assert [w for w, _ in batch] == [w for w, _ in alone]
        assert [p for _, p in batch] == [pytest.approx(p) for _, p in alone]
    assert alone[2] == (["Other"], [1.0])


def test_spans_slice_the_text_as_typed():
    text = "  wake me up at  five am this week"
    found = spans(text, ["Other"] * 4 + ["time", "time", "date", "date"], [1.0] * 4 + [0.9, 0.7, 0.8, 0.8], "names")
    assert [(s["slot"], s["value"], s["score"]) for s in found] == [("time", "five am", 0.8), ("date", "this week", 0.8)]
    assert all(text[s["start"]:s["end"]] == s["value"] for s in found)


def test_token_cross_entropy_ignores_unlabelled_tokens():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([[-100, 1, -100], [2, -100, -100]])
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 1], logits[1, 0]]), torch.tensor([1, 2]))
    assert torch.allclose(token_cross_entropy(logits, labels), expected)
    none = token_cross_entropy(logits.requires_grad_(), torch.full((2, 3), -100))
    assert none.item() == 0.0 and torch.isfinite(none)
    none.backward()  # a batch of truncated words still trains the rest of the step
    with pytest.raises(ValueError, match=r"\(B, T, S\)"):
        token_cross_entropy(logits[0], labels)


JOINT_KEYS = {"test_slot_f1", "test_exact_match", "test_slot_f1_per_type", "test_exact_match_correct",
              "test_slot_predictions", "best_test_slot_f1", "best_test_exact_match", "best_val_exact_match"}


@pytest.mark.parametrize("task, extra", [("baseline", []), ("supcon", ["--contrastive-epochs", "1"]),
                                         ("lora", ["--lora-rank", "4"]), ("custom", ["--augment", "0.5"])])
def test_end_to_end_with_slots(run_args, tmp_path, task, extra):
    args = ["--task", task, *run_args, *extra, "--label", "intent", "--slots", "--slot-weight", "2", "--lr", "1e-3"]
    results = cli.main(args)
    cfg = parse_args(args)
    assert cfg.run_name.endswith("-slots2-s42") and results["config"]["slots"] and results["config"]["slot_weight"] == 2
    assert JOINT_KEYS <= set(results)
    assert len(results["test_exact_match_correct"]) == len(results["test_labels"]) == 12
    classify = [r for r in results["history"] if r["phase"] == "classify"]
    assert all({"val_slot_f1", "val_exact_match", "val_slot_f1_per_type"} <= set(r) for r in classify)
    best = max(classify, key=lambda r: r["val_exact_match"])  # the joint task picks epochs by exact match
    assert results["best_epoch"] == best["epoch"] and results["best_val_exact_match"] == best["val_exact_match"]
    with open(os.path.join(cfg.run_dir, "best", "meta.json")) as f:
        meta = json.load(f)
    assert "time" in meta["slots"] and "Other" in meta["slots"] and meta["slot_scheme"] == "names"
    records = cli.main(["--task", "predict", "--checkpoint", cfg.run_dir, "--model", cfg.model, "--format", "jsonl",
                        "  wake me up at five am", "play some jazz"])
    for r in records:
        assert r["slots"] is not None
        for s in r["slots"]:
            assert r["text"][s["start"]:s["end"]] == s["value"] and 0 <= s["score"] <= 1


def test_a_checkpoint_reproduces_its_slot_scores(run_args, tmp_path):
    args = [*run_args, "--label", "intent", "--slots", "--lr", "1e-3", "--checkpoint-dir", str(tmp_path / "ckpt")]
    results = cli.main(args)
    from inference import Predictor

    predictor = Predictor(parse_args(args).run_dir)
    rows = [json.loads(line) for line in open(run_args[3]) if json.loads(line)["partition"] == "test"]
    found = predictor.parse([r["utt"] for r in rows])
    words = predictor.outputs([r["utt"] for r in rows])[1]
    gold = [word_labels(r["utt"], massive_spans(r, ""), "names") for r in rows]
    intents = [top[0]["label"] == r["intent"] for (top, _), r in zip(found, rows)]
    assert slot_metrics(gold, [w for w, _ in words], intents)["exact_match"] == results["best_test_exact_match"]


@pytest.mark.parametrize("task, extra", [("baseline", []), ("lora", ["--lora-rank", "4"])])
def test_a_crf_trains_saves_and_decodes_alike_in_every_backend(run_args, task, extra):
    from inference import Predictor

    args = ["--task", task, *run_args, *extra, "--label", "intent", "--slots", "--crf", "--lr", "1e-2"]
    results = cli.main(args)
    cfg = parse_args(args)
    assert cfg.run_name.endswith("-slots1-crf-s42") and results["config"]["crf"]
    with open(os.path.join(cfg.run_dir, "best", "meta.json")) as f:
        n_slots = len(json.load(f)["slots"])
    scores = torch.load(os.path.join(cfg.run_dir, "best", "slot_crf.pt"), weights_only=True)["scores"]
    assert scores.shape == (n_slots + 2, n_slots) and scores.abs().sum() > 0  # it trained away from its zero start
    predictor = Predictor(cfg.run_dir, base_model=cfg.model)
    assert torch.equal(torch.from_numpy(predictor.crf), scores)
    rows = [json.loads(line) for line in open(run_args[3]) if json.loads(line)["partition"] == "test"]
    texts = [r["utt"] for r in rows]
    intents = [top[0]["label"] == r["intent"] for (top, _), r in zip(predictor.parse(texts), rows)]
    words = [w for w, _ in predictor.outputs(texts)[1]]
    gold = [word_labels(r["utt"], massive_spans(r, ""), "names") for r in rows]
    # prediction decodes as evaluation did: the checkpoint gives back its recorded exact match
    again = slot_metrics(gold, words, intents)
    assert (again["slot_f1"], again["exact_match"]) == (results["best_test_slot_f1"], results["best_test_exact_match"])
    if task == "baseline":  # the ONNX graph gives the emissions, and the checkpoint's CRF decodes them
        cli.main(["--task", "export", "--checkpoint", cfg.run_dir, "--data", run_args[3]])
        assert [w for w, _ in Predictor(cfg.run_dir, "onnx").outputs(texts)[1]] == words


def test_resume_with_slots_gives_the_same_run(run_args, tmp_path, monkeypatch):
    args = [*run_args, "--label", "intent", "--slots", "--epochs", "3", "--checkpoint-dir", str(tmp_path / "ckpt")]
    real = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    monkeypatch.setattr(loop, "train_epoch", real)
    resumed = cli.main([*args, "--resume"])
    shutil.rmtree(tmp_path / "ckpt")
    uninterrupted = cli.main(args)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("history", "seconds_per_epoch", "config")}
    assert strip(resumed) == strip(uninterrupted)
    assert [dict(h, seconds=0) for h in resumed["history"]] == [dict(h, seconds=0) for h in uninterrupted["history"]]


def test_a_slot_type_unseen_in_train_scores_as_an_error(tiny_model, tmp_path):
    rows = []
    for partition in ("train", "dev", "test"):
        for annot in ANNOTATED["alarm"] + ANNOTATED["music"]:
            rows.append({"partition": partition, "utt": plain(annot), "annot_utt": annot,
                         "scenario": annot.split()[0], "intent": "alarm_set" if "alarm" in annot else "play_music"})
    rows.append({"partition": "test", "utt": "wake me at noon", "annot_utt": "wake me at [mystery : noon]",
                 "scenario": "alarm", "intent": "alarm_set"})
    path = tmp_path / "unseen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = cli.main(["--model", tiny_model, "--data", str(path), "--epochs", "1", "--label", "intent", "--slots",
                        "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"), "--no-save"])
    assert results["test_slot_f1_per_type"]["mystery"] == {"f1": 0.0, "support": 1}
    assert results["test_exact_match_correct"][-1] is False


def test_predict_prints_slots_and_refuses_them_where_there_are_none(run_args, tmp_path):
    joint = [*run_args, "--label", "intent", "--slots", "--checkpoint-dir", str(tmp_path / "joint")]
    plain_run = [*run_args, "--checkpoint-dir", str(tmp_path / "plain")]
    cli.main(joint)
    cli.main(plain_run)
    run = lambda *a: subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--task", "predict", *a],
                                    capture_output=True, text=True)
    text = run("--checkpoint", parse_args(joint).run_dir, "--model", parse_args(joint).model, "wake me up at five am")
    assert text.returncode == 0 and text.stdout.startswith("wake me up at five am\t")
    no_slots = run("--checkpoint", parse_args(plain_run).run_dir, "--format", "jsonl", "play jazz")
    assert no_slots.returncode == 0 and "slots" not in json.loads(no_slots.stdout)
    refused = run("--checkpoint", parse_args(plain_run).run_dir, "--slots", "play jazz")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: checkpoint {parse_args(plain_run).run_dir} has no slot head: train it with --slots to get slots"]


@pytest.mark.parametrize("argv, message", [
    (["--slots", "--slot-weight", "0"], "--slot-weight must be positive"),
    (["--slot-weight", "2"], "--slot-weight and --crf apply only with --slots"),
    (["--task", "serve", "--checkpoint", "x", "--slots"], "--slots applies only to training tasks"),
    (["--crf"], "--slot-weight and --crf apply only with --slots"),
    (["--task", "predict", "--checkpoint", "x", "--crf"], "--crf applies only to training tasks"),
])
def test_bad_slot_flags_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_hub_path_reads_the_same_slots(monkeypatch, data_file):
    import types

    rows = [json.loads(line) for line in open(data_file)]
    by_split = {s: [r for r in rows if r["partition"] == p] for p, s in (("train", "train"), ("dev", "validation"),
                                                                            ("test", "test"))}
    names = {k: sorted({r[k] for r in rows}) for k in ("scenario", "intent")}

    class Split(list):
        features = {k: types.SimpleNamespace(names=v) for k, v in names.items()}

    hub = {s: Split([{**r, **{k: names[k].index(r[k]) for k in names}} for r in rs]) for s, rs in by_split.items()}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: hub))
    from readers import HUB, read, read_massive

    examples = lambda d: [(x.text, x.labels, x.spans, x.split) for x in d.examples]  # noqa: E731
    assert examples(read(HUB)) == examples(read_massive(data_file))
