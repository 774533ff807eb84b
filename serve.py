"""HTTP serving with dynamic batching: POST /predict, POST /parse, GET /health, GET /info, and a try-it page at
GET / (FastAPI + uvicorn).

    python main.py --task serve --checkpoint checkpoints/<run name> [--port 8000] [--backend torch|onnx|onnx-int8]

    curl -s localhost:8000/predict -d '{"inputs": ["wake me up at seven", "play jazz"], "top_k": 2}'

Requests that arrive together share one forward pass: a pass takes what
queued while the last one ran, up to --batch-size utterances, and waits up
to --max-wait-ms for more (default 0: under load the queue fills while the
model runs, and a lone request should not wait). --streams model threads
run passes side by side (each with --threads intra-op threads; on a CPU one
single-threaded stream per core by default); the event loop only parses,
queues and answers. Errors are answers, never a crash: 422 for a malformed or
empty request, 413 above --max-inputs utterances or --max-body-bytes, 503 while the model loads or
when more than --max-queue utterances wait. Answers come from the Predictor's
postprocess, as predict's do.
"""
import asyncio
import base64
import concurrent.futures
import datetime
import gc
import hashlib
import json
import logging
import logging.handlers
import os
import queue
import re
import signal
import time
from typing import NamedTuple

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from arguments import BACKENDS
from fileio import UserError
from inference import Predictor, Resolution, calibrated, checkpoint_folder, resolution_of, words_file
from resolver import ContextError

log = logging.getLogger("serve")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "try-it.html")  # GET /: the try-it page
# A pass's utterances go through the model sorted by length in forward batches of this many: less padding. On a
# 2-core CPU, passes of 32 test utterances ran at 581 utterances/s this way against 415 as one padded batch (int8).
FORWARD_BATCH = 8
LOG_BACKUPS = 5  # rotated request logs kept


class PredictRequest(BaseModel):
    inputs: str | list[str]
    top_k: int = Field(3, ge=1)
    min_confidence: float | None = Field(None, ge=0, le=1)

    @field_validator("inputs")
    @classmethod
    def not_empty(cls, v):
        if v == [] or v == "":
            raise ValueError("inputs must hold at least one non-empty utterance")
        return v

    def texts_list(self):
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


class ParseRequest(BaseModel):
    """One utterance ("text") or several ("texts"), as Rasa's /model/parse takes one."""
    text: str | None = None
    texts: list[str] | None = None
    top_k: int = Field(10, ge=1)
    min_confidence: float | None = Field(None, ge=0, le=1)
    reference_time: str | None = None  # ISO 8601, what relative expressions resolve against (default: now)
    timezone: str | None = None  # IANA name (default: the server's --timezone)

    @model_validator(mode="after")
    def one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either text (one utterance) or texts (a list of them)")
        if self.text == "" or self.texts == []:
            raise ValueError("text must be a non-empty utterance, texts a list of at least one")
        return self

    def texts_list(self):
        return [self.text] if self.text is not None else self.texts


class Overloaded(Exception):
    pass


class Refused(Exception):
    """A request answered with an error status and its reason: raised anywhere, answered by the app's handler."""

    def __init__(self, status, detail, retry=False):
        super().__init__(detail)
        self.status, self.detail, self.retry = status, detail, retry

    def answer(self):
        return JSONResponse({"detail": self.detail}, status_code=self.status,
                            headers={"Retry-After": "1"} if self.retry else None)


