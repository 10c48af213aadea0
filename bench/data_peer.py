"""m2a's SQLite vector store beside a peer, Chroma, on the same data in one run.

    .venv/bin/python bench/data_peer.py quality [--peer-python /tmp/chroma-venv/bin/python]
    .venv/bin/python bench/data_peer.py speed [--sizes 10000 100000] [--queries 300] [--vectors clustered]

Chroma is not a dependency of m2a (its pins would fight m2a's): it lives in its own environment
(``python3 -m venv /tmp/chroma-venv && /tmp/chroma-venv/bin/pip install chromadb numpy``) and runs
in a subprocess, ``bench/data_peer_chroma.py``, with that environment's Python. This script makes the
data once, writes it to a temporary folder (``chunks.jsonl`` and ``vectors.npy``, unit float32 rows;
queries as ``.npy``), loads it into m2a's backend in this process and into a Chroma
``PersistentClient`` (a temporary folder, cosine space, Chroma's default HNSW settings, vectors
supplied: no embedding function) in the subprocess, one after the other, never at the same time.
Both get one ``add`` per file; queries are sequential, k=10, each timed around its call (m2a: the
async ``search``; Chroma: ``collection.query``), results with their text and attributes.

quality: the labelled set of ``bench/data_search.py`` (``tests/data/retrieval``: documents chunked
with all-MiniLM-L6-v2's tokenizer and embedded with the real model, on CPU; both query sets).
Scored by document as there: recall@5 and MRR@10. m2a: vector and its default hybrid; Chroma: vector
(its local client ranks by vector only: ``Collection.search``, its hybrid API, is for distributed
and hosted Chroma). Also each one's recall@10 of chunks against the exact numpy top 10.

speed: ``data_search.speed_data``'s synthetic chunks (Zipf words, files of 1,000 chunks, a ``shard``
attribute that one file in ten passes) with clustered (default) or random vectors. Timed, ms p50 /
p99: vector search; vector search with the filter; m2a's keyword (FTS5 bm25) and hybrid 1:1 (with the
filter too); Chroma's vector search restricted to chunks whose text contains a word of the query
(``where_document={"$contains": word}``, the first non-stopword) and that full-text match alone
(``get``, limit 10, unranked). Recall@10 of each vector search against the exact numpy top 10 over
the same rows (all, the filter's, the word's). Also the insert rate, the first search after the
load, and the size on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_search import (  # noqa: E402
    DATA,
    FILTER,
    QUERY_SETS,
    MiniLM,
    load_jsonl,
    minilm_folder,
    pct,
    speed_data,
    synthetic_vocabulary,
)

from m2a.data.chunking import AUTO, HFTokenizer, chunk  # noqa: E402
from m2a.data.search import STOPWORDS  # noqa: E402
from m2a.data.stores import ChunkRecord, VectorBackend, build_backend  # noqa: E402

WORKER = Path(__file__).resolve().parent / "data_peer_chroma.py"
K = 10
EVEN = (1.0, 1.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def unit_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def write_data(folder: Path, chunks: list[dict[str, Any]], vectors: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "chunks.jsonl", "w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(json.dumps(c) + "\n")
    np.save(folder / "vectors.npy", vectors)


def exact_top(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None) -> list[list[int]]:
    """The exact cosine top ``K`` rows for each query (vectors and queries unit), within ``rows``."""
    sub = vectors if rows is None else vectors[rows]
    out: list[list[int]] = []
    for a in range(0, len(queries), 64):
        s = queries[a : a + 64] @ sub.T
        kk = min(K, sub.shape[0])
        top = (
            np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            if kk < sub.shape[0]
            else np.tile(np.arange(sub.shape[0]), (len(s), 1))
        )
        for i in range(len(s)):
            t = top[i][np.argsort(-s[i, top[i]])]
            out.append([int(x) for x in (t if rows is None else rows[t])])
    return out


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    """Share of the exact top 10 found; a query whose exact answer is empty is skipped."""
    got = want = 0
    for f, t in zip(found, truth, strict=True):
        got += len(set(f) & set(t))
        want += len(t)
    return got / want if want else float("nan")


def run_chroma(peer_python: str, folder: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    job = {
        "data": str(folder),
        "db": str(folder / "chroma"),
        "k": K,
        "cases": cases,
        "out": str(folder / "chroma_out.json"),
    }
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    subprocess.run([peer_python, str(WORKER), str(folder / "job.json")], check=True)
    return json.loads((folder / "chroma_out.json").read_text(encoding="utf-8"))


async def m2a_load(backend: VectorBackend, chunks: list[dict[str, Any]], vectors: np.ndarray) -> float:
    """One ``add`` per file, as the Chroma side; returns the seconds taken."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        groups.setdefault(c["file_id"], []).append(i)
    prepared = [
        (
            fid,
            [ChunkRecord(chunks[i]["index"], 0, 0, chunks[i]["text"], vectors[i]) for i in rows],
            chunks[rows[0]]["attrs"],
        )
        for fid, rows in groups.items()
    ]
    t0 = time.perf_counter()
    last = t0
    for g, (fid, recs, attrs) in enumerate(prepared):
        await backend.add("bench", fid, recs, attrs)
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log(f"[m2a] inserted {g + 1} of {len(prepared)} files in {last - t0:.0f} s")
    return time.perf_counter() - t0


