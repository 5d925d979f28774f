"""Shared test settings: one torch thread (tiny models gain nothing from more, and on a shared,
loaded machine extra threads spin-wait and slow every test down several-fold)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
