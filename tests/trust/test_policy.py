"""Cedar policy decisions (``trust/policy.py``) and the policies table (``store/policies.py``): default
deny, the grant as the first gate, forbids that narrow, scopes evaluated only for their own team and
agent, modes and a team's override, who may approve, broken policies failing their scope closed,
arguments in the context, evaluation errors denying, and a change in the table seen by a second
engine on the same database. Store tests run on SQLite and PostgreSQL. Time is an injected clock:
nothing sleeps and nothing asserts on wall-clock times.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from m2a.store.policies import PolicyStore, PolicyStoreError, parse_scope
from m2a.trust.policy import ApproveRequest, CallRequest, PolicyEngine
from m2a.trust.policy_schema import cedar_args
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALL = CallRequest(
    agent_spiffe="spiffe://m2a.local/team/sales/agent/order-bot", agent_id=7, agent_name="order-bot",
    team="sales", version=3, on_behalf_of="alice", server="erp", tool="lookup_order", tier="read",
    granted=True, arguments={"order": "A-1"},
)  # fmt: skip
NO_DELETE = """@id("no-delete")
forbid(principal, action == M2A::Action::"call", resource)
when { resource.name == "delete_customer" && principal.team != "finance" };
"""
BIG_PAYMENTS = """forbid(principal, action == M2A::Action::"call", resource)
when { resource.name == "pay" && context.args has amount && context.args.amount > 1000 };
"""
FORBID_ALL = 'forbid(principal, action == M2A::Action::"call", resource);\n'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call(**changes: object) -> CallRequest:
    return replace(CALL, **changes)  # type: ignore[arg-type]


def approve(
    key_id: int | None, key_team: str | None, admin: bool, tier: str, team: str = "sales"
) -> ApproveRequest:
    return ApproveRequest(key_id, key_team, admin, team, "erp", "delete_customer", tier)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- the baseline ----------------------------------------------------------------------------------


async def test_default_deny_and_the_grant_as_first_gate(tmp_path: Path) -> None:
    engine = PolicyEngine(None, None)
    refused = await engine.decide_call(call(granted=False))
    assert not refused.allowed and not refused.cedar_allowed and refused.errors == ()
    assert refused.policy_ids == ("m2a.ungranted",) and refused.mode == "enforce"
    allowed = await engine.decide_call(call())
    assert allowed.allowed and allowed.cedar_allowed and allowed.policy_ids == ("m2a.granted",)
    assert len(allowed.policy_version) == 16 and allowed.policy_version == refused.policy_version

    # an operator's permit cannot open a tool the manifest does not grant
    write(tmp_path, "open.cedar", 'permit(principal, action == M2A::Action::"call", resource);\n')
    opened = PolicyEngine(None, tmp_path)
    still = await opened.decide_call(call(granted=False))
    assert not still.allowed and still.policy_ids == ("m2a.ungranted",)
    assert still.policy_version != refused.policy_version


async def test_a_forbid_narrows(tmp_path: Path) -> None:
    write(tmp_path, "limits.cedar", NO_DELETE + BIG_PAYMENTS)
    engine = PolicyEngine(None, tmp_path)
    refused = await engine.decide_call(call(tool="delete_customer", tier="destructive"))
    assert not refused.allowed and refused.policy_ids == ("no-delete",)
    finance = await engine.decide_call(call(team="finance", tool="delete_customer", tier="destructive"))
    assert finance.allowed and finance.policy_ids == ("m2a.granted",)
    assert (await engine.decide_call(call())).allowed  # another tool: untouched


async def test_positional_ids_and_duplicate_annotations(tmp_path: Path) -> None:
    write(tmp_path, "a.cedar", '@id("dup")\n' + FORBID_ALL + FORBID_ALL)
    write(tmp_path, "b.cedar", '@id("dup")\n' + FORBID_ALL)
    decision = await PolicyEngine(None, tmp_path).decide_call(call())
    assert set(decision.policy_ids) == {"dup", "global/a.cedar/1", "global/b.cedar/0"}


# -- scopes ----------------------------------------------------------------------------------------


async def test_a_teams_policies_apply_to_its_agents_only(tmp_path: Path) -> None:
    write(tmp_path, "teams/sales/lockdown.cedar", FORBID_ALL)
    engine = PolicyEngine(None, tmp_path)
    sales = await engine.decide_call(call())
    assert not sales.allowed and sales.policy_ids == ("team:sales/lockdown.cedar/0",)
    support = await engine.decide_call(call(team="support", agent_name="helper"))
    assert support.allowed and support.policy_version != sales.policy_version
    # approvals of the team's calls are narrowed by its forbids too, never another team's
    write(
        tmp_path,
        "teams/sales/no-approvals.cedar",
        'forbid(principal, action == M2A::Action::"approve", resource);',
    )
    await engine.reload()
    assert not (await engine.decide_approve(approve(1, None, True, "write"))).allowed
    assert (await engine.decide_approve(approve(1, None, True, "write", team="support"))).allowed


async def test_an_agents_policies_apply_to_it_alone(tmp_path: Path) -> None:
    write(tmp_path, "agents/sales/order-bot/only-read.cedar",
          'forbid(principal, action, resource) when { context.tier != "read" };')  # fmt: skip
    engine = PolicyEngine(None, tmp_path)
    assert not (await engine.decide_call(call(tier="write"))).allowed
    assert (await engine.decide_call(call(tier="read"))).allowed
    assert (await engine.decide_call(call(agent_name="other-bot", tier="write"))).allowed
    assert (await engine.decide_call(call(team="support", tier="write"))).allowed  # support/order-bot


async def test_stray_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "teams/sales/sub/x.cedar", FORBID_ALL)
    write(tmp_path, "teams/Bad Team/x.cedar", FORBID_ALL)
    assert (await PolicyEngine(None, tmp_path).decide_call(call())).allowed


# -- modes -----------------------------------------------------------------------------------------


async def test_log_only_allows_and_says_what_cedar_decided(tmp_path: Path) -> None:
    write(tmp_path, "limits.cedar", NO_DELETE)
    engine = PolicyEngine(None, tmp_path, mode="log_only")
    decision = await engine.decide_call(call(tool="delete_customer", tier="destructive"))
    assert decision.allowed and not decision.cedar_allowed
    assert decision.mode == "log_only" and decision.policy_ids == ("no-delete",)
    ungranted = await engine.decide_call(call(granted=False))  # the manifest's gate stays shut
    assert not ungranted.allowed and ungranted.mode == "log_only"
    # approvals are always enforced
    refused = await engine.decide_approve(approve(5, "sales", False, "destructive"))
    assert not refused.allowed and refused.mode == "enforce"


async def test_a_team_row_overrides_the_mode_and_the_strictest_wins(engine: AsyncEngine) -> None:
    store = PolicyStore(engine)
    await store.put("global", "lockdown", FORBID_ALL, None, "test")
    await store.put("team:sales", "notes", "// nothing yet\n", "log_only", "test")
    policy = PolicyEngine(engine, None, mode="enforce")
    sales = await policy.decide_call(call())
    assert sales.allowed and not sales.cedar_allowed and sales.mode == "log_only"
    support = await policy.decide_call(call(team="support"))
    assert not support.allowed and support.mode == "enforce"
    await store.put("agent:sales/order-bot", "strict", "// strict\n", "enforce", "test")
    await policy.reload()
    assert (await policy.decide_call(call())).mode == "enforce"  # enforce beats log_only
    assert (await policy.decide_call(call(agent_name="other-bot"))).mode == "log_only"


# -- approvals -------------------------------------------------------------------------------------


async def test_who_may_approve(tmp_path: Path) -> None:
    engine = PolicyEngine(None, tmp_path)
    admin = await engine.decide_approve(approve(None, None, True, "destructive"))
    assert admin.allowed and admin.policy_ids == ("m2a.approve.admin",)
    same_team = await engine.decide_approve(approve(5, "sales", False, "write"))
    assert same_team.allowed and same_team.policy_ids == ("m2a.approve.team",)
    assert not (await engine.decide_approve(approve(5, "sales", False, "destructive"))).allowed
    assert not (await engine.decide_approve(approve(6, "support", False, "write"))).allowed
    assert not (await engine.decide_approve(approve(6, "", False, "read", team=""))).allowed

    write(tmp_path, "approvers.cedar", """@id("ops-lead")
