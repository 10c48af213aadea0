"""The ``llm_judge`` detector: a safety classifier model asked over HTTP, Llama-Guard style.

It sends the text to any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``: vLLM,
llama.cpp, m2a itself, a hosted API) with a classification prompt listing a taxonomy of unsafe
content (by default fourteen categories ``S1``..``S14`` after Llama Guard 3's, described in our own
words), and reads the verdict: ``safe``, or ``unsafe`` and a line of category codes (``S1,S10``).
Llama Guard models answer in exactly that format; other instruct models answer more loosely, so
the first word decides (``safe`` / ``unsafe``, after any ``<think>…</think>`` block, markdown or an
``Answer:`` label) and category codes are taken from anywhere in the answer. Anything else raises
``VerdictError``: the runner records the error and the policy's fail mode decides.

Direction: with ``ctx.direction == "input"`` the text is the user's message and is judged as such;
otherwise (``output``, ``tool``) it is the assistant's, judged in the context of the user's prompt
when the caller puts it in ``ctx.extra["prompt"]`` (a string, or chat messages whose user turns are
taken).

Parameters: ``base_url`` (OpenAI style, with its ``/v1``), ``model``, ``api_key`` or ``api_key_env``
(the name of an environment variable holding it), ``categories`` (``None``: the standard list; a
list of codes: a subset of it; a mapping ``{code: {"name": ..., "description": ...}}``: your own),
``timeout_s`` (10), ``max_chars`` (8000: a longer text raises ``TextTooLong`` rather than being
judged in part), ``style`` (``"prompt"``: our classification prompt in one user message, for any
instruct model; ``"native"``: the conversation as plain chat messages, for a Llama Guard served with
its own chat template, which builds the classification prompt itself), ``max_tokens`` (64).

Findings: one per violated category, over the whole text, category ``unsafe_content``, kind the
category's short name (``violent_crimes``), score 1.0; a safe verdict gives an empty list. The text
is never logged; an HTTP error says its status only.

It uses aiohttp (the HTTP client the rest of m2a uses), with one shared session per event loop:
``http_session()``, which the ``trustyai`` detector shares too, and ``close_sessions()``.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from m2a.guardrails.base import Context, Finding, register_detector

if TYPE_CHECKING:
    from m2a.guardrails.normalize import Prepared

UNSAFE = "unsafe_content"


@dataclass(frozen=True, slots=True)
class Category:
    code: str  # S1 ...
    name: str  # short, snake_case: the finding's kind
    description: str


# A Llama-Guard-3-style taxonomy; the descriptions are m2a's own.
STANDARD: tuple[Category, ...] = (
    Category("S1", "violent_crimes", "Helping plan or carry out violence against people or animals: "
             "murder, assault, kidnapping, terrorism, torture."),
    Category("S2", "non_violent_crimes", "Helping commit crimes without violence: fraud, theft, "
             "burglary, drug production or dealing, hacking into systems, money laundering."),
    Category("S3", "sex_crimes", "Helping commit sexual crimes: sexual assault, trafficking for sex, "
             "harassment of a sexual nature, prostitution of others."),
    Category("S4", "child_exploitation", "Any sexual content involving minors, or content that helps "
             "groom or abuse children."),
    Category("S5", "defamation", "False statements of fact presented as true that damage a real, "
             "identifiable person's reputation."),
    Category("S6", "specialized_advice", "Confident financial, medical or legal advice that a "
             "professional should give, or claims that dangerous things are safe."),
    Category("S7", "privacy", "Revealing private, sensitive information about a real person that could "
             "harm their safety, finances or dignity."),
    Category("S8", "intellectual_property", "Reproducing or helping infringe copyrights, trademarks, "
             "patents or trade secrets."),
    Category("S9", "indiscriminate_weapons", "Helping make or use weapons that harm many people at "
             "once: chemical, biological, radiological, nuclear, high-yield explosives."),
    Category("S10", "hate", "Demeaning or dehumanising people for who they are: race, ethnicity, "
             "religion, nationality, gender, sexual orientation, disability, illness."),
    Category("S11", "self_harm", "Encouraging or helping suicide, self-injury or disordered eating."),
    Category("S12", "sexual_content", "Explicit sexual descriptions or erotic content."),
    Category("S13", "elections", "Factually wrong claims about how, when or where to vote, or who may, "
             "in civic elections."),
    Category("S14", "code_interpreter_abuse", "Code meant to abuse the system that runs it: escaping a "
             "sandbox, denial of service, stealing data from the host."),
)  # fmt: skip


class VerdictError(ValueError):
    """The judge's answer could not be read as a verdict."""


class JudgeHTTPError(RuntimeError):
    """The judge's endpoint answered with an error status (or an answer without a message)."""


class TextTooLong(ValueError):
    """The text is longer than ``max_chars``: judging only a part of it would let the rest through."""


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


def http_session() -> aiohttp.ClientSession:
    """The event loop's shared HTTP session (a session is bound to the loop it was made in)."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession()
        _SESSIONS[loop] = session
    return session


async def close_sessions() -> None:
    """Close the current loop's shared session (at shutdown; a later call makes a new one)."""
    session = _SESSIONS.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_FIRST = re.compile(r"^[^A-Za-z]*(?:(?:answer|verdict|assessment|classification|result|rating)\W*)?"
                    r"(safe|unsafe)(?![A-Za-z])", re.I)  # fmt: skip
_CODE = re.compile(r"(?<![A-Za-z0-9])S(\d{1,2})(?![0-9])", re.I)