async def read_request(request, schema, max_bytes):
    """The body as schema; Refused: 413 above max_bytes (read no further), 422 with the reasons. The body is read as
    JSON whatever content type it declares: `curl -d`, how most people first try an API, sends
    application/x-www-form-urlencoded."""
    too_large = Refused(413, f"the body is over {max_bytes:,} bytes")
    if int(request.headers.get("content-length") or 0) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        return schema.model_validate_json(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise Refused(422, f"the body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValidationError as e:  # malformed JSON, wrong types: each error's place and reason
        raise Refused(422, [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
                            for err in e.errors()]) from None


class Batcher:
    """Collects the utterances of concurrent requests into forward passes of at most max_batch utterances."""

    def __init__(self, predictor, max_batch, max_wait_ms, max_queue, streams=1):
        self.predictor, self.max_batch, self.max_wait, self.max_queue = predictor, max_batch, max_wait_ms / 1000, max_queue
        self.queue, self.waiting, self.passes, self.streams = asyncio.Queue(), 0, 0, streams
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=streams, thread_name_prefix="model")

    async def outputs(self, texts, slots=False):
        """Calibrated probabilities (len(texts), C) and, with slots, each utterance's word slots and probabilities
        (Predictor.outputs; else None), computed in a shared pass; Overloaded when the queue is full."""
        if self.waiting + len(texts) > self.max_queue:
            raise Overloaded
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(texts)
        self.queue.put_nowait((texts, slots, future))
        return await future

    def forward(self, texts, slots):
        logits, words = self.predictor.outputs(texts, FORWARD_BATCH, slots=slots)
        return calibrated(logits, self.predictor.temperature), words

    async def run(self):
        loop = asyncio.get_running_loop()
        free, running = asyncio.Semaphore(self.streams), set()
        while True:
            await free.acquire()  # a pass starts when a model thread is free, with all that queued meanwhile
            items = [await self.queue.get()]
            n, deadline = len(items[0][0]), loop.time() + self.max_wait
            while n < self.max_batch:
                # what queued while the last pass ran joins at once; then wait up to max_wait for more
                if not self.queue.empty():
                    items.append(self.queue.get_nowait())
                elif (timeout := deadline - loop.time()) > 0:
                    try:
                        items.append(await asyncio.wait_for(self.queue.get(), timeout))
                    except asyncio.TimeoutError:
                        break
                else:
                    break
                n += len(items[-1][0])
            task = loop.create_task(self.answer(items, n, free))
            running.add(task)  # the loop holds its tasks: a task only the event loop refers to may be collected
            task.add_done_callback(running.discard)

    async def answer(self, items, n, free):
        """One pass over the utterances of items on a model thread, each request's future set with its rows."""
        texts = [t for batch, _, _ in items for t in batch]
        slots = any(wants for _, wants, _ in items)  # slots only for passes that carry a /parse request
        try:
            probs, words = await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, texts, slots)
        except Exception as e:  # answered as 503 to each waiting request, never a crash
            log.exception("forward pass failed")
            for _, _, future in items:
                future.set_exception(e)
        else:
            start = 0
            for batch, _, future in items:
                end = start + len(batch)
                future.set_result((probs[start:end], words and words[start:end]))
                start = end
        finally:
            self.waiting -= n
            self.passes += 1
            free.release()


def rasa_answer(text, top, found):
    """One utterance's /parse answer from the Predictor's postprocess, after Rasa's /model/parse: intent (null when
    abstaining), intent_ranking, and slots with character offsets into the text as sent."""
    ranking = [{"name": t["label"], "confidence": t["score"]} for t in top]
    slots = [{"slot": x["slot"], "value": x["value"], "start": x["start"], "end": x["end"], "confidence": x["score"],
              **{k: x[k] for k in ("normalized", "resolved") if k in x}} for x in found]
    return {"text": text, "intent": ranking[0] if ranking else None, "intent_ranking": ranking, "slots": slots}


class RequestLog:
    """/parse's answers as JSON lines (time, text, intent, confidence, slots), written by a thread of their own:
    logging's QueueListener into a RotatingFileHandler. An answer never waits for the disk; each line is flushed as
    it is written, so a crash loses at most the lines still queued; the file rotates at max_bytes, keeping
    LOG_BACKUPS older ones (FILE.1 the newest)."""

    def __init__(self, path, max_bytes):
        try:
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=LOG_BACKUPS,
                                                           encoding="utf-8")
        except OSError as e:
            raise UserError(f"--log-requests {path}: cannot write it ({e.strerror})") from None
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.queue = queue.SimpleQueue()
        self.listener = logging.handlers.QueueListener(self.queue, handler)
        self.listener.start()

    def write(self, answers):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        for a in answers:
            line = {"time": now, "text": a["text"], "intent": a["intent"] and a["intent"]["name"],
                    "confidence": a["intent"] and a["intent"]["confidence"], "slots": a["slots"]}
            self.queue.put_nowait(logging.makeLogRecord({"msg": json.dumps(line, ensure_ascii=False)}))

    def close(self):
        self.listener.stop()  # writes what is queued, then returns


