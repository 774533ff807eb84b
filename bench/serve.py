"""Load test of `main.py --task serve` on localhost: requests/s and latency at several concurrencies.

    python bench/serve.py --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl
    python bench/serve.py --checkpoint checkpoints/<joint run> --data ... --endpoint parse --backend onnx-int8

Starts the server (a subprocess on 127.0.0.1), waits for /health, then for
each concurrency sends a fixed number of one-utterance requests (test split
utterances) with that many in flight, with dynamic batching on and off
(--batch-size 1: every request its own forward pass), or with --replicas N as
that many Ray Serve replicas (batching on). Reports requests/s,
p50/p99 latency and errors, stops the server, and writes
results/bench/serve-<backend>.json. Only local addresses are used.
"""
import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from arguments import BACKENDS  # noqa: E402
from data import read_rows  # noqa: E402
from inference import checkpoint_folder  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, batching, resolve=True):
    port = free_port()
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--task", "serve", "--checkpoint", args.checkpoint,
           "--backend", args.backend, "--port", str(port), "--threads", str(args.threads),
           "--streams", str(args.streams)]
    cmd += ["--max-wait-ms", str(args.max_wait_ms)] if batching else ["--batch-size", "1", "--max-wait-ms", "0"]
    cmd += ["--replicas", str(args.replicas)] if args.replicas else []
    cmd += [] if resolve else ["--no-resolve"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited: {proc.stderr.read().strip().splitlines()[-1]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("error: the server did not become healthy within 120 s")


def cpu_seconds(pid):
    """User + system CPU seconds so far of a process and its children (a Ray Serve server's replicas included)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # gone since it was listed
            continue
        total += times.user + times.system
    return total


def model_alone(args, texts, slots):
    """Utterances per second of the model alone, in-process, on the server's streams, threads and forward batches:
    each stream's thread takes its share of the utterances, all at once."""
    from concurrent.futures import ThreadPoolExecutor

    from inference import Predictor
    from serve import FORWARD_BATCH

    predictor = Predictor(args.checkpoint, args.backend, threads=args.threads)
    predictor.outputs(texts[:200], FORWARD_BATCH, slots=slots)  # warm-up
    with ThreadPoolExecutor(args.streams) as pool:
        t = time.perf_counter()
        list(pool.map(lambda part: predictor.outputs(part, FORWARD_BATCH, slots=slots),
                      [texts[i::args.streams] for i in range(args.streams)]))
        return len(texts) / (time.perf_counter() - t)


def load(url, texts, concurrency, n_requests, endpoint="predict"):
    """n_requests one-utterance POSTs, `concurrency` of them in flight at any time; latencies in ms, error count.

    One asyncio client (aiohttp, kept-alive connections): a thread per connection would spend more CPU on this
    2-core machine than the server it measures.
    """
    import aiohttp

    async def run():
        latencies, errors, next_request = [], 0, iter(range(n_requests))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            async def worker():
                nonlocal errors
                for i in next_request:
                    t = time.perf_counter()
                    try:
                        body = {"inputs" if endpoint == "predict" else "text": texts[i % len(texts)]}
                        async with session.post(f"{url}/{endpoint}", json=body) as r:
                            await r.read()
                            errors += r.status != 200
                    except aiohttp.ClientError:
                        errors += 1
                    latencies.append((time.perf_counter() - t) * 1000)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - t0

    ms, errors, wall = asyncio.run(run())
    return {"concurrency": concurrency, "requests": n_requests, "requests_per_second": n_requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="MASSIVE release file: its test utterances are the requests")
    p.add_argument("--backend", default="torch", choices=tuple(BACKENDS))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=1000, help="requests per concurrency level")
    p.add_argument("--streams", type=int, default=os.cpu_count(), help="the server's model streams (passes at once)")
    p.add_argument("--threads", type=int, default=1, help="the server's intra-op threads per stream")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="the server's batching wait, with batching on")
    p.add_argument("--endpoint", default="predict", choices=("predict", "parse"),
                   help="what each request asks: /predict (labels) or /parse (labels and slots)")
    p.add_argument("--replicas", type=int, default=None,
                   help="serve as this many Ray Serve replicas (--threads each; batching on only)")
    p.add_argument("--resolution", action="store_true",
                   help="/parse with slot values resolved and without, batching on (instead of batching on and off)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    texts = [r.text for r in read_rows(args.data)["test"]]
    # the model alone, before and after the server's rows: a shared machine's speed drifts by 20% within a run, so
    # each ratio is to the mean of the two
    before = model_alone(args, texts, slots=args.endpoint == "parse")
    print(f"the model alone: {before:.1f} utterances/s ({args.streams} streams of {args.threads} threads, {cpu_model()}): "
          f"{1000 * args.streams * args.threads / before:.2f} ms of CPU per utterance")
    # the client's collector would otherwise scan the model it just measured on every full pass, and each pass
    # would show as a stall of every request in flight: latencies that are the client's, not the server's
    gc.collect()
    gc.freeze()
    rows = []
    configs = [(True, False), (True, True)] if args.resolution else [(True, True)] if args.replicas else [
        (True, True), (False, True)]
    for batching, resolve in configs:
        proc, url = start_server(args, batching, resolve)
        try:
            for _ in range(60):  # warm-up, until every replica has loaded its model (one still loading answers 503)
                if load(url, texts, 4, 40, args.endpoint)["errors"] == 0:
                    break
                time.sleep(1)
            for c in (int(x) for x in args.concurrency.split(",")):
                load(url, texts, c, args.requests // 5, args.endpoint)  # steady state: the passes' shapes seen before
                server, client = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
                row = {"batching": batching, "resolve": resolve, **load(url, texts, c, args.requests, args.endpoint)}
                after = resource.getrusage(resource.RUSAGE_SELF)
                # where the cores went: both processes share them, so the client's CPU is not the server's
                row["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(proc.pid) - server) / args.requests
                row["client_cpu_ms_per_request"] = 1000 * (after.ru_utime + after.ru_stime - client.ru_utime
                                                           - client.ru_stime) / args.requests
                rows.append(row)
                print(f"batching {'on ' if batching else 'off'}{'' if resolve else ', no resolution'} concurrency {c:3d}: "
                      f"{row['requests_per_second']:7.1f} "
                      f"req/s, p50 {row['p50_ms']:7.1f} ms, p99 {row['p99_ms']:7.1f} ms, errors {row['errors']}; CPU "
                      f"per request: server {row['server_cpu_ms_per_request']:.2f} ms, client "
                      f"{row['client_cpu_ms_per_request']:.2f} ms")
        finally:
            proc.terminate()
            proc.wait(60)
    after = model_alone(args, texts, slots=args.endpoint == "parse")
    alone = (before + after) / 2
    print(f"the model alone again: {after:.1f} utterances/s; each row against their mean, {alone:.1f}:")
    for row in rows:
        row["of_model_alone"] = row["requests_per_second"] / alone
        print(f"batching {'on ' if row['batching'] else 'off'}{'' if row['resolve'] else ', no resolution'} "
              f"concurrency {row['concurrency']:3d}: "
              f"{100 * row['of_model_alone']:.0f}% of the model alone")
    suffix = ("" if args.endpoint == "predict" else "-parse") + (f"-replicas{args.replicas}" if args.replicas else "") + (
        "-resolution" if args.resolution else "")
    out = args.out or os.path.join(ROOT, "results", "bench", f"serve-{args.backend}{suffix}.json")
    with open(os.path.join(checkpoint_folder(args.checkpoint), "meta.json")) as f:
        run = json.load(f)["run_name"]
    write_json(out, {"run": run, "backend": args.backend, "endpoint": args.endpoint, "streams": args.streams,
                     "threads": args.threads,
                     "max_wait_ms": args.max_wait_ms, "replicas": args.replicas, "cpus": os.cpu_count(), "cpu": cpu_model(),
                     "model_alone_utterances_per_second": alone, "model_alone_before_and_after": [before, after],
                     "rows": rows})
    print(f"wrote {out}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
