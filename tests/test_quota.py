"""Quota admission: request estimates, window buckets, reservations against team and key limits, settling."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from m2a.config import Price
from m2a.gateway import counters as counters_mod
from m2a.gateway import quota as quota_mod
from m2a.gateway.counters import Memory
from m2a.gateway.errors import GatewayError
from m2a.gateway.quota import Quotas, amounts, estimate_input, estimate_output, window_bounds
from m2a.principal import Limit
from m2a.store.identity import Principal
from tests.openai_shape import assert_openai_error

TEAM_ID = 3
KEY_ID = 7
OTHER_KEY_ID = 8
NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC).timestamp()
DAY_START = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp())
MINUTE_START = int(datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp())
UNTIL_MIDNIGHT = 11 * 3600 + 59 * 60 + 30  # 12:00:30 to 24:00
UNTIL_NEXT_MINUTE = 30

# -- estimates ------------------------------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

INPUT_CASES: list[tuple[str, dict[str, Any], int]] = [
    # bytes / 3, rounded up, + 4 per message (+ 1000 per image) for chats
    ("chat one message", {"messages": [{"role": "user", "content": "Hello there!"}]}, 4 + 4),
    (
        "chat two messages",
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]},
        6 + 8,  # 16 bytes
    ),
    (
        "chat utf-8 counts bytes",
        {"messages": [{"role": "user", "content": "héllo wörld"}]},
        5 + 4,
    ),  # 13 bytes
    (
        "chat text parts and an image",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "abc"}, IMAGE, {"type": "text", "text": "défg"}],
                }
            ]
        },
        3 + 4 + 1000,  # 8 bytes
    ),
    (
        "chat two images",
        {"messages": [{"role": "user", "content": [IMAGE, IMAGE]}]},
        4 + 2000,
    ),
    (
        "chat without content (tool calls)",
        {"messages": [{"role": "user", "content": "abcdef"}, {"role": "assistant", "content": None}]},
        2 + 8,
    ),
    (
        "chat with tools",
        {"messages": [{"role": "user", "content": "What is the weather?"}], "tools": TOOLS},
        38 + 4,  # 20 bytes of text + 93 bytes of the tools' repr = 113 bytes
    ),
    ("completion string", {"prompt": "hello world"}, 4 + 1),
    ("completion strings", {"prompt": ["ab", "cde", "x" * 30]}, (1 + 1) + (1 + 1) + (10 + 1)),
    ("completion token ids", {"prompt": [101, 2023, 2003]}, 3),
    ("completion lists of token ids", {"prompt": [[1, 2, 3], [4, 5]]}, 5),
    ("completion empty", {"prompt": ""}, 1),
    ("embedding string", {"input": "x" * 30}, 11),
    ("embedding strings", {"input": ["a" * 3, "b" * 4]}, (1 + 1) + (2 + 1)),
    ("embedding token ids", {"input": [[1, 2], [3, 4, 5, 6]]}, 6),
]


@pytest.mark.parametrize(("payload", "expect"), [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES])
def test_estimate_input(payload: dict[str, Any], expect: int) -> None:
    assert estimate_input(payload) == expect


OUTPUT_CASES: list[tuple[str, dict[str, Any], bool, int]] = [
    ("max_tokens", {"max_tokens": 100}, False, 100),
    ("default when unset", {}, False, 256),
    ("max_completion_tokens wins", {"max_tokens": 100, "max_completion_tokens": 50}, False, 50),
    ("n multiplies", {"max_tokens": 100, "n": 3}, False, 300),
    ("n multiplies the default", {"n": 2}, False, 512),
    ("n null", {"max_tokens": 10, "n": None}, False, 10),
    ("embeddings produce none", {"max_tokens": 100}, True, 0),
]


@pytest.mark.parametrize(
    ("payload", "embed", "expect"), [c[1:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES]
)
def test_estimate_output(payload: dict[str, Any], embed: bool, expect: int) -> None:
    assert estimate_output(payload, 256, embed) == expect


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


WINDOW_CASES = [
    ("minute", ts(2026, 3, 10, 12, 0, 30), ts(2026, 3, 10, 12, 0), ts(2026, 3, 10, 12, 1)),
    ("minute", ts(2026, 3, 10, 12, 0), ts(2026, 3, 10, 12, 0), ts(2026, 3, 10, 12, 1)),
    ("hour", ts(2026, 3, 10, 12, 59, 59), ts(2026, 3, 10, 12), ts(2026, 3, 10, 13)),
    ("day", ts(2026, 3, 10, 23, 59, 59), ts(2026, 3, 10), ts(2026, 3, 11)),
    ("month", ts(2026, 3, 10, 12), ts(2026, 3, 1), ts(2026, 4, 1)),
    ("month", ts(2025, 12, 31, 23, 59, 59), ts(2025, 12, 1), ts(2026, 1, 1)),
    ("month", ts(2026, 1, 1), ts(2026, 1, 1), ts(2026, 2, 1)),
    ("month", ts(2024, 2, 29, 12), ts(2024, 2, 1), ts(2024, 3, 1)),
    ("month", ts(2026, 2, 15), ts(2026, 2, 1), ts(2026, 3, 1)),
]


@pytest.mark.parametrize(("window", "now", "start", "end"), WINDOW_CASES)
def test_window_bounds(window: str, now: float, start: float, end: float) -> None:
    got = window_bounds(window, now + 0.25 if now != start else now)
    assert got == (int(start), end)
    assert isinstance(got[0], int)


PRICE = Price(input_per_1m=2.0, output_per_1m=6.0, cached_input_per_1m=0.5)

AMOUNT_CASES = [
    ("tokens", 10, 20, 0, 30),
    ("input_tokens", 10, 20, 0, 10),
    ("output_tokens", 10, 20, 0, 20),
    ("requests", 10, 20, 0, 1),
    ("concurrency", 10, 20, 0, 1),
    ("cost", 10, 20, 0, 140),  # micro-dollars: 10 * 2 + 20 * 6
    ("cost", 10, 20, 4, 134),  # 6 * 2 + 4 * 0.5 + 20 * 6
    ("cost", 1, 0, 0, 2),
]


@pytest.mark.parametrize(("metric", "inp", "out", "cached", "expect"), AMOUNT_CASES)
def test_amounts(metric: str, inp: int, out: int, cached: int, expect: int) -> None:
    assert amounts(metric, PRICE, inp, out, cached) == expect


@pytest.mark.parametrize(
    ("price", "inp", "out", "expect"),
    [
        (Price(input_per_1m=0.1, output_per_1m=0.3), 101, 13, 14),  # 10.1 + 3.9: exactly 14
        (Price(input_per_1m=0.1, output_per_1m=0.3), 1, 0, 1),  # 0.1 rounds up
        (Price(input_per_1m=0.15, output_per_1m=0.6), 1000, 1000, 750),
        (Price(input_per_1m=2.5, output_per_1m=10), 3, 7, 78),  # 7.5 + 70
    ],
)
def test_cost_rounds_up_to_whole_micro_dollars_exactly(price: Price, inp: int, out: int, expect: int) -> None:
    assert amounts("cost", price, inp, out) == expect


# -- admission ------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fixed time for the quota module and the in-process counters."""
    fake = SimpleNamespace(now=NOW)
    fake.time = lambda: fake.now
    monkeypatch.setattr(quota_mod, "time", fake)
    monkeypatch.setattr(counters_mod, "time", fake)
    return fake