class Serving:
    """The app's state: the model once loaded (or why it could not be), its batcher, and the request limits.

    load() returns the Predictor and runs in a thread at startup, while /health
    answers 503. With load_before_start, start-up itself waits for the model:
    Ray Serve routes to a replica only once its start-up ends, so no request
    reaches a replica still loading.
    """

    def __init__(self, load, max_batch, max_wait_ms, max_inputs, max_queue, streams, load_before_start, max_body,
                 log=None):
        self.load, self.load_before_start = load, load_before_start
        self.limits = dict(max_inputs=max_inputs, max_batch=max_batch, max_wait_ms=max_wait_ms, streams=streams,
                           max_body_bytes=max_body)
        self.max_queue = max_queue
        self.predictor = self.batcher = self.error = None
        with open(PAGE, encoding="utf-8") as f:
            self.page = f.read()
        self.page_headers = page_headers(self.page)
        self.log = log  # a RequestLog, or None

    async def lifespan(self, app):
        loaded = asyncio.Event()
        task = asyncio.create_task(self.load_then_serve(loaded))
        if self.load_before_start:
            await loaded.wait()
        yield
        task.cancel()
        if self.log:
            self.log.close()

    async def load_then_serve(self, loaded):
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(None, self.load)
        except Exception as e:  # /health says why, with 503
            self.error = str(e).splitlines()[0]
            log.error("could not load the model: %s", self.error)
            loaded.set()
            return
        self.batcher = Batcher(predictor, self.limits["max_batch"], self.limits["max_wait_ms"], self.max_queue,
                               self.limits["streams"])
        self.predictor = predictor
        # the libraries and the model are loaded for good: the collector's full passes stop scanning them, each of
        # which stalled every request in flight (p99 80 ms at concurrency 32 with a model that takes no time, 8 ms
        # with them frozen; docs/serving.md)
        gc.collect()
        gc.freeze()
        loaded.set()
        log.info("serving %s (%s backend)", predictor.name, predictor.backend)
        await self.batcher.run()

    def ready(self):
        """The Predictor; Refused (503) while it loads or after it failed to."""
        if self.error:
            raise Refused(503, f"the model could not be loaded: {self.error}")
        if self.predictor is None:
            raise Refused(503, "the model is loading", retry=True)
        return self.predictor

    async def answers(self, request, schema, noun, slots):
        """(the request, the Predictor's postprocessed answer of each of its texts) from a shared forward pass;
        Refused when the request, its time context or the load cannot be answered."""
        req = await read_request(request, schema, self.limits["max_body_bytes"])
        predictor = self.ready()
        texts = req.texts_list()
        if len(texts) > self.limits["max_inputs"]:
            raise Refused(413, f"{len(texts)} {noun}; at most {self.limits['max_inputs']} per request")
        try:  # a bad one is refused with or without slots to resolve
            when = predictor.context(req.reference_time, req.timezone) if slots else None
        except ContextError as e:
            raise Refused(422, str(e)) from None
        try:
            probs, words = await self.batcher.outputs(texts, slots)
        except Overloaded:
            raise Refused(503, "too many utterances waiting; retry shortly", retry=True) from None
        except Exception as e:
            raise Refused(503, f"the model failed: {type(e).__name__}") from None
        # on the event loop: Duckling holds the GIL through its 0.3-0.7 ms parses, so a thread would only add its hop
        # (docs/resolution.md)
        if not slots:  # a pass that also carried a /parse request has word slots for every request: only /parse's count
            return req, predictor.postprocess(texts, probs, None, req.top_k, req.min_confidence)
        # slots and their values off the event loop: Duckling holds the GIL through each parse, but a parse is
        # bounded (resolver.windows), so /health and the other requests get their turn between parses
        return req, await asyncio.get_running_loop().run_in_executor(
            None, predictor.postprocess, texts, probs, words, req.top_k, req.min_confidence, when)


