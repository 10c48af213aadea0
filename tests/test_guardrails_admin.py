"""Guardrail profiles through the admin API (/admin/v1/guardrails) and `m2a guardrails …`.

The gateway app runs in-process (httpx over ASGI, inside its lifespan) on a fresh SQLite store, with
one profile from a "config file" (``house``) beside the built-in ones; requests go to a fake engine,
so a test sees what the engine received. The CLI tests serve the same app on a real loopback port
(tests/live_app.py) and run the commands through typer's CliRunner in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from click.testing import Result
from typer.testing import CliRunner

from m2a.cli import app as cli_app
from m2a.config import GatewayConfig, GuardrailProfile, GuardrailRule, GuardrailsConfig
from m2a.gateway.app import create_app
from m2a.gateway.guards import Guards
from m2a.guardrails import known
from m2a.router.pool import Endpoint, Pool
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.fake_engine import FakeEngine
from tests.live_app import live
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-guardrails-admin-" + "g" * 24
TIMEOUT = 30.0
API = "/admin/v1/guardrails"
HOUSE = GuardrailProfile(
    description="The config file's own.",
    rules=[GuardrailRule(detector="denylist", params={"terms": ["tapir"]})],
)
# A stored profile: refuse one word, everywhere.
ZEBRA = {"description": "No zebras.", "rules": [{"detector": "denylist", "params": {"terms": ["zebra"]}}]}

engine = gateway_fixtures.engine
store = gateway_fixtures.store


def secret() -> str:
    """An AWS access key id the secrets detector recognises (random, so no test can hard-code it)."""
    return "AKIA" + "".join(random.choices(string.ascii_uppercase + "234567", k=16))


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def chat(text: str, model: str = "alpha") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient
    store: IdentityStore

    async def api(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        return await self.client.request(method, f"{API}{path}", headers=auth(key), **kw)

    @property
    def guards(self) -> Guards:
        return self.app.state.guards


def make_app(engine_url: str, store: IdentityStore) -> Any:
    pool = Pool()
    for model in ("alpha", "beta"):
        pool.add(Endpoint(f"{model}-0", model, engine_url, task="chat", healthy=True))
    guards = Guards(GuardrailsConfig(profiles={"house": HOUSE}), store=GuardrailStore(store.engine))
    return create_app(pool, ADMIN, GatewayConfig(), identity=store, guards=guards)


@contextlib.asynccontextmanager
async def serve(engine_url: str, store: IdentityStore) -> AsyncIterator[Gateway]:
    app = make_app(engine_url, store)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=TIMEOUT) as client,
    ):
        yield Gateway(app, client, store)


@pytest_asyncio.fixture(loop_scope="session")
async def gw(engine: FakeEngine, store: IdentityStore) -> AsyncIterator[Gateway]:
    async with serve(engine.url, store) as gateway:
        yield gateway


# ---------------------------------------------------------------------------- profiles
async def test_every_profile_is_listed_with_its_source(gw: Gateway) -> None:
    resp = await gw.api("GET", "/profiles")
    assert resp.status_code == 200, resp.text
    profiles = {p["name"]: p for p in resp.json()}
    assert {n: p["source"] for n, p in profiles.items()} == {
        "default": "builtin",
        "strict": "builtin",
        "off": "builtin",
        "house": "config",
    }
    for name, p in profiles.items():
        policy = gw.guards.policies[name]
        assert p["version"] == policy.version and p["active"] and p["revision"] is None
        assert [r["detector"] for r in p["rules"]] == [r.detector for r, _ in policy.rules]
    assert profiles["house"]["rules"][0]["params"] == {"terms": ["tapir"]}
    assert profiles["off"]["rules"] == []
    one = (await gw.api("GET", "/profiles/strict")).json()
    assert one == profiles["strict"]
    assert_openai_error(await gw.api("GET", "/profiles/nothing-here"), 404, "not_found")


async def test_a_stored_profile_gets_a_version_per_put(gw: Gateway) -> None:
    resp = await gw.api("PUT", "/profiles/no-zebras", json=ZEBRA)
    assert resp.status_code == 201, resp.text
    first = resp.json()
    assert first["source"] == "stored" and first["version"] == "v1" and first["revision"] == 1
    assert first["active"] and gw.guards.policies["no-zebras"].version == "v1"  # enforced at once
    assert first["rules"][0]["action"] == "block" and first["rules"][0]["where"] == [
        "input",
        "output",
        "tool",
    ]

    changed = {**ZEBRA, "rules": [{**ZEBRA["rules"][0], "action": "flag"}]}
    resp = await gw.api("PUT", "/profiles/no-zebras", json=changed)
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["version"] == "v2" and second["revision"] == 2
    assert second["rules"][0]["action"] == "flag"
    assert gw.guards.policies["no-zebras"].version == "v2"
    assert gw.guards.policies["no-zebras"].rules[0][0].action == "flag"
    got = (await gw.api("GET", "/profiles/no-zebras")).json()
    assert got["version"] == "v2" and got["updated_at"] >= first["updated_at"]
    listed = {p["name"]: p for p in (await gw.api("GET", "/profiles")).json()}
    assert listed["no-zebras"] == got
    stored = await GuardrailStore(gw.store.engine).profiles()
    assert [(p.name, p.version) for p in stored] == [("no-zebras", 2)]

    resp = await gw.api("DELETE", "/profiles/no-zebras")
    assert resp.status_code == 204 and resp.content == b""
    assert "no-zebras" not in gw.guards.policies
    assert_openai_error(await gw.api("GET", "/profiles/no-zebras"), 404)
    assert_openai_error(await gw.api("DELETE", "/profiles/no-zebras"), 404, "not_found")
    resp = await gw.api("PUT", "/profiles/no-zebras", json=ZEBRA)
    assert resp.status_code == 201 and resp.json()["version"] == "v1"  # a new profile again


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rules": [{"detector": "no-such-detector"}]}, "rules.0"),
        ({"rules": [{"detector": "secrets"}, {"detector": "pii", "params": {"colour": "red"}}]}, "rules.1"),
        ({"rules": [{"detector": "denylist", "params": {"regexes": ["(unclosed"]}}]}, "rules.0"),
        ({"rules": [{"detector": "denylist", "params": {"terms": 5}}]}, "rules.0"),
    ],
)
async def test_detectors_that_cannot_be_built_are_refused(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    err = assert_openai_error(await gw.api("PUT", "/profiles/broken", json=body), 400, "invalid_profile")
    assert err["param"] == param
    assert await GuardrailStore(gw.store.engine).profiles() == []
    assert "broken" not in gw.guards.policies


async def test_invalid_profiles_and_names_are_refused(gw: Gateway) -> None:
    for body in (
        {"rules": [{"detector": "pii", "action": "explode"}]},
        {"rules": [{"detector": "pii", "threshold": 2}]},
        {"rules": [{"detector": "pii", "where": []}]},
        {"rules": [{"detector": "pii"}, {"detector": "pii", "where": ["input"]}]},  # twice for input
        {"colour": "red"},
        {"rules": "pii"},
    ):
        assert_openai_error(await gw.api("PUT", "/profiles/bad", json=body), 400)
    assert_openai_error(await gw.api("PUT", "/profiles/bad", content=b"{not json"), 400)
    for name in ("Bad", "-lead", "x" * 65, "sp ace", "dot.ted"):
        assert_openai_error(await gw.api("PUT", f"/profiles/{name}", json=ZEBRA), 400)
    assert (await gw.api("PUT", f"/profiles/{'x' * 64}", json=ZEBRA)).status_code == 201
    for name in ("strict", "default", "off", "house"):
        err = assert_openai_error(await gw.api("PUT", f"/profiles/{name}", json=ZEBRA), 409, "conflict")
        assert name in err["message"]
        assert_openai_error(await gw.api("DELETE", f"/profiles/{name}"), 409, "conflict")
    assert [p.name for p in await GuardrailStore(gw.store.engine).profiles()] == ["x" * 64]
    assert gw.guards.policies["house"].profile == HOUSE  # the config's own is untouched


# ---------------------------------------------------------------------------- attachments
async def test_attach_and_detach(gw: Gateway) -> None:
    await gw.store.create_team("research")
    _, info = await gw.store.create_key("research", "k")
    assert (await gw.api("PUT", "/profiles/no-zebras", json=ZEBRA)).status_code == 201
    assert (await gw.api("GET", "/attachments")).json() == []

    for body in ({"profile": "strict", "team": "research"}, {"profile": "no-zebras", "key_id": info.id},
                 {"profile": "house", "model": "org/any-model"}):  # fmt: skip
        resp = await gw.api("PUT", "/attachments", json=body)
        assert resp.status_code == 200, resp.text
        assert {k: v for k, v in resp.json().items() if v is not None} == body
    assert sorted((await gw.api("GET", "/attachments")).json(), key=json.dumps) == sorted(
        [
            {"profile": "strict", "team": "research", "key_id": None, "model": None},
            {"profile": "no-zebras", "team": None, "key_id": info.id, "model": None},
            {"profile": "house", "team": None, "key_id": None, "model": "org/any-model"},
        ],
        key=json.dumps,
    )
    # Refused: unknown profiles, teams and keys; not exactly one target.
    err = assert_openai_error(
        await gw.api("PUT", "/attachments", json={"profile": "nope", "team": "research"}), 404
    )
    assert err["param"] == "profile"
    assert_openai_error(
        await gw.api("PUT", "/attachments", json={"profile": "strict", "team": "nobody"}), 404
    )
    assert_openai_error(await gw.api("PUT", "/attachments", json={"profile": "strict", "key_id": 99999}), 404)
    assert_openai_error(await gw.api("PUT", "/attachments", json={"profile": "strict"}), 400)
    both = {"profile": "strict", "team": "research", "model": "alpha"}
    assert_openai_error(await gw.api("PUT", "/attachments", json=both), 400)
    assert_openai_error(await gw.api("DELETE", "/attachments", json={}), 400)
    assert_openai_error(await gw.api("DELETE", "/attachments", json={"team": "nobody"}), 404)

    # A profile in use cannot go.
    err = assert_openai_error(await gw.api("DELETE", "/profiles/no-zebras"), 409, "conflict")
    assert f"key {info.id}" in err["message"]
    resp = await gw.api("DELETE", "/attachments", json={"key_id": info.id})
    assert resp.status_code == 204
    assert (await gw.api("DELETE", "/profiles/no-zebras")).status_code == 204
    for target in ({"team": "research"}, {"model": "org/any-model"}, {"model": "never-attached"}):
        assert (await gw.api("DELETE", "/attachments", json=target)).status_code == 204
    assert (await gw.api("GET", "/attachments")).json() == []


async def test_profiles_and_attachments_on_sqlite_and_postgresql(
    database: Database,  # noqa: F811 (the fixture)
    engine: FakeEngine,
) -> None:
    store = IdentityStore(await database.open())
    await store.create_team("ops")
    async with serve(engine.url, store) as gw:
        odd = {"description": "quotes ' \" and a NUL \u0000 and ü", "rules": ZEBRA["rules"]}
        assert (await gw.api("PUT", "/profiles/odd", json=odd)).status_code == 201
        assert (await gw.api("PUT", "/profiles/odd", json=odd)).json()["version"] == "v2"
        assert (await gw.api("GET", "/profiles/odd")).json()["description"] == odd["description"]
        body = {"profile": "odd", "team": "ops"}
        assert (await gw.api("PUT", "/attachments", json=body)).status_code == 200
        assert_openai_error(await gw.api("DELETE", "/profiles/odd"), 409, "conflict")
        assert (await gw.api("DELETE", "/attachments", json={"team": "ops"})).status_code == 204
        assert (await gw.api("DELETE", "/profiles/odd")).status_code == 204
        assert (await gw.api("GET", "/attachments")).json() == []


async def test_an_attached_profile_governs_the_requests(gw: Gateway, engine: FakeEngine) -> None:
    await gw.store.create_team("research")
    await gw.store.grant("research", "alpha")
    await gw.store.grant("research", "beta")
    team_key, info = await gw.store.create_key("research", "k")
    prompt = f"deploy with {secret()} please"

    async def send(text: str, model: str = "alpha") -> httpx.Response:
        return await gw.client.post("/v1/chat/completions", headers=auth(team_key), json=chat(text, model))

    # The default profile masks credentials: the engine gets the prompt, without the key.
    seen = len(engine.requests)
    resp = await send(prompt)
    assert resp.status_code == 200, resp.text
    sent = engine.requests[seen].json["messages"][0]["content"]
    assert prompt.split()[2] not in sent and sent.startswith("deploy with [")

    # strict on the team: refused, nothing sent, the secret not echoed.
    assert (
        await gw.api("PUT", "/attachments", json={"profile": "strict", "team": "research"})
    ).status_code == 200
    principal = await gw.store.principal(team_key)
    assert principal is not None and principal.guardrails == "strict"
    assert [p.name for p in gw.guards.for_request(principal, "alpha")] == ["strict"]
    seen = len(engine.requests)
    resp = await send(prompt)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "content_filter" and error["guardrail"]["profile"] == "strict"
    assert error["guardrail"]["category"] == "secret"
    assert prompt.split()[2] not in resp.text and len(engine.requests) == seen

    # A key's own profile wins over its team's.
    assert (
        await gw.api("PUT", "/attachments", json={"profile": "off", "key_id": info.id})
    ).status_code == 200
    resp = await send(prompt)
    assert resp.status_code == 200, resp.text
    assert engine.requests[-1].json["messages"][0]["content"] == prompt  # "off": sent as written

    # A model's profile applies on top of the caller's.
    assert (await gw.api("PUT", "/profiles/no-zebras", json=ZEBRA)).status_code == 201
    assert (
        await gw.api("PUT", "/attachments", json={"profile": "no-zebras", "model": "beta"})
    ).status_code == 200
    assert (await send("a zebra crossing", "alpha")).status_code == 200
    resp = await send("a zebra crossing", "beta")
    assert resp.status_code == 400 and resp.json()["error"]["guardrail"]["profile"] == "no-zebras"

    # Detached: back to the team's (strict), then to the default.
    assert (await gw.api("DELETE", "/attachments", json={"key_id": info.id})).status_code == 204
    assert (await send(prompt)).status_code == 400
    assert (await gw.api("DELETE", "/attachments", json={"team": "research"})).status_code == 204
    assert (await send(prompt)).status_code == 200


async def test_team_keys_cannot_touch_guardrails(gw: Gateway) -> None:
    await gw.store.create_team("research")
    team_key, _ = await gw.store.create_key("research", "k")
    gstore = GuardrailStore(gw.store.engine)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/profiles", None),
        ("GET", "/profiles/strict", None),
        ("PUT", "/profiles/mine", ZEBRA),
        ("PUT", "/profiles/mine", {"bogus": True}),
        ("DELETE", "/profiles/strict", None),
        ("GET", "/attachments", None),
        ("PUT", "/attachments", {"profile": "off", "team": "research"}),
        ("DELETE", "/attachments", {"team": "research"}),
        ("POST", "/check", {"profile": "strict", "text": "hello"}),
    ]
    before = (await gw.store.revision(), await gstore.profiles(), await gstore.attachments())
    for method, path, body in calls:
        err = assert_openai_error(await gw.api(method, path, key=team_key, json=body), 403, "admin_only")
        assert err["type"] == "permission_error"
        assert_openai_error(await gw.api(method, path, key=None, json=body), 401)
    assert (await gw.store.revision(), await gstore.profiles(), await gstore.attachments()) == before


# ---------------------------------------------------------------------------- check
async def test_check_a_text_against_a_profile(gw: Gateway) -> None:
    key = secret()
    text = f"my key is {key}, mail me at ana.lima@example.org"

    resp = await gw.api("POST", "/check", json={"profile": "strict", "text": text})
    assert resp.status_code == 200, resp.text
    v = resp.json()
    assert v["decision"] == "deny" and v["profile"] == "strict" and v["direction"] == "input"
    assert v["category"] == "secret" and v["detector"] == "secrets" and "secrets" in v["reason"]
    kinds = {(f["action"], f["category"]) for f in v["findings"]}
    assert ("block", "secret") in kinds and ("redact", "pii") in kinds
    found = next(f for f in v["findings"] if f["category"] == "secret")
    assert text[found["start"] : found["end"]] == key
    assert v["redacted"] is not None and key in v["redacted"]  # strict blocks secrets; masks the e-mail
    assert "ana.lima@example.org" not in v["redacted"]
    assert key not in json.dumps(v["findings"]) + v["reason"]  # findings never echo the value

    v = (await gw.api("POST", "/check", json={"profile": "default", "text": text})).json()
    assert v["decision"] == "modify" and key not in v["redacted"]  # default masks the key, flags the e-mail
    assert {f["action"] for f in v["findings"]} == {"redact", "flag"}

    v = (
        await gw.api("POST", "/check", json={"profile": "default", "text": "mail ana.lima@example.org"})
    ).json()
    assert v["decision"] == "warn" and v["redacted"] is None
    v = (await gw.api("POST", "/check", json={"profile": "off", "text": text})).json()
    assert v["decision"] == "allow" and v["findings"] == [] and v["redacted"] is None
    v = (
        await gw.api("POST", "/check", json={"profile": "house", "text": "a tapir", "direction": "tool"})
    ).json()
    assert v["decision"] == "deny" and v["direction"] == "tool"

    assert_openai_error(await gw.api("POST", "/check", json={"profile": "nope", "text": "x"}), 404)
    assert_openai_error(
        await gw.api("POST", "/check", json={"profile": "strict", "text": "x", "direction": "up"}), 400
    )
    assert_openai_error(await gw.api("POST", "/check", json={"profile": "strict"}), 400)


# ---------------------------------------------------------------------------- CLI
@dataclass
class Cli:
    url: str
    home: Path

    async def __call__(self, *args: str, key: bool = True, env: dict[str, str] | None = None) -> Result:
        prefix = ["guardrails", args[0]]
        opts = ["--url", self.url, "--api-key", ADMIN] if key else []
        env = {"M2A_HOME": str(self.home), "COLUMNS": "200", **(env or {})}
        return await asyncio.to_thread(CliRunner().invoke, cli_app, [*prefix, *args[1:], *opts], env=env)


@pytest_asyncio.fixture(loop_scope="session")
async def cli(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[Cli]:
    async with live(make_app(engine.url, store)) as url:
        yield Cli(url, tmp_path / "cli-home")


async def test_cli_manages_profiles(cli: Cli, store: IdentityStore, tmp_path: Path) -> None:
    result = await cli("list", "--json")
    assert result.exit_code == 0, result.output
    assert {p["name"] for p in json.loads(result.stdout)} == {"default", "strict", "off", "house"}
    result = await cli("list")
    assert result.exit_code == 0 and "house" in result.stdout and "config" in result.stdout

    path = tmp_path / "zebra.yaml"
    path.write_text(yaml.safe_dump(ZEBRA))
    result = await cli("put", "no-zebras", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert "stored profile no-zebras v1" in result.stdout
    result = await cli("show", "no-zebras")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# no-zebras: stored, version v1")
    shown = yaml.safe_load(result.stdout)  # what show prints, put takes back
    assert shown["rules"][0]["params"] == {"terms": ["zebra"]}
    path.write_text(result.stdout.replace("No zebras.", "Still no zebras."))
    result = await cli("put", "no-zebras", "--file", str(path), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["version"] == "v2"
    result = await cli("show", "no-zebras", "--json")
    assert json.loads(result.stdout)["description"] == "Still no zebras."

    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"rules": [{"detector": "no-such-detector"}]}))
    result = await cli("put", "broken", "--file", str(broken))
    assert result.exit_code == 1 and "no-such-detector" in result.output
    broken.write_text("- just\n- a list\n")
    assert (await cli("put", "broken", "--file", str(broken))).exit_code == 2
    assert (await cli("put", "broken", "--file", str(tmp_path / "missing.yaml"))).exit_code == 2
    result = await cli("put", "strict", "--file", str(path))
    assert result.exit_code == 1 and "built into m2a" in result.output

    await store.create_team("research")
    result = await cli("attach", "no-zebras", "--team", "research")
    assert result.exit_code == 0, result.output
    assert "attached to team research" in result.stdout
    result = await cli("attachments", "--json")
    assert json.loads(result.stdout) == [
        {"profile": "no-zebras", "team": "research", "key_id": None, "model": None}
    ]
    result = await cli("delete", "no-zebras")
    assert result.exit_code == 1 and "detach it first" in result.output
    assert (await cli("attach", "strict", "--team", "research", "--model", "alpha")).exit_code == 2
    assert (await cli("attach", "nope", "--model", "alpha")).exit_code == 1
    result = await cli("detach", "--team", "research")
    assert result.exit_code == 0 and "team research" in result.stdout
    result = await cli("attachments")
    assert result.exit_code == 0 and "nothing attached" in result.stdout
    assert (await cli("delete", "no-zebras")).exit_code == 0
    assert (await cli("show", "no-zebras")).exit_code == 1


async def test_cli_check_exit_codes(cli: Cli, tmp_path: Path) -> None:
    key = secret()
    result = await cli("check", "strict", f"the key {key}")
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("deny by profile strict") and "secret" in result.stdout
    assert key not in result.stdout
    result = await cli("check", "default", f"the key {key}", "--json")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    assert v["decision"] == "modify" and key not in v["redacted"]
    path = tmp_path / "answer.txt"
    path.write_text("a tapir in the answer")
    assert (await cli("check", "house", "--file", str(path), "--direction", "output")).exit_code == 1
    assert (await cli("check", "house", "no animals", "--direction", "output")).exit_code == 0
    assert (await cli("check", "nope", "text")).exit_code == 2
    assert (await cli("check", "strict")).exit_code == 2  # no text
    assert (await cli("check", "strict", "x", "--direction", "sideways")).exit_code == 2


async def test_cli_finds_the_gateway_and_its_key(cli: Cli) -> None:
    """Without --url and --api-key: the configured port, and the key `m2a up` keeps in $M2A_HOME."""
    port = cli.url.rsplit(":", 1)[1]
    env = {"M2A_GATEWAY__PORT": port, "M2A_ADMIN_KEY": ""}
    result = await cli("list", key=False, env=env)
    assert result.exit_code == 1 and "key" in result.output.lower()  # no key anywhere: 401
    cli.home.mkdir(parents=True, exist_ok=True)
    (cli.home / "admin.key").write_text(ADMIN + "\n")
    result = await cli("list", "--json", key=False, env=env)
    assert result.exit_code == 0, result.output
    assert "strict" in {p["name"] for p in json.loads(result.stdout)}
    result = await cli("list", key=False, env={"M2A_GATEWAY__PORT": "1"})
    assert result.exit_code == 1 and "no gateway answers" in result.output


async def test_cli_lists_the_detectors() -> None:
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["guardrails", "detectors", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == known() and "secrets" in known()