permit(principal == M2A::Key::"42", action == M2A::Action::"approve", resource)
when { context.agent_team == "sales" };
""")  # fmt: skip
    await engine.reload()
    lead = await engine.decide_approve(approve(42, "ops", False, "destructive"))
    assert lead.allowed and lead.policy_ids == ("ops-lead",)
    assert not (await engine.decide_approve(approve(42, "ops", False, "destructive", team="hr"))).allowed
    assert not (await engine.decide_approve(approve(43, "ops", False, "destructive"))).allowed


# -- failing closed --------------------------------------------------------------------------------


async def test_a_broken_file_fails_its_scope_closed(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "teams/sales/broken.cedar",
        'forbid(principal, action, resource) when { resource.nme == "x" };',
    )
    engine = PolicyEngine(None, tmp_path)
    sales = await engine.decide_call(call())
    assert not sales.allowed and not sales.cedar_allowed
    assert any(str(bad) in e and "nme" in e for e in sales.errors), sales.errors
    assert not (await engine.decide_approve(approve(None, None, True, "read"))).allowed
    assert (await engine.decide_call(call(team="support"))).allowed
    assert any(str(bad) in p for p in engine.problems())

    # a permit in a team scope is refused the same way, and so is a syntax error at global: all deny
    bad.write_text('permit(principal, action == M2A::Action::"approve", resource);')
    await engine.reload()
    assert not (await engine.decide_call(call())).allowed
    write(tmp_path, "global.cedar", "forbid(principal, action, resource")
    log_only = PolicyEngine(None, tmp_path, mode="log_only")  # errors refuse in log_only too
    everyone = await log_only.decide_call(call(team="support"))
    assert not everyone.allowed and "does not parse" in " ".join(everyone.errors)


async def test_an_unreachable_table_denies_until_loaded() -> None:
    db = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        engine = PolicyEngine(db, None)
        decision = await engine.decide_call(call())
        assert not decision.allowed and "could not be loaded" in decision.errors[0]
    finally:
        await db.dispose()


async def test_evaluation_errors_deny_in_either_mode(tmp_path: Path) -> None:
    write(tmp_path, "limits.cedar", BIG_PAYMENTS)
    write(tmp_path, "overflow.cedar", """forbid(principal, action == M2A::Action::"call", resource)
