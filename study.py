"""The whole study in one command: every experiment x seed as a Ray task, resumable, ending in the report.

    python study.py --data ../shared/data/massive/en-US.jsonl                  # 9 experiments x 3 seeds
    python study.py --experiments baseline --label intent --data ...           # one experiment, 3 seeds
    python study.py --experiments mean-pooling,augment --seeds 42 --data ...  # screen accuracy-recipe candidates
    python study.py --experiments recipe --data ...                            # the accuracy recipe, 3 seeds
    python study.py --experiments joint,joint-lr1e-4 --label intent --data ... # intent + slots, 3 seeds
    python study.py --list --data ... > grid.txt                               # plain main.py commands, no Ray
    python study.py --address HOST:6379 --gpus-per-run 0.25 --data ...         # an existing cluster

Each run is `python main.py ...` in a subprocess with its own log under
logs/. A run whose results file already holds the same settings and data is
skipped; an interrupted one continues from its last.pt; a failed one is
retried, then named at the end (non-zero exit). Any flag this command does not
know passes through to every run (e.g. --model bert-base-uncased, --epochs 3).
Nodes of a cluster need this folder at the same path (a shared filesystem).
The experiments themselves are data, in experiments.py.
"""
import argparse
import contextlib
import ctypes
import fcntl
import glob
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from arguments import complete_config, parse_args, recorded_config
from experiments import EXPERIMENTS, STUDY_GRID
from fileio import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))

class StudyError(Exception):
    """A bad study command: printed as one line before any run starts."""


def build_parser():
    # no abbreviations: --seed must pass through to main.py, not be taken for --seeds
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                epilog="Unknown flags pass through to every main.py run.")
    p.add_argument("--experiments", default=",".join(STUDY_GRID),
                   help=f"comma-separated (default: the study's nine), from: {', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated integers")
    p.add_argument("--label", help="the label column (default: scenario for MASSIVE data, intent for other data)")
    p.add_argument("--data", default=os.environ.get("MASSIVE_DATA"), help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--list", action="store_true", help="print one main.py command per run and exit")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local instance started here)")
    p.add_argument("--cpus-per-run", type=float, default=2, help="CPUs Ray reserves per run (also its threads)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per run; fractions share one GPU")
    p.add_argument("--retries", type=int, default=2, help="times a failed run is tried again (it resumes)")
    p.add_argument("--logs", default="logs", help="one log file per run goes here")
    p.add_argument("--report-dir", default="results/plots", help="where the report goes")
    p.add_argument("--no-report", dest="report", action="store_false", help="run the grid only")
    return p


def parse_list(text, what, cast=str):
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StudyError(f"--{what} '{text}' does not parse: expected a comma-separated list") from None
    if not items or len(set(items)) != len(items):
        raise StudyError(f"--{what} '{text}': give one or more distinct values")
    return items


def plan(args, passthrough):
    """(experiment, seed, main.py argv, Config) for every run of the grid; every argv is validated here."""
    experiments = parse_list(args.experiments, "experiments")
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise StudyError(f"unknown experiment {', '.join(unknown)} (choose from {', '.join(EXPERIMENTS)})")
    seeds = parse_list(args.seeds, "seeds", int)
    if args.data and not os.path.exists(args.data):
        raise StudyError(f"data not found: {args.data}")
    runs = []
    for name in experiments:
        for seed in seeds:
            label = ["--label", args.label] if args.label else []
            argv = [*EXPERIMENTS[name], *label, "--seed", str(seed), "--experiment", name, *passthrough]
            if args.data:
                argv += ["--data", args.data]
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    cfg = parse_args(argv)
            except SystemExit:
                why = err.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
                raise StudyError(f"{name}: {why}") from None
            except UserError as e:  # the data cannot be located
                raise StudyError(str(e)) from None
            runs.append((name, seed, argv, cfg))
    names = [cfg.run_name for *_, cfg in runs]
    if len(set(names)) != len(names):
        raise StudyError("two runs of this grid would share a run name; check the passed-through flags")
    return runs


def status(cfg):
    """'done' when results hold these settings and this data, 'todo' when absent; StudyError on a clash."""
    if not os.path.exists(cfg.results_path):
        return "todo"
    try:
        with open(cfg.results_path) as f:
            r = json.load(f)
        same = complete_config(r["config"]) == recorded_config(cfg) and r["environment"]["data"]["sha256"] == cfg.source.data.sha256
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        same = False
    if not same:
        raise StudyError(f"{cfg.results_path} exists with other settings or data; move it away or use --out-dir")
    return "done"


