"""Shared test setup: float64 by default, seeded, and a clean param store per test."""

from __future__ import annotations

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_seeded_clean_store():
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(default_dtype)


# Scripts that distributed tests launch under horovodrun/torchrun: not test modules, and
# importing them (for doctests) would need a launcher's environment.
collect_ignore = ["distributed_jobs"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Multi-process tests are slow too: `make test-fast` (-m "not slow") skips them."""
    for item in items:
        if item.get_closest_marker("distributed") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
