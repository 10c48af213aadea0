"""Ingestion throughput (chunks/s, files/s): all-MiniLM-L6-v2 on vLLM-CPU, straight and through m2a.

    .venv/bin/python bench/data_ingest.py [--files 200] [--seed 7] [--workers 2] [--batch 64]
        [--modes direct,direct-pooled,gateway,m2a,cli,transformers] [--repeat 1] [--engine-url URL]
        [--cpu-threads N] [--engine-args '--dtype float32']

Starts `m2a up` serving all-minilm-l6-v2 on vLLM-CPU (m2a launches the engine with its own flags:
``--runner pooling``, its OpenMP threads on one core unless ``--cpu-threads``; ``--engine-args``
adds vLLM flags; with ``--engine-url`` an already running vLLM is used as a remote model instead),
in a temporary ``M2A_HOME``; an admin key makes a team ``bench`` granted the model and a key of it.
A seeded corpus of Markdown and text files (``--files``, 2-4 kB of prose each) is written, parsed
and chunked here exactly as the ingestion worker does (``m2a.data.parse``, the model's own
tokenizer, the ``auto`` strategy), and the same chunks are embedded by each mode:

- ``direct``: straight to the replica's ``/v1/embeddings``, the way the ingestion worker batches:
  one file at a time per worker (``--workers`` files at once), its chunks in requests of at most
  ``--batch``; the body is the one the gateway's embedder sends;
- ``direct-pooled``: straight to the replica, every chunk in requests of ``--batch`` regardless of
  files, ``--workers`` requests at once (what the engine does when it is fed full batches);
- ``gateway``: as ``direct``, but through the gateway's ``/v1/embeddings`` with the team's key
  (auth, routing, ledger, no ingestion queue);
- ``m2a``: the official ``openai`` client: the files uploaded to ``/v1/files`` (4 at once), then
  ``vector_stores.file_batches.create`` and polling until every file is ``completed``: parse, chunk,
  embed through the gateway's own path, index (SQLite backend). Reported: upload, indexing (batch
  created → last file completed) and end to end; the chunks indexed are read back from the store's
  SQLite file and checked to be the very chunks the other modes embed;
- ``cli``: ``m2a data ingest CORPUS --store NAME`` (uploads one at a time, attaching as it goes);
- ``transformers``: a reference without any server: the same chunks embedded in this process with
  transformers' AutoModel (batch 32, truncated at the engine's ``max_model_len``, mean pooling).

The direct and gateway modes count the tokens the engine says it embedded (``usage``): past its
``max_model_len`` a chunk is truncated (the gateway asks vLLM to, ``truncate_prompt_tokens``).
Each mode also reports the CPU seconds the gateway process and the engine's processes spent in it
(psutil), to see where time goes on a shared machine. Every process started is stopped at the end,
on Ctrl-C or SIGTERM too (``m2a up`` runs in its own process group; its descendants are tracked and
killed if they outlive it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from m2a.data.chunking import AUTO, ChunkingStrategy, HFTokenizer, chunk
from m2a.data.ingest import EMBED_BATCH
from m2a.data.parse import parse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_search import minilm_folder  # noqa: E402

MODEL = "all-minilm-l6-v2"
ADMIN_KEY = "sk-bench-admin-" + "i" * 24
MODES = ("direct", "direct-pooled", "gateway", "m2a", "cli", "transformers")
READY_TIMEOUT_S = 600


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the corpus -----------------------------------------------------------------------------------

TOPICS: dict[str, dict[str, list[str]]] = {
    "billing": {
        "nouns": [
            "invoice",
            "credit note",
            "payment run",
            "ledger entry",
            "refund",
            "purchase order",
            "tax code",
            "billing cycle",
            "customer account",
            "late fee",
        ],
        "verbs": ["reconciles", "approves", "reverses", "posts", "flags", "exports"],
        "people": ["the finance team", "an accounts clerk", "the controller", "the auditor"],
    },
    "networking": {
        "nouns": [
            "router",
            "subnet",
            "firewall rule",
            "VPN tunnel",
            "DNS record",
            "load balancer",
            "packet capture",
            "routing table",
            "VLAN",
            "TLS certificate",
        ],
        "verbs": ["forwards", "drops", "renews", "resolves", "inspects", "balances"],
        "people": ["the network engineer", "the on-call operator", "a site administrator"],
    },
    "gardening": {
        "nouns": [
            "tomato bed",
            "compost heap",
            "rose bush",
            "seed tray",
            "raised bed",
            "mulch layer",
            "watering schedule",
            "fruit tree",
            "greenhouse",
            "soil sample",
        ],
        "verbs": ["waters", "prunes", "plants", "harvests", "feeds", "covers"],
        "people": ["the gardener", "a volunteer", "the allotment committee"],
    },
    "astronomy": {
        "nouns": [
            "telescope mount",
            "star chart",
            "eyepiece",
            "lunar eclipse",
            "comet",
            "light curve",
            "observing log",
            "spectrograph",
            "meteor shower",
            "dark-sky site",
        ],
        "verbs": ["tracks", "records", "calibrates", "aligns", "photographs", "measures"],
        "people": ["the observer", "an amateur astronomer", "the club's secretary"],
    },
    "cooking": {
        "nouns": [
            "sourdough starter",
            "stock pot",
            "spice blend",
            "pastry dough",
            "marinade",
            "cast-iron pan",
            "oven thermometer",
            "braise",
            "recipe card",
            "proofing basket",
        ],
        "verbs": ["simmers", "kneads", "seasons", "reduces", "tastes", "chills"],
        "people": ["the head cook", "a kitchen porter", "the pastry chef"],
    },
    "hr": {
        "nouns": [
            "leave request",
            "onboarding checklist",
            "payroll run",
            "performance review",
            "contract renewal",
            "training budget",
            "job posting",
            "expense claim",
            "notice period",
        ],
        "verbs": ["reviews", "signs", "schedules", "rejects", "archives", "updates"],
        "people": ["the HR partner", "a line manager", "the new hire", "the people team"],
    },
}
ADJ = [
    "monthly",
    "urgent",
    "routine",
    "detailed",
    "shared",
    "temporary",
    "revised",
    "annual",
    "careful",
    "quick",
    "second",
    "final",
    "small",
    "large",
    "quiet",
    "default",
]
TIMES = [
    "every Monday",
    "before the end of the month",
    "after each release",
    "twice a year",
    "at dawn",
    "during the busy season",
    "once the backlog is clear",
    "when the weather turns",
]
TEMPLATES = [
    "{P} {v} the {a} {n} {t}, and writes down what changed.",
    "When the {n} looks wrong, {p} {v} it and checks the {n2} as well.",
    "The {a} {n} is kept next to the {n2}, so that {p} can find both quickly.",
    "Most problems with the {n} come from a {a} {n2} that nobody ever {v2}.",
    "{P} prefers to handle the {n} {t}; the {n2} can wait until later.",
    "If the {n2} is missing, the {n} cannot be finished, and {p} has to start again.",
    "One {a} note about the {n} explains why {p} {v} it {t}.",
    "Nobody should change the {n} without telling {p}, because the {n2} depends on it.",
    "In practice the {n} takes longer than planned, mostly because the {n2} is {a}.",
    "Ask {p} before you touch the {n}: they know which {n2} it belongs to.",
]


def _sentence(rng: random.Random, vocab: dict[str, list[str]]) -> str:
    p = rng.choice(vocab["people"])
    n, n2 = rng.sample(vocab["nouns"], 2)
    v, v2 = rng.sample(vocab["verbs"], 2)
    s = rng.choice(TEMPLATES).format(
        P=p[0].upper() + p[1:], p=p, n=n, n2=n2, v=v, v2=v2, a=rng.choice(ADJ), t=rng.choice(TIMES)
    )
    return s[0].upper() + s[1:]


def make_corpus(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` files of 2-4 kB of prose (Markdown with headings and lists, or plain text), seeded."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        vocab = TOPICS[topic]
        target = rng.randint(2000, 4000)
        md = rng.random() < 0.6
        title = f"{topic.title()} notes {i}: the {rng.choice(ADJ)} {rng.choice(vocab['nouns'])}"
        parts = [f"# {title}\n" if md else f"{title}\n"]
        size = len(parts[0])
        while size < target:
            if md and rng.random() < 0.25:
                block = f"## {rng.choice(vocab['nouns']).capitalize()}\n"
            elif md and rng.random() < 0.2:
                block = "".join(f"- {_sentence(rng, vocab)}\n" for _ in range(rng.randint(2, 4)))
            else:
                block = " ".join(_sentence(rng, vocab) for _ in range(rng.randint(3, 6))) + "\n"
            parts.append(block)
            size += len(block) + 1
        path = folder / f"{topic}-{i:04d}.{'md' if md else 'txt'}"
        path.write_text("\n".join(parts), encoding="utf-8")
        paths.append(path)
    return paths


@dataclass
class Corpus:
    paths: list[Path]
    chunks: list[list[str]]  # per file, its chunks' texts

    @property
    def n_chunks(self) -> int:
        return sum(len(c) for c in self.chunks)

    def digest(self) -> str:
        h = hashlib.sha256()
        for p, cs in sorted(zip((p.name for p in self.paths), self.chunks, strict=True)):
            h.update(p.encode())
            for c in cs:
                h.update(b"\0" + c.encode())
        return h.hexdigest()[:16]


def chunk_corpus(paths: list[Path], strategy: ChunkingStrategy) -> tuple[Corpus, dict[str, float]]:
    """Parse and chunk as the ingestion worker does; the seconds each step took here."""
    tok = HFTokenizer.from_folder(minilm_folder())
    t0 = time.perf_counter()
    texts = [parse(p.read_bytes(), p.name).text for p in paths]
    t1 = time.perf_counter()
    chunks = [[c.text for c in chunk(t, tok, strategy)] for t in texts]
    t2 = time.perf_counter()
    tokens = sum(len(tok.encode(c)) for cs in chunks for c in cs)
    return Corpus(paths, chunks), {"parse_s": t1 - t0, "chunk_s": t2 - t1, "chunk_tokens": tokens}


# -- the stack ------------------------------------------------------------------------------------


class Stack:
    """`m2a up` in its own process group serving MiniLM; every descendant is tracked and stopped."""

    def __init__(
        self, home: Path, engine_url: str | None, workers: int, cpu_threads: int | None, engine_args: str
    ) -> None:
        self.cpu_threads = cpu_threads
        self.engine_args = engine_args.split()
        self.home = home
        self.engine_url = engine_url
        self.workers = workers
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}
        self.log = home / "m2a-up.log"

    def start(self) -> None:
        if self.engine_url:
            model: dict[str, Any] = {"name": MODEL, "engine": "remote", "url": self.engine_url,
                                     "task": "embed", "tokenizer": f"hf:{minilm_folder()}"}  # fmt: skip
        else:
            model = {"name": MODEL}
            if self.cpu_threads:  # m2a pins an embedding model's vLLM to one core unless told
                model["cpu_threads"] = self.cpu_threads
            if self.engine_args:
                model["extra_args"] = self.engine_args
        base = 22000 + random.Random().randrange(0, 8000)
        cfg = {"models": [model], "data": {"workers": self.workers}, "supervisor": {"base_port": base}}
        path = self.home / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
        env.update(M2A_HOME=str(self.home), M2A_ADMIN_KEY=ADMIN_KEY)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m2a", "up", "--config", str(path), "--port", str(self.port)],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        say(f"m2a up (pid {self.proc.pid}) on {self.root}, log {self.log}")
        started = time.monotonic()
        last = 0.0
        while True:
            self.track()
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"m2a up exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise SystemExit(
                    f"m2a up not ready after {READY_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{self.root}/readyz", timeout=5, headers=self.admin)
                if r.status_code == 200:
                    break
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    states = ", ".join(f"{x['replica']}={x['state']}" for x in r.json().get("replicas", []))
                    say(f"  {time.monotonic() - started:.0f}s: {states or r.status_code}")
            time.sleep(1)
        self.track()
        say(f"m2a up ready after {time.monotonic() - started:.0f}s")

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_KEY}"}

    def track(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)

    def replica_url(self) -> str:
        replicas = httpx.get(f"{self.root}/readyz", headers=self.admin, timeout=10).json()["replicas"]
        return next(r["url"] for r in replicas if r["model"] == MODEL).rstrip("/")

    def team_key(self, team: str = "bench") -> str:
        with httpx.Client(base_url=self.root, headers=self.admin, timeout=30) as c:
            r = c.post("/admin/v1/teams", json={"name": team})
            r.raise_for_status()
            c.put(f"/admin/v1/teams/{team}/grants/{MODEL}").raise_for_status()
            r = c.post("/admin/v1/keys", json={"team": team, "name": "ingest-bench"})
            r.raise_for_status()
            return r.json()["key"]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far (user + system): the gateway process, and all its descendants (the engine)."""
        self.track()
        gw = eng = 0.0
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(self.proc.pid).cpu_times()  # type: ignore[union-attr]
            gw = t.user + t.system
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                eng += t.user + t.system
        return gw, eng

    def stop(self) -> None:
        if self.proc is None:
            return
        self.track()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                say("m2a up did not stop in 60 s: killing its process group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        alive = [p for p in self.seen.values() if _alive(p)]
        deadline = time.monotonic() + 20
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = [p for p in alive if _alive(p)]
        for p in alive:
            say(f"killing leftover process {p.pid}")
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc = None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- the modes ------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    files: int
    chunks: int
    seconds: float
    requests: int = 0
    gateway_cpu_s: float = 0.0
    engine_cpu_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


class Embedder:
    """Embeddings over HTTP with the body the gateway's own embedder sends; counts requests."""

    def __init__(self, url: str, key: str | None, extra: dict[str, Any]) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=600, trust_env=False)
        self.extra = extra
        self.requests = 0
        self.tokens = 0  # the engine's usage.prompt_tokens: what it embedded, after its truncation

    async def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        body = {"model": MODEL, "input": list(texts), "encoding_format": "float", **self.extra}
        r = await self.http.post("/embeddings", json=body)
        self.requests += 1
        if r.status_code != 200:
            raise RuntimeError(f"embeddings answered {r.status_code}: {r.text[:300]}")
        payload = r.json()
        self.tokens += int((payload.get("usage") or {}).get("prompt_tokens") or 0)
        data = payload["data"]
        assert len(data) == len(texts) and len(data[0]["embedding"]) == 384
        return [d["embedding"] for d in data]

    async def close(self) -> None:
        await self.http.aclose()


