"""Quota counters: all-or-nothing reservations over windows and in-flight sets.

``Memory`` keeps them in this process (the default; one gateway process). ``RedisCounters`` keeps
them in Redis, so several gateway processes share one budget: each reservation is one Lua script,
atomic across every counter it touches. A window counter is one integer per fixed window bucket
that expires with the bucket; a concurrency counter is a set of in-flight request ids scored by
start time, so the slots of a process that died free themselves after ``stale_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Charge:
    """One counter a request draws on: ``amount`` against ``limit`` until ``expires`` (epoch s)."""

    key: str
    limit: int
    amount: int
    expires: float  # end of the window bucket; for concurrency, when a slot counts as stale
    concurrency: bool = False


class Counters(Protocol):
    async def reserve(self, charges: list[Charge], token: str) -> int | None:
        """Take every charge, or none: the index of the first that does not fit, else None."""

    async def settle(self, charges: list[Charge], deltas: list[int], token: str) -> None:
        """Correct window counters by ``deltas`` (actual minus reserved); free concurrency slots."""

    # Counters that settle in this process without waiting: ``settle`` done at once, with no task
    # (None: ``settle`` is awaited in a task of its own).
    settle_now: Callable[[list[Charge], list[int], str], None] | None

    async def value(self, key: str) -> int:
        """The counter's current value (tests, `m2a quotas show`)."""

    async def close(self) -> None: ...


class Memory:
    """Counters in this process: exact, and atomic because the event loop runs one thing at a time."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._swept = 0.0

    def _sweep(self, now: float) -> None:
        if now - self._swept < 10:
            return
        self._swept = now
        for k in [k for k, (_, exp) in self._windows.items() if exp <= now]:
            del self._windows[k]

    def _window(self, key: str, now: float) -> int:
        v = self._windows.get(key)
        return v[0] if v is not None and v[1] > now else 0

    async def reserve(self, charges: list[Charge], token: str) -> int | None:
        now = time.time()
        self._sweep(now)
        for i, c in enumerate(charges):
            if c.concurrency:
                slots = self._slots.setdefault(c.key, {})
                for t in [t for t, stale in slots.items() if stale <= now]:
                    del slots[t]
                if len(slots) + 1 > c.limit:
                    return i
            elif self._window(c.key, now) + c.amount > c.limit:
                return i
        for c in charges:
            if c.concurrency:
                self._slots[c.key][token] = c.expires
            else:
                self._windows[c.key] = (self._window(c.key, now) + c.amount, c.expires)
        return None

    async def settle(self, charges: list[Charge], deltas: list[int], token: str) -> None:
        self.settle_now(charges, deltas, token)

    def settle_now(self, charges: list[Charge], deltas: list[int], token: str) -> None:
        now = time.time()
        for c, d in zip(charges, deltas, strict=True):
            if c.concurrency:
                self._slots.get(c.key, {}).pop(token, None)
            elif d and c.key in self._windows and self._windows[c.key][1] > now:
                value, exp = self._windows[c.key]
                self._windows[c.key] = (max(value + d, 0), exp)

    async def value(self, key: str) -> int:
        now = time.time()
        slots = self._slots.get(key)  # a stale slot is free, as reserve() sees it
        return sum(stale > now for stale in slots.values()) if slots is not None else self._window(key, now)

    async def close(self) -> None:
        pass


# KEYS: the counters. ARGV: now, token, then per key: limit, amount, expires (epoch s), kind (w|c).
_RESERVE = """
local now = tonumber(ARGV[1])
local token = ARGV[2]
for i, k in ipairs(KEYS) do
  local b = 2 + (i - 1) * 4
  local limit, amount = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  if ARGV[b + 4] == 'c' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    if redis.call('ZCARD', k) + 1 > limit then return i end
  elseif tonumber(redis.call('GET', k) or '0') + amount > limit then
    return i
  end
end
for i, k in ipairs(KEYS) do
  local b = 2 + (i - 1) * 4
  local expires = tonumber(ARGV[b + 3])
  if ARGV[b + 4] == 'c' then
    redis.call('ZADD', k, expires, token)
  else
    redis.call('INCRBY', k, ARGV[b + 2])
  end
  redis.call('EXPIREAT', k, math.ceil(expires) + 1)
end
return 0
"""
# KEYS: the counters. ARGV: token, then per key: delta, kind (w|c).
_SETTLE = """
for i, k in ipairs(KEYS) do
  local delta, kind = tonumber(ARGV[2 * i]), ARGV[2 * i + 1]
  if kind == 'c' then
    redis.call('ZREM', k, ARGV[1])
  elseif delta ~= 0 and redis.call('EXISTS', k) == 1 then
    if redis.call('INCRBY', k, delta) < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
  end
end
return 0
"""


class RedisCounters:
    """Counters in Redis, shared by every gateway process that points at the same server."""

    settle_now = None  # settling is a round trip to Redis: awaited in a task

    def __init__(self, url: str, prefix: str = "m2a:q:") -> None:
        import redis.asyncio as redis  # only where Redis is configured

        self.redis = redis.from_url(url)
        self.prefix = prefix
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)

    async def reserve(self, charges: list[Charge], token: str) -> int | None:
        args: list[object] = [time.time(), token]
        for c in charges:
            args += [c.limit, c.amount, c.expires, "c" if c.concurrency else "w"]
        hit = int(await self._reserve(keys=[self.prefix + c.key for c in charges], args=args))
        return hit - 1 if hit else None

    async def settle(self, charges: list[Charge], deltas: list[int], token: str) -> None:
        args: list[object] = [token]
        for c, d in zip(charges, deltas, strict=True):
            args += [d, "c" if c.concurrency else "w"]
        await self._settle(keys=[self.prefix + c.key for c in charges], args=args)

    async def value(self, key: str) -> int:
        k = self.prefix + key
        if await self.redis.type(k) == b"zset":
            await self.redis.zremrangebyscore(k, "-inf", time.time())
            return int(await self.redis.zcard(k))
        return int(await self.redis.get(k) or 0)

    async def close(self) -> None:
        await self.redis.aclose()