async def m2a_case(
    backend: VectorBackend,
    queries: np.ndarray,
    texts: list[str | None],
    mode: str,
    flt: dict | None = None,
    weights: tuple[float, float] | None = None,
) -> dict[str, list]:
    lat: list[float] = []
    found: list[list[str]] = []
    for qv, qt in zip(queries, texts, strict=True):
        t0 = time.perf_counter()
        hits = await backend.search("bench", qv, qt, k=K, mode=mode, filters=flt, weights=weights)
        lat.append(1000 * (time.perf_counter() - t0))
        found.append([f"{h.file_id}:{h.index}" for h in hits])
    return {"lat_ms": lat, "ids": found}


# -- quality ------------------------------------------------------------------------------------


def by_document(ids: list[str], file_of: dict[str, str]) -> list[str]:
    ranked: list[str] = []
    for i in ids:
        f = file_of[i]
        if f not in ranked:
            ranked.append(f)
    return ranked


async def quality(peer_python: str) -> None:
    docs = load_jsonl(DATA / "docs.jsonl")
    folder = minilm_folder()
    model = MiniLM(folder)
    tokenizer = HFTokenizer.from_folder(folder)
    chunks: list[dict[str, Any]] = []
    for d in docs:
        for c in chunk(f"{d['title']}\n{d['text']}", tokenizer, AUTO):
            chunks.append(
                {
                    "id": f"{d['id']}:{c.index}",
                    "file_id": d["id"],
                    "index": c.index,
                    "text": c.text,
                    "attrs": {"topic": d["topic"]},
                }
            )
    t0 = time.perf_counter()
    vectors = unit_rows(model([c["text"] for c in chunks]))
    log(f"embedded {len(chunks)} chunks of {len(docs)} documents in {time.perf_counter() - t0:.1f} s")
    file_of = {c["id"]: c["file_id"] for c in chunks}
    sets = {name: load_jsonl(DATA / name) for name in QUERY_SETS}
    with tempfile.TemporaryDirectory(prefix="m2a-peer-") as tmp:
        work = Path(tmp)
        write_data(work / "data", chunks, vectors)
        qvecs = {}
        for name, queries in sets.items():
            qvecs[name] = unit_rows(model([q["query"] for q in queries]))
            np.save(work / f"q_{name}.npy", qvecs[name])
        found: dict[str, dict[str, list[list[str]]]] = defaultdict(dict)
        backend = build_backend("sqlite", path=work / "m2a.db")
        try:
            insert_s = await m2a_load(backend, chunks, vectors)
            log(f"[m2a] inserted {len(chunks)} chunks in {insert_s:.2f} s")
            for name, queries in sets.items():
                texts = [q["query"] for q in queries]
                found["m2a vector"][name] = (await m2a_case(backend, qvecs[name], texts, "vector"))["ids"]
                found["m2a hybrid"][name] = (await m2a_case(backend, qvecs[name], texts, "hybrid"))["ids"]
                log(f"[m2a] {name}: {len(queries)} queries, vector and hybrid")
        finally:
            await backend.close()
        cases = [{"name": name, "queries": str(work / f"q_{name}.npy")} for name in sets]
        res = run_chroma(peer_python, work / "data", cases)
        for name in sets:
            found["Chroma vector"][name] = res["cases"][name]["ids"]
    ids = [c["id"] for c in chunks]
    systems = ["m2a vector", "Chroma vector", "m2a hybrid"]
    print(
        f"\nquality: {len(docs)} documents, {len(chunks)} chunks, all-MiniLM-L6-v2 (CPU); "
        f"chromadb {res['chromadb']} (HNSW {res['configuration']}); recall@5 / MRR@10 by document"
    )
    print("| set | queries | n | " + " | ".join(systems) + " |")
    print("|---|---|---|" + "---|" * len(systems))
    for name, queries in sets.items():
        sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for qi, q in enumerate(queries):
            relevant = set(q["relevant"])
            for s in systems:
                ranked = by_document(found[s][name][qi], file_of)
                first = next((i for i, f in enumerate(ranked[:10]) if f in relevant), None)
                for kind in (q["kind"], "all"):
                    sums[kind][f"{s} r"].append(len(relevant & set(ranked[:5])) / len(relevant))
                    sums[kind][f"{s} m"].append(0.0 if first is None else 1.0 / (first + 1))
        for j, kind in enumerate(k for k in ("keyword", "paraphrase", "natural", "all") if k in sums):
            cells = " | ".join(
                f"{statistics.fmean(sums[kind][s + ' r']):.3f} / {statistics.fmean(sums[kind][s + ' m']):.3f}"
                for s in systems
            )
            label = "holdout" if "holdout" in name else name
            print(f"| {label if j == 0 else ''} | {kind} | {len(sums[kind][systems[0] + ' r'])} | {cells} |")
    for name in sets:
        truth = [[ids[r] for r in t] for t in exact_top(vectors, qvecs[name])]
        line = ", ".join(f"{s} {recall(found[s][name], truth):.3f}" for s in systems[:2])
        print(f"recall@10 of chunks against the exact top 10, {name}: {line}")


