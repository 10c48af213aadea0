"""`m2a up` before any engine starts: the plan checks each model's configuration and says what it chose.

A hand-made Hugging Face folder (SmolLM2-135M's config.json, no weights) is enough: a configuration
that cannot work is refused before launching, so no engine ever starts here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m2a.config import ModelConfig, Settings
from m2a.metal.inventory import Inventory
from m2a.serve import plan
from tests.test_engines import SMOL_CONFIG, TESTER_KV

ROOT = Path(__file__).resolve().parent.parent
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def smol_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(SMOL_CONFIG))
    return path


def m2a(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    env.update(M2A_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "m2a", *args], env=env, cwd=home, capture_output=True, text=True, timeout=120
    )


@needs_vllm
def test_plan_picks_the_context_that_fits_and_says_so_once(tmp_path: Path) -> None:
    folder = smol_folder(tmp_path / "smol")
    model = ModelConfig(name="smol", source=str(folder), engine="vllm", kv_cache_bytes=TESTER_KV, replicas=2)
    said: list[str] = []
    specs = plan(Settings(home=tmp_path / "home", models=[model]), Inventory(cpus=2), said.append)
    assert [s.argv[s.argv.index("--max-model-len") + 1] for s in specs if s.argv] == ["6016", "6016"]
    notes = [m for m in said if "context 6016 tokens" in m]
    assert len(notes) == 1, said  # per model, not per replica


@needs_vllm
def test_up_refuses_a_context_that_does_not_fit_before_launching(tmp_path: Path) -> None:
    from m2a.metal.inventory import detect

    if detect().has_nvidia:
        pytest.skip("on a GPU vLLM sizes its own KV cache")
    home = tmp_path / "home"
    home.mkdir()
    model = {
        "name": "smol",
        "source": str(smol_folder(tmp_path / "smol")),
        "engine": "vllm",
        "kv_cache_bytes": TESTER_KV,
        "max_model_len": 8192,
    }
    (home / "c.yaml").write_text(yaml.safe_dump({"models": [model]}))
    r = m2a(home, "up", "--config", str(home / "c.yaml"), "--port", "0")
    assert r.returncode == 1, r.stderr
    assert "error: smol: max_model_len 8192 does not fit the KV cache" in r.stderr
    assert "At most 6016 tokens fit" in r.stderr
    assert "starting vllm" not in r.stderr and not (home / "logs").exists()
