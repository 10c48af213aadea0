"""The catalog: one JSON manifest per imported model under ``$M2A_HOME/models/<name>/``."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel


class Manifest(BaseModel):
    """What m2a recorded when it imported a model."""

    name: str
    source: str
    origin: str
    task: str
    license: str | None = None
    # Local files per format: "gguf" and/or "hf" (a converted copy lives next to the manifest).
    paths: dict[str, str]
    size_bytes: dict[str, int]
    model_type: str | None = None
    template_supports_tools: bool = False
    tool_call_format: str | None = None  # vLLM tool-call parser matching the template, if recognised
    imported_at: str

    def path(self, fmt: str) -> Path | None:
        p = self.paths.get(fmt)
        return Path(p) if p else None


def safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "model"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Catalog:
    """Reads and writes manifests; a missing or broken manifest is simply not in the catalog."""

    def __init__(self, home: Path) -> None:
        self.root = home / "models"

    def model_dir(self, name: str) -> Path:
        return self.root / safe_dirname(name)

    def get(self, name: str) -> Manifest | None:
        return self.get_dir(self.model_dir(name))

    def put(self, manifest: Manifest) -> None:
        d = self.model_dir(manifest.name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "model.json.tmp"
        tmp.write_text(json.dumps(manifest.model_dump(), indent=2))
        os.replace(tmp, d / "model.json")  # atomic: readers never see half a manifest

    def all(self) -> list[Manifest]:
        if not self.root.exists():
            return []
        found = (self.get_dir(d) for d in sorted(self.root.iterdir()) if d.is_dir())
        return [m for m in found if m is not None]

    def get_dir(self, d: Path) -> Manifest | None:
        try:
            return Manifest.model_validate_json((d / "model.json").read_text())
        except (OSError, ValueError):
            return None
