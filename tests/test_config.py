"""The configuration: ``m2a.config.load_settings`` (defaults, YAML file, environment) and its errors.

``load_settings`` always gets an explicit ``environ`` here, so the tests do not depend on the
environment they run in; ``M2A_HOME`` points at a temporary folder so no real config file is read.
The last tests run the ``m2a`` command itself (``config show``, ``--version``) in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from m2a import __version__
from m2a.config import ConfigError, ModelConfig, Settings, load_settings

M2A = str(Path(sys.executable).with_name("m2a"))


def write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load(tmp_path: Path, data: object | None = None, **env: str) -> Settings:
    """Settings from ``data`` (written to a file; none when None) and ``env`` on top of M2A_HOME."""
    environ = {"M2A_HOME": str(tmp_path / "home"), **env}
    path = write(tmp_path / "m2a.yaml", data) if data is not None else None
    return load_settings(path, environ)


def config_error(tmp_path: Path, data: object, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, **env)
    return str(info.value)


# ---------------------------------------------------------------------------- defaults and overrides
def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert [m.name for m in s.models] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert all(m.engine == "auto" and m.replicas == 1 and m.source is None for m in s.models)
    assert (s.gateway.host, s.gateway.port) == ("127.0.0.1", 8000)
    assert s.home == tmp_path / "home"
    assert s.admin_key is None
    assert s.supervisor.restart_backoff_s > 0 and s.supervisor.stop_grace_s > 0
    assert s.model("all-minilm-l6-v2") is s.models[1]
    assert s.model("nope") is None


def test_home_config_yaml_is_read_when_present(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write(home / "config.yaml", {"gateway": {"port": 8123}})
    assert load_settings(None, {"M2A_HOME": str(home)}).gateway.port == 8123


def test_m2a_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.yaml", {"gateway": {"host": "0.0.0.0"}})
    s = load_settings(None, {"M2A_HOME": str(tmp_path / "home"), "M2A_CONFIG": str(path)})
    assert s.gateway.host == "0.0.0.0"


def test_file_overrides_defaults(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        {
            "models": [
                {"name": "qwen", "source": "Qwen/Qwen3-0.6B", "replicas": 2, "max_model_len": 4096},
                {"name": "far", "engine": "remote", "url": "http://10.0.0.5:8000/v1", "api_key": "k"},
            ],
            "gateway": {"port": 9000},
            "supervisor": {"stop_grace_s": 2.5},
        },
    )
    assert [m.name for m in s.models] == ["qwen", "far"]
    assert s.models[0].replicas == 2 and s.models[0].max_model_len == 4096
    assert s.models[1].url == "http://10.0.0.5:8000/v1"
    assert s.gateway.port == 9000
    assert s.gateway.host == "127.0.0.1"  # untouched fields keep their defaults
    assert s.supervisor.stop_grace_s == 2.5


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert len(s.models) == 2 and s.gateway.port == 8000


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    data = {"gateway": {"port": 9000, "host": "0.0.0.0"}}
    s = load(tmp_path, data, M2A_GATEWAY__PORT="9001", M2A_SUPERVISOR__BASE_PORT="20000")
    assert s.gateway.port == 9001
    assert s.gateway.host == "0.0.0.0"  # the rest of the section still comes from the file
    assert s.supervisor.base_port == 20000


def test_home_and_admin_key_from_environment(tmp_path: Path) -> None:
    data = {"home": str(tmp_path / "from-file"), "admin_key": "sk-file"}
    s = load(tmp_path, data, M2A_HOME=str(tmp_path / "from-env"), M2A_ADMIN_KEY="sk-env")
    assert s.home == tmp_path / "from-env"
    assert s.admin_key == "sk-env"


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    s = load(tmp_path, None, M2A_SOMETHING="x", M2A_OTHER__FIELD="y", GATEWAY__PORT="1")
    assert s.gateway.port == 8000


# ---------------------------------------------------------------------------- errors
def test_unknown_field_names_its_path(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"gateway": {"prot": 9000}})
    assert "gateway.prot" in msg
    assert str(tmp_path / "m2a.yaml") in msg  # and the file it is in


def test_unknown_field_from_environment_names_its_path(tmp_path: Path) -> None:
    assert "gateway.prot" in config_error(tmp_path, None, M2A_GATEWAY__PROT="9000")


def test_unknown_top_level_and_model_fields(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"modles": [], "models": [{"name": "a", "replica": 2}]})
    assert "modles" in msg
    assert "models.0.replica" in msg


def test_wrong_type_names_its_path(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"models": [{"name": "a"}, {"name": "b", "replicas": "many"}]})
    assert "models.1.replicas" in msg
    msg = config_error(tmp_path, {"models": [{"name": "a", "replicas": 0}]})
    assert "models.0.replicas" in msg


def test_wrong_type_in_environment(tmp_path: Path) -> None:
    assert "gateway.port" in config_error(tmp_path, None, M2A_GATEWAY__PORT="eighty")


def test_duplicate_model_names(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"models": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})
    assert "'a' appears twice" in msg


def test_remote_engine_needs_a_url(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"models": [{"name": "far", "engine": "remote"}]})
    assert "models.0" in msg and "url" in msg


def test_url_only_for_remote(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"models": [{"name": "x", "engine": "vllm", "url": "http://h/v1"}]})
    assert "url" in msg


def test_unknown_engine_and_task(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {"models": [{"name": "x", "engine": "ollama", "task": "rerank"}]})
    assert "models.0.engine" in msg and "models.0.task" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "gateway: {port: 9000\n")
    assert "not valid YAML" in msg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "- a\n- b\n")
    assert "mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", {"M2A_HOME": str(tmp_path)})


# ---------------------------------------------------------------------------- the CLI
def run_m2a(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    return subprocess.run(
        [M2A, *args],
        env={**clean, "M2A_HOME": str(home), "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_config_show_rejects_a_bad_config(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", {"gateway": {"prot": 9000}})
    r = run_m2a("config", "show", home=tmp_path)
    assert r.returncode == 2, r
    assert "error" in r.stderr and "gateway.prot" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    """Brackets in a message (user input) are not rich markup: no crash, nothing swallowed."""
    write(tmp_path / "config.yaml", {"models": [{"name": "[/x]"}, {"name": "[/x]"}, {"name": "[bold]"}]})
    r = run_m2a("config", "show", home=tmp_path)
    assert r.returncode == 2, r
    assert "'[/x]' appears twice" in r.stderr
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    write(tmp_path / "config.yaml", {"models": [{"name": "[bold]"}, {"name": "[bold]"}]})
    r = run_m2a("config", "show", home=tmp_path)
    assert r.returncode == 2 and "'[bold]' appears twice" in r.stderr, r


def test_cli_config_show_rejects_a_missing_explicit_file(tmp_path: Path) -> None:
    r = run_m2a("config", "show", "--config", str(tmp_path / "nope.yaml"), home=tmp_path)
    assert r.returncode == 2, r
    assert "not found" in r.stderr and "Traceback" not in r.stderr


def test_cli_config_show_prints_the_effective_config(tmp_path: Path) -> None:
    cfg = {"models": [{"name": "far", "engine": "remote", "url": "http://h:1/v1", "api_key": "sk-remote"}]}
    write(tmp_path / "config.yaml", cfg)
    r = run_m2a("config", "show", home=tmp_path, M2A_ADMIN_KEY="sk-admin-secret", M2A_GATEWAY__PORT="9001")
    assert r.returncode == 0, r
    data = yaml.safe_load(r.stdout)
    assert data["home"] == str(tmp_path)
    assert data["gateway"] == {**data["gateway"], "host": "127.0.0.1", "port": 9001}
    assert data["supervisor"]["base_port"] == 18100  # defaults are shown too
    assert data["models"][0]["name"] == "far" and data["models"][0]["replicas"] == 1
    # Secrets are masked.
    assert data["admin_key"] == "***" and data["models"][0]["api_key"] == "***"
    assert "sk-admin-secret" not in r.stdout + r.stderr and "sk-remote" not in r.stdout + r.stderr

    revealed = run_m2a("config", "show", "--reveal", home=tmp_path, M2A_ADMIN_KEY="sk-admin-secret")
    assert revealed.returncode == 0, revealed
    data = yaml.safe_load(revealed.stdout)
    assert data["admin_key"] == "sk-admin-secret" and data["models"][0]["api_key"] == "sk-remote"


def test_cli_config_show_defaults_as_json(tmp_path: Path) -> None:
    r = run_m2a("config", "show", "--format", "json", home=tmp_path)
    assert r.returncode == 0, r
    data = yaml.safe_load(r.stdout)  # JSON is YAML
    assert [m["name"] for m in data["models"]] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert data["admin_key"] is None
    assert data["gateway"]["port"] == 8000


def test_cli_version(tmp_path: Path) -> None:
    r = run_m2a("--version", home=tmp_path)
    assert r.returncode == 0, r
    assert r.stdout.strip() == f"m2a {__version__}"


def test_remote_model_with_several_urls_has_one_replica_each() -> None:
    from m2a.engines.registry import choose
    from m2a.metal.inventory import Inventory

    m = ModelConfig(name="sim", urls=["http://a:1/v1", "http://b:2"], tokenizer="simple")
    assert m.replicas == 2
    specs = [choose(m).spec(m, None, 0, i, Inventory(2)) for i in range(m.replicas)]
    assert [s.base_url for s in specs] == ["http://a:1/v1", "http://b:2/v1"]
    assert [s.replica_id for s in specs] == ["sim#0", "sim#1"] and specs[0].tokenizer == "simple"
    with pytest.raises(ValidationError, match="not both"):
        ModelConfig(name="x", url="http://a/v1", urls=["http://b/v1"])
    with pytest.raises(ValidationError, match="only for engine 'remote'"):
        ModelConfig(name="x", urls=["http://b/v1"], engine="vllm")


def test_remote_kv_events_one_per_url() -> None:
    from m2a.engines.remote import RemoteEngine
    from m2a.metal.inventory import Inventory

    m = ModelConfig(
        name="m", urls=["http://a:1/v1", "http://b:2/v1"], kv_events=["tcp://a:5557", "ipc:///run/b"]
    )
    specs = [RemoteEngine().spec(m, None, 0, i, Inventory(cpus=2)) for i in range(2)]
    assert [s.kv_events for s in specs] == ["tcp://a:5557", "ipc:///run/b"]
    with pytest.raises(ValidationError, match="one endpoint per remote URL"):
        ModelConfig(name="m", urls=["http://a:1/v1", "http://b:2/v1"], kv_events=["tcp://a:5557"])
    with pytest.raises(ValidationError, match="tcp://host:port or ipc://path"):
        ModelConfig(name="m", url="http://a:1/v1", kv_events=["a:5557"])
