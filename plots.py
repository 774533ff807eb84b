"""Figures and tables from results files; never retrains.

    python plots.py results/*.json [--out-dir results/plots] [--run RUN_NAME]

Writes, for each run, accuracy and loss per epoch (both phases for supcon and
simclr); one comparison of test accuracy across experiments (runs that differ
only by seed are grouped: mean and 95% t-interval, the study's numbers as
markers); as markdown (printed and saved in table.md) the study's Table 1, the
paired comparisons against the baseline and the recipe's ablation; and for one
run (--run, default the most accurate) a confusion matrix, per-class precision,
recall and F1, and a reliability diagram before and after temperature scaling.
"""
import argparse
import functools
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arguments import (RECIPE_SETTINGS, TASKS, complete_config, default, implied, parse_args,  # noqa: E402
                       recorded_config)
from experiments import EXPERIMENTS  # noqa: E402
from stats import holm, paired_bootstrap, paired_t, t_interval  # noqa: E402

REQUIRED = ("run_name", "task", "config", "environment", "history", "test_loss", "test_accuracy")
EVALUATION_KEYS = ("run_name", "data", "split", "labels", "gold_labels", "predictions")
# what evaluation reports named their scored split's columns before the names held for any split
EVALUATION_RENAMED = {"test_labels": "gold_labels", "test_predictions": "predictions",
                      "test_slot_f1_per_type": "slot_f1_per_type"}


def load_results(paths):
    """The results files that parse, and one message per file that does not."""
    runs, problems = [], []
    for path in paths:
        if not os.path.isfile(path):
            hint = " (a pattern that matched nothing?)" if any(c in path for c in "*?[") else ""
            problems.append(f"skipping {path}: no such file{hint}")
            continue
        try:
            with open(path) as f:
                r = json.load(f)
            missing = [k for k in REQUIRED if k not in r] if isinstance(r, dict) else ["an object"]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"skipping {path}: not JSON ({e})")
            continue
        if isinstance(r, dict) and r.get("kind") == "evaluation":  # --task evaluate's report: drawn on its own
            r = {EVALUATION_RENAMED.get(k, k): v for k, v in r.items()}
            missing = [k for k in EVALUATION_KEYS if k not in r]
        if isinstance(r, dict) and r.get("kind") == "labelling_loop":  # bench/loop.py's report: drawn on its own
            missing = [k for k in ("runs", "per_round", "continued") if k not in r]
        if missing:
            problems.append(f"skipping {path}: not a results file (no {', '.join(missing)})")
            continue
        r["_path"] = path
        runs.append(r)
    return runs, problems


# The study's test accuracy (bert-base-uncased, scenario, 10 epochs; ../shared/SPEC.md), by experiment name.
STUDY = {"baseline": 90.45, "LLRD only": 65.0, "warmup only": 84.1, "LLRD + warmup": 64.9, "SupCon (t=0.07)": 91.06,
         "SimCLR (t=0.1)": 84.10, "LoRA r=4": 90.08, "LoRA r=8": 90.52, "LoRA r=16": 89.48}


