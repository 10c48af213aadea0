"""Admission against quotas: reserve an estimate before the engine sees a request, settle after.

The estimate is the prompt's tokens (from its text, on the generous side) plus the output cap:
the one the request sets in the field its engine obeys, or the configured reserve (16 for
completions) capped by what the tightest token limit has left, times ``n`` (or ``best_of``). That
cap is what the engine is then told (``Ticket.max_tokens``), so it cannot generate more than was
reserved. Every limit of the caller's team and key is reserved at once or not at all; a request
over any of them gets 429 with the limit it hit and ``Retry-After``. When the answer ends, the
engine's own usage numbers replace the estimate.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from m2a.config import Price
from m2a.gateway.counters import Charge, Counters
from m2a.gateway.errors import GatewayError
from m2a.principal import Limit, Principal
from m2a.store.limits import WINDOWS

BYTES_PER_TOKEN = 3  # generous: English runs about 4 bytes per token
TOKENS_PER_MESSAGE = 4  # the chat template's own tokens around each message
TOKENS_PER_IMAGE = 1000
OUTPUT_BOUND = ("tokens", "output_tokens", "cost")  # limits whose reservation counts output tokens
ROOMY = ("tokens", "output_tokens")  # token limits that cap the output reserved when none is asked


def _text_bytes(content: Any) -> tuple[int, int]:
    """UTF-8 bytes of the text in a message content, and how many images it holds."""
    if isinstance(content, str):
        return len(content.encode()), 0
    size = images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    size += len(part["text"].encode())
                elif part.get("type") == "image_url":
                    images += 1
    return size, images


def estimate_input(payload: dict[str, Any]) -> int:
    """Prompt tokens of a validated chat, completion or embedding request, estimated from its text."""
    if "messages" in payload:
        size, images, count = 0, 0, 0
        for m in payload["messages"]:
            b, i = _text_bytes(m.get("content"))
            size, images, count = size + b, images + i, count + 1
        if payload.get("tools"):
            size += len(str(payload["tools"]).encode())
        return math.ceil(size / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * count + TOKENS_PER_IMAGE * images
    prompt = payload.get("prompt", payload.get("input", ""))
    items = prompt if isinstance(prompt, list) else [prompt]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += math.ceil(len(item.encode()) / BYTES_PER_TOKEN) + 1
        elif isinstance(item, int):  # one token id
            total += 1
        elif isinstance(item, list):  # token ids
            total += len(item)
    return total


COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions


def asked_output(payload: dict[str, Any]) -> int | None:
    """The output cap per choice the request sets, in the field its engine obeys; None if unset.

    Chat engines take ``max_completion_tokens`` over ``max_tokens``; completion engines know only
    ``max_tokens`` (a ``max_completion_tokens`` there is ignored by the engine, so it is here too).
    """
    fields = ("max_tokens",) if "prompt" in payload else ("max_completion_tokens", "max_tokens")
    for name in fields:
        value = payload.get(name)
        if value is not None:
            return int(value)
    return None


def choices(payload: dict[str, Any]) -> int:
    """How many sequences the engine generates: ``n``, or ``best_of`` where that is larger."""
    return max(int(payload.get("n") or 1), int(payload.get("best_of") or 1))


def default_output(payload: dict[str, Any], default: int) -> int:
    """The per-choice cap when the request sets none (completions keep OpenAI's default of 16)."""
    return min(default, COMPLETIONS_DEFAULT_MAX_TOKENS) if "prompt" in payload else default


def estimate_output(payload: dict[str, Any], default: int, embed: bool) -> int:
    """Output tokens the engine may generate for the request: the per-choice cap times choices."""
    if embed:
        return 0
    most = asked_output(payload)
    return (default_output(payload, default) if most is None else most) * choices(payload)


def describe(lim: Limit, principal: Principal) -> str:
    """The limit as a refusal names it; an agent's own limit (scope ``agent``) names the agent."""
    text = lim.describe(principal.team)
    if lim.scope == "agent" and principal.agent is not None:  # Limit.describe knows teams and keys
        return text.replace(f"for key {lim.subject}", f"for agent '{principal.agent.name}'")
    return text


def window_bounds(window: str, now: float) -> tuple[int, float]:
    """Start and end (epoch seconds) of the fixed window bucket holding ``now``; months are calendar."""
    if window == "month":
        t = datetime.fromtimestamp(now, UTC)
        start = datetime(t.year, t.month, 1, tzinfo=UTC)
        end = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
        return int(start.timestamp()), end.timestamp()
    size = WINDOWS[window]
    start = int(now // size * size)
    return start, float(start + size)


def amounts(metric: str, price: Price, input_tokens: int, output_tokens: int, cached: int = 0) -> int:
    if metric == "tokens":
        return input_tokens + output_tokens
    if metric == "input_tokens":
        return input_tokens
    if metric == "output_tokens":
        return output_tokens
    if metric == "cost":
        # round off float noise first (0.1 * 101 + 0.3 * 13 is 14.000000000000002): no phantom micro-dollar
        return math.ceil(round(price.cost(input_tokens, output_tokens, cached) * 1e6, 6))
    return 1  # requests, concurrency


@dataclass
class Ticket:
    """What one admitted request holds; ``settle`` gives back what it did not use, once."""

    quotas: Quotas
    token: str
    price: Price
    limits: list[Limit]
    charges: list[Charge]
    max_tokens: int | None = None  # the output cap per choice reserved: the engine must be told it
    settled: bool = field(default=False)

    def settle(
        self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, served: bool = True
    ) -> None:
        """Replace the estimate with the usage; a request refused after admission (not ``served``:
        shed by the priority gate) gives its request back too."""
        if self.settled:
            return
        self.settled = True
        deltas = [
            (0 if served else -c.amount)
            if lim.metric in ("requests", "concurrency")
            else amounts(lim.metric, self.price, input_tokens, output_tokens, cached_tokens) - c.amount
            for lim, c in zip(self.limits, self.charges, strict=True)
        ]
        counters = self.quotas.counters
        at_once = getattr(counters, "settle_now", None)
        if at_once is not None:  # in-process counters: no task to schedule
            at_once(self.charges, deltas, self.token)
        else:
            self.quotas.spawn(counters.settle(self.charges, deltas, self.token))


class Quotas:
    """The gateway's quota check: counters (in process or Redis) and the per-model prices."""

    def __init__(
        self, counters: Counters, prices: dict[str, Price], reserve_output: int = 1024, stale_s: float = 900.0
    ) -> None:
        self.counters = counters
        self.prices = prices
        self.reserve_output = reserve_output
        self.stale_s = stale_s  # a concurrency slot older than this is a dead process's: freed
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending settlements (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    def counter_key(lim: Limit, now: float) -> str:
        start, _ = window_bounds(lim.window, now)
        return f"{lim.scope}:{lim.subject}:{lim.metric}:{lim.window}:{start}"

    async def _room(self, lim: Limit, est_in: int, now: float) -> int:
        """Output tokens a token limit has left in its window once the prompt is counted."""
        if lim.limit <= 0:
            return 1 << 62  # a zero limit refuses the request anyway
        used = await self.counters.value(self.counter_key(lim, now))
        return lim.limit - used - (0 if lim.metric == "output_tokens" else est_in)

    async def admit(
        self,
        principal: Principal,
        model: str,
        payload: dict[str, Any],
        token: str,
        embed: bool = False,
        est_in: int | None = None,
    ) -> Ticket | None:
        """Reserve the request's estimate against every limit of the caller; None when it has none.
        ``est_in``: the prompt's estimate where the caller has it already (else made here)."""
        if not principal.limits:
            return None
        price = self.prices.get(model) or Price()
        if est_in is None:
            est_in = estimate_input(payload)
        asked_cap = None if embed else asked_output(payload)
        asked = asked_cap is not None
        cap: int | None = None  # per choice: what the engine is told (None: the request is left alone)
        est_out = 0
        now = time.time()
        if not embed:
            n = choices(payload)
            cap = asked_cap
            if cap is None:
                # No max_tokens: reserve the default, but never more than the tightest token limit
                # has left in its window after the prompt, or a small team could send no such
                # request at all (the reservation below still decides, atomically).
                room = [await self._room(lim, est_in, now) for lim in principal.limits if lim.metric in ROOMY]
                cap = max(1, min([default_output(payload, self.reserve_output), *(r // n for r in room)]))
            est_out = cap * n
            if not any(lim.metric in OUTPUT_BOUND for lim in principal.limits):
                cap = None  # nothing reserved depends on the output: the engine's own default stands
        charges: list[Charge] = []
        for lim in principal.limits:
            amount = amounts(lim.metric, price, est_in, est_out)
            if lim.metric == "concurrency":
                charges.append(
                    Charge(f"{lim.scope}:{lim.subject}:concurrency", lim.limit, 1, now + self.stale_s, True)
                )
                continue
            if lim.limit > 0 and amount > lim.limit:
                raise GatewayError(
                    429,
                    f"This request needs up to {amount} against the limit of {describe(lim, principal)}, "
                    "so it can never fit; "
                    + ("lower max_tokens or shorten the prompt." if asked else "shorten the prompt."),
                    code="request_too_large",
                    param="max_tokens" if asked else "messages",
                )
            end = window_bounds(lim.window, now)[1]
            charges.append(Charge(self.counter_key(lim, now), lim.limit, amount, end))
        hit = await self.counters.reserve(charges, token)
        if hit is not None:
            lim, c = principal.limits[hit], charges[hit]
            retry = 1 if c.concurrency else max(1, math.ceil(c.expires - time.time()))
            zero = lim.limit == 0
            raise GatewayError(
                429,
                f"Quota exceeded: {describe(lim, principal)}"
                + (" (an admin set it to zero)." if zero else f". Retry after {retry} s."),
                code="insufficient_quota" if zero else "rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        return Ticket(self, token, price, list(principal.limits), charges, max_tokens=cap)

    async def close(self) -> None:
        await self.drain()
        await self.counters.close()
