"""Turn a model reference into local files: folders, GGUF files, package resources, hub downloads."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Format = Literal["hf", "gguf"]

# How a chat template asks the model to write tool calls, recognised by a marker in the template.
TOOL_CALL_MARKERS = (
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3_json"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|tool_call|>", "granite"),
    ("<|tool▁calls▁begin|>", "deepseek_v3"),
)

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class SourceError(Exception):
    """A model reference that cannot be resolved, with a message meant for the user."""


@dataclass(frozen=True)
class LocalModel:
    """Model files on this machine: a Hugging Face folder or a single GGUF file."""

    path: Path
    format: Format
    origin: str  # "folder", "gguf", "package" or "hub"

    @property
    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _classify(path: Path, origin: str, ref: str) -> LocalModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{ref}: a model file must be a .gguf file, got {path.name}")
        return LocalModel(path, "gguf", origin)
    if path.is_dir():
        if (path / "config.json").exists():
            return LocalModel(path, "hf", origin)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return LocalModel(ggufs[0], "gguf", origin)
        raise SourceError(
            f"{ref}: {path} is neither a Hugging Face model folder (no config.json) nor a folder "
            f"with exactly one .gguf file"
        )
    raise SourceError(f"{ref}: {path} does not exist")


def package_path(ref: str) -> Path:
    """Locate ``pkg:<package>/<path>`` without importing the package (it may need heavy deps)."""
    body = ref.removeprefix("pkg:")
    package, _, inner = body.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"{ref}: the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / inner


def is_hub_id(ref: str) -> bool:
    return bool(_HF_ID.match(ref)) and not Path(ref).exists()


def _path_like(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.endswith(".gguf") or Path(ref).expanduser().exists()


def is_reference(ref: str) -> bool:
    """Whether ``ref`` has the form of a model reference (it may still not resolve)."""
    return ref.startswith("pkg:") or _path_like(ref) or is_hub_id(ref)


def absolute(ref: str) -> str:
    """A reference to local files made absolute (as recorded in the catalog); others unchanged."""
    if ref.startswith("pkg:") or not _path_like(ref):
        return ref
    return os.path.abspath(os.path.expanduser(ref))


_CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]


def _weight_patterns(repo_id: str, revision: str | None) -> list[str]:
    """safetensors when the repository has them (never both formats), else PyTorch .bin files."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # offline or private: let snapshot_download decide, from the cache if it can
        return ["*.safetensors"]
    return ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]


HUB_CHECK_TIMEOUT_S = 5.0


def hub_unreachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be reached (one quick request, no retries), or None if it can.

    ``HF_HUB_OFFLINE`` says so without trying. Any HTTP answer counts as reachable. The hub client
    itself retries a failed connection five times with backoff (25 s) before saying anything.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        with urllib.request.urlopen(constants.ENDPOINT + "/api/whoami-v2", timeout=timeout):
            return None
    except urllib.error.HTTPError:  # it answered (401 without a token): reachable
        return None
    except (OSError, ValueError) as exc:  # URLError, timeouts, DNS and connection errors
        reason = getattr(exc, "reason", exc)
        return f"{constants.ENDPOINT}: {reason}"


def download(repo_id: str, cache_dir: Path | None = None, revision: str | None = None) -> Path:
    """Download a Hugging Face model repository, with the hub client's progress bars.

    Where the hub cannot be reached, the local cache answers at once, or a clear error does."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache = str(cache_dir) if cache_dir else None
    offline = hub_unreachable()
    if offline is not None:
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError) as exc:
            raise SourceError(
                f"{repo_id}: the Hugging Face hub cannot be reached from this machine ({offline}) and the "
                f"model is not in the local cache. Download it where the hub is reachable, or point "
                f"`source` at a local folder or .gguf file."
            ) from exc
    try:
        weights = _weight_patterns(repo_id, revision)
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                allow_patterns=[*_CONFIG_PATTERNS, *weights],
            )
        )
    except RepositoryNotFoundError as exc:
        raise SourceError(f"{repo_id}: no such model on the Hugging Face hub (or it needs a token)") from exc
    except LocalEntryNotFoundError as exc:
        raise SourceError(
            f"{repo_id}: the Hugging Face hub cannot be reached from this machine and the model is not "
            f"in the local cache. Download it where the hub is reachable, or point `source` at a "
            f"local folder or .gguf file."
        ) from exc
    except HfHubHTTPError as exc:
        raise SourceError(f"{repo_id}: download failed: {exc}") from exc
    except OSError as exc:  # connection errors surface as OSError subclasses
        raise SourceError(f"{repo_id}: download failed: {exc}") from exc


def resolve(ref: str, cache_dir: Path | None = None) -> LocalModel:
    """Resolve any supported reference to local model files, downloading hub models if needed."""
    if not ref.strip():
        raise SourceError("empty model reference")
    if ref.startswith("pkg:"):
        return _classify(package_path(ref), "package", ref)
    path = Path(os.path.abspath(Path(ref).expanduser()))
    if path.exists():
        return _classify(path, "gguf" if path.is_file() else "folder", ref)
    if ref.startswith(("/", ".", "~")) or ref.endswith(".gguf"):
        raise SourceError(f"{ref}: no such file or folder")
    if is_hub_id(ref):
        return _classify(download(ref, cache_dir), "hub", ref)
    raise SourceError(
        f"{ref!r} is not a model reference: use a Hugging Face id (org/name), a folder, a .gguf file, "
        f"or pkg:<package>/<path>"
    )


def hf_metadata(folder: Path) -> dict[str, object]:
    """What the router and engines want to know of a Hugging Face folder: family and chat template."""
    meta: dict[str, object] = {}
    cfg = folder / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        meta["model_type"] = data.get("model_type")
        meta["architectures"] = data.get("architectures") or []
    tok = folder / "tokenizer_config.json"
    template = ""
    if tok.exists():
        t = json.loads(tok.read_text()).get("chat_template") or ""
        template = t if isinstance(t, str) else json.dumps(t)
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        template = jinja.read_text()
    meta["has_chat_template"] = bool(template)
    meta["template_supports_tools"] = "tools" in template
    meta["tool_call_format"] = next((fmt for marker, fmt in TOOL_CALL_MARKERS if marker in template), None)
    return meta
