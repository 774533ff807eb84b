"""How far a checkpoint's probabilities can be trusted: abstention on validation, and out-of-domain text.

    python bench/trust.py --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

- Coverage/accuracy on the validation split when the model abstains below a
  calibrated confidence (what `--min-confidence` trades).
- Out-of-domain detection: `assets/ood/ood.txt` (other languages, code,
  gibberish; no MASSIVE text) against the test split. AUROC of the maximum
  calibrated probability and of the negative energy T * logsumexp(logits / T)
  as in-domain scores (1 = separates perfectly, 0.5 = chance).

Writes results/bench/trust-<run name>.json.
"""
import argparse
import os
import sys

import numpy as np
from scipy.special import logsumexp
from scipy.stats import mannwhitneyu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from arguments import BACKENDS  # noqa: E402
from data import read_rows  # noqa: E402
from inference import Predictor  # noqa: E402
from fileio import write_json  # noqa: E402

THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def auroc(in_domain, out_of_domain):
    """P(score of an in-domain text > score of an OOD text), ties counting half (the Mann-Whitney U / n m)."""
    u = mannwhitneyu(in_domain, out_of_domain, alternative="two-sided").statistic
    return float(u / (len(in_domain) * len(out_of_domain)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--ood", default=os.path.join(ROOT, "assets", "ood", "ood.txt"))
    p.add_argument("--backend", default="torch", choices=tuple(BACKENDS))
    args = p.parse_args()
    predictor = Predictor(args.checkpoint, args.backend)
    rows, label = read_rows(args.data), predictor.meta["config"]["label"]
    index = {y: i for i, y in enumerate(predictor.labels)}
    t = predictor.temperature

    val_texts, val_gold = [r.text for r in rows["validation"]], [r.labels[label] for r in rows["validation"]]
    val_probs = predictor.probabilities(list(val_texts))
    right = val_probs.argmax(1) == np.array([index[y] for y in val_gold])
    conf = val_probs.max(1)
    coverage = []
    for th in THRESHOLDS:
        kept = conf >= th
        coverage.append({"min_confidence": th, "coverage": float(kept.mean()),
                         "accuracy": float(right[kept].mean()) if kept.any() else None})
        print(f"min confidence {th:.2f}: coverage {kept.mean():.4f}, accuracy {coverage[-1]['accuracy']}")

    with open(args.ood, encoding="utf-8") as f:
        ood = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    test_texts = [r.text for r in rows["test"]]
    scores = {}
    for name, texts in (("test", test_texts), ("ood", ood)):
        logits = predictor.logits(texts)
        probs = np.exp(logits / t - logsumexp(logits / t, axis=1, keepdims=True))
        scores[name] = {"max_probability": probs.max(1), "negative_energy": t * logsumexp(logits / t, axis=1)}
    ood_report = {"ood_texts": len(ood), "test_texts": len(test_texts)}
    for score in ("max_probability", "negative_energy"):
        ood_report[f"auroc_{score}"] = auroc(scores["test"][score], scores["ood"][score])
    for name in ("test", "ood"):
        mp = scores[name]["max_probability"]
        ood_report[f"{name}_mean_max_probability"] = float(mp.mean())
        ood_report[f"{name}_share_above_0.9"] = float((mp > 0.9).mean())
    print(f"OOD ({len(ood)} texts) vs test ({len(test_texts)}): AUROC max probability "
          f"{ood_report['auroc_max_probability']:.4f}, negative energy {ood_report['auroc_negative_energy']:.4f}; "
          f"mean max probability {ood_report['test_mean_max_probability']:.3f} (test) vs "
          f"{ood_report['ood_mean_max_probability']:.3f} (OOD)")
    out = os.path.join(ROOT, "results", "bench", f"trust-{predictor.name}.json")
    write_json(out, {"run": predictor.name, "backend": args.backend, "temperature": t,
                     "validation_coverage": coverage, "out_of_domain": ood_report})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
