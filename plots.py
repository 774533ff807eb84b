"""Figures and tables from results files; never retrains.

    python plots.py results/*.json [--out-dir results/plots] [--run RUN_NAME]

Writes, for each run, accuracy and loss per epoch (both phases for supcon and
simclr); one comparison of test accuracy across experiments (runs that differ
only by seed are grouped, with their spread as error bars); the study's Table 1
as markdown (printed and saved); and for one run (--run, default the most
accurate) a confusion matrix and per-class precision, recall and F1.
"""
import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REQUIRED = ("run_name", "task", "config", "environment", "history", "test_loss", "test_accuracy")


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
        if missing:
            problems.append(f"skipping {path}: not a results file (no {', '.join(missing)})")
            continue
        r["_path"] = path
        runs.append(r)
    return runs, problems


def experiment(r):
    """A readable name for the settings of a run, seed left out."""
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
    if c["epochs"] != 10:  # the study's epoch count; anything else is worth saying
        name += f", {c['epochs']} epoch{'s' if c['epochs'] > 1 else ''}"
    if not c.get("fast", True):
        name += ", study's way"
    rest = re.sub(r"-s\d+$", "", r["run_name"])  # everything else that distinguishes runs
    return f"{name} [{c['label']}]", rest


def group_runs(runs):
    groups = {}
    for r in runs:
        title, key = experiment(r)
        groups.setdefault(key, {"title": title, "runs": []})["runs"].append(r)
    return list(groups.values())


def mean_std(xs):
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def table(groups):
    lines = ["| experiment | seeds | test loss | test accuracy | macro-F1 | trainable parameters | s/epoch | encoder |",
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        rs = g["runs"]
        acc, acc_sd = mean_std([100 * r["test_accuracy"] for r in rs])
        loss, _ = mean_std([r["test_loss"] for r in rs])
        f1, _ = mean_std([100 * r.get("test_macro_f1", float("nan")) for r in rs])
        env = rs[0]["environment"]
        spread = f" ± {acc_sd:.2f}" if len(rs) > 1 else ""
        secs = np.mean([r["seconds_per_epoch"] for r in rs])
        encoder = os.path.basename(os.path.normpath(rs[0]["config"]["model"] or "all-MiniLM-L6-v2"))
        lines.append(f"| {g['title']} | {len(rs)} | {loss:.4f} | {acc:.2f}{spread}% | {f1:.2f}% | "
                     f"{env['parameters_trainable']:,} ({env['trainable_percent']:.2f}%) | {secs:.1f} | {encoder} |")
    return "\n".join(lines)


def plot_run(r, path):
    """Accuracy and loss per epoch; epochs of both phases on one axis, the phase change marked."""
    h = r["history"]
    x = np.arange(1, len(h) + 1)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    cls = [(i, row) for i, row in zip(x, h) if row["phase"] == "classify"]
    ax_acc.plot([i for i, _ in cls], [row["train_accuracy"] for _, row in cls], "o-", label="train")
    ax_acc.plot([i for i, _ in cls], [row["val_accuracy"] for _, row in cls], "s-", label="validation")
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
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{experiment(r)[0]}: accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(r["run_name"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comparison(groups, path):
    titles = [g["title"] for g in groups]
    stats = [mean_std([100 * r["test_accuracy"] for r in g["runs"]]) for g in groups]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4.5))
    ax.bar(range(len(groups)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="tab:blue")
    for i, (m, _) in enumerate(stats):
        ax.text(i, m + 0.3, f"{m:.2f}", ha="center", fontsize=8)
    lo = min(m for m, _ in stats)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_xticks(range(len(groups)), titles, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy per experiment (error bars: std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class(r):
    """Confusion matrix (rows: true, columns: predicted) and per-class precision, recall, F1, support."""
    labels, gold, pred = r["labels"], np.array(r["test_labels"]), np.array(r["test_predictions"])
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(cm, (gold, pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return cm, precision, recall, f1, cm.sum(1)


def plot_confusion(r, cm, path):
    labels = r["labels"]
    size = max(6, 0.3 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"{experiment(r)[0]}: test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    runs.sort(key=lambda r: r["run_name"])
    for r in runs:
        plot_run(r, os.path.join(args.out_dir, f"{r['run_name']}.png"))
    groups = group_runs(runs)
    plot_comparison(groups, os.path.join(args.out_dir, "comparison.png"))
    md = table(groups)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)

    chosen = [r for r in runs if r["run_name"] == args.run] if args.run else [max(runs, key=lambda r: r["test_accuracy"])]
    if not chosen:
        print(f"error: --run {args.run}: no such run among the files", file=sys.stderr)
        return 1
    r = chosen[0]
    if "test_labels" in r and "test_predictions" in r:
        cm, precision, recall, f1, support = per_class(r)
        plot_confusion(r, cm, os.path.join(args.out_dir, f"{r['run_name']}-confusion.png"))
        rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        rows += [f"| {name} | {100 * p_:.1f} | {100 * r_:.1f} | {100 * f_:.1f} | {n} |"
                 for name, p_, r_, f_, n in zip(r["labels"], precision, recall, f1, support)]
        seen = (support > 0) | (cm.sum(0) > 0)  # as in training's macro-F1: classes absent from both are skipped
        rows.append(f"| macro average | {100 * precision[seen].mean():.1f} | {100 * recall[seen].mean():.1f} | "
                    f"{100 * f1[seen].mean():.1f} | {support.sum()} |")
        with open(os.path.join(args.out_dir, f"{r['run_name']}-per-class.md"), "w") as f:
            f.write("\n".join(rows) + "\n")
        print(f"\nper-class scores of {r['run_name']}:\n" + "\n".join(rows))
    else:
        print(f"{r['run_name']} has no test predictions: no confusion matrix", file=sys.stderr)
    print(f"\nwrote {len(runs)} run figures, comparison.png and table.md to {args.out_dir}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
