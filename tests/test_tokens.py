"""Prompt tokens and block hashes: stable across processes, shared exactly as far as prompts are."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m2a.protocol.tokens import SimpleTokenizer, block_hashes, load_tokenizer, prompt_tokens

TOKENS = [(7919 * i) % 50_021 for i in range(200)]


def reference_hashes(tokens: list[int], block_size: int) -> list[int]:
    """The documented definition, written out independently."""
    out, parent = [], 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        data = struct.pack(f"<Q{block_size}q", parent, *tokens[start : start + block_size])
        parent = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        out.append(parent)
    return out


@pytest.mark.parametrize(("n", "block_size"), [(0, 16), (15, 16), (16, 16), (200, 16), (200, 1), (200, 128)])
def test_block_hashes_definition(n: int, block_size: int) -> None:
    got = block_hashes(TOKENS[:n], block_size)
    assert got == reference_hashes(TOKENS[:n], block_size)
    assert len(got) == n // block_size
    assert all(0 <= h < 1 << 64 for h in got)


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        block_hashes(TOKENS, 0)


SCRIPT = """
import json, sys
from m2a.protocol.tokens import SimpleTokenizer, block_hashes
tokens = json.loads(sys.argv[1])
chat = SimpleTokenizer().chat([{"role": "user", "content": "Hello, world! How are you?"}])
print(json.dumps({"hashes": block_hashes(tokens, 16), "chat": chat}))
"""


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_stable_across_processes(hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(TOKENS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(out.stdout)
    assert theirs["hashes"] == block_hashes(TOKENS, 16)
    assert theirs["chat"] == SimpleTokenizer().chat(
        [{"role": "user", "content": "Hello, world! How are you?"}]
    )


@pytest.mark.parametrize(("k", "block_size"), [(0, 16), (1, 16), (5, 16), (3, 8), (2, 64)])
def test_shared_prefix_shares_exactly_k_hashes(k: int, block_size: int) -> None:
    shared = TOKENS[: k * block_size]
    a = shared + [1] + TOKENS[: 3 * block_size]
    b = shared + [2] + TOKENS[: 3 * block_size]  # differs in the first token of block k
    ha, hb = block_hashes(a, block_size), block_hashes(b, block_size)
    assert ha[:k] == hb[:k]
    assert all(x != y for x, y in zip(ha[k:], hb[k:], strict=False))  # the chain differs from then on


def test_same_block_elsewhere_hashes_differently() -> None:
    block = TOKENS[:16]
    assert block_hashes(block + block, 16)[0] != block_hashes(block + block, 16)[1]  # the parent counts


def test_simple_tokenizer() -> None:
    tok = SimpleTokenizer()
    ids = tok.encode("The cat sat.  The cat!")
    assert len(ids) == 7 and ids[0] == ids[4] and ids[1] == ids[5] and ids[3] != ids[6]
    assert tok.encode("The cat") == SimpleTokenizer().encode("The  cat")  # whitespace is not a token
    assert all(0 <= i < tok.vocab_size for i in ids)
    system = {"role": "system", "content": "Answer briefly."}
    one = tok.chat([system, {"role": "user", "content": "What is 2 + 2?"}])
    two = tok.chat([system, {"role": "user", "content": "Name a colour."}])
    head = [tok._id("<|system|>"), *tok.encode("Answer briefly."), tok._id("<|end|>"), tok._id("<|user|>")]
    assert one[: len(head)] == two[: len(head)] == head
    assert one[-1] == tok._id("<|assistant|>")
    parts = [{"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]
    assert tok.chat(parts) == tok.chat([{"role": "user", "content": "a b"}])


PAYLOADS = [
    (
        {"messages": [{"role": "user", "content": "hi there"}]},
        ["<|user|>", "hi", "there", "<|end|>", "<|assistant|>"],
    ),
    ({"prompt": "hi there"}, ["hi", "there"]),
    ({"prompt": ["hi there", "other"]}, ["hi", "there"]),  # a batch: the first prompt
    ({"prompt": [5, 6, 7]}, [5, 6, 7]),
    ({"prompt": [[5, 6], [8]]}, [5, 6]),
    ({"input": "hi"}, ["hi"]),
    ({"input": ["hi", "there"]}, ["hi"]),
    ({"input": [9, 10]}, [9, 10]),
    ({"prompt": []}, None),
    ({"model": "m"}, None),
]


@pytest.mark.parametrize(("payload", "expected"), PAYLOADS)
def test_prompt_tokens(payload: dict[str, Any], expected: list[Any] | None) -> None:
    tok = SimpleTokenizer()
    want = None if expected is None else [t if isinstance(t, int) else tok._id(t) for t in expected]
    assert prompt_tokens(tok, payload) == want


def test_load_tokenizer_refs() -> None:
    assert load_tokenizer("simple") is load_tokenizer("simple")
    for bad in ("hf:", "gpt2", ""):
        with pytest.raises(ValueError, match="unknown tokenizer"):
            load_tokenizer(bad)


TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def tiny_tokenizer(folder: Path, template: str | None) -> None:
    """A word-level tokenizer trained here on a few sentences, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["hello world how are you", "user system assistant : the cat sat", "be brief please"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)


def test_hf_tokenizer_with_chat_template(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    tiny_tokenizer(tmp_path, TEMPLATE)
    tok = load_tokenizer(f"hf:{tmp_path}")
    assert tok.encode("hello world") == tok.encode("hello  world") and len(tok.encode("hello world")) == 2
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    ids = prompt_tokens(tok, {"messages": messages})
    rendered = "<s> system : be brief </s> <s> user : hello </s> <s> assistant : "
    assert ids == tok.encode(rendered)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    unk = tok.encode("[UNK]")[0]
    assert unk not in ids  # every word of the template was in the vocabulary


def test_hf_tokenizer_without_chat_template(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    tiny_tokenizer(tmp_path, None)
    tok = load_tokenizer(f"hf:{tmp_path}")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert tok.chat(messages) == tok.encode("be brief\nhello")
