"""Which nodes to keep in fp32 under dynamic int8: each choice's validation numbers against the fp32 model.

    python bench/quantization.py --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

Exports the checkpoint's fp32 graph once, then quantizes it as export does with
each choice of nodes left in fp32 (export.KEEP_FP32 is one of them) and scores
each on the validation split: accuracy, slot F1 and exact match with slots,
top-1 agreement with the fp32 torch model, and the share of the matrix
weights left in fp32. Validation only, so that the choice does not peek at the
test split that export's gate reads. Writes results/bench/quantization-<run name>.json.
"""
import argparse
import os
import sys
import tempfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import read_rows  # noqa: E402
from export import KEEP_FP32, scores, to_int8, to_onnx  # noqa: E402
from inference import Predictor, checkpoint_folder  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402

LAYERS = 6  # the bundled encoder's; other encoders get the same choices over their first six layers


def choices():
    """Name -> substrings of the node names kept in fp32."""
    out = {"all int8": (), "slot head": ("slot_head",), "export (layer 0 dense, slot head)": KEEP_FP32}
    out.update({f"layer 0 and {k} dense, slot head": (*KEEP_FP32, f"layer.{k}/") for k in range(1, LAYERS)})
    out["layer 0 dense and attention, slot head"] = (*KEEP_FP32, "Attention_0")
    out["every FFN output, slot head"] = ("slot_head", *(f"layer.{k}/output/dense" for k in range(LAYERS)))
    out["every FFN input, slot head"] = ("slot_head", *(f"layer.{k}/intermediate/dense" for k in range(LAYERS)))
    out["every attention output, slot head"] = ("slot_head", *(f"layer.{k}/attention/output" for k in range(LAYERS)))
    return out


def fp32_share(int8_path):
    """The share of the int8 graph's matrix weights (MatMul and Attention, both forms) that stayed fp32."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(int8_path).graph
    sizes = {t.name: numpy_helper.to_array(t).size for t in graph.initializer}
    kinds = {"MatMul": True, "Attention": True, "DynamicQuantizeMatMul": False, "MatMulInteger": False,
             "QAttention": False}
    weights = {True: 0, False: 0}
    for n in graph.node:
        if n.op_type in kinds:
            weights[kinds[n.op_type]] += sum(sizes.get(i, 0) for i in n.input)
    return weights[True] / (weights[True] + weights[False])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=None, help="results JSON (default: results/bench/quantization-<run name>.json)")
    args = p.parse_args(argv)
    path = checkpoint_folder(args.checkpoint)
    reference_model = Predictor(path, "torch", fp32=True)
    slots = bool(reference_model.slots)
    val, label = read_rows(args.data)["validation"], reference_model.meta["config"]["label"]
    index = {y: i for i, y in enumerate(reference_model.labels)}
    texts = [r.text for r in val]
    gold = ([index[r.labels[label]] for r in val], [r.words for r in val] if slots else None)
    reference, fp32 = scores(reference_model, texts, gold, args.batch_size)
    reference = reference["top1"]
    print("fp32 torch: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in fp32.items()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = to_onnx(os.path.join(tmp, "model.onnx"), path, None)
        config = (model.encoder if hasattr(model, "encoder") else model.base_model.encoder).config
        for name, keep in choices().items():
            int8 = os.path.join(tmp, "model.int8.onnx")
            to_int8(os.path.join(tmp, "model.onnx"), int8, config, keep)
            per, row = scores(Predictor(path, "onnx-int8", onnx_file=int8), texts, gold, args.batch_size)
            pred = per["top1"]
            row = {"choice": name, "keep_fp32": list(keep), "fp32_weight_share": fp32_share(int8),
                   "agreement": float((pred == reference).mean()),
                   **{f"{k}_drop_points": 100 * (fp32[k] - row[k]) for k in fp32}}
            rows.append(row)
            changes = ", ".join(f"{k[:-12]} {-row[k]:+.2f}" for k in row if k.endswith("_drop_points"))
            print(f"{name:40s} fp32 weights {100 * row['fp32_weight_share']:4.1f}%  agreement "
                  f"{100 * row['agreement']:.2f}%  points against fp32: {changes}")
    out = args.out or os.path.join(ROOT, "results", "bench", f"quantization-{reference_model.name}.json")
    write_json(out, {"run": reference_model.name, "split": "validation", "utterances": len(texts),
                     "fp32": fp32, "cpu": cpu_model(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
