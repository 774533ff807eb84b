"""`--task check`: validate a labelled data set before training on it, as `rasa data validate` does, and more.

    python main.py --task check --data examples/assistant.yml

It reads the data as training would (any format, the same split) and reports:
examples per intent (the smallest flagged), slot types and their counts,
exact duplicates, one text under two intents (an error), texts shared
between splits (a leak), examples longer than --max-length tokens (which
training truncates), values annotated in some examples and left unannotated
in others, and a malformed entry with its file and line (an error). It
prints a summary, writes check-<data>.json under --out-dir, and exits 1 on
errors, 0 with warnings only.
"""
import collections
import logging
import os
import statistics

from data import read_data
from fileio import UserError, write_json
from readers import SPLITS, word_offsets

log = logging.getLogger("check")
SMALL = 5  # an intent with fewer examples than this gets a warning: too few to learn or to test
SHOWN = 5  # examples listed per finding in the summary; the report lists them all


def findings(splits, max_length, tokenizer):
    """(errors, warnings): each {"kind", "message", "items"}, from the examples of every split."""
    examples = [(s, x) for s in SPLITS for x in splits[s]]
    errors, warnings = [], []
    by_text = collections.defaultdict(list)
    for s, x in examples:
        by_text[x.text.strip()].append((s, x))
    conflicts = [f'"{text}": ' + ", ".join(f"{x.where} {x.labels['intent']}" for _, x in group)
                 for text, group in by_text.items() if len({x.labels["intent"] for _, x in group}) > 1]
    if conflicts:
        errors.append({"kind": "conflict", "message": f"{len(conflicts)} text(s) under two or more intents",
                       "items": conflicts})
    in_split = collections.defaultdict(list)  # a text repeated across splits is a leak, reported below
    for s, x in examples:
        in_split[s, x.text.strip(), x.labels["intent"], x.spans].append(x)
    duplicates = [f'"{text}": ' + ", ".join(x.where for x in group) for (_, text, *_), group in in_split.items()
                  if len(group) > 1]
    if duplicates:
        warnings.append({"kind": "duplicate", "message": f"{len(duplicates)} text(s) appear more than once in a "
                                                         "split, labelled alike", "items": duplicates})
    leaks = [f'"{text}": ' + ", ".join(f"{x.where} ({s})" for s, x in group) for text, group in by_text.items()
             if len({s for s, _ in group}) > 1]
    if leaks:
        warnings.append({"kind": "leak", "message": f"{len(leaks)} text(s) in more than one split: the test "
                                                    "split scores some training examples", "items": leaks})
    lengths = tokenizer([x.text for _, x in examples])["input_ids"]
    long = [f"{x.where} ({len(ids)} tokens)" for (_, x), ids in zip(examples, lengths) if len(ids) > max_length]
    if long:
        warnings.append({"kind": "too_long", "message": f"{len(long)} example(s) longer than --max-length "
                                                        f"{max_length} tokens: training keeps their end",
                         "items": long})
    unannotated = inconsistent_annotation([x for _, x in examples])
    if unannotated:
        warnings.append({"kind": "unannotated", "message": f"{len(unannotated)} value(s) annotated in some examples "
                                                           "and left unannotated in others", "items": unannotated})
    return errors, warnings


def inconsistent_annotation(examples, longest=4, least=2):
    """Each value annotated in at least `least` examples (lower-cased, up to `longest` words) that also appears as
    whole words outside every span: its slot types, how often each way, and an example of each. Once-annotated
    values are left out: in crowd-sourced data they are mostly words such as "a" or "what" that one worker
    annotated."""
    annotated = collections.defaultdict(lambda: (set(), []))
    for x in examples:
        for start, end, slot in x.spans:
            value = " ".join(x.text[start:end].lower().split())
            if len(value.split()) <= longest:
                annotated[value][0].add(slot)
                annotated[value][1].append(x.where)
    missed = collections.defaultdict(list)
    for x in examples:
        words = [(x.text[start:end].lower(), start, end) for start, end in word_offsets(x.text)]
        for n in range(1, longest + 1):
            for i in range(len(words) - n + 1):
                value = " ".join(w for w, _, _ in words[i:i + n])
                start, end = words[i][1], words[i + n - 1][2]
                if value in annotated and not any(s < end and start < e for s, e, _ in x.spans):
                    missed[value].append(x.where)
    found = [(value, wheres) for value, wheres in missed.items() if len(annotated[value][1]) >= least]
    return [f'"{value}" ({", ".join(sorted(annotated[value][0]))}): annotated {len(annotated[value][1])}x '
            f'(e.g. {annotated[value][1][0]}), not {len(wheres)}x (e.g. {wheres[0]})'
            for value, wheres in sorted(found, key=lambda kv: (-len(kv[1]), kv[0]))]


