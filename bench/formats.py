"""Test helpers: readers.Examples written back out in each format the readers take (Rasa YAML, CSV, BIO folders),
so that one data set read in every format can be compared. Rasa data has no splits: one file per split."""
import csv
import os

import suggest  # how the project writes annotated text
from readers import word_offsets

SPLIT_DIRS = {"train": "train", "validation": "dev", "test": "test"}


def spans_of(x):
    return [{"slot": slot, "start": start, "end": end} for start, end, slot in x.spans]


def rasa_text(x):
    return suggest.rasa_text(x.text, spans_of(x))


def massive_text(x):
    return suggest.massive_text(x.text, spans_of(x))


def write_rasa(examples, path):
    """One Rasa NLU file of the examples, in their order: an entry per run of examples of one intent (Rasa files
    may list an intent more than once)."""
    lines = ['version: "3.1"', "nlu:"]
    for i, x in enumerate(examples):
        if i == 0 or x.labels["intent"] != examples[i - 1].labels["intent"]:
            lines += [f"- intent: {x.labels['intent']}", "  examples: |"]
        lines.append(f"    - {rasa_text(x)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def write_csv(examples, path, massive_brackets=False):
    """A CSV with text, intent, scenario (where the examples have it), annotation and split columns."""
    columns = ["text", "intent", *(["scenario"] if "scenario" in examples[0].labels else []), "annotation", "split"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for x in examples:
            w.writerow([x.text, *(x.labels[c] for c in columns[1:-2]),
                        massive_text(x) if massive_brackets else rasa_text(x), x.split])
    return str(path)


def bio_tags(x):
    tags = []
    for start, end in word_offsets(x.text):
        span = next((sp for sp in x.spans if sp[0] <= start < sp[1]), None)
        tags.append("O" if span is None else ("B-" if span[0] == start else "I-") + span[2])
    return tags


def write_bio(examples, folder):
    """The ATIS/SNIPS layout: train/, dev/ and test/ with seq.in, seq.out and label."""
    for split, name in SPLIT_DIRS.items():
        rows = [x for x in examples if x.split == split]
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for file, column in (("seq.in", lambda x: " ".join(x.text.split())), ("seq.out", lambda x: " ".join(bio_tags(x))),
                             ("label", lambda x: x.labels["intent"])):
            with open(os.path.join(folder, name, file), "w", encoding="utf-8") as f:
                f.write("".join(column(x) + "\n" for x in rows))
    return str(folder)
