"""Which uncertainty score finds a checkpoint's own mistakes: how suggest's ranking was chosen, on validation only.

    python bench/suggest_scores.py --data ../shared/data/massive/en-US.jsonl \
        --checkpoints checkpoints/loop/*/s*/r0/ckpt/* checkpoints/baseline-intent-minilm-lr0.0001-bs32-e10-slots4-crf-s4?

Each checkpoint parses the data's validation split. An utterance counts as a mistake when its intent, or with a
slot head any word's slot, differs from the gold one (exact match). Each score ranks the utterances most unsure
first; reported are its AUROC for telling mistakes from the rest and how many mistakes (and of them how many in
the slots) are among its first --top (one loop round's picks). `suggest` is the score suggest.py ranks by, with a
CRF from each word's marginal; the others are the alternatives it was chosen over, among them, with a CRF, each
word's own softmax at the CRF's pick. Results go to --out (results/bench/suggest-scores.json).
"""
import argparse
import os
import sys

import numpy as np
from scipy.stats import mannwhitneyu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import word_labels  # noqa: E402
from fileio import write_json  # noqa: E402
from inference import Predictor, calibrated  # noqa: E402
from readers import read, source  # noqa: E402
from slots import best_slots, word_emissions  # noqa: E402
from suggest import uncertainty  # noqa: E402


def auroc(score, wrong):
    """P(a mistake scores above a right one), ties counted half: the Mann-Whitney U over both counts (scipy).
    None where every utterance, or none, is a mistake (nothing to tell apart)."""
    pos, neg = wrong.sum(), (~wrong).sum()
    if not pos or not neg:
        return None
    return float(mannwhitneyu(score[wrong], score[~wrong]).statistic / (pos * neg))


def candidates(probs, words, own=None):
    """{name: (N,) uncertainty, higher = less sure} for the alternatives, suggest's own among them. own: with a CRF,
    each utterance's product of its words' own softmax at the CRF's pick (what suggest took before the marginals)."""
    top2 = -np.sort(-probs, axis=1)[:, :2]
    margin = top2[:, 0] - top2[:, 1]
    out = {"suggest": uncertainty(probs, words)[0], "1 - intent margin": 1 - margin,
           "1 - best intent probability": 1 - top2[:, 0],
           "intent entropy": -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)}
    if words is not None:
        least = np.array([min(s) if s else 1.0 for _, s in words])
        slots = np.array([np.prod(s) for _, s in words])
        out.update({"1 - min(intent margin, least sure slot)": 1 - np.minimum(margin, least),
                    "1 - intent margin x slots": 1 - margin * slots, "1 - slots": 1 - slots})
    if own is not None:
        out["1 - best intent probability x slots by each word's own softmax"] = 1 - top2[:, 0] * own
    return out


def own_softmax(token_logits, positions, crf):
    """Per utterance the product over its words of the softmax of the word's own scores at the CRF's pick."""
    out = []
    for t, pos in zip(token_logits, positions):
        e = word_emissions(t, pos)
        ids = best_slots(e, crf)
        p = np.exp(e - e.max(-1, keepdims=True))
        out.append(np.prod((p / p.sum(-1, keepdims=True))[np.arange(len(ids)), ids]))
    return np.array(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--top", type=int, default=240)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "suggest-scores.json"))
    args = p.parse_args()
    val = [x for x in read(source(args.data)).examples if x.split == "validation"]
    report = {"kind": "suggest_scores", "data": os.path.basename(args.data), "split": "validation",
              "utterances": len(val), "top": args.top, "checkpoints": []}
    for ckpt in args.checkpoints:
        predictor = Predictor(ckpt)
        logits, words = predictor.outputs([x.text for x in val])
        own = None
        if predictor.crf is not None:
            _, (token_logits, positions) = predictor.forward_texts([x.text for x in val])
            own = own_softmax(token_logits, positions, predictor.crf)
        probs = calibrated(logits, predictor.temperature)
        intent_wrong = np.array([predictor.labels[i] != x.labels["intent"] for i, x in zip(probs.argmax(1), val)])
        slot_wrong = (np.zeros(len(val), bool) if words is None else
                      np.array([list(w[0]) != word_labels(x.text, x.spans, predictor.slot_scheme)
                                for w, x in zip(words, val)]))
        wrong = intent_wrong | slot_wrong
        scores = {}
        for name, score in candidates(probs, words, own).items():
            top = np.argsort(-score, kind="stable")[:args.top]
            area = auroc(score, wrong)
            scores[name] = {"auroc": area if area is None else round(area, 4), "mistakes_in_top": int(wrong[top].sum()),
                            "slot_mistakes_in_top": int(slot_wrong[top].sum())}
        entry = {"checkpoint": os.path.relpath(os.path.abspath(ckpt), ROOT), "slots": words is not None,
                 "mistakes": int(wrong.sum()), "intent_mistakes": int(intent_wrong.sum()),
                 "slot_mistakes": int(slot_wrong.sum()), "scores": scores}
        report["checkpoints"].append(entry)
        print(f"{entry['checkpoint']}: {entry['mistakes']} of {len(val)} wrong")
        for name, s in scores.items():
            area = "n/a" if s["auroc"] is None else f"{s['auroc']:.3f}"
            print(f"  {name:64s} AUROC {area}  mistakes in the first {args.top}: {s['mistakes_in_top']}"
                  f" ({s['slot_mistakes_in_top']} in the slots)")
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