# -- speed --------------------------------------------------------------------------------------


def first_word(text: str) -> str:
    words = text.split()
    return next((w for w in words if w not in STOPWORDS), words[-1])


async def speed_one(
    n: int, n_queries: int, seed: int, vectors_kind: str, peer_python: str, vocab: list[str]
) -> dict:
    t0 = time.perf_counter()
    data = speed_data(n, n_queries, 384, seed, vocab, vectors_kind)
    chunks: list[dict[str, Any]] = []
    rows = []
    for file_id, recs, attrs in data.files:
        for r in recs:
            chunks.append(
                {
                    "id": f"{file_id}:{r.index}",
                    "file_id": file_id,
                    "index": r.index,
                    "text": r.text,
                    "attrs": dict(attrs),
                }
            )
            rows.append(r.vector)
    vectors = unit_rows(np.stack(rows))
    del rows, data.files
    queries = unit_rows(np.stack([q for q, _ in data.queries]))
    texts = [t for _, t in data.queries]
    words = [first_word(t) for t in texts]
    ids = [c["id"] for c in chunks]
    log(f"{n} chunks and {n_queries} queries made in {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    passing = np.array([c["attrs"]["shard"] == FILTER["value"] for c in chunks])
    truth = {
        "vector": exact_top(vectors, queries),
        "filter": exact_top(vectors, queries, np.flatnonzero(passing)),
    }
    contains: list[list[int]] = []
    n_match: list[int] = []
    for qi, w in enumerate(words):
        match = np.array([i for i, c in enumerate(chunks) if w in c["text"]], dtype=np.int64)
        n_match.append(len(match))
        contains.append(exact_top(vectors, queries[qi : qi + 1], match)[0] if len(match) else [])
    truth["contains"] = contains
    truth_ids = {key: [[ids[r] for r in t] for t in val] for key, val in truth.items()}
    log(
        f"exact top 10s computed in {time.perf_counter() - t0:.0f} s "
        f"(query words match {statistics.median(n_match):.0f} chunks at the median)"
    )

    result: dict[str, Any] = {"n": n, "words_median_matches": statistics.median(n_match)}
    with tempfile.TemporaryDirectory(prefix="m2a-peer-") as tmp:
        work = Path(tmp)
        write_data(work / "data", chunks, vectors)
        np.save(work / "q.npy", queries)
        path = work / "m2a.db"
        backend = build_backend("sqlite", path=path)
        m2a: dict[str, Any] = {}
        try:
            insert_s = await m2a_load(backend, chunks, vectors)
            m2a["insert_chunks_per_s"] = n / insert_s
            log(f"[m2a] inserted {n} chunks in {insert_s:.1f} s ({n / insert_s:.0f} chunks/s)")
            t0 = time.perf_counter()
            await backend.search("bench", queries[0], texts[0], k=K, mode="vector")
            m2a["first_ms"] = 1000 * (time.perf_counter() - t0)
            flt = {"type": "eq", "key": "shard", "value": FILTER["value"]}
            m2a_cases = {
                "vector": ("vector", None, None, "vector"),
                "vector, filter 1 file in 10": ("vector", flt, None, "filter"),
                "keyword (FTS5 bm25)": ("keyword", None, None, None),
                "hybrid 1:1": ("hybrid", None, EVEN, None),
                "hybrid 1:1, filter 1 file in 10": ("hybrid", flt, EVEN, None),
            }
            for name, (mode, f, w, tkey) in m2a_cases.items():
                t0 = time.perf_counter()
                r = await m2a_case(backend, queries, list(texts), mode, f, w)
                m2a[name] = (pct(r["lat_ms"], 50), pct(r["lat_ms"], 99))
                if tkey:
                    m2a[name + " recall"] = recall(r["ids"], truth_ids[tkey])
                log(
                    f"[m2a] {name}: {len(texts)} queries in {time.perf_counter() - t0:.1f} s, "
                    f"p50 {m2a[name][0]:.2f} ms"
                )
        finally:
            await backend.close()
        m2a["db_mb"] = sum(p.stat().st_size for p in work.glob("m2a.db*")) / 1e6
        q = str(work / "q.npy")
        chroma_cases = [
            {"name": "vector", "queries": q},
            {"name": "vector, filter 1 file in 10", "queries": q, "where": {"shard": FILTER["value"]}},
            {"name": "vector, where_document $contains word", "queries": q, "contains": words},
            {
                "name": "get, where_document $contains word (unranked)",
                "queries": q,
                "contains": words,
                "get": True,
            },
        ]
        res = run_chroma(peer_python, work / "data", chroma_cases)
    chroma: dict[str, Any] = {
        "insert_chunks_per_s": n / res["insert_s"],
        "first_ms": res["first_query_ms"],
        "db_mb": res["db_mb"],
    }
    for case, tkey in zip(chroma_cases, ["vector", "filter", "contains", None], strict=True):
        r = res["cases"][case["name"]]
        chroma[case["name"]] = (pct(r["lat_ms"], 50), pct(r["lat_ms"], 99))
        if tkey:
            chroma[case["name"] + " recall"] = recall(r["ids"], truth_ids[tkey])
    result.update({"m2a": m2a, "chroma": chroma, "chromadb": res["chromadb"], "hnsw": res["configuration"]})
    return result


async def speed(sizes: list[int], n_queries: int, seed: int, vectors_kind: str, peer_python: str) -> None:
    vocab = synthetic_vocabulary(np.random.default_rng(seed))
    results = []
    for n in sizes:
        results.append(await speed_one(n, n_queries, seed, vectors_kind, peer_python, vocab))
        log(f"size {n} done (load average {load_avg()})")
    r0 = results[0]
    print(
        f"\nspeed: {n_queries} sequential searches per row, k=10, 384 dimensions, {vectors_kind} vectors; "
        f"chromadb {r0['chromadb']} (HNSW {r0['hnsw']}); ms p50 / p99 (load average {load_avg()})"
    )
    cols = [f"{who}, {r['n']:,}" for r in results for who in ("m2a", "Chroma")]
    print("| search | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    names: list[str] = []
    for r in results:
        for who in ("m2a", "chroma"):
            names += [k for k, v in r[who].items() if isinstance(v, tuple) and k not in names]

    def cell(side: dict, key: str, fmt: str) -> str:
        v = side.get(key)
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return f"{v[0]:.2f} / {v[1]:.2f}" if isinstance(v, tuple) else fmt.format(v)

    for name in names:
        print(
            f"| {name} | "
            + " | ".join(cell(r[w], name, "") for r in results for w in ("m2a", "chroma"))
            + " |"
        )
    for name in names:
        if any(name + " recall" in r[w] for r in results for w in ("m2a", "chroma")):
            print(
                f"| {name}: recall@10 vs exact | "
                + " | ".join(
                    cell(r[w], name + " recall", "{:.3f}") for r in results for w in ("m2a", "chroma")
                )
                + " |"
            )
    for label, key, fmt in [
        ("first search after the load, ms", "first_ms", "{:.0f}"),
        ("insert (no embedding), chunks/s", "insert_chunks_per_s", "{:.0f}"),
        ("on disk, MB", "db_mb", "{:.0f}"),
    ]:
        print(
            f"| {label} | "
            + " | ".join(cell(r[w], key, fmt) for r in results for w in ("m2a", "chroma"))
            + " |"
        )
    print(
        "query words ($contains): chunks matched at the median: "
        + ", ".join(f"{r['n']:,}: {r['words_median_matches']:.0f}" for r in results)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality", "speed"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vectors", choices=["random", "clustered"], default="clustered")
    ap.add_argument("--peer-python", default="/tmp/chroma-venv/bin/python", help="a Python with chromadb")
    args = ap.parse_args()
    if not Path(args.peer_python).exists():
        sys.exit(
            f"no peer Python at {args.peer_python}: python3 -m venv /tmp/chroma-venv && "
            "/tmp/chroma-venv/bin/pip install chromadb numpy"
        )
    log(f"load average at the start: {load_avg()}")
    t0 = time.perf_counter()
    if args.what == "quality":
        asyncio.run(quality(args.peer_python))
    else:
        asyncio.run(speed(args.sizes, args.queries, args.seed, args.vectors, args.peer_python))
    log(f"done in {time.perf_counter() - t0:.0f} s; load average at the end: {load_avg()}")


if __name__ == "__main__":
    main()
