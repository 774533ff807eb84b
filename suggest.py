"""`--task suggest`: which unlabelled utterances are worth labelling next, written pre-annotated in the data's format.

    python main.py --task suggest --checkpoint checkpoints/<run name> --input requests.jsonl --data nlu.yml --count 50

The utterances come from a text file (one per line) or serve's request log
(--log-requests: JSON lines with a "text"; a broken line is named and
skipped). Those the data already holds, blank ones and repeats are left out.
Each is scored by how unsure the model is (uncertainty sampling), after
calibration: by the margin between its two most probable intents, or with a
slot head by the probability that its whole parse is right (the best intent's
probability times each word's slot probability; with a CRF its marginal).
Then, most unsure first, each is kept unless it nearly repeats one already
kept (cosine similarity of the encoder's mean-pooled sentence vectors above
DUPLICATE): a batch of near-copies teaches one thing. The chosen ones are written with the model's intent and slots, for a
person to correct and append: Rasa YAML (examples with metadata saying why),
CSV (text, intent, annotation) or MASSIVE JSON lines, as the data is; and a
report with every score, suggest-<run>.json, under --out-dir.
"""
import collections
import json
import logging
import os

import numpy as np

from fileio import UserError, atomic_write, write_json
from inference import Predictor, calibrated
from readers import blank, read, text_lines

log = logging.getLogger("suggest")
DUPLICATE = 0.9  # cosine similarity above which two utterances count as one


def unlabelled(path):
    """The utterances of a text file, or of a request log (JSON lines with "text"; a broken line, such as one cut
    short by a crash, is skipped with a warning naming it), in order."""
    lines = text_lines(path)
    if not next((line for line in lines if line.strip()), "").lstrip().startswith("{"):
        return lines
    texts, broken = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
            if not isinstance(text, str):
                raise TypeError
            texts.append(text)
        except (ValueError, KeyError, TypeError, RecursionError):
            broken.append(f"{path}:{n}")
    if broken:
        log.warning("%d line(s) of the request log are not JSON with a text, skipped: %s", len(broken),
                    ", ".join(broken[:5]) + (" ..." if len(broken) > 5 else ""))
    return texts


def normalized(text):
    return " ".join(text.lower().split())


def candidates(texts, known):
    """The texts worth scoring: not blank, not in the data (known: its normalized texts), each once."""
    seen, out = set(known), []
    for t in texts:
        key = normalized(t)
        if not blank(t) and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def uncertainty(probs, words):
    """Per utterance (how unsure, 0..1; the intent margin; the probability of its slots, or None without a slot
    head). Without slots: 1 - the margin between its two best intents. With slots: 1 - the probability that its
    whole parse is right, the best intent's probability times each word's slot probability (least confidence on
    the joint output), so an utterance unsure of its slots counts as much as one unsure of its intent."""
    top2 = -np.sort(-probs, axis=1)[:, :2]
    margin = top2[:, 0] - (top2[:, 1] if probs.shape[1] > 1 else 0)
    if words is None:
        return 1 - margin, margin, None
    slots = np.array([np.prod(scores) for _, scores in words])
    return 1 - top2[:, 0] * slots, margin, slots


def diverse(order, vectors, count, chunk=256):
    """Up to count indices in order (most unsure first), skipping one whose vector is within DUPLICATE of a kept
    one: a greedy cover of the candidates by their sentence vectors. vectors(indices) gives the (n, H) vectors of
    those indices; they are asked for chunk by chunk, so a pool of thousands is embedded only as far as the walk
    goes."""
    kept, kept_vectors = [], []
    for start in range(0, len(order), chunk):
        block = order[start:start + chunk]
        for i, v in zip(block, vectors(block)):
            if len(kept) == count:
                return kept
            if not kept or float(np.max(np.stack(kept_vectors) @ v)) <= DUPLICATE:
                kept.append(i)
                kept_vectors.append(v)
    return kept


def rasa_text(text, slots):
    out, pos = "", 0
    for s in slots:
        entity, _, role = s["slot"].partition(".")
        value = text[s["start"]:s["end"]]
        annotation = f"({entity})" if not role else json.dumps({"entity": entity, "role": role}, ensure_ascii=False)
        out += text[pos:s["start"]] + f"[{value}]{annotation}"
        pos = s["end"]
    return out + text[pos:]