def principal(*limits: Limit, key_id: int = KEY_ID) -> Principal:
    return Principal(
        key_id,
        "m2a-abcdefgh",
        "research",
        "member",
        "standard",
        100,
        frozenset({"m"}),
        None,
        TEAM_ID,
        tuple(limits),
    )


def team(metric: str, window: str, limit: int) -> Limit:
    return Limit("team", TEAM_ID, metric, window, limit)


def key(metric: str, window: str, limit: int, key_id: int = KEY_ID) -> Limit:
    return Limit("key", key_id, metric, window, limit)


# 5 input tokens (2 bytes + 4 for the message) + 95 output tokens: 100 tokens
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 95}


def counter(scope: str, subject: int, metric: str, window: str) -> str:
    start = {"day": DAY_START, "minute": MINUTE_START}[window]
    return f"{scope}:{subject}:{metric}:{window}:{start}"


@pytest.fixture
def quotas(clock: SimpleNamespace) -> Quotas:
    prices = {"m": Price(input_per_1m=1000.0, output_per_1m=2000.0), "cheap": Price(input_per_1m=0.1)}
    return Quotas(Memory(), prices, reserve_output=100, stale_s=900)


def refusal(info: pytest.ExceptionInfo[GatewayError], code: str, retry: str | None) -> GatewayError:
    exc = info.value
    assert exc.status == 429
    resp = exc.response()
    err = assert_openai_error(
        httpx.Response(resp.status_code, headers=list(resp.headers.items()), content=resp.body), 429, code
    )
    assert err["type"] == "rate_limit_error"
    assert exc.headers.get("Retry-After") == retry
    return exc


async def test_no_limits_no_ticket(quotas: Quotas) -> None:
    assert await quotas.admit(principal(), "m", CHAT, "r1") is None


