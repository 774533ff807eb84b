"""Which int8 for export: each variant's validation numbers, size and speed against the fp32 model.

    python bench/quantization.py --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

Exports the checkpoint's fp32 graph once, then quantizes it each way and scores
each on the validation split: accuracy, slot F1 and exact match with slots,
top-1 agreement with the fp32 torch model, the graph's size, utterances per
second (the validation split in batches of 128, tokenization and slot decoding
included, after a warm-up pass) and one utterance's median latency. Validation
only, so that the choice does not peek at the test split that export's gate
reads. The variants: export's block-wise int8 (export.to_int8) with other
block sizes, with the slot head or the embedding table in int8 too, and the
int8 export wrote until 2026-12-07 (ORT's BERT fusions, then one weight scale
per output channel with the activations quantized per tensor at run time).
Writes results/bench/quantization-<run name>.json.
"""
import argparse
import logging
import os
import statistics
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import read_rows  # noqa: E402
from export import BLOCK, scores, to_int8, to_onnx  # noqa: E402
from inference import Predictor, checkpoint_folder  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402


def per_tensor(fp32_path, path, config, keep):
    """export's int8 until 2026-12-07: ORT's BERT fusions, then dynamic int8 with one weight scale per output
    channel and the activations quantized per tensor at run time, but for the nodes whose names contain one of
    `keep`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    fused = path + ".fused.onnx"
    optimizer.optimize_model(fp32_path, model_type="bert", num_heads=config.num_attention_heads,
                             hidden_size=config.hidden_size).save_model_to_file(fused)
    fp32 = [n.name for n in onnx.load(fused).graph.node if any(k in n.name for k in keep)]
    # the fused graph has ORT's own operators, whose outputs shape inference cannot type: they are float
    quantize_dynamic(fused, path, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=fp32,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.remove(fused)


def int8_embeddings(fp32_path, path):
    """export's int8, and the embedding tables (Gather) in int8 too."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    to_int8(fp32_path, path + ".matmuls.onnx")
    quantize_dynamic(path + ".matmuls.onnx", path, op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.remove(path + ".matmuls.onnx")


def variants(config):
    """Name -> function(fp32 path, int8 path)."""
    return {f"block-wise, {BLOCK} rows (export)": lambda a, b: to_int8(a, b),
            "block-wise, 128 rows": lambda a, b: to_int8(a, b, block=128),
            f"block-wise, {BLOCK} rows, slot head int8 too": lambda a, b: to_int8(a, b, keep=()),
            f"block-wise, {BLOCK} rows, embeddings int8 too": int8_embeddings,
            "per tensor, layer 0 dense and slot head fp32 (export until 2026-12-07)":
                lambda a, b: per_tensor(a, b, config, ("layer.0/", "slot_head")),
            "per tensor, slot head fp32": lambda a, b: per_tensor(a, b, config, ("slot_head",))}


def timed(predictor, texts, gold, batch_size, single):
    """(scores' output, utterances per second over `texts` after a warm-up pass, median ms of one utterance)."""
    scores(predictor, texts[:batch_size], (gold[0][:batch_size], gold[1] and gold[1][:batch_size]), batch_size)
    t = time.perf_counter()
    out = scores(predictor, texts, gold, batch_size)
    speed = len(texts) / (time.perf_counter() - t)
    latency = []
    for text in texts[:single]:
        t = time.perf_counter()
        predictor.outputs([text], 1)
        latency.append(time.perf_counter() - t)
    return out, speed, 1000 * statistics.median(latency)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--single", type=int, default=200, help="single-utterance calls timed")
    p.add_argument("--out", default=None, help="results JSON (default: results/bench/quantization-<run name>.json)")
    args = p.parse_args(argv)
    path = checkpoint_folder(args.checkpoint)
    reference_model = Predictor(path, "torch", fp32=True, threads=args.threads)
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
        graphs = {"fp32 ONNX": os.path.join(tmp, "model.onnx")}
        for name, quantize in variants(config).items():
            graphs[name] = os.path.join(tmp, f"{len(graphs)}.onnx")
            logging.getLogger().setLevel(logging.WARNING)  # the quantizers log a line per tensor on the root logger
            quantize(graphs["fp32 ONNX"], graphs[name])
        for name, graph in graphs.items():
            predictor = Predictor(path, "onnx-int8", onnx_file=graph, threads=args.threads)
            (per, row), speed, latency = timed(predictor, texts, gold, args.batch_size, args.single)
            row = {"variant": name, "megabytes": os.path.getsize(graph) / 2**20,
                   "agreement": float((per["top1"] == reference).mean()), "utterances_per_second": speed,
                   "single_ms_median": latency, **{f"{k}_drop_points": 100 * (fp32[k] - row[k]) for k in fp32}}
            rows.append(row)
            changes = ", ".join(f"{k[:-12]} {-row[k]:+.2f}" for k in row if k.endswith("_drop_points"))
            print(f"{name:72s} {row['megabytes']:5.1f} MB  agreement {100 * row['agreement']:.2f}%  points "
                  f"against fp32: {changes}  {speed:5.0f} utterances/s  one: {latency:.2f} ms", flush=True)
    out = args.out or os.path.join(ROOT, "results", "bench", f"quantization-{reference_model.name}.json")
    write_json(out, {"run": reference_model.name, "split": "validation", "utterances": len(texts),
                     "threads": args.threads, "fp32": fp32, "cpu": cpu_model(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
