"""Convert a GGUF file to a Hugging Face folder that vLLM can serve (run as a child process).

``python -m m2a.catalog.convert SRC.gguf DEST_DIR`` dequantizes the weights with transformers
(needs torch, transformers and gguf), keeps the tokenizer and its chat template, and writes the
folder atomically: DEST_DIR appears only when complete.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def convert(src: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    t0 = time.monotonic()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"reading tokenizer from {src.name}", flush=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    print("dequantizing weights", flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(src.parent),
        gguf_file=src.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # the saved folder holds plain dense weights
    print(f"writing {tmp}", flush=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    print(f"done in {time.monotonic() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m m2a.catalog.convert SRC.gguf DEST_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
