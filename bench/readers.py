"""How long reading, checking and caching your own data takes: 100,000 utterances in each format.

    python bench/readers.py --data ../shared/data/massive/en-US.jsonl [--size 100000]

The utterances are MASSIVE en-US's, repeated with a numbered word appended
until there are --size of them (so every text is distinct), written as JSON
lines, CSV, Rasa YAML (one file per split) and BIO folders. For each format it
times what `--task check` does (read, split, check) and what training does
before its first step (read, split, tokenize and cache the features, with
slots), in fresh folders. Writes results/bench/readers.json.
"""
import argparse
import resource
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from arguments import parse_args  # noqa: E402
from check import findings  # noqa: E402
from data import load_dataset, read_data  # noqa: E402
from fileio import write_json  # noqa: E402
from formats import massive_text, write_bio, write_csv, write_rasa  # noqa: E402
from model import load_tokenizer  # noqa: E402
from readers import SPLITS, read_massive  # noqa: E402
from utils import cpu_model  # noqa: E402


def grown(examples, size):
    """size examples: the given ones, then copies with a numbered word appended (spans unchanged)."""
    out = list(examples)
    n = 0
    while len(out) < size:
        x = examples[n % len(examples)]
        out.append(x._replace(text=f"{x.text} number{n}"))
        n += 1
    return out[:size]


def write_all(examples, folder):
    """{format: main.py data flags} of the examples in every format."""
    jsonl = os.path.join(folder, "data.jsonl")
    partition = {"train": "train", "validation": "dev", "test": "test"}
    with open(jsonl, "w") as f:
        for x in examples:
            f.write(json.dumps({"utt": x.text, "annot_utt": massive_text(x), "intent": x.labels["intent"],
                                "scenario": x.labels["scenario"], "partition": partition[x.split]}) + "\n")
    for split in SPLITS:
        write_rasa([x for x in examples if x.split == split], os.path.join(folder, f"{split}.yml"))
    return {"massive": ["--data", jsonl], "csv": ["--data", write_csv(examples, os.path.join(folder, "data.csv"))],
            "bio": ["--data", write_bio(examples, os.path.join(folder, "bio"))],
            "rasa": ["--data", os.path.join(folder, "train.yml"), "--val-data", os.path.join(folder, "validation.yml"),
                     "--test-data", os.path.join(folder, "test.yml")]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "readers.json"))
    args = p.parse_args()
    examples = grown(read_massive(args.data).examples, args.size)
    tok = load_tokenizer(None)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt, flags in write_all(examples, folder).items():
            cfg = parse_args([*flags, "--label", "intent", "--cache-dir", os.path.join(folder, f"cache-{fmt}")])
            t = time.perf_counter()
            _, splits = read_data(cfg.source)
            read_s = time.perf_counter() - t
            findings(splits, cfg.max_length, tok)
            check_s = time.perf_counter() - t
            t = time.perf_counter()
            load_dataset(cfg, tok, slots=True)
            cache_s = time.perf_counter() - t
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak so far, MB
            rows.append({"format": fmt, "utterances": sum(len(v) for v in splits.values()), "read_seconds": read_s,
                         "check_seconds": check_s, "featurize_and_cache_seconds": cache_s, "peak_rss_mb": peak})
            print(f"{fmt:8s} {rows[-1]['utterances']:,} utterances: read {read_s:.1f} s, read + check {check_s:.1f} s; "
                  f"read + tokenize + cache {cache_s:.1f} s; peak memory so far {peak:.0f} MB")
    write_json(args.out, {"cpu": cpu_model(), "size": args.size, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
