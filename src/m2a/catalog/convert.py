"""Convert a GGUF file to a Hugging Face folder that vLLM can serve (run as a child process).

``python -m m2a.catalog.convert SRC.gguf DEST_DIR`` dequantizes the weights with transformers
(needs torch, transformers and gguf), keeps the tokenizer and its chat template, and writes the
folder atomically: it writes ``DEST_DIR.partial-<pid>`` and renames it to DEST_DIR only when
complete. Its own progress lines start with ``STEP``; the rest (progress bars, warnings) is the
libraries'. Stopped by SIGTERM or SIGINT (or failing), it removes its partial folder before exiting.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

STEP = "m2a-convert: "  # marks the converter's own progress lines among the libraries' output


def step(message: str) -> None:
    print(STEP + message, flush=True)


def partial_dir(dest: Path, pid: int) -> Path:
    """Where the converter with process id ``pid`` writes before renaming to ``dest``."""
    return dest.with_name(f"{dest.name}.partial-{pid}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through convert's cleanup


def convert(src: Path, dest: Path) -> None:
    t0 = time.monotonic()
    tmp = partial_dir(dest, os.getpid())
    try:
        _convert_into(src, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step(f"done in {time.monotonic() - t0:.1f}s")


def _convert_into(src: Path, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    step(f"reading tokenizer from {src.name}")
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    step("dequantizing weights")
    model = AutoModelForCausalLM.from_pretrained(
        str(src.parent),
        gguf_file=src.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # the saved folder holds plain dense weights
    step(f"writing {tmp}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m m2a.catalog.convert SRC.gguf DEST_DIR")
    signal.signal(signal.SIGTERM, _terminate)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
