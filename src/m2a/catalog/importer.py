"""Import a model: resolve its source, convert it once to the format an engine needs, record it."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from m2a.catalog.builtin import BUILTINS
from m2a.catalog.convert import STEP, partial_dir
from m2a.catalog.sources import Format, SourceError, absolute, hf_metadata, is_reference, resolve
from m2a.catalog.store import Catalog, Manifest, now_iso

Progress = Callable[[str], None]
CONVERTER = [sys.executable, "-m", "m2a.catalog.convert"]  # + SRC.gguf DEST_DIR


def _guess_task(folder: Path | None) -> str:
    if folder is None:
        return "chat"
    if (folder / "modules.json").exists() or (folder / "sentence_bert_config.json").exists():
        return "embed"
    meta = hf_metadata(folder)
    archs = [str(a) for a in meta.get("architectures") or []]  # type: ignore[union-attr]
    if archs and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs):
        return "embed"
    return "chat"


def default_source(name: str, catalog: Catalog | None = None) -> str:
    """Where a model named without a source comes from: its catalog entry, a built-in, or the name."""
    existing = catalog.get(name) if catalog is not None else None
    if existing is not None:
        return existing.source
    builtin = BUILTINS.get(name)
    return builtin.source if builtin else name


def known_names(home: Path) -> str:
    imported = [m.name for m in Catalog(home).all() if m.name not in BUILTINS]
    return f"built in: {', '.join(BUILTINS)}; imported: {', '.join(imported) or 'none'}"


def check_reference(home: Path, name: str, source: str | None = None) -> str:
    """The source ``name`` is served from, absolute for local files; a name m2a does not know (not
    built in, not imported) that is no model reference either raises SourceError listing those it knows."""
    ref = source or default_source(name, Catalog(home))
    if not is_reference(ref):
        what = f"{name!r}" if source is None else f"{name!r} (source {source!r})"
        raise SourceError(
            f"{what} is not a model name m2a knows ({known_names(home)}; see `m2a models list`) nor a "
            f"model reference (a Hugging Face id org/name, a folder, a .gguf file, or pkg:<package>/<path>)"
        )
    return absolute(ref)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_stale_partials(dest: Path) -> None:
    """Partial folders of converters no longer running (killed before they could clean up)."""
    for d in dest.parent.glob(f"{dest.name}.partial*"):
        pid = d.name.rpartition("-")[2]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(d, ignore_errors=True)


def _convert(src: Path, dest: Path, progress: Progress) -> None:
    """Convert in a child process that stops with us: on Ctrl-C, SIGTERM (which `m2a` turns into
    KeyboardInterrupt) or our death, it is stopped and leaves no partial folder behind."""
    progress(f"converting {src.name} to a Hugging Face folder (once; cached in {dest.parent})")
    _remove_stale_partials(dest)
    proc = subprocess.Popen(
        [*CONVERTER, str(src), str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_die_with_parent,
    )
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip().rpartition("\r")[2]  # a progress bar's last state
            tail = (tail + [line])[-20:]
            if line.startswith(STEP):  # the converter's own steps; progress bars stay quiet
                progress(f"  {line.removeprefix(STEP)}")
        code = proc.wait()
    except BaseException:
        _stop(proc)
        shutil.rmtree(partial_dir(dest, proc.pid), ignore_errors=True)
        raise
    if code != 0:
        shutil.rmtree(partial_dir(dest, proc.pid), ignore_errors=True)
        raise SourceError(f"converting {src} failed:\n" + "\n".join(tail))


def import_model(
    home: Path,
    name: str,
    source: str | None = None,
    *,
    want: Format | None = None,
    task: str | None = None,
    license: str | None = None,
    progress: Progress = print,
) -> Manifest:
    """Make ``name`` available locally in format ``want`` (any format when None) and record it.

    Without a source, a name already in the catalog is served from what was imported under it."""
    catalog = Catalog(home)
    source = check_reference(home, name, source)
    builtin = BUILTINS.get(name)
    existing = catalog.get(name)
    if existing is not None and existing.source == source:  # what was recorded at import still holds
        task = task or existing.task
        license = license or existing.license
    if (
        existing
        and existing.source == source
        and (want is None or existing.path(want))
        and all(Path(p).exists() for p in existing.paths.values())
    ):
        return existing
    if builtin and source == builtin.source and source.startswith("pkg:"):
        try:
            local = resolve(source)
        except SourceError as exc:
            raise SourceError(f"{exc}. Install it with: {builtin.install}") from exc
    else:
        progress(f"resolving {source}")
        local = resolve(source, cache_dir=None)
    paths = {local.format: str(local.path)}
    sizes = {local.format: local.size_bytes}
    if want == "gguf" and local.format != "gguf":
        raise SourceError(
            f"{name}: llama.cpp needs a .gguf file but {source} is a Hugging Face folder; "
            f"serve it with engine 'vllm' or point `source` at a GGUF file"
        )
    if want == "hf" and local.format == "gguf":
        dest = catalog.model_dir(name) / "hf"
        if not (dest / "config.json").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            _convert(local.path, dest, progress)
        paths["hf"] = str(dest)
        sizes["hf"] = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    hf = Path(paths["hf"]) if "hf" in paths else None
    meta = hf_metadata(hf) if hf else {}
    manifest = Manifest(
        name=name,
        source=source,
        origin=local.origin,
        task=task or (builtin.task if builtin else _guess_task(hf)),
        license=license or (builtin.license if builtin else _read_license(hf)),
        paths=paths,
        size_bytes=sizes,
        model_type=meta.get("model_type"),  # type: ignore[arg-type]
        template_supports_tools=bool(meta.get("template_supports_tools")),
        tool_call_format=meta.get("tool_call_format"),  # type: ignore[arg-type]
        imported_at=now_iso(),
    )
    catalog.put(manifest)
    return manifest


def _read_license(folder: Path | None) -> str | None:
    """The license named in a model card's front matter, if there is one."""
    if folder is None or not (folder / "README.md").exists():
        return None
    text = (folder / "README.md").read_text(errors="replace")
    if not text.startswith("---"):
        return None
    for line in text.split("---", 2)[1].splitlines():
        if line.strip().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None
