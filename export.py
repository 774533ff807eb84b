"""Export a checkpoint to ONNX (fp32 and int8), behind an accuracy gate.

    python main.py --task export --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

Writes model.onnx and model.int8.onnx (dynamic batch and sequence axes) and
export.json (the gate's numbers) into the checkpoint's best/ folder. A joint
checkpoint's graphs have both outputs: utterance logits and token slot logits.
LoRA adapters are merged into the encoder first. The int8 model is block-wise:
each MatMul's weights in int8 with one scale per block of input rows, multiplied
in int8 with the activations quantized per row and block (to_int8). Each must
keep test accuracy (and slot F1 and exact match) within GATE_DROP points of the
fp32 model and agree with its
top-1 on GATE_AGREEMENT of the test utterances, judged with the uncertainty
of a test split of that size (gate()): on 50 utterances one flipped
prediction is 2 points. The data's test split is the one the checkpoint's
training used (data.scored_split). A graph that passes is put in place; one
that fails is not, and the exit is non-zero.
"""
import logging
import os
import shutil

import numpy as np
import torch

from arguments import BACKENDS, complete_config
from data import scored_split
from evaluation import gold_of
from fileio import UserError, write_json
from inference import Predictor, checkpoint_folder
from metrics import score
from model import checkpoint_layout, load_checkpoint
from utils import use_bf16

log = logging.getLogger("export")
GATE_DROP = 0.3  # accuracy points
GATE_SLOT_DROP = 0.5  # slot F1 and exact-match points
GATE_AGREEMENT = 0.985
Z_ONE_SIDED = 1.645  # the one-sided 95% normal quantile
GRAPHS = {backend: name for backend, name in BACKENDS.items() if name}  # what export writes, by backend