class Progress:
    def __init__(self, label: str, total: int, unit: str) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.t0 = time.perf_counter()
        self.last = self.t0

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= 5 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            say(f"  {self.label}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s)")


async def embed_per_file(embed: Embedder, corpus: Corpus, workers: int, batch: int, label: str) -> float:
    """``workers`` files at once, each file's chunks in requests of at most ``batch`` (the worker's way)."""
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for cs in corpus.chunks:
        queue.put_nowait(cs)
    prog = Progress(label, corpus.n_chunks, "chunks")

    async def worker() -> None:
        while not queue.empty():
            cs = queue.get_nowait()
            for i in range(0, len(cs), batch):
                await embed(cs[i : i + batch])
                prog.add(len(cs[i : i + batch]))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - t0


async def embed_pooled(embed: Embedder, corpus: Corpus, workers: int, batch: int, label: str) -> float:
    """All chunks in requests of ``batch``, ``workers`` requests at once."""
    flat = [c for cs in corpus.chunks for c in cs]
    batches = [flat[i : i + batch] for i in range(0, len(flat), batch)]
    prog = Progress(label, len(flat), "chunks")
    sem = asyncio.Semaphore(workers)

    async def one(b: list[str]) -> None:
        async with sem:
            await embed(b)
            prog.add(len(b))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    return time.perf_counter() - t0