def die_with_parent():
    """In the child: get SIGINT when the Ray worker that started it dies, so a cancelled run stops cleanly.

    SIGINT is made deliverable first: a process started in the background
    inherits it ignored (and a Ray worker's children blocked), and main.py
    stops cleanly on it (KeyboardInterrupt: no file is left half-written).
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6").prctl(pr_set_pdeathsig, signal.SIGINT)


def run_one(argv, log_path, lock_path, resume_path):
    """One main.py run (resumed if it has a last.pt). 'busy' when another study holds its lock."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "busy"
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), *argv]
        if os.path.exists(resume_path):
            cmd.append("--resume")
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent).returncode
    if rc:
        raise RuntimeError(f"main.py exited with {rc}; see {log_path}")
    return "done"


def check_address(address):
    """Fail fast on a HOST:PORT nobody listens on, rather than after Ray's long connection retries."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise StudyError(f"cannot reach a Ray cluster at {address}") from None


def run_grid(todo, args):
    """Run (argv, cfg) pairs as Ray tasks; returns {run name: 'done' | 'busy' | error message}."""
    import ray  # only the study runner needs Ray
    from tqdm import tqdm

    check_address(args.address)
    # "local": a fresh instance of our own, never another study's local one
    ray.init(address=args.address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    task = ray.remote(run_one).options(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run,
                                       max_retries=args.retries, retry_exceptions=True)
    refs = {}
    for argv, cfg in todo:
        log_path = os.path.abspath(os.path.join(args.logs, f"{cfg.run_name}.log"))
        lock_path = os.path.abspath(os.path.join(args.logs, f"{cfg.run_name}.lock"))
        refs[task.remote(argv, log_path, lock_path, os.path.abspath(os.path.join(cfg.run_dir, "last.pt")))] = cfg
    outcome = {}
    bar = tqdm(total=len(refs), desc="study", unit="run")
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name = refs[ready[0]].run_name
            try:
                outcome[name] = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                outcome[name] = str(e.cause if getattr(e, "cause", None) else e).splitlines()[0]
            bar.update()
            bar.set_postfix_str(f"{name}: {outcome[name] if outcome[name] in ('done', 'busy') else 'FAILED'}")
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)  # each run's main.py gets SIGINT: results and last.pt are written atomically
        bar.close()
        ray.shutdown()
        raise
    bar.close()
    ray.shutdown()
    return outcome


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args, passthrough = build_parser().parse_known_args(argv)
    runs = plan(args, passthrough)
    if args.list:
        for _, _, run_argv, _ in runs:
            print(shlex.join(["python", "main.py", *run_argv]))
        return 0
    check_address(args.address)
    todo = [(a, cfg) for _, _, a, cfg in runs if status(cfg) == "todo"]
    print(f"study: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    start = time.monotonic()
    outcome = run_grid(todo, args) if todo else {}
    failed = {n: o for n, o in outcome.items() if o not in ("done", "busy")}
    busy = [n for n, o in outcome.items() if o == "busy"]
    for n in busy:
        print(f"not run here: {n} is being run by another study command", file=sys.stderr)
    for n, why in failed.items():
        print(f"FAILED {n}: {why}", file=sys.stderr)
    print(f"study: {sum(o == 'done' for o in outcome.values())} ran, {len(runs) - len(todo)} skipped, "
          f"{len(busy)} busy elsewhere, {len(failed)} failed, in {(time.monotonic() - start) / 3600:.2f} h wall time",
          file=sys.stderr)
    if args.report:
        import plots

        # every run in the folders this study writes to, not only its own: a study of one experiment still
        # pairs it with the baseline there, and the report never shrinks to a subset
        finished = sorted(p for out in {cfg.out_dir for *_, cfg in runs}
                          for p in glob.glob(os.path.join(glob.escape(out), "*.json")))
        if finished:
            plots.main([*finished, "--out-dir", args.report_dir])
    return 1 if failed else 0


if __name__ == "__main__":
    # Ctrl-C, kill -INT or a scheduler's SIGTERM stop the study cleanly, also when it was started in the
    # background (which starts it with SIGINT ignored)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        sys.exit(main())
    except StudyError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished runs are kept, unfinished ones resume when the same command runs again")
