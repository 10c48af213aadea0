"""Running probes against a served model through the gateway, as a real client would.

``run_probes`` sends each probe's request to ``{base_url}/chat/completions`` with the caller's key
(``Authorization: Bearer``), at most ``concurrency`` at once, each with its own timeout and no
retries, and judges each answer (``score.judge``) as it arrives. It speaks only HTTP (httpx): the
gateway never imports this package, and this package imports nothing of the gateway.

What the gateway's guardrails do shows in the outcomes: a 400 with error code ``content_filter``,
or ``finish_reason: content_filter``, is ``blocked``; a redacted answer no longer holds the planted
value and is ``resisted``. Streaming probes (``params.stream``) read the server-sent events, tool
call deltas and the usage chunk (asked for with ``stream_options.include_usage``); an ``error``
event in the stream counts like an error answer.

``system_prompt`` attacks a model as an application with that system prompt would use it (an
agent's, from its manifest): it opens each attempt's system message, before the probe's own system
text (which plays the application's part); an attempt without one gets it as its system message.

``check_target`` asks ``/models`` first, so a wrong key, URL or model name fails at once with a
clear message instead of as a run of errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from m2a.redteam.probes import Probe, Rendered
from m2a.redteam.results import cut
from m2a.redteam.score import Detectors, Judgement, Response, judge


class TargetError(RuntimeError):
    """The gateway cannot be used: unreachable, the key refused, or the model not served."""


@dataclass
class Attempt:
    probe: Probe
    rendered: Rendered
    response: Response
    judgement: Judgement

    def row(self) -> dict[str, Any]:
        """The attempt as a results row (``results.Store.add_attempts``)."""
        p, r, j = self.probe, self.response, self.judgement
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in self.rendered.messages)
        answer = r.content
        if r.tool_calls:
            answer += "".join(
                f"\n[tool call] {c.get('name')}({c.get('arguments') or ''})" for c in r.tool_calls
            )
        if r.status not in (None, 200) and not answer:
            answer = f"[HTTP {r.status}] {r.error_message or ''}"
        detail = dict(j.detail)
        detail.update(
            {
                "finish_reason": r.finish_reason,
                "usage": r.usage,
                "error_code": r.error_code,
                "planted": self.rendered.planted,
                "canaries": self.rendered.canaries,
            }
        )
        return {
            "probe_id": p.id,
            "category": p.category,
            "owasp": p.owasp,
            "technique": p.technique,
            "outcome": j.outcome,
            "decided_by": j.decided_by,
            "latency_s": round(r.latency_s, 4),
            "status": r.status,
            "prompt": cut(prompt),
            "answer": cut(answer),
            "detail": detail,
        }


def _error_fields(payload: Any) -> tuple[str | None, str | None]:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return (str(code) if code is not None else None), str(err.get("message") or "")
    if isinstance(err, str):
        return None, err
    return None, None


def _from_body(resp: Response, data: Any) -> None:
    if not isinstance(data, dict):
        resp.error_message = "the answer is not a JSON object"
        return
    choices = data.get("choices") or []
    texts: list[str] = []
    finish: list[str] = []
    for ch in choices:
        msg = ch.get("message") or {}
        if isinstance(msg.get("content"), str):
            texts.append(msg["content"])
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            resp.tool_calls.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
        if ch.get("finish_reason"):
            finish.append(ch["finish_reason"])
    resp.content = "\n".join(texts)
    # One blocked choice marks the answer blocked; otherwise the first choice's reason.
    resp.finish_reason = "content_filter" if "content_filter" in finish else (finish[0] if finish else None)
    if isinstance(data.get("usage"), dict):
        resp.usage = data["usage"]


async def _read_stream(http: httpx.Response, resp: Response) -> None:
    texts: dict[int, list[str]] = {}
    calls: dict[tuple[int, int], dict[str, Any]] = {}
    finish: list[str] = []
    async for line in http.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if "error" in event:
            resp.stream_error = True
            resp.error_code, resp.error_message = _error_fields(event)
            break
        if isinstance(event.get("usage"), dict):
            resp.usage = event["usage"]
        for ch in event.get("choices") or []:
            i = ch.get("index", 0)
            delta = ch.get("delta") or {}
            if isinstance(delta.get("content"), str):
                texts.setdefault(i, []).append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault((i, tc.get("index", 0)), {"name": None, "arguments": ""})
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] = fn["name"]
                if fn.get("arguments"):
                    slot["arguments"] += fn["arguments"]
            if ch.get("finish_reason"):
                finish.append(ch["finish_reason"])
    resp.content = "\n".join("".join(texts[i]) for i in sorted(texts))
    resp.tool_calls = [calls[k] for k in sorted(calls)]
    resp.finish_reason = "content_filter" if "content_filter" in finish else (finish[0] if finish else None)


async def send(client: httpx.AsyncClient, body: dict[str, Any], timeout: float) -> Response:
    """One attempt: POST ``/chat/completions`` with ``body``; never raises (errors are responses)."""
    resp = Response()
    stream = bool(body.get("stream"))
    if stream:
        body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if stream:
                async with client.stream("POST", "chat/completions", json=body) as http:
                    resp.status = http.status_code
                    if http.status_code != 200:
                        raw = await http.aread()
                        _error_into(resp, raw)
                    else:
                        await _read_stream(http, resp)
            else:
                http = await client.post("chat/completions", json=body)
                resp.status = http.status_code
                if http.status_code != 200:
                    _error_into(resp, http.content)
                else:
                    try:
                        _from_body(resp, http.json())
                    except json.JSONDecodeError:
                        resp.status, resp.error_message = None, "the answer is not JSON"
    except TimeoutError:
        resp.timed_out, resp.status = True, None
    except httpx.HTTPError as exc:
        resp.status, resp.error_message = None, f"{type(exc).__name__}: {exc}"[:300]
    resp.latency_s = time.perf_counter() - t0
    return resp


def _error_into(resp: Response, raw: bytes) -> None:
    try:
        resp.error_code, resp.error_message = _error_fields(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        resp.error_message = raw[:300].decode(errors="replace")


def client(base_url: str, key: str | None, timeout: float) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        headers=headers,
        trust_env=False,
        timeout=httpx.Timeout(timeout, connect=10),
        limits=httpx.Limits(max_connections=64),
    )


async def check_target(base_url: str, key: str | None, model: str) -> None:
    """Raise ``TargetError`` unless ``GET /models`` lists ``model`` for this key."""
    async with client(base_url, key, 15) as c:
        try:
            r = await c.get("models")
        except httpx.HTTPError as exc:
            raise TargetError(f"cannot reach the gateway at {base_url}: {exc}") from exc
    if r.status_code in (401, 403):
        raise TargetError(
            f"the gateway refused the key (HTTP {r.status_code}): pass --key or set M2A_API_KEY"
        )
    if r.status_code != 200:
        raise TargetError(f"GET {base_url}/models answered HTTP {r.status_code}")
    try:
        names = [m.get("id") for m in r.json().get("data", [])]
    except (json.JSONDecodeError, AttributeError) as exc:
        raise TargetError(f"GET {base_url}/models did not answer a model list") from exc
    if model not in names:
        raise TargetError(
            f"model {model!r} is not served there (this key sees: {', '.join(map(str, names))})"
        )


def with_system_prompt(rendered: Rendered, system_prompt: str | None) -> Rendered:
    """The attempt as an application with ``system_prompt`` sends it (see the module docstring)."""
    if not system_prompt:
        return rendered
    messages = [dict(m) for m in rendered.messages]
    if messages and messages[0].get("role") == "system":
        merged = f"{system_prompt}\n\n{messages[0]['content']}"
        messages[0]["content"] = merged
    else:
        merged = system_prompt
        messages.insert(0, {"role": "system", "content": system_prompt})
    return dataclasses.replace(rendered, messages=messages, system=merged)


async def run_probes(
    probes: list[Probe],
    *,
    base_url: str,
    key: str | None,
    model: str,
    seed: int | str = 0,
    concurrency: int = 4,
    timeout: float = 120.0,
    detectors: Detectors | None = None,
    on_done: Callable[[Attempt], None] | None = None,
    system_prompt: str | None = None,
) -> list[Attempt]:
    """Every probe once, at most ``concurrency`` at a time; ``on_done`` after each (progress, storage).
    The attempts come back in probe order; ``system_prompt`` opens every attempt's system message."""
    detectors = detectors or Detectors()
    sem = asyncio.Semaphore(max(1, concurrency))
    out: list[Attempt | None] = [None] * len(probes)

    async with client(base_url, key, timeout) as c:

        async def one(i: int, probe: Probe) -> None:
            rendered = with_system_prompt(probe.render(seed), system_prompt)
            body = rendered.body(model)
            async with sem:
                response = await send(c, body, timeout)
            # Judging runs detectors (CPU): off the event loop, so other attempts keep flowing.
            judgement = await asyncio.to_thread(judge, rendered, response, detectors, body)
            flag = await asyncio.to_thread(detectors.input_flag, rendered)
            if flag is not None:
                judgement.detail["input_flagged"] = flag
            att = Attempt(probe, rendered, response, judgement)
            out[i] = att
            if on_done is not None:
                on_done(att)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(probes)))
    return [a for a in out if a is not None]