def run_embed_mode(
    mode: str, stack: Stack, url: str, key: str | None, corpus: Corpus, args: argparse.Namespace,
    extra: dict[str, Any],
) -> Result:  # fmt: skip
    async def go() -> tuple[float, int, int]:
        embed = Embedder(url, key, extra)
        try:
            if mode == "direct-pooled":
                s = await embed_pooled(embed, corpus, args.workers, args.batch, mode)
            else:
                s = await embed_per_file(embed, corpus, args.workers, args.batch, mode)
            return s, embed.requests, embed.tokens
        finally:
            await embed.close()

    cpu0 = stack.cpu()
    seconds, requests, tokens = asyncio.run(go())
    cpu1 = stack.cpu()
    res = Result(mode, len(corpus.paths), corpus.n_chunks, seconds, requests,
                 cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])  # fmt: skip
    res.notes = {"tokens embedded (engine usage)": tokens}
    return res


def stored_chunks(home: Path, store_id: str) -> tuple[dict[str, list[str]], int]:
    """The chunk texts the SQLite backend holds for a store, by file id (in order), and how many."""
    db = sqlite3.connect(f"file:{home / 'vectors.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT c.file_id, c.text FROM chunks c JOIN stores s ON s.sid = c.sid "
            "WHERE s.store_id = ? ORDER BY c.file_id, c.idx",
            (store_id,),
        ).fetchall()
    finally:
        db.close()
    out: dict[str, list[str]] = {}
    for fid, text in rows:
        out.setdefault(fid, []).append(text)
    return out, len(rows)