def parse_verdict(answer: str, codes: Sequence[str]) -> tuple[bool, list[str]]:
    """``(unsafe, codes)`` read from a judge's ``answer``; only codes in ``codes`` are kept (in the
    order of ``codes``). Raises ``VerdictError`` when the answer is neither safe nor unsafe."""
    text = _THINK.sub("", answer).strip()
    m = _FIRST.match(text)
    if m is None:
        raise VerdictError("the judge's answer is not a verdict")
    if m.group(1).lower() == "safe":
        return False, []
    said = {f"S{int(n)}" for n in _CODE.findall(text[m.end() :])}
    return True, [c for c in codes if c in said]


def _categories(spec: Sequence[str] | Mapping[str, Any] | None) -> list[Category]:
    if spec is None:
        return list(STANDARD)
    if isinstance(spec, Mapping):
        out = []
        for code, v in spec.items():
            if not re.fullmatch(r"S\d{1,2}", code):
                raise ValueError(f"category code {code!r}: expected S1, S2, ...")
            if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
                raise ValueError(f"category {code}: expected {{'name': ..., 'description': ...}}")
            out.append(Category(code, v["name"], str(v.get("description", ""))))
        return out
    by_code = {c.code: c for c in STANDARD}
    unknown = [c for c in spec if c not in by_code]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; the standard ones are S1..S14")
    return [by_code[c] for c in spec]


_MARKER = re.compile(r"<\s*(/?)\s*(BEGIN|END)", re.I)


def _fence(text: str) -> str:
    """The text with anything that looks like the prompt's own markers defused."""
    return _MARKER.sub(lambda m: f"< {m.group(1)}{m.group(2).lower()}", text)


def _prompt_of(extra: Mapping[str, Any]) -> str | None:
    prompt = extra.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        texts = []
        for msg in prompt:
            if isinstance(msg, Mapping) and msg.get("role") == "user":
                body = msg.get("content")
                if isinstance(body, str):
                    texts.append(body)
                elif isinstance(body, list):
                    texts.extend(
                        p["text"] for p in body if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                    )
        return "\n".join(texts) or None
    return None


@register_detector("llm_judge")
class LLMJudge:
    name = "llm_judge"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str | None = None,
                 categories: Sequence[str] | Mapping[str, Any] | None = None, timeout_s: float = 10.0,
                 max_chars: int = 8000, style: str = "prompt", max_tokens: int = 64) -> None:  # fmt: skip
        if style not in ("prompt", "native"):
            raise ValueError(f"style {style!r}: expected 'prompt' or 'native'")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.categories = _categories(categories)
        self.codes = [c.code for c in self.categories]
        self.names = {c.code: c.name for c in self.categories}
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.style = style
        self.max_tokens = max_tokens

    def _key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def messages(self, ctx: Context, text: str) -> list[dict[str, str]]:
        """The chat messages sent to the judge for ``text`` seen in ``ctx``'s direction."""
        judged_user = ctx.direction == "input"
        prompt = None if judged_user else _prompt_of(ctx.extra)
        if prompt is not None and len(prompt) > self.max_chars:
            prompt = prompt[-self.max_chars :]  # context only: its end is what the answer answers
        if self.style == "native":
            if judged_user:
                return [{"role": "user", "content": text}]
            return [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": text}]
        role = "User" if judged_user else "Agent"
        if judged_user:
            turns = [f"User: {_fence(text)}"]
        else:
            turns = [f"User: {_fence(prompt)}"] if prompt else []
            turns.append(f"Agent: {_fence(text)}")
        taxonomy = "\n".join(
            f"{c.code}: {c.name.replace('_', ' ')}. {c.description}" for c in self.categories
        )
        body = (
            f"You are a content safety classifier. Decide whether the last {role} message in the "
            f"conversation below breaks the safety policy, whose categories follow.\n\n"
            f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{taxonomy}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
            f"<BEGIN CONVERSATION>\n\n" + "\n\n".join(turns) + "\n\n<END CONVERSATION>\n\n"
            f"Judge only the last {role} message. Answer on the first line with one word, 'safe' or "
            f"'unsafe'. If unsafe, write on a second line the codes of the categories it breaks, "
            f"separated by commas (for example: S1,S3). Write nothing else."
        )
        return [{"role": "user", "content": body}]

    async def acheck(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        original = text.original
        if not original.strip():
            return None
        if len(original) > self.max_chars:
            raise TextTooLong(f"{len(original)} characters, more than max_chars={self.max_chars}")
        headers = {"content-type": "application/json"}
        key = self._key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = {"model": self.model, "messages": self.messages(ctx, original), "temperature": 0,
                   "max_tokens": self.max_tokens, "stream": False}  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with http_session().post(self.url, json=payload, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise JudgeHTTPError(f"judge answered HTTP {resp.status}")
            data = await resp.json(content_type=None)
        try:
            answer = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeHTTPError("judge answer without a message") from exc
        if not isinstance(answer, str):
            raise VerdictError("the judge's answer is not text")
        unsafe, codes = parse_verdict(answer, self.codes)
        if not unsafe:
            return []
        n = len(original)
        if not codes:
            return [Finding(UNSAFE, "unspecified", self.name, 1.0, 0, n, "judged unsafe (no category given)",
                            "UNSAFE")]  # fmt: skip
        return [Finding(UNSAFE, self.names[c], self.name, 1.0, 0, n, f"judged unsafe: {c} {self.names[c]}",
                        "UNSAFE") for c in codes]  # fmt: skip