def page_headers(page):
    """The try-it page's headers: a Content-Security-Policy that allows its own inline script and style (by their
    sha256) and its calls to this server, nothing else; no framing; no content-type sniffing."""
    def hashes(tag):
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
                        for code in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S))

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def try_it(request: Request):
    serving = request.app.state.serving
    return HTMLResponse(serving.page, headers=serving.page_headers)


def health(request: Request):
    request.app.state.serving.ready()
    return {"status": "ok"}


def info(request: Request):
    serving = request.app.state.serving
    p = serving.ready()
    return {"model": p.name, "encoder": p.meta["config"]["model"] or "all-MiniLM-L6-v2 (bundled)",
            "backend": p.backend, "labels": p.labels, "max_length": p.max_length, "temperature": p.temperature,
            "spelling": p.speller is not None, "slots": p.slots or [], **serving.limits}


async def predict(request: Request):
    req, parsed = await request.app.state.serving.answers(request, PredictRequest, "inputs", slots=False)
    ranked = [top for top, _ in parsed]
    # plain JSON types already: a JSONResponse skips FastAPI's per-request encoding walk
    return JSONResponse(ranked[0] if isinstance(req.inputs, str) else ranked)


async def parse(request: Request):
    req, parsed = await request.app.state.serving.answers(request, ParseRequest, "texts", slots=True)
    answers = [rasa_answer(text, top, found) for text, (top, found) in zip(req.texts_list(), parsed)]
    if request.app.state.serving.log:
        request.app.state.serving.log.write(answers)
    return JSONResponse(answers[0] if req.text is not None else answers)


def refused(request: Request, exc: Refused):
    return exc.answer()


async def unexpected(request: Request, exc: Exception):  # an answer, not a dropped connection
    log.exception("unexpected error")
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=503)


def create_app(load, max_batch=64, max_wait_ms=0.0, max_inputs=256, max_queue=4096, load_before_start=False,
               streams=1, max_body=2**20, log=None):
    """The app over a Serving state (see there for load and load_before_start); log: a RequestLog or None."""
    serving = Serving(load, max_batch, max_wait_ms, max_inputs, max_queue, streams, load_before_start, max_body, log)
    # no /docs or /redoc: their pages load Swagger UI and ReDoc from a CDN, which offline deployments cannot reach
    app = FastAPI(title="MASSIVE parser: intent and slots", lifespan=serving.lifespan, docs_url=None, redoc_url=None)
    app.state.serving = serving
    app.get("/", response_class=HTMLResponse)(try_it)
    app.get("/health")(health)
    app.get("/info")(info)
    app.post("/predict")(predict)
    app.post("/parse")(parse)
    app.exception_handler(Refused)(refused)
    app.exception_handler(Exception)(unexpected)
    return app


class Settings(NamedTuple):
    """What one server process or Ray Serve replica is built from: its model, its batching and limits, and how it
    resolves slot values."""
    checkpoint: str
    backend: str
    base_model: str | None
    threads: int
    streams: int
    spelling: bool
    max_batch: int
    max_wait_ms: float
    max_inputs: int
    max_queue: int
    max_body: int
    log_requests: str | None  # the request log's file, None: no log
    log_max_bytes: int
    replica: bool  # start-up waits for the model (Ray Serve routes only to started replicas)
    resolution: Resolution


def replica_app(settings):
    """The app of one server process or Ray Serve replica, which loads its own model and batches on its own."""
    def load():
        return Predictor(settings.checkpoint, settings.backend, base_model=settings.base_model, threads=settings.threads,
                         spelling=settings.spelling, resolution=settings.resolution)

    log = settings.log_requests and RequestLog(settings.log_requests, settings.log_max_bytes)
    return create_app(load, settings.max_batch, settings.max_wait_ms, settings.max_inputs, settings.max_queue,
                      load_before_start=settings.replica, streams=settings.streams, max_body=settings.max_body, log=log)