def check_same_chunks(home: Path, store_id: str, names: dict[str, str], corpus: Corpus) -> str:
    got, n = stored_chunks(home, store_id)
    by_name = {p.name: cs for p, cs in zip(corpus.paths, corpus.chunks, strict=True)}
    same = sum(got.get(fid) == by_name[name] for fid, name in names.items())
    return f"{n} chunks indexed, {same}/{len(names)} files with exactly the benchmark's chunks"


def run_m2a(
    stack: Stack, key: str, corpus: Corpus, args: argparse.Namespace, strategy: dict | None
) -> Result:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.root}/v1", api_key=key, max_retries=2, timeout=600)
    cpu0 = stack.cpu()
    t0 = time.perf_counter()
    prog = Progress("m2a upload", len(corpus.paths), "files")

    def upload(p: Path) -> tuple[str, str]:
        f = client.files.create(file=(p.name, p.read_bytes()), purpose="assistants")
        prog.add(1)
        return f.id, p.name

    with ThreadPoolExecutor(4) as pool:
        names = dict(pool.map(upload, corpus.paths))
    t1 = time.perf_counter()
    vs = client.vector_stores.create(name=f"bench-{int(time.time())}")
    kw: dict[str, Any] = {"chunking_strategy": strategy} if strategy else {}
    batch = client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=list(names), **kw)
    last = time.perf_counter()
    while batch.status == "in_progress":
        time.sleep(0.25)
        batch = client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id)
        if time.perf_counter() - last >= 5:
            last = time.perf_counter()
            c = batch.file_counts
            say(f"  m2a index: {c.completed}/{c.total} files completed, {c.failed} failed, "
                f"{c.in_progress} in progress ({c.completed / (last - t1):.1f} files/s)")  # fmt: skip
    t2 = time.perf_counter()
    cpu1 = stack.cpu()
    c = batch.file_counts
    say(f"  m2a index: batch {batch.status}: {c.completed} completed, {c.failed} failed")
    if c.failed:
        failed = client.vector_stores.files.list(vector_store_id=vs.id, filter="failed", limit=3)
        for f in failed.data:
            say(f"  failed {f.id}: {f.last_error}")
    res = Result("m2a", len(corpus.paths), corpus.n_chunks, t2 - t0, 0, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
    res.notes = {"upload_s": t1 - t0, "index_s": t2 - t1, "failed": c.failed,
                 "check": check_same_chunks(stack.home, vs.id, names, corpus)}  # fmt: skip
    return res


def run_cli(stack: Stack, key: str, corpus: Corpus, folder: Path) -> Result:
    store = f"cli-bench-{int(time.time())}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    env.update(M2A_HOME=str(stack.home), COLUMNS="100")
    log = stack.home / "cli.log"
    cmd = [sys.executable, "-m", "m2a", "data", "ingest", str(folder), "--store", store,
           "--url", f"{stack.root}/v1", "--api-key", key]  # fmt: skip
    say(f"  cli: m2a data ingest {folder} --store {store} (output in {log})")
    cpu0 = stack.cpu()
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(1)
                if time.perf_counter() - t0 > 600:
                    proc.kill()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    t1 = time.perf_counter()
    cpu1 = stack.cpu()
    res = Result("cli", len(corpus.paths), corpus.n_chunks, t1 - t0, 0, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
    res.notes = {"rc": proc.returncode}
    with httpx.Client(base_url=f"{stack.root}/v1", headers={"authorization": f"Bearer {key}"}) as c:
        found = [
            s for s in c.get("/vector_stores", params={"limit": 100}).json()["data"] if s["name"] == store
        ]
        if found:
            vs = found[0]
            names: dict[str, str] = {}
            after: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
                page = c.get("/files", params=params).json()
                names.update({f["id"]: f["filename"] for f in page["data"]})
                if not page.get("has_more") or not page["data"]:
                    break
                after = page["data"][-1]["id"]
            attached, _ = stored_chunks(stack.home, vs["id"])
            res.notes["check"] = check_same_chunks(
                stack.home, vs["id"], {f: names[f] for f in attached if f in names}, corpus
            )
            res.notes["completed"] = vs["file_counts"]["completed"]
    return res


def run_transformers(stack: Stack, corpus: Corpus, max_len: int) -> Result:
    """The engine's work without an engine: transformers' AutoModel on this process's CPU threads,
    mean pooling, the chunks truncated at the engine's max_model_len (a reference, not m2a's path)."""
    from data_search import MiniLM

    model = MiniLM(minilm_folder(), max_tokens=max_len)
    flat = [c for cs in corpus.chunks for c in cs]
    model(flat[:4])  # warm-up
    me = psutil.Process()
    cpu0, t = stack.cpu(), me.cpu_times()
    own0 = t.user + t.system
    t0 = time.perf_counter()
    prog = Progress("transformers", len(flat), "chunks")
    for i in range(0, len(flat), 32):
        model(flat[i : i + 32])
        prog.add(len(flat[i : i + 32]))
    seconds = time.perf_counter() - t0
    t = me.cpu_times()
    cpu1 = stack.cpu()
    res = Result("transformers", len(corpus.paths), corpus.n_chunks, seconds, 0, cpu1[0] - cpu0[0],
                 cpu1[1] - cpu0[1])  # fmt: skip
    import torch

    res.notes = {"this process CPU s": t.user + t.system - own0, "torch threads": torch.get_num_threads()}
    return res


# -- main -----------------------------------------------------------------------------------------


def table(results: list[Result]) -> Iterator[str]:
    yield "| mode | files | chunks | requests | seconds | chunks/s | files/s | gateway CPU s | engine CPU s |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for r in results:
        yield (f"| {r.mode} | {r.files} | {r.chunks} | {r.requests or '-'} | {r.seconds:.1f} | "
               f"{r.chunks_per_s:.1f} | {r.files_per_s:.2f} | {r.gateway_cpu_s:.1f} | "
               f"{r.engine_cpu_s:.1f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="data.workers, and the direct modes' concurrency")
    ap.add_argument("--batch", type=int, default=EMBED_BATCH, help="chunks per request in the direct modes")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the embedding-only modes")
    ap.add_argument("--engine-url", help="an already running vLLM serving MiniLM as all-minilm-l6-v2")
    ap.add_argument("--cpu-threads", type=int, help="the model's cpu_threads (m2a's default for embed: 1)")
    ap.add_argument("--engine-args", default="", help="more vLLM flags (extra_args), e.g. '--dtype float32'")
    ap.add_argument("--keep", action="store_true", help="keep the temporary M2A_HOME")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"unknown modes {bad}; known: {', '.join(MODES)}")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    say(f"uptime at start: {uptime()}")
    tmp = Path(tempfile.mkdtemp(prefix="m2a-ingest-bench-"))
    home = tmp / "home"
    home.mkdir()
    stack = Stack(home, args.engine_url, args.workers, args.cpu_threads, args.engine_args)
    results: list[Result] = []
    try:
        paths = make_corpus(tmp / "corpus", args.files, args.seed)
        total_bytes = sum(p.stat().st_size for p in paths)
        strategy, api_strategy, extra = AUTO, None, {"truncate_prompt_tokens": -1}
        if args.engine_url:
            # m2a asks vLLM to truncate only where it launched the engine itself; a remote vLLM
            # refuses inputs past its length, so the chunks must fit it.
            info = httpx.get(f"{args.engine_url.rstrip('/')}/models", timeout=10).json()["data"][0]
            size = max(100, int(info.get("max_model_len") or 256) - 16)
            strategy = ChunkingStrategy(size, size // 2, "static")
            api_strategy = strategy.as_openai()
            extra = {}
            say(f"remote engine: static chunks of {size} tokens (max_model_len {info.get('max_model_len')})")
        corpus, prep = chunk_corpus(paths, strategy)
        st = f"{strategy.max_chunk_size_tokens}/{strategy.chunk_overlap_tokens}"
        say(f"corpus: {len(paths)} files, {total_bytes / 1024:.0f} KiB, {corpus.n_chunks} chunks "
            f"({prep['chunk_tokens']} tokens; {st} strategy), digest {corpus.digest()}; "
            f"parse {prep['parse_s']:.2f}s, chunk {prep['chunk_s']:.2f}s here")  # fmt: skip
        stack.start()
        key = stack.team_key()
        engine = args.engine_url.rstrip("/") if args.engine_url else stack.replica_url()
        info = httpx.get(f"{engine}/models", timeout=10).json()["data"][0]
        max_len = int(info.get("max_model_len") or 512)
        say(f"engine replica {engine} (max_model_len {max_len}); gateway {stack.root}/v1")
        warm = [c for cs in corpus.chunks[:4] for c in cs]
        asyncio.run(_warm(engine, extra, warm))
        for rnd in range(args.repeat):
            for mode in ("direct", "direct-pooled", "gateway"):
                if mode in modes:
                    url, k = (f"{stack.root}/v1", key) if mode == "gateway" else (engine, None)
                    say(f"mode {mode} (round {rnd + 1}/{args.repeat}): {corpus.n_chunks} chunks, "
                        f"{args.workers} at once, batch {args.batch}")  # fmt: skip
                    r = run_embed_mode(mode, stack, url, k, corpus, args, extra)
                    load = os.getloadavg()[0]
                    say(f"  {mode}: {r.chunks_per_s:.1f} chunks/s, {r.requests} requests, load {load:.2f}")
                    results.append(r)
        if "m2a" in modes:
            say(f"mode m2a: upload {len(paths)} files, one file batch, poll until indexed "
                f"(data.workers {args.workers})")  # fmt: skip
            r = run_m2a(stack, key, corpus, args, api_strategy)
            say(f"  m2a: {r.chunks_per_s:.1f} chunks/s end to end; {r.notes}")
            results.append(r)
        if "cli" in modes:
            if args.engine_url:
                say("mode cli skipped: it cannot pass the static chunking strategy a remote engine needs")
            else:
                say("mode cli: m2a data ingest")
                r = run_cli(stack, key, corpus, tmp / "corpus")
                say(f"  cli: {r.chunks_per_s:.1f} chunks/s end to end; {r.notes}")
                results.append(r)
        if "transformers" in modes:
            say(f"mode transformers: the same chunks in this process (torch, batch 32, {max_len} tokens)")
            r = run_transformers(stack, corpus, max_len)
            say(f"  transformers: {r.chunks_per_s:.1f} chunks/s; {r.notes}")
            results.append(r)
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
    finally:
        stack.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"kept {tmp}")
    if results:
        print()
        print("\n".join(table(results)))
        for r in results:
            if r.notes:
                print(f"- {r.mode}: " + ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.notes.items()
                ))  # fmt: skip
    say(f"uptime at end: {uptime()}")


async def _warm(engine: str, extra: dict[str, Any], texts: list[str]) -> None:
    embed = Embedder(engine, None, extra)
    try:
        t0 = time.perf_counter()
        await embed(texts)
        say(f"warm-up: {len(texts)} chunks straight to the engine in {time.perf_counter() - t0:.2f}s")
    finally:
        await embed.close()


if __name__ == "__main__":
    main()
