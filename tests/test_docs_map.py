"""The pyro.optim -> pyroopt mapping page covers every pyro name, each with a real target."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pyro.optim
import pyro.optim.multi

SPEC = importlib.util.spec_from_file_location(
    "pyro_map", Path(__file__).resolve().parent.parent / "docs" / "pyro_map.py"
)
assert SPEC is not None and SPEC.loader is not None
pyro_map = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pyro_map)


def test_every_pyro_optim_name_is_mapped():
    rows = {pyro_name for pyro_name, _, _ in pyro_map.mapping()}
    for name in pyro.optim.__all__:
        assert f"pyro.optim.{name}" in rows
    for name in (
        "MultiOptimizer",
        "PyroMultiOptimizer",
        "TorchMultiOptimizer",
        "MixedMultiOptimizer",
        "Newton",
        "newton_step",
    ):
        assert hasattr(pyro.optim.multi, name)
        assert f"pyro.optim.multi.{name}" in rows


def test_every_target_exists():
    for _, target, _ in pyro_map.mapping():
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target


def test_page_lists_every_row():
    page = pyro_map.render()
    for pyro_name, target, _ in pyro_map.mapping():
        assert f"``{pyro_name}``" in page and f"``{target}``" in page