when { context.args has n && context.args.n * 4611686018427387904 > 0 };""")  # fmt: skip
    for mode in ("enforce", "log_only"):
        engine = PolicyEngine(None, tmp_path, mode=mode)
        as_text = await engine.decide_call(call(tool="pay", tier="write", arguments={"amount": "5000"}))
        assert not as_text.allowed and not as_text.cedar_allowed and as_text.errors
        overflow = await engine.decide_call(call(arguments={"n": 4}))
        assert not overflow.allowed and "overflow" in " ".join(overflow.errors)
        assert not (await engine.decide_call(call(tier="admin"))).allowed
        assert not (await engine.decide_call(call(arguments=["not", "an", "object"]))).allowed  # type: ignore[arg-type]


async def test_arguments_in_the_context(tmp_path: Path) -> None:
    write(tmp_path, "limits.cedar", BIG_PAYMENTS)
    engine = PolicyEngine(None, tmp_path)

    async def pay(amount: object) -> bool:
        return (
            await engine.decide_call(call(tool="pay", tier="write", arguments={"amount": amount}))
        ).allowed

    assert await pay(10) and await pay(1000)
    assert not await pay(5000) and not await pay(5000.0)  # an integral float is a Long
    assert not await pay(1.5e30)  # past i64: its text, and comparing text is an error
    assert not await pay({"__extn": {"fn": "decimal", "arg": "1.0"}})  # an escape is only text
    assert (await engine.decide_call(call(tool="pay", tier="write", arguments={}))).allowed
    assert (await engine.decide_call(call(tool="pay", tier="write", arguments=None))).allowed


async def test_arguments_become_cedar_values() -> None:
    deep: dict[str, object] = {"v": 1}
    for _ in range(20):
        deep = {"d": deep}
    args = cedar_args({
        "s": "x", "b": True, "i": 3, "f": 2.0, "g": 2.5, "big": 2**64, "none": None, "l": [1, None, "a"],
        "ent": {"__entity": {"type": "M2A::Key", "id": "1"}}, "rec": {"k": {"n": 1}}, "deep": deep,
    })  # fmt: skip
    assert args["s"] == "x" and args["b"] is True and args["i"] == 3 and args["f"] == 2
    assert args["g"] == "2.5" and args["big"] == str(2**64) and "none" not in args and args["l"] == [1, "a"]
    assert isinstance(args["ent"], str) and args["rec"] == {"k": {"n": 1}}
    level = args["deep"]
    for _ in range(15):
        level = level["d"]
    assert isinstance(level, str)
    assert cedar_args(None) == {}


async def test_guardrails_and_on_behalf_of_reach_the_context(tmp_path: Path) -> None:
    write(tmp_path, "rails.cedar", """forbid(principal, action == M2A::Action::"call", resource)