def massive_text(text, slots):
    out, pos = "", 0
    for s in slots:
        out += text[pos:s["start"]] + f"[{s['slot']} : {text[s['start']:s['end']]}]"
        pos = s["end"]
    return out + text[pos:]


def written(chosen, fmt):
    """The chosen utterances (dicts of text, intent, slots, why) as a file of the data's format."""
    if fmt == "csv":
        import csv
        import io

        f = io.StringIO()
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "intent", "annotation"])
        w.writerows([c["text"], c["intent"], rasa_text(c["text"], c["slots"])] for c in chosen)
        return f.getvalue()
    if fmt == "massive":
        return "".join(json.dumps({"utt": c["text"], "annot_utt": massive_text(c["text"], c["slots"]),
                                   "intent": c["intent"], "partition": "train", "suggested": c["why"]},
                                  ensure_ascii=False) + "\n" for c in chosen)
    by_intent = collections.defaultdict(list)  # Rasa YAML, grouped by the predicted intent, most unsure first
    for c in chosen:
        by_intent[c["intent"]].append(c)
    lines = ['version: "3.1"', "nlu:"]
    for intent, group in by_intent.items():
        lines += [f"- intent: {json.dumps(intent, ensure_ascii=False)}", "  examples:"]
        for c in group:  # JSON strings are YAML double-quoted scalars: any text stays text
            lines += [f"  - text: {json.dumps(rasa_text(c['text'], c['slots']), ensure_ascii=False)}",
                      f"    metadata: {{suggested: {json.dumps(c['why'], ensure_ascii=False)}}}"]
    return "\n".join(lines) + "\n"


def suggest(cfg):
    """--task suggest: the report, and the file of suggestions written; returns the report."""
    predictor = Predictor(cfg.checkpoint, base_model=cfg.model)
    src = cfg.source.data if cfg.source.data.path else None
    known, fmt = set(), "rasa"
    if src is not None:
        data = read(src)
        labels = {x.labels.get(predictor.meta["config"]["label"]) for x in data.examples}
        if not labels & set(predictor.labels):
            raise UserError(f"{predictor.name} knows none of the labels of {src.file}: it was trained on other data")
        known, fmt = {normalized(x.text) for x in data.examples}, (src.format if src.format != "bio" else "rasa")
    texts = unlabelled(cfg.input)
    pool = candidates(texts, known)
    if not pool:
        raise UserError(f"{cfg.input}: no utterance to suggest (empty, or all of them already in the data)")
    logits, words = predictor.outputs(pool, cfg.batch_size)
    probs = calibrated(logits, predictor.temperature)
    unsure, margin, slots = uncertainty(probs, words)
    order = sorted(range(len(pool)), key=lambda i: -unsure[i])
    kept = diverse(order, lambda ids: predictor.embeddings([pool[i] for i in ids], cfg.batch_size), cfg.count)
    parsed = predictor.postprocess([pool[i] for i in kept], probs[kept], words and [words[i] for i in kept], k=2)
    chosen = []
    for i, (top, found) in zip(kept, parsed):
        why = (f"intent margin {margin[i]:.3f} ({top[0]['label']} over {top[1]['label']})" if len(top) > 1
               else f"intent {top[0]['label']}")
        if words is not None:  # what ranked it first: the probability that the whole parse is right
            why = f"parse {1 - unsure[i]:.3f} = intent {probs[i].max():.3f} x slots {slots[i]:.3f}; {why}"
        chosen.append({"text": pool[i], "intent": top[0]["label"], "uncertainty": float(unsure[i]),
                       "slots": [{k: s[k] for k in ("slot", "start", "end")} for s in found], "why": why})
    stem = os.path.join(cfg.out_dir, f"suggest-{predictor.name}")
    path = stem + {"csv": ".csv", "massive": ".jsonl"}.get(fmt, ".yml")
    atomic_write(path, lambda f: f.write(written(chosen, fmt).encode()))
    report = {"kind": "suggestion", "run_name": predictor.name, "input": os.path.basename(cfg.input),
              "read": len(texts), "candidates": len(pool), "left_out": len(texts) - len(pool),
              "file": os.path.basename(path), "format": fmt, "chosen": chosen}
    write_json(stem + ".json", report)
    print(f"{len(chosen)} of {len(pool)} new utterances ({len(texts) - len(pool)} blank, repeated or already in the "
          f"data) written to {path}, most unsure first; the scores in {stem}.json")
    return report
