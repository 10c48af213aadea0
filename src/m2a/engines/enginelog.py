"""Reading an engine's log: its start-up stage from known lines, and the error it died of.

The raw output stays in the replica's log file; what `m2a up` prints is distilled from it:

* the stage (starting, loading weights, allocating the KV cache, compiling / warming up, starting
  the API server), recognised from log lines vLLM and llama.cpp are known to print. Any other line
  is never shown as a stage;
* the error line: for a Python engine, the exception that ended the last traceback (with vLLM, the
  engine core's own error, not the API server's "see root cause above" that follows it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

START_MARK = "=== m2a: starting"

# (substring, stage), per engine; the last recognised line of a run gives its stage.
_UVICORN = [
    ("Waiting for application startup", "starting the API server"),
    ("Application startup complete", "serving"),
    ("Uvicorn running on", "serving"),
]
STAGES: dict[str, list[tuple[str, str]]] = {
    "vllm": [
        ("non-default args", "starting"),
        ("vLLM server version", "starting"),
        ("Initializing a V1 LLM engine", "starting the engine"),
        ("Starting to load model", "loading weights"),
        ("Loading safetensors checkpoint shards", "loading weights"),
        ("Loading weights took", "loading weights"),
        ("Model loading took", "loaded weights"),
        ("Dynamo bytecode transform", "compiling"),
        ("Compiling a graph", "compiling"),
        ("Directly load the compiled graph", "compiling"),
        ("torch.compile took", "compiling"),
        ("Warming up model for the compilation", "compiling / warming up"),
        ("Compile and warming up model", "compiling / warming up"),
        ("Warming up done", "warming up"),
        ("Memory profiling", "profiling memory"),
        ("Profiling CUDA graph memory", "profiling memory"),
        ("GiB for KV cache", "allocating the KV cache"),
        ("Available KV cache memory", "allocating the KV cache"),
        ("KV cache size:", "allocating the KV cache"),
        ("Maximum concurrency for", "allocating the KV cache"),
        ("Capturing CUDA graphs", "capturing CUDA graphs"),
        ("Graph capturing finished", "warming up"),
        ("init engine (profile, create kv cache, warmup model) took", "starting the API server"),
        ("Starting vLLM server on", "starting the API server"),
        ("Available routes are", "starting the API server"),
        *_UVICORN,
    ],
    "llamacpp": [
        ("llama_model_loader:", "loading weights"),
        ("llama_model_load", "loading weights"),
        ("print_info:", "loading weights"),
        ("load_tensors:", "loading weights"),
        ("llm_load_tensors:", "loading weights"),
        ("llama_context:", "allocating the KV cache"),
        ("llama_new_context_with_model", "allocating the KV cache"),
        ("llama_kv_cache", "allocating the KV cache"),
        ("sched_reserve:", "warming up"),
        ("graph_reserve:", "warming up"),
        ("Started server process", "starting the API server"),
        *_UVICORN,
    ],
}


def stage_of(engine: str, line: str, current: str) -> str:
    """The stage after ``line``: the one it names, else ``current``."""
    for needle, stage in reversed(STAGES.get(engine, _UVICORN)):
        if needle in line:
            return stage
    return current


class StageReader:
    """Follows a growing log file from an offset and keeps the stage its known lines name."""

    def __init__(self, path: Path, engine: str) -> None:
        self.path = path
        self.engine = engine
        self.stage = "starting"
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = ""

    def poll(self, max_bytes: int = 1 << 20) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read(max_bytes)
        except OSError:
            return self.stage
        self._offset += len(data)
        text = self._partial + data.decode(errors="replace")
        *lines, self._partial = re.split(r"[\r\n]", text)
        for line in lines:
            self.stage = stage_of(self.engine, line, self.stage)
        return self.stage


def run_lines(path: Path, max_bytes: int = 256 << 10) -> list[str]:
    """The non-empty lines the last run wrote (after m2a's start mark), from the log's last bytes."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    if START_MARK in text:
        text = text[text.rindex(START_MARK) :].split("\n", 1)[-1]
    return [ln.strip() for ln in re.split(r"[\r\n]", text) if ln.strip()]


def tail(path: Path, lines: int = 1) -> list[str]:
    """The last non-empty lines of the last run in a log file."""
    return run_lines(path, 8192)[-lines:]


# What a log line starts with before the message: vLLM's "(EngineCore_DP0 pid=12) " process tag and
# "ERROR 10-15 12:34:56 [core.py:708] " level, time and place.
_PREFIX = re.compile(
    r"^(?:\(\w+ pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"\s+\[[^\]]*\]\s?)?"
)
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)\b(?::.*)?$")
# The last exception of a traceback that only points back at the real one printed before it.
_POINTS_BACK = re.compile(r"root cause above|see (?:the )?(?:error|log|stack trace)s? above", re.I)


def message(line: str) -> str:
    """A log line without vLLM's process, level, time and place prefix."""
    return _PREFIX.sub("", line, count=1)


def error_line(lines: list[str]) -> str | None:
    """The error an engine died of, from its output (see the module docstring); None if none shows."""
    messages = [message(ln) for ln in lines]
    ends: list[str] = []  # the exception line closing each traceback, in order
    in_tb = False
    for msg in messages:
        if msg.startswith("Traceback (most recent call last)"):
            in_tb = True
        elif in_tb and _EXCEPTION.match(msg):  # frames and code lines never match
            ends.append(msg)
            in_tb = False
    found = ends or [m for m in messages if _EXCEPTION.match(m) and ":" in m]
    if found:
        real = [e for e in found if not _POINTS_BACK.search(e)]
        return (real or found)[-1]
    errors = [m for m in messages if re.search(r"\berror\b", m, re.I)]
    return errors[-1] if errors else None
