"""Inference from a saved checkpoint: utterances -> calibrated class probabilities, on torch or ONNX Runtime.

`--task predict` (predict() below), `export` and `serve` all go through `Predictor`. The
probabilities are softmax(logits / T) with the temperature T fitted on the
validation split after training (stored in meta.json; 1 for checkpoints
saved before calibration existed).

    from inference import Predictor
    p = Predictor("checkpoints/<run name>")                    # or backend="onnx" / "onnx-int8" after export
    p.top_k(["wake me up at seven"], k=3)                      # [[{"label": "alarm", "score": 0.98}, ...]]
    p.parse(["wake me up at seven"])                           # [(top labels, slots with their values)]

Using a model is preprocess -> forward -> postprocess, as transformers'
pipelines split it: `outputs` tokenizes and runs batches (what a server
batches across requests), and `postprocess` turns their outputs into each
utterance's answer (ranking, slots and their spans, resolved values), for
`parse`, `predict`, `/parse` and the try-it page alike.
"""
import json
import os
import sys
import threading
from typing import NamedTuple

import numpy as np
import torch

from arguments import BACKENDS
from data import first_subtokens
from fileio import UserError
from readers import blank, text_lines
from resolver import DIMENSIONS, ContextError, Resolver, context, engine
from slots import spans, word_predictions


class Resolution(NamedTuple):
    """How slot values are resolved: settings of a command, checked once (resolution_of) and given to Predictor."""
    resolve: bool = True  # False: the words only
    timezone: str | None = None  # IANA name of the default zone (None: the machine's)
    slot_dims: dict = {}  # {slot type: (Duckling dimensions)} over resolver.SLOT_DIMS
    synonyms: dict = {}  # {text: canonical value} over the checkpoint's
    future: bool = True  # a time of day earlier today moves to the next one (False: --keep-past-times)


def calibrated(logits, temperature):
    """softmax(logits / temperature) over the last axis."""
    z = logits / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def checkpoint_folder(path):
    """A run folder (CHECKPOINT_DIR/<run name>) or its best/ model; UserError when neither holds a checkpoint."""
    if os.path.isdir(os.path.join(path, "best")):
        path = os.path.join(path, "best")
    if not os.path.isdir(path):
        raise UserError(f"checkpoint folder not found: {path}")
    return path


def words_file(folder):
    """The training words a checkpoint folder saved for spelling correction; UserError when it has none."""
    path = os.path.join(folder, "words.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: this checkpoint predates spelling correction; train it again")
    return path


