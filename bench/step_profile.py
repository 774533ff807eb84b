"""Where a training step's time goes: torch.profiler over steps of the project's own loop (train.train_epoch).

    python bench/step_profile.py --data ../shared/data/massive/en-US.jsonl                       # the baseline
    python bench/step_profile.py --data ... --freeze-embeddings                                  # a lever on
    python bench/step_profile.py --data ... --label intent --slots --lr 1e-4 --batch-size 32 --slot-weight 4 --crf

Any main.py flag sets up the run as main.py would (data, model, loaders,
bf16, the classification phase's optimizer). After warm-up steps it times
--steps steps without the profiler (the ms/step to trust: profiling slows each
op), then profiles as many more and prints the operators with the most time of
their own, per step, and the loop's share outside them. Writes
results/bench/profile-<run name>.json.
"""
import argparse
import itertools
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arguments import parse_args  # noqa: E402
from fileio import write_json  # noqa: E402
from train import phase_optim, phases, set_up, train_epoch  # noqa: E402
from utils import cpu_model, setup_logging  # noqa: E402


def steps_of(loader, n):
    """n batches of the training loader, as train_epoch takes them (its epochs cycle)."""
    return list(itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), n))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="timed steps, then as many profiled ones")
    p.add_argument("--warm-up", type=int, default=20, help="untimed steps first")
    p.add_argument("--top", type=int, default=15, help="operators listed")
    p.add_argument("--out", default=None, help="results JSON (default: results/bench/profile-<run name>.json)")
    args, rest = p.parse_known_args(argv)
    setup_logging()
    cfg = parse_args([*rest, "--no-save"])
    run = set_up(cfg)
    phase = next(ph for ph in phases(cfg) if ph.name == "classify")
    optim = phase_optim(run, phase)
    batches = steps_of(run.loaders["train"], args.warm_up + 2 * args.steps)
    warm, timed, profiled = (batches[:args.warm_up], batches[args.warm_up:args.warm_up + args.steps],
                             batches[args.warm_up + args.steps:])
    train_epoch(run.model, warm, phase.step, optim, run, "warm-up")
    t = time.perf_counter()
    train_epoch(run.model, timed, phase.step, optim, run, "timed")
    ms_per_step = 1000 * (time.perf_counter() - t) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        train_epoch(run.model, profiled, phase.step, optim, run, "profiled")
        profiled_ms = 1000 * (time.perf_counter() - t) / args.steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [{"name": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / args.steps,
            "calls_per_step": e.count / args.steps} for e in events if e.self_cpu_time_total > 0]
    in_ops = sum(o["self_ms_per_step"] for o in ops)
    print(f"{cfg.run_name} on {cpu_model()}, bf16 autocast {run.amp}: {ms_per_step:.1f} ms/step "
          f"({profiled_ms:.1f} under the profiler; operators' own time {in_ops:.1f})")
    print(f"{'operator':48s} {'ms/step':>8s} {'share':>6s} {'calls/step':>10s}")
    for o in ops[:args.top]:
        print(f"{o['name'][:48]:48s} {o['self_ms_per_step']:8.2f} {100 * o['self_ms_per_step'] / in_ops:5.1f}% "
              f"{o['calls_per_step']:10.1f}")
    out = args.out or f"results/bench/profile-{cfg.run_name}.json"
    write_json(out, {"run_name": cfg.run_name, "machine": cpu_model(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "bf16": run.amp, "steps": args.steps,
                     "ms_per_step": ms_per_step, "profiled_ms_per_step": profiled_ms, "top": ops[:args.top]})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
