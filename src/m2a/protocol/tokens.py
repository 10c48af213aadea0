"""Prompt tokens and block hashes: a prompt as an engine's prefix cache sees it.

Used by the router (prefix-cache affinity, re-keying the engines' KV events) and by the engine
simulator, which must cut prompts exactly as the router does. Stdlib only; transformers is imported
on first use by the ``hf:`` tokenizer.

The router matches *tokens* after the chat template, as the engines' prefix caches do, not characters.
``block_hashes`` cuts a token list into full blocks and chains a 64-bit BLAKE2b hash over them: block
i's hash covers block i-1's hash and block i's token ids, so two prompts share exactly the hashes of
the blocks they share from the start. The hash is stable across processes and machines (no
``PYTHONHASHSEED``): several gateway processes, the simulator and later runs agree.

Tokenizers (``load_tokenizer``):

- ``hf:<folder>`` — the model's own Hugging Face tokenizer (transformers imported on first use), chat
  messages through its chat template with the generation prompt, as vLLM does;
- ``simple`` — a cheap deterministic tokenizer (words and punctuation, ids from BLAKE2b) with a
  trivial chat template, shared by the engine simulator so that router and simulator agree.
"""

from __future__ import annotations

import array
import functools
import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

ROOT_HASH = 0  # the parent hash of a prompt's first block
_MASK = (1 << 64) - 1


def block_hashes(tokens: Sequence[int], block_size: int = 16, root: int = ROOT_HASH) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` (a partial last block has none).

    Block i's hash: the first 8 bytes of BLAKE2b over block i-1's hash (``root`` for the first
    block) and block i's token ids, each as 8 little-endian bytes; read as an unsigned integer.
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    ids = array.array("q", tokens)
    if sys.byteorder != "little":
        ids.byteswap()
    buf = ids.tobytes()
    step = block_size * 8
    blake = hashlib.blake2b
    parent = (root & _MASK).to_bytes(8, "little")
    digests = []
    for start in range(0, (len(tokens) // block_size) * step, step):
        parent = blake(parent + buf[start : start + step], digest_size=8).digest()
        digests.append(parent)
    return [int.from_bytes(d, "little") for d in digests]


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def chat(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> list[int]:
        """Token ids of a chat conversation after the chat template, with the generation prompt."""
        ...


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class SimpleTokenizer:
    """Words and punctuation marks, each mapped to a stable id in [0, vocab_size) by BLAKE2b.

    Chat template: ``<|role|>`` before each message's text, ``<|end|>`` after it, and ``<|assistant|>``
    as the generation prompt. About one token per word, like a real tokenizer on English text.
    """

    PATTERN = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab_size: int = 1 << 20) -> None:
        self.vocab_size = vocab_size
        self._ids: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        tid = self._ids.get(piece)
        if tid is None:
            digest = hashlib.blake2b(piece.encode(), digest_size=8).digest()
            tid = int.from_bytes(digest, "little") % self.vocab_size
            if len(self._ids) < 1 << 18:
                self._ids[piece] = tid
        return tid

    def encode(self, text: str) -> list[int]:
        return [self._id(p) for p in self.PATTERN.findall(text)]

    def chat(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> list[int]:
        out: list[int] = []
        for m in messages:
            out.append(self._id(f"<|{m.get('role', 'user')}|>"))
            out.extend(self.encode(_text(m.get("content"))))
            out.append(self._id("<|end|>"))
        out.append(self._id("<|assistant|>"))
        return out


class HFTokenizer:
    """A Hugging Face tokenizer folder, loaded on first use (transformers is a heavy import)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._tok: Any = None

    @property
    def tok(self) -> Any:
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.folder)
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    def chat(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> list[int]:
        tok = self.tok
        if getattr(tok, "chat_template", None):
            try:
                ids = tok.apply_chat_template(
                    messages, tools=tools, tokenize=True, add_generation_prompt=True, return_dict=False
                )
                if isinstance(ids, Mapping):
                    ids = ids["input_ids"]
                return list(ids)
            except Exception:  # a template that rejects these messages: fall back to plain text
                pass
        return self.encode("\n".join(_text(m.get("content")) for m in messages))


@functools.lru_cache(maxsize=32)
def load_tokenizer(ref: str) -> Tokenizer:
    """``hf:<folder>`` or ``simple`` (one instance per reference)."""
    if ref == "simple":
        return SimpleTokenizer()
    if ref.startswith("hf:") and len(ref) > 3:
        return HFTokenizer(ref[3:])
    raise ValueError(f"unknown tokenizer {ref!r}: use 'hf:<folder>' or 'simple'")


def _first(value: Any, tokenizer: Tokenizer) -> list[int] | None:
    """A prompt or input: a string, token ids, or a batch of those (the batch's first item)."""
    if isinstance(value, str):
        return tokenizer.encode(value)
    if isinstance(value, list) and value:
        head = value[0]
        if isinstance(head, int):
            return list(value)
        return _first(head, tokenizer)
    return None


def prompt_tokens(tokenizer: Tokenizer, payload: Mapping[str, Any]) -> list[int] | None:
    """The prompt's token ids for a chat (``messages``), completions (``prompt``) or embeddings
    (``input``) request body; None when there is no prompt to read. For a batch of prompts, the first
    one's tokens (the whole batch goes to one replica)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        tools = payload.get("tools")
        return tokenizer.chat(messages, tools if isinstance(tools, list) else None)
    for key in ("prompt", "input"):
        if key in payload:
            return _first(payload[key], tokenizer)
    return None
