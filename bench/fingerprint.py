"""Fingerprints of what every task computes, to show that a change to the training code changes no number.

    python bench/fingerprint.py --out before.json                 # on the code before the change
    python bench/fingerprint.py --out after.json                  # on the code after it
    python bench/fingerprint.py --compare before.json after.json  # exit 1 on any difference
    python bench/fingerprint.py --data ../shared/data/massive/en-US.jsonl --real --out real.json

Each case is one `main.py` run on a tiny random BERT and a small MASSIVE-format
file (seconds), or with --real one 1-epoch baseline run of the bundled encoder
on the given file (minutes). A case's fingerprint is the sha256 of each key of
its results JSON (timings left out) and of the saved checkpoint's test logits.
The resumed cases are killed after their first epoch and continued with
--resume; they must match their uninterrupted twin as well as the old code.
"""
import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import main as cli  # noqa: E402
from inference import Predictor  # noqa: E402

RECIPE = ["--task", "custom", "--pooling", "mean", "--label-smoothing", "0.1", "--ema", "0.999", "--aux-weight", "0.5",
          "--augment", "0.3", "--rdrop", "1"]
TINY_CASES = {
    "baseline": ["--task", "baseline"],
    "custom": ["--task", "custom"],
    "recipe+distillation": [*RECIPE, "--teachers", "{teacher}"],
    "supcon": ["--task", "supcon", "--contrastive-epochs", "1"],
    "simclr": ["--task", "simclr", "--contrastive-epochs", "1"],
    "lora": ["--task", "lora", "--lora-rank", "4"],
    "intent": ["--task", "baseline", "--label", "intent"],
    "joint": ["--task", "baseline", "--label", "intent", "--slots"],
    "joint-crf": ["--task", "baseline", "--label", "intent", "--slots", "--slot-weight", "4", "--crf"],
    "recipe-joint-crf": [*RECIPE, "--label", "intent", "--slots", "--crf"],
    "supcon-joint-crf": ["--task", "supcon", "--contrastive-epochs", "1", "--label", "intent", "--slots", "--crf"],
    "lora-joint-crf": ["--task", "lora", "--lora-rank", "4", "--label", "intent", "--slots", "--crf"],
}
RESUMED = ("recipe+distillation", "supcon", "lora-joint-crf")
TIMINGS = ("seconds_per_epoch", "contrastive_seconds_per_epoch")


def tiny_setup(folder):
    """A 2-layer random BERT with the bundled tokenizer, and a small data file (the tests' own)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tiny import write_massive
    from model import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = os.path.join(folder, "tiny-bert")
    BertModel(config).save_pretrained(model)
    tok.save_pretrained(model)
    return model, str(write_massive(os.path.join(folder, "en-US.jsonl")))


def loop_module():
    """The module whose train_epoch the loop calls (main.py before the loop had a module of its own)."""
    try:
        import train as loop
    except ImportError:
        loop = cli
    return loop


def interrupted_then_resumed(args):
    """Run args, killed as its second epoch starts, then the same command with --resume."""
    loop = loop_module()
    real, calls = loop.train_epoch, []

    def dies_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    loop.train_epoch = dies_second
    try:
        with contextlib.suppress(KeyboardInterrupt):
            cli.main(args)
    finally:
        loop.train_epoch = real
    return cli.main([*args, "--resume"])


def fingerprint(results, checkpoint, data, base_model):
    """{key: sha256} of the results (JSON as written, timings left out) and of the checkpoint's test logits."""
    results = json.loads(json.dumps(results))
    for row in results["history"]:
        row.pop("seconds")
    out = {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()
           for k, v in results.items() if k not in TIMINGS}
    texts = [r["utt"] for r in map(json.loads, open(data)) if r["partition"] == "test"]
    logits, words = Predictor(checkpoint, base_model=base_model).outputs(texts)
    out["checkpoint_logits"] = hashlib.sha256(np.ascontiguousarray(logits, np.float32).tobytes()).hexdigest()
    if words is not None:  # each word's slot and its probability
        out["checkpoint_slots"] = hashlib.sha256(json.dumps([[n, np.round(p, 6).tolist()] for n, p in words])
                                                 .encode()).hexdigest()
    return out


def run_cases(folder, cases, common, data, base_model):
    prints = {}
    for name, args in cases.items():
        args = [a.format(teacher=os.path.join(folder, "ckpt", "baseline", "baseline")) for a in args]
        run = [*args, *common, "--out-dir", os.path.join(folder, "results", name),
               "--checkpoint-dir", os.path.join(folder, "ckpt", name)]
        results = cli.main(run)
        checkpoint = os.path.join(folder, "ckpt", name, results["run_name"])
        if name == "baseline":  # the distillation case's teacher, under a name it can be given by
            os.replace(checkpoint, os.path.join(folder, "ckpt", "baseline", "baseline"))
            checkpoint = os.path.join(folder, "ckpt", "baseline", "baseline")
        prints[name] = fingerprint(results, checkpoint, data, base_model)
        if name in RESUMED:
            resumed = interrupted_then_resumed([*run[:-2], "--checkpoint-dir", os.path.join(folder, "ckpt-r", name)])
            prints[name + " (resumed)"] = fingerprint(resumed, os.path.join(folder, "ckpt-r", name, resumed["run_name"]),
                                                      data, base_model)
    return prints


def compare(a_path, b_path):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    differ = 0
    for case in sorted(set(a) | set(b)):
        keys = sorted(set(a.get(case, {})) | set(b.get(case, {})))
        bad = [k for k in keys if a.get(case, {}).get(k) != b.get(case, {}).get(k)]
        print(f"{case:28s} {len(keys) - len(bad):3d}/{len(keys)} keys identical" + (f"; DIFFER: {', '.join(bad)}"
                                                                                   if bad else ""))
        differ += bool(bad)
    for case in a:  # a resumed run against its uninterrupted twin, within one file
        twin = case.removesuffix(" (resumed)")
        if twin != case:
            bad = [k for k in a[case] if k not in ("run_name",) and a[case][k] != a[twin].get(k)]
            print(f"{case:28s} vs uninterrupted ({a_path}): " + ("identical" if not bad else f"DIFFER: {bad}"))
            differ += bool(bad)
    return 1 if differ else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="where the fingerprints go (JSON)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two fingerprint files")
    p.add_argument("--real", action="store_true", help="one real 1-epoch baseline run on --data instead")
    p.add_argument("--data", help="MASSIVE release file, for --real")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out or (args.real and not args.data):
        p.error("give --out (and --data with --real), or --compare A B")
    cli.setup_logging()
    with tempfile.TemporaryDirectory() as folder:
        if args.real:
            common, cases, data = ["--data", args.data, "--epochs", "1", "--no-bf16",
                                   "--cache-dir", os.path.join(folder, "cache")], {"real": ["--task", "baseline"]}, args.data
        else:
            model, data = tiny_setup(folder)
            common, cases = ["--model", model, "--data", data, "--epochs", "2",
                             "--cache-dir", os.path.join(folder, "cache")], TINY_CASES
        prints = run_cases(folder, cases, common, data, None if args.real else model)
    with open(args.out, "w") as f:
        json.dump(prints, f, indent=1)
    print(f"wrote {len(prints)} fingerprints to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