async def test_team_and_key_limits_both_apply(quotas: Quotas) -> None:
    team_tokens = team("tokens", "day", 1000)
    mine = principal(team_tokens, key("tokens", "day", 300))
    other = principal(team_tokens, key_id=OTHER_KEY_ID)  # a key of the same team without a limit of its own
    for i in range(3):
        assert await quotas.admit(mine, "m", CHAT, f"mine-{i}") is not None
    with pytest.raises(GatewayError) as info:
        await quotas.admit(mine, "m", CHAT, "mine-3")
    exc = refusal(info, "rate_limit_exceeded", str(UNTIL_MIDNIGHT))
    assert (
        exc.message == f"Quota exceeded: 300 tokens per day for key {KEY_ID}. Retry after {UNTIL_MIDNIGHT} s."
    )
    # the refused request took nothing from the team
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 300
    assert await quotas.counters.value(counter("key", KEY_ID, "tokens", "day")) == 300

    for i in range(7):  # the team's budget is shared: 700 left for the other key
        assert await quotas.admit(other, "m", CHAT, f"other-{i}") is not None
    with pytest.raises(GatewayError) as info:
        await quotas.admit(other, "m", CHAT, "other-7")
    exc = refusal(info, "rate_limit_exceeded", str(UNTIL_MIDNIGHT))
    assert (
        exc.message
        == f"Quota exceeded: 1000 tokens per day for team 'research'. Retry after {UNTIL_MIDNIGHT} s."
    )
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 1000


async def test_requests_per_minute_and_retry_after(quotas: Quotas, clock: SimpleNamespace) -> None:
    p = principal(team("requests", "minute", 2), team("tokens", "day", 10**6))
    for i in range(2):
        assert await quotas.admit(p, "m", CHAT, f"r{i}") is not None
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r2")
    exc = refusal(info, "rate_limit_exceeded", str(UNTIL_NEXT_MINUTE))
    assert "2 requests per minute for team 'research'" in exc.message
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 200
    clock.now = NOW + 29.5
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r2")
    refusal(info, "rate_limit_exceeded", "1")  # never less than one second
    clock.now = NOW + 30  # the next minute: a new bucket
    assert await quotas.admit(p, "m", CHAT, "r2") is not None


async def test_zero_quota_is_insufficient_quota(quotas: Quotas) -> None:
    p = principal(team("tokens", "day", 10**6), key("requests", "day", 0))
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r1")
    exc = refusal(info, "insufficient_quota", str(UNTIL_MIDNIGHT))
    assert exc.message == f"Quota exceeded: 0 requests per day for key {KEY_ID} (an admin set it to zero)."
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 0


async def test_zero_concurrency_is_insufficient_quota(quotas: Quotas) -> None:
    with pytest.raises(GatewayError) as info:
        await quotas.admit(principal(team("concurrency", "-", 0)), "m", CHAT, "r1")
    exc = refusal(info, "insufficient_quota", "1")
    assert "0 concurrent requests for team 'research'" in exc.message


async def test_request_too_large(quotas: Quotas) -> None:
    p = principal(team("requests", "minute", 10), key("tokens", "minute", 99))
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r1")
    exc = refusal(info, "request_too_large", None)
    assert exc.param == "max_tokens"
    assert f"needs up to 100 against the limit of 99 tokens per minute for key {KEY_ID}" in exc.message
    assert await quotas.counters.value(counter("team", TEAM_ID, "requests", "minute")) == 0
    # exactly the limit fits
    p = principal(team("requests", "minute", 10), key("tokens", "minute", 100))
    assert await quotas.admit(p, "m", CHAT, "r2") is not None


async def test_concurrency_frees_on_settle(quotas: Quotas) -> None:
    p = principal(team("concurrency", "-", 1))
    first = await quotas.admit(p, "m", CHAT, "r1")
    assert first is not None
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r2")
    exc = refusal(info, "rate_limit_exceeded", "1")
    assert exc.message == "Quota exceeded: 1 concurrent requests for team 'research'. Retry after 1 s."
    first.settle(10, 10)
    await quotas.drain()
    assert await quotas.counters.value(f"team:{TEAM_ID}:concurrency") == 0
    assert await quotas.admit(p, "m", CHAT, "r2") is not None


