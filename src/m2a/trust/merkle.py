"""The Merkle tree hash of RFC 6962 (section 2.1) that the audit log's signed checkpoints carry.

A leaf's hash is ``SHA-256(0x00 || data)``, an inner node's ``SHA-256(0x01 || left || right)``, the
empty tree's ``SHA-256("")``; a tree of ``n`` leaves splits at the largest power of two below ``n``.
``Accumulator`` grows the tree one leaf at a time keeping only the roots of its perfect subtrees
(at most 64 hashes; ``frontier``), so the audit log can checkpoint a million records without holding
them; ``root`` is the same hash over a list. Inclusion proofs (``inclusion_proof``,
``verify_inclusion``, RFC 9162 section 2.1.3) show one record is under a signed root without the
rest of the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

EMPTY = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Accumulator:
    """A Merkle tree built leaf by leaf, as the roots of its perfect subtrees (largest first)."""

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        if size < 0 or len(frontier) != bin(size).count("1") or any(len(h) != 32 for h in frontier):
            raise ValueError(f"a frontier of a tree of {size} leaves has {bin(size).count('1')} hashes")
        self.size = size
        self._stack = list(frontier)

    def add(self, data: bytes) -> None:
        """Append a leaf (its data; hashed here)."""
        self.add_leaf_hash(leaf_hash(data))

    def add_leaf_hash(self, h: bytes) -> None:
        n = self.size
        while n & 1:  # each trailing 1 bit of the size is a perfect subtree this leaf completes
            h = node_hash(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY
        r = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            r = node_hash(left, r)
        return r

    def frontier(self) -> list[bytes]:
        return list(self._stack)

    def copy(self) -> Accumulator:
        return Accumulator(self.size, self._stack)


def root(leaves: Iterable[bytes]) -> bytes:
    """The RFC 6962 tree hash of ``leaves`` (their data, in order)."""
    acc = Accumulator()
    for data in leaves:
        acc.add(data)
    return acc.root()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return node_hash(_subtree(hashes, lo, lo + k), _subtree(hashes, lo + k, hi))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path (RFC 6962 ``PATH``) of leaf ``index`` in the tree of ``leaves`` (their data)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    hashes = [leaf_hash(d) for d in leaves]
    path: list[bytes] = []
    lo, hi = 0, len(hashes)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_subtree(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree(hashes, lo, lo + k))
            lo += k
    return path[::-1]  # leaf to root


def verify_inclusion(data: bytes, index: int, size: int, proof: Sequence[bytes], expected: bytes) -> bool:
    """Whether ``proof`` shows leaf ``data`` at ``index`` in the tree of ``size`` with root
    ``expected`` (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(data)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected
