"""Fixtures shared by calm-core's test files (helpers that are not fixtures live in
``test_trainer_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: the same arithmetic in the parent and the subprocesses it
    compares with (they run with one thread too), and no oversubscription of a shared machine.
    A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