when { context.guardrails.contains("secrets") || context.on_behalf_of == "mallory" };""")  # fmt: skip
    engine = PolicyEngine(None, tmp_path)
    assert not (await engine.decide_call(call(guardrails=("pii", "secrets")))).allowed
    assert not (await engine.decide_call(call(on_behalf_of="mallory"))).allowed
    assert (await engine.decide_call(call(guardrails=("pii",), on_behalf_of=None))).allowed


# -- validation ------------------------------------------------------------------------------------


async def test_validate() -> None:
    engine = PolicyEngine(None, None)
    assert engine.validate(NO_DELETE + BIG_PAYMENTS) == []
    assert engine.validate(FORBID_ALL, "team:sales") == []
    assert engine.validate("") == []
    assert "does not parse" in engine.validate("permit(principal, action, resource")[0]
    assert "teem" in engine.validate('forbid(principal, action, resource) when { principal.teem == "x" };')[0]
    unguarded = 'forbid(principal, action == M2A::Action::"call", resource) when { context.args.amount > 1 };'
    assert "args.amount" in " ".join(engine.validate(unguarded))
    assert "only forbid" in engine.validate("permit(principal, action, resource);", "agent:sales/bot")[0]
    assert "m2a." in engine.validate('@id("m2a.granted")\n' + FORBID_ALL)[0]
    assert "templates" in engine.validate("permit(principal == ?principal, action, resource);")[0]


# -- the table -------------------------------------------------------------------------------------


async def test_the_store(engine: AsyncEngine) -> None:
    store = PolicyStore(engine)
    empty = await store.marker()
    made = await store.put("team:sales", "limits", FORBID_ALL, None, "key abc (team sales)")
    assert made.created and made.version == 1 and made.updated_by == "key abc (team sales)"
    same = await store.put("team:sales", "limits", FORBID_ALL, None, "someone else")
    assert not same.created and same.version == 1 and same.updated_by == "key abc (team sales)"
    changed = await store.put("team:sales", "limits", NO_DELETE, "log_only", "admin")
    assert changed.version == 2 and changed.mode == "log_only" and changed.text == NO_DELETE
    assert changed.updated_at >= made.updated_at and changed.created_at == made.created_at
    await store.put("global", "base", BIG_PAYMENTS, None, "admin")
    assert [(r.scope, r.name) for r in await store.list()] == [("global", "base"), ("team:sales", "limits")]
    assert [r.name for r in await store.list("team:sales")] == ["limits"]
    assert (await store.get("team:sales", "limits")) == replace(changed, created=False)
    marker = await store.marker()
    assert marker != empty and marker[0] == 2
    assert await store.delete("team:sales", "limits") and not await store.delete("team:sales", "limits")
    assert await store.get("team:sales", "limits") is None and await store.marker() != marker
    for bad in (
        lambda: store.put("team:Sales", "x", "", None, "t"),
        lambda: store.put("teams:sales", "x", "", None, "t"),
        lambda: store.put("agent:sales", "x", "", None, "t"),
        lambda: store.put("global\n", "x", "", None, "t"),
        lambda: store.put("global", "Bad Name", "", None, "t"),
        lambda: store.put("global", "x", "", "enforce", "t"),  # the global mode is the config's
        lambda: store.put("team:sales", "x", "", "loud", "t"),
        lambda: store.put("team:sales", "x", "a\x00b", None, "t"),
    ):
        with pytest.raises(PolicyStoreError):
            await bad()
    assert str(parse_scope("agent:sales/order-bot")) == "agent:sales/order-bot"


async def test_a_change_is_seen_by_a_second_engine_within_its_refresh(
    database: Database, engine: AsyncEngine
) -> None:
    clock = Clock()
    other = PolicyEngine(await database.open(), None, clock=clock)  # another process's engine
    assert (await other.decide_call(call())).allowed
    store = PolicyStore(engine)
    await store.put("agent:sales/order-bot", "stop", FORBID_ALL, None, "test")
    assert (await other.decide_call(call())).allowed  # within the second: the cached set
    clock.now += 1.01
    stopped = await other.decide_call(call())
    assert not stopped.allowed and stopped.policy_ids == ("agent:sales/order-bot/stop/0",)
    assert (await other.decide_call(call(agent_name="other-bot"))).allowed

    await store.delete("agent:sales/order-bot", "stop")
    clock.now += 1.01
    assert (await other.decide_call(call())).allowed