class Outputs(torch.nn.Module):
    """The classifier as ONNX sees it: (input_ids, attention_mask) -> logits, and slot_logits with a slot head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids, attention_mask)
        return (out["logits"], out["slot_logits"]) if "slot_logits" in out else out["logits"]


def to_onnx(path, model_dir, base_model):
    """fp32 ONNX from fp32 weights with eager attention (its graph keeps both axes dynamic)."""
    model, tokenizer, meta = load_checkpoint(model_dir, attention="eager", base_model=base_model)
    if checkpoint_layout(meta)[0]:
        model = model.merge_and_unload()  # plain linear layers: one graph, no adapter branches
    model = Outputs(model.float().eval())
    # batch 2 and length 8 with padding, so that neither axis is traced as a constant
    dummy = tokenizer(["wake me up at seven please", "hi"], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}, "logits": {0: "batch"}}
    if meta.get("slots"):
        axes["slot_logits"] = {0: "batch", 1: "length"}
    torch.onnx.export(model, (dummy["input_ids"], dummy["attention_mask"]), path, input_names=list(axes)[:2],
                      output_names=list(axes)[2:], dynamic_axes=axes, opset_version=17, dynamo=False)
    return model.model


# MatMuls kept in fp32 by name: the slot head, whose token scores feed the CRF as they are.
KEEP_FP32 = ("slot_head",)
# Input rows per int8 scale: bench/quantization.py chose 32 on validation, beside one scale per output channel with
# the activations quantized per tensor (export's int8 up to 2026-12-07), whose top-1 agreement with the fp32 model
# was about 1 point lower (one outlier in a batch coarsens every utterance's activations).
BLOCK = 32


def to_int8(fp32_path, path, keep=KEEP_FP32, block=BLOCK):
    """int8 weights in blocks of `block` input rows, one scale and zero point each, computed in int8 with the
    activations quantized per row and block (ONNX Runtime's MatMulNBits, accuracy level 4) for every MatMul but those
    whose names contain one of `keep`. The embedding tables stay fp32: in int8 they cost 0.3 points of agreement
    (bench/quantization.py)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(fp32_path)
    fp32 = [n.name for n in model.graph.node if any(k in n.name for k in keep)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs a line per weight on the root logger
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, accuracy_level=4, nodes_to_exclude=fp32)
        quantizer.process()
        quantizer.model.save_model_to_file(path, use_external_data_format=False)
    finally:
        root.setLevel(level)


def scores(predictor, texts, gold, batch_size):
    """(per utterance: top-1 and whether it was right, exact match where there are slots; the backend's accuracy,
    and with slots its slot F1 and exact match) on the scored split. gold: (label ids, word labels or None), as
    evaluation.gold_of gives them."""
    logits, words = predictor.outputs(texts, batch_size)
    pred = logits.argmax(1)
    slots = words is not None and gold[1] is not None
    m = score(pred, gold[0], len(predictor.labels), (gold[1], [names for names, _ in words]) if slots else None,
              predictor.slot_scheme)
    out = {"accuracy": m["accuracy"], **({"slot_f1": m["slot_f1"], "exact_match": m["exact_match"]} if slots else {})}
    exact = np.array(m["exact_match_correct"]) if slots else None
    return {"top1": pred, "right": pred == np.array(gold[0]), "exact": exact}, out


def paired_drop(reference, other):
    """The drop in points from reference to other (per-utterance correctness, paired) and its one-sided 95% lower
    bound: only a drop that the test split shows beyond its own noise counts against the gate."""
    worse, better = int(np.sum(reference & ~other)), int(np.sum(~reference & other))
    n = len(reference)
    drop = (worse - better) / n
    se = np.sqrt(max(worse + better - (worse - better) ** 2 / n, 0)) / n
    return 100 * drop, 100 * (drop - Z_ONE_SIDED * se)


def gate(row, reference, per, per_ref):
    """Whether a backend keeps to the limits, judged with the uncertainty of a split of this size: its accuracy (and
    exact match) drop against the fp32 model counts only where its one-sided 95% lower bound passes GATE_DROP
    (GATE_SLOT_DROP), and its top-1 disagreement only where a binomial test finds it above 1 - GATE_AGREEMENT
    (p < 0.05). Slot F1, an aggregate over spans, is judged on its point estimate. The row gains these numbers."""
    from scipy.stats import binom

    n, disagree = len(per["top1"]), int(np.sum(per["top1"] != per_ref["top1"]))
    row["agreement_p"] = float(binom.sf(disagree - 1, n, 1 - GATE_AGREEMENT)) if disagree else 1.0
    ok = row["agreement_p"] >= 0.05
    for key, limit, mine, theirs in (("accuracy", GATE_DROP, per["right"], per_ref["right"]),
                                     ("exact_match", GATE_SLOT_DROP, per["exact"], per_ref["exact"])):
        if mine is not None:
            drop, lower = paired_drop(theirs, mine)
            row[f"{key}_drop_points"], row[f"{key}_drop_lower_bound"] = drop, lower
            ok &= lower <= limit
    if "slot_f1" in reference:
        ok &= 100 * (reference["slot_f1"] - row["slot_f1"]) <= GATE_SLOT_DROP
    return bool(ok)


def export(cfg):
    path = checkpoint_folder(cfg.checkpoint)
    # the reference is the fp32 model, the weights as trained and exported: not the bf16 backend of a CPU with
    # native bf16, which approximates them as the int8 graph does (its agreement is reported beside)
    torch_predictor = Predictor(path, "torch", base_model=cfg.model, fp32=True)
    test, split = scored_split(cfg.source, complete_config(torch_predictor.meta["config"]), "test")
    texts, label_ids, _, words = gold_of(torch_predictor, test)
    gold = (label_ids, words)
    staging = os.path.join(path, ".export")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        fp32, int8 = (os.path.join(staging, GRAPHS[b]) for b in ("onnx", "onnx-int8"))
        to_onnx(fp32, path, cfg.model)
        to_int8(fp32, int8)
        per_ref, torch_scores = scores(torch_predictor, texts, gold, cfg.batch_size)
        report = {"test_utterances": len(texts), "split": split, "torch": torch_scores,
                  "torch_accuracy": torch_scores["accuracy"],
                  "gate": {"max_drop_points": GATE_DROP, "max_slot_drop_points": GATE_SLOT_DROP,
                           "min_agreement": GATE_AGREEMENT, "judged": "one-sided 95%, paired (drops); binomial "
                                                                      "p >= 0.05 (agreement)"}}
        if use_bf16(torch_predictor.device):  # what predict and serve run here on torch: reported, not gated
            per, report["torch-bf16"] = scores(Predictor(path, "torch", base_model=cfg.model), texts, gold,
                                               cfg.batch_size)
            report["torch-bf16"]["agreement"] = float((per["top1"] == per_ref["top1"]).mean())
        for backend, name in GRAPHS.items():
            onnx_file = os.path.join(staging, name)
            per, row = scores(Predictor(path, backend, onnx_file=onnx_file), texts, gold, cfg.batch_size)
            row.update(agreement=float((per["top1"] == per_ref["top1"]).mean()),
                       megabytes=os.path.getsize(onnx_file) / 2**20)
            row["passed"] = gate(row, torch_scores, per, per_ref)
            report[backend] = row
            numbers = ", ".join(f"{k} {row[k]:.4f} (torch {torch_scores[k]:.4f})" for k in torch_scores)
            log.info("%s: %s, top-1 agreement with torch %.4f (p %.3f), %.1f MB: %s", backend, numbers,
                     row["agreement"], row["agreement_p"], row["megabytes"], "passed" if row["passed"] else "FAILED")
        return put_in_place(path, staging, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def put_in_place(path, staging, report):
    """The graphs that passed the gate moved into the checkpoint, and export.json; UserError naming those that
    failed (after the others are in place)."""
    write_json(os.path.join(path, "export.json"), report)  # the numbers, whether or not the gate passed
    for backend, name in GRAPHS.items():
        if report[backend]["passed"]:
            os.replace(os.path.join(staging, name), os.path.join(path, name))
            log.info("wrote %s", os.path.join(path, name))
    failed = [b for b in GRAPHS if not report[b]["passed"]]
    if failed:
        raise UserError(f"export failed the accuracy gate ({', '.join(failed)}): see {path}/export.json; "
                        f"{'only the graphs that passed were' if len(failed) < len(GRAPHS) else 'nothing was'} "
                        "put in place")
    return report