def summary(src, data, splits, drawn):
    """The data's numbers: examples per split, per intent (smallest first) and per slot type."""
    intents = collections.Counter(x.labels["intent"] for s in SPLITS for x in splits[s])
    slots = collections.Counter(slot for s in SPLITS for x in splits[s] for _, _, slot in x.spans)
    counts = sorted(intents.values())
    return {"format": src.data.format, "files": len(data.files), "examples": {s: len(splits[s]) for s in SPLITS},
            "split": "drawn" if drawn else "the data's own", "intents": dict(intents.most_common()[::-1]),
            "examples_per_intent": {"min": counts[0], "median": statistics.median(counts), "max": counts[-1]},
            "small_intents": sorted(i for i, n in intents.items() if n < SMALL),
            "slot_types": dict(slots.most_common()), "synonyms": len(data.synonyms)}


def show(cfg, numbers, errors, warnings):
    total = sum(numbers["examples"].values())
    print(f"data: {cfg.source.data.name} ({numbers['format']}, "
          f"{numbers['files']} file(s)), {total} examples: "
          + " / ".join(f"{s} {n}" for s, n in numbers["examples"].items()) + f" ({numbers['split']} split)")
    per = numbers["examples_per_intent"]
    smallest = ", ".join(f"{i} {n}" for i, n in list(numbers["intents"].items())[:SHOWN])
    print(f"intents: {len(numbers['intents'])}, {per['min']}-{per['max']} examples each (median {per['median']:g}); "
          f"smallest: {smallest}")
    slots = ", ".join(f"{s} {n}" for s, n in numbers["slot_types"].items())
    print(f"slot types: {len(numbers['slot_types'])}" + (f": {slots}" if slots else "")
          + (f"; {numbers['synonyms']} synonym(s)" if numbers["synonyms"] else ""))
    for title, found in (("ERROR", errors), ("warning", warnings)):
        for f in found:
            print(f"{title}: {f['message']}")
            for item in f["items"][:SHOWN]:
                print(f"    {item}")
            if len(f["items"]) > SHOWN:
                print(f"    ... {len(f['items']) - SHOWN} more in the report")


def check(cfg):
    """--task check: read, summarise and check the data; returns the report. UserError (exit 1) on errors."""
    from model import load_tokenizer

    report_path = os.path.join(cfg.out_dir, f"check-{cfg.source.data.name}.json")
    try:
        data, splits = read_data(cfg.source)
    except UserError as e:  # a malformed entry: reported as the data's error, with its file and line
        write_json(report_path, {"errors": [{"kind": "malformed", "message": str(e), "items": []}], "warnings": []})
        raise
    drawn = {x.split for x in data.examples} == {None}
    numbers = summary(cfg.source, data, splits, drawn)
    errors, warnings = findings(splits, cfg.max_length, load_tokenizer(cfg.model))
    if data.notes:  # what the reader read as Rasa does, which may not be what the writer meant
        warnings.insert(0, {"kind": "read_as_text", "message": f"{len(data.notes)} example(s) read otherwise than "
                                                               "they may look (as Rasa reads them)",
                            "items": list(data.notes)})
    if cfg.find_label_errors:  # trains FOLDS models: minutes on a few hundred utterances
        from labelerrors import find

        examples = [x for s in SPLITS for x in splits[s]]
        if any(cfg.label not in x.labels for x in examples):
            raise UserError(f"--find-label-errors: not every example has a '{cfg.label}' label")
        warnings.append(find(examples, cfg.label, ["--model", cfg.model] if cfg.model else []))
    if numbers["small_intents"]:
        warnings.insert(0, {"kind": "small_intent", "message": f"{len(numbers['small_intents'])} intent(s) with "
                                                               f"fewer than {SMALL} examples",
                            "items": numbers["small_intents"]})
    report = {**numbers, "errors": errors, "warnings": warnings}
    show(cfg, numbers, errors, warnings)
    write_json(report_path, report)
    print(f"wrote {report_path}")
    if errors:
        raise UserError(f"{sum(len(e['items']) for e in errors)} error(s) in the data; see {report_path}")
    return report
