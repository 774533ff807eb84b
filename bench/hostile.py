"""Long texts and large bodies against a running server: the time of one /parse by text length, /health's latency
while it runs, and the answer to a body over the limit.

    python bench/hostile.py --checkpoint checkpoints/<joint run> [--lengths 1000,5000,20000,100000]

It starts `main.py --task serve` (of this checkout, or of --root, to measure another version the same way), sends
each /parse alone while a second client asks /health every 10 ms, then a 10 MB body. Results go to
results/bench/hostile.json (--out), with the CPU they ran on.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402

PHRASE = "wake me up at five am tomorrow and remind me at seven pm "  # time phrases: every one a slot to resolve


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started(root, checkpoint, port):
    """The server process, once /health answers (at most 120 s)."""
    proc = subprocess.Popen([sys.executable, os.path.join(root, "main.py"), "--task", "serve", "--checkpoint",
                             checkpoint, "--port", str(port), "--timezone", "Europe/Berlin"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def timed_parse(url, body, timeout):
    """(status or the error's name, seconds of one /parse) and /health's latencies meanwhile (every 10 ms)."""
    health, done = [], threading.Event()

    def poll():
        with httpx.Client(timeout=timeout) as c:
            while not done.is_set():
                t = time.perf_counter()
                try:
                    c.get(url + "/health")
                except httpx.HTTPError:
                    pass
                health.append(time.perf_counter() - t)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    t = time.perf_counter()
    try:
        status = httpx.post(url + "/parse", content=body, timeout=timeout).status_code
    except httpx.HTTPError as e:
        status = type(e).__name__
    seconds = time.perf_counter() - t
    done.set()
    poller.join()
    return status, seconds, health


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a joint checkpoint (slots to resolve)")
    p.add_argument("--root", default=ROOT, help="the checkout whose main.py serves (default: this one)")
    p.add_argument("--lengths", default="1000,5000,20000,100000")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a /parse counts as unanswered")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = started(os.path.abspath(args.root), os.path.abspath(args.checkpoint), port)
    rows = []
    try:
        for n in map(int, args.lengths.split(",")):
            text = (PHRASE * (n // len(PHRASE) + 1))[:n]
            body = json.dumps({"text": text, "reference_time": "2026-12-05T10:00:00+01:00"})
            status, seconds, health = timed_parse(url, body, args.timeout)
            rows.append({"characters": n, "status": status, "parse_seconds": seconds,
                         "health_max_ms": 1000 * max(health), "health_median_ms": 1000 * sorted(health)[len(health) // 2],
                         "health_calls": len(health)})
            print(f"{n:>7,} characters: /parse {status} in {seconds:.2f} s; /health meanwhile max "
                  f"{rows[-1]['health_max_ms']:.1f} ms, median {rows[-1]['health_median_ms']:.1f} ms "
                  f"({len(health)} calls)", flush=True)
        body = json.dumps({"text": "a" * 10 * 2**20})
        t = time.perf_counter()
        try:
            status = httpx.post(url + "/parse", content=body, timeout=args.timeout).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        big = {"bytes": len(body), "status": status, "seconds": time.perf_counter() - t}
        print(f"a 10 MB body: {big['status']} in {big['seconds']:.2f} s")
    finally:
        server.kill()
        server.wait()
    out = args.out or os.path.join(ROOT, "results", "bench", "hostile.json")
    write_json(out, {"cpu": cpu_model(), "rows": rows, "large_body": big})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
