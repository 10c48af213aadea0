"""The Chroma side of ``bench/data_peer.py``: run with the peer's Python (chromadb and numpy only).

    /tmp/chroma-venv/bin/python bench/data_peer_chroma.py JOB.json

``JOB.json`` names a data folder written by ``data_peer.py`` (``chunks.jsonl``: id, file_id, index,
text, attrs; ``vectors.npy``: float32, one unit row per chunk, same order), a folder for Chroma's
persistent client, and the cases to time. The chunks go into one collection (cosine space, Chroma's
default HNSW settings, no embedding function: the vectors are supplied), one ``add`` per file as
m2a's backend gets them; then each case's queries run one after another, each timed around the
client call. Written to the job's ``out``: the insert time, the first query's time, per case the
latencies (ms) and the ids each query returned, the collection's configuration and the folder's size.

A case: ``queries`` (an ``.npy`` of query vectors), ``where`` (a metadata filter or null),
``contains`` (a list of one word per query for ``where_document={"$contains": word}``, or null) and
``get`` (true: ``collection.get`` with ``where_document`` and ``limit`` k, no vector: Chroma's
full-text match alone, unranked).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import chromadb
import numpy as np


def log(msg: str) -> None:
    print(f"[chroma] {msg}", file=sys.stderr, flush=True)


def folder_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum((Path(root) / f).stat().st_size for f in files)
    return total / 1e6


def load_chunks(data: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    with open(data / "chunks.jsonl", encoding="utf-8") as fh:
        chunks = [json.loads(line) for line in fh if line.strip()]
    vectors = np.load(data / "vectors.npy")
    assert len(chunks) == len(vectors)
    return chunks, vectors


def insert(collection: Any, chunks: list[dict[str, Any]], vectors: np.ndarray) -> float:
    """One ``add`` per file (consecutive rows share a file_id); returns the seconds taken."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(chunks) + 1):
        if i == len(chunks) or chunks[i]["file_id"] != chunks[start]["file_id"]:
            groups.append((start, i))
            start = i
    ids = [c["id"] for c in chunks]
    docs = [c["text"] for c in chunks]
    metas = [{"file_id": c["file_id"], "index": c["index"], **c["attrs"]} for c in chunks]
    t0 = time.perf_counter()
    last = t0
    for g, (a, b) in enumerate(groups):
        collection.add(ids=ids[a:b], embeddings=vectors[a:b], documents=docs[a:b], metadatas=metas[a:b])
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log(f"inserted {b} of {len(chunks)} chunks ({g + 1} files) in {last - t0:.0f} s")
    return time.perf_counter() - t0


def run_case(collection: Any, case: dict[str, Any], k: int) -> dict[str, list]:
    queries = np.load(case["queries"])
    words = case.get("contains")
    lat: list[float] = []
    found: list[list[str]] = []
    for i, qv in enumerate(queries):
        doc_filter = {"$contains": words[i]} if words else None
        t0 = time.perf_counter()
        if case.get("get"):
            res = collection.get(where_document=doc_filter, limit=k)
            ids = res["ids"]
        else:
            res = collection.query(
                query_embeddings=qv[None, :], n_results=k, where=case.get("where"), where_document=doc_filter
            )
            ids = res["ids"][0]
        lat.append(1000 * (time.perf_counter() - t0))
        found.append(list(ids))
    return {"lat_ms": lat, "ids": found}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    data, db = Path(job["data"]), Path(job["db"])
    k = int(job.get("k", 10))
    chunks, vectors = load_chunks(data)
    client = chromadb.PersistentClient(path=str(db), settings=chromadb.Settings(anonymized_telemetry=False))
    collection = client.create_collection(
        "bench", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    log(f"chromadb {chromadb.__version__}: inserting {len(chunks)} chunks")
    insert_s = insert(collection, chunks, vectors)
    log(f"inserted {len(chunks)} chunks in {insert_s:.1f} s ({len(chunks) / insert_s:.0f} chunks/s)")
    first = np.load(job["cases"][0]["queries"])[0]
    t0 = time.perf_counter()
    collection.query(query_embeddings=first[None, :], n_results=k)
    first_ms = 1000 * (time.perf_counter() - t0)
    out: dict[str, Any] = {
        "chromadb": chromadb.__version__,
        "configuration": {key: val for key, val in (collection.configuration.get("hnsw") or {}).items()},
        "chunks": len(chunks),
        "insert_s": insert_s,
        "first_query_ms": first_ms,
        "cases": {},
    }
    for case in job["cases"]:
        t0 = time.perf_counter()
        out["cases"][case["name"]] = run_case(collection, case, k)
        lat = out["cases"][case["name"]]["lat_ms"]
        log(
            f"{case['name']}: {len(lat)} queries in {time.perf_counter() - t0:.1f} s, "
            f"p50 {float(np.percentile(lat, 50)):.2f} ms"
        )
    out["db_mb"] = folder_mb(db)
    Path(job["out"]).write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    main()
