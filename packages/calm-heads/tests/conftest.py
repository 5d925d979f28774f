"""Test settings for calm-heads: the tiny networks here run fastest on one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # Tiny matmuls gain nothing from threads, and on a shared, loaded machine the thread pool's
    # synchronisation dominates (10x slower). Restored after each test so other packages'
    # tests in the same process are unaffected.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
