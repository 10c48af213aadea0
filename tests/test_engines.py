"""Engine adapters turn a model's configuration into a command line and endpoints (nothing is started).

``VllmEngine``, ``LlamaCppEngine`` and ``RemoteEngine`` build ``EngineSpec`` s from a ``ModelConfig``,
a ``Manifest`` built by hand and an ``Inventory`` (CPU-only or with NVIDIA GPUs, also by hand);
``registry.choose`` picks an adapter, with the engines' availability patched where it matters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from m2a.catalog.store import Manifest
from m2a.config import ModelConfig
from m2a.engines import registry
from m2a.engines.llamacpp import DEFAULT_CONTEXT, LlamaCppEngine
from m2a.engines.registry import EngineChoiceError, choose
from m2a.engines.remote import RemoteEngine
from m2a.engines.vllm import (
    CPU_DEFAULT_KV_CACHE_BYTES,
    VllmEngine,
    cpu_binding,
    publish_kv_events,
    tool_parser_for,
)
from m2a.metal.inventory import Gpu, Inventory

CPU2 = Inventory(cpus=2)
CPU8 = Inventory(cpus=8)
GPU1 = Inventory(cpus=16, gpus=[Gpu("nvidia", 0, "NVIDIA H100", 81559)])
GPU2 = Inventory(
    cpus=16, gpus=[Gpu("nvidia", 0, "NVIDIA H100", 81559), Gpu("nvidia", 1, "NVIDIA H100", 81559)]
)


def manifest(
    task: str = "chat",
    model_type: str | None = None,
    tools: bool = False,
    tool_call_format: str | None = None,
    gguf: bool = False,
) -> Manifest:
    paths = {"hf": "/models/m/hf"}
    if gguf:
        paths["gguf"] = "/models/m/model.Q4.gguf"
    return Manifest(
        name="m",
        source="org/m",
        origin="hub",
        task=task,
        paths=paths,
        size_bytes={k: 1 for k in paths},
        model_type=model_type,
        template_supports_tools=tools,
        tool_call_format=tool_call_format,
        imported_at="2024-01-01T00:00:00+00:00",
    )


def flag(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv`` (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv else None


# ---------------------------------------------------------------------------- vLLM
def test_vllm_chat_on_cpu() -> None:
    cfg = ModelConfig(name="smol", max_model_len=2048, extra_args=["--seed", "7"])
    spec = VllmEngine().spec(cfg, manifest(), 18100, 0, CPU2)
    argv = spec.argv
    assert argv is not None and spec.managed
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--model") == "/models/m/hf"
    assert flag(argv, "--served-model-name") == "smol"
    assert flag(argv, "--host") == "127.0.0.1" and flag(argv, "--port") == "18100"
    assert flag(argv, "--max-model-len") == "2048"
    assert "--enable-prefix-caching" in argv
    assert flag(argv, "--scheduling-policy") == "priority" and spec.takes_priority
    assert flag(argv, "--kv-cache-memory-bytes") == str(CPU_DEFAULT_KV_CACHE_BYTES)
    assert "--runner" not in argv and "--gpu-memory-utilization" not in argv
    assert argv[-2:] == ["--seed", "7"]  # extra args last, so they win
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert spec.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in spec.env
    assert (spec.replica_id, spec.model, spec.engine, spec.task) == ("smol#0", "smol", "vllm", "chat")
    assert spec.base_url == "http://127.0.0.1:18100/v1"
    assert spec.health_url == "http://127.0.0.1:18100/health"
    assert spec.metrics_url == "http://127.0.0.1:18100/metrics"


def test_vllm_kv_cache_from_config() -> None:
    cfg = ModelConfig(name="smol", kv_cache_bytes=512 << 20)
    argv = VllmEngine().spec(cfg, manifest(), 18100, 0, CPU2).argv
    assert argv is not None and flag(argv, "--kv-cache-memory-bytes") == str(512 << 20)


def test_vllm_kv_events_on_a_private_unix_socket(tmp_path: Path) -> None:
    cfg = ModelConfig(name="smol", replicas=2)
    spec = VllmEngine().spec(cfg, manifest(), 18100, 1, CPU2)
    publish_kv_events(spec, tmp_path / "run" / "kv")
    assert spec.argv is not None
    config = json.loads(flag(spec.argv, "--kv-events-config"))
    sock = tmp_path / "run" / "kv" / "kv-smol-1.sock"
    assert config == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"ipc://{sock}",
        "topic": "kv",
    }
    assert spec.kv_events == f"ipc://{sock}"
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    deep = tmp_path / ("d" * 120)  # too long for a socket path: a private temporary folder instead
    spec = VllmEngine().spec(cfg, manifest(), 18100, 0, CPU2)
    publish_kv_events(spec, deep)
    assert spec.kv_events is not None and len(spec.kv_events) < 108 and "m2a-kv-" in spec.kv_events
    own = ModelConfig(name="smol", replicas=2, extra_args=["--kv-events-config", "{}"])
    spec = VllmEngine().spec(own, manifest(), 18100, 0, CPU2)
    publish_kv_events(spec, tmp_path)
    assert spec.argv is not None and spec.argv.count("--kv-events-config") == 1 and spec.kv_events is None


def test_vllm_embed_on_cpu() -> None:
    spec = VllmEngine().spec(ModelConfig(name="minilm"), manifest(task="embed"), 18101, 0, CPU8)
    argv = spec.argv
    assert argv is not None and spec.task == "embed"
    assert flag(argv, "--runner") == "pooling"
    assert "--scheduling-policy" not in argv and "priority" not in argv and not spec.takes_priority
    assert "--enable-prefix-caching" not in argv
    assert "--enable-auto-tool-choice" not in argv and "--tool-call-parser" not in argv
    assert flag(argv, "--kv-cache-memory-bytes") == str(256 << 20)
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # one core: mostly idle
    assert flag(argv, "--dtype") == "float32"  # not vLLM-CPU's float16 cast (4.5x slower here)
    own = ModelConfig(name="minilm", extra_args=["--dtype", "bfloat16"])
    argv = VllmEngine().spec(own, manifest(task="embed"), 18101, 0, CPU8).argv
    assert argv is not None and argv.count("--dtype") == 1 and flag(argv, "--dtype") == "bfloat16"
    chat = VllmEngine().spec(ModelConfig(name="smol"), manifest(), 18101, 0, CPU8).argv
    assert chat is not None and "--dtype" not in chat


def test_vllm_task_from_config_wins_over_manifest() -> None:
    spec = VllmEngine().spec(ModelConfig(name="e", task="embed"), manifest(task="chat"), 18100, 0, CPU2)
    assert spec.task == "embed" and spec.argv is not None and "--runner" in spec.argv


@pytest.mark.parametrize(
    ("model_type", "parser"),
    [("qwen3", "hermes"), ("qwen2", "hermes"), ("llama", "llama3_json"), ("mistral", "mistral")],
)
def test_vllm_tool_parser_from_model_family(model_type: str, parser: str) -> None:
    m = manifest(model_type=model_type, tools=True)
    argv = VllmEngine().spec(ModelConfig(name="m"), m, 18100, 0, CPU2).argv
    assert argv is not None
    assert "--enable-auto-tool-choice" in argv
    assert flag(argv, "--tool-call-parser") == parser


def test_vllm_tool_parser_from_config_overrides() -> None:
    m = manifest(model_type="llama", tools=True, tool_call_format="llama3_json")
    argv = VllmEngine().spec(ModelConfig(name="m", tool_parser="pythonic"), m, 18100, 0, CPU2).argv
    assert argv is not None and flag(argv, "--tool-call-parser") == "pythonic"


def test_vllm_tool_parser_none_disables_tool_calls() -> None:
    m = manifest(model_type="qwen3", tools=True)
    argv = VllmEngine().spec(ModelConfig(name="m", tool_parser="none"), m, 18100, 0, CPU2).argv
    assert argv is not None
    assert "--enable-auto-tool-choice" not in argv and "--tool-call-parser" not in argv


def test_tool_parser_choice_order() -> None:
    cfg = ModelConfig(name="m")
    # The template's own tool-call markers win over the family's parser.
    assert (
        tool_parser_for(cfg, manifest(model_type="llama", tools=True, tool_call_format="hermes")) == "hermes"
    )
    assert tool_parser_for(cfg, manifest(model_type="granite", tools=True)) == "granite"
    assert tool_parser_for(cfg, manifest(model_type="unknown-family", tools=True)) == "hermes"
    # A template without tools still gets a parser (forced tool calls work with any model).
    assert tool_parser_for(cfg, manifest(model_type="llama", tools=False)) == "hermes"
    assert tool_parser_for(cfg, None) == "hermes"


def test_vllm_on_nvidia_gpus_one_gpu_per_replica() -> None:
    cfg = ModelConfig(name="big", replicas=2)
    specs = [VllmEngine().spec(cfg, manifest(), 18100 + i, i, GPU2) for i in range(2)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    for s in specs:
        assert s.argv is not None
        assert "--kv-cache-memory-bytes" not in s.argv
        assert "--gpu-memory-utilization" not in s.argv  # each has its GPU to itself
        assert "VLLM_CPU_OMP_THREADS_BIND" not in s.env and "VLLM_TARGET_DEVICE" not in s.env
        assert flag(s.argv, "--scheduling-policy") == "priority"
    assert [s.replica_id for s in specs] == ["big#0", "big#1"]


def test_vllm_replicas_sharing_a_gpu_split_its_memory() -> None:
    cfg = ModelConfig(name="big", replicas=2)
    specs = [VllmEngine().spec(cfg, manifest(), 18100 + i, i, GPU1) for i in range(2)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "0"]
    assert [flag(s.argv or [], "--gpu-memory-utilization") for s in specs] == ["0.42", "0.42"]


def test_vllm_more_replicas_than_gpus_split_the_shared_gpu() -> None:
    # Three replicas on two GPUs: GPU 0 holds two of them, so their memory share must be split.
    cfg = ModelConfig(name="big", replicas=3)
    specs = [VllmEngine().spec(cfg, manifest(), 18100 + i, i, GPU2) for i in range(3)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1", "0"]
    assert flag(specs[0].argv or [], "--gpu-memory-utilization") == "0.42"
    assert flag(specs[2].argv or [], "--gpu-memory-utilization") == "0.42"


def test_vllm_ignores_non_nvidia_gpus() -> None:
    amd = Inventory(cpus=4, gpus=[Gpu("amd", 0, "MI300X", 196608)])
    spec = VllmEngine().spec(ModelConfig(name="m"), manifest(), 18100, 0, amd)
    assert spec.argv is not None and "--kv-cache-memory-bytes" in spec.argv
    assert "CUDA_VISIBLE_DEVICES" not in spec.env


# ---------------------------------------------------------------------------- CPU binding
def test_cpu_binding_one_chat_replica_takes_every_core() -> None:
    assert cpu_binding(ModelConfig(name="m"), 0, 8, "chat") == "0-7"
    assert cpu_binding(ModelConfig(name="m"), 0, 1, "chat") == "0"


def test_cpu_binding_splits_cores_between_replicas() -> None:
    cfg = ModelConfig(name="m", replicas=2)
    assert [cpu_binding(cfg, i, 8, "chat") for i in range(2)] == ["0-3", "4-7"]
    cfg = ModelConfig(name="m", replicas=4)
    assert [cpu_binding(cfg, i, 8, "chat") for i in range(4)] == ["0-1", "2-3", "4-5", "6-7"]
    cfg = ModelConfig(name="m", replicas=2)
    assert [cpu_binding(cfg, i, 2, "chat") for i in range(2)] == ["0", "1"]


def test_cpu_binding_more_replicas_than_cores_wraps_around() -> None:
    cfg = ModelConfig(name="m", replicas=4)
    assert [cpu_binding(cfg, i, 2, "chat") for i in range(4)] == ["0", "1", "0", "1"]


def test_cpu_binding_threads_from_config() -> None:
    cfg = ModelConfig(name="m", replicas=2, cpu_threads=2)
    assert [cpu_binding(cfg, i, 8, "chat") for i in range(2)] == ["0-1", "2-3"]
    assert cpu_binding(ModelConfig(name="m", cpu_threads=64), 0, 4, "chat") == "0-3"  # capped


def test_cpu_binding_embed_takes_one_core() -> None:
    cfg = ModelConfig(name="e", replicas=2)
    assert [cpu_binding(cfg, i, 8, "embed") for i in range(2)] == ["0", "0"]


def test_vllm_cpu_replicas_get_disjoint_cores() -> None:
    cfg = ModelConfig(name="m", replicas=2)
    binds = [
        VllmEngine().spec(cfg, manifest(), 18100 + i, i, CPU8).env["VLLM_CPU_OMP_THREADS_BIND"]
        for i in (0, 1)
    ]
    assert binds == ["0-3", "4-7"]


# ---------------------------------------------------------------------------- llama.cpp
def test_llamacpp_chat_spec() -> None:
    cfg = ModelConfig(name="smol-cpp", engine="llamacpp", max_model_len=2048)
    spec = LlamaCppEngine().spec(cfg, manifest(gguf=True), 18200, 0, CPU8)
    argv = spec.argv
    assert argv is not None
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert flag(argv, "--model") == "/models/m/model.Q4.gguf"
    assert flag(argv, "--model_alias") == "smol-cpp"
    assert flag(argv, "--n_ctx") == "2048"
    assert flag(argv, "--n_threads") == "8"
    assert flag(argv, "--port") == "18200" and flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--interrupt_requests") == "false"
    assert "--embedding" not in argv and "--n_gpu_layers" not in argv
    assert spec.base_url == "http://127.0.0.1:18200/v1"
    assert spec.health_url == "http://127.0.0.1:18200/v1/models"
    assert spec.live_url == "http://127.0.0.1:18200/docs"
    assert spec.metrics_url is None
    assert (spec.engine, spec.task, spec.replica_id) == ("llamacpp", "chat", "smol-cpp#0")


def test_llamacpp_defaults_threads_embed_and_gpu() -> None:
    cfg = ModelConfig(name="e", replicas=2, task="embed")
    argv = LlamaCppEngine().spec(cfg, manifest(gguf=True), 18200, 1, GPU1).argv
    assert argv is not None
    assert flag(argv, "--n_ctx") == str(DEFAULT_CONTEXT)
    assert flag(argv, "--n_threads") == "8"  # 16 cores between two replicas
    assert flag(argv, "--embedding") == "true"
    assert flag(argv, "--n_gpu_layers") == "-1"
    argv = LlamaCppEngine().spec(ModelConfig(name="c", cpu_threads=3), manifest(gguf=True), 1, 0, CPU8).argv
    assert argv is not None and flag(argv, "--n_threads") == "3"


# ---------------------------------------------------------------------------- remote
@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://gpu-box:8000", "http://gpu-box:8000/v1"),
        ("http://gpu-box:8000/", "http://gpu-box:8000/v1"),
        ("http://gpu-box:8000/v1", "http://gpu-box:8000/v1"),
        ("https://api.example.com/v1/", "https://api.example.com/v1"),
    ],
)
def test_remote_spec(url: str, base: str) -> None:
    cfg = ModelConfig(name="far", engine="remote", url=url, api_key="sk-remote")
    spec = RemoteEngine().spec(cfg, None, 18300, 0, CPU2)
    assert spec.base_url == base
    assert spec.health_url == f"{base}/models" and spec.health_url.endswith("/v1/models")
    assert spec.metrics_url == base.removesuffix("/v1") + "/metrics"
    assert spec.argv is None and not spec.managed
    assert spec.api_key == "sk-remote"
    assert (spec.engine, spec.task, spec.replica_id) == ("remote", "chat", "far#0")
    assert not spec.takes_priority  # a remote server gets no priority unless it says it schedules by one
    on = ModelConfig(name="far", engine="remote", url=url, priority_scheduling=True)
    assert RemoteEngine().spec(on, None, 18300, 0, CPU2).takes_priority


def test_remote_spec_task_from_config() -> None:
    cfg = ModelConfig(name="far-embed", url="http://h:1", task="embed")
    assert RemoteEngine().spec(cfg, None, 1, 0, CPU2).task == "embed"


# ---------------------------------------------------------------------------- registry.choose
@pytest.fixture
def availability(monkeypatch: pytest.MonkeyPatch):
    """Set which engines are installed: ``availability(vllm=False)`` makes vLLM unavailable."""

    def set_(vllm: bool = True, llamacpp: bool = True) -> None:
        for name, ok in (("vllm", vllm), ("llamacpp", llamacpp)):
            reason = None if ok else f"{name} is not installed (test)"
            monkeypatch.setattr(registry.ENGINES[name], "unavailable", lambda reason=reason: reason)

    return set_


def test_choose_remote_for_a_url(availability) -> None:
    availability(vllm=False, llamacpp=False)  # nothing local is needed
    assert choose(ModelConfig(name="far", url="http://h:8000/v1")).name == "remote"
    assert choose(ModelConfig(name="far", engine="remote", url="http://h:8000/v1")).name == "remote"


def test_choose_vllm_by_default(availability) -> None:
    availability()
    assert choose(ModelConfig(name="m"), "hf").name == "vllm"
    assert choose(ModelConfig(name="m"), "gguf").name == "vllm"


def test_choose_llamacpp_when_vllm_is_missing(availability) -> None:
    availability(vllm=False)
    assert choose(ModelConfig(name="m"), "gguf").name == "llamacpp"
    with pytest.raises(EngineChoiceError, match="m: no engine can serve it here: vllm is not installed"):
        choose(ModelConfig(name="m"), "hf")
    with pytest.raises(EngineChoiceError):
        choose(ModelConfig(name="m", task="embed"), "gguf")


def test_choose_configured_engine(availability) -> None:
    availability(vllm=True, llamacpp=False)
    assert choose(ModelConfig(name="m", engine="vllm")).name == "vllm"
    with pytest.raises(EngineChoiceError, match="cpp: llamacpp is not installed"):
        choose(ModelConfig(name="cpp", engine="llamacpp"), "gguf")


def test_engines_registry() -> None:
    assert set(registry.ENGINES) == {"vllm", "llamacpp", "remote"}
    assert (VllmEngine.needs_format, LlamaCppEngine.needs_format, RemoteEngine.needs_format) == (
        "hf",
        "gguf",
        None,
    )
    assert RemoteEngine().unavailable() is None


# ---------------------------------------------------------------------------- CPU context cap
@pytest.mark.parametrize(("native", "expected"), [(131072, "8192"), (8192, None), (2048, None)])
def test_vllm_on_cpu_caps_long_contexts_to_fit_the_kv_cache(
    tmp_path, native: int, expected: str | None
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": native}))
    m = manifest()
    m.paths["hf"] = str(tmp_path)
    cpu = VllmEngine().spec(ModelConfig(name="m"), m, 8001, 0, CPU2)
    assert flag(cpu.argv or [], "--max-model-len") == expected
    # A context m2a chose is said (the config.json here has no KV shape: only the cap applies).
    assert cpu.notes == (
        [
            f"m: context 8192 tokens on CPU (the model's own is {native}); set max_model_len "
            "(and kv_cache_bytes) to change it"
        ]
        if expected
        else []
    )
    gpu = VllmEngine().spec(ModelConfig(name="m"), m, 8001, 0, GPU1)
    assert flag(gpu.argv or [], "--max-model-len") is None  # vLLM sizes it from GPU memory
    configured = VllmEngine().spec(ModelConfig(name="m", max_model_len=4096), m, 8001, 0, CPU2)
    assert flag(configured.argv or [], "--max-model-len") == "4096"


def test_cpu_binding_explicit_cores_per_replica() -> None:
    cfg = ModelConfig(name="m", replicas=3, cpu_cores=["0-3", "4-7"])
    assert [cpu_binding(cfg, n, 8, "chat") for n in range(3)] == ["0-3", "4-7", "0-3"]


def test_gateway_socket_disables_nagle() -> None:
    # Accepted connections inherit it; without it, asyncio's loop left answers waiting 40 ms for the
    # client's delayed ACK (measured: 44 ms per request through `m2a up` instead of 1 ms).
    import socket

    from m2a.serve import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


# ---------------------------------------------------------------------------- context and KV cache
# SmolLM2-135M's config.json (as the GGUF conversion writes it): 23040 KV bytes a token.
SMOL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 30,
    "max_position_embeddings": 8192,
    "dtype": "bfloat16",
}
TESTER_KV = 141557760  # what an outside tester configured: vLLM said 6016 tokens fit


def smol_manifest(tmp_path: Path, config: dict | None = None) -> Manifest:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config or SMOL_CONFIG))
    m = manifest()
    m.paths["hf"] = str(tmp_path)
    return m


def test_kv_bytes_per_token_from_config_json() -> None:
    from m2a.engines.kvfit import kv_shape

    shape = kv_shape(SMOL_CONFIG)
    assert shape is not None and (shape.layers, shape.kv_heads, shape.head_dim) == (30, 3, 64)
    assert shape.bytes_per_token == 23040
    explicit = kv_shape({**SMOL_CONFIG, "head_dim": 128, "num_key_value_heads": None})
    assert explicit is not None and explicit.bytes_per_token == 2 * 30 * 9 * 128 * 2  # MHA, head_dim given
    nested = kv_shape({"text_config": SMOL_CONFIG, "model_type": "llava"})
    assert nested is not None and nested.bytes_per_token == 23040
    # Not sized here (vLLM sizes sliding windows and hybrid layers differently): no check at all.
    assert kv_shape({**SMOL_CONFIG, "sliding_window": 4096}) is None
    assert kv_shape({**SMOL_CONFIG, "layer_types": ["sliding_attention", "full_attention"]}) is None
    assert kv_shape({**SMOL_CONFIG, "sliding_window": 4096, "use_sliding_window": False}) is not None
    assert kv_shape({"model_type": "bert"}) is None


def test_the_tester_config_picks_what_vllm_said_fits(tmp_path: Path) -> None:
    """kv_cache_bytes 141557760, default context: vLLM refused 8192 and estimated 6016 tokens."""
    spec = VllmEngine().spec(
        ModelConfig(name="smol", kv_cache_bytes=TESTER_KV), smol_manifest(tmp_path), 1, 0, CPU2
    )
    assert flag(spec.argv or [], "--max-model-len") == "6016"
    (note,) = spec.notes
    assert note.startswith("smol: context 6016 tokens, the most that fits the KV cache")
    assert "the model's own is 8192" in note and "23040 bytes a token" in note


def test_a_configured_context_that_does_not_fit_is_refused_before_launch(tmp_path: Path) -> None:
    from m2a.engines.base import EngineConfigError

    cfg = ModelConfig(name="smol", kv_cache_bytes=TESTER_KV, max_model_len=8192)
    with pytest.raises(EngineConfigError) as exc:
        VllmEngine().spec(cfg, smol_manifest(tmp_path), 1, 0, CPU2)
    msg = str(exc.value)
    assert msg.startswith("smol: max_model_len 8192 does not fit the KV cache")
    assert "needs 191692800 bytes (0.18 GiB)" in msg and "kv_cache_bytes is 141557760 (0.13 GiB" in msg
    assert "At most 6016 tokens fit" in msg and "kv_cache_bytes to at least 191692800" in msg
    # The sizes it names work: the most that fits, or the cache it asks for.
    ok = VllmEngine().spec(
        cfg.model_copy(update={"max_model_len": 6016}), smol_manifest(tmp_path / "a"), 1, 0, CPU2
    )
    assert flag(ok.argv or [], "--max-model-len") == "6016" and ok.notes == []
    big = cfg.model_copy(update={"kv_cache_bytes": 191692800})
    assert (
        flag(VllmEngine().spec(big, smol_manifest(tmp_path / "b"), 1, 0, CPU2).argv or [], "--max-model-len")
        == "8192"
    )
    with pytest.raises(EngineConfigError, match="At most 6016"):
        VllmEngine().spec(
            cfg.model_copy(update={"max_model_len": 6017}), smol_manifest(tmp_path / "c"), 1, 0, CPU2
        )
    # --max-model-len in extra_args is a configured length too.
    extra = ModelConfig(name="smol", kv_cache_bytes=TESTER_KV, extra_args=["--max-model-len=7000"])
    with pytest.raises(EngineConfigError, match="max_model_len 7000 does not fit"):
        VllmEngine().spec(extra, smol_manifest(tmp_path / "d"), 1, 0, CPU2)


def test_kv_dtype_and_block_size_flags_change_what_fits(tmp_path: Path) -> None:
    base = dict(name="smol", kv_cache_bytes=TESTER_KV)
    fp8 = VllmEngine().spec(
        ModelConfig(**base, extra_args=["--kv-cache-dtype", "fp8"]), smol_manifest(tmp_path), 1, 0, CPU2
    )
    assert flag(fp8.argv or [], "--max-model-len") is None  # 11520 bytes a token: 8192 fits
    f32 = VllmEngine().spec(
        ModelConfig(**base, extra_args=["--dtype", "float32"]), smol_manifest(tmp_path / "a"), 1, 0, CPU2
    )
    assert flag(f32.argv or [], "--max-model-len") == "2944"  # 46080 bytes a token: 24 blocks less one
    small = VllmEngine().spec(
        ModelConfig(**base, extra_args=["--block-size", "16"]), smol_manifest(tmp_path / "b"), 1, 0, CPU2
    )
    assert flag(small.argv or [], "--max-model-len") == "6128"  # 384 blocks of 16, one kept back


def test_a_kv_cache_too_small_for_one_block_is_refused(tmp_path: Path) -> None:
    from m2a.engines.base import EngineConfigError

    with pytest.raises(EngineConfigError, match="too small for even one block of 128 tokens"):
        VllmEngine().spec(
            ModelConfig(name="smol", kv_cache_bytes=4 << 20), smol_manifest(tmp_path), 1, 0, CPU2
        )


def test_no_context_check_where_the_budget_or_shape_is_unknown(tmp_path: Path) -> None:
    m = smol_manifest(tmp_path)
    # On a GPU vLLM sizes its KV cache from GPU memory: nothing known before it starts.
    gpu = VllmEngine().spec(ModelConfig(name="smol", max_model_len=8192), m, 1, 0, GPU1)
    assert flag(gpu.argv or [], "--max-model-len") == "8192" and gpu.notes == []
    # An embedding model keeps no KV cache.
    embed = VllmEngine().spec(ModelConfig(name="e", task="embed", kv_cache_bytes=4 << 20), m, 1, 0, CPU2)
    assert flag(embed.argv or [], "--max-model-len") is None
    # A model this check does not size is left to vLLM.
    sliding = smol_manifest(tmp_path / "s", {**SMOL_CONFIG, "sliding_window": 4096})
    spec = VllmEngine().spec(
        ModelConfig(name="s", kv_cache_bytes=4 << 20, max_model_len=8192), sliding, 1, 0, CPU2
    )
    assert flag(spec.argv or [], "--max-model-len") == "8192"