class Predictor:
    """A checkpoint ready to classify: labels, temperature, max length and one backend.

    threads: intra-op threads of the backend (None: the library's default), so
    that a server and its model do not oversubscribe the cores. onnx_file: an
    ONNX model to use instead of the checkpoint's (export checks one before
    putting it in place). spelling: correct words unknown to the model first
    (spelling.py), with the training words the checkpoint saved; `speller` can
    also be set to any spelling.Speller. fp32: the torch backend keeps the
    weights as trained, in fp32, also on a CPU with native bf16. resolution:
    how slot values are resolved (default: resolved, with the checkpoint's
    synonyms, in the machine's zone).
    """

    def __init__(self, checkpoint, backend="torch", base_model=None, threads=None, onnx_file=None, spelling=False,
                 fp32=False, resolution=Resolution()):
        from model import load_checkpoint
        from transformers import AutoTokenizer

        if backend not in BACKENDS:
            raise UserError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        self.path = checkpoint_folder(checkpoint)
        self.backend = backend
        if backend == "torch":
            from utils import cpu_attention, use_bf16, use_tf32

            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if self.device.type == "cuda":
                use_tf32()
            if threads:
                torch.set_num_threads(threads)
            try:
                self.model, self.tokenizer, self.meta = load_checkpoint(self.path, cpu_attention(self.device, True),
                                                                        base_model=base_model)
            except (ValueError, OSError, KeyError) as e:
                raise UserError(f"cannot load checkpoint {checkpoint}: {str(e).splitlines()[0]}") from None
            # bf16 weights where the CPU does bf16 natively (faster than autocast over fp32 weights), unless fp32
            self.bf16 = use_bf16(self.device) and not fp32
            self.model.to(self.device, torch.bfloat16 if self.bf16 else torch.float32)
        else:
            import onnxruntime as ort

            onnx_path = onnx_file or os.path.join(self.path, BACKENDS[backend])
            if not os.path.isfile(onnx_path):
                raise UserError(f"{onnx_path} not found: run --task export --checkpoint {checkpoint} first")
            with open(os.path.join(self.path, "meta.json")) as f:
                self.meta = json.load(f)
            self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(self.path, "tokenizer"))
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # the pool's threads stop spinning when a run returns, not some time later: between a server's passes
            # the event loop needs the core (on 2 cores: +9% requests/s at concurrency 32, 0.5-1.2 ms less CPU
            # per request, the model alone unchanged; docs/serving.md)
            options.add_session_config_entry("session.force_spinning_stop", "1")
            self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.tokenizer.truncation_side = "left"  # as in training
        # a fast tokenizer sets its truncation on every call, and in the transformers releases before their own lock
        # (huggingface/transformers#47085), which requirements.txt admits, a call while another thread's runs fails
        # ("Already borrowed"): the server's model streams take turns with it
        self.tokenizing = threading.Lock()
        self.labels = self.meta["labels"]
        self.max_length = self.meta["max_length"]
        self.temperature = self.meta.get("temperature", 1.0)
        self.name = self.meta["run_name"]
        self.slots = self.meta.get("slots")  # the slot head's names; None without one
        # the data's slot scheme; a checkpoint saved before it was recorded has BIO tags where its names carry them
        self.slot_scheme = self.meta.get("slot_scheme") or (
            "bio" if any(name.startswith(("B-", "I-")) for name in self.slots or ()) else "names")
        self.crf = self.load_crf()
        self.speller = self.load_speller() if spelling else None
        # the synonyms of the training data travel in the checkpoint, so the served model answers alike
        self.resolver = (Resolver(resolution.slot_dims, {**(self.meta.get("synonyms") or {}), **resolution.synonyms},
                                  future=resolution.future) if resolution.resolve else None)
        if self.resolver and self.slots:
            engine()  # Duckling and its time zones load now (0.3 s), not in the first request that has a slot
        self.timezone = resolution.timezone

    def load_crf(self):
        """The CRF's (S + 2, S) scores (model.SlotCRF) as numpy, read from the checkpoint for every backend; None
        without a CRF."""
        from model import checkpoint_layout

        if "slot_crf" not in checkpoint_layout(self.meta)[1]:
            return None
        return torch.load(os.path.join(self.path, "slot_crf.pt"), weights_only=True)["scores"].numpy()

    def load_speller(self):
        from spelling import Speller, whole_words

        with open(words_file(self.path)) as f:
            return Speller(json.load(f), whole_words(self.tokenizer))

    def _forward(self, ids, mask):
        """Logits (B, C) and slot logits (B, T, S) or None, as float32 numpy, for one padded batch."""
        if self.backend == "torch":
            with torch.inference_mode():
                out = self.model(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
            slots = out["slot_logits"].float().cpu().numpy() if "slot_logits" in out else None
            return out["logits"].float().cpu().numpy(), slots
        outs = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return outs[0], outs[1] if len(outs) > 1 else None

    def forward_texts(self, texts, batch_size=128, slots=True):
        """Uncalibrated logits (N, C) for raw utterances (tokenized, batched by length, truncated from the left);
        with slots and a slot head also each utterance's slot scores (T, S) and its words' first sub-token
        positions (else None, None)."""
        if self.speller:
            texts = [self.speller(t) for t in texts]  # word for word, so words keep their places
        texts = [t.strip() for t in texts]
        with self.tokenizing:
            ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            # a word without a first sub-token (cut by truncation) is Other, as in training
            positions = first_subtokens(self.tokenizer, texts, self.max_length) if slots and self.slots else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch with little padding
        out, token_logits = np.zeros((len(ids), len(self.labels)), dtype=np.float32), [None] * len(ids)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            with self.tokenizing:
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="np")
            out[rows], slot_logits = self._forward(batch["input_ids"].astype(np.int64),
                                                   batch["attention_mask"].astype(np.int64))
            if slots and slot_logits is not None:
                for r, i in enumerate(rows):
                    token_logits[i] = slot_logits[r, :len(ids[i])]  # (T, S)
        return out, (token_logits, positions) if positions is not None else (None, None)

    def outputs(self, texts, batch_size=128, slots=True):
        """Uncalibrated logits (N, C) for raw utterances; with slots and a slot head also each utterance's slot
        name and probability per word (else None)."""
        out, (token_logits, positions) = self.forward_texts(texts, batch_size, slots)
        if positions is None:
            return out, None
        return out, word_predictions(token_logits, positions, self.slots, self.crf)

    def embeddings(self, texts, batch_size=128):
        """L2-normalised sentence vectors (N, H) of raw utterances: the encoder's mean over tokens, the pooling
        sentence encoders are trained with (torch backend)."""
        if self.backend != "torch":
            raise UserError("sentence vectors need the torch backend")
        with self.tokenizing:
            ids = self.tokenizer([t.strip() for t in texts], truncation=True, max_length=self.max_length)["input_ids"]
        out = []
        for start in range(0, len(ids), batch_size):
            with self.tokenizing:
                batch = self.tokenizer.pad({"input_ids": ids[start:start + batch_size]}, return_tensors="pt")
            with torch.inference_mode():
                mask = batch["attention_mask"].to(self.device)
                h = self.model.encoder(input_ids=batch["input_ids"].to(self.device), attention_mask=mask)
                h = h.last_hidden_state.float()  # (B, T, H)
                mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    def logits(self, texts, batch_size=128):
        """Uncalibrated logits (N, C) for raw utterances: tokenized, batched by length, truncated from the left."""
        return self.outputs(texts, batch_size, slots=False)[0]

    def probabilities(self, texts, batch_size=128):
        """Calibrated probabilities (N, C): softmax(logits / temperature)."""
        return calibrated(self.logits(texts, batch_size), self.temperature)

    def top_k(self, texts, k=3, min_confidence=None, batch_size=128):
        """For each utterance its k most probable labels as [{"label", "score"}], best first (see rank)."""
        return self.rank(texts, self.probabilities(texts, batch_size), k, min_confidence)

    def parse(self, texts, k=3, min_confidence=None, batch_size=128, reference_time=None, timezone=None):
        """postprocess's answers for raw utterances, resolved relative to reference_time in timezone (ISO 8601 and
        IANA strings, default now in the Predictor's zone; resolver.ContextError when malformed)."""
        when = self.context(reference_time, timezone)
        logits, words = self.outputs(texts, batch_size)
        return self.postprocess(texts, calibrated(logits, self.temperature), words, k, min_confidence, when)

    def context(self, reference_time=None, timezone=None):
        """The time context (an aware reference time, its zone) of one request or run, checked once; None where
        nothing is resolved. resolver.ContextError when malformed."""
        return context(reference_time, timezone or self.timezone) if self.resolver else None

    def postprocess(self, texts, probs, words, k=3, min_confidence=None, when=None):
        """Each utterance's answer from the forward step's outputs (probs: calibrated (N, C); words: each
        utterance's word slots and probabilities, or None): (its top k labels as rank gives them, its slots). Each
        slot is {"slot", "value", "start", "end", "score"}, with character offsets into the text as given, so
        text[start:end] == value, and the mean probability of its words' slot; resolved, it also has its
        "normalized" and "resolved" values where it has them (resolver.Resolver, in the time context `when`,
        default now). No slots without a slot head."""
        ranked = self.rank(texts, probs, k, min_confidence)
        if words is None:
            return [(top, []) for top in ranked]
        found = [self.spans(text, names, scores) for text, (names, scores) in zip(texts, words)]
        if self.resolver is not None:
            when = when or self.context()
            found = [self.resolver(text, f, when) for text, f in zip(texts, found)]
        return list(zip(ranked, found))

    def spans(self, text, names, scores):
        """One utterance's predicted slots from its word slots and their probabilities (slots.spans)."""
        return spans(text, names, scores, self.slot_scheme)

    def rank(self, texts, probs, k=3, min_confidence=None):
        """The k best labels of each row of probs; [] for an empty utterance (readers.blank: nothing printable), or
        below min_confidence (abstain)."""
        k = min(k, len(self.labels))
        out = []
        for text, p in zip(texts, probs):
            best = np.argsort(-p, kind="stable")[:k]
            if blank(text) or (min_confidence is not None and p[best[0]] < min_confidence):
                out.append([])
            else:
                out.append([{"label": self.labels[j], "score": round(float(p[j]), 4)} for j in best])
        return out


