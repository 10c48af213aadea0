"""Does a model's context fit its KV cache? Checked before vLLM starts, from the model's config.json.

vLLM refuses to start when one request of ``max_model_len`` tokens does not fit the KV cache, after a
minute of loading. The KV cache holds, for each token, a key and a value per layer and KV head:
``2 × layers × kv_heads × head_dim × dtype bytes``. vLLM counts it in blocks (128 tokens on CPU,
16 on GPUs) and keeps one block back (the block pool's null block), so ``n`` tokens need
``(ceil(n / block) + 1) × block × bytes_per_token`` bytes. Only plain full-attention models are
sized here; for others (sliding windows, hybrid or latent attention) vLLM decides alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from m2a.engines.base import EngineConfigError

CPU_BLOCK = 128
GPU_BLOCK = 16
GIB = 1 << 30

# vLLM's `--dtype` values; with "auto" it runs float32 checkpoints in bfloat16 or float16 too.
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


class ContextError(EngineConfigError):
    """A configured context that does not fit the KV cache; the message says what would."""


@dataclass(frozen=True)
class KvShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes  # 2: K and V

    def describe(self) -> str:
        return (
            f"{self.bytes_per_token} bytes a token: {self.layers} layers × {self.kv_heads} KV heads × "
            f"{self.head_dim} dims × {self.dtype_bytes} bytes × 2 (K and V)"
        )


def read_config(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text_config(config: dict[str, object]) -> dict[str, object]:
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def native_context(config: dict[str, object]) -> int | None:
    value = _text_config(config).get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def kv_shape(config: dict[str, object], dtype_bytes: int = 2) -> KvShape | None:
    """The KV cache's shape per token, or None for a model this module does not size."""
    c = _text_config(config)
    layer_types = c.get("layer_types")
    if isinstance(layer_types, list) and any(t != "full_attention" for t in layer_types):
        return None  # sliding windows, linear attention or state-space layers: sized differently
    if c.get("sliding_window") and c.get("use_sliding_window", True):
        return None
    if any(c.get(k) for k in ("kv_lora_rank", "attention_chunk_size", "mamba_d_state", "ssm_cfg")):
        return None
    layers, heads = c.get("num_hidden_layers"), c.get("num_attention_heads")
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim")
    hidden = c.get("hidden_size")
    if not head_dim and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads
    values = (layers, kv_heads, head_dim)
    if not all(isinstance(v, int) and v > 0 for v in values):
        return None
    return KvShape(int(layers), int(kv_heads), int(head_dim), dtype_bytes)  # type: ignore[arg-type]


def flag_value(argv: list[str], name: str) -> str | None:
    """The last value given for ``--name`` in an argument list (``--name V`` or ``--name=V``)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def dtype_bytes(argv: list[str]) -> int:
    """Bytes per KV element for a vLLM command line: the KV-cache dtype, else the model dtype."""
    kv = (flag_value(argv, "--kv-cache-dtype") or "auto").lower()
    if kv.startswith("fp8") or kv.startswith("int8"):
        return 1
    if kv in _DTYPE_BYTES:
        return _DTYPE_BYTES[kv]
    return _DTYPE_BYTES.get((flag_value(argv, "--dtype") or "auto").lower(), 2)


def max_fitting(budget: int, bytes_per_token: int, block: int) -> int:
    """The longest context (whole blocks) one request can have in ``budget`` bytes; 0 if none."""
    blocks = budget // (bytes_per_token * block) - 1  # vLLM keeps one block back
    return max(blocks, 0) * block


def bytes_needed(tokens: int, bytes_per_token: int, block: int) -> int:
    return (math.ceil(tokens / block) + 1) * block * bytes_per_token


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class Fit:
    """The context to start with (None: vLLM's own default) and a line saying why, if it changed."""

    max_model_len: int | None
    note: str | None = None


def fit_context(
    model: str,
    config: dict[str, object] | None,
    argv: list[str],
    wanted: int | None,
    configured: bool,
    block: int,
) -> Fit:
    """Check ``wanted`` (or the model's own length) against the KV budget in ``argv``.

    A configured length that does not fit raises ContextError; an unconfigured one is lowered to the
    longest that fits, with a note. Without a known budget or KV shape, ``wanted`` is kept as is.
    """
    budget_arg = flag_value(argv, "--kv-cache-memory-bytes")
    shape = kv_shape(config, dtype_bytes(argv)) if config else None
    if budget_arg is None or not budget_arg.isdigit() or shape is None:
        return Fit(wanted)
    budget, per_token = int(budget_arg), shape.bytes_per_token
    block = int(b) if (b := flag_value(argv, "--block-size")) and b.isdigit() else block
    fits = max_fitting(budget, per_token, block)
    length = wanted or (native_context(config) if config else None)
    if length is None or length <= fits:
        return Fit(wanted)
    where = f"kv_cache_bytes is {budget} ({gib(budget)}; {shape.describe()}, in blocks of {block})"
    if fits == 0:
        raise ContextError(
            f"{model}: the KV cache is too small for even one block of {block} tokens: {where}. "
            f"Set kv_cache_bytes to at least {bytes_needed(block, per_token, block)}"
        )
    if configured:
        raise ContextError(
            f"{model}: max_model_len {length} does not fit the KV cache: one request of {length} "
            f"tokens needs {bytes_needed(length, per_token, block)} bytes "
            f"({gib(bytes_needed(length, per_token, block))}) but {where}. At most {fits} tokens fit: "
            f"set max_model_len to {fits} or less, or kv_cache_bytes to at least "
            f"{bytes_needed(length, per_token, block)}"
        )
    return Fit(
        fits,
        f"{model}: context {fits} tokens, the most that fits the KV cache (the model's own is {length}; "
        f"{where}); set max_model_len or kv_cache_bytes to change it",
    )
