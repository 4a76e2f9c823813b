"""Fixtures shared by the whole suite."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: bit-identical comparisons (a resumed run against
    one that never stopped, a child process against this one) need the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