def markdown(text):
    """A name from the data as a markdown table cell shows it: HTML, pipes and line breaks as text."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\s+", " ", text).replace("|", "\\|").replace("`", "\\`")


def figure_text(text):
    """A name from the data as matplotlib shows it: a $ would start mathtext."""
    return str(text).replace("$", r"\$")


def flag(key, value):
    """A setting as the main.py flag that sets it."""
    return f"--{key.replace('_', '-')} {value if isinstance(value, str) else f'{value:g}'}"


def experiment(r):
    """(readable name of the run's settings, key that groups runs differing only by seed)."""
    c, task = r["config"], r["task"]
    if task in ("supcon", "simclr"):
        name = f"{'SupCon' if task == 'supcon' else 'SimCLR'} (t={c['temperature']:g})"
    elif task == "lora":
        name = f"LoRA r={c['lora_rank']}" + (" all-linear" if c.get("lora_targets") == "all-linear" else "")
    elif task == "custom":
        llrd, warm = c["llrd"] < 1, c["warmup_ratio"] > 0
        name = "LLRD + warmup" if llrd and warm else "LLRD only" if llrd else "warmup only" if warm else "custom (neither)"
    else:
        name = task
    if task in TASKS and c["lr"] != default("lr", task):
        name += f", lr {c['lr']:g}"
    if task in TASKS and c["batch_size"] != default("batch_size", task):
        name += f", batch {c['batch_size']}"
    on = techniques(r)
    if on:  # the accuracy recipe's techniques, as their flags
        name += " + " + " ".join(flag(k, v) for k, v in on.items())
    if c.get("slots"):
        name += (" + --slots" + (f" --slot-weight {c['slot_weight']:g}" if c["slot_weight"] != implied("slot_weight")
                                 else "")
                 + (" --crf" if c.get("crf") else ""))
    if c.get("freeze_embeddings"):
        name += " + --freeze-embeddings"
    if c["epochs"] != default("epochs", task):  # the study's epoch count; anything else is worth saying
        name += f", {c['epochs']} epoch{'s' if c['epochs'] > 1 else ''}"
    if not c.get("fast", True):
        name += ", study's way"
    rest = re.sub(r"-s\d+$", "", r["run_name"])  # everything else that distinguishes runs
    return name, rest


def short_name(r):
    """The experiment a run belongs to ("recipe", "recipe-no-ema", ...): the one its results name (study.py writes
    it), else, for older results, the closest of experiments.py's; with the lr and epochs it ran with where they
    are not the experiment's own. The readable long name where no experiment matches."""
    c = complete_config(r["config"])
    best = None
    for name in [r["experiment"]] if r.get("experiment") in EXPERIMENTS else EXPERIMENTS:
        # an experiment that distils takes its teachers from the command line: the run's own, if it had any
        distils = "--distill-weight" in EXPERIMENTS[name]
        if distils and not c["teachers"]:
            continue
        expected = expected_config(name, c["label"], tuple(c["teachers"] or ()) if distils else ())
        if expected is None:
            continue
        differ = {k for k in expected if k in c and k not in ("data", "model", "seed") and expected[k] != c[k]}
        if best is None or len(differ) < len(best[1]):
            best = (name, differ)
    if best is None:
        return experiment(r)[0]
    name, differ = best
    schedule = "".join(f", lr {c['lr']:.0e}".replace("e-0", "e-") if k == "lr" else f", {c['epochs']} epochs" for k in sorted(differ)
                       if k in ("lr", "epochs"))
    # other flags by name and value (teachers by their count: distillation's settings name it)
    others = [flag(k, c[k]) if not isinstance(c[k], (list, type(None))) else f"--{k} ({len(c[k] or [])})"
              for k in sorted(differ - {"lr", "epochs"})]
    return name + schedule + "".join(" " + o for o in others)


@functools.cache
def expected_config(name, label, teachers):
    """The recorded config an experiment's flags give (None where they do not parse for this label): parsed once
    per experiment, label and teachers, not once per run."""
    try:
        return recorded_config(parse_args([*EXPERIMENTS[name], *(["--teachers", ",".join(teachers)] if teachers else []),
                                           "--label", label]))
    except SystemExit:
        return None


def run_title(r):
    """The run's experiment, with its encoder where it is not the bundled one (figure titles)."""
    encoder = encoder_name(r)
    return short_name(r) + (f" [{encoder}]" if encoder != "all-MiniLM-L6-v2" else "")


def encoder_name(r):
    enc = r["environment"].get("encoder")
    name = enc["name"] if isinstance(enc, dict) else r["config"]["model"] or "all-MiniLM-L6-v2"
    return os.path.basename(os.path.normpath(name.removesuffix(" (bundled)")))


def group_runs(runs):
    """Runs that differ only by seed, as {"name", "title", "study", "runs"}; the study's number where it applies.

    Runs on different kinds of device are kept apart: their numerics differ, so their seeds are not replicates.
    """
    groups = {}
    for r in runs:
        name, key = experiment(r)
        label, device = r["config"]["label"], device_of(r)
        study = STUDY.get(name) if label == "scenario" else None
        where = [label] + [w for w, usual in ((encoder_name(r), "all-MiniLM-L6-v2"), (device, "cpu")) if w != usual]
        group = groups.setdefault((key, device), {"name": name, "title": f"{name} [{', '.join(where)}]",
                                                  "short": short_name(r), "label": label, "device": device,
                                                  "encoder": encoder_name(r), "study": study, "runs": []})
        group["runs"].append(r)
    return list(groups.values())


def accuracies(g):
    return [100 * r["test_accuracy"] for r in g["runs"]]


def table(groups):
    """Table 1: per experiment, test accuracy over seeds with its 95% t-interval, beside the study's number."""
    lines = ["| experiment | seeds | test accuracy (mean ± std) | 95% interval (t, over seeds) | macro-F1 | test loss | "
             "trainable parameters | s/epoch (median) | encoder | study (bert-base) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        rs, accs = g["runs"], accuracies(g)
        mean, low, high = t_interval(accs)
        sd = f" ± {np.std(accs, ddof=1):.2f}" if len(rs) > 1 else ""
        interval = f"{low:.2f} - {high:.2f}" if len(rs) > 1 else "(single run)"
        f1 = np.mean([100 * r["test_macro_f1"] for r in rs])
        loss = np.mean([r["test_loss"] for r in rs])
        env = rs[0]["environment"]
        # The median over the runs' epochs: on a shared machine a few slowed epochs would dominate a mean.
        secs = np.median([h["seconds"] for r in rs for h in r["history"] if h["phase"] == "classify"])
        study = f"{g['study']:.2f}%" if g["study"] is not None else ""
        lines.append(f"| {g['title']} | {len(rs)} | {mean:.2f}{sd}% | {interval} | {f1:.2f}% | {loss:.4f} | "
                     f"{env['parameters_trainable']:,} ({env['trainable_percent']:.2f}%) | {secs:.1f} | "
                     f"{encoder_name(rs[0])} | {study} |")
    return "\n".join(lines)


def device_of(r):
    """The kind of device a run trained on, with bf16 where it autocast: CPU runs in bf16 and fp32 are not replicates."""
    env = r["environment"]
    return env.get("device", "cpu") + (", bf16" if env.get("bf16") else "")


def context(r):
    """What a strategy and its baseline must share to be compared."""
    c = r["config"]
    return c["label"], c["model"], c["epochs"], c.get("fast", True), device_of(r)


def intent_correct(r):
    return np.array(r["test_predictions"]) == np.array(r["test_labels"])


def exact_match_correct(r):
    return np.array(r["test_exact_match_correct"])


def paired(base, g, title, n_boot, metric=("test_accuracy", "test_predictions", intent_correct)):
    """Group g against group base, paired on seeds and test utterances; None if they share no seed with predictions.

    A row {"title", "vs", "seeds", "delta", "low", "high", "p", "p_t"}, differences in points of metric:
    (its results key, the per-utterance key it needs, per utterance whether a run got it right).
    """
    key, needed, correct = metric
    by_seed = {r["config"]["seed"]: r for r in base["runs"]}
    pairs = [(by_seed[r["config"]["seed"]], r) for r in g["runs"] if r["config"]["seed"] in by_seed]
    if not pairs or any(needed not in r for pair in pairs for r in pair):
        return None
    boot = paired_bootstrap([correct(a) for a, _ in pairs], [correct(b) for _, b in pairs], n_boot=n_boot)
    diffs = [100 * (b[key] - a[key]) for a, b in pairs]
    return {"title": title, "vs": base["title"], "seeds": len(pairs), "delta": 100 * boot["delta"],
            "low": 100 * boot["low"], "high": 100 * boot["high"], "p": boot["p"], "p_t": paired_t(diffs)}


def holm_per_reference(rows):
    """Adds p_holm: the bootstrap p-values adjusted for the number of comparisons against each reference."""
    for ref in {r["vs"] for r in rows}:
        mine = [r for r in rows if r["vs"] == ref]
        for r, p in zip(mine, holm([r["p"] for r in mine])):
            r["p_holm"] = p
    return rows


def comparisons(groups, n_boot=10_000):
    """Each experiment against the baseline of its context (rows as paired() returns, plus p_holm).

    An experiment trained for more or fewer epochs than any baseline is compared with the baseline of the
    study's epoch count: its epochs are then part of what is compared, and its name says how many.
    """
    baselines = {context(g["runs"][0]): g for g in groups if is_study_baseline(g)}
    study_epochs = default("epochs")

    def baseline_of(g):
        label, model, epochs, *rest = context(g["runs"][0])
        return baselines.get((label, model, epochs, *rest)) or baselines.get((label, model, study_epochs, *rest))

    pairs = [(baseline_of(g), g) for g in groups]
    rows = [paired(base, g, g["title"], n_boot) for base, g in pairs if base not in (None, g)]
    return holm_per_reference([r for r in rows if r])


def joint(g):
    """Whether a group trained MASSIVE's joint task (a slot head)."""
    return bool(g["runs"][0]["config"].get("slots"))


def is_study_baseline(g):
    """The study's baseline: the baseline task at its own lr and batch size, intent or scenario only."""
    c = g["runs"][0]["config"]
    return (g["runs"][0]["task"] == "baseline" and not joint(g) and c["lr"] == default("lr")
            and c["batch_size"] == default("batch_size"))


SLOT_SETTINGS = ("slots", "slot_weight", "crf")


def slot_objective_comparisons(groups, n_boot=10_000):
    """Intent accuracy of each joint experiment against the intent-only runs of the same settings but the slot
    head (same context, every other setting equal): what the slot objective itself does to intent."""
    def settings(g):
        c = complete_config(g["runs"][0]["config"])
        return context(g["runs"][0]), {k: v for k, v in c.items() if k not in (*SLOT_SETTINGS, "seed")}

    alone = [g for g in groups if not joint(g)]
    rows = [paired(base, g, g["title"], n_boot) for g in groups if joint(g)
            for base in alone if settings(base) == settings(g)]
    return holm_per_reference([r for r in rows if r])


# The joint baseline (baseline + --slots), the setting the later joint screens started from, the slot weight's pick,
# which the CRF and typing-noise screens change one thing of, and the CRF, which the screens after it change.
JOINT_REFERENCES = ("joint", "joint-lr1e-4", "joint-lr1e-4-slots4", "joint-lr1e-4-slots4-crf",
                    "joint-lr1e-4-slots4-crf-custom")


def joint_comparisons(groups, n_boot=10_000):
    """Each joint experiment against each reference of its context (JOINT_REFERENCES, never against itself or a
    later reference), on exact match."""
    rows = []
    for i, ref in enumerate(JOINT_REFERENCES):
        for base in (g for g in groups if joint(g) and g["short"] == ref):
            rows += [paired(base, g, g["title"], n_boot,
                            ("test_exact_match", "test_exact_match_correct", exact_match_correct))
                     for g in groups if joint(g) and g["short"] not in JOINT_REFERENCES[:i + 1]
                     and context(g["runs"][0]) == context(base["runs"][0])]
    return holm_per_reference([r for r in rows if r])


# MASSIVE's en-US test results (exact match, slot F1, intent accuracy), models trained on all 51 locales.
ANCHORS = {"XLM-R base (270M)": (69.7, 78.7, 88.3), "mT5 base, encoder only (~580M)": (72.0, 80.4, 89.0),
           "mT5 base, text to text (~580M)": (72.5, 81.6, 87.9)}
JOINT_METRICS = (("test_exact_match", "exact match"), ("test_slot_f1", "slot F1"), ("test_accuracy", "intent"))


def joint_table(groups):
    """MASSIVE's three numbers per joint experiment (mean ± std over seeds), with the paper's anchors below."""
    lines = ["| experiment | seeds | exact match | slot F1 | intent accuracy | s/epoch (median) |", "|---|---|---|---|---|---|"]
    for g in (g for g in groups if joint(g)):
        cells = []
        for key, _ in JOINT_METRICS:
            values = [100 * r[key] for r in g["runs"]]
            cells.append(f"{np.mean(values):.2f}" + (f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""))
        secs = np.median([h["seconds"] for r in g["runs"] for h in r["history"] if h["phase"] == "classify"])
        lines.append(f"| {g['title']} | {len(g['runs'])} | {' | '.join(cells)} | {secs:.1f} |")
    lines += [f"| {name}, MASSIVE paper | | {em} | {f1} | {acc} | |" for name, (em, f1, acc) in ANCHORS.items()]
    return "\n".join(lines)


def techniques(r):
    """The accuracy-recipe flags a run turned on, as {config key: value} (the teachers' folders left out)."""
    c = complete_config(r["config"])
    return {k: c[k] for k, off in RECIPE_SETTINGS.items() if c[k] != off and k != "teachers"}


def ablation(groups, n_boot=10_000):
    """Each recipe (custom, 2+ techniques) against itself minus one technique, same context and schedule."""
    def schedule(g):
        c = g["runs"][0]["config"]
        return context(g["runs"][0]), c["lr"], c["llrd"], c["warmup_ratio"]

    custom = [g for g in groups if g["runs"][0]["task"] == "custom"]
    rows = []
    for full in custom:
        on = techniques(full["runs"][0])
        if len(on) < 2:
            continue
        for g in custom:
            mine = techniques(g["runs"][0])
            dropped = set(on) - set(mine)
            if schedule(g) == schedule(full) and len(dropped) == 1 and mine.items() <= on.items():
                k = dropped.pop()
                rows.append(paired(full, g, f"without {flag(k, on[k])}", n_boot))
    return holm_per_reference([r for r in rows if r])


def comparison_table(rows):
    lines = ["| experiment | vs | paired seeds | difference (points) | 95% interval (bootstrap over utterances) | "
             "p (bootstrap) | p (Holm) | p (paired t over seeds) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p_t = f"{r['p_t']:.3f}" if r["p_t"] is not None else "(one seed)"
        lines.append(f"| {r['title']} | {r['vs']} | {r['seeds']} | {r['delta']:+.2f} | "
                     f"{r['low']:+.2f} to {r['high']:+.2f} | {r['p']:.4f} | {r['p_holm']:.4f} | {p_t} |")
    return "\n".join(lines)


def plot_run(r, path):
    """Accuracy and loss per epoch; epochs of both phases on one axis, the phase change marked."""
    h = r["history"]
    x = np.arange(1, len(h) + 1)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    cls = [(i, row) for i, row in zip(x, h) if row["phase"] == "classify"]
    ax_acc.plot([i for i, _ in cls], [row["train_accuracy"] for _, row in cls], "o-", label="train")
    ax_acc.plot([i for i, _ in cls], [row["val_accuracy"] for _, row in cls], "s-", label="validation")
    for key, name in (("val_slot_f1", "validation slot F1"), ("val_exact_match", "validation exact match")):
        if cls and key in cls[0][1]:  # joint runs
            ax_acc.plot([i for i, _ in cls], [row[key] for _, row in cls], "^--", label=name)
    con = [(i, row) for i, row in zip(x, h) if row["phase"] == "contrastive"]
    if con:  # a different loss: its own line, not joined to cross-entropy
        ax_loss.plot([i for i, _ in con], [row["train_loss"] for _, row in con], "^-", color="tab:gray",
                     label="train (contrastive)")
    ax_loss.plot([i for i, _ in cls], [row["train_loss"] for _, row in cls], "o-", color="tab:blue", label="train")
    ax_loss.plot([i for i, _ in cls], [row["val_loss"] for _, row in cls], "s-", color="tab:orange",
                 label="validation")
    if con:
        for ax in (ax_acc, ax_loss):
            ax.axvline(len(con) + 0.5, color="grey", ls="--", lw=1)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{run_title(r)}: accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(r["run_name"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interval_panel(ax, rows, xlabel, lines=()):
    """One row per (label, values, study number or None), the first at the top: the mean with its 95% t-interval
    as an error bar, the study's number as a red diamond (named in the label instead where it lies far off the
    data), the axis zoomed to the data. lines: (x, name) reference lines, left to the caller to name in a legend."""
    spread = [v for _, values, _ in rows for v in t_interval(values)]
    lo, hi = min(spread + [x for x, _ in lines]), max(spread + [x for x, _ in lines])
    pad = max(0.25, 0.08 * (hi - lo))
    lo, hi = lo - pad, hi + 3 * pad  # room on the right for the numbers
    labels = []
    for y, (label, values, study) in zip(range(len(rows) - 1, -1, -1), rows):
        mean, low, high = t_interval(values)
        single = len(values) == 1
        ax.errorbar(mean, y, xerr=None if single else [[mean - low], [high - mean]], fmt="o", ms=4,
                    color="tab:gray" if single else "tab:blue", capsize=3)
        ax.annotate(f"{mean:.2f}" + (" (1 run)" if single else ""), (mean if single else high, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7)
        if study is not None and lo <= study <= hi:
            ax.plot(study, y, "D", color="tab:red", ms=4)
        elif study is not None:
            label += f" (study: {study:.1f})"
        labels.append(label)
    for (x, name), color, style in zip(lines, ("tab:red", "tab:purple", "tab:green"), ("--", "-.", ":")):
        ax.axvline(x, color=color, ls=style, lw=1.1, label=name)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def plot_comparison(groups, path):
    """Test accuracy per experiment (mean, 95% t-interval over seeds), one panel per label, kind of device and
    encoder, experiments by their study.py names (the baseline first, then the most accurate), the study's
    numbers as red diamonds."""
    panels = {}
    for g in groups:
        panels.setdefault((g["label"], g["device"], g["encoder"]), []).append(g)
    heights = [0.9 + 0.24 * len(gs) for gs in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), gridspec_kw={"height_ratios": heights},
                             squeeze=False)
    for ax, ((label, device, encoder), gs) in zip(axes[:, 0], panels.items()):
        gs = sorted(gs, key=lambda g: (g["short"] != "baseline", -np.mean(accuracies(g))))
        interval_panel(ax, [(g["short"], accuracies(g), g["study"]) for g in gs], f"{label} test accuracy (%)")
        ax.set_title(f"{label}, {device}, {encoder}: mean and 95% t-interval over seeds; red: the study (bert-base)",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def joint_tags(g):
    """What sets a joint group apart beyond its experiment: the label, the encoder where it is not the bundled one
    (the same experiment on another encoder is another row), and the kind of device."""
    return [g["label"], *([g["encoder"]] if g["encoder"] != "all-MiniLM-L6-v2" else []), g["device"]]


def plot_joint(groups, path):
    """MASSIVE's three numbers per joint experiment (mean, 95% t-interval over seeds), the paper's en-US results
    as reference lines; the experiments run on several seeds first, then the single-seed screens, each by exact
    match."""
    gs = sorted((g for g in groups if joint(g)),
                key=lambda g: (len(g["runs"]) == 1, -np.mean([r["test_exact_match"] for r in g["runs"]])))
    fig, axes = plt.subplots(1, 3, figsize=(14, 2.6 + 0.35 * len(gs)), sharey=True)
    for i, (ax, (key, name)) in enumerate(zip(axes, JOINT_METRICS)):
        rows = [(f"{g['short']} [{', '.join(joint_tags(g))}]", [100 * r[key] for r in g["runs"]], None) for g in gs]
        interval_panel(ax, rows, f"test {name} (%)", [(v[i], n.split(" (")[0]) for n, v in ANCHORS.items()])
        ax.set_title(name, fontsize=9)
    fig.suptitle("MASSIVE's joint task (en-US test): mean and 95% t-interval over seeds; lines: the MASSIVE paper",
                 fontsize=9)
    handles, names = axes[0].get_legend_handles_labels()  # one legend: over a panel it would hide the points
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_slot_f1(per_type, path, title):
    """Per-slot F1 ({slot type: f1, support}) of one joint run's test or an evaluation's split, slots sorted by how
    often they occur."""
    per = sorted(per_type.items(), key=lambda kv: (-kv[1]["support"], kv[0]))
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.2 * len(per)))
    y = np.arange(len(per))[::-1]
    ax.barh(y, [100 * v["f1"] for _, v in per], color="tab:blue")
    ax.set_yticks(y, [f"{figure_text(name)} ({v['support']})" for name, v in per], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("F1 (%)")
    ax.set_title(f"{title}: per-slot F1 (spans in brackets), most frequent first", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(r, path, bins=15):
    """Reliability diagram of the saved (best) model on test: accuracy per confidence bin, before and after
    temperature scaling, with the ECE of each."""
    cal = r["calibration"]
    correct = np.array(cal["test_correct"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    for key, ece_key, style, name in (("test_confidence", "test_ece", "o-", "raw"),
                                      ("test_confidence_calibrated", "test_ece_calibrated", "s-",
                                       f"T = {cal['temperature']:.2f}")):
        conf = np.array(cal[key])
        which = np.minimum((conf * bins).astype(int), bins - 1)
        xs, ys = [], []
        for b in range(bins):
            if (which == b).any():
                xs.append(conf[which == b].mean())
                ys.append(correct[which == b].mean())
        ax.plot(xs, ys, style, label=f"{name} (ECE {100 * cal[ece_key]:.2f}%)")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{experiment(r)[0]}: test reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class(labels, gold, pred):
    """Confusion matrix (rows: true, columns: predicted) and per-class precision, recall, F1, support."""
    gold, pred = np.array(gold), np.array(pred)
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(cm, (gold, pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return cm, precision, recall, f1, cm.sum(1)


def plot_confusion(labels, cm, path, title):
    size = max(6, 0.3 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), map(figure_text, labels), rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), map(figure_text, labels), fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_report(labels, gold, pred, out_dir, name, title):
    """The confusion matrix figure and the per-class scores (markdown) of a run's test or an evaluation's split."""
    cm, precision, recall, f1, support = per_class(labels, gold, pred)
    plot_confusion(labels, cm, os.path.join(out_dir, f"{name}-confusion.png"), title)
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    rows += [f"| {markdown(label)} | {100 * p_:.1f} | {100 * r_:.1f} | {100 * f_:.1f} | {n} |"
             for label, p_, r_, f_, n in zip(labels, precision, recall, f1, support)]
    seen = (support > 0) | (cm.sum(0) > 0)  # as in training's macro-F1: classes absent from both are skipped
    rows.append(f"| macro average | {100 * precision[seen].mean():.1f} | {100 * recall[seen].mean():.1f} | "
                f"{100 * f1[seen].mean():.1f} | {support.sum()} |")
    with open(os.path.join(out_dir, f"{name}-per-class.md"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"\nper-class scores of {name}:\n" + "\n".join(rows))


def plot_evaluation(e, out_dir):
    """An evaluation's (--task evaluate) confusion matrix, per-class scores and per-slot F1."""
    name = os.path.splitext(os.path.basename(e["_path"]))[0]  # evaluate-<run>-<data>-<split>, as evaluate named it
    title = f"{e['run_name']} on {e['data']['file']} ({e['split']})"
    per_class_report(e["labels"], e["gold_labels"], e["predictions"], out_dir, name, f"{title}: confusion matrix")
    if e.get("slot_f1_per_type"):
        plot_slot_f1(e["slot_f1_per_type"], os.path.join(out_dir, f"{name}-slots.png"), title)


LOOP_METRICS = {"test_accuracy": "intent accuracy", "test_slot_f1": "slot F1", "test_exact_match": "exact match"}


def loop_curves(report, metric="test_accuracy"):
    """{strategy: {round: {seed: (labelled, metric)}}} of a labelling loop's runs."""
    curves = {}
    for e in report["runs"]:
        curves.setdefault(e["strategy"], {}).setdefault(e["round"], {})[e["seed"]] = (e["labelled"], e[metric])
    return curves


def labels_to_reach(xs, ys, target):
    """The labelled count at which the curve (xs, ys) first reaches target, linearly between rounds; None if never."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 >= target:
            return x0
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return xs[-1] if ys and ys[-1] >= target else None


def seconds_to(history, target, key="val_accuracy"):
    """(training seconds, epochs summed; the epoch) at which the validation number key first reaches target, or None.
    Epochs count alike on a busy and a free machine, seconds do not."""
    total = 0.0
    for h in history:
        total += h["seconds"]
        if h[key] >= target:
            return total, h["epoch"]
    return None


def plot_loop(report, out_dir):
    """A labelling loop's (bench/loop.py) learning curves, each test metric it has against labelled utterances per
    strategy (mean over seeds, each seed faint), and its markdown: per metric and round the paired difference over
    seeds and the labels suggest needed to reach random's last round; then continued against from-scratch training."""
    name = os.path.splitext(os.path.basename(report["_path"]))[0]
    metrics = [m for m in LOOP_METRICS if all(e.get(m) is not None for e in report["runs"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), squeeze=False)
    md = []
    for metric, ax in zip(metrics, axes[0]):
        curves = loop_curves(report, metric)
        means = {}
        for strategy, color in (("random", "tab:gray"), ("suggest", "tab:blue")):
            rounds = sorted(curves.get(strategy, {}))
            seeds = sorted(set.intersection(*(set(curves[strategy][k]) for k in rounds))) if rounds else []
            if not seeds:
                continue
            xs = [float(np.mean([curves[strategy][k][s][0] for s in seeds])) for k in rounds]
            ys = [float(np.mean([curves[strategy][k][s][1] for s in seeds])) for k in rounds]
            means[strategy] = (xs, ys)
            for s in seeds:
                ax.plot(xs, [100 * curves[strategy][k][s][1] for k in rounds], color=color, alpha=0.25, lw=1)
            ax.plot(xs, [100 * y for y in ys], "o-", color=color, lw=2,
                    label=f"{strategy} (mean of {len(seeds)} seed{'s' * (len(seeds) > 1)})")
        ax.set_xlabel("labelled training utterances")
        ax.set_ylabel(f"test {LOOP_METRICS[metric]} (%)")
        ax.set_title(figure_text(f"MASSIVE {report['label']}: {report['per_intent']} per intent, then "
                                 f"+{report['per_round']} a round"))
        ax.grid(alpha=0.3)
        need = None
        if {"random", "suggest"} <= set(means):
            (rx, ry), (gx, gy) = means["random"], means["suggest"]
            need, added = labels_to_reach(gx, gy, ry[-1]), rx[-1] - rx[0]
            ax.axhline(100 * ry[-1], color="tab:gray", ls=":", lw=1)
            if need is not None:
                ax.plot([need], [100 * ry[-1]], "x", color="tab:blue", ms=9, mew=2,
                        label=f"suggest at random's last: {need - gx[0]:,.0f} labels added, not {added:,.0f}")
        ax.legend()
        if len(metrics) > 1:
            md += [f"**Test {LOOP_METRICS[metric]}**", ""]
        md += ["| round | labelled | random | suggest | suggest - random | paired t p |", "|---|---|---|---|---|---|"]
        for k in sorted(set(curves.get("random", {})) & set(curves.get("suggest", {}))):
            seeds = sorted(set(curves["random"][k]) & set(curves["suggest"][k]))
            r = [100 * curves["random"][k][s][1] for s in seeds]
            g = [100 * curves["suggest"][k][s][1] for s in seeds]
            p = paired_t(np.subtract(g, r)) if k else None
            md.append(f"| {k} | {curves['suggest'][k][seeds[0]][0]:,} | {np.mean(r):.2f} ± {np.std(r):.2f} | "
                      f"{np.mean(g):.2f} ± {np.std(g):.2f} | {np.mean(g) - np.mean(r):+.2f} | "
                      f"{'' if p is None else f'{p:.3f}'} |")
        if {"random", "suggest"} <= set(means):
            md += ["", f"Random's last round: {100 * ry[-1]:.2f}% with {added:,.0f} labels added. Suggest " +
                   (f"reaches it with {need - gx[0]:,.0f} added ({100 * (need - gx[0]) / added:.0f}% of random's)."
                    if need is not None else "does not reach it in these rounds.")]
        md.append("")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{name}.png"), dpi=120)
    plt.close(fig)
    for c in report["continued"]:
        scratch = next(e for e in report["runs"] if (e["seed"], e["strategy"], e["round"]) ==
                       (c["seed"], c["strategy"], c["round"]))
        key = "val_exact_match" if "val_exact_match" in c else "val_accuracy"  # what picked the best epoch
        test = "test_exact_match" if key == "val_exact_match" else "test_accuracy"
        target = min(scratch[key], c[key])
        t_scratch, t_cont = seconds_to(scratch["history"], target, key), seconds_to(c["history"], target, key)
        md.append(f"- seed {c['seed']}, round {c['round']}, {LOOP_METRICS[test]}: from scratch best validation "
                  f"{100 * scratch[key]:.2f} (test {100 * scratch[test]:.2f}), continued from round "
                  f"{c['init_from_round']} {100 * c[key]:.2f} (test {100 * c[test]:.2f}); {100 * target:.2f} "
                  f"reached at epoch {t_scratch[1]} ({t_scratch[0]:.0f} s of training) from scratch, epoch "
                  f"{t_cont[1]} ({t_cont[0]:.0f} s) continued")
    text = "\n".join(md).strip()
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text + "\n")
    print(f"\n{name}:\n{text}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results JSON files written by main.py")
    p.add_argument("--out-dir", default="results/plots", help="where PNG and markdown files go")
    p.add_argument("--run", help="run name for the confusion matrix and per-class scores (default: most accurate)")
    args = p.parse_args(argv)

    runs, problems = load_results(args.files)
    for msg in problems:
        print(msg, file=sys.stderr)
    if not runs:
        print("error: no results files to plot", file=sys.stderr)
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    for e in (r for r in runs if r.get("kind") == "evaluation"):
        plot_evaluation(e, args.out_dir)
    for e in (r for r in runs if r.get("kind") == "labelling_loop"):
        plot_loop(e, args.out_dir)
    runs = [r for r in runs if r.get("kind") not in ("evaluation", "labelling_loop")]
    if not runs:
        return 1 if problems else 0
    runs.sort(key=lambda r: r["run_name"])
    for r in runs:
        plot_run(r, os.path.join(args.out_dir, f"{r['run_name']}.png"))
    groups = group_runs(runs)
    plot_comparison(groups, os.path.join(args.out_dir, "comparison.png"))
    md = table(groups)
    seconds = sum(h["seconds"] for r in runs for h in r["history"])
    md += (f"\n\nTraining time of these {len(runs)} runs: {seconds / 3600:.1f} h ({seconds:,.0f} s, their epochs' "
           "seconds summed; evaluation and start-up not included).")
    rows = comparisons(groups)
    if rows:
        md += "\n\nPaired against the baseline on the same seeds and test utterances:\n\n" + comparison_table(rows)
    rows = ablation(groups)
    if rows:
        md += ("\n\nAblation: each accuracy recipe without one of its techniques, paired against the full recipe "
               "(difference = without - with: negative where the technique helps):\n\n" + comparison_table(rows))
    if any(joint(g) for g in groups):
        md += "\n\nMASSIVE's joint task (intent + slots), test, mean ± std over seeds:\n\n" + joint_table(groups)
        plot_joint(groups, os.path.join(args.out_dir, "joint.png"))
        rows = joint_comparisons(groups)
        if rows:
            md += ("\n\nExact match, paired against each of " + ", ".join(f"`{n}`" for n in JOINT_REFERENCES)
                   + " on the same seeds and test utterances:\n\n" + comparison_table(rows))
        rows = slot_objective_comparisons(groups)
        if rows:
            md += ("\n\nIntent accuracy, each joint experiment paired against intent-only runs of the same settings "
                   "without the slot head (what the slot objective does to intent):\n\n" + comparison_table(rows))
        best = max((r for r in runs if r["config"].get("slots")), key=lambda r: r["best_val_exact_match"])
        plot_slot_f1(best["test_slot_f1_per_type"], os.path.join(args.out_dir, f"{best['run_name']}-slots.png"),
                     f"{run_title(best)}, seed {best['config']['seed']}, test")
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)

    chosen = [r for r in runs if r["run_name"] == args.run] if args.run else [max(runs, key=lambda r: r["test_accuracy"])]
    if not chosen:
        print(f"error: --run {args.run}: no such run among the files", file=sys.stderr)
        return 1
    r = chosen[0]
    if "test_labels" in r and "test_predictions" in r:
        per_class_report(r["labels"], r["test_labels"], r["test_predictions"], args.out_dir, r["run_name"],
                         f"{experiment(r)[0]}: test confusion matrix")
    else:
        print(f"{r['run_name']} has no test predictions: no confusion matrix", file=sys.stderr)
    if "calibration" in r:
        plot_reliability(r, os.path.join(args.out_dir, f"{r['run_name']}-reliability.png"))
    print(f"\nwrote {len(runs)} run figures, comparison.png and table.md to {args.out_dir}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