def read_utterances(cfg):
    """predict's utterances: from the command line, --input FILE, or standard input, which must be UTF-8."""
    if cfg.texts:
        return cfg.texts
    if cfg.input and cfg.input != "-":
        return text_lines(cfg.input)
    if cfg.input is None and sys.stdin.isatty():
        raise UserError("nothing to classify: give utterances, --input FILE, or pipe lines into standard input")
    try:
        return sys.stdin.buffer.read().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"standard input: not UTF-8 ({e.reason} at byte {e.start})") from None


def predict(cfg):
    """--task predict: each utterance's top-k labels with calibrated probabilities, and its slots where the
    checkpoint has a slot head; printed, and returned as records."""
    resolution = resolution_of(cfg)  # bad files and zones fail before the model loads
    predictor = Predictor(cfg.checkpoint, cfg.backend, base_model=cfg.model, spelling=cfg.spelling,
                          resolution=resolution)
    if cfg.slots and not predictor.slots:
        raise UserError(f"checkpoint {cfg.checkpoint} has no slot head: train it with --slots to get slots")
    try:
        when = predictor.context(cfg.reference_time)  # a bad one is refused whether or not a slot needs it
    except ContextError as e:
        raise UserError(str(e)) from None
    texts = read_utterances(cfg)
    logits, words = predictor.outputs(texts, cfg.batch_size)
    parsed = predictor.postprocess(texts, calibrated(logits, predictor.temperature), words, cfg.top_k,
                                   cfg.min_confidence, when)
    records = []
    for text, (top, found) in zip(texts, parsed):
        records.append({"text": text, "predictions": [{"label": t["label"], "probability": t["score"]} for t in top]})
        if predictor.slots:
            records[-1]["slots"] = found
        if cfg.format == "jsonl":
            print(json.dumps(records[-1], ensure_ascii=False))
        else:
            cells = [f"{t['label']} {t['score']:.3f}" for t in top] or ["(empty)" if blank(text) else "(abstain)"]
            if found:
                cells.append(" ".join(shown_slot(x) for x in found))
            print("\t".join(escaped(c) for c in [text] + cells))
    return records