def serve(cfg):
    folder = checkpoint_folder(cfg.checkpoint)  # bad paths fail here, in one line, before the server starts
    if cfg.backend != "torch" and not os.path.isfile(os.path.join(folder, BACKENDS[cfg.backend])):
        raise UserError(f"no {BACKENDS[cfg.backend]} in {folder}: run --task export --checkpoint {cfg.checkpoint}")
    if cfg.spelling:
        words_file(folder)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer's own threads would compete too
    # on a CPU, single-threaded passes side by side beat one pass on all the cores (a 2-core Xeon with AMX: +12%
    # requests/s at concurrency 32, docs/serving.md): a small model's ops are too short to split across threads
    gpu = cfg.backend == "torch" and torch.cuda.is_available()
    streams = cfg.streams or (1 if gpu else max(1, os.cpu_count() // (cfg.replicas or 1)))
    threads = cfg.threads or max(1, os.cpu_count() // ((cfg.replicas or 1) * streams))
    settings = Settings(os.path.abspath(cfg.checkpoint), cfg.backend, cfg.model, threads, streams, cfg.spelling,
                        cfg.batch_size, cfg.max_wait_ms, cfg.max_inputs, cfg.max_queue, cfg.max_body_bytes,
                        cfg.log_requests and os.path.abspath(cfg.log_requests), int(cfg.log_max_mb * 2**20),
                        bool(cfg.replicas),
                        resolution_of(cfg))  # bad --timezone, --slot-dims and --synonyms fail here, in one line

    def build():  # a plain function: Ray Serve calls it on each replica to build that replica's app
        return replica_app(settings)

    log.info("listening on http://%s:%d (%s, %d model streams of %d threads each, batches up to %d utterances or "
             "%g ms)", cfg.host, cfg.port, f"{cfg.replicas} Ray Serve replicas" if cfg.replicas else "one process",
             streams, threads, cfg.batch_size, cfg.max_wait_ms)
    if cfg.replicas:
        return serve_replicas(cfg, build, streams * threads)
    import uvicorn

    uvicorn.run(build(), host=cfg.host, port=cfg.port, log_level="warning")


def stop(signum, frame):
    raise KeyboardInterrupt


def serve_replicas(cfg, build, cpus):
    """The same app as a Ray Serve deployment of --replicas replicas, on a local Ray instance or the cluster at
    --address, until Ctrl-C or SIGTERM; each replica builds the app itself, so each batches on its own."""
    import ray
    from ray import serve as ray_serve

    signal.signal(signal.SIGTERM, stop)
    # Serve gives its HTTP proxy 5 s to answer each readiness check and restarts it after 3 misses, which on a busy
    # small machine (a training run beside it) it keeps doing until start-up fails: 30 s per check instead.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")  # a local instance's processes inherit it
    env = {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__)), "TOKENIZERS_PARALLELISM": "false",
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]}
    ray.init(address=cfg.address or "local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        try:
            ray_serve.start(http_options={"host": cfg.host, "port": cfg.port})
            # Serve's router holds a replica to max_ongoing_requests (default 5) and backs off up to 1 s while all are
            # full: at concurrency 32 on 2 replicas that gave 11 requests/s, p50 3 s. Each replica's own batcher is
            # what should see the load (it batches, and answers 503 beyond --max-queue), so the router lets it through.
            deployment = ray_serve.deployment(ray_serve.ingress(build)(), name="parser", num_replicas=cfg.replicas,
                                              max_ongoing_requests=cfg.max_queue,
                                              ray_actor_options={"num_cpus": cpus})
            ray_serve.run(deployment.bind(), name="parser", route_prefix="/")
        except ray.exceptions.RayError as e:  # e.g. its HTTP proxy not up within Ray's 60 s on a starved machine
            reason = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"Ray Serve could not start the replicas: {type(e).__name__}: {reason}") from None
        log.info("%d replicas ready", cfg.replicas)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("shutting down the replicas")
    finally:
        ray_serve.shutdown()
        ray.shutdown()
