"""One lever off and on, timed in alternation in one process on the same batches: what it changes per step when
this shared machine drifts by more than the lever (10-20% within minutes).

    python bench/alternate.py --data ../shared/data/massive/en-US.jsonl --lever freeze-embeddings
    python bench/alternate.py --data ... --lever numpy-dropout --freeze-embeddings
    python bench/alternate.py --data ... --lever freeze-embeddings --label intent --slots --lr 1e-4 \\
        --batch-size 32 --slot-weight 4 --crf

Any main.py flag sets up the run as main.py would. After warm-up steps, each
round trains the same --steps batches with the lever off and on (in turns:
off first in even rounds, on first in odd ones), so both arms see the same
tokens and the same moment of the machine. A lever is switched in place:
freeze-embeddings stops the word-embedding table's gradient (the fused AdamW
skips a parameter without one), numpy-dropout swaps torch's nn.Dropout for
model.CPUDropout. Writes results/bench/alternate-<lever>-<run name>.json.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # step_profile, beside this file (after the project)
from arguments import parse_args  # noqa: E402
from fileio import write_json  # noqa: E402
from model import CPUDropout, set_dropout  # noqa: E402
from train import phase_optim, phases, set_up, train_epoch  # noqa: E402
from utils import cpu_model, setup_logging  # noqa: E402
from step_profile import steps_of  # noqa: E402


def freeze(run, on):
    run.net.encoder.get_input_embeddings().weight.requires_grad_(not on)


def numpy_dropout(run, on):
    set_dropout(run.net, CPUDropout if on else torch.nn.Dropout)


LEVERS = {"freeze-embeddings": freeze, "numpy-dropout": numpy_dropout}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lever", required=True, choices=tuple(LEVERS))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=40, help="batches per round, trained once per arm")
    p.add_argument("--warm-up", type=int, default=20, help="untimed steps first")
    p.add_argument("--out", default=None,
                   help="results JSON (default: results/bench/alternate-<lever>-<run name>.json)")
    args, rest = p.parse_known_args(argv)
    setup_logging()
    cfg = parse_args([*rest, "--no-save"])
    if args.lever == "freeze-embeddings" and cfg.freeze_embeddings:
        sys.exit("error: --lever freeze-embeddings switches the table itself: leave out --freeze-embeddings")
    if args.lever == "numpy-dropout" and (torch.cuda.is_available() or not cfg.fast):
        sys.exit("error: --lever numpy-dropout is the CPU fast path's: it needs a CPU and --fast")
    run = set_up(cfg)
    phase = next(ph for ph in phases(cfg) if ph.name == "classify")
    optim = phase_optim(run, phase)  # over the table too, unless the run froze it
    batches = steps_of(run.loaders["train"], args.warm_up + args.steps)
    warm, timed = batches[:args.warm_up], batches[args.warm_up:]
    train_epoch(run.model, warm, phase.step, optim, run, "warm-up")
    ms = {"off": [], "on": []}
    for r in range(args.rounds):
        for arm in ("off", "on") if r % 2 == 0 else ("on", "off"):
            LEVERS[args.lever](run, arm == "on")
            t = time.perf_counter()
            train_epoch(run.model, timed, phase.step, optim, run, f"{arm} {r}")
            ms[arm].append(1000 * (time.perf_counter() - t) / args.steps)
    off, on = statistics.mean(ms["off"]), statistics.mean(ms["on"])
    faster = sum(b < a for a, b in zip(ms["off"], ms["on"]))
    print(f"{cfg.run_name} on {cpu_model()}, bf16 autocast {run.amp}, --lever {args.lever}, ms/step per round:")
    for arm in ("off", "on"):
        print(f"  {arm:3s} " + " ".join(f"{x:6.1f}" for x in ms[arm]) + f"   mean {statistics.mean(ms[arm]):.1f}")
    print(f"change {100 * (on / off - 1):+.1f}%; on was faster in {faster} of {args.rounds} rounds")
    out = args.out or f"results/bench/alternate-{args.lever}-{cfg.run_name}.json"
    write_json(out, {"run_name": cfg.run_name, "lever": args.lever, "machine": cpu_model(),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": run.amp,
                     "rounds": args.rounds, "steps": args.steps, "ms_per_step": ms, "mean_off": off, "mean_on": on,
                     "change": on / off - 1, "rounds_on_faster": faster})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
