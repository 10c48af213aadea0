"""The serving process's collector settings (m2a.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from m2a import heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_the_heap_and_collects_the_young_generation_rarely(restore_gc: None) -> None:
    _, gen1, gen2 = gc.get_threshold()
    assert heap.tune_for_serving(50_000) == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 0  # what start-up allocated is left out of collections
    # A cycle made after start-up is still collected (the collector is not off).
    a: list[object] = []
    a.append(a)
    del a
    assert gc.collect() >= 1


def test_zero_keeps_pythons_settings(restore_gc: None) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    assert heap.tune_for_serving(0) == before
    assert gc.get_freeze_count() == frozen