def escaped(text):
    """text for a terminal: control and format characters (escape sequences, bidirectional overrides, tabs) as
    Python escapes, so a line of input cannot move the cursor, retitle the window or reorder what is shown."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown_slot(x):
    """A slot as predict's text format shows it: time="five am"->2026-12-06T05:00, city="NYC"=New York City."""
    out = f"{x['slot']}={json.dumps(x['value'], ensure_ascii=False)}"
    if "normalized" in x:
        out += f"={x['normalized']}"
    r = x.get("resolved")
    if r:
        value = (f"{r.get('from', '')[:16]}..{r.get('to', '')[:16]}" if "from" in r or "to" in r
                 else f"{r['seconds']:g}s" if r["dim"] == "duration" else str(r["value"])[:16])
        unit = r.get("unit") if r["dim"] != "duration" else None
        out += f"\u2192{value}" + (f" {unit}" if unit else "")
    return out


def resolution_of(cfg):
    """The Resolution of predict's or serve's settings: --no-resolve, --timezone, the slot-type map (--slot-dims) and
    synonyms (--synonyms); UserError on a bad file or zone."""
    dims = read_table(cfg.slot_dims, "--slot-dims") if cfg.slot_dims else {}
    unknown = sorted({d for v in dims.values() for d in (v if isinstance(v, list) else [v])} - set(DIMENSIONS))
    if unknown:
        raise UserError(f"--slot-dims {cfg.slot_dims}: unknown Duckling dimension {', '.join(unknown)} "
                        f"(known: {', '.join(DIMENSIONS)})")
    try:
        context(None, cfg.timezone)
    except ContextError as e:
        raise UserError(str(e)) from None
    return Resolution(cfg.resolve, cfg.timezone, {k: tuple(v if isinstance(v, list) else [v]) for k, v in dims.items()},
                      read_table(cfg.synonyms, "--synonyms") if cfg.synonyms else {}, not cfg.keep_past_times)


def read_table(path, flag):
    """{key: value} from a JSON object or a two-column CSV (key,value; a key may repeat for a list); UserError
    otherwise."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.lower().endswith(".json"):
                table = json.load(f)
                if not isinstance(table, dict):
                    raise ValueError("not a JSON object")
                return table
            out = {}
            for row in csv.reader(f):
                if len(row) != 2:
                    raise ValueError(f"a row of {len(row)} fields, where key,value needs 2")
                out.setdefault(row[0].strip(), []).append(row[1].strip())
            return {k: v if len(v) > 1 else v[0] for k, v in out.items()}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {path}: {getattr(e, 'strerror', None) or e}") from None