async def test_settle_corrects_by_actual_usage_once(quotas: Quotas) -> None:
    limits = [
        team("tokens", "day", 10**6),
        team("input_tokens", "day", 10**6),
        team("output_tokens", "day", 10**6),
        key("requests", "day", 100),
    ]
    ticket = await quotas.admit(principal(*limits), "m", CHAT, "r1")
    assert ticket is not None
    values = {
        m: await quotas.counters.value(counter("team", TEAM_ID, m, "day"))
        for m in ("tokens", "input_tokens", "output_tokens")
    }
    assert values == {"tokens": 100, "input_tokens": 5, "output_tokens": 95}
    ticket.settle(7, 13)
    ticket.settle(1000, 1000)  # a second settle changes nothing
    await quotas.drain()
    values = {
        m: await quotas.counters.value(counter("team", TEAM_ID, m, "day"))
        for m in ("tokens", "input_tokens", "output_tokens")
    }
    assert values == {"tokens": 20, "input_tokens": 7, "output_tokens": 13}
    assert await quotas.counters.value(counter("key", KEY_ID, "requests", "day")) == 1


async def test_settle_above_the_estimate(quotas: Quotas) -> None:
    ticket = await quotas.admit(principal(team("tokens", "day", 1000)), "m", CHAT, "r1")
    assert ticket is not None
    ticket.settle(5, 395)
    await quotas.drain()
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 400


async def test_default_output_reserve_and_n(quotas: Quotas) -> None:
    p = principal(team("output_tokens", "day", 10**6))
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3}
    assert await quotas.admit(p, "m", payload, "r1") is not None
    assert await quotas.counters.value(counter("team", TEAM_ID, "output_tokens", "day")) == 300


async def test_embeddings_reserve_no_output(quotas: Quotas) -> None:
    p = principal(team("tokens", "day", 10**6))
    assert await quotas.admit(p, "m", {"model": "m", "input": "x" * 30}, "r1", embed=True) is not None
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 11


async def test_cost_limit_with_prices(quotas: Quotas) -> None:
    # model "m": $1000 / 1M input, $2000 / 1M output: 5 * 1000 + 95 * 2000 = 195000 micro-dollars
    p = principal(team("cost", "day", 500_000))
    tickets = [await quotas.admit(p, "m", CHAT, f"r{i}") for i in range(2)]
    assert await quotas.counters.value(counter("team", TEAM_ID, "cost", "day")) == 390_000
    with pytest.raises(GatewayError) as info:
        await quotas.admit(p, "m", CHAT, "r2")
    exc = refusal(info, "rate_limit_exceeded", str(UNTIL_MIDNIGHT))
    assert exc.message.startswith("Quota exceeded: $0.50 per day for team 'research'.")
    tickets[0].settle(10, 20)  # 10 * 1000 + 20 * 2000 = 50000
    await quotas.drain()
    assert await quotas.counters.value(counter("team", TEAM_ID, "cost", "day")) == 245_000
    assert await quotas.admit(p, "m", CHAT, "r2") is not None
    # a model without a price costs nothing, so it always fits a cost limit
    assert await quotas.admit(p, "unpriced", CHAT, "r3") is not None
    assert await quotas.counters.value(counter("team", TEAM_ID, "cost", "day")) == 440_000


async def test_cost_settle_with_cached_tokens(clock: SimpleNamespace) -> None:
    price = Price(input_per_1m=4.0, output_per_1m=8.0, cached_input_per_1m=1.0)
    quotas = Quotas(Memory(), {"m": price}, reserve_output=100)
    ticket = await quotas.admit(principal(team("cost", "day", 10**6)), "m", CHAT, "r1")
    assert ticket is not None
    assert await quotas.counters.value(counter("team", TEAM_ID, "cost", "day")) == 5 * 4 + 95 * 8
    ticket.settle(100, 10, 60)  # 40 fresh * 4 + 60 cached * 1 + 10 * 8
    await quotas.drain()
    assert await quotas.counters.value(counter("team", TEAM_ID, "cost", "day")) == 300


async def test_refused_request_frees_everything_it_reserved(quotas: Quotas) -> None:
    """A request over its key's limit takes nothing from the team's counters or concurrency."""
    p = principal(team("concurrency", "-", 5), team("requests", "day", 100), key("tokens", "day", 150))
    assert await quotas.admit(p, "m", CHAT, "r1") is not None
    with pytest.raises(GatewayError):
        await quotas.admit(p, "m", CHAT, "r2")
    assert await quotas.counters.value(f"team:{TEAM_ID}:concurrency") == 1
    assert await quotas.counters.value(counter("team", TEAM_ID, "requests", "day")) == 1
    assert await quotas.counters.value(counter("key", KEY_ID, "tokens", "day")) == 100


async def test_close_drains_settlements(quotas: Quotas) -> None:
    ticket = await quotas.admit(principal(team("tokens", "day", 1000)), "m", CHAT, "r1")
    assert ticket is not None
    ticket.settle(1, 1)
    await quotas.close()
    assert await quotas.counters.value(counter("team", TEAM_ID, "tokens", "day")) == 2
