"""Prompt tokens and output text for the simulator, through the router's ``simple`` tokenizer.

The simulator must cut prompts into exactly the tokens and block hashes the router computes, so it
uses ``m2a.protocol.tokens`` itself (``SimpleTokenizer``, ``prompt_tokens``, ``block_hashes``): one
definition, no drift.

Output text is made of plain words, one token each, joined by single spaces: a follow-up turn that
quotes the answer re-tokenizes to the very tokens the replica generated and cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from m2a.protocol.tokens import ROOT_HASH, block_hashes, load_tokenizer, prompt_tokens

__all__ = ["ROOT_HASH", "block_hashes", "chained_hash", "output_words", "prompt_ids", "word_ids"]

_TOKENIZER = load_tokenizer("simple")

_WORD_TEXT = """the a of to and in is it that for on with as was by at be this from or an are not have one
    model token cache block prefix route replica engine queue batch prompt answer agent metal gateway
    quick brown fox jumps over lazy dog paris france capital river mountain city light sound data
    simple small large fast slow early late first last next open close start stop read write"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def prompt_ids(payload: Mapping[str, Any]) -> list[int] | None:
    """Token ids of a chat or completions request body after the chat template (None: no prompt)."""
    return prompt_tokens(_TOKENIZER, payload)


def word_ids(words: Sequence[str]) -> list[int]:
    """Token ids of generated words (each word is one token)."""
    return [_TOKENIZER.encode(w)[0] for w in words]


def output_words(prompt: Sequence[int], n: int) -> list[str]:
    """``n`` deterministic words for an answer to ``prompt`` (same prompt, same answer)."""
    start = hash(tuple(prompt[-8:])) % len(WORDS)
    step = 7 if len(prompt) % 2 else 11  # coprime with len(WORDS) (72): every word in turn
    return [WORDS[(start + i * step) % len(WORDS)] for i in range(n)]


def chained_hash(parent: int, block: Sequence[int]) -> int:
    """The hash of one full block after ``parent``: the router's ``block_hashes`` chain, one link."""
    return block_hashes(block, len(block), root=parent)[0]
