"""Which MASSIVE slot types Duckling resolves, and how well each resolution strategy does on a hand-written gold set.

    python bench/resolution.py --data ../shared/data/massive/en-US.jsonl

1. Coverage: every gold span of en-US test, parsed alone with every Duckling
   dimension: per slot type, the share of spans with a result covering at
   least half of the span, by dimension. resolver.SLOT_DIMS is chosen from it.
2. The gold sets (assets/resolution/, each with its reference time and zone
   in its first line): gold-en-US.jsonl, en-US test utterances with date,
   time, duration or number slots, and gold-new-en.jsonl, new utterances
   written before the resolver's rules were last changed and never tuned on;
   each slot with the value a correct assistant acts on. Both strategies, on
   the gold spans: Duckling on each slot's own text, and on the whole
   utterance with each result attached to the slots it overlaps. Accuracy
   overall and per slot type.

Writes results/bench/resolution.json.
"""
import argparse
import collections
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fileio import write_json  # noqa: E402
from readers import read_massive  # noqa: E402
from resolver import DIMENSIONS, Resolver, context, engine  # noqa: E402
from utils import cpu_model  # noqa: E402

GOLDS = {name: os.path.join(ROOT, "assets", "resolution", f"gold-{name}.jsonl") for name in ("en-US", "new-en")}


def coverage(examples):
    """{slot type: {"spans": n, "resolved": share, "by_dim": {dim: share}}} over the gold spans of examples."""
    duckling, zones = engine()
    ctx = duckling.Context(duckling.parse_ref_time(zones, "UTC", 0),
                           duckling.parse_locale("EN_US", duckling.default_locale_lang(duckling.parse_lang("EN"))))
    dims = duckling.parse_dimensions(list(DIMENSIONS))
    counts = collections.defaultdict(collections.Counter)
    for x in examples:
        for start, end, slot in x.spans:
            text = x.text[start:end]
            found = {e["dim"] for e in duckling.parse(text, ctx, dims, False) if 2 * (e["end"] - e["start"]) >= len(text)}
            counts[slot]["spans"] += 1
            counts[slot]["any"] += bool(found)
            counts[slot].update(found)
    return {slot: {"spans": c["spans"], "resolved": c["any"] / c["spans"],
                   "by_dim": {d: c[d] / c["spans"] for d in DIMENSIONS if c[d]}}
            for slot, c in sorted(counts.items(), key=lambda kv: -kv[1]["any"] / kv[1]["spans"])}


def same(got, want):
    """Whether a resolved value is the gold one. Gold times and dates are prefixes (a date to the day, a time to the
    minute; a list accepts either reading of a time said without am or pm); a date or time slot resolved to an
    interval counts by where the interval starts; other keys must be equal."""
    if want is None or got is None:
        return want is None and got is None
    for key, expected in want.items():
        if key == "value" and isinstance(expected, (str, list)):
            mine = str(got.get("value", got.get("from")) or "")
            if not any(mine.startswith(e) for e in (expected if isinstance(expected, list) else [expected])):
                return False
        elif key in ("from", "to", "last"):
            if not str(got.get(key) or "").startswith(expected):
                return False
        elif got.get(key) != expected:
            return False
    return True


def gold_accuracy(strategy, path):
    """(share right, {slot type: [right, n]}, the rows it got wrong) of a strategy on the gold set at path."""
    with open(path) as f:
        header, *rows = [json.loads(line) for line in f if line.strip()]
    resolver, when = Resolver(strategy=strategy), context(header["reference_time"], header["timezone"])
    right, per, wrong = 0, collections.defaultdict(lambda: [0, 0]), []
    for row in rows:
        slots = [{"slot": s["slot"], "value": row["text"][s["start"]:s["end"]], "start": s["start"], "end": s["end"]}
                 for s in row["slots"]]
        got = resolver(row["text"], slots, when)
        for s, g in zip(row["slots"], got):
            ok = same(g.get("resolved"), s.get("resolved"))
            right += ok
            per[s["slot"]][0] += ok
            per[s["slot"]][1] += 1
            if not ok:
                wrong.append({"text": row["text"], "slot": s["slot"], "gold": s.get("resolved"),
                              "got": g.get("resolved")})
    return right / sum(n for _, n in per.values()), dict(per), wrong


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "resolution.json"))
    args = p.parse_args()
    test = [x for x in read_massive(args.data).examples if x.split == "test"]
    t = time.perf_counter()
    cover = coverage(test)
    spans = sum(c["spans"] for c in cover.values())
    print(f"coverage: {spans} gold test spans parsed in {time.perf_counter() - t:.1f} s")
    print(f"{'slot type':22s} {'spans':>6s} {'resolved':>9s}  by dimension")
    for slot, c in cover.items():
        dims = ", ".join(f"{d} {100 * s:.0f}%" for d, s in sorted(c["by_dim"].items(), key=lambda kv: -kv[1]))
        print(f"{slot:22s} {c['spans']:6d} {100 * c['resolved']:8.1f}%  {dims}")
    golds = {}
    for name, path in GOLDS.items():
        golds[name] = {}
        for strategy in ("slot", "utterance"):
            share, per, wrong = gold_accuracy(strategy, path)
            golds[name][strategy] = {"accuracy": share, "per_type": per, "wrong": wrong}
            print(f"gold set {name}, strategy '{strategy}': {100 * share:.1f}% right "
                  f"({sum(r for r, _ in per.values())}/{sum(n for _, n in per.values())}); "
                  + ", ".join(f"{k} {r}/{n}" for k, (r, n) in sorted(per.items())))
    write_json(args.out, {"cpu": cpu_model(), "coverage": cover, "gold": golds})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
