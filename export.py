"""Export a checkpoint to ONNX (fp32 and dynamically quantized int8), behind an accuracy gate.

    python main.py --task export --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

Writes model.onnx and model.int8.onnx (dynamic batch and sequence axes) and
export.json (the gate's numbers) into the checkpoint's best/ folder. A joint
checkpoint's graphs have both outputs: utterance logits and token slot logits.
LoRA adapters are merged into the encoder first. The int8 model is ONNX
Runtime's BERT graph optimization followed by dynamic per-channel int8
quantization of the weights. Both must keep test accuracy (and slot F1 and
exact match) within GATE_DROP points of torch and agree with torch's top-1 on
at least GATE_AGREEMENT of the test utterances; otherwise nothing is put in
place and the exit is non-zero.
"""
import logging
import os
import shutil

import numpy as np
import torch

from data import read_hub, read_jsonl
from fileio import UserError
from inference import Predictor, checkpoint_folder
from model import checkpoint_layout, load_checkpoint
from slots import slot_metrics
from fileio import write_json
from utils import use_bf16

log = logging.getLogger("export")
GATE_DROP = 0.3  # accuracy points
GATE_SLOT_DROP = 0.5  # slot F1 and exact-match points
GATE_AGREEMENT = 0.985


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


# Nodes (MatMul or fused Attention) kept in fp32 by name, chosen with bench/quantization.py on validation.
KEEP_FP32 = ("layer.0/", "slot_head")


def to_int8(fp32_path, path, encoder_config, keep=KEEP_FP32):
    """ORT's BERT fusions, then dynamic int8 quantization with one scale per output channel, but for the nodes
    whose names contain one of `keep`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    fused = path + ".fused.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs two INFO lines per tensor on the root logger
    try:
        optimizer.optimize_model(fp32_path, model_type="bert", num_heads=encoder_config.num_attention_heads,
                                 hidden_size=encoder_config.hidden_size).save_model_to_file(fused)
        fp32 = [n.name for n in onnx.load(fused).graph.node if any(k in n.name for k in keep)]
        # the fused graph has ORT's own operators, whose outputs shape inference cannot type: they are float
        quantize_dynamic(fused, path, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=fp32,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    os.remove(fused)


def scores(predictor, texts, gold, batch_size):
    """(top-1 per utterance, accuracy, and with slots: slot F1, exact match) of a backend on the test split."""
    logits, words = predictor.outputs(texts, batch_size)
    pred = logits.argmax(1)
    out = {"accuracy": float((pred == gold["labels"]).mean())}
    if words is not None:
        m = slot_metrics(gold["slots"], [names for names, _ in words], pred == gold["labels"])
        out.update(slot_f1=m["slot_f1"], exact_match=m["exact_match"])
    return pred, out


def gate(row, reference):
    """Whether a backend's row keeps within GATE_DROP points of torch's accuracy (GATE_SLOT_DROP of its slot F1
    and exact match) and agrees with its top-1 on GATE_AGREEMENT of the utterances."""
    limits = {"accuracy": GATE_DROP, "slot_f1": GATE_SLOT_DROP, "exact_match": GATE_SLOT_DROP}
    return (all(100 * (reference[k] - row[k]) <= limits[k] for k in reference)
            and row["agreement"] >= GATE_AGREEMENT)


def export(cfg):
    path = checkpoint_folder(cfg.checkpoint)
    # the reference is the fp32 model, the weights as trained and exported: not the bf16 backend of a CPU with
    # native bf16, which approximates them as the int8 graph does (its agreement is reported beside)
    torch_predictor = Predictor(path, "torch", base_model=cfg.model, fp32=True)
    label, slots = torch_predictor.meta["config"]["label"], bool(torch_predictor.slots)
    test = (read_jsonl(cfg.data, label, slots) if cfg.data else read_hub(label, slots))["test"]
    index = {y: i for i, y in enumerate(torch_predictor.labels)}
    texts = [x[0] for x in test]
    gold = {"labels": np.array([index[x[1]] for x in test]), "slots": [x[2] for x in test] if slots else None}

    staging = os.path.join(path, ".export")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        model = to_onnx(os.path.join(staging, "model.onnx"), path, cfg.model)
        config = (model.encoder if hasattr(model, "encoder") else model.base_model.encoder).config
        to_int8(os.path.join(staging, "model.onnx"), os.path.join(staging, "model.int8.onnx"), config)
        reference, torch_scores = scores(torch_predictor, texts, gold, cfg.batch_size)
        report = {"test_utterances": len(texts), "torch": torch_scores, "torch_accuracy": torch_scores["accuracy"],
                  "gate": {"max_drop_points": GATE_DROP, "max_slot_drop_points": GATE_SLOT_DROP,
                           "min_agreement": GATE_AGREEMENT}}
        if use_bf16(torch_predictor.device):  # what predict and serve run here on torch: reported, not gated
            pred, report["torch-bf16"] = scores(Predictor(path, "torch", base_model=cfg.model), texts, gold,
                                                cfg.batch_size)
            report["torch-bf16"]["agreement"] = float((pred == reference).mean())
        failed = []
        for backend, name in (("onnx", "model.onnx"), ("onnx-int8", "model.int8.onnx")):
            onnx_file = os.path.join(staging, name)
            pred, row = scores(Predictor(path, backend, onnx_file=onnx_file), texts, gold, cfg.batch_size)
            row.update(agreement=float((pred == reference).mean()), megabytes=os.path.getsize(onnx_file) / 2**20)
            row["passed"] = gate(row, torch_scores)
            report[backend] = row
            numbers = ", ".join(f"{k} {row[k]:.4f} (torch {torch_scores[k]:.4f})" for k in torch_scores)
            log.info("%s: %s, top-1 agreement with torch %.4f, %.1f MB: %s", backend, numbers, row["agreement"],
                     row["megabytes"], "passed" if row["passed"] else "FAILED")
            if not row["passed"]:
                failed.append(backend)
        write_json(os.path.join(path, "export.json"), report)  # the numbers, whether or not the gate passed
        if failed:
            raise UserError(f"export failed the accuracy gate ({', '.join(failed)}): see {path}/export.json; "
                            "nothing was put in place")
        for name in ("model.onnx", "model.int8.onnx"):
            os.replace(os.path.join(staging, name), os.path.join(path, name))
        log.info("wrote %s and %s", os.path.join(path, "model.onnx"), os.path.join(path, "model.int8.onnx"))
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
